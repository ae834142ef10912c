"""Every benchmark still runs, at a small size: the figures are for people, not asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize(("script", "args", "expected"), [
    ("bench_kickstarts.py", ["--hosts", "300"], "total wall time"),
    ("bench_validate.py", ["--hosts", "30", "--repeat", "1"], "ms per kickstart"),
    ("bench_build.py", ["--hosts", "300", "--iso-hosts", "2"],
     "full build / the three baselines summed:"),
    ("bench_load.py", ["--hosts", "300", "--repeat", "1"], "a default changed:"),
    ("bench_pxe.py", ["--hosts", "300"], "whole PXE tree"),
    ("bench_installtree.py", ["--smoke"], "nginx, kept alive:"),
    ("bench_post_sandbox.py", ["--repeat", "1"], "chroot"),
    # 1,000 hosts at once for a few seconds: nothing lost (exit 1 otherwise), the page in
    # chromium shows them all.
    ("bench_events.py", ["--hosts", "1000", "--seconds", "3", "--browser"],
     "events lost:           0 host(s)"),
])
def test_benchmark_runs(script: str, args: list[str], expected: str) -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout, done.stdout
