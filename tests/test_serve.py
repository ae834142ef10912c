"""`ksbuild serve`: files from http/ only, kickstarts by MAC, done reports, many installers at
once, log lines, and a clean stop on Ctrl-C. Loopback only."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.pxe import menus as pxemenus
from builder.pxe import serve
from tests.conftest import REPO
from tests.pxe_support import GUEST_SERVER, HOSTS, build, host_dicts, write_site

H1, MAC1, _ = HOSTS[0]
H2, MAC2, _ = HOSTS[1]


class Running:
    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.lines: list[str] = []
        self.server = serve.start(tree, "127.0.0.1:0", self.lines.append)
        self.port = self.server.socket.getsockname()[1]
        self.thread = serve.run_in_thread(self.server)

    def request(self, method: str, path: str, headers: dict[str, str] | None = None
                ) -> tuple[int, bytes]:
        """One request with the path sent exactly as given (no client-side clean-up)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                connection.putheader(name, value)
            connection.endheaders(b"" if method == "POST" else None)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[Running]:
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    server = Running(tmp_path / "pxe")
    try:
        yield server
    finally:
        server.stop()


def mac_header(mac: str, number: int = 0, interface: str = "eth0") -> dict[str, str]:
    return {f"X-RHN-Provisioning-MAC-{number}": f"{interface} {mac}"}


def test_serves_kickstarts_from_http_only(running: Running) -> None:
    ks = (running.tree / f"http/ks/{H1}.cfg").read_bytes()
    assert running.request("GET", f"/ks/{H1}.cfg") == (200, ks)
    status, body = running.request("HEAD", f"/ks/{H1}.cfg")
    assert (status, body) == (200, b"")
    assert running.request("GET", "/ks/")[0] == 404  # no listings
    assert running.request("GET", "/")[0] == 404
    assert running.request("GET", "/ks/nobody.example.com.cfg")[0] == 404


@pytest.mark.parametrize("path", [
    "/../hosts.json", "/ks/../../hosts.json", "/%2e%2e/hosts.json", "/ks/%2E%2E/%2e%2e/hosts.json",
    "/..%2fhosts.json", "/ks/..%2f..%2fhosts.json", "/ks/..%5c..%5chosts.json",
    "//etc/passwd", "/%2fetc/passwd", "/ks/%00.cfg", "/.%2e/hosts.json", "/ks/%ff.cfg",
    "/../tftp/pxelinux.cfg/default", "/.hidden", "/ks/.secret.cfg", "/ks/link.cfg",
    "/outside/passwd", "/etc/passwd", "/ks/again.cfg",
])
def test_nothing_outside_the_tree(running: Running, path: str) -> None:
    (running.tree / "http/ks/link.cfg").symlink_to(running.tree / "hosts.json")
    (running.tree / "http/outside").symlink_to("/etc")
    # A symlink within http/ is not followed either (as nginx.conf: disable_symlinks).
    kickstart = next(p for p in sorted((running.tree / "http/ks").glob("*.cfg"))
                     if not p.is_symlink())
    (running.tree / "http/ks/again.cfg").symlink_to(kickstart)
    (running.tree / "http/ks/.secret.cfg").write_text("secret\n")
    status, body = running.request("GET", path)
    assert status == 404, (path, body[:200])
    assert b"install" not in body and b"root:" not in body and b"secret" not in body


def test_ranges_of_a_file(running: Running) -> None:
    initrd = (running.tree / "http/images/initrd.img").read_bytes()
    size = len(initrd)
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    try:
        for asked, status, first, last in (("bytes=0-99", 206, 0, 99),
                                           ("bytes=100-", 206, 100, size - 1),
                                           ("bytes=-10", 206, size - 10, size - 1),
                                           ("bytes=10-99999999", 206, 10, size - 1)):
            connection.request("GET", "/images/initrd.img", headers={"Range": asked})
            answer = connection.getresponse()  # one connection: keep-alive survives ranges
            assert (answer.status, answer.read()) == (status, initrd[first:last + 1]), asked
            assert answer.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
            assert answer.headers["Accept-Ranges"] == "bytes"
        for asked in (f"bytes={size}-", "bytes=-0"):
            connection.request("GET", "/images/initrd.img", headers={"Range": asked})
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 416, asked
            assert answer.headers["Content-Range"] == f"bytes */{size}"
        for ignored in ("bytes=9-1", "lines=1-2", "bytes=0-1,5-6"):  # the whole file
            connection.request("GET", "/images/initrd.img", headers={"Range": ignored})
            answer = connection.getresponse()
            assert (answer.status, answer.read()) == (200, initrd), ignored
    finally:
        connection.close()
    assert running.request("HEAD", "/images/vmlinuz") == (200, b"")


