"""The ISO benchmark still runs (its --smoke size): figures are for people, not asserted."""

from __future__ import annotations

import subprocess
import sys

from tests.test_iso_support import REPO


def test_benchmark_smoke() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_iso.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert {row[2] for row in rows} == {"cp", "cp+implant", "md5sum", "ksbuild", "xorriso",
                                        "xorriso+implant"}
