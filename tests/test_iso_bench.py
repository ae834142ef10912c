"""The ISO benchmark still runs (its --smoke size): figures are for people, not asserted."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.test_iso_support import REPO


def test_benchmark_smoke() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_iso.py"), "--smoke"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r" *[0-9.]+ G ", line)]
    assert {row[2] for row in rows} == {"cp", "cp+implant", "md5sum", "ksbuild", "ksbuild-call",
                                        "ksbuild-rerun", "xorriso", "xorriso+implant"}
    # The line the goals are read from: the ratios with their same-run baselines.
    assert re.search(r"^0\.06 GiB: ksbuild [0-9.]+x md5sum \(best [0-9.]+x\) "
                     r"\([0-9.]+ s vs [0-9.]+ s, same run", done.stdout, re.M), done.stdout
