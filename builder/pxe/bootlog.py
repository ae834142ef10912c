"""`boot` events from dnsmasq's TFTP log (`ksbuild serve --tftp-log FILE`): a machine fetched
its own install entry (pxelinux.cfg/01-<mac>, grub.cfg-01-<mac>, ipxe/<mac>.ipxe, ...).

dnsmasq logs each transfer as `dnsmasq-tftp[PID]: sent <path> to <address>` (its log-facility
file, or syslog). The entry files are named by the MAC, so the line names the host. A host
that has installed gets local-boot entries under the same names: its fetches are not news,
and are not recorded; nor is a second fetch within DEDUP_SECONDS (GRUB may read two names).
The file is followed from its end when `serve` starts; a rotated or truncated log is read from
its start.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from builder.errors import InputError
from builder.pxe import state as pxestate
from builder.pxe.events import Fleet

SENT = re.compile(r"\bsent (/\S{1,4000}) to (\S{1,64})")
ENTRY_MAC = re.compile(r"((?:[0-9a-f]{2}[-:]){5}[0-9a-f]{2})(?:\.ipxe)?$", re.I)
DEDUP_SECONDS = 60.0
POLL_SECONDS = 1.0
MAX_READ = 1 << 20  # bytes read per poll: a huge backlog is taken in bites


def take_lines(fleet: Fleet, lines: Iterable[str]) -> list[str]:
    """Record a `boot` event for each install entry a line says was sent; the hosts named."""
    index = pxestate.read_index(fleet.tree)
    installed = pxestate.installed(fleet.tree)
    recorded = []
    for line in lines:
        sent = SENT.search(line)
        if not sent:
            continue
        name = sent.group(1).rsplit("/", 1)[-1]
        mac = ENTRY_MAC.search(name)
        if not mac:
            continue
        host = index.by_mac.get(mac.group(1).lower().replace("-", ":"))
        if host is None or host in installed or _recent_boot(fleet, host):
            continue
        try:
            fleet.record(host, "boot", f"boot entry {name} fetched by TFTP", sent.group(2))
        except InputError:
            continue
        recorded.append(host)
    return recorded


def _recent_boot(fleet: Fleet, host: str) -> bool:
    status = fleet.hosts.get(host)
    last = status.last if status else None
    return bool(last and last.state == "boot" and fleet.clock() - last.time < DEDUP_SECONDS)


class Follower:
    """Follows a log file in a thread of its own; stop() ends it."""

    def __init__(self, path: Path, fleet: Fleet, log: Callable[[str], None]) -> None:
        self.path, self.fleet, self.log = path, fleet, log
        self.stopping = threading.Event()
        try:
            info = path.stat()
            self.inode, self.position = info.st_ino, info.st_size
        except FileNotFoundError:
            self.inode, self.position = -1, 0

    def poll(self) -> None:
        try:
            with self.path.open("rb") as handle:
                info = os.fstat(handle.fileno())
                if info.st_ino != self.inode or info.st_size < self.position:
                    self.inode, self.position = info.st_ino, 0
                handle.seek(self.position)
                data = handle.read(MAX_READ)
        except FileNotFoundError:
            return
        complete = data[:data.rfind(b"\n") + 1]  # a line being written waits for next time
        self.position += len(complete)
        take_lines(self.fleet, complete.decode(errors="replace").splitlines())

    def run(self) -> None:
        while not self.stopping.wait(POLL_SECONDS):
            try:
                self.poll()
            except OSError as exc:
                self.log(f"--tftp-log {self.path}: {exc}")

    def stop(self) -> None:
        self.stopping.set()


def start(path: Path, fleet: Fleet, log: Callable[[str], None]) -> Follower:
    follower = Follower(path, fleet, log)
    threading.Thread(target=follower.run, name="ksbuild-tftp-log", daemon=True).start()
    return follower
