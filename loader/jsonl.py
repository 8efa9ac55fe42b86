"""Streaming JSONL input for `loader load`: plain or gzip files, or ``-`` for stdin.

Lines are yielded as raw bytes (trailing newline removed, everything else kept,
``\\r`` included) so a rejected line can be stored and exported byte for byte.
Positions number the lines of all sources together, from 0: the first line of
the second file continues where the first file ended. Memory is bounded by one
line (at most MAX_LINE_BYTES) plus the reader's buffer, never by the file size.
"""

from __future__ import annotations

import bisect
import contextlib
import gzip
import io
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from loader.errors import LoaderError

STDIN = "-"

# Longest line accepted, in bytes. One OCR result holds at most a few hundred
# boxes of at most 100,000 characters; 64 MiB is far beyond any real one and
# keeps a file without newlines from being read into memory whole.
MAX_LINE_BYTES = 64 * 1024 * 1024

# Read buffer, in bytes: large reads keep the per-line cost in C.
READ_BUFFER_BYTES = 1024 * 1024

_GZIP_MAGIC = b"\x1f\x8b"


class InputFileError(LoaderError):
    """An input file cannot be read as JSONL (too long a line, corrupt gzip, ...)."""


@contextlib.contextmanager
def _open_binary(name: str) -> Iterator[BinaryIO]:
    """The source as a buffered binary stream, gunzipped when it starts with the gzip magic."""
    with contextlib.ExitStack() as stack:
        raw: io.BufferedReader
        if name == STDIN:
            stdin = sys.stdin.buffer
            # Under test runners stdin may be a BytesIO, which cannot peek.
            raw = stdin if isinstance(stdin, io.BufferedReader) else io.BufferedReader(stdin)  # type: ignore[arg-type]
        else:
            raw = stack.enter_context(io.BufferedReader(io.FileIO(name, "rb"), READ_BUFFER_BYTES))
        if raw.peek(2)[:2] == _GZIP_MAGIC:
            # GzipFile does not close the file it reads; the ExitStack does.
            unzipped = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            yield io.BufferedReader(unzipped, READ_BUFFER_BYTES)
        else:
            yield raw


def readable(name: str) -> None:
    """Fail now, naming the file, if it cannot be opened (before anything is loaded)."""
    if name == STDIN:
        return
    path = Path(name)
    if not path.exists():
        raise InputFileError(f"{name}: no such file")
    if path.is_dir():
        raise InputFileError(f"{name}: is a directory, not a JSONL file")
    try:
        with open(name, "rb"):
            pass
    except OSError as exc:
        raise InputFileError(f"{name}: cannot be read ({exc.strerror or exc})") from exc


def countable(name: str) -> bool:
    """Whether the lines can be counted before loading: a regular file, not stdin or a pipe."""
    return name != STDIN and Path(name).is_file()


def display_name(name: str) -> str:
    return "<stdin>" if name == STDIN else name


def count_lines(name: str) -> int:
    """Lines in a file (a last line without newline counts). Reads it once, in blocks."""
    return line_counts(name)[0]


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


@dataclass
class Sources:
    """Several inputs read as one stream of lines, numbered across files."""

    names: Sequence[str]
    #: Position of the first line of each source read so far (to map a position back to file:line).
    starts: list[int] = field(default_factory=list)
    #: Positions read so far (the next line's position).
    position: int = 0

    def __post_init__(self) -> None:
        if not self.names:
            raise InputFileError("no input files given")
        if list(self.names).count(STDIN) > 1:
            raise InputFileError("stdin ('-') can be read only once")
        for name in self.names:
            readable(name)

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(position, raw line bytes without its newline) for every line of every source."""
        for name in self.names:
            self.starts.append(self.position)
            try:
                with _open_binary(name) as stream:
                    while True:
                        line = stream.readline(MAX_LINE_BYTES + 1)
                        if not line:
                            break
                        if line.endswith(b"\n"):
                            line = line[:-1]
                        elif len(line) > MAX_LINE_BYTES:
                            raise InputFileError(
                                f"{display_name(name)}:{self.position - self.starts[-1] + 1}: line longer "
                                f"than {MAX_LINE_BYTES // (1024 * 1024)} MiB; is this a JSONL file? "
                                "Split or fix that line, then load again"
                            )
                        yield self.position, line
                        self.position += 1
            except OSError as exc:
                if isinstance(exc, gzip.BadGzipFile):
                    raise InputFileError(f"{display_name(name)}: not a readable gzip file ({exc})") from exc
                raise InputFileError(
                    f"{display_name(name)}: read failed after line {self.position - self.starts[-1]} "
                    f"({exc.strerror or exc})"
                ) from exc
            except (EOFError, zlib.error) as exc:
                raise InputFileError(
                    f"{display_name(name)}: gzip stream broken after line "
                    f"{self.position - self.starts[-1]} ({exc or 'truncated'})"
                ) from exc

    def where(self, position: int) -> str:
        """``file:line`` (1-based line) of a position already read."""
        index = max(0, bisect.bisect_right(self.starts, position) - 1)
        if index >= len(self.starts):
            return f"position {position}"
        return f"{display_name(self.names[index])}:{position - self.starts[index] + 1}"
