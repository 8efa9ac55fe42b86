"""Realistic generated OCR batches, for the demo, the tests and the benchmarks.

Deterministic for a given seed: the same call returns the same batch, which is
what a redelivery test or a benchmark comparing approaches needs.
"""

from __future__ import annotations

import random
from typing import Any

# Text as OCR of Korean business documents yields it: about 40% Hangul, the rest
# Latin words, numbers and punctuation.
_KOREAN = [
    "영수증",
    "합계",
    "부가세",
    "주식회사",
    "대표이사",
    "서울특별시",
    "강남구",
    "테헤란로",
    "사업자등록번호",
    "전화",
    "금액",
    "수량",
    "단가",
    "품목",
    "카드승인",
    "감사합니다",
]
_LATIN = [
    "Invoice",
    "Total",
    "VAT",
    "Date",
    "Qty",
    "Unit",
    "Price",
    "Amount",
    "Card",
    "Approved",
    "Seoul",
    "Co., Ltd.",
    "No.",
    "Tel",
    "Thank",
    "you",
]


def _text(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(1, 6)):
        roll = rng.random()
        if roll < 0.4:
            words.append(rng.choice(_KOREAN))
        elif roll < 0.8:
            words.append(rng.choice(_LATIN))
        else:
            words.append(f"{rng.randint(0, 999_999):,}")
    return " ".join(words)


def _bbox(rng: random.Random) -> list[list[float]]:
    x, y = rng.uniform(0, 1800), rng.uniform(0, 2400)
    w, h = rng.uniform(20, 600), rng.uniform(12, 60)
    # A slightly rotated quadrilateral, rounded as OCR engines report pixels.
    skew = rng.uniform(-3, 3)
    return [
        [round(x, 1), round(y, 1)],
        [round(x + w, 1), round(y + skew, 1)],
        [round(x + w, 1), round(y + h + skew, 1)],
        [round(x, 1), round(y + h, 1)],
    ]


def make_result(index: int, rng: random.Random, *, boxes: int = 5, prefix: str = "demo") -> dict[str, Any]:
    """One successful OCR result as the OCR stage emits it (a JSON-ready dict)."""
    return {
        "image_path": f"/data/{prefix}/images/{index:07d}.jpg",
        "public_path": f"https://cdn.example.com/{prefix}/{index:07d}.jpg",
        "status": "success",
        "error": None,
        "text_boxes": [
            {"text": _text(rng), "confidence": round(rng.uniform(0.55, 1.0), 4), "bbox": _bbox(rng)}
            for _ in range(boxes)
        ],
    }


def make_batch(n: int, *, boxes: int = 5, prefix: str = "demo", seed: int = 0) -> list[dict[str, Any]]:
    """``n`` successful results with ``boxes`` text boxes each."""
    rng = random.Random(f"{prefix}:{seed}")
    return [make_result(i, rng, boxes=boxes, prefix=prefix) for i in range(n)]


def break_some(results: list[dict[str, Any]], every: int = 97) -> list[int]:
    """Damage every ``every``-th result in the ways OCR stages break; return their indexes."""
    damaged = []
    kinds = ("upstream", "confidence", "nul", "bbox")
    for n, index in enumerate(range(every // 2, len(results), every)):
        item = results[index]
        kind = kinds[n % len(kinds)]
        if kind == "upstream":
            item.update(status="failed", error="OCR engine timeout after 30s", text_boxes=[])
        elif kind == "confidence" and item["text_boxes"]:
            item["text_boxes"][0]["confidence"] = 1.7
        elif kind == "nul" and item["text_boxes"]:
            item["text_boxes"][0]["text"] = "bad\x00text"
        elif item["text_boxes"]:
            item["text_boxes"][0]["bbox"] = "not a polygon"
        damaged.append(index)
    return damaged
