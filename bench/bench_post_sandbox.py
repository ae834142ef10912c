"""Time the %post sandbox on the example site, in each isolation mode.

    python bench/bench_post_sandbox.py [--repeat 5]

Prints the median of each phase: build the root, run the example's %post, check what it
left, snapshot the tree. The baseline from the same run is the bare cost of starting a
program in the root (`/bin/true` through the same isolation), which every %post, stub call
and ifcfg read pays. Goal: the whole example site in well under a second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.kickstart import render_site  # noqa: E402
from builder.overlay import Overlay, OverlayTree  # noqa: E402
from builder.site import Host, load  # noqa: E402
from tests.sandbox import Sandbox  # noqa: E402
from tests.sandbox.checks import check_host  # noqa: E402
from tests.sandbox.isolation import MODES, run_in  # noqa: E402
from tests.sandbox.tree import snapshot  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "kickstarts/site.yaml"


def one_host(folder: Path, mode: str, kickstart: str, host: Host,
             overlay: Overlay) -> dict[str, float]:
    """Seconds per phase for one host."""
    stamps = [time.perf_counter()]
    box = Sandbox(folder, mode)
    box.seed_anaconda_network(kickstart)
    stamps.append(time.perf_counter())
    run_in(mode, box.target, "/.sandbox/out", ["/bin/true"], 30)
    stamps.append(time.perf_counter())
    result = box.install(kickstart)
    stamps.append(time.perf_counter())
    assert result.ok, result.report()
    assert check_host(box, host, overlay) == []
    stamps.append(time.perf_counter())
    snapshot(box.target)
    stamps.append(time.perf_counter())
    phases = ("build", "true", "install", "check", "snapshot")
    return {name: stamps[i + 1] - stamps[i] for i, name in enumerate(phases)}


def one_round(folder: Path, mode: str) -> dict[str, float]:
    """Seconds per phase for the whole example site."""
    site = load(EXAMPLE)
    figures = dict.fromkeys(("true", "build", "install", "check", "snapshot"), 0.0)
    for number, (hostname, kickstart) in enumerate(render_site(site).items()):
        overlay = OverlayTree(site.overlays).for_host(hostname)
        host_figures = one_host(folder / f"{mode}-{number}", mode, kickstart,
                                site.host(hostname), overlay)
        for key, value in host_figures.items():
            figures[key] += value
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"example site: {len(load(EXAMPLE).hosts)} host(s); median of {args.repeat} runs, ms")
    print(f"{'mode':10} {'true (baseline)':>16} {'build':>8} {'install':>8} {'check':>8} "
          f"{'snapshot':>9} {'total':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in MODES:
            rounds = [one_round(Path(tmp) / str(n), mode) for n in range(args.repeat)]
            median = {key: statistics.median(r[key] for r in rounds) * 1000 for key in rounds[0]}
            total = sum(v for k, v in median.items() if k != "true")
            print(f"{mode:10} {median['true']:16.1f} {median['build']:8.1f} "
                  f"{median['install']:8.1f} {median['check']:8.1f} {median['snapshot']:9.1f} "
                  f"{total:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
