#!/usr/bin/env python3
"""Benchmark the local install tree (`pxe: {install_tree: local}`) and serving it.

1. Publishing: `ksbuild pxe` with install_tree: local on a DVD-shaped ISO (Packages/ of ~1 MB
   stand-in files of distinct bytes, as many as the size asks, a real repodata/, a 55 MB
   initrd), against `cp` of the same ISO, in the same run (each warmed once, then the median of
   --runs); and the rebuild with nothing changed (it hard-links, copies nothing). Goal: the
   publish within 1.3x of cp.
2. Serving, on loopback: `ksbuild serve` and nginx with the generated nginx.conf, side by side,
   the same tree: N clients at once, each fetching the initrd and then packages adding up to
   --megabytes: once with a connection per file, once with one kept-alive connection per
   client (as yum's urlgrabber does). Reports throughput and the p50/p99 time to the last
   byte of a file, per server and mode.

    .venv/bin/python bench/bench_installtree.py                 # 4 GiB, 200 clients x 200 MB
    .venv/bin/python bench/bench_installtree.py --size 1 --clients 50 --megabytes 50
    .venv/bin/python bench/bench_installtree.py --smoke         # 64 MiB, 10 clients x 4 MB

The ISO is cached (~/.cache/ksbuild-tests) under a name that carries its size.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import inspect
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.cache import cached_file, digest  # noqa: E402
from tests.fixtures.repo import write_repo  # noqa: E402
from tests.fixtures.tree import comps_xml  # noqa: E402
from tests.pxe_support import grub_image, write_site  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
TREE = "centos/7.9.2009/os/x86_64"
TREEINFO = """[general]
name = CentOS-7
family = CentOS
timestamp = 1603729580.71
variant =
version = 7
packagedir =
arch = x86_64

