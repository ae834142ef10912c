"""What each host of a PXE tree has reported during its install: an append-only event log
per host under `state/events/`, and the fleet's status computed from it.

    state/events/<hostname>.jsonl     one JSON object per line: seq, time, state, message,
                                      client and (for some states) data
    state/events/<hostname>.jsonl.1   the previous file, once the current one grew too big

Writers (`ksbuild serve`'s threads) hold the tree's lock (builder/pxe/state.py) for each
append, so a rebuild of the tree, which carries the folder over, never loses one. Each event
is one line written by one write(2) on an O_APPEND descriptor: it is in the kernel when the
call returns (a restart of `serve` keeps it), and two events never interleave. A reader skips a
line it cannot parse (a crash in the middle of a write).

Bounded: a line is at most MAX_LINE bytes and a host's current file at most MAX_FILE bytes;
then it becomes `.1` (replacing the older one). So a flood of events for one host costs at
most 2 * MAX_FILE bytes of disk, and the in-memory status holds a fixed few fields per host.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from builder.errors import InputError
from builder.pxe import state as pxestate

EVENTS = Path("state") / "events"
MAX_LINE = 8192
MAX_FILE = 64 * 1024
MAX_PATH = 32  # states kept in a host's path (a host that reinstalls goes round again)

# A host's states, in the order an install goes through them. `failed` and `degraded` are
# ends of their own; each state's rank is its step towards a host that is up and running.
STATES = ("pending", "boot", "kickstart", "started", "packages", "installed", "booted",
          "failed", "degraded")
RANK = {"pending": 0, "boot": 1, "kickstart": 2, "started": 3, "packages": 4, "installed": 5,
        "booted": 6, "failed": 6, "degraded": 6}
FINAL_RANK = 6
LABELS = {
    "pending": "no news yet",
    "boot": "install boot entry fetched (TFTP)",
    "kickstart": "kickstart fetched",
    "started": "installer started (%pre)",
    "packages": "installing packages",
    "installed": "installed (%post done)",
    "booted": "booted, network up as configured",
    "failed": "install failed",
    "degraded": "booted, network not as configured",
}
# What a host may report itself (POST /events/<host>/<state>); the server records
# `boot` (dnsmasq's TFTP log), `kickstart` (a kickstart served), `installed` (POST /done)
# and `packages` (the installer's remote log).
HOST_STATES = frozenset({"started", "packages", "failed", "booted", "degraded"})
# Fields a host may send, and their longest value in characters.
FIELDS = {"message": 200, "log": 4096, "address": 400, "route": 400, "bridge": 400,
          "progress": 20}


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    state: str
    message: str = ""
    client: str = ""
    data: Mapping[str, str] = field(default_factory=dict)

    def line(self) -> bytes:
        record: dict[str, Any] = {"seq": self.seq, "time": round(self.time, 3),
                                  "state": self.state, "message": self.message,
                                  "client": self.client}
        if self.data:
            record["data"] = dict(self.data)
        return (json.dumps(record, ensure_ascii=True, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class HostStatus:
    """One host's place in the install, folded from its events."""

    hostname: str
    mac: str
    state: str = "pending"
    since: float | None = None  # when it entered `state`
    first: float | None = None  # its first event
    last: Event | None = None
    seq: int = 0
    reached: Mapping[str, float] = field(default_factory=dict)  # state -> first time
    path: tuple[str, ...] = ()  # the states in the order it went through them (the last few)
    install_client: str = ""  # the address it fetched its kickstart or started from
    version: int = 0  # the fleet's change counter when this host last changed

    def apply(self, event: Event) -> HostStatus:
        reached = dict(self.reached)
        reached.setdefault(event.state, event.time)
        changed = event.state != self.state
        path = (self.path + (event.state,))[-MAX_PATH:] if changed else self.path
        client = event.client if event.state in ("kickstart", "started") and event.client \
            else self.install_client
        return replace(self, state=event.state, last=event, seq=event.seq, reached=reached,
                       path=path, install_client=client,
                       since=event.time if changed or self.since is None else self.since,
                       first=self.first if self.first is not None else event.time)

    def as_json(self, now: float) -> dict[str, Any]:
        last = self.last
        return {
            "host": self.hostname, "mac": self.mac, "state": self.state,
            "since": round(self.since, 3) if self.since else None,
            "for": round(now - self.since, 1) if self.since else None,
            "duration": round((self.since or 0) - self.first, 1) if self.first else None,
            "message": last.message if last else "", "client": last.client if last else "",
            "data": dict(last.data) if last else {},  # a failure's log tail, a boot's network
            "events": self.seq, "reached": dict(self.reached), "path": list(self.path),
            "version": self.version,
        }


def validate_fields(fields: Mapping[str, str]) -> dict[str, str]:
    """The fields a host sent, or InputError naming the first wrong one."""
    clean = {}
    for name, value in fields.items():
        if name not in FIELDS:
            raise InputError(f"unknown field {name!r}")
        if len(value) > FIELDS[name]:
            raise InputError(f"field {name!r} is longer than {FIELDS[name]} characters")
        if any(ord(c) < 32 and c not in "\n\t" for c in value) or "\x7f" in value:
            raise InputError(f"field {name!r} has control characters")
        clean[name] = value
    return clean


# ---------------------------------------------------------------------------------------------
# Reading and writing one host's log.


def events_dir(tree: Path) -> Path:
    return tree / EVENTS


def log_files(tree: Path, hostname: str) -> tuple[Path, Path]:
    current = events_dir(tree) / f"{hostname}.jsonl"
    return current.with_name(current.name + ".1"), current


