"""Package progress from the installers' remote log (builder/pxe/installlog.py, `ksbuild serve
--syslog`): rsyslog's TCP forward lines as anaconda 21's `inst.syslog=` sends them, over
loopback only (127.0.0.2 stands for a second machine)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.pxe import events, installlog
from tests.conftest import REPO
from tests.pxe_support import GUEST_SERVER, HOSTS, build, write_site

H1, _, _ = HOSTS[0]
H2, _, _ = HOSTS[1]


def line(done: int, total: int, package: str = "kernel") -> bytes:
    """A forwarded packaging log line, in rsyslog's traditional forward format."""
    return (f"<143>Nov 30 18:00:{done % 60:02d} localhost packaging: Installing {package} "
            f"({done}/{total})\n").encode()


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    return tmp_path / "pxe"


@pytest.fixture()
def receiver(tree: Path) -> Iterator[installlog.Receiver]:
    fleet = events.Fleet(tree)
    running = installlog.start(("127.0.0.1", 0), fleet, lambda text: None)
    try:
        yield running
    finally:
        running.stop()


def send(port: int, data: bytes, source: str = "127.0.0.1", pieces: int = 7) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0)) as connection:
        step = max(1, len(data) // pieces)  # lines cut anywhere, as TCP may deliver them
        for start in range(0, len(data), step):
            connection.sendall(data[start:start + step])
            time.sleep(0.01)


def wait_for(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def progress(tree: Path, host: str) -> list[str]:
    return [e.data["progress"] for e in events.read_events(tree, host) if e.state == "packages"]


def test_progress_at_each_tenth_for_the_host_at_that_address(
        tree: Path, receiver: installlog.Receiver) -> None:
    receiver.fleet.record(H1, "kickstart", "kickstart fetched", "127.0.0.1")
    noise = b"<30>Nov 30 18:00:00 localhost anaconda: Running kickstart %%pre script(s)\n"
    stream = noise + b"".join(line(n, 137) for n in range(1, 138)) + b"x" * 9000 + b"\n"
    send(receiver.port, stream)
    wait_for(lambda: progress(tree, H1)[-1:] == ["137/137"])
    assert progress(tree, H1) == ["1/137", "14/137", "28/137", "42/137", "55/137", "69/137",
                                  "83/137", "96/137", "110/137", "124/137", "137/137"]
    status = receiver.fleet.hosts[H1]
    assert status.state == "packages"
    assert status.last is not None
    assert status.last.message == "installing package 137 of 137 (kernel)"
    assert progress(tree, H2) == []


def test_lines_from_an_address_no_host_used_are_dropped(
        tree: Path, receiver: installlog.Receiver) -> None:
    receiver.fleet.record(H1, "started", "installer started", "127.0.0.1")
    send(receiver.port, line(1, 10), source="127.0.0.2")
    send(receiver.port, line(1, 10))  # then one that counts, to know the first was read
    wait_for(lambda: progress(tree, H1) == ["1/10"])
    assert all(e.client == "127.0.0.1" for e in events.read_events(tree, H1))


def test_the_last_address_a_host_started_from_wins(tree: Path,
                                                   receiver: installlog.Receiver) -> None:
    receiver.fleet.record(H1, "kickstart", "kickstart fetched", "127.0.0.2")
    receiver.fleet.record(H2, "kickstart", "kickstart fetched", "127.0.0.2")
    send(receiver.port, line(5, 5), source="127.0.0.2")
    wait_for(lambda: progress(tree, H2) == ["5/5"])
    assert progress(tree, H1) == []


def test_ksbuild_serve_takes_the_log_and_status_shows_progress(tree: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "builder", "serve", str(tree), "--listen", "127.0.0.1:0",
         "--syslog", "127.0.0.1:0"], cwd=REPO, stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stderr is not None
        http_port = int(re.search(r":([0-9]+)/", proc.stderr.readline()).group(1))  # type: ignore[union-attr]
        log_port = int(re.search(r"port ([0-9]+)", proc.stderr.readline()).group(1))  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as web:
            web.sendall(f"GET /ks/{H1}.cfg HTTP/1.0\r\n\r\n".encode())
            while web.recv(65536):
                pass
        send(log_port, line(1, 2) + line(2, 2, "bash"))

        def shown() -> bool:
            done = subprocess.run([sys.executable, "-m", "builder", "status", str(tree),
                                   "--json"], cwd=REPO, capture_output=True, text=True)
            host = {h["host"]: h for h in json.loads(done.stdout)["hosts"]}[H1]
            return bool(host["path"] == ["kickstart", "packages"]
                        and host["message"] == "installing package 2 of 2 (bash)")

        wait_for(shown)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def test_a_bad_syslog_address_is_one_line(tree: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "builder", "serve", str(tree), "--listen",
                           "127.0.0.1:0", "--syslog", "nowhere"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--syslog" in done.stderr
    assert "Traceback" not in done.stderr
