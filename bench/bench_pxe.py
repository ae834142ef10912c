"""Build the PXE tree of a generated fleet; print the wall time, the per-host cost, and, from
the same run, the cost of rendering + validating the kickstarts alone (the baseline: what the
tree adds on top of them is the rest).

    python bench/bench_pxe.py [--hosts 10000] [--base ISO] [--jobs N]

Target on the 2-core reference machine: 10,000 hosts -> the whole tree in <= 10 s. The base
defaults to the test suite's CentOS-shaped ISO (its kernel and initrd are copied into the tree).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet import write_fleet_site  # noqa: E402
from builder import kickstart, site
from builder.pxe import tree as pxe  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10000)
    parser.add_argument("--base", type=Path, help="base ISO (default: the tests' test ISO)")
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    base = args.base
    if base is None:
        from tests.fixtures import centos_iso

        base = centos_iso()
    with tempfile.TemporaryDirectory() as tmp:
        site_path = write_fleet_site(Path(tmp) / "fleet.yaml", args.hosts)
        start = time.perf_counter()
        loaded = site.load(site_path)
        loaded_at = time.perf_counter()

        server = "http://10.0.0.5"
        kickstart.render_site(loaded, jobs=args.jobs,
                              extra=lambda h: {"pxe_done_url": f"{server}/done/{h.hostname}"})
        kickstarts = time.perf_counter() - loaded_at

        tree_start = time.perf_counter()
        result = pxe.build_tree(pxe.Options(loaded, Path(tmp) / "pxe", base, server=server,
                                            jobs=args.jobs))
        tree = time.perf_counter() - tree_start
        files = sum(1 for p in (Path(tmp) / "pxe").rglob("*") if p.is_file())
    n = result.hosts
    inside_ks = result.seconds["kickstarts (render + validate)"]
    print(f"hosts:                             {n} ({files} files in the tree)")
    print(f"load + validate site:              {loaded_at - start:7.2f} s")
    print(f"kickstarts alone (baseline run):   {kickstarts:7.2f} s  "
          f"({kickstarts / n * 1000:.2f} ms/host)")
    print(f"whole PXE tree (kickstarts incl.): {tree:7.2f} s  ({tree / n * 1000:.2f} ms/host)")
    for name, seconds in result.seconds.items():
        print(f"  {name + ':':<46} {seconds:6.2f} s  ({seconds / n * 1000:.3f} ms/host)")
    beyond = tree - inside_ks
    print(f"  {'the tree beyond its kickstarts:':<46} {beyond:6.2f} s  "
          f"({beyond / n * 1000:.3f} ms/host)")
    print(f"site load + whole tree:            {loaded_at - start + tree:7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