def parse_line(raw: bytes) -> Event | None:
    try:
        record = json.loads(raw)
        data = record.get("data") or {}
        return Event(int(record["seq"]), float(record["time"]), str(record["state"]),
                     str(record.get("message", "")), str(record.get("client", "")),
                     {str(k): str(v) for k, v in data.items()})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def read_events(tree: Path, hostname: str) -> Iterator[Event]:
    """A host's events, oldest first (the rotated file, then the current one)."""
    for path in log_files(tree, hostname):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        for raw in data.splitlines():
            event = parse_line(raw)
            if event is not None and event.state in RANK:
                yield event


def append(tree: Path, hostname: str, event: Event) -> None:
    """Write one event line; the caller holds the tree's lock."""
    line = event.line()
    if len(line) > MAX_LINE:
        raise InputError(f"event of {len(line)} bytes is longer than {MAX_LINE}")
    older, current = log_files(tree, hostname)
    current.parent.mkdir(parents=True, exist_ok=True)
    try:
        if current.stat().st_size + len(line) > MAX_FILE:
            os.replace(current, older)
    except FileNotFoundError:
        pass
    fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):  # a full disk: no half line may stay behind as an event
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(f"{current}: short write (disk full?)")
    finally:
        os.close(fd)


def carry_over(old: Path, new: Path) -> None:
    """A rebuilt tree (not yet renamed into place) takes the old tree's events along."""
    source = events_dir(old)
    if source.is_dir():
        shutil.copytree(source, events_dir(new), dirs_exist_ok=True)


# ---------------------------------------------------------------------------------------------
# The fleet.


class Fleet:
    """Every host's status in memory, updated as events are recorded. Thread-safe."""

    def __init__(self, tree: Path, clock: Callable[[], float] = time.time) -> None:
        self.tree = tree
        self.clock = clock
        self._lock = threading.Lock()
        self.version = 0
        self.hosts: dict[str, HostStatus] = {}
        self._clients: dict[str, str] = {}
        self._clients_version = -1
        self.refresh()

    def refresh(self) -> None:
        """Take in hosts added to (or dropped from) the index by a rebuild."""
        index = pxestate.read_index(self.tree)
        with self._lock:
            known = set(self.hosts)
        fresh = {name: load_host(self.tree, name, host.mac)
                 for name, host in index.hosts.items() if name not in known}
        with self._lock:
            for name in known - set(index.hosts):
                del self.hosts[name]
            for name, status in fresh.items():
                self.version += 1
                self.hosts[name] = replace(status, version=self.version)

    def record(self, hostname: str, state: str, message: str = "", client: str = "",
               data: Mapping[str, str] | None = None) -> Event:
        """Append one event to the host's log and fold it into its status. InputError for a
        host that is not in the tree."""
        if hostname not in self.hosts:
            self.refresh()
        if hostname not in self.hosts:
            raise InputError(f"no host named {hostname!r} in this PXE tree")
        with pxestate.locked(self.tree), self._lock:
            status = self.hosts[hostname]
            event = Event(status.seq + 1, self.clock(), state, message, client, dict(data or {}))
            append(self.tree, hostname, event)
            self.version += 1
            self.hosts[hostname] = replace(status.apply(event), version=self.version)
        return event

    def host_at(self, client: str) -> str | None:
        """The host that last fetched its kickstart or started its installer from `client`
        (the installer's remote log names no host). One address per host: the map stays as
        small as the fleet."""
        with self._lock:
            return self._by_client().get(client)

    def _by_client(self) -> dict[str, str]:
        if self._clients_version != self.version:
            latest: dict[str, tuple[float, str]] = {}
            for status in self.hosts.values():
                when = status.last.time if status.last else 0.0
                if status.install_client and when >= latest.get(status.install_client,
                                                                 (-1.0, ""))[0]:
                    latest[status.install_client] = (when, status.hostname)
            self._clients = {client: name for client, (_, name) in latest.items()}
            self._clients_version = self.version
        return self._clients

    def snapshot(self, since: int = 0) -> dict[str, Any]:
        """The fleet as JSON-ready data: counts per state, overall progress, and the hosts
        that changed after version `since` (all of them for 0)."""
        now = self.clock()
        with self._lock:
            statuses = list(self.hosts.values())
            version = self.version
        return summary(statuses, now, version, since)


def load_host(tree: Path, hostname: str, mac: str) -> HostStatus:
    status = HostStatus(hostname, mac)
    for event in read_events(tree, hostname):
        status = status.apply(event)
    return status


def load_fleet(tree: Path) -> list[HostStatus]:
    """Every host's status, read from the files (`ksbuild status`; no server needed)."""
    index = pxestate.read_index(tree)
    return [load_host(tree, name, host.mac) for name, host in sorted(index.hosts.items())]


def counts(statuses: Iterable[HostStatus]) -> dict[str, int]:
    result = dict.fromkeys(STATES, 0)
    for status in statuses:
        result[status.state] += 1
    return result


def progress(statuses: list[HostStatus]) -> float:
    """0..1: how far the fleet is, each host weighted by the rank of its state."""
    if not statuses:
        return 1.0
    return sum(RANK[s.state] for s in statuses) / (FINAL_RANK * len(statuses))


def summary(statuses: list[HostStatus], now: float, version: int = 0,
            since: int = 0) -> dict[str, Any]:
    changed = [s for s in statuses if s.version > since] if since else statuses
    return {
        "version": version, "now": round(now, 3), "total": len(statuses),
        "counts": counts(statuses), "progress": round(progress(statuses), 4),
        "states": list(STATES), "labels": LABELS, "full": not since,
        "hosts": [s.as_json(now) for s in sorted(changed, key=lambda s: s.hostname)],
    }
