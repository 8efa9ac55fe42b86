"""The identity rule as a reference model: pure Python, no database, no ledger.

One batch. Its state is what each position holds (a stored image with its result, or an
open reject with its reason), the rejects a repair resolved, and the declared total.
Operations are the loader's calls (plain, repair, replace: lists of (position, input)),
the application's writes (an OCR status flipped, an OCR row or a whole chain deleted) and
deleting the batch. It yields the rows and counts the database must hold (README, "One
identity for every input"; issue 20's rules):

* An input's identity is its position: the input a position already received changes
  nothing; another input there refuses the whole plain call (a conflict).
* The lowest position holds a duplicated image, whatever the arrival order: the others are
  rejects ``duplicate image_path (first at position Q)``, Q the holder, and an image stored
  at a higher position is demoted to such a reject when a lower one arrives.
* Positions live inside the declared total (else the whole call is refused); a call on an
  unknown batch needs the total, or no offset (then it is the whole batch).
* A position whose image the application deleted is free for a valid input; where it
  deleted the OCR row only, the chain it left is filled by a repair too (a slot).
* repair: fixes the open reject at its position (resolved; a still-bad input takes its
  place) or the stored failure of its image; anything else is refused (not counted).
  replace: replaces the stored result of its image in place (a free position of the call
  is then judged as in a plain call: a duplicate); a new image is stored as in a plain
  call; a line that cannot be parsed, or an image another batch owns, is refused (that
  line only, not counted). A replace call takes effect once: the same call again leaves
  every image the batch stores as it is, whatever was written since (the loader's
  ledger; a deleted image is stored again, as in a plain call).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

#: The reason the loader gives a line that is not JSON (tests read it from loader.save.pipeline.judge).
JUNK = "junk"


@dataclass(frozen=True)
class Input:
    """An input: an image's result (``status`` success or failed, ``text`` for its boxes and
    model version), or a line that cannot be parsed (``image`` None, ``text`` its bytes)."""

    image: int | None
    status: str = "success"
    text: str = "t"

    @property
    def junk(self) -> bool:
        return self.image is None


@dataclass(frozen=True)
class Stored:
    input: Input

    @property
    def status(self) -> str:
        return self.input.status


@dataclass(frozen=True)
class Rejected:
    input: Input
    reason: str


Held = Stored | Rejected


class Refused(Exception):
    """The whole call is refused, nothing kept; ``kind``: conflict, not_found or refused."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def duplicate(first: int) -> str:
    return f"duplicate image_path (first at position {first})"


