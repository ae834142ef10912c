#!/usr/bin/env python3
"""Benchmark `ksbuild iso` against its floor, `md5sum BASE` (one MD5 pass over the image:
the media checksum the repack implants costs that much, on one core), against `cp` of the same
base, and against xorriso's replay (`xorriso -indev BASE -outdev OUT -boot_image any replay
-map ks.cfg /ks.cfg`). One more reference: `cp` followed by isomd5sum's `implantisomd5` (what a
shell script that repacks with a media checksum pays).

    .venv/bin/python bench/bench_iso.py              # 1 GiB and 4 GiB bases, 5 runs each
    .venv/bin/python bench/bench_iso.py --sizes 2 --runs 3
    .venv/bin/python bench/bench_iso.py --smoke      # a 64 MiB base, 1 run (CI)

`ksbuild` is the whole command as a user runs it (`python -m builder iso ...`: process start,
imports, the Secure Boot check, rendering and validating the kickstart, the repack, exit);
`ksbuild-rerun` the same over the ISO the run before wrote (a rebuild); `ksbuild-call` is the
library call alone (builder.media.iso.build_site_iso in a process that has loaded the site; it
times itself). The bases are the test fixture's CentOS-shaped ISO with zero-filled padding
spread over --files-per-gib files (as a DVD's packages are), copied to a plain (not sparse)
file, so every contestant really moves every byte. One warm-up round first: all runs then read
the base from the page cache. Rounds run every contestant in turn, so each baseline is measured
in the same run, under the same load (printed before and after: the machine is shared). Prints
the median and best wall time of each, its ratios to cp and to md5sum, the peak resident memory
of each process (VmHWM), then a line per size with the ratios of the goals: ksbuild within
1.10x md5sum (issue 16), <= 150 MiB peak RSS and faster than xorriso (issue 3).
"""

from __future__ import annotations

import argparse
import os
import re
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


# The library call, timed from inside: the site is loaded and builder.media.iso imported first,
# as a program that calls ksbuild has done; the first call's lazy imports (pykickstart) count.
LIBRARY_CALL = """
import sys, time
from pathlib import Path
from builder import site
from builder.media import iso
loaded = site.load(Path(sys.argv[1]))
start = time.perf_counter()
iso.build_site_iso(loaded, Path(sys.argv[2]), Path(sys.argv[3]))
print(f"KSBUILD-CALL-SECONDS {time.perf_counter() - start}")
"""
# Contestants that write over the output the one before them left, instead of a new file.
RERUN = {"ksbuild-rerun"}
CALL_SECONDS = re.compile(r"^KSBUILD-CALL-SECONDS ([0-9.]+)$", re.M)


@dataclass
class Run:
    seconds: float
    peak_mib: float