[stage2]
mainimage = LiveOS/squashfs.img

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
"""


# ---------------------------------------------------------------------------------------------
# The DVD-shaped ISO.


def dvd_iso(size: int, initrd_size: int) -> Path:
    """A cached ISO of about `size` bytes shaped like the CentOS 7 DVD."""
    # Keyed on the code that makes it, not the whole script: editing the load test must not
    # rebuild a 4 GiB image.
    made_by = [inspect.getsource(f) for f in (_build_iso, _data, write_repo, comps_xml)]
    key = digest(made_by, TREEINFO, size, initrd_size, grub_image("centos").name)
    return cached_file(f"bench-dvd-{size >> 20}M-{key}.iso",
                       lambda out: _build_iso(out, size, initrd_size))


def _build_iso(out: Path, size: int, initrd_size: int) -> None:
    rng = random.Random(7)
    block = rng.randbytes(4 * MIB)  # distinct bytes per file: a header + a slice of this
    with tempfile.TemporaryDirectory(dir=out.parent) as temp:
        root = Path(temp)
        (root / "images/pxeboot").mkdir(parents=True)
        (root / "images/pxeboot/vmlinuz").write_bytes(block[:6 * MIB // 1])
        (root / "images/pxeboot/initrd.img").write_bytes(_data(block, b"initrd", initrd_size))
        (root / "EFI/BOOT").mkdir(parents=True)
        for name in ("BOOTX64.EFI", "grubx64.efi"):
            shutil.copyfile(grub_image("centos"), root / "EFI/BOOT" / name)
        (root / "LiveOS").mkdir()
        (root / "LiveOS/squashfs.img").write_bytes(_data(block, b"squashfs", 4 * MIB))
        (root / ".discinfo").write_text("1603728835.112345\n7.9\nx86_64\n")
        (root / ".treeinfo").write_text(TREEINFO)

        def packages() -> Iterator[tuple[str, bytes]]:
            total, index = 0, 0
            while total < size:
                length = rng.randint(16 << 10, 2 * MIB)  # mean ~1 MB, as on the real DVD
                name = f"bench-{index:05d}-1.0-1.el7.x86_64.rpm"
                yield name, _data(block, name.encode(), length)
                total += length
                index += 1

        write_repo(root, packages(), comps_xml("DVD").encode())
        out.unlink()
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(out), "-V",
                        "CentOS 7 x86_64", "-R", "-J", "-joliet-long", str(root)], check=True,
                       env={**os.environ, "SOURCE_DATE_EPOCH": "1604413529", "TZ": "UTC"})


def _data(block: bytes, header: bytes, length: int) -> bytes:
    start = int.from_bytes(hashlib.sha256(header).digest()[:4], "big") % (len(block) // 2)
    body = (header + b"\n" + block[start:] + block)[:length]
    return body + bytes(length - len(body))


# ---------------------------------------------------------------------------------------------
# 1. Publishing against cp.


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - start, done.stdout


def publish_once(site_path: Path, iso: Path, out: Path) -> None:
    """What `ksbuild pxe` does, in this process, printing the wall time of the build (the
    interpreter's start and imports excluded) and of its publish phase (listing, copy,
    verification)."""
    from builder import site
    from builder.pxe import tree as pxe

    loaded = site.load(site_path)
    start = time.perf_counter()
    result = pxe.build_tree(pxe.Options(loaded, out, iso))
    whole = time.perf_counter() - start
    print(f"{whole} {result.seconds['install tree published and verified']}")


def bench_publish(iso: Path, work: Path, runs: int) -> tuple[Path, dict[str, list[float]]]:
    site = write_site(work, {"server": "http://127.0.0.1:8080", "install_tree": "local"})
    # Its own folder: the tree is a symlink to a version folder beside it (builder/output.py
    # Generations), all of which a fresh publish must start without.
    tree = work / "trees" / "pxe"
    copy = work / "copy.iso"
    ksbuild = [sys.executable, __file__, "--publish-once", str(site), str(iso), str(tree)]
    times: dict[str, list[float]] = {name: [] for name in (
        "cp", "ksbuild pxe (publish)", "  of which the build (no Python start, imports)",
        "  of which the copy and verification", "ksbuild pxe (rebuild, nothing changed)")}
    def run_cp() -> dict[str, float]:
        copy.unlink(missing_ok=True)
        subprocess.run(["sync"], check=True)  # no write-back of earlier runs in this one
        seconds, _ = timed(["cp", str(iso), str(copy)])
        copy.unlink()
        return {"cp": seconds}

    def run_ksbuild() -> dict[str, float]:
        shutil.rmtree(tree.parent, ignore_errors=True)
        assert not tree.parent.exists(), "the previous tree is still there"
        subprocess.run(["sync"], check=True)
        first, printed = timed(ksbuild)
        build, copy_and_verify = (float(word) for word in printed.split())
        return {"ksbuild pxe (publish)": first,
                "  of which the build (no Python start, imports)": build,
                "  of which the copy and verification": copy_and_verify,
                "ksbuild pxe (rebuild, nothing changed)": timed(ksbuild)[0]}

    for round_ in range(runs + 1):  # round 0 warms the page cache and is not counted
        # Alternating which goes first: the machine's other load falls on both alike.
        order = (run_cp, run_ksbuild) if round_ % 2 else (run_ksbuild, run_cp)
        measured = {**order[0](), **order[1]()}
        if round_:
            for name, seconds in measured.items():
                times[name].append(seconds)
    return tree, times


# ---------------------------------------------------------------------------------------------
# 2. Serving: ksbuild serve and nginx, N clients at once.


@dataclass
class Load:
    seconds: float
    bytes: int
    latencies: list[float]
    errors: int


def fetch(port: int, path: str, buffer: bytearray) -> int:
    """GET path on 127.0.0.1:port, one connection; the body's size (-1 on an error)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                     .encode())
        view = memoryview(buffer)
        got = sock.recv_into(view)
        head_end = bytes(view[:got]).find(b"\r\n\r\n")
        ok = bytes(view[:12]).split(b" ")[1:2] == [b"200"]
        total = got
        while got:
            got = sock.recv_into(view)
            total += got
    return total - head_end - 4 if ok and head_end >= 0 else -1


