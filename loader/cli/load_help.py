"""The help text of `loader load`: what a line is, its position, repairs, re-OCR, resuming."""

LOAD_EPILOG = """\b
Examples:
  loader load results.jsonl --batch-id B1
  loader load part-*.jsonl.gz --batch-id B1 --chunk-size 10000
  zcat results.jsonl.gz | loader load - --batch-id B1 --total 250000
  loader load results.jsonl --batch-id B1 --skip 45000     # resume after Ctrl-C
  loader load fixme.jsonl --batch-id B1 --repair           # fixed rejects, back in place
  loader load part2.jsonl -b B1 --offset 50000 --total 100000   # the second half of a batch
  loader load rerun.jsonl --batch-id B1 --replace          # re-OCR: replace stored results

\b
Every line of every file is one input (an OCRResult JSON object); gzip is
detected by its magic bytes. Lines are numbered across the files in order,
from 0 (or from --offset): the first line of the second file continues after
the last line of the first. That number is the input's position in the batch,
its identity: loading the same lines again, in any chunks, changes nothing,
and a line at a position that holds another input is refused (exit 1, nothing
of that chunk kept).
A blank line (only whitespace) is no input: it is skipped, but it keeps its
number, so the lines after it keep theirs. Any other line that is not a JSON
object is rejected with its raw bytes; an invalid result is stored as failed
with the reason, as is one beyond the limits LOADER_MAX_BOXES (10000 boxes),
LOADER_MAX_TEXT_CHARS and LOADER_MAX_BBOX_POINTS read from the environment.
Input that is not JSON lines at all (xz/bzip2/zstd/zip, NUL bytes, mostly
invalid UTF-8) is refused before anything is written.

\b
--repair loads the file `loader rejects B --export` wrote, once fixed: line N
goes back to position N-1, and an image stored there resolves the batch's open
reject at that position (a line that was not JSON included); a line for an
image the batch stored as failed replaces that failure. A line that fixes
nothing is refused, never added; one still bad takes its reject's place.
--replace re-runs OCR: each line replaces the stored result of its image in
the batch (status, error, boxes, public_path, model_version).

\b
A new batch is registered with as many images as the input has non-blank lines
(or --total). Ctrl-C stops after the chunk in flight; committed chunks stay and
the command to resume is printed (exit status 130).
"""
