"""Run a command; write its peak RSS (KiB) and CPU seconds to a file.

    python benchmarks/peak_rss.py OUT_FILE COMMAND...

Why a wrapper: Linux counts a child's peak RSS from the high-water mark of the
memory it was forked with, so a child of a big process (a benchmark script that
generated its input) reports at least that process's peak, whatever it used
itself. Started from this small interpreter instead, the command's figure is
its own (the wrapper's ~10 MiB is the lowest it can read). Exits with the
command's status; stdin, stdout and stderr pass through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    out, command = Path(argv[0]), argv[1:]
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)
    out.write_text(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}\n", encoding="utf-8")
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