@dataclass
class Model:
    declared: int | None = None
    held: dict[int, Held] = field(default_factory=dict)
    #: (position, reason) of each reject a repair resolved, in order.
    resolved: list[tuple[int, str]] = field(default_factory=list)
    #: Inputs each position received and a repair then replaced (a redelivery of them changes nothing).
    before: dict[int, set[Input]] = field(default_factory=dict)
    #: Statuses the application wrote: (position -> error) of results it flipped to failed.
    flipped: dict[int, str] = field(default_factory=dict)
    #: Images other batches own: a replace of one is refused (never taken from another batch).
    foreign: set[int] = field(default_factory=set)
    #: Free positions that kept their chain (the application deleted the OCR row only).
    slots: set[int] = field(default_factory=set)
    #: The replace calls that took effect, as (offset, inputs): each takes effect once.
    replaced_by: set[tuple[int, tuple[Input, ...]]] = field(default_factory=set)
    #: Whether the replace call being applied took effect before.
    sent_again: bool = False

    # ----------------------------------------------------------------- reading

    def holder(self, image: int) -> int | None:
        found = [p for p, h in self.held.items() if isinstance(h, Stored) and h.input.image == image]
        return min(found, default=None)

    def images(self) -> list[tuple[int, int, str, str | None, list[str], str | None]]:
        """(position, image, status, error, box texts, model_version) of every stored image."""
        rows = []
        for p, h in sorted(self.held.items()):
            if isinstance(h, Stored):
                i = h.input
                assert i.image is not None
                if p in self.flipped:
                    rows.append((p, i.image, "failed", self.flipped[p], box_texts(i), model_version(i)))
                else:
                    error = None if i.status == "success" else "engine crashed"
                    rows.append((p, i.image, i.status, error, box_texts(i), model_version(i)))
        return rows

    def rejects(self) -> list[tuple[int, int | None, str]]:
        """(position, image, reason) of every open reject."""
        return [(p, h.input.image, h.reason) for p, h in sorted(self.held.items()) if isinstance(h, Rejected)]

    def counts(self) -> tuple[int, int, int]:
        """(completed, failed, rejected): failed counts failed images and open rejects."""
        statuses = [status for _, _, status, *_ in self.images()]
        rejected = len(self.rejects())
        return statuses.count("success"), statuses.count("failed") + rejected, rejected

    # ----------------------------------------------------------------- the loader's calls

    def call(self, mode: str, offset: int, inputs: list[Input], total: int | None) -> None:
        """One save_batch call; raises Refused when the whole call is refused (nothing kept)."""
        if self.declared is None:
            if total is None and offset:
                raise Refused("not_found")
            declared = total if total is not None else len(inputs)
        else:
            if total is not None and total != self.declared:
                raise Refused("refused")
            declared = self.declared
        if offset + len(inputs) > declared:
            raise Refused("refused")
        trial = copy.deepcopy(self)
        trial.declared = declared
        key = (offset, tuple(inputs))
        trial.sent_again = mode == "replace" and key in self.replaced_by
        for position, given in enumerate(inputs, offset):
            getattr(trial, f"_{mode}")(position, given)
        if mode == "replace":
            trial.replaced_by.add(key)
        self.__dict__.update(trial.__dict__)

    def _received(self, position: int, given: Input, *, exactly: bool = False) -> bool:
        """Whether ``position`` received ``given`` (a plain call: any result for the image
        it holds, stored or rejected, as the identity table's "another encoding of a
        rejected image at its position is unchanged"; a repair: exactly this input), now
        or before a repair replaced it."""
        held = self.held.get(position)
        before = self.before.get(position, set())
        if given in before or (
            not exactly and not given.junk and any(given.image == b.image for b in before)
        ):
            return True
        if held is not None and not exactly and not held.input.junk:
            return not given.junk and given.image == held.input.image
        return held is not None and held.input == given

    def _plain(self, position: int, given: Input) -> None:
        if self._received(position, given):
            return
        if position in self.held:
            raise Refused("conflict")
        self._place(position, given)

    def _place(self, position: int, given: Input) -> None:
        """A new input at a free position."""
        if given.junk:
            self.held[position] = Rejected(given, JUNK)
            return
        assert given.image is not None
        first = self.holder(given.image)
        if first is not None and first < position:
            self.held[position] = Rejected(given, duplicate(first))
            return
        if first is not None:  # demoted: the lower position holds the image
            self.held[first] = Rejected(self.held[first].input, duplicate(position))
            self.flipped.pop(first, None)
        self.held[position] = Stored(given)
        for p, h in self.held.items():  # every duplicate names the holder
            if isinstance(h, Rejected) and h.input.image == given.image and p != position:
                self.held[p] = replace(h, reason=duplicate(position))

    def _repair(self, position: int, given: Input) -> None:
        held = self.held.get(position)
        if self._received(position, given, exactly=True):
            return
        if isinstance(held, Rejected):
            self.resolved.append((position, held.reason))
            self.before.setdefault(position, set()).add(held.input)
            del self.held[position]
            self._place(position, given)
        elif not given.junk and (at := self.holder(given.image)) is not None and self._failed(at):
            # A result for an image the batch stores as failed replaces that failure,
            # wherever it is stored (README, identity table: a repair goes by the image).
            self.held[at] = Stored(given)
            self.flipped.pop(at, None)
        elif held is None and position in self.slots and not given.junk and self.holder(given.image) is None:
            # A chain without an OCR row: a repair fills it as a plain call would
            # (README, identity table: "as plain").
            self._place(position, given)
        # Anything else fixes nothing: refused, not counted.

    def _replace(self, position: int, given: Input) -> None:
        if given.image in self.foreign:
            return  # another batch's image: that line refused, never taken
        if given.junk:
            # A line that cannot be parsed replaces nothing: refused where the position
            # holds an input; at a free position it is a new input, as in a plain call.
            if position not in self.held:
                self._place(position, given)
            return
        assert given.image is not None
        at = self.holder(given.image)
        if at is None:
            self._plain(position, given)
            return
        if self.sent_again:
            return  # this very call replaced it before: once
        # The image's result, replaced where it is stored (README, identity table: a
        # re-OCR addresses the image wherever it is stored); P itself receives nothing.
        self.held[at] = Stored(given)
        self.flipped.pop(at, None)

    def _failed(self, position: int) -> bool:
        held = self.held[position]
        return position in self.flipped or held.input.status == "failed"

    # ----------------------------------------------------------------- everyone else

    def flip_status(self, position: int) -> None:
        """The application marks the stored result at ``position`` failed."""
        if isinstance(self.held.get(position), Stored):
            self.flipped[position] = "marked failed by the application"

    def delete_image(self, position: int, *, chain_kept: bool = False) -> None:
        """The application deletes the OCR row (the chain kept: a slot) or the whole chain at
        ``position``: it is free."""
        if isinstance(self.held.get(position), Stored):
            del self.held[position]
            self.flipped.pop(position, None)
            if chain_kept:
                self.slots.add(position)
            else:
                self.slots.discard(position)

    def delete_batch(self) -> None:
        self.__dict__.update(Model(foreign=self.foreign).__dict__)


def box_texts(given: Input) -> list[str]:
    return [] if given.status != "success" else [f"{given.text} {given.image} {k}" for k in range(2)]


def model_version(given: Input) -> str | None:
    return None if given.junk else f"m-{given.text}"