def test_byte_range_parsing() -> None:
    assert serve.byte_range(None, 10) is None
    assert serve.byte_range("bytes=2-4", 10) == (2, 4)
    assert serve.byte_range("bytes=-3", 10) == (7, 9)
    assert serve.byte_range("bytes=-30", 10) == (0, 9)
    assert serve.byte_range("bytes=10-", 10) == "unsatisfiable"
    assert serve.byte_range("bytes=0-", 0) == "unsatisfiable"
    assert serve.byte_range("bytes=-", 10) is None


def test_install_tree_dot_files_only(running: Running) -> None:
    folder = running.tree / "http/centos/7.9.2009/os/x86_64"
    folder.mkdir(parents=True)
    for name in (".treeinfo", ".discinfo", ".hidden"):
        (folder / name).write_text(f"{name}\n")
    assert running.request("GET", "/centos/7.9.2009/os/x86_64/.treeinfo") == (
        200, b".treeinfo\n")
    assert running.request("GET", "/centos/7.9.2009/os/x86_64/.discinfo")[0] == 200
    assert running.request("GET", "/centos/7.9.2009/os/x86_64/.hidden")[0] == 404
    assert running.request("GET", "/.treeinfo/x")[0] == 404


def test_kickstart_by_mac_is_that_hosts_and_never_another(running: Running) -> None:
    for hostname, mac, _address in HOSTS:
        ks = (running.tree / f"http/ks/{hostname}.cfg").read_bytes()
        assert running.request("GET", "/ks", mac_header(mac)) == (200, ks)
        assert running.request("GET", "/ks", mac_header(mac.upper().replace(":", "-"), 3,
                                                        "ens3")) == (200, ks)
    # The booting NIC need not be the first one the installer lists.
    both = {**mac_header("52:54:00:99:99:99", 0), **mac_header(MAC2, 1, "eth1")}
    assert running.request("GET", "/ks", both)[1] == (running.tree / f"http/ks/{H2}.cfg"
                                                      ).read_bytes()
    assert running.request("GET", "/ks", mac_header("52:54:00:99:99:99"))[0] == 404
    assert running.request("GET", "/ks")[0] == 404
    assert running.request("GET", "/ks", {"X-RHN-Provisioning-MAC-0": "eth0 garbage"})[0] == 404
    status, body = running.request("GET", "/ks", {**mac_header(MAC1, 0),
                                                  **mac_header(MAC2, 1, "eth1")})
    assert status == 409 and b"#version" not in body
    assert any(f"kickstart of {H1}" in line for line in running.lines)
    assert any("404" in line and "unknown MAC 52:54:00:99:99:99" in line
               for line in running.lines)


def test_done_switches_that_host_to_local_boot(running: Running) -> None:
    files = pxemenus.host_files(MAC1)
    before = {path: (running.tree / path).read_text() for path in files.values()}
    assert running.request("GET", f"/done/{H1}")[0] == 405
    assert running.request("POST", "/done/stranger.example.com")[0] == 404
    assert running.request("POST", "/done/../../etc")[0] == 404
    assert (running.tree / files["pxelinux"]).read_text() == before[files["pxelinux"]]
    status, body = running.request("POST", f"/done/{H1.upper()}")
    assert (status, body) == (200, f"{H1} now boots from its disk\n".encode())
    again = running.request("POST", f"/done/{H1}")
    assert again == (200, f"{H1} already boots from its disk\n".encode())
    after = {path: (running.tree / path).read_text() for path in files.values()}
    assert after == pxemenus.local_entries(H1, MAC1)
    assert "localboot 0" in after[files["pxelinux"]]
    marker = running.tree / "state/installed" / H1
    assert marker.read_text() == "installed: reported by 127.0.0.1\n"
    for path in pxemenus.host_files(MAC2).values():  # the other host is untouched
        assert "inst.ks=" in (running.tree / path).read_text()
    assert any(f'"POST /done/{H1.upper()} HTTP/1.1" 200' in line for line in running.lines)


