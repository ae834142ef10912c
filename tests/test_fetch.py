"""Fetching base media, against a real HTTP server on 127.0.0.1 that the tests start.

The server serves generated files and can misbehave on purpose (ignore Range, drop the
connection half-way, end a body early without a Content-Length, answer 404 or 503, go slow).
Nothing here may reach anything but loopback: an audit hook refuses other addresses.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from builder import cli, site
from builder.errors import InputError, KsbuildError
from builder.media import fetch
from builder.media.fetch import FetchOptions
from builder.progress import TextProgress

REPO = Path(__file__).resolve().parent.parent
FAST = FetchOptions(connect_timeout=5, read_timeout=5, retries=3, backoff=0.01)
SIZE = 3 * 1024 * 1024 + 12345  # a few of fetch's 1 MiB chunks, and not a round number
PASSWORD_HASH = "$6$salt$" + "a" * 86

# ---------------------------------------------------------------------------------------------
# Network guard: while these tests run, only loopback may be resolved or connected to.

_GUARD = {"on": False}


def _is_loopback(host: Any) -> bool:
    if host in ("localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host).is_loopback
    except (ValueError, AttributeError):
        return False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _GUARD["on"]:
        return
    if event == "socket.getaddrinfo" and not _is_loopback(args[0]):
        raise RuntimeError(f"test tried to resolve {args[0]!r}: only loopback is allowed")
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            raise RuntimeError(f"test tried to connect to {address!r}: only loopback is allowed")


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    # Anything that forgets to pass a mirror lands on a closed loopback port, not the vault.
    monkeypatch.setenv("KSBUILD_MIRROR", f"http://127.0.0.1:{closed_port()}/")
    _GUARD["on"] = True
    yield
    _GUARD["on"] = False


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_network_guard_refuses_other_addresses() -> None:
    """Negative control: the guard really stops a connection to a non-loopback address."""
    with socket.socket() as sock, pytest.raises(RuntimeError, match="only loopback"):
        sock.connect(("192.0.2.1", 80))  # TEST-NET-1; never sent: the hook raises first


# ---------------------------------------------------------------------------------------------
# The test server.


@dataclass
class Rule:
    """How the server misbehaves for one path; the counters run down as it does."""

    ignore_range: bool = False
    drop_times: int = 0  # responses cut off after drop_after bytes, Content-Length promised
    drop_after: int = SIZE // 2
    unsized_truncations: int = 0  # responses without Content-Length, ending at half the body
    no_length: bool = False  # never send Content-Length (the body ends when the socket closes)
    errors_503: int = 0
    delay: float = 0.0  # seconds per 64 KiB written
    redirect: str | None = None  # answer 301 with this Location
    endless: int = 0  # a body without length that repeats the file up to this many bytes
    drip: float = 0.0  # seconds between single bytes of the body
    header_drip: float = 0.0  # seconds between single bytes of the headers


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    if_range: str | None
    status: int = 0
    sent: int = 0  # body bytes written


@dataclass
class Server:
    files: dict[str, bytes] = field(default_factory=dict)
    rules: dict[str, Rule] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    got_request: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    def gets(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path and s.method == "GET"]


def etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


class Handler(BaseHTTPRequestHandler):
    server_state: Server  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        state = self.server_state
        path = self.path.split("?")[0]
        seen = Seen(self.command, path, self.headers.get("Range"), self.headers.get("If-Range"))
        with state.lock:
            state.seen.append(seen)
            rule = state.rules.setdefault(path, Rule())
        state.got_request.set()
        if rule.redirect is not None:
            seen.status = 301
            self.send_response(301)
            self.send_header("Location", rule.redirect)
            self.send_header("Content-Length", "0")
            return self.end_headers()
        data = state.files.get(path)
        if data is None:
            return self._status(seen, 404)
        if rule.endless or rule.drip or rule.header_drip:
            return self._misbehave(seen, rule, data)
        with state.lock:
            if rule.errors_503:
                rule.errors_503 -= 1
                return self._status(seen, 503)
        start = self._range_start(rule, data)
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            seen.status = 416
            return
        body = data[start:] if start is not None else data
        with state.lock:
            unsized = rule.unsized_truncations > 0
            rule.unsized_truncations -= unsized
            drop = not unsized and rule.drop_times > 0
            rule.drop_times -= drop
        seen.status = 206 if start is not None else 200
        self.send_response(seen.status)
        self.send_header("ETag", etag(data))
        self.send_header("Accept-Ranges", "bytes")
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        if not unsized and not (rule.no_length and start is None):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        if unsized:
            body = body[: len(body) // 2]
        elif drop:
            body = body[: rule.drop_after]
        self._write(seen, body, rule.delay)
        if drop:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _misbehave(self, seen: Seen, rule: Rule, data: bytes) -> None:
        seen.status = 200
        head = b"HTTP/1.1 200 OK\r\n"
        if rule.endless:
            head += b"Connection: close\r\n\r\n"
        else:
            head += f"Content-Length: {len(data)}\r\nX-Padding: {'x' * 200}\r\n\r\n".encode()
        self.close_connection = True
        try:
            for index in range(len(head)):
                self.wfile.write(head[index:index + 1])
                time.sleep(rule.header_drip)
            while rule.endless and seen.sent < rule.endless:
                self.wfile.write(data)
                seen.sent += len(data)
            for index in range(len(data) if rule.drip else 0):
                self.wfile.write(data[index:index + 1])
                seen.sent += 1
                time.sleep(rule.drip)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _range_start(self, rule: Rule, data: bytes) -> int | None:
        header = self.headers.get("Range")
        if rule.ignore_range or not header:
            return None
        match = re.fullmatch(r"bytes=(\d+)-", header.strip())
        if not match:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range != etag(data):
            return None  # the file changed: the whole of it
        return int(match.group(1))

    def _write(self, seen: Seen, body: bytes, delay: float) -> None:
        step = 64 * 1024
        try:
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset:offset + step])
                seen.sent += len(body[offset:offset + step])
                if delay:
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _status(self, seen: Seen, code: int) -> None:
        seen.status = code
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextlib.contextmanager
def running_server(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    state = Server()
    handler = type("BoundHandler", (Handler,), {"server_state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        state.scheme = "https"
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    with running_server() as state:
        yield state


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path],
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """An https server on 127.0.0.1 whose certificate requests trusts (REQUESTS_CA_BUNDLE)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    with running_server(context) as state:
        yield state


