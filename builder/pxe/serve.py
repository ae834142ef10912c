"""`ksbuild serve TREE`: a small HTTP server for a PXE tree (labs and tests; production uses
nginx and dnsmasq with the tree's generated configs).

    GET  /<path>        a file under TREE/http/ (the kickstarts: /ks/<host>.cfg, kernel and
                        initrd, the install tree); nothing outside it, no folder listings,
                        no dot files but an install tree's .treeinfo and .discinfo.
                        `Range: bytes=A-B` (A-, -N) is answered with 206 (GRUB resumes
                        transfers so, anaconda and yum fetch parts); file data goes out with
                        sendfile(2), never whole into memory
    GET  /ks            the kickstart of the host whose MAC one of the request's
                        X-RHN-Provisioning-MAC-<n> headers carries (`inst.ks.sendmac`);
                        404 for an unknown MAC, 409 if the MACs name different hosts
    POST /done/<host>   the host has installed: its pxelinux, GRUB and iPXE entries switch to
                        local boot (builder/pxe/state.py)
    POST /events/<host>/<state>
                        what a host reports during its install and at first boot (%pre,
                        %onerror, the first-boot unit): builder/pxe/events.py records it
    GET  /status        the fleet's status page (read-only); /status.json its data

Serving a kickstart and a done call are recorded as events too. Behind nginx (the generated
nginx.conf proxies /ks, /done, /events and /status here), the client is the X-Real-IP nginx
sets; it is believed only from a loopback peer.

Connections are answered by a pool of MAX_WORKERS threads; up to MAX_QUEUED more wait for a
free one, beyond that a connection gets 503 at once. While connections wait, a kept-alive
connection idle between requests is closed and answers say `Connection: close`, so workers
go round (moot while the handler speaks HTTP/1.0, which closes every connection). Each
request has an overall deadline (REQUEST_TIMEOUT to arrive, plus time in proportion to what
is sent back), enforced by shutting its socket down: a client dripping a byte every few
seconds holds a thread for REQUEST_TIMEOUT at most. On stop, waiting connections are closed,
requests in flight get STOP_GRACE seconds. A malformed request gets 400. Every line is logged
through a callback (cli.py prints) with control characters escaped.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import json
import os
import posixpath
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

from builder.errors import InputError, KsbuildError
from builder.pxe import events as pxeevents
from builder.pxe import state as pxestate
from builder.pxe import statuspage

MAC_HEADER = re.compile(r"x-rhn-provisioning-mac-[0-9]+", re.I)
MAC = re.compile(r"(?:[0-9a-f]{2}[:-]){5}[0-9a-f]{2}", re.I)
DONE = re.compile(r"/done/([A-Za-z0-9.-]{1,253})")
EVENT = re.compile(r"/events/([A-Za-z0-9.-]{1,253})/([a-z]{1,20})")
KICKSTART = re.compile(r"/ks/([A-Za-z0-9.-]{1,253})\.cfg")
MAX_EVENT_BODY = 8192  # bytes: the longest field (a log tail) is 4096 characters
CHUNK = 1 << 16
# The dot files of an install tree, which anaconda fetches from inst.repo.
TREE_DOT_FILES = frozenset({".treeinfo", ".discinfo"})
RANGE = re.compile(r"bytes=([0-9]{0,18})-([0-9]{0,18})")
REQUEST_TIMEOUT = 30.0  # seconds a client may take to send its request; then it is dropped
MIN_SEND_RATE = 32 * 1024  # bytes/s: a response may take REQUEST_TIMEOUT + size / this
MAX_WORKERS = 64  # connections answered at once
MAX_QUEUED = 512  # connections waiting for a worker; more get 503
STOP_GRACE = 3.0  # seconds requests in flight get to finish on stop
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nbusy\n")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    file: Path | None = None
    content_type: str = "text/plain; charset=utf-8"
    note: str = ""  # for the log line


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server
    server_version = "ksbuild"
    sys_version = ""
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        self._send(self.server.app.get(self._path(), self.headers.items(), client=self._client(),
                                       query=urlsplit(self.path).query), body=True)

    def do_HEAD(self) -> None:
        self._send(self.server.app.get(self._path(), self.headers.items()), body=False)

    answered = False  # a request was answered on this connection

    def handle_one_request(self) -> None:
        # Each request on a kept-alive connection gets its own deadline, from its first byte.
        # Until that byte comes the connection is idle (only after a first answer: the first
        # request may sit unread in the socket): closed if others wait for a worker, now or
        # while it waits.
        self.server.deadlines.set(self.connection, REQUEST_TIMEOUT, idle=self.answered)
        if self.answered and self.server.short_of_workers():  # after the mark: no gap
            self.close_connection = True
            return
        super().handle_one_request()
        self.answered = True

    def parse_request(self) -> bool:
        self.server.deadlines.set(self.connection, REQUEST_TIMEOUT)
        return super().parse_request()

    def do_POST(self) -> None:
        given = self.headers.get("Content-Length", "0").strip() or "0"
        if "Transfer-Encoding" in self.headers or not re.fullmatch(r"[0-9]{1,9}", given):
            self.close_connection = True
            what = "no Content-Length: bytes" if "Transfer-Encoding" in self.headers \
                else "a bad Content-Length"
            self._send(Answer(400, b"bad request: send the body with a Content-Length\n",
                              note=what), body=True)
            return
        length = int(given)
        data = b""
        if length > MAX_EVENT_BODY:
            self._send(Answer(413, b"body too long\n", note="body too long"), body=True)
            self.close_connection = True
            return
        if length > 0:
            data = self.rfile.read(length)
        self._send(self.server.app.post(self._path(), self._client(), body=data), body=True)

    def _path(self) -> str:
        return urlsplit(self.path).path

    def _client(self) -> str:
        peer = self.client_address[0]
        forwarded = self.headers.get("X-Real-IP", "").strip()
        if forwarded and peer in ("127.0.0.1", "::1") and len(forwarded) <= 64:
            with contextlib.suppress(ValueError):  # only an address; it lands in events
                return str(ipaddress.ip_address(forwarded))
        return peer

    def _send(self, answer: Answer, body: bool) -> None:
        source: BinaryIO | None = None
        if answer.file is not None:
            try:
                # Opened before the headers: the size sent is that of the file sent, even if
                # a rebuild or a switch replaces it meanwhile.
                source = answer.file.open("rb")
            except OSError:
                answer = Answer(404, b"not found\n")
        try:
            size = os.fstat(source.fileno()).st_size if source else len(answer.body)
            start, length = 0, size
            wanted = byte_range(self.headers.get("Range"), size) if source else None
            if wanted == "unsatisfiable" and source is not None:
                source.close()
                source = None
                answer = Answer(416, b"range not satisfiable\n", note=f"of {size} bytes")
                length = len(answer.body)
            elif isinstance(wanted, tuple):
                start, length = wanted[0], wanted[1] - wanted[0] + 1
                answer = replace(answer, status=206)
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(length))
            if source is not None:
                self.send_header("Accept-Ranges", "bytes")
            if answer.status == 206:
                self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
            elif answer.status == 416:
                self.send_header("Content-Range", f"bytes */{size}")
            if answer.status == 405:
                self.send_header("Allow", "POST")
            if self.server.short_of_workers():  # others wait: this worker goes to them next
                self.send_header("Connection", "close")
            # Logged before the client can have the answer: whoever sees the answer finds
            # the line in the log.
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self.server.app.log(printable(
                f'{stamp} {self.client_address[0]} "{self.requestline}" '
                f'{answer.status} {length}{" " + answer.note if answer.note else ""}'))
            self.end_headers()
            self.server.deadlines.set(self.connection, REQUEST_TIMEOUT + length / MIN_SEND_RATE)
            if body and source is not None:
                self._send_file(source, start, length)
            elif body:
                self.wfile.write(answer.body)
        finally:
            if source is not None:
                source.close()

    def _send_file(self, source: BinaryIO, start: int, length: int) -> None:
        """`length` bytes from `start`: sendfile(2) where the socket allows it (the kernel
        moves the page cache to the socket, nothing passes through Python), else copied in
        chunks; never the whole file in memory."""
        try:
            self.connection.sendfile(source, start, length)
        except (AttributeError, ValueError):  # not a plain socket (tests, TLS wrappers)
            source.seek(start)
            left = length
            while left > 0:
                data = source.read(min(CHUNK, left))
                if not data:
                    break
                self.wfile.write(data)
                left -= len(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Errors BaseHTTPRequestHandler reports itself (bad request lines, timeouts).
        self.server.app.log(printable(f"{self.client_address[0]} {format % args}"))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _send logs every answer with what it did


class App:
    """What the server answers; no sockets here, so it is easy to reason about and test."""

    def __init__(self, tree: Path, log: Log) -> None:
        self.tree = tree.absolute()
        self.http = self.tree / "http"
        self.log = log
        pxestate.read_index(self.tree)  # fail at start, not at the first request
        self.fleet = pxeevents.Fleet(self.tree)

    def get(self, path: str, headers: list[tuple[str, str]], client: str = "",
            query: str = "") -> Answer:
        if path == "/ks":
            return self._served_kickstart(self._ks_by_mac(headers), headers, client)
        if DONE.fullmatch(path) or EVENT.fullmatch(path):
            return Answer(405, b"use POST\n")
        if path in ("/status", "/status/"):
            return Answer(200, statuspage.page(), content_type="text/html; charset=utf-8")
        if path == "/status.json":
            return self._status_json(query)
        return self._served_kickstart(self._file(path), headers, client)

    def post(self, path: str, client: str, body: bytes = b"") -> Answer:
        event = EVENT.fullmatch(path)
        if event:
            return self._event(event.group(1).lower(), event.group(2), client, body)
        found = DONE.fullmatch(path)
        if not found:
            return Answer(404, b"not found\n")
        name = found.group(1).lower()
        try:
            changed = pxestate.set_installed(self.tree, name, True, note=f"reported by {client}")
        except InputError:
            return Answer(404, b"no such host in this PXE tree\n", note="unknown host")
        what = "now boots from its disk" if changed else "already boots from its disk"
        self.fleet.record(name, "installed", "%post done; boots from its disk next", client)
        return Answer(200, f"{name} {what}\n".encode(), note=f"{name} {what}")

    def _event(self, name: str, state: str, client: str, body: bytes) -> Answer:
        if state not in pxeevents.HOST_STATES:
            return Answer(404, b"no such state\n", note=f"unknown state {state[:20]}")
        try:
            fields = pxeevents.validate_fields(_form(body))
            message = fields.pop("message", "")
            event = self.fleet.record(name, state, message, client, fields)
        except InputError as exc:
            status = 404 if "no host named" in str(exc) else 400
            return Answer(status, f"{exc}\n".encode(), note=f"event refused: {exc}")
        return Answer(200, f"recorded {name} {state} #{event.seq}\n".encode(),
                      note=f"{name} {state}")

    def _status_json(self, query: str) -> Answer:
        since = 0
        for key, values in parse_qs(query, max_num_fields=4).items():
            if key == "since" and values[0].isdigit() and len(values[0]) < 19:
                since = int(values[0])
        self.fleet.refresh()
        data = json.dumps(self.fleet.snapshot(since), separators=(",", ":")).encode()
        return Answer(200, data, content_type="application/json")

    def _served_kickstart(self, answer: Answer, headers: list[tuple[str, str]],
                          client: str) -> Answer:
        """Record a kickstart fetched (by name or by MAC), with the MAC headers seen."""
        if answer.status != 200 or answer.file is None:
            return answer
        found = KICKSTART.fullmatch("/ks/" + answer.file.name)
        if not found or answer.file.parent.name != "ks":
            return answer
        macs = " ".join(value.strip()[:40] for name, value in headers
                        if MAC_HEADER.fullmatch(name))[:400]
        # A kickstart file of a host the index does not know is not ours to report.
        with contextlib.suppress(InputError):
            self.fleet.record(found.group(1), "kickstart", "kickstart fetched", client,
                              {"macs": macs} if macs else {})
        return answer

    def _file(self, path: str) -> Answer:
        relative = _safe_relative(path)
        if relative is None:
            return Answer(404, b"not found\n", note="refused path")
        target = self.http / relative
        try:
            resolved = target.resolve(strict=True)
        except (FileNotFoundError, RuntimeError, OSError):
            return Answer(404, b"not found\n")
        # No symlink below http/ is followed at all (as the generated nginx.conf:
        # disable_symlinks): the tree has none, and one put there could point anywhere.
        if not resolved.is_file() or resolved != self.http.resolve() / relative:
            return Answer(404, b"not found\n")
        kind = "text/plain; charset=utf-8" if resolved.suffix == ".cfg" else \
            "application/octet-stream"
        return Answer(200, file=resolved, content_type=kind)

    def _ks_by_mac(self, headers: list[tuple[str, str]]) -> Answer:
        macs = [found.group(0).lower().replace("-", ":") for name, value in headers
                if MAC_HEADER.fullmatch(name) and (found := MAC.search(value))]
        if not macs:
            return Answer(404, b"no X-RHN-Provisioning-MAC-<n> header (boot with "
                               b"inst.ks.sendmac)\n", note="no MAC header")
        index = pxestate.read_index(self.tree)
        hosts = sorted({index.by_mac[mac] for mac in macs if mac in index.by_mac})
        if not hosts:
            return Answer(404, b"no host with this MAC in the site\n",
                          note=f"unknown MAC {' '.join(macs)}")
        if len(hosts) > 1:
            return Answer(409, b"these MACs belong to different hosts\n",
                          note=f"MACs of {' '.join(hosts)}")
        target = self.http / "ks" / f"{hosts[0]}.cfg"
        if not target.is_file():
            return Answer(404, b"no kickstart for this host\n", note=hosts[0])
        return Answer(200, file=target, note=f"kickstart of {hosts[0]}")


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The first and last byte a `Range` header asks for, "unsatisfiable" (answer 416), or
    None (answer the whole file: no header, a unit other than bytes, or several ranges,
    which a server may answer in full)."""
    if header is None:
        return None
    found = RANGE.fullmatch(header.strip())
    if not found or found.group(1) == found.group(2) == "":
        return None
    first, last = found.group(1), found.group(2)
    if first == "":  # the last N bytes
        count = int(last)
        if count == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - count), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # not a valid range: ignored, as RFC 9110 14.2 says
    if start >= size:
        return "unsatisfiable"
    return start, min(int(last), size - 1) if last else size - 1