def test_two_hundred_installers_at_once(tmp_path: Path) -> None:
    """200 simultaneous kickstart requests by MAC on loopback: all answered, each with its own
    host's kickstart, within a bounded time (a hang guard, not a speed test)."""
    hosts = [(f"n{i:02d}.example.com", f"52:54:00:00:01:{i:02x}", f"10.0.2.{i + 10}")
             for i in range(40)]
    build(write_site(tmp_path, {"server": GUEST_SERVER}, hosts=host_dicts(tuple(hosts))),
          tmp_path / "pxe")
    running = Running(tmp_path / "pxe")
    expected = {mac: (tmp_path / f"pxe/http/ks/{name}.cfg").read_bytes()
                for name, mac, _address in hosts}
    count = 200
    start = threading.Barrier(count)
    results: list[tuple[str, int, bytes] | BaseException] = []

    def installer(number: int) -> None:
        mac = hosts[number % len(hosts)][1]
        try:
            start.wait(timeout=60)
            status, body = running.request("GET", "/ks", mac_header(mac))
            results.append((mac, status, body))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=installer, args=(n,)) for n in range(count)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "requests hung"
    finally:
        running.stop()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert len(results) == count
    for mac, status, body in results:  # type: ignore[misc]
        assert status == 200 and body == expected[mac], mac
    assert sum(" 200 " in line for line in running.lines) == count


def test_listen_address_parsing() -> None:
    assert serve.parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert serve.parse_listen("[::1]:81") == ("::1", 81)
    assert serve.parse_listen("8081") == ("0.0.0.0", 8081)
    for bad in ("localhost", "1.2.3.4:99999", "a:b:c"):
        with pytest.raises(Exception, match="--listen"):
            serve.parse_listen(bad)


# ---------------------------------------------------------------------------------------------
# The command.


def start_cli(tree: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "builder", "serve", str(tree), *extra],
                            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    first = proc.stderr.readline()
    return proc, first


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_command_logs_requests_and_stops_cleanly(tmp_path: Path, stop: signal.Signals) -> None:
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    proc, first = start_cli(tmp_path / "pxe", "--listen", "127.0.0.1:0")
    try:
        found = re.search(r"on http://127\.0\.0\.1:([0-9]+)/", first)
        assert found, first
        port = int(found.group(1))
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", f"/ks/{H2}.cfg")
        assert connection.getresponse().status == 200
        connection.close()
        proc.send_signal(stop)
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert re.search(rf'127\.0\.0\.1 "GET /ks/{re.escape(H2)}\.cfg HTTP/1\.1" 200 [0-9]+', rest)
    assert rest.rstrip().endswith("ksbuild serve: stopped")
    assert "Traceback" not in rest
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_command_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    proc, first = start_cli(tmp_path, "--listen", "127.0.0.1:0")
    assert proc.wait(timeout=60) == 2
    assert "not a ksbuild PXE tree" in first
    if proc.stderr:
        proc.stderr.close()
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    proc, first = start_cli(tmp_path / "pxe", "--listen", "nonsense")
    assert proc.wait(timeout=60) == 2 and "--listen: 'nonsense' is not HOST:PORT" in first
    if proc.stderr:
        proc.stderr.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, first = start_cli(tmp_path / "pxe", "--listen", f"127.0.0.1:{port}")
        assert proc.wait(timeout=60) == 1 and "cannot listen" in first
        if proc.stderr:
            proc.stderr.close()


# ---------------------------------------------------------------------------------------------
# Hostile clients: idle and dripping connections, malformed requests, escape sequences.


