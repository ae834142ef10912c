"""Render and validate a generated fleet; print wall time and per-host cost.

    python bench/bench_kickstarts.py [--hosts 10000]

Target on the 2-core reference machine: 10,000 hosts in <= 10 s (load + render + pykickstart
validation + write). A naive pykickstart handler per host costs ~22 ms a host (~220 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet import write_fleet_site  # noqa: E402
from builder import kickstart, site  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site_path = write_fleet_site(Path(tmp) / "fleet.yaml", args.hosts)
        start = time.perf_counter()
        loaded = site.load(site_path)
        loaded_at = time.perf_counter()
        written = kickstart.write_kickstarts(loaded, Path(tmp) / "out" / "ks")
        done = time.perf_counter()
        one = kickstart.Renderer(loaded)
        single_start = time.perf_counter()
        sample = loaded.hosts[: min(200, len(loaded.hosts))]
        for host in sample:
            one.render_host(host)
        single = (time.perf_counter() - single_start) / len(sample)
    total = done - start
    print(f"hosts:                      {len(written)}")
    print(f"load + validate site:       {loaded_at - start:7.2f} s")
    print(f"render + pykickstart + write: {done - loaded_at:5.2f} s")
    per_host = total / len(written) * 1000
    print(f"total wall time:            {total:7.2f} s  ({per_host:.2f} ms/host)")
    print(f"one process, per host:      {single * 1000:7.2f} ms (render + validate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
