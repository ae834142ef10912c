"""`ksbuild build` on a generated fleet with a PXE tree (issue 16): a full build, a no-op rebuild,
one host changed, a field of `defaults` changed; each with the files it rewrote, and the
baselines measured in the same run: loading the site file alone (the floor of any rebuild that
must look at it), rendering + validating every kickstart once, a host's plain one and its PXE
one (what a full build cannot avoid: 20,000 for 10,000 hosts), and writing as many files of the
same sizes (what a build from nothing cannot avoid either, on this file system at that moment).
The no-op and one host changed again, each as the `ksbuild build` command (a process: start-up,
imports and exit count), and one host changed right after the default did (the build after one
that rewrote 20,001 files). Last (without ISOs), the full build's wall and CPU time over the
three baselines summed: how much the build adds to the work it cannot avoid, measured in the
same minutes (the seconds themselves follow this machine's speed of the moment). Then the same
at a smaller size with per-host ISOs. Peak memory (this process, and the largest child: a
render worker or a command) at the end. First and last, the time of a fixed pure-Python loop:
the speed of this machine at that moment (a shared VM's varies from day to day by 1.5x and
more), so that figures of different runs can be compared. Beside each time, the CPU seconds
spent (this process and the children it waited for: the render workers, the command), which a
busy neighbour on the host (steal time) does not inflate as it does the wall time, and which,
over the wall time, says how busy the cores were.

    python bench/bench_build.py [--hosts 10000] [--iso-hosts 20] [--base ISO]

Targets on the 2-core reference machine, 10,000 hosts: full <= 10 s, one host <= 1 s, defaults
changed <= full, no-op <= 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.fleet import fleet_site, pxe_extra  # noqa: E402
from builder import build, kickstart, site  # noqa: E402

Edit = Callable[[dict[str, Any]], None]


class Spent:
    """The wall and CPU seconds from its making to `done()`."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()

    def done(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its children waited for."""
    now = os.times()
    return now.user + now.system + now.children_user + now.children_system


def timed(options: build.Options) -> tuple[tuple[float, float], build.Result]:
    spent = Spent()
    result = build.build(options)
    return spent.done(), result


def dropped(host: site.Host, text: str) -> None:
    """What becomes of a baseline's kickstart: nothing."""


def one_host(doc: dict[str, Any]) -> None:
    doc["hosts"][len(doc["hosts"]) // 2]["kernel_args"] = ["console=ttyS0"]


def another_host(doc: dict[str, Any]) -> None:
    doc["hosts"][len(doc["hosts"]) // 3]["kernel_args"] = ["console=ttyS1"]


def a_third_host(doc: dict[str, Any]) -> None:
    doc["hosts"][len(doc["hosts"]) // 4]["kernel_args"] = ["console=ttyS2"]


def command(options: build.Options) -> tuple[float, float]:
    """`ksbuild build` as an operator runs it: a process (start, imports, exit), its modules
    compiled once beforehand (compiled()), as installing a package does."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(options.source_date_epoch)}
    spent = Spent()
    subprocess.run([sys.executable, "-m", "builder", "build", str(options.site), "-o",
                    str(options.out)], env=env, check=True, capture_output=True)
    return spent.done()


def compiled() -> None:
    """ksbuild's modules compiled into Python's bytecode cache (pip compiles a package it
    installs; an editable install is compiled on first import, unless the environment says
    PYTHONDONTWRITEBYTECODE, as this one may)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(build.__file__).parent)],
                   check=True)


def defaults(doc: dict[str, Any]) -> None:
    doc["defaults"]["timezone"] = "Europe/Berlin"


def fleet(count: int, base: Path, iso: str) -> dict[str, Any]:
    doc = fleet_site(count)
    doc.update(media={"path": str(base)}, outputs={"iso": iso, "pxe": True},
               pxe={"server": "http://10.0.0.5", "tree_path": "/srv/ksbuild/pxe"})
    return doc


def output_sizes(out: Path) -> tuple[list[int], int]:
    """The sizes of the files in OUT, as a reader sees it (a file under several names, hard
    links, once), and the number of names."""
    sizes: dict[tuple[int, int], int] = {}
    names = 0
    for folder, dirs, files in os.walk(out, followlinks=True):
        dirs[:] = [d for d in dirs if d != ".ksbuild"]
        for name in files:
            status = os.stat(os.path.join(folder, name))
            sizes[status.st_dev, status.st_ino] = status.st_size
        names += len(files)
    return list(sizes.values()), names


def write_files(folder: Path, sizes: list[int]) -> tuple[float, float]:
    """Seconds to write files of these sizes into a new folder: the floor of a build from
    nothing, measured where and when it runs (this file system's cost of a new file varies
    several times with how many were deleted in the minutes before)."""
    spent = Spent()
    folder.mkdir()
    for number, size in enumerate(sizes):
        (folder / str(number)).write_bytes(b"x" * size)
    return spent.done()


def run(label: str, count: int, base: Path, iso: str, tmp: Path) -> None:
    doc = fleet(count, base, iso)
    site_path = tmp / f"{label}.yaml"
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    options = build.Options(site=site_path, out=tmp / f"{label}-out",
                            source_date_epoch=1700000000)
    rows = []
    took, result = timed(options)
    rows.append(("full build", took, result))
    sizes, names = output_sizes(options.out)
    write = write_files(tmp / f"{label}-files", sizes)  # kept: deleting slows what follows
    took, result = timed(options)
    assert result.up_to_date, "the second build should have had nothing to do"
    rows.append(("no-op rebuild", took, result))
    processes = []
    for name, edit in (("one host changed", one_host), ("a default changed", defaults)):
        edit(doc)
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        took, result = timed(options)
        rows.append((name, took, result))
        if edit is one_host:  # the same again as commands, from the same state
            compiled()
            processes.append(("no-op rebuild", command(options)))
            another_host(doc)
            site_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
            processes.append(("one host changed", command(options)))
    # The GitOps loop's next commit after a default changed: the build before rewrote 20,001
    # files, which it linked into the spare (build._refill_replaced) as it finished.
    a_third_host(doc)
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    processes.append(("one host changed after a default", command(options)))
    spent = Spent()
    loaded = site.load(site_path)
    load = spent.done()
    spent = Spent()
    # Each text dropped where it is rendered (as the build's workers write theirs): the peak
    # memory reported at the end stays the builds'.
    kickstart.render_variants(loaded, {
        "ks": kickstart.Variant(loaded.hosts, output=dropped),
        "pxe": kickstart.Variant(loaded.hosts, pxe_extra, output=dropped)})
    render = spent.done()
    print(f"{label}: {count} hosts, iso: {iso}, {len(sizes)} files ({names} names) in the output")
    lines = [("baseline: load the site", load, ""),
             ("baseline: render + validate all once", render,
              f" ({2 * len(loaded.hosts)} kickstarts)"),
             ("baseline: write as many files", write, f" ({sum(sizes) >> 20} MiB)")]
    lines += [(name, took, f", rewrote {len(result.written)} file(s)")
              for name, took, result in rows]
    lines += [(f"{name}, as a command", took, "") for name, took in processes]
    for name, (wall, cpu), more in lines:
        print(f"  {name + ':':<49} {wall:7.2f} s (CPU {cpu:6.2f} s){more}")
    if iso != "none":  # the baselines leave out the ISOs' repack: no floor to compare with
        return
    wall, cpu = rows[0][1]
    floor_wall, floor_cpu = (sum(spent[index] for _, spent, _ in lines[:3]) for index in (0, 1))
    print(f"  {'full build / the three baselines summed:':<49} {wall / floor_wall:7.2f}"
          f"   (CPU {cpu / floor_cpu:6.2f})")


def yardstick() -> str:
    """The seconds of a fixed pure-Python loop (10 million additions): one core's speed now."""
    start = time.perf_counter()
    total = 0
    for number in range(10_000_000):
        total += number
    return f"{time.perf_counter() - start:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=10000)
    parser.add_argument("--iso-hosts", type=int, default=20, help="the per-host ISO fleet")
    parser.add_argument("--base", type=Path, help="base ISO (default: the tests' test ISO)")
    args = parser.parse_args()
    base = args.base
    if base is None:
        from tests.fixtures import centos_iso

        base = centos_iso()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"yardstick (10 million additions in Python): {yardstick()}")
    with tempfile.TemporaryDirectory() as tmp:
        run("pxe", args.hosts, base, "none", Path(tmp))
        run("per-host-iso", args.iso_hosts, base, "per-host", Path(tmp))
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: {me:.0f} MiB (this process), {workers:.0f} MiB (largest child)")
    print(f"yardstick (10 million additions in Python): {yardstick()}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