def raw_connection(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_idle_connections_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3,000 idle connections made 3,001 threads: now a fixed pool answers, a bounded number
    wait, the rest get 503 at once, and idle ones are cut at the deadline."""
    monkeypatch.setattr(serve, "MAX_WORKERS", 4, raising=False)
    monkeypatch.setattr(serve, "MAX_QUEUED", 4, raising=False)
    monkeypatch.setattr(serve, "REQUEST_TIMEOUT", 2.0)
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    before = threading.active_count()
    started = time.monotonic()
    running = Running(tmp_path / "pxe")
    idle = []
    try:
        idle = [raw_connection(running.port) for _ in range(40)]
        time.sleep(0.5)
        assert threading.active_count() - before <= 4 + 2  # the pool, the reaper, the loop
        answers = [read_all(sock) for sock in idle]  # each ends: 503 or cut at a deadline
        refused = sum(answer.startswith(b"HTTP/1.1 503 ") for answer in answers)
        assert set(answers) <= {b"", serve.BUSY}
        assert refused >= 20, refused  # 4 answered and 4 waiting; the rest mostly refused
        assert answers[:4] == [b""] * 4
        assert time.monotonic() - started < 25  # every idle one was cut, none held for good
        assert running.request("GET", f"/ks/{H1}.cfg")[0] == 200
    finally:
        for sock in idle:
            sock.close()
        running.stop()
    assert any(" 503: 4 connections busy and 4 waiting" in line for line in running.lines)


def test_idle_kept_alive_connections_yield_to_waiting_ones(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installers keep their connections alive between files (yum does): with every worker
    on such a connection, a new installer waited for their deadlines. Now an idle one is
    closed as soon as a connection waits. (serve answers HTTP/1.0 today, which closes every
    connection; this holds for the day it keeps them alive.)"""
    monkeypatch.setattr(serve, "MAX_WORKERS", 2, raising=False)
    monkeypatch.setattr(serve.Handler, "protocol_version", "HTTP/1.1")
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    running = Running(tmp_path / "pxe")
    kept = [http.client.HTTPConnection("127.0.0.1", running.port, timeout=30) for _ in range(2)]
    try:
        for connection in kept:
            connection.request("GET", f"/ks/{H1}.cfg")
            response = connection.getresponse()
            assert response.status == 200 and response.getheader("Connection") != "close"
            response.read()
        started = time.monotonic()
        assert running.request("GET", f"/ks/{H2}.cfg")[0] == 200
        assert time.monotonic() - started < 3
    finally:
        for connection in kept:
            connection.close()
        running.stop()


def test_a_dripping_client_is_cut_at_the_deadline(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte every 0.5 s never trips the per-read timeout; the request's deadline does."""
    monkeypatch.setattr(serve, "REQUEST_TIMEOUT", 2.0)
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    running = Running(tmp_path / "pxe")
    try:
        sock = raw_connection(running.port, b"GET /ks/" + H1.encode() + b".cfg HTTP/1.1\r\n")
        started = time.monotonic()
        cut = False
        with sock:
            for byte in b"X-Padding: " + b"x" * 40:
                time.sleep(0.5)
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    cut = True
                    break
            if not cut:
                sock.settimeout(1)
                with contextlib.suppress(OSError):
                    cut = sock.recv(100) == b""
        assert cut and time.monotonic() - started < 5
    finally:
        running.stop()


@pytest.mark.parametrize("header", ["Content-Length: abc", "Content-Length: -1",
                                    "Content-Length: 1e3", "Transfer-Encoding: chunked"])
def test_malformed_post_gets_400(running: Running, header: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`Content-Length: abc` got no reply and a traceback."""
    sock = raw_connection(running.port, f"POST /events/{H1}/started HTTP/1.1\r\nHost: x\r\n"
                                        f"{header}\r\n\r\n".encode())
    with sock:
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 "), answer
    assert "Traceback" not in capsys.readouterr().err


def test_control_bytes_are_escaped_in_the_log(running: Running) -> None:
    """Request lines are logged: raw escape sequences would reach the terminal."""
    for line in (b"GET /\x1b[2J\x1b]0;owned\x07 HTTP/1.1", b"\x1b[31mGARBAGE\x9b"):
        with raw_connection(running.port, line + b"\r\nHost: x\r\n\r\n") as sock:
            read_all(sock)
    time.sleep(0.2)
    logged = "\n".join(running.lines)
    assert "\\x1b[2J\\x1b]0;owned\\x07" in logged, running.lines
    assert "\\x1b[31mGARBAGE" in logged, running.lines
    assert not any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in logged.replace("\n", ""))


def test_forwarded_client_must_be_an_address(running: Running) -> None:
    running.request("POST", f"/done/{H1}", {"X-Real-IP": "\x1b[2Jnot-an-address"})
    marker = running.tree / "state/installed" / H1
    assert marker.read_text() == "installed: reported by 127.0.0.1\n"


def test_sigterm_stops_within_seconds_despite_dripping_clients(tmp_path: Path) -> None:
    """5 clients sending a byte every 2 s kept the server alive for over 80 s after SIGTERM."""
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    proc, first = start_cli(tmp_path / "pxe", "--listen", "127.0.0.1:0")
    stop = threading.Event()
    clients: list[socket.socket] = []
    try:
        found = re.search(r"on http://127\.0\.0\.1:([0-9]+)/", first)
        assert found, first
        port = int(found.group(1))

        def drip() -> None:
            sock = raw_connection(port, b"POST /events/x/started HTTP/1.1\r\n")
            clients.append(sock)
            with contextlib.suppress(OSError):
                while not stop.wait(2):
                    sock.sendall(b"X")

        threads = [threading.Thread(target=drip, daemon=True) for _ in range(5)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 6
        rest = proc.stderr.read() if proc.stderr else ""
        assert rest.rstrip().endswith("ksbuild serve: stopped") and "Traceback" not in rest
    finally:
        stop.set()
        for sock in clients:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