def timed(argv: list[str], env: dict[str, str] | None = None) -> Run:
    """Wall time and peak RSS of one process (or the time it reports for itself, for the
    library call). The peak is the process's VmHWM (the high-water mark of its own address
    space, so not the bench's Python it was forked from), read every 10 ms once it has exec'd;
    only its last 10 ms could escape."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    own = "\0".join(argv).encode()
    peak_kib = 0
    while proc.poll() is None:
        peak_kib = max(peak_kib, _vm_hwm(proc.pid, own))
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    out, err = (pipe.read().decode(errors="replace") if pipe else ""
                for pipe in (proc.stdout, proc.stderr))
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{err}")
    reported = CALL_SECONDS.search(out)
    if reported:
        seconds = float(reported.group(1))
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
        # The same again over the output the run before left (a rebuild; see RERUN).
        "ksbuild-rerun": [sys.executable, "-m", "builder", "iso", str(site), "--base",
                          str(base), "-o", str(out)],
        "ksbuild-call": [sys.executable, "-c", LIBRARY_CALL, str(site), str(base), str(out)],
        "xorriso": ["xorriso", "-abort_on", "FATAL", "-indev", str(base), "-outdev", str(out),
                    "-boot_image", "any", "replay", "-map", str(ks), "/ks.cfg"],
        # xorriso keeps the base's implanted checksum, which no longer matches: a fair
        # comparison adds the implant ksbuild does.
        "xorriso+implant": ["sh", "-c", 'xorriso -abort_on FATAL -indev "$1" -outdev "$2" '
                            '-boot_image any replay -map "$3" /ks.cfg 2>/dev/null && '
                            'implantisomd5 -f "$2" >/dev/null', "sh", str(base), str(out),
                            str(ks)],
    }


@dataclass
class Row:
    tool: str
    median: float  # seconds
    best: float
    to_cp: float
    to_md5sum: float
    peak_mib: float


def bench_size(size: int, runs: int, work: Path, files: int) -> list[Row]:
    fixture = centos_iso(size_padding=max(0, size - (32 << 20)), padding_files=files)
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
            if name not in RERUN:
                (work / "out.iso").unlink(missing_ok=True)
            subprocess.run(["sync"], check=True)
            measured = timed(argv, env)
            if round_:
                results[name].append(measured)
    (work / "out.iso").unlink(missing_ok=True)
    base.unlink()
    medians = {name: statistics.median(r.seconds for r in rs) for name, rs in results.items()}
    return [Row(name, medians[name], min(r.seconds for r in rs), medians[name] / medians["cp"],
                medians[name] / medians["md5sum"], max(r.peak_mib for r in rs))
            for name, rs in results.items()]


def goals(size: int, rows: list[Row]) -> str:
    """One line: the ratios the goals are about, with the baselines they are taken against."""
    by = {row.tool: row for row in rows}
    whole, call, rerun = by["ksbuild"], by["ksbuild-call"], by["ksbuild-rerun"]
    best = whole.best / by["md5sum"].best
    return (f"{size / GIB:.2f} GiB: ksbuild {whole.to_md5sum:.2f}x md5sum (best {best:.2f}x) "
            f"({whole.median:.2f} s vs {by['md5sum'].median:.2f} s, same run; goal <= 1.10x), "
            f"library call {call.to_md5sum:.2f}x md5sum ({call.median:.2f} s), "
            f"over an existing output {rerun.to_md5sum:.2f}x md5sum ({rerun.median:.2f} s); "
            f"{whole.to_cp:.2f}x cp ({by['cp'].median:.2f} s); "
            f"{whole.median / by['xorriso+implant'].median:.2f}x xorriso+implant; "
            f"peak RSS {whole.peak_mib:.0f} MiB")


def load() -> str:
    return " ".join(f"{figure:.2f}" for figure in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 4],
                        help="base sizes in GiB (default 1 4)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs each (default 5)")
    parser.add_argument("--files-per-gib", type=int, default=1000,
                        help="files in the base per GiB (default 1000: the DVD carries about "
                        "4,000 packages in 4.4 GiB; each file costs the repack's parse and "
                        "layout; 0: a few 1 GiB fillers)")
    parser.add_argument("--smoke", action="store_true", help="one 64 MiB base, one run")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (default: a temporary one; needs 2x the size)")
    args = parser.parse_args()
    sizes = [64 << 20] if args.smoke else [int(gib * GIB) for gib in args.sizes]
    runs = 1 if args.smoke else args.runs
    for tool in ("cp", "xorriso", "md5sum", "implantisomd5"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    print(f"{'base':>9}  {'tool':16} {'median s':>9} {'best s':>7} {'x cp':>6} {'x md5sum':>9} "
          f"{'peak RSS MiB':>13}")
    summary = []
    with tempfile.TemporaryDirectory(prefix="ksbuild-bench-", dir=args.work) as temp:
        for size in sizes:
            before = load()
            files = round(args.files_per_gib * size / GIB)
            rows = bench_size(size, runs, Path(temp), files)
            for row in rows:
                print(f"{size / GIB:7.2f} G  {row.tool:16} {row.median:9.2f} {row.best:7.2f} "
                      f"{row.to_cp:6.2f} {row.to_md5sum:9.2f} {row.peak_mib:13.1f}")
            summary.append(f"{goals(size, rows)}; {files} files; load {before} -> {load()}")
            sys.stdout.flush()
    print(f"\nmedians of {runs} run(s), page cache warm for every contestant:")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