class KeptAlive:
    """One HTTP/1.1 connection for all of a client's files."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def fetch(self, path: str, buffer: bytearray) -> int:
        self.connection.request("GET", f"/{path}")
        answer = self.connection.getresponse()
        view = memoryview(buffer)
        total = 0
        while got := answer.readinto(view):
            total += got
        return total if answer.status == 200 else -1

    def close(self) -> None:
        self.connection.close()


def run_load(port: int, clients: int, files: list[list[str]], keep_alive: bool) -> Load:
    latencies: list[float] = []
    counts = [0, 0]  # bytes, errors
    lock = threading.Lock()
    start_line = threading.Barrier(clients + 1)

    def client(paths: list[str]) -> None:
        buffer = bytearray(MIB)
        start_line.wait()
        mine, size, errors = [], 0, 0
        kept = KeptAlive(port) if keep_alive else None
        for path in paths:
            began = time.perf_counter()
            try:
                got = kept.fetch(path, buffer) if kept else fetch(port, path, buffer)
            except (OSError, http.client.HTTPException):
                got = -1
                if kept:
                    kept.close()
                    kept = KeptAlive(port)
            mine.append(time.perf_counter() - began)
            if got < 0:
                errors += 1
            else:
                size += got
        if kept:
            kept.close()
        with lock:
            latencies.extend(mine)
            counts[0] += size
            counts[1] += errors

    threads = [threading.Thread(target=client, args=(files[i],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return Load(time.perf_counter() - began, counts[0], latencies, counts[1])


def client_files(tree: Path, clients: int, megabytes: int) -> list[list[str]]:
    """Per client: the initrd, then packages (a different run of the list for each client)
    adding up to `megabytes`."""
    packages = sorted((tree / "http" / TREE / "Packages").iterdir())
    lists = []
    for index in range(clients):
        paths, size = ["images/initrd.img"], 0
        position = index * 7
        while size < megabytes * MIB:
            package = packages[position % len(packages)]
            paths.append(f"{TREE}/Packages/{package.name}")
            size += package.stat().st_size
            position += 1
        lists.append(paths)
    return lists


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start") from None
            time.sleep(0.1)


def start_serve(tree: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "builder", "serve", str(tree), "--listen",
                             f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_port(port, proc)
    return proc, port


def start_nginx(tree: Path, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    """nginx with the tree's generated config; only the listen address, log folder and pid
    file are changed (as tests/test_pxe_daemons.py does)."""
    from builder.pxe import tree as pxe

    port = free_port()
    logs = work / "nginx-logs"
    logs.mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text((tree / "nginx.conf").read_text()
                    .replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};")
                    .replace(pxe.NGINX_LOG_DIR, str(logs))
                    .replace(pxe.NGINX_PID, str(logs / "nginx.pid")))
    main = "daemon off;" + (" user root root;" if os.geteuid() == 0 else "")
    proc = subprocess.Popen(["nginx", "-p", str(work), "-c", str(conf), "-e", "stderr", "-g",
                             main], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def bench_serving(tree: Path, work: Path, clients: int, megabytes: int) -> dict[str, Load]:
    files = client_files(tree, clients, megabytes)
    results = {}
    for name, start in (("ksbuild serve", lambda: start_serve(tree)),
                        ("nginx", lambda: start_nginx(tree, work))):
        proc, port = start()
        try:
            run_load(port, min(clients, 4), [f[:2] for f in files[:4]], False)  # warm-up
            for keep_alive in (False, True):
                mode = "kept alive" if keep_alive else "a connection a file"
                results[f"{name}, {mode}"] = run_load(port, clients, files, keep_alive)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return results


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=4, help="ISO size in GiB (default 4)")
    parser.add_argument("--runs", type=int, default=5, help="measured publish runs (default 5)")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--megabytes", type=int, default=200,
                        help="packages each client fetches after the initrd (default 200)")
    parser.add_argument("--initrd", type=int, default=55, help="initrd size in MB (default 55)")
    parser.add_argument("--smoke", action="store_true",
                        help="64 MiB ISO, 1 run, 10 clients x 4 MB, a 2 MB initrd")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder")
    parser.add_argument("--publish-only", action="store_true", help="skip the serving part")
    parser.add_argument("--publish-once", nargs=3, type=Path, metavar=("SITE", "ISO", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish_once:
        publish_once(*args.publish_once)
        return 0
    if args.smoke:
        args.size, args.runs, args.clients, args.megabytes, args.initrd = 1 / 16, 1, 10, 4, 2
    for tool in ("cp", "xorriso", "nginx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    iso = dvd_iso(int(args.size * GIB), args.initrd * MIB)
    with tempfile.TemporaryDirectory(prefix="ksbuild-bench-", dir=args.work) as temp:
        work = Path(temp)
        tree, times = bench_publish(iso, work, args.runs)
        files = sum(1 for p in (tree / "http" / TREE).rglob("*") if p.is_file())
        print(f"ISO {iso.stat().st_size / GIB:.2f} GiB, {files} files; {args.runs} runs each "
              f"(median, and the fastest: the least disturbed by the machine's other load)")
        medians = {name: statistics.median(values) for name, values in times.items()}
        fastest = {name: min(values) for name, values in times.items()}
        for name in times:
            print(f"  {name + ':':<50} median {medians[name]:7.2f} s "
                  f"{medians[name] / medians['cp']:5.2f}x cp   fastest {fastest[name]:7.2f} s "
                  f"{fastest[name] / fastest['cp']:5.2f}x cp")
        if args.publish_only:
            return 0
        print(f"serving: {args.clients} clients at once, each the initrd "
              f"({args.initrd} MB) + {args.megabytes} MB of packages")
        for name, load in bench_serving(tree, work, args.clients, args.megabytes).items():
            print(f"  {name + ':':<36} {load.bytes / MIB / load.seconds:8.1f} MiB/s  "
                  f"{load.seconds:7.1f} s  {len(load.latencies)} files  "
                  f"p50 {percentile(load.latencies, 0.5) * 1000:8.1f} ms  "
                  f"p99 {percentile(load.latencies, 0.99) * 1000:8.1f} ms  "
                  f"max {max(load.latencies, default=0) * 1000:8.1f} ms  "
                  f"errors {load.errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
