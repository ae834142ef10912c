"""Loading the site file (builder/site.py `load`) of a generated fleet, each figure beside the
full load (no cache) of the same text, measured in the same run (issue 16): the full load; a
load through the per-host cache with nothing changed; with one host's field changed; with a
line added above the middle host; with a default changed (the cache cannot help: a full load,
and the cache rewritten). Each figure is the best and the median of --repeat runs, each in a
fresh process (the loader's caches of values start empty, as in `ksbuild build`).

    python bench/bench_load.py [--hosts 10000] [--repeat 3]

Targets on the 2-core reference machine, 10,000 hosts: full <= 1.5 s, one host changed
<= 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet import fleet_site  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# One load in a fresh process; prints its seconds. With a cache, the cache is saved after
# (as `ksbuild build` does), outside the timing.
ONE_LOAD = """
import sys, time
from pathlib import Path
from builder import site
path, cache = Path(sys.argv[1]), (Path(sys.argv[2]) if len(sys.argv) > 2 else None)
start = time.perf_counter()
loaded = site.load(path, cache=cache)
print(time.perf_counter() - start)
if cache is not None:
    site.save_cache(loaded, cache)
"""


def one_load(path: Path, cache: Path | None = None) -> float:
    args = [sys.executable, "-c", ONE_LOAD, str(path), *([str(cache)] if cache else [])]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def middle_item(lines: list[str]) -> int:
    starts = [n for n, line in enumerate(lines) if line.startswith("- ")]
    return starts[len(starts) // 2]


def one_host(text: str) -> str:
    lines = text.split("\n")
    at = middle_item(lines) + 1
    return "\n".join(lines[:at] + ["  kernel_args: [console=ttyS0]"] + lines[at:])


def line_above(text: str) -> str:
    lines = text.split("\n")
    at = middle_item(lines)
    return "\n".join(lines[:at] + ["# a line above the middle host"] + lines[at:])


def a_default(text: str) -> str:
    return text.replace("timezone: UTC", "timezone: Europe/Berlin", 1)


def measure(text: str, folder: Path, repeat: int, edit: object = None) -> tuple[list[float],
                                                                                 list[float]]:
    """(full loads, cached loads) of `text` after `edit`; the cache made from `text` first."""
    path, cache = folder / "site.yaml", folder / "site-cache"
    full, cached = [], []
    for _ in range(repeat):
        for name in (cache.name, cache.name + ".delta"):
            (folder / name).unlink(missing_ok=True)
        path.write_text(text, encoding="utf-8")
        one_load(path, cache)  # the previous build: writes the cache
        if callable(edit):
            path.write_text(edit(text), encoding="utf-8")
        cached.append(one_load(path, cache))
        full.append(one_load(path))
    return full, cached


def figure(values: list[float]) -> str:
    return f"best {min(values):6.3f} s, median {statistics.median(values):6.3f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    text = yaml.safe_dump(fleet_site(args.hosts), sort_keys=False)
    print(f"{args.hosts} hosts, {len(text) / 1e6:.2f} MB of YAML")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, edit in (("nothing changed", None), ("one host changed", one_host),
                            ("a line added above the middle host", line_above),
                            ("a default changed", a_default)):
            full, cached = measure(text, folder, args.repeat, edit)
            print(f"{label}:")
            print(f"  full load (baseline): {figure(full)}")
            print(f"  through the cache:    {figure(cached)}  "
                  f"({statistics.median(full) / statistics.median(cached):.1f}x)")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
