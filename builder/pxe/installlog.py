"""Package progress from the installers' remote log (`ksbuild serve --syslog HOST:PORT`).

Anaconda 21 (anaconda-21.48.22.159-1) with `inst.syslog=HOST:PORT` appends `*.* @@HOST:PORT`
to the installer's rsyslog.conf (pyanaconda/anaconda_log.py, updateRemote): rsyslog forwards
every message over TCP, one per line, in its traditional forward format
(`<PRI>Mmm dd hh:mm:ss HOST TAG: MSG`). Its packaging log goes to syslog at debug level
(forwardToSyslog) and carries `Installing <package> (N/M)` for each package the transaction
installs (scripts/anaconda-yum prints PROGRESS_INSTALL, pyanaconda/packaging/yumpayload.py
logs it).

The installer calls itself `localhost`, so a line is attributed by the sender's address: the
one the host last fetched its kickstart or reported `started` from (events.Fleet.by_client).
A line from any other address is dropped. Progress becomes a `packages` event only at each
tenth of the transaction (and its last package): at most 11 events per install, whatever is
sent. One thread serves every connection (selectors); each connection holds at most
MAX_LINE bytes of a partial line, and at most MAX_CONNECTIONS are open at once.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import threading
from collections.abc import Callable

from builder.errors import InputError
from builder.pxe.events import Fleet

INSTALLING = re.compile(rb"Installing (\S{1,200}) \(([0-9]{1,6})/([0-9]{1,6})\)")
MAX_LINE = 4096
MAX_CONNECTIONS = 4096
STEPS = 10  # progress events per install: one at each tenth


def tenth(done: int, total: int) -> int:
    return done * STEPS // total


class Receiver:
    """A TCP syslog listener that turns package progress into events."""

    def __init__(self, address: tuple[str, int], fleet: Fleet,
                 log: Callable[[str], None]) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(address)
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.fleet = fleet
        self.log = log
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.buffers: dict[socket.socket, tuple[str, bytearray]] = {}
        self.reached: dict[str, int] = {}  # host -> the last tenth recorded
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    def serve_forever(self) -> None:
        try:
            while not self.stopping.is_set():
                for key, _mask in self.selector.select(timeout=0.2):
                    if key.fileobj is self.listener:
                        self._accept()
                    else:
                        assert isinstance(key.fileobj, socket.socket)
                        self._read(key.fileobj)
        finally:
            for connection in list(self.buffers):
                self._drop(connection)
            self.selector.close()
            self.listener.close()

    def stop(self) -> None:
        """Ends serve_forever (within 0.2 s), which closes every socket."""
        self.stopping.set()

    def _accept(self) -> None:
        try:
            connection, peer = self.listener.accept()
        except OSError:
            return
        if len(self.buffers) >= MAX_CONNECTIONS:
            connection.close()
            return
        connection.setblocking(False)
        self.buffers[connection] = (str(peer[0]), bytearray())
        self.selector.register(connection, selectors.EVENT_READ, None)

    def _read(self, connection: socket.socket) -> None:
        try:
            data = connection.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return
        peer, buffer = self.buffers[connection]
        buffer += data
        *lines, rest = bytes(buffer).split(b"\n")
        if len(rest) > MAX_LINE:  # no line is that long: skip to the next newline
            rest = b""
        self.buffers[connection] = (peer, bytearray(rest))
        for line in lines:
            self.take(peer, line)

    def _drop(self, connection: socket.socket) -> None:
        self.buffers.pop(connection, None)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(connection)
        connection.close()

    def take(self, peer: str, line: bytes) -> None:
        """One log line from `peer`: an event if it moves its host on by a tenth."""
        found = INSTALLING.search(line[:MAX_LINE])
        if not found:
            return
        done, total = int(found.group(2)), int(found.group(3))
        host = self.fleet.host_at(peer)
        if host is None or total == 0 or done > total:
            return
        step = tenth(done, total)
        if done != 1 and self.reached.get(host) == step:
            return
        self.reached[host] = step
        package = found.group(1).decode(errors="replace")
        try:
            self.fleet.record(host, "packages", f"installing package {done} of {total} "
                              f"({package})"[:200], peer, {"progress": f"{done}/{total}"})
        except InputError as exc:  # the host left the tree in a rebuild
            self.log(f"{peer}: progress of {host} not recorded: {exc}")


def start(address: tuple[str, int], fleet: Fleet, log: Callable[[str], None]) -> Receiver:
    """A receiver listening on `address`, served by a thread of its own (stop() ends it)."""
    receiver = Receiver(address, fleet, log)
    threading.Thread(target=receiver.serve_forever, name="ksbuild-syslog", daemon=True).start()
    return receiver


def parse_address(text: str) -> tuple[str, int]:
    from builder.pxe.serve import parse_listen

    try:
        return parse_listen(text)
    except InputError as exc:
        raise InputError(str(exc).replace("--listen", "--syslog")) from None
