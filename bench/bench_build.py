"""`ksbuild build` on a generated fleet: the first build, a no-op rebuild, and a rebuild after
one host changed. Prints wall times; the no-op target is <= 1 s for 10,000 hosts.

    python bench/bench_build.py [--hosts 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet import fleet_site, write_fleet_site  # noqa: E402
from builder import build  # noqa: E402


def timed(options: build.Options) -> tuple[float, build.Result]:
    start = time.perf_counter()
    result = build.build(options)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site_path = write_fleet_site(Path(tmp) / "fleet.yaml", args.hosts)
        options = build.Options(site=site_path, out=Path(tmp) / "out",
                                source_date_epoch=1700000000)
        first, result = timed(options)
        noop, again = timed(options)
        assert again.up_to_date, "the second build should have had nothing to do"
        doc = fleet_site(args.hosts)
        doc["hosts"][0]["timezone"] = "Europe/Berlin"  # type: ignore[index]
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        one, changed = timed(options)
    print(f"hosts:                       {args.hosts}")
    per_host = first / args.hosts * 1000
    print(f"first build:                 {first:7.2f} s ({per_host:.2f} ms/host)")
    print(f"no-op rebuild:               {noop:7.2f} s")
    print(f"one host changed:            {one:7.2f} s, wrote {len(changed.written)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
