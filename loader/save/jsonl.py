"""The one JSONL reader: plain or gzip files, or ``-`` for stdin, read as raw lines.

Used by `loader load` and by Celery workers reading a batch file. Lines are
yielded as raw bytes (trailing newline removed, everything else kept, ``\\r``
included) so a rejected line can be stored and exported byte for byte.
Positions number the lines of all sources together, from 0: the first line of
the second file continues where the first file ended. Memory is bounded by one
line (at most MAX_LINE_BYTES) plus the reader's buffer, never by the file size.

Input that is plainly not JSON lines (another compression than gzip, NUL
bytes, mostly invalid UTF-8) is refused when the sources are opened, before
anything is loaded: it would otherwise become a batch of rejects.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from loader.errors import InputFileError

STDIN = "-"

# Longest line accepted, in bytes. One OCR result holds at most a few hundred
# boxes of at most 100,000 characters; 64 MiB is far beyond any real one and
# keeps a file without newlines from being read into memory whole.
MAX_LINE_BYTES = 64 * 1024 * 1024

# Read buffer, in bytes: large reads keep the per-line cost in C (stdin too:
# its own buffer is 8 KiB, which costs a system call per few lines).
READ_BUFFER_BYTES = 1024 * 1024

# Bytes at the start of each source checked for being text at all: a few dozen
# lines, enough to tell JSON from a binary file without reading much of it.
SAMPLE_BYTES = 64 * 1024
# Share of undecodable bytes in the sample beyond which the input is not UTF-8
# text: random bytes have ~40%, a file in a legacy encoding (EUC-KR, Latin-1
# with much accented text) a lot; a JSONL file with a few junk lines, ~0%.
MAX_INVALID_UTF8_SHARE = 0.25
# Share of the sample's lines holding a NUL byte beyond which the input is a
# binary file (or UTF-16 text): one such line is a bad input, rejected with its
# bytes; random bytes have NULs in about half their "lines".
MAX_NUL_LINE_SHARE = 0.25

GZIP_MAGIC = b"\x1f\x8b"

# Decompression is bounded: a gzip source may not unpack to more than
# MAX_GZIP_RATIO times the compressed bytes read so far, plus GZIP_FREE_BYTES
# (64 KiB: what a small file may hold before the ratio is checked).
# JSON lines of OCR results compress 5 to 20 times (datagen's, very repetitive:
# ~25); gzip's own limit is ~1,030, which a bomb reaches (4.9 KB holding
# 5,000,000 newlines). The check costs one comparison per 1 MiB read; a
# bomb is refused at its first MiB, when opened. A legitimately extreme file (a
# sparse export of a huge batch, mostly blank lines) loads once gunzipped.
MAX_GZIP_RATIO = 200
GZIP_FREE_BYTES = 64 * 1024
# Formats that are not JSON lines and that the loader does not unpack, by their
# magic bytes: the message names the format so the operator knows what to do.
_OTHER_FORMATS = {
    b"\xfd7zXZ\x00": "xz-compressed",
    b"BZh": "bzip2-compressed",
    b"\x28\xb5\x2f\xfd": "zstd-compressed",
    b"PK\x03\x04": "a zip archive",
    b"7z\xbc\xaf\x27\x1c": "a 7-zip archive",
    b"\x04\x22\x4d\x18": "lz4-compressed",
}


def display_name(name: str) -> str:
    return "<stdin>" if name == STDIN else name


def not_json_lines(sample: bytes) -> str | None:
    """Why the first bytes of a source show it is not JSON lines, or None if they may be."""
    for magic, what in _OTHER_FORMATS.items():
        if sample.startswith(magic):
            return f"{what}, not JSON lines (only gzip is unpacked; decompress it first)"
    lines = sample.rstrip(b"\n").split(b"\n")
    if sum(b"\x00" in line for line in lines) > MAX_NUL_LINE_SHARE * len(lines):
        return "NUL bytes in many of its first lines: a binary file, not JSON lines"
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(sample)
    invalid = text.count("\ufffd")
    if sample and invalid > MAX_INVALID_UTF8_SHARE * len(sample):
        return "largely invalid UTF-8 in its first bytes: binary, or not UTF-8 text; not JSON lines"
    return None


def _stdin() -> io.BufferedReader:
    """Standard input behind a large buffer (the interpreter's is 8 KiB)."""
    stdin = sys.stdin.buffer
    if isinstance(getattr(stdin, "raw", None), io.FileIO):
        # A FileIO of its own on the descriptor (closefd=False): closing it leaves sys.stdin alone.
        return io.BufferedReader(io.FileIO(stdin.fileno(), "rb", closefd=False), READ_BUFFER_BYTES)
    # Under test runners stdin may be a BytesIO, which cannot peek.
    return io.BufferedReader(stdin, READ_BUFFER_BYTES)  # type: ignore[arg-type]


class _Counted(io.RawIOBase):
    """The compressed side of a gzip source: counts the bytes GzipFile reads."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data


class GzipBombError(InputFileError):
    """A gzip source unpacks to far more than real JSON lines do (MAX_GZIP_RATIO)."""


class _Bounded(io.RawIOBase):
    """The decompressed side: refuses to unpack past MAX_GZIP_RATIO x the compressed bytes."""

    def __init__(self, name: str, unzipped: gzip.GzipFile, compressed: _Counted) -> None:
        self.name_ = name
        self.unzipped = unzipped
        self.compressed = compressed
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self.unzipped.readinto(buffer)
        self.produced += n
        if self.produced > MAX_GZIP_RATIO * self.compressed.count + GZIP_FREE_BYTES:
            raise GzipBombError(
                f"{display_name(self.name_)}: gzip unpacks to more than {MAX_GZIP_RATIO} times its size "
                f"({self.produced:,} bytes from {self.compressed.count:,}), far beyond JSON lines; "
                "nothing more is read. If the file is genuine, gunzip it and load the plain file"
            )
        return n


@contextlib.contextmanager
def _open_binary(name: str) -> Iterator[BinaryIO]:
    """The source as a buffered binary stream, gunzipped when it starts with the gzip magic."""
    with contextlib.ExitStack() as stack:
        raw: io.BufferedReader
        if name == STDIN:
            raw = _stdin()
        else:
            raw = stack.enter_context(io.BufferedReader(io.FileIO(name, "rb"), READ_BUFFER_BYTES))
        if raw.peek(2)[:2] == GZIP_MAGIC:
            # GzipFile does not close the file it reads; the ExitStack does.
            compressed = _Counted(raw)
            unzipped = stack.enter_context(gzip.GzipFile(fileobj=compressed, mode="rb"))
            yield io.BufferedReader(_Bounded(name, unzipped, compressed), READ_BUFFER_BYTES)
        else:
            yield raw


def _check_text(name: str, stream: BinaryIO) -> None:
    # peek: the sample stays in the buffer and is read again as lines.
    sample = stream.peek(SAMPLE_BYTES)[:SAMPLE_BYTES]  # type: ignore[attr-defined]
    problem = not_json_lines(sample)
    if problem:
        raise InputFileError(f"{display_name(name)}: {problem}; nothing was loaded")


def readable(name: str, *, check_text: bool = True) -> None:
    """Fail now, naming the file, if it cannot be opened (or, with ``check_text``, is not JSON lines)."""
    path = Path(name)
    if not path.exists():
        raise InputFileError(f"{name}: no such file")
    if path.is_dir():
        raise InputFileError(f"{name}: is a directory, not a JSONL file")
    try:
        with _open_binary(name) as stream:
            if check_text:
                _check_text(name, stream)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputFileError(f"{name}: not a readable gzip file ({exc or 'truncated'})") from exc
    except OSError as exc:
        raise InputFileError(f"{name}: cannot be read ({exc.strerror or exc})") from exc


def countable(name: str) -> bool:
    """Whether the lines can be counted before loading: a regular file, not stdin or a pipe."""
    return name != STDIN and Path(name).is_file()


def is_blank(line: bytes) -> bool:
    """A line holding nothing but whitespace: no input, but it keeps its number (position)."""
    return not line.strip()


def line_counts(name: str) -> tuple[int, int]:
    """(lines, blank lines) of a file: blank lines hold only whitespace, and are
    no input for `loader load` (a sparse export of rejects is mostly blank)."""
    if not countable(name):
        raise InputFileError(f"{display_name(name)}: cannot count the lines of a stream without consuming it")
    lines = blank = 0
    last = b"\n"
    # Whether the line being read holds only whitespace so far (it may span blocks).
    blank_so_far = True
    try:
        with _open_binary(name) as stream:
            while block := stream.read(READ_BUFFER_BYTES):
                *ended, rest = block.split(b"\n")
                for part in ended:
                    blank += blank_so_far and not part.strip()
                    blank_so_far = True
                lines += len(ended)
                blank_so_far = blank_so_far and not rest.strip()
                last = block[-1:]
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputFileError(f"{name}: not a readable gzip file ({exc or 'truncated'})") from exc
    except OSError as exc:
        raise InputFileError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    unfinished = last != b"\n"
    return lines + unfinished, blank + (unfinished and blank_so_far)


def _too_long(name: str, line_number: int) -> InputFileError:
    return InputFileError(
        f"{display_name(name)}:{line_number}: line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB; "
        "is this a JSONL file? Split or fix that line, then load again"
    )


def _raw_lines(name: str, stream: BinaryIO) -> Iterator[bytes]:
    limit = MAX_LINE_BYTES  # read at call time: tests lower it
    number = 0
    while line := stream.readline(limit + 1):
        number += 1
        if line.endswith(b"\n"):
            line = line[:-1]
        elif len(line) > limit:
            raise _too_long(name, number)
        yield line


@dataclass
class Sources:
    """Several inputs read as one stream of lines, numbered across files.

    Opening checks every source (exists, readable, looks like JSON lines) before
    any line is read, so bad input is refused before a batch is created.
    ``check_text=False`` skips the last check, for files the loader wrote itself
    (Celery batch files), whose raw lines are kept whatever bytes they hold.
    """

    names: Sequence[str]
    check_text: bool = True
    #: Positions read so far (the next line's position).
    position: int = 0
    #: stdin, opened (and checked) with the sources: it cannot be opened twice.
    _stdin: BinaryIO | None = field(default=None, repr=False)
    _closing: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def __post_init__(self) -> None:
        if not self.names:
            raise InputFileError("no input files given")
        if list(self.names).count(STDIN) > 1:
            raise InputFileError("stdin ('-') can be read only once")
        for name in self.names:
            if name != STDIN:
                readable(name, check_text=self.check_text)
                continue
            try:
                self._stdin = self._closing.enter_context(_open_binary(STDIN))
                if self.check_text:
                    _check_text(STDIN, self._stdin)
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                raise InputFileError(f"<stdin>: not a readable gzip stream ({exc or 'truncated'})") from exc

    @contextlib.contextmanager
    def _open(self, name: str) -> Iterator[BinaryIO]:
        if name == STDIN and self._stdin is not None:
            with self._closing:
                yield self._stdin
            return
        with _open_binary(name) as stream:
            yield stream

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(position, raw line bytes without its newline) for every line of every source."""
        for name in self.names:
            start = self.position
            try:
                with self._open(name) as stream:
                    for line in _raw_lines(name, stream):
                        yield self.position, line
                        self.position += 1
            except OSError as exc:
                if isinstance(exc, gzip.BadGzipFile):
                    raise InputFileError(f"{display_name(name)}: not a readable gzip file ({exc})") from exc
                raise InputFileError(
                    f"{display_name(name)}: read failed after line {self.position - start} "
                    f"({exc.strerror or exc})"
                ) from exc
            except (EOFError, zlib.error) as exc:
                raise InputFileError(
                    f"{display_name(name)}: gzip stream broken after line "
                    f"{self.position - start} ({exc or 'truncated'})"
                ) from exc


def read_lines(path: Path | str, *, check_text: bool = True) -> Iterator[bytes]:
    """One file's lines without their newline, streamed."""
    for _position, line in Sources([str(path)], check_text=check_text).lines():
        yield line


def input_span(files: tuple[str, ...]) -> int:
    """Positions up to and including the last non-blank line of the files."""
    last = -1
    for position, line in Sources(files).lines():
        if not is_blank(line):
            last = position
    return last + 1