def payload(seed: int = 1, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def url_media(url: str, sha256: str) -> site.Media:
    return site.Media(None, None, None, url, sha256, None, origin="test")


class Log:
    """A TextProgress that writes into a list: the lines a non-terminal user would see."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.progress = TextProgress(self.text.append, tty=False)

    @property
    def lines(self) -> list[str]:
        return "".join(self.text).splitlines()


def serve_iso(server: Server, data: bytes, name: str = "base.iso") -> tuple[str, str]:
    path = f"/isos/{name}"
    server.files[path] = data
    return path, server.url + path.lstrip("/")


def get(media: site.Media, cache: Path, log: Log | None = None,
        options: FetchOptions = FAST, mirror: str | None = None) -> Path:
    return fetch.resolve_media(media, cache_dir=cache, mirror=mirror,
                               progress=log.progress if log else None, options=options)


def no_leftovers(folder: Path) -> list[str]:
    """Files in the cache other than verified results and lock files."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file()
                  and (p.name.endswith(".part") or p.name.endswith(".json")))


# ---------------------------------------------------------------------------------------------
# Clean fetch, cache, checksums, errors.


def test_clean_fetch_lands_verified_under_its_sha256(server: Server, tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    result = get(url_media(url, sha(data)), tmp_path)
    assert result == tmp_path / sha(data) / "base.iso"
    assert result.read_bytes() == data
    assert no_leftovers(tmp_path) == []
    assert [s.range for s in server.gets(path)] == [None]


def test_second_fetch_comes_from_the_cache(server: Server, tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    log = Log()
    first = get(url_media(url, sha(data)), tmp_path, log)
    second = get(url_media(url, sha(data)), tmp_path, log)
    assert first == second
    assert len(server.gets(path)) == 1
    assert any("in the cache" in line for line in log.lines)


def test_release_fetch_checks_the_mirrors_sha256sum(server: Server, tmp_path: Path) -> None:
    data = payload()
    name = "CentOS-7-x86_64-Minimal-2003.iso"
    folder = "/7.8.2003/isos/x86_64/"
    server.files[folder + name] = data
    server.files[folder + "sha256sum.txt"] = (
        f"{sha(b'other')}  CentOS-7-x86_64-DVD-2003.iso\n{sha(data)}  {name}\n").encode()
    media = site.Media("7.8.2003", "Minimal", None, None, None, None, origin="test")
    first = get(media, tmp_path, mirror=server.url)
    assert first == tmp_path / sha(data) / name
    assert get(media, tmp_path, mirror=server.url) == first
    assert len(server.gets(folder + name)) == 1  # the second time only the sums were asked


def test_wrong_checksum_is_an_error_and_not_kept(server: Server, tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    wrong = sha(b"something else")
    with pytest.raises(KsbuildError, match="does not match the expected") as caught:
        get(url_media(url, wrong), tmp_path)
    assert "not kept" in str(caught.value)
    assert not (tmp_path / wrong / "base.iso").exists()
    assert no_leftovers(tmp_path) == []
    assert len(server.gets(path)) == 1  # a wrong file is not fetched again and again


def test_mirror_sums_listing_a_wrong_file_fail_the_fetch(server: Server, tmp_path: Path) -> None:
    name = "CentOS-7-x86_64-DVD-1810.iso"
    folder = "/7.6.1810/isos/x86_64/"
    server.files[folder + name] = payload()
    server.files[folder + "sha256sum.txt"] = f"{sha(b'x')}  {name}\n".encode()
    media = site.Media("7.6.1810", "DVD", None, None, None, None, origin="test")
    with pytest.raises(KsbuildError, match="does not match"):
        get(media, tmp_path, mirror=server.url)
    assert no_leftovers(tmp_path) == []


def test_official_2009_sums_beat_a_mirrors_sha256sum(server: Server, tmp_path: Path) -> None:
    """A mirror serving another NetInstall-2009 with a matching sha256sum.txt is caught; the
    user's own pin still wins over the official sum."""
    data = payload()
    name = "CentOS-7-x86_64-NetInstall-2009.iso"
    folder = "/7.9.2009/isos/x86_64/"
    server.files[folder + name] = data
    server.files[folder + "sha256sum.txt"] = f"{sha(data)}  {name}\n".encode()
    media = site.Media("7.9.2009", "NetInstall", None, None, None, None, origin="test")
    with pytest.raises(KsbuildError, match="not trusting this mirror"):
        get(media, tmp_path, mirror=server.url)
    assert server.gets(folder + name) == []  # refused before downloading anything
    pinned = site.Media("7.9.2009", "NetInstall", None, None, sha(data), None, origin="test")
    assert get(pinned, tmp_path, mirror=server.url).read_bytes() == data


def test_unknown_release_without_sums_cannot_be_verified(server: Server,
                                                         tmp_path: Path) -> None:
    server.files["/7.7.1908/isos/x86_64/CentOS-7-x86_64-DVD-1908.iso"] = payload()
    media = site.Media("7.7.1908", "DVD", None, None, None, None, origin="test")
    with pytest.raises(KsbuildError, match="cannot verify .*pin one"):
        get(media, tmp_path, mirror=server.url)


def test_404_is_one_clear_error_without_retries(server: Server, tmp_path: Path) -> None:
    url = server.url + "isos/missing.iso"
    with pytest.raises(KsbuildError, match=r"missing\.iso: HTTP 404"):
        get(url_media(url, sha(b"x")), tmp_path)
    assert len(server.gets("/isos/missing.iso")) == 1


def test_server_errors_are_retried(server: Server, tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(errors_503=2)
    log = Log()
    assert get(url_media(url, sha(data)), tmp_path, log).read_bytes() == data
    assert [s.status for s in server.gets(path)] == [503, 503, 200]
    assert sum("HTTP 503" in line and "retry" in line for line in log.lines) == 2


def test_unreachable_mirror_says_what_was_tried_and_how_to_work_offline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KSBUILD_MIRROR")  # the site's mirror is the one to try
    mirror = f"http://127.0.0.1:{closed_port()}/"
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump({
        "media": {"release": "7.9.2009", "flavor": "DVD", "mirror": mirror},
        "hosts": [{"hostname": "kvm1.example.com", "root_password_hash": PASSWORD_HASH}],
    }))
    code = cli.main(["fetch", str(site_file), "--cache-dir", str(tmp_path / "c"),
                     "--retries", "1"])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("ksbuild: ")]
    assert len(errors) == 1, errors
    line = errors[0]
    assert f"{mirror}7.9.2009/isos/x86_64/" in line  # what was tried (the sha256sum.txt)
    assert "connection refused" in line
    assert "media: {path: /path/to/CentOS-7-x86_64-DVD-2009.iso}" in line


# ---------------------------------------------------------------------------------------------
# Resuming.


def test_dropped_connection_is_resumed_with_a_range_request(server: Server,
                                                            tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(drop_times=1)
    log = Log()
    result = get(url_media(url, sha(data)), tmp_path, log)
    print("\n".join(log.lines))  # the resumed download's log (pytest -s shows it)
    assert result.read_bytes() == data
    first, second = server.gets(path)
    assert first.range is None and first.sent == SIZE // 2
    match = re.fullmatch(r"bytes=(\d+)-", second.range or "")
    assert match and 0 < int(match.group(1)) <= SIZE // 2
    assert second.status == 206 and second.sent == SIZE - int(match.group(1))
    assert second.if_range == etag(data)
    assert any("broke off" in line and "retry 1 of" in line for line in log.lines)
    assert any("resuming at" in line for line in log.lines)
    assert no_leftovers(tmp_path) == []


def test_partial_from_an_interrupted_run_is_resumed(server: Server, tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(drop_times=1)
    with pytest.raises(KsbuildError, match="cannot download .*broke off"):
        get(url_media(url, sha(data)), tmp_path, options=FetchOptions(retries=0))
    part = tmp_path / sha(data) / "base.iso.part"
    assert 0 < part.stat().st_size < SIZE  # kept for the next run, under its own name
    assert not (tmp_path / sha(data) / "base.iso").exists()
    result = get(url_media(url, sha(data)), tmp_path)
    assert result.read_bytes() == data
    last = server.gets(path)[-1]
    assert last.status == 206 and last.sent < SIZE


def test_server_ignoring_range_means_a_clean_restart(server: Server, tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(drop_times=1, ignore_range=True)
    log = Log()
    assert get(url_media(url, sha(data)), tmp_path, log).read_bytes() == data
    first, second = server.gets(path)
    assert second.range is not None and second.status == 200 and second.sent == SIZE
    assert any("whole file instead of the rest" in line for line in log.lines)


def test_truncated_body_without_length_is_completed(server: Server, tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(unsized_truncations=1)
    log = Log()
    assert get(url_media(url, sha(data)), tmp_path, log).read_bytes() == data
    first, second = server.gets(path)
    assert first.sent == SIZE // 2
    assert second.range == f"bytes={SIZE // 2}-" and second.status == 206
    assert any("without a length" in line for line in log.lines)


def test_unsized_body_of_the_wrong_file_is_not_kept(server: Server, tmp_path: Path) -> None:
    """A whole body without a length that does not verify: the request for "the rest" is
    answered 416, so it is the wrong file, not a truncated one."""
    data = payload()
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(no_length=True)
    with pytest.raises(KsbuildError, match="does not match"):
        get(url_media(url, sha(b"another file")), tmp_path)
    assert [(s.range, s.status) for s in server.gets(path)] == [
        (None, 200), (f"bytes={SIZE}-", 416)]
    assert no_leftovers(tmp_path) == []
    assert get(url_media(url, sha(data)), tmp_path).read_bytes() == data  # right file: fine


def test_partial_that_does_not_match_is_restarted(server: Server, tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    part = tmp_path / sha(data) / "base.iso.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # an earlier run's leftover, with the wrong bytes
    log = Log()
    assert get(url_media(url, sha(data)), tmp_path, log).read_bytes() == data
    first, second = server.gets(path)
    assert first.range == "bytes=1000-" and second.range is None and second.sent == SIZE
    assert any("does not match; starting over" in line for line in log.lines)


def test_complete_partial_is_promoted_without_a_request(server: Server, tmp_path: Path) -> None:
    """A run that died between the last byte and the rename: nothing left to download."""
    data = payload()
    path, url = serve_iso(server, data)
    part = tmp_path / sha(data) / "base.iso.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    assert get(url_media(url, sha(data)), tmp_path).read_bytes() == data
    assert server.gets(path) == []


# ---------------------------------------------------------------------------------------------
# Two fetches at once.


def test_two_threads_fetching_one_file_share_one_download(server: Server,
                                                          tmp_path: Path) -> None:
    data = payload()
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(delay=0.01)  # ~0.5 s: the second one comes while it runs
    results: dict[str, Path | BaseException] = {}
    logs = {"a": Log(), "b": Log()}

    def run(key: str) -> None:
        try:
            results[key] = get(url_media(url, sha(data)), tmp_path, logs[key])
        except BaseException as exc:  # reported by the asserts below
            results[key] = exc

    first = threading.Thread(target=run, args=("a",))
    first.start()
    assert server.got_request.wait(10)
    second = threading.Thread(target=run, args=("b",))
    second.start()
    first.join(30)
    second.join(30)
    assert results["a"] == results["b"] == tmp_path / sha(data) / "base.iso"
    assert Path(results["a"]).read_bytes() == data
    assert len(server.gets(path)) == 1
    assert any("another ksbuild is fetching it; waiting" in line for line in logs["b"].lines)
    assert any("fetched meanwhile by another ksbuild" in line for line in logs["b"].lines)


def test_two_processes_fetching_one_file_do_not_corrupt_it(server: Server,
                                                           tmp_path: Path) -> None:
    data = payload(size=2 * SIZE)
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(delay=0.005)
    argv = [sys.executable, "-m", "builder", "fetch", "--url", url, "--sha256", sha(data),
            "--cache-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert server.got_request.wait(20)
    second = subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out_a, err_a = first.communicate(timeout=60)
    out_b, err_b = second.communicate(timeout=60)
    assert first.returncode == 0, err_a
    assert second.returncode == 0, err_b
    assert out_a == out_b == f"{tmp_path / sha(data) / 'base.iso'}\n"
    assert (tmp_path / sha(data) / "base.iso").read_bytes() == data
    assert len(server.gets(path)) == 1
    assert "waiting" in err_b and "fetched meanwhile" in err_b


# ---------------------------------------------------------------------------------------------
# PXE boot files from an install tree.

TREEINFO = """[general]
name = CentOS-7
family = CentOS
version = 7
arch = x86_64

[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
boot.iso = images/boot.iso

[checksums]
images/pxeboot/initrd.img = sha256:{initrd}
images/pxeboot/vmlinuz = sha256:{kernel}
"""


def serve_tree(server: Server, kernel: bytes, initrd: bytes, treeinfo: str) -> str:
    base = "/7.9.2009/os/x86_64/"
    server.files[base + ".treeinfo"] = treeinfo.encode()
    server.files[base + "images/pxeboot/vmlinuz"] = kernel
    server.files[base + "images/pxeboot/initrd.img"] = initrd
    return fetch.tree_url(server.url, "7.9.2009")


def test_pxeboot_files_are_checked_against_treeinfo(server: Server, tmp_path: Path) -> None:
    kernel, initrd = payload(2, 70000), payload(3, 250000)
    treeinfo = TREEINFO.format(kernel=sha(kernel), initrd=sha(initrd))
    tree = serve_tree(server, kernel, initrd, treeinfo)
    files = fetch.fetch_pxeboot(tree, cache_dir=tmp_path, options=FAST)
    assert files.vmlinuz.read_bytes() == kernel and files.vmlinuz.name == "vmlinuz"
    assert files.initrd.read_bytes() == initrd and files.initrd.name == "initrd.img"
    assert files.treeinfo.read_text() == treeinfo
    assert files.vmlinuz.parent.name == sha(kernel)


def test_pxeboot_file_with_a_wrong_checksum_is_refused(server: Server, tmp_path: Path) -> None:
    kernel, initrd = payload(2, 70000), payload(3, 250000)
    treeinfo = TREEINFO.format(kernel=sha(kernel), initrd=sha(b"another initrd"))
    tree = serve_tree(server, kernel, initrd, treeinfo)
    with pytest.raises(KsbuildError, match="does not match"):
        fetch.fetch_pxeboot(tree, cache_dir=tmp_path, options=FAST)
    assert not list(tmp_path.rglob("initrd.img*"))


def release_iso(folder: Path, kernel: bytes, initrd: bytes) -> Path:
    """An ISO 9660 image with the release ISOs' images/pxeboot/ (all a voucher needs)."""
    root = folder / "iso-root"
    (root / "images/pxeboot").mkdir(parents=True)
    (root / "images/pxeboot/vmlinuz").write_bytes(kernel)
    (root / "images/pxeboot/initrd.img").write_bytes(initrd)
    out = folder / "release.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "CentOS 7 x86_64",
                    "-o", str(out), str(root)], check=True, capture_output=True, timeout=60)
    return out


def test_treeinfo_without_checksums_needs_the_releases_iso(server: Server,
                                                          tmp_path: Path) -> None:
    """Issue 10 item 9: the 7.9.2009 .treeinfo has no [checksums]; with nothing to vouch for
    the kernel and initrd they are refused, not fetched unverified."""
    kernel, initrd = payload(2, 1000), payload(3, 1000)
    treeinfo = TREEINFO.split("[checksums]")[0]  # like the 7.9.2009 tree's and the ISOs'
    tree = serve_tree(server, kernel, initrd, treeinfo)
    with pytest.raises(KsbuildError, match=r"lists no checksum for images/pxeboot/vmlinuz .*"
                                           r"fetch the release's ISO first"):
        fetch.fetch_pxeboot(tree, cache_dir=tmp_path, options=FAST)
    assert not list(tmp_path.rglob("vmlinuz*"))


def test_treeinfo_without_checksums_is_checked_against_the_iso(server: Server,
                                                              tmp_path: Path) -> None:
    kernel, initrd = payload(2, 70000), payload(3, 250000)
    tree = serve_tree(server, kernel, initrd, TREEINFO.split("[checksums]")[0])
    iso = release_iso(tmp_path, kernel, initrd)
    files = fetch.fetch_pxeboot(tree, cache_dir=tmp_path / "cache", options=FAST, iso=iso)
    assert files.vmlinuz.read_bytes() == kernel and files.initrd.read_bytes() == initrd
    # The tree serving another kernel than the release's: refused.
    server.files["/7.9.2009/os/x86_64/images/pxeboot/vmlinuz"] = payload(4, 70000)
    with pytest.raises(KsbuildError, match="does not match"):
        fetch.fetch_pxeboot(tree, cache_dir=tmp_path / "other", options=FAST, iso=iso)


def test_cli_pxeboot_uses_a_cached_release_iso(server: Server, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Any official ISO of the release already in the cache vouches (every flavor carries the
    same images/pxeboot/); the cache holds only verified files, named by their sha256."""
    kernel, initrd = payload(2, 5000), payload(3, 6000)
    serve_tree(server, kernel, initrd, TREEINFO.split("[checksums]")[0])
    name = "CentOS-7-x86_64-Minimal-2009.iso"
    cached = tmp_path / fetch.KNOWN_SHA256[name] / name
    cached.parent.mkdir()
    release_iso(tmp_path, kernel, initrd).rename(cached)
    code = cli.main(["fetch", "--pxeboot", "--release", "7.9.2009", "--mirror", server.url,
                     "--cache-dir", str(tmp_path)])
    assert code == 0
    vmlinuz, initrd_path, _treeinfo = capsys.readouterr().out.splitlines()
    assert Path(vmlinuz).read_bytes() == kernel and Path(initrd_path).read_bytes() == initrd


def test_cli_fetches_pxeboot_files(server: Server, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    kernel, initrd = payload(2, 5000), payload(3, 6000)
    serve_tree(server, kernel, initrd, TREEINFO.format(kernel=sha(kernel), initrd=sha(initrd)))
    code = cli.main(["fetch", "--pxeboot", "--release", "7.9.2009", "--mirror", server.url,
                     "--cache-dir", str(tmp_path)])
    assert code == 0
    vmlinuz, initrd_path, treeinfo = capsys.readouterr().out.splitlines()
    assert Path(vmlinuz).read_bytes() == kernel and Path(initrd_path).read_bytes() == initrd


# ---------------------------------------------------------------------------------------------
# Hostile servers: redirects to plain http, plain http mirrors, endless bodies, drips.


def test_redirect_from_https_to_plain_http_is_refused(tls_server: Server, server: Server,
                                                     tmp_path: Path) -> None:
    """An https mirror answering 301 to http: the .treeinfo whose checksums vouch for the
    kernel came over http, and "sha256 verified" was printed for a swapped kernel."""
    kernel, initrd = payload(2, 5000), payload(3, 6000)
    tree = serve_tree(server, kernel, initrd, TREEINFO.format(kernel=sha(kernel),
                                                              initrd=sha(initrd)))
    https_tree = tls_server.url + "7.9.2009/os/x86_64/"
    tls_server.rules["/7.9.2009/os/x86_64/.treeinfo"] = Rule(redirect=tree + ".treeinfo")
    with pytest.raises(KsbuildError, match=r"\.treeinfo: redirected from https to plain http "
                       r"\(http://127\.0\.0\.1:\d+/7\.9\.2009/os/x86_64/\.treeinfo\)"):
        fetch.fetch_pxeboot(https_tree, cache_dir=tmp_path, options=FAST)
    assert server.seen == []  # nothing was asked over plain http
    data = payload()
    path, url = serve_iso(server, data)
    tls_server.rules["/isos/base.iso"] = Rule(redirect=url)
    with pytest.raises(KsbuildError, match="redirected from https to plain http"):
        get(url_media(tls_server.url + "isos/base.iso", sha(data)), tmp_path)
    assert server.gets(path) == []


def test_redirects_that_keep_or_gain_tls_are_followed(tls_server: Server, server: Server,
                                                      tmp_path: Path) -> None:
    data = payload()
    tls_server.files["/isos/base.iso"] = data
    tls_server.rules["/old/base.iso"] = Rule(redirect="/isos/base.iso")  # relative, https
    server.rules["/moved/base.iso"] = Rule(redirect=tls_server.url + "old/base.iso")
    result = get(url_media(server.url + "moved/base.iso", sha(data)), tmp_path)
    assert result.read_bytes() == data
    server.rules["/loop"] = Rule(redirect="/loop")
    with pytest.raises(KsbuildError, match="more than 10 redirects"):
        get(url_media(server.url + "loop", sha(data)), tmp_path / "2")


def test_plain_http_mirror_warns_when_nothing_else_vouches(server: Server, tls_server: Server,
                                                          tmp_path: Path) -> None:
    kernel, initrd = payload(2, 5000), payload(3, 6000)
    treeinfo = TREEINFO.format(kernel=sha(kernel), initrd=sha(initrd))
    tree = serve_tree(server, kernel, initrd, treeinfo)
    log = Log()
    fetch.fetch_pxeboot(tree, cache_dir=tmp_path, options=FAST, progress=log.progress)
    warnings = [line for line in log.lines if line.startswith("WARNING: ")]
    assert len(warnings) == 1 and "plain http" in warnings[0], log.lines
    quiet = Log()  # a pinned .treeinfo vouches for itself
    fetch.fetch_pxeboot(tree, cache_dir=tmp_path, options=FAST, progress=quiet.progress,
                        treeinfo_sha256=sha(treeinfo.encode()))
    serve_tree(tls_server, kernel, initrd, treeinfo)  # and https vouches for the files
    fetch.fetch_pxeboot(fetch.tree_url(tls_server.url, "7.9.2009"), cache_dir=tmp_path,
                        options=FAST, progress=quiet.progress)
    assert not any("WARNING" in line for line in quiet.lines), quiet.lines
    # An ISO whose only checksum is the http mirror's own sha256sum.txt.
    data = payload()
    name = "CentOS-7-x86_64-Minimal-2003.iso"
    server.files[f"/7.8.2003/isos/x86_64/{name}"] = data
    server.files["/7.8.2003/isos/x86_64/sha256sum.txt"] = f"{sha(data)}  {name}\n".encode()
    media = site.Media("7.8.2003", "Minimal", None, None, None, None, origin="test")
    log = Log()
    get(media, tmp_path, log, mirror=server.url)
    assert any(line.startswith("WARNING: ") and "sha256sum.txt" in line for line in log.lines)


def test_plain_http_checksums_yield_to_a_verified_iso(server: Server, tmp_path: Path) -> None:
    """Over plain http, whoever swaps the kernel can swap the .treeinfo's checksum too: with
    a verified ISO of the release at hand, its copies vouch instead, and no warning is due."""
    kernel, initrd = payload(2, 70000), payload(3, 250000)
    iso = release_iso(tmp_path, kernel, initrd)
    swapped = payload(4, 70000)
    tree = serve_tree(server, swapped, initrd, TREEINFO.format(kernel=sha(swapped),
                                                               initrd=sha(initrd)))
    with pytest.raises(KsbuildError, match="does not match"):
        fetch.fetch_pxeboot(tree, cache_dir=tmp_path / "cache", options=FAST, iso=iso)
    server.files["/7.9.2009/os/x86_64/images/pxeboot/vmlinuz"] = kernel
    log = Log()
    files = fetch.fetch_pxeboot(tree, cache_dir=tmp_path / "cache", options=FAST, iso=iso,
                                progress=log.progress)
    assert files.vmlinuz.read_bytes() == kernel
    assert not any("WARNING" in line for line in log.lines), log.lines


def test_endless_body_stops_at_the_ceiling(server: Server, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A body without a length that never ends: 5 GB were written for a pinned 3 MB file."""
    data = payload()
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(endless=40 * SIZE)
    monkeypatch.setattr(fetch, "ISO_LIMIT", 2 * SIZE, raising=False)
    with pytest.raises(KsbuildError, match=rf"sent more than {2 * SIZE} bytes, any such file "
                       "can have; the file was not kept"):
        get(url_media(url, sha(data)), tmp_path)
    assert no_leftovers(tmp_path) == []
    assert len(server.gets(path)) == 1


def test_drip_is_stopped_by_the_deadline(server: Server, tmp_path: Path) -> None:
    """A byte every 0.2 s never trips a 5 s read timeout; the per-file deadline stops it, also
    when it is the headers that drip."""
    data = payload(4, 4096)
    path, url = serve_iso(server, data)
    for rule in (Rule(drip=0.2), Rule(header_drip=0.2)):
        server.rules[path] = rule
        options = FetchOptions(connect_timeout=5, read_timeout=5, retries=3, backoff=0.01,
                               deadline=2)
        started = time.monotonic()
        with pytest.raises(KsbuildError, match=r"not done within 2 s, the deadline for one "
                           r"file \(KSBUILD_FETCH_DEADLINE\)"):
            get(url_media(url, sha(data)), tmp_path, options=options)
        assert time.monotonic() - started < 4


def test_deadline_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fetch.deadline_from_env({}) == fetch.DEFAULT_DEADLINE
    assert fetch.deadline_from_env({"KSBUILD_FETCH_DEADLINE": "90"}) == 90
    for bad in ("0", "-1", "abc", "1e9", "nan"):
        with pytest.raises(InputError, match=rf"KSBUILD_FETCH_DEADLINE='{bad}': expected"):
            fetch.deadline_from_env({"KSBUILD_FETCH_DEADLINE": bad})
    monkeypatch.setenv("KSBUILD_FETCH_DEADLINE", "junk")
    with pytest.raises(InputError, match="KSBUILD_FETCH_DEADLINE"):
        fetch.resolve_media(url_media("http://127.0.0.1:9/x.iso", "a" * 64), cache_dir=Path("/"))


# ---------------------------------------------------------------------------------------------
# The site file's media key, the mirror, the cache folder, local files.


def write_site(tmp_path: Path, media: Any) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({
        "media": media,
        "hosts": [{"hostname": "kvm1.example.com", "root_password_hash": PASSWORD_HASH}],
    }))
    return path


VALID_MEDIA = [
    {"release": "7.9.2009", "flavor": "NetInstall"},
    {"release": "7.9.2009"},
    {"release": "7.8.2003", "flavor": "Everything", "mirror": "http://mirror.lan/centos/"},
    {"path": "isos/CentOS-7-x86_64-DVD-2009.iso"},
    {"path": "/data/my.iso", "sha256": "A" * 64},
    {"url": "https://example.com/x.iso", "sha256": "a" * 64},
]
INVALID_MEDIA = [
    ({"release": "7.9.2009", "path": "x.iso"}, "exactly one of release, path or url"),
    ({"flavor": "DVD"}, "exactly one of release, path or url"),
    ({"path": "x.iso", "flavor": "DVD"}, "media.flavor: flavor goes with release"),
    ({"url": "https://example.com/x.iso", "mirror": "http://m/"}, "mirror goes with release"),
    ({"url": "https://example.com/x.iso"}, "a url needs its sha256"),
    ({"release": "7.9.2009", "flavor": "Server"}, "'Server' is not one of NetInstall"),
    ({"release": "8.0"}, "'8.0' is not one of 7.2.1511"),
    ({"url": "ftp://example.com/x.iso", "sha256": "a" * 64}, "is not an http(s) URL"),
    ({"path": "x.iso", "sha256": "abc"}, "is not a sha256"),
    ({"release": "7.9.2009", "falvor": "DVD"}, "unknown key"),
]


@pytest.mark.parametrize("media", VALID_MEDIA)
def test_valid_media_load_and_match_the_schema(tmp_path: Path, media: dict[str, Any]) -> None:
    path = write_site(tmp_path, media)
    loaded = site.load(path).media
    assert loaded is not None
    assert loaded.release == media.get("release")
    if "release" in media:
        assert loaded.flavor == media.get("flavor", "DVD")
    if "path" in media:
        assert loaded.path == tmp_path / media["path"] or loaded.path == Path(media["path"])
    if "sha256" in media:
        assert loaded.sha256 == media["sha256"].lower()
    jsonschema.validate(yaml.safe_load(path.read_text()), site.json_schema())


@pytest.mark.parametrize(("media", "message"), INVALID_MEDIA)
def test_invalid_media_name_the_line_and_fail_the_schema(tmp_path: Path, media: dict[str, Any],
                                                         message: str) -> None:
    path = write_site(tmp_path, media)
    with pytest.raises(InputError) as caught:
        site.load(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: media", str(caught.value))
    assert message in str(caught.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(path.read_text()), site.json_schema())


def test_a_site_without_media_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"hosts": [{"hostname": "a.example.com",
                                               "root_password_hash": PASSWORD_HASH}]}))
    assert site.load(path).media is None


def test_mirror_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    media = site.Media("7.9.2009", "DVD", None, None, None, "http://site.lan/c", "s.yaml:1: media")
    monkeypatch.setenv("KSBUILD_MIRROR", "http://env.lan/c/")
    assert fetch.choose_mirror("http://flag.lan/c", media) == "http://flag.lan/c/"
    assert fetch.choose_mirror(None, media) == "http://env.lan/c/"
    monkeypatch.delenv("KSBUILD_MIRROR")
    assert fetch.choose_mirror(None, media) == "http://site.lan/c/"
    assert fetch.choose_mirror(None, None) == "https://vault.centos.org/"
    assert fetch.iso_url("https://vault.centos.org/", "7.9.2009", "DVD") == (
        "https://vault.centos.org/7.9.2009/isos/x86_64/CentOS-7-x86_64-DVD-2009.iso")
    monkeypatch.setenv("KSBUILD_MIRROR", "file:///srv/centos")
    with pytest.raises(InputError, match="KSBUILD_MIRROR: 'file:///srv/centos' is not"):
        fetch.choose_mirror(None, media)


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fetch.default_cache_dir() == tmp_path / "ksbuild"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec says: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fetch.default_cache_dir() == tmp_path / "home" / ".cache" / "ksbuild"


def test_local_iso_path(tmp_path: Path) -> None:
    iso = tmp_path / "mine.iso"
    iso.write_bytes(b"iso bytes")
    given = site.Media(None, None, iso, None, None, None, origin="s.yaml:3: media")
    assert fetch.resolve_media(given, cache_dir=tmp_path / "c") == iso
    pinned = site.Media(None, None, iso, None, sha(b"iso bytes"), None, origin="s.yaml:3: media")
    assert fetch.resolve_media(pinned, cache_dir=tmp_path / "c") == iso
    wrong = site.Media(None, None, iso, None, sha(b"no"), None, origin="s.yaml:3: media")
    with pytest.raises(InputError, match=r"s.yaml:3: media.path: .* not the pinned"):
        fetch.resolve_media(wrong, cache_dir=tmp_path / "c")
    gone = site.Media(None, None, tmp_path / "gone.iso", None, None, None, "s.yaml:3: media")
    with pytest.raises(InputError, match="s.yaml:3: media.path: .*gone.iso does not exist"):
        fetch.resolve_media(gone, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["fetch", "--url", "https://example.com/x.iso"]) == 2
    assert cli.main(["fetch", "--flavor", "Server"]) == 2
    assert cli.main(["fetch", "--release", "7.9.2009", "--sha256", "xyz"]) == 2
    no_media = tmp_path / "site.yaml"
    no_media.write_text(yaml.safe_dump({"hosts": [{"hostname": "a.example.com",
                                                   "root_password_hash": PASSWORD_HASH}]}))
    assert cli.main(["fetch", str(no_media)]) == 2
    err = capsys.readouterr().err
    assert "--url needs --sha256" in err
    assert "--flavor: 'Server' is not one of" in err
    assert "--sha256: 'xyz' is not a sha256" in err
    assert "no `media:` key" in err


# ---------------------------------------------------------------------------------------------
# The progress text.


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_off_a_terminal_are_few() -> None:
    out: list[str] = []
    clock = Clock()
    shown = TextProgress(out.append, tty=False, clock=clock)
    shown.start("big.iso", 100 * 1024 * 1024)
    for step in range(1, 1001):
        clock.now = step * 0.01
        shown.advance(step * 100 * 1024 * 1024 // 1000)
    shown.finish()
    lines = "".join(out).splitlines()
    assert lines[0] == "big.iso: 100.0 MiB to fetch"
    assert lines[1] == "big.iso: 25%, 25.0 MiB of 100.0 MiB, 10.0 MiB/s, 0:08 left"
    assert len(lines) == 5  # start, 25 %, 50 %, 75 %, done
    assert lines[-1] == "big.iso: 100.0 MiB in 0:10 (10.0 MiB/s)"
    assert "\r" not in "".join(out)


def test_progress_bar_on_a_terminal_redraws_in_place() -> None:
    out: list[str] = []
    clock = Clock()
    shown = TextProgress(out.append, tty=True, clock=clock)
    shown.start("big.iso", 4 * 1024 * 1024, done=1024 * 1024)
    clock.now = 1.0
    shown.advance(2 * 1024 * 1024)
    shown.note("a note")
    shown.finish()
    text = "".join(out)
    assert "big.iso: resuming at 1.0 MiB of 4.0 MiB\n" in text
    assert "\r\x1b[Kbig.iso [############............] 50%, 2.0 MiB of 4.0 MiB, 1.0 MiB/s, " \
           "0:02 left" in text
    assert "\r\x1b[Ka note\n" in text
    assert text.endswith("big.iso: 1.0 MiB in 0:01 (1.0 MiB/s)\n")


def test_nothing_but_the_file_is_left_after_a_resume(server: Server, tmp_path: Path) -> None:
    """The If-Range validators live beside the partial only while it exists."""
    data = payload(size=5000)
    path, url = serve_iso(server, data)
    server.rules[path] = Rule(drop_times=1, drop_after=100)
    result = get(url_media(url, sha(data)), tmp_path)
    assert sorted(p.name for p in result.parent.iterdir()) == [".lock", "base.iso"]
    assert len(server.gets(path)) == 2