def _form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body as {name: value}; InputError if it is not
    one, or names a field twice."""
    try:
        text = body.decode("utf-8", errors="strict")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                          errors="strict", max_num_fields=len(pxeevents.FIELDS))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"not a form body: {exc}") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise InputError("a field given twice")
    return form


def printable(text: str) -> str:
    """`text` with control characters (and backslashes) escaped: a request line may carry
    terminal escape sequences, and log lines go to a terminal."""
    return "".join(c if c.isprintable() and c != "\\" else
                   ("\\\\" if c == "\\" else f"\\x{ord(c):02x}" if ord(c) < 256 else
                    f"\\u{ord(c):04x}") for c in text)


def _safe_relative(path: str) -> str | None:
    """The request path as a path under http/, or None if it could leave it or names a dot
    file. Percent-decoding comes first, so an encoded `..` or `/` is caught as well."""
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\0" in decoded or "\\" in decoded or not decoded.startswith("/"):
        return None
    parts = decoded.split("/")[1:]
    if any(part in ("..", ".") or part.startswith(".") for part in parts[:-1]) or \
            parts[-1] in ("..", ".") or (parts[-1].startswith(".") and
                                         parts[-1] not in TREE_DOT_FILES):
        return None
    relative = posixpath.normpath("/".join(p for p in parts if p))
    return None if relative in (".", "") else relative


class Deadlines:
    """Shuts down each connection's socket when its deadline passes: a blocked read or write
    then returns at once, however slowly the client trickles (a per-read timeout never
    trips while a byte comes every few seconds)."""

    def __init__(self) -> None:
        self.due: dict[socket.socket, float] = {}
        self.idle: set[socket.socket] = set()  # kept alive, waiting for their next request
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._reap, name="ksbuild-serve-deadlines",
                                       daemon=True)
        self.thread.start()

    def set(self, sock: socket.socket, seconds: float, idle: bool = False) -> None:
        with self.lock:
            self.due[sock] = time.monotonic() + seconds
            if idle:
                self.idle.add(sock)
            else:
                self.idle.discard(sock)

    def forget(self, sock: socket.socket) -> None:
        with self.lock:
            self.due.pop(sock, None)
            self.idle.discard(sock)

    def cut_idle(self) -> None:
        """Close one kept-alive connection that waits for its next request (HTTP lets a
        server close an idle connection; clients open a new one), so that its worker goes
        to a connection that waits with a request."""
        with self.lock:
            if self.idle:
                _shutdown(self.idle.pop(), socket.SHUT_RDWR)

    def cut_all(self, how: int) -> None:
        with self.lock:
            for sock in self.due:
                _shutdown(sock, how)

    def stop(self) -> None:
        self.stopped.set()

    def _reap(self) -> None:
        while not self.stopped.wait(0.25):
            now = time.monotonic()
            with self.lock:
                late = [sock for sock, due in self.due.items() if due <= now]
                for sock in late:
                    del self.due[sock]
                    self.idle.discard(sock)
                    _shutdown(sock, socket.SHUT_RDWR)


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


class Server(http.server.HTTPServer):
    """An HTTP server whose connections a fixed pool of threads answers (see the module's
    docstring for the bounds)."""

    request_queue_size = 1024  # 200 installers booting at once must not overflow the backlog
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # Before binding: a failed bind calls server_close, which stops these.
        self.deadlines = Deadlines()
        self.waiting: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(MAX_QUEUED)
        self.free = 0  # workers waiting for a connection
        self.free_lock = threading.Lock()
        self.workers = [threading.Thread(target=self._work, name=f"ksbuild-serve-{n}")
                        for n in range(MAX_WORKERS)]
        for worker in self.workers:
            worker.start()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            self.waiting.put_nowait((request, client_address))
        except queue.Full:
            self._refuse(request, client_address)
            return
        if self.short_of_workers():
            self.deadlines.cut_idle()

    def short_of_workers(self) -> bool:
        """True when connections wait that no free worker will take."""
        with self.free_lock:
            return self.waiting.qsize() > self.free

    def _refuse(self, request: socket.socket, client_address: Any) -> None:
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(BUSY)  # a few bytes into an empty socket buffer: never blocks
        self.shutdown_request(request)
        self.app.log(printable(f"{client_address[0]} 503: {MAX_WORKERS} connections busy and "
                               f"{MAX_QUEUED} waiting"))

    def _work(self) -> None:
        while True:
            with self.free_lock:
                self.free += 1
            item = self.waiting.get()
            with self.free_lock:
                self.free -= 1
            if item is None:
                return
            request, client_address = item
            self.deadlines.set(request, REQUEST_TIMEOUT)
            try:
                self.finish_request(request, client_address)
            except Exception as exc:  # noqa: BLE001 - one line per failed connection
                self.handle_error(request, client_address, exc)
            finally:
                self.deadlines.forget(request)
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any,
                     exc: BaseException | None = None) -> None:
        """One log line, no traceback: mostly a client gone or cut off at its deadline."""
        what = f"{type(exc).__name__}: {exc}" if exc is not None else "error"
        self.app.log(printable(f"{client_address[0]} connection ended: {what}"))

    def server_close(self) -> None:
        """Stop listening; close the connections still waiting; give those in flight
        STOP_GRACE seconds (reads end at once: a request half sent is not awaited; a done
        call being recorded is not cut, since the App never touches the socket), then cut."""
        super().server_close()
        while True:
            try:
                item = self.waiting.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.shutdown_request(item[0])
        self.deadlines.cut_all(socket.SHUT_RD)
        for _ in self.workers:
            self.waiting.put(None)
        ends = time.monotonic() + STOP_GRACE
        for worker in self.workers:
            worker.join(max(0.0, ends - time.monotonic()))
        self.deadlines.cut_all(socket.SHUT_RDWR)
        for worker in self.workers:
            worker.join()
        self.deadlines.stop()


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or PORT (all addresses)."""
    found = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]*)):([0-9]{1,5})|([0-9]{1,5})", text)
    if not found:
        raise InputError(f"--listen: {text!r} is not HOST:PORT")
    port = int(found.group(3) or found.group(4))
    if port > 65535:
        raise InputError(f"--listen: port {port} is out of range")
    host = found.group(1) or found.group(2) or "0.0.0.0"
    return host, port


def start(tree: Path, listen: str, log: Log) -> Server:
    """A bound server (not yet serving): call serve_forever(), and shutdown() to stop."""
    host, port = parse_listen(listen)
    app = App(tree, log)
    try:
        return Server((host, port), app)
    except OSError as exc:
        raise KsbuildError(f"--listen {listen}: cannot listen: {exc.strerror or exc}") from None


def url_of(server: Server) -> str:
    """The bound address (the real port when 0 was asked for) as a URL."""
    host, port = server.socket.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run_in_thread(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="ksbuild-serve", daemon=True)
    thread.start()
    return thread
