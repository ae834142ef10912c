#!/usr/bin/env python3
"""Benchmark `ksbuild iso` against the floor (`cp` of the same base) and against xorriso's
replay (`xorriso -indev BASE -outdev OUT -boot_image any replay -map ks.cfg /ks.cfg`).
Two more references: `md5sum BASE` (one MD5 pass over the image: the media checksum alone
costs that much, on one core) and `cp` followed by isomd5sum's `implantisomd5` (what a
shell script that repacks with a media checksum pays).

    .venv/bin/python bench/bench_iso.py              # 1 GiB and 4 GiB bases, 3 runs each
    .venv/bin/python bench/bench_iso.py --sizes 2 --runs 5
    .venv/bin/python bench/bench_iso.py --smoke      # a 64 MiB base, 1 run (CI)

The bases are the test fixture's CentOS-shaped ISO with zero-filled padding, copied to a plain
(not sparse) file, so every contestant really moves every byte. One warm-up run of each first:
all runs then read the base from the page cache. Prints the median wall time of each, its ratio
to cp, and the peak resident memory of each process (VmHWM). Targets (issue 3): ksbuild
<= 1.2x cp, faster than xorriso, peak RSS <= 150 MiB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures import centos_iso  # noqa: E402
from tests.test_iso_support import ONE_HOST, write_site  # noqa: E402

GIB = 1 << 30


@dataclass
class Run:
    seconds: float
    peak_mib: float


def timed(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Wall time and peak RSS of one process. The peak is the process's VmHWM (the high-water
    mark of its own address space, so not the bench's Python it was forked from), read every
    10 ms once it has exec'd; only its last 10 ms could escape."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    own = "\0".join(argv).encode()
    peak_kib = 0
    while proc.poll() is None:
        peak_kib = max(peak_kib, _vm_hwm(proc.pid, own))
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{err}")
    # A shell pipeline's children are not followed: no figure rather than the shell's own.
    return Run(seconds, float("nan") if argv[0] == "sh" else peak_kib / 1024)


def _vm_hwm(pid: int, own_cmdline: bytes) -> int:
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0") != own_cmdline:
            return 0  # not exec'd yet: still a copy of this Python
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def plain_copy(source: Path, target: Path) -> None:
    """A copy with every block allocated (no holes), so reading it costs what real data does."""
    with source.open("rb") as src, target.open("wb") as dst:
        while block := src.read(8 << 20):
            dst.write(block)


def contestants(base: Path, work: Path, site: Path, ks: Path) -> dict[str, list[str]]:
    out = work / "out.iso"
    return {
        "cp": ["cp", str(base), str(out)],
        # The floor with a media checksum: copy, then isomd5sum's own C implant (one MD5 pass).
        "cp+implant": ["sh", "-c", 'cp "$1" "$2" && implantisomd5 -f "$2" >/dev/null', "sh",
                       str(base), str(out)],
        "md5sum": ["md5sum", str(base)],
        "ksbuild": [sys.executable, "-m", "builder", "iso", str(site), "--base", str(base),
                    "-o", str(out)],
        "xorriso": ["xorriso", "-abort_on", "FATAL", "-indev", str(base), "-outdev", str(out),
                    "-boot_image", "any", "replay", "-map", str(ks), "/ks.cfg"],
        # xorriso keeps the base's implanted checksum, which no longer matches: a fair
        # comparison adds the implant ksbuild does.
        "xorriso+implant": ["sh", "-c", 'xorriso -abort_on FATAL -indev "$1" -outdev "$2" '
                            '-boot_image any replay -map "$3" /ks.cfg 2>/dev/null && '
                            'implantisomd5 -f "$2" >/dev/null', "sh", str(base), str(out),
                            str(ks)],
    }


Row = tuple[str, float, float, float, float]  # tool, median s, x cp, x md5sum, peak MiB


def bench_size(size: int, runs: int, work: Path) -> list[Row]:
    fixture = centos_iso(size_padding=max(0, size - (32 << 20)))
    base = work / "base.iso"
    plain_copy(fixture, base)
    site = write_site(work, ONE_HOST)
    ks = work / "ks.cfg"
    ks.write_text("# benchmark kickstart\nreboot\n")
    env = {"SOURCE_DATE_EPOCH": "1700000000", "PYTHONPATH": str(REPO)}
    commands = contestants(base, work, site, ks)
    results: dict[str, list[Run]] = {name: [] for name in commands}
    for round_ in range(runs + 1):  # round 0 warms the page cache and is not counted
        for name, argv in commands.items():
            (work / "out.iso").unlink(missing_ok=True)
            subprocess.run(["sync"], check=True)
            measured = timed(argv, env)
            if round_:
                results[name].append(measured)
    (work / "out.iso").unlink(missing_ok=True)
    base.unlink()
    medians = {name: statistics.median(r.seconds for r in rs) for name, rs in results.items()}
    return [(name, medians[name], medians[name] / medians["cp"],
             medians[name] / medians["md5sum"], max(r.peak_mib for r in rs))
            for name, rs in results.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4],
                        help="base sizes in GiB (default 1 4)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs each (default 3)")
    parser.add_argument("--smoke", action="store_true", help="one 64 MiB base, one run")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a temporary one; needs 2x the size)")
    args = parser.parse_args()
    sizes = [64 << 20] if args.smoke else [int(gib * GIB) for gib in args.sizes]
    runs = 1 if args.smoke else args.runs
    for tool in ("cp", "xorriso", "md5sum", "implantisomd5"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    print(f"{'base':>9}  {'tool':16} {'median s':>9} {'x cp':>6} {'x md5sum':>9} "
          f"{'peak RSS MiB':>13}")
    with tempfile.TemporaryDirectory(prefix="ksbuild-bench-", dir=args.work) as temp:
        for size in sizes:
            for name, seconds, to_cp, to_md5, peak in bench_size(size, runs, Path(temp)):
                print(f"{size / GIB:7.2f} G  {name:16} {seconds:9.2f} {to_cp:6.2f} "
                      f"{to_md5:9.2f} {peak:13.1f}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
