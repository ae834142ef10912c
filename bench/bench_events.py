"""Load test of the install events: N simulated hosts report to `ksbuild serve` at once, over
loopback, for a while; then every acknowledged event must be in the hosts' logs (none lost,
every line whole), and the status page must still list every host.

    python bench/bench_events.py [--hosts 1000] [--seconds 60] [--interval 0.5] [--browser]

Each simulated host tries an event again after a 503 (the server's bounded queue is full),
as the kickstart's and the first-boot unit's curl loops do. Prints the events sent and
acknowledged, the busy answers, the throughput, latency percentiles (p50, p99, max),
the server's peak memory (VmHWM) and its resident memory when the load began and ended (an
event must not cost memory that stays), and the time /status.json and (--browser) the page
in Debian's chromium take to show every host. Exit 1 if an event was lost or refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.pxe import events  # noqa: E402
from tests.pxe_support import fleet_tree  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def memory_kib(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{key}:\s+([0-9]+) kB", text, re.M)
    return int(found.group(1)) if found else 0


async def post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


class Load:
    def __init__(self, port: int, names: list[str], seconds: float, interval: float) -> None:
        self.port, self.names = port, names
        self.deadline = time.monotonic() + seconds
        self.interval = interval
        self.latencies: list[float] = []
        self.acked: dict[str, int] = dict.fromkeys(names, 0)
        self.last_seq: dict[str, int] = dict.fromkeys(names, 0)
        self.failures: list[str] = []
        self.sent = 0
        self.busy = 0  # 503 answers (or refused connections), each tried again

    async def host(self, name: str, offset: float) -> None:
        await asyncio.sleep(offset)  # spread the first wave over one interval
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            self.sent += 1
            body = f"message=Installing+package-{n}+({n}/400)&progress={n}/400".encode()
            status, payload = await self.send(name, body)
            if status != 200:
                self.failures.append(f"{name} #{n}: {status} {payload[:80]!r}")
                continue
            self.acked[name] += 1
            self.last_seq[name] = int(payload.rsplit(b"#", 1)[1])
            await asyncio.sleep(self.interval)

    async def send(self, name: str, body: bytes) -> tuple[int, bytes]:
        """One event, tried again after a 503 (the server's queue is full) as the hosts'
        scripts do; the latency is that of the answer that counted."""
        for attempt in range(1, 6):
            began = time.perf_counter()
            try:
                status, payload = await post(self.port, f"/events/{name}/packages", body)
            except OSError as exc:
                status, payload = 0, str(exc).encode()
            if status not in (0, 503):
                self.latencies.append(time.perf_counter() - began)
                return status, payload
            self.busy += 1
            await asyncio.sleep(0.5 * attempt)
        return status, payload

    async def run(self) -> None:
        count = len(self.names)
        await asyncio.gather(*(self.host(name, self.interval * i / count)
                               for i, name in enumerate(self.names)))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def lost_events(tree: Path, load: Load) -> list[str]:
    """Hosts whose log does not hold exactly the events acknowledged, in order, whole."""
    problems = []
    for name in load.names:
        raw = b"".join(p.read_bytes() for p in events.log_files(tree, name) if p.exists())
        lines = raw.splitlines()
        parsed = [events.parse_line(line) for line in lines]
        if any(e is None for e in parsed):
            problems.append(f"{name}: a line that is not whole")
            continue
        seqs = [e.seq for e in parsed if e is not None]
        if seqs != list(range(1, load.acked[name] + 1)) or seqs[-1:] != [load.last_seq[name]]:
            problems.append(f"{name}: {len(seqs)} in the log, {load.acked[name]} acknowledged")
    return problems


def page_shows_all(port: int, count: int) -> float:
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=60) as answer:
        data = json.load(answer)
    assert len(data["hosts"]) == count and data["total"] == count, data["total"]
    return time.perf_counter() - began


def browser_shows_all(port: int, count: int) -> float:
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import chromium, screenshot

    driver = chromium()
    try:
        began = time.perf_counter()
        driver.get(f"http://127.0.0.1:{port}/status")
        WebDriverWait(driver, 120, poll_frequency=0.1).until(lambda d: d.execute_script(
            "return document.querySelectorAll('#hosts tr').length") == count)
        took = time.perf_counter() - began
        screenshot(driver, "bench-status-page.png")
        return took
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds each host waits between its events (default 0.5)")
    parser.add_argument("--browser", action="store_true",
                        help="also load the page in Debian's chromium (tests/browser.py)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree, names = fleet_tree(Path(tmp) / "pxe", args.hosts)
        server = subprocess.Popen(
            [sys.executable, "-m", "builder", "serve", str(tree), "--listen", "127.0.0.1:0"],
            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert server.stderr is not None
            found = re.search(r"http://127\.0\.0\.1:([0-9]+)/", server.stderr.readline())
            assert found, "ksbuild serve did not start"
            port = int(found.group(1))
            drain = subprocess.Popen(["cat"], stdin=server.stderr, stdout=subprocess.DEVNULL)
            rss_before = memory_kib(server.pid, "VmRSS")
            load = Load(port, names, args.seconds, args.interval)
            began = time.perf_counter()
            asyncio.run(load.run())
            elapsed = time.perf_counter() - began
            rss_after = memory_kib(server.pid, "VmRSS")
            peak = memory_kib(server.pid, "VmHWM")
            json_seconds = page_shows_all(port, args.hosts)
            page_seconds = browser_shows_all(port, args.hosts) if args.browser else None
        finally:
            server.terminate()
            server.wait(timeout=60)
        drain.wait(timeout=30)
        lost = lost_events(tree, load)
        disk = sum(p.stat().st_size for p in events.events_dir(tree).iterdir())
    acked = sum(load.acked.values())
    print(f"hosts:                 {args.hosts}, each an event every {args.interval} s "
          f"for {args.seconds:.0f} s")
    print(f"events acknowledged:   {acked} ({acked / elapsed:.0f}/s), refused or failed: "
          f"{len(load.failures)}, sent: {load.sent}")
    print(f"busy answers (503):    {load.busy}, each tried again after a pause")
    print(f"latency:               p50 {percentile(load.latencies, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(load.latencies, 0.99) * 1000:.1f} ms, "
          f"max {max(load.latencies, default=0) * 1000:.1f} ms")
    print(f"server memory:         peak {peak / 1024:.1f} MiB, resident {rss_before / 1024:.1f}"
          f" MiB before the load, {rss_after / 1024:.1f} MiB after")
    print(f"events on disk:        {disk / 1024:.0f} KiB "
          f"(bound: {args.hosts} x 2 x {events.MAX_FILE // 1024} KiB)")
    print(f"status.json, all hosts: {json_seconds * 1000:.0f} ms")
    if page_seconds is not None:
        print(f"page in chromium shows all {args.hosts} hosts: {page_seconds:.2f} s")
    print(f"events lost:           {len(lost)} host(s)" + (f": {lost[:3]}" if lost else ""))
    for failure in load.failures[:5]:
        print(f"failure: {failure}")
    return 1 if lost or load.failures else 0


if __name__ == "__main__":
    sys.exit(main())
