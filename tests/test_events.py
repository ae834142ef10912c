"""Install events (builder/pxe/events.py, the /events, /status endpoints of `ksbuild serve`,
`ksbuild status`): recorded in order, never lost or interleaved by concurrent writers, kept
over a restart and a rebuild, bounded per host, and refused when malformed. Loopback only."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.pxe import bootlog, events
from builder.pxe import state as pxestate
from tests.conftest import REPO
from tests.pxe_support import GUEST_SERVER, HOSTS, EventServer, build, write_site

H1, MAC1, _ = HOSTS[0]
H2, MAC2, _ = HOSTS[1]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    return tmp_path / "pxe"


@pytest.fixture()
def running(tree: Path) -> Iterator[EventServer]:
    server = EventServer(tree)
    try:
        yield server
    finally:
        server.stop()


def hosts_of(status: dict[str, object]) -> dict[str, dict[str, object]]:
    hosts = status["hosts"]
    assert isinstance(hosts, list)
    return {h["host"]: h for h in hosts}


def ksbuild_status(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", "status", str(tree), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_an_install_is_recorded_in_order_and_status_shows_it(running: EventServer,
                                                            tree: Path) -> None:
    mac_header = {"X-RHN-Provisioning-MAC-0": f"eth0 {MAC1}"}
    assert running.request("GET", "/ks", headers=mac_header)[0] == 200
    assert running.event(H1, "started", message="installer started")[0] == 200
    assert running.event(H1, "packages", message="Installing kernel (10/100)",
                         progress="10/100")[0] == 200
    assert running.request("POST", f"/done/{H1}", b"")[0] == 200
    assert running.event(H1, "booted", message="network up as configured",
                         address="br0 10.0.2.15/24", route="default via 10.0.2.2 dev br0",
                         bridge="br0 up slaves=eth0 stp=0; ")[0] == 200
    logged = [json.loads(line) for line in
              (tree / f"state/events/{H1}.jsonl").read_text().splitlines()]
    assert [e["state"] for e in logged] == ["kickstart", "started", "packages", "installed",
                                            "booted"]
    assert [e["seq"] for e in logged] == [1, 2, 3, 4, 5]
    assert logged[0]["data"] == {"macs": f"eth0 {MAC1}"}
    assert logged[-1]["data"]["route"] == "default via 10.0.2.2 dev br0"

    done = ksbuild_status(tree, "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["counts"]["booted"] == 1 and status["counts"]["pending"] == 1
    assert status["total"] == 2
    one = hosts_of(status)[H1]
    assert one["path"] == ["kickstart", "started", "packages", "installed", "booted"]
    assert one["mac"] == MAC1 and one["message"] == "network up as configured"
    assert one["data"]["bridge"] == "br0 up slaves=eth0 stp=0; "  # the last event's data
    assert hosts_of(status)[H2]["state"] == "pending"
    table = ksbuild_status(tree)
    assert table.returncode == 0, table.stderr
    assert H1 in table.stdout and "booted" in table.stdout
    assert "booted 1" in table.stdout and "pending 1" in table.stdout


def test_status_json_sends_only_what_changed(running: EventServer) -> None:
    first = running.status()
    assert set(hosts_of(first)) == {H1, H2} and first["full"] is True
    version = first["version"]
    assert isinstance(version, int)
    assert hosts_of(running.status(version)) == {}
    running.event(H2, "started")
    later = running.status(version)
    assert set(hosts_of(later)) == {H2}
    counts = later["counts"]
    assert isinstance(counts, dict) and counts["started"] == 1 and counts["pending"] == 1


@pytest.mark.parametrize(("path", "body", "expected"), [
    ("/events/nobody.example.com/started", b"", 404),
    (f"/events/{H1}/installed", b"", 404),  # only the server records that (POST /done)
    (f"/events/{H1}/rebooting", b"", 404),
    (f"/events/{H1}/started", b"bogus=1", 400),
    (f"/events/{H1}/started", b"message=a&message=b", 400),
    (f"/events/{H1}/started", b"message=" + b"x" * 201, 400),
    (f"/events/{H1}/started", b"message=%00", 400),
    (f"/events/{H1}/started", b"message=%ff", 400),
    (f"/events/{H1}/started", b"no-equals-sign", 400),
    (f"/events/{H1}/started", b"log=" + b"x" * 9000, 413),
])
def test_malformed_or_unknown_events_are_refused(running: EventServer, tree: Path, path: str,
                                                 body: bytes, expected: int) -> None:
    assert running.request("POST", path, body)[0] == expected
    assert not (tree / f"state/events/{H1}.jsonl").exists()


def test_events_are_post_only_and_the_page_is_read_only(running: EventServer) -> None:
    assert running.request("GET", f"/events/{H1}/started")[0] == 405
    assert running.request("POST", "/status", b"")[0] == 404
    code, page = running.request("GET", "/status")
    assert code == 200 and b"<title>ksbuild: fleet install status</title>" in page
    # Nothing from elsewhere: no script, style or font is loaded from another address.
    assert b"http://" not in page and b"https://" not in page and b"src=" not in page


def test_concurrent_events_are_never_lost_or_interleaved(running: EventServer, tree: Path) -> None:
    threads, each = 16, 25
    errors: list[str] = []

    def sender(number: int) -> None:
        for n in range(each):
            host = H1 if n % 2 else H2
            code, body = running.event(host, "packages", message=f"t{number} n{n} " + "x" * 150,
                                       log="y" * 1000)
            if code != 200:
                errors.append(body.decode())

    workers = [threading.Thread(target=sender, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    for host in (H1, H2):
        seen = list(events.read_events(tree, host))
        sent = sum(1 for n in range(each) if (host == H1) == bool(n % 2)) * threads
        # Rotation keeps the newest MAX_FILE bytes at least; every line kept is whole, and
        # the sequence numbers are gap-free from the oldest kept to the last.
        raw = b"".join(p.read_bytes() for p in events.log_files(tree, host) if p.exists())
        assert all(events.parse_line(line) for line in raw.splitlines())
        seqs = [e.seq for e in seen]
        assert seqs == list(range(seqs[0], sent + 1)), (host, seqs[:5], sent)
        assert hosts_of(running.status())[host]["events"] == sent


def test_a_flood_of_events_is_bounded_per_host(tree: Path) -> None:
    fleet = events.Fleet(tree)
    for n in range(400):
        fleet.record(H1, "packages", f"flood {n}", "10.0.2.15", {"log": "z" * 4000})
    sizes = [p.stat().st_size for p in events.log_files(tree, H1)]
    assert all(size <= events.MAX_FILE for size in sizes), sizes
    assert list(events.read_events(tree, H1))[-1].message == "flood 399"
    assert fleet.snapshot()["counts"]["packages"] == 1


def test_events_survive_a_restart_and_a_torn_last_line(tree: Path) -> None:
    fleet = events.Fleet(tree)
    fleet.record(H1, "kickstart", "kickstart fetched")
    fleet.record(H1, "started", "installer started")
    with (tree / f"state/events/{H1}.jsonl").open("ab") as log:
        log.write(b'{"seq": 3, "time": 1, "sta')  # a crash in the middle of a write
    again = events.Fleet(tree)  # a new `ksbuild serve`
    status = again.hosts[H1]
    assert (status.state, status.seq, status.path) == ("started", 2, ("kickstart", "started"))


def test_a_rebuild_keeps_the_events(tree: Path, tmp_path: Path) -> None:
    events.Fleet(tree).record(H1, "started", "installer started")
    build(tmp_path / "site.yaml", tree)
    assert [e.state for e in events.read_events(tree, H1)] == ["started"]


def test_forwarded_client_is_believed_only_from_loopback(running: EventServer, tree: Path) -> None:
    # Behind nginx (a loopback peer) the host's own address is in X-Real-IP.
    running.request("POST", f"/events/{H1}/started", b"message=via+nginx",
                    {"X-Real-IP": "10.0.2.15"})
    [event] = events.read_events(tree, H1)
    assert event.client == "10.0.2.15"


def test_status_rejects_a_bad_watch_interval(tree: Path) -> None:
    done = ksbuild_status(tree, "--watch", "0")
    assert done.returncode == 2 and "--watch 0" in done.stderr and "Traceback" not in done.stderr


def test_the_tftp_log_is_followed_for_install_entries_only(tree: Path) -> None:
    log = tree.parent / "dnsmasq.log"
    log.write_text(f"dnsmasq-tftp[7]: sent /srv/pxe/tftp/pxelinux.cfg/01-{MAC2.replace(':', '-')}"
                   " to 10.0.2.16\n")  # before serve started: not news
    fleet = events.Fleet(tree)
    follower = bootlog.Follower(log, fleet, lambda text: None)
    with log.open("a") as handle:
        handle.write(f"dnsmasq-tftp[7]: sent /srv/pxe/tftp/pxelinux.cfg/01-{MAC1.replace(':', '-')}"
                     " to 10.0.2.15\n"
                     "dnsmasq-tftp[7]: sent /srv/pxe/tftp/pxelinux.0 to 10.0.2.15\n"
                     "dnsmasq-tftp[7]: sent /srv/pxe/tftp/pxelinux.cfg/01-52-54-00-aa-bb-cc"
                     " to 10.0.2.99\n"
                     "dnsmasq-tftp[7]: sent /srv/pxe/tftp/ipxe/")  # still being written
    follower.poll()
    assert [(e.state, e.client) for e in events.read_events(tree, H1)] == [("boot", "10.0.2.15")]
    assert list(events.read_events(tree, H2)) == []
    with log.open("a") as handle:
        handle.write(f"{MAC2.replace(':', '-')}.ipxe to 10.0.2.16\n")
    follower.poll()
    assert [e.state for e in events.read_events(tree, H2)] == ["boot"]
    # An installed host boots its disk through an entry of the same name: not recorded.
    pxestate.set_installed(tree, H1, True)
    log.write_text(f"dnsmasq-tftp[8]: sent /x/grub.cfg-01-{MAC1.replace(':', '-')} to 1.2.3.4\n")
    follower.poll()  # a new (shorter) file: read from its start
    assert [e.state for e in events.read_events(tree, H1)] == ["boot"]
