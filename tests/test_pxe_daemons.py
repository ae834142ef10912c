"""The tree's dnsmasq.conf and nginx.conf, run by the real daemons.

dnsmasq's TFTP port is fixed at 69 (it has no option for another), and DHCP needs an
interface. Each dnsmasq here therefore runs in a network namespace of its own, made by
`unshare --user --map-root-user --net` (no privileges needed): port 69 of that namespace's
loopback, and a veth pair that exists only inside it, with TEST-NET-1 addresses (RFC 5737).
Nothing in the namespace can reach any other network, so no packet leaves it. `--no-daemon`
keeps dnsmasq from switching user (impossible in such a namespace) and logs to stderr.

nginx runs on a free port of 127.0.0.1 with the generated config; only the listen address and
the log/pid paths are swapped for the test's.
"""

from __future__ import annotations

import contextlib
import http.client
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

from builder.pxe import bootlog, events
from builder.pxe import tree as pxe
from builder.run import run
from tests.conftest import REPO
from tests.pxe_support import (
    GUEST_SERVER,
    HOSTS,
    build,
    request_from,
    small_base_iso,
    write_site,
)

H1, MAC1, _ = HOSTS[0]
H2 = HOSTS[1][0]
NET_HOSTS = [{"hostname": name, "mac": mac,
              "bridge": {"slaves": ["eth0"], "address": f"192.0.2.{15 + n}/24",
                         "gateway": "192.0.2.1"}}
             for n, (name, mac, _address) in enumerate(HOSTS)]
UNKNOWN = "52:54:00:aa:bb:cc"


def in_namespace(script: str, timeout: float = 120,
                 own_sysfs: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a shell script as root of a new user + network namespace (only `lo`, down). In a
    session of its own, so that a timeout ends dnsmasq too, not only the shell. own_sysfs: in
    a mount namespace too, with a sysfs of its own (/sys/class/net shows the namespace's
    interfaces, not the machine's)."""
    mount = ["--mount"] if own_sysfs else []
    setup = "mount -t sysfs sysfs /sys\n" if own_sysfs else ""
    argv = ["unshare", "--user", "--map-root-user", "--net", *mount, "--", "sh", "-c",
            "set -e\nip link set lo up\n" + setup + script]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the script left running
        proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def dnsmasq_check(conf: Path) -> None:
    done = run(["dnsmasq", "--test", f"--conf-file={conf}"], check=False)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


# ---------------------------------------------------------------------------------------------
# dnsmasq


def test_dnsmasq_serves_each_hosts_entry_by_tftp(tmp_path: Path) -> None:
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    generated = (tmp_path / "pxe/dnsmasq.conf").read_text()
    assert "\nenable-tftp\n" in generated and "dhcp-range" not in generated  # TFTP only
    assert f"\ntftp-root={tmp_path / 'pxe/tftp'}\n" in generated
    assert "\ntftp-max=1000\n" in generated
    dnsmasq_check(tmp_path / "pxe/dnsmasq.conf")
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text(generated + "listen-address=127.0.0.1\nbind-interfaces\n")
    got = tmp_path / "got"
    got.mkdir()
    entry = f"pxelinux.cfg/01-{MAC1.replace(':', '-')}"
    done = in_namespace(f"""
dnsmasq --no-daemon --conf-file={conf} 2>{tmp_path}/dnsmasq.log &
server=$!
for i in $(seq 100); do curl -sf -o /dev/null tftp://127.0.0.1/boot.ipxe && break; sleep 0.1; done
curl -sf -o {got}/entry tftp://127.0.0.1/{entry}
curl -sf -o {got}/pxelinux.0 tftp://127.0.0.1/pxelinux.0
curl -sf -o {got}/grub tftp://127.0.0.1/grub.cfg-01-{MAC1.replace(':', '-')}
curl -sf -o {got}/grub-mac tftp://127.0.0.1/grub.cfg-mac-{MAC1}
curl -sf -o {got}/outside tftp://127.0.0.1/../hosts.json || echo "outside refused"
curl -sf -o {got}/unknown tftp://127.0.0.1/pxelinux.cfg/01-52-54-00-aa-bb-cc \
    || echo "unknown refused"
kill $server
wait $server || true
""")
    assert done.returncode == 0, done.stderr + (tmp_path / "dnsmasq.log").read_text()
    assert (got / "entry").read_bytes() == (tmp_path / "pxe/tftp" / entry).read_bytes()
    assert f"inst.ks={GUEST_SERVER}/ks/{H1}.cfg" in (got / "entry").read_text()
    assert (got / "pxelinux.0").read_bytes() == (tmp_path / "pxe/tftp/pxelinux.0").read_bytes()
    assert "linuxefi (http,10.0.2.100)/images/vmlinuz" in (got / "grub").read_text()
    # The same entry under the name tftp/grub.cfg loads by $net_default_mac (colons).
    assert (got / "grub-mac").read_bytes() == (got / "grub").read_bytes()
    assert "outside refused" in done.stdout and "unknown refused" in done.stdout
    assert not (got / "outside").exists()
    log = (tmp_path / "dnsmasq.log").read_text()
    assert "sent " in log
    # `ksbuild serve --tftp-log` reads these lines: one `boot` event for the host whose
    # install entries were fetched (three names within a minute count once).
    fleet = events.Fleet(tmp_path / "pxe")
    assert bootlog.take_lines(fleet, log.splitlines()) == [H1]
    assert [e.state for e in events.read_events(tmp_path / "pxe", H1)] == ["boot"]


DHCP_CLIENT = """
ip link set ks-cli down; ip link set ks-cli address {mac}; ip link set ks-cli up
busybox udhcpc -i ks-cli -n -q -f -t {tries} -T {pause} -s {script} {options} \
    || echo "no lease: {mac} {options}"
"""


def dhcp_run(tmp_path: Path, conf: Path, clients: list[tuple[str, str]],
             pause: int = 1) -> tuple[str, str]:
    """dnsmasq (the generated config, unchanged) on one end of a veth pair, busybox udhcpc on
    the other with each (MAC, udhcpc options); returns (the leases udhcpc got, its output).
    `pause`: seconds udhcpc waits for an offer (dnsmasq pings a pool address, ~3 s, first)."""
    leases = tmp_path / "leases.txt"
    leases.write_text("")
    script = tmp_path / "lease.sh"
    script.write_text('#!/bin/sh\n[ "$1" = bound ] && echo "$ip $boot_file $router $dns"'
                      f' >> {leases}\nexit 0\n')
    script.chmod(0o755)
    steps = "".join(DHCP_CLIENT.format(mac=mac, options=options, script=script, pause=pause,
                                       tries=3 if pause < 3 else 2)
                    for mac, options in clients)
    done = in_namespace(f"""
ip link add ks-srv type veth peer name ks-cli
ip addr add 192.0.2.1/24 dev ks-srv
ip link set ks-srv up
dnsmasq --no-daemon --conf-file={conf} --dhcp-leasefile={tmp_path}/dnsmasq.leases \
    2>{tmp_path}/dnsmasq.log &
server=$!
sleep 1
{steps}
kill $server
wait $server || true
""")
    log = (tmp_path / "dnsmasq.log").read_text()
    assert done.returncode == 0, done.stderr + log
    return leases.read_text(), done.stdout


BIOS, UEFI, IPXE = "-x 0x5d:0000", "-x 0x5d:0007", "-x 0x5d:0007 -x 0x4d:69505845"


def test_dnsmasq_dhcp_gives_fixed_leases_and_the_boot_file_by_client(tmp_path: Path) -> None:
    dhcp = {"subnet": "192.0.2.0/24", "interface": "ks-srv", "router": "192.0.2.1",
            "dns": ["192.0.2.1"]}
    build(write_site(tmp_path, {"server": "http://192.0.2.1", "dhcp": dhcp}, hosts=NET_HOSTS),
          tmp_path / "pxe")
    conf = tmp_path / "pxe/dnsmasq.conf"
    dnsmasq_check(conf)
    assert f"\ndhcp-host={MAC1},192.0.2.15,kvm01\n" in conf.read_text()
    leases, out = dhcp_run(tmp_path, conf, [(MAC1, BIOS), (MAC1, UEFI), (MAC1, IPXE),
                                            (HOSTS[1][1], "-x 0x5d:0009"), (UNKNOWN, BIOS)])
    assert leases.splitlines() == [
        "192.0.2.15 pxelinux.0 192.0.2.1 192.0.2.1",
        "192.0.2.15 BOOTX64.EFI 192.0.2.1 192.0.2.1",
        "192.0.2.15 boot.ipxe 192.0.2.1 192.0.2.1",
        "192.0.2.16 BOOTX64.EFI 192.0.2.1 192.0.2.1",
    ]
    assert f"no lease: {UNKNOWN}" in out  # static leases only: strangers get nothing


def test_dnsmasq_dhcp_pool_serves_other_machines(tmp_path: Path) -> None:
    dhcp = {"subnet": "192.0.2.0/24", "interface": "ks-srv",
            "range": {"start": "192.0.2.100", "end": "192.0.2.110"}, "lease_time": "1h"}
    hosts = [dict(NET_HOSTS[0]), {"hostname": "nofixed.example.com", "mac": HOSTS[1][1]}]
    build(write_site(tmp_path, {"server": "http://192.0.2.1", "dhcp": dhcp}, hosts=hosts),
          tmp_path / "pxe")
    conf = tmp_path / "pxe/dnsmasq.conf"
    assert "\ndhcp-range=192.0.2.100,192.0.2.110,255.255.255.0,1h\n" in conf.read_text()
    assert f"\ndhcp-host={HOSTS[1][1]},nofixed\n" in conf.read_text()
    leases, _out = dhcp_run(tmp_path, conf, [(MAC1, BIOS), (UNKNOWN, UEFI),
                                             (HOSTS[1][1], BIOS)], pause=6)
    lines = leases.splitlines()
    assert lines[0].startswith("192.0.2.15 pxelinux.0")
    for line, boot_file in zip(lines[1:], ("BOOTX64.EFI", "pxelinux.0")):
        address, got = line.split()[:2]
        assert 100 <= int(address.rsplit(".", 1)[1]) <= 110 and got == boot_file
    assert len(lines) == 3


def test_dnsmasq_tftp_only_config_parses(tmp_path: Path) -> None:
    """Without a `dhcp` key (the network's DHCP server points clients here; proxy mode is
    refused, see tests/test_pxe.py) dnsmasq serves TFTP only."""
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    conf = tmp_path / "pxe/dnsmasq.conf"
    text = conf.read_text()
    assert "\nenable-tftp\n" in text
    assert "dhcp-range" not in text and "dhcp-host" not in text and "pxe-service" not in text
    dnsmasq_check(conf)
    # A broken line is caught: the check can fail.
    conf.write_text(text + "dhcp-range=nonsense\n")
    assert run(["dnsmasq", "--test", f"--conf-file={conf}"], check=False).returncode != 0


# ---------------------------------------------------------------------------------------------
# nginx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_nginx(tree: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """nginx with the tree's generated config, only its listen line and log/pid paths
    swapped for a free loopback port and the test's folder; yields (port, log folder)."""
    generated = (tree / "nginx.conf").read_text()
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(re.sub(r"\n        listen [^;]+;", f"\n        listen 127.0.0.1:{port};",
                           generated)
                    .replace(pxe.NGINX_LOG_DIR, str(logs)).replace(pxe.NGINX_PID,
                                                                   str(logs / "nginx.pid"))
                    .replace(pxe.SERVE_BACKEND, f"127.0.0.1:{free_port()}"))
    main = "daemon off;" + (" user root root;" if os.geteuid() == 0 else "")
    run(["nginx", "-t", "-p", tmp_path, "-c", conf, "-e", "stderr", "-g", main])
    proc = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr",
                             "-g", main], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield port, logs
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture()
def nginx(tmp_path: Path) -> Iterator[tuple[Path, int, Path]]:
    build(write_site(tmp_path, {"server": GUEST_SERVER}), tmp_path / "pxe")
    assert "\n        listen 10.0.2.100:80;\n" in (tmp_path / "pxe/nginx.conf").read_text()
    with running_nginx(tmp_path / "pxe", tmp_path) as (port, logs):
        yield tmp_path / "pxe", port, logs


def get(port: int, method: str, path: str) -> tuple[int, bytes, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.endheaders(b"" if method == "POST" else None)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type") or ""
    finally:
        connection.close()


def test_nginx_serves_the_kickstarts_and_records_done(nginx: tuple[Path, int, Path]) -> None:
    tree, port, logs = nginx
    status, body, kind = get(port, "GET", f"/ks/{H1}.cfg")
    assert (status, body) == (200, (tree / f"http/ks/{H1}.cfg").read_bytes())
    assert kind.startswith("text/plain")
    for path in ("/hosts.json", "/../hosts.json", "/ks/", "/ks/nobody.cfg", "/%2e%2e/hosts.json"):
        status, body, _kind = get(port, "GET", path)
        assert status in (400, 403, 404) and b"install" not in body, path
    assert get(port, "POST", f"/done/{H1}")[0] == 200
    assert get(port, "POST", "/done/../../etc")[0] in (400, 404)
    log = logs / "ksbuild-done.log"
    deadline = time.monotonic() + 10
    while not log.read_text().strip():  # nginx writes the line after answering
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert re.fullmatch(rf"\S+ 127\.0\.0\.1 {re.escape(H1)}\n", log.read_text())
    # The operator's command (or cron) applies what nginx recorded.
    assert pxe.apply_done_log(tree, log) == [f"{H1}: boots from its disk"]
    assert "localboot 0" in (tree / f"tftp/pxelinux.cfg/01-{MAC1.replace(':', '-')}").read_text()


def test_nginx_serves_ranges_and_the_install_trees_dot_files(
        nginx: tuple[Path, int, Path]) -> None:
    tree, port, _logs = nginx
    initrd = (tree / "http/images/initrd.img").read_bytes()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/images/initrd.img", headers={"Range": "bytes=100-"})
        answer = connection.getresponse()
        assert (answer.status, answer.read()) == (206, initrd[100:])
        assert answer.headers["Content-Range"] == f"bytes 100-{len(initrd) - 1}/{len(initrd)}"
    finally:
        connection.close()
    folder = tree / "http/centos/7.9.2009/os/x86_64"
    folder.mkdir(parents=True)
    (folder / ".treeinfo").write_text("[general]\n")
    assert get(port, "GET", "/centos/7.9.2009/os/x86_64/.treeinfo")[:2] == (200, b"[general]\n")


def test_nginx_proxies_kickstarts_events_done_and_status_to_serve(
        nginx: tuple[Path, int, Path]) -> None:
    tree, port, logs = nginx
    conf = (logs.parent / "nginx.conf").read_text()
    backends = set(re.findall(r"proxy_pass http://127\.0\.0\.1:([0-9]+);", conf))
    assert len(backends) == 1, backends
    backend = int(backends.pop())
    kickstart = (tree / f"http/ks/{H1}.cfg").read_bytes()
    host = "127.0.0.2"
    # `ksbuild serve` not running: kickstarts still come from the tree, events cannot land.
    assert request_from(host, port, "GET", f"/ks/{H1}.cfg") == (200, kickstart)
    assert request_from(host, port, "POST", f"/events/{H1}/started", b"")[0] == 502
    serve = subprocess.Popen(
        [sys.executable, "-m", "builder", "serve", str(tree), "--listen",
         f"127.0.0.1:{backend}"], cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert serve.stderr is not None and "serving" in serve.stderr.readline()
        mac = {"X-RHN-Provisioning-MAC-0": f"eth0 {MAC1}"}
        assert request_from(host, port, "GET", "/ks", headers=mac) == (200, kickstart)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert request_from(host, port, "POST", f"/events/{H1}/started",
                            b"message=installer+started", form)[0] == 200
        assert request_from(host, port, "POST", "/events/nobody.example.com/started", b"",
                            form)[0] == 404
        assert request_from(host, port, "POST", f"/events/{H1}/started",
                            b"log=" + b"x" * 9000, form)[0] == 413
        assert request_from(host, port, "POST", f"/done/{H1}", b"") == (
            200, f"{H1} now boots from its disk\n".encode())
        code, page = request_from(host, port, "GET", "/status")
        assert code == 200 and b"Fleet install status" in page
        code, data = request_from(host, port, "GET", "/status.json")
        status = {h["host"]: h for h in json.loads(data)["hosts"]}[H1]
        assert status["path"] == ["kickstart", "started", "installed"]
        # serve saw nginx (127.0.0.1) and believed the host's address nginx passed on.
        assert status["client"] == host
        assert {e["client"] for e in map(json.loads, (tree / f"state/events/{H1}.jsonl")
                                         .read_text().splitlines())} == {host}
        # The done call went to serve: nothing for the done log to apply later.
        assert not (logs / "ksbuild-done.log").exists() or \
            not (logs / "ksbuild-done.log").read_text().strip()
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=60)
        if serve.stderr:
            serve.stderr.close()


# ---------------------------------------------------------------------------------------------
# Awkward but legal paths and servers (issue 11 item 3): the generated configs pass the
# daemons' own checks, and serve the right folder.

AWKWARD = 'a b,c"d#e \\ ü'  # space, comma, quote, hash, backslash, non-ASCII


def nginx_test(conf_text: str, tmp_path: Path,
               address: str = "") -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a generated config with only its log and pid paths moved. nginx -t binds
    the listen address, so it runs in a network namespace of its own where `address` (a
    TEST-NET or documentation address) is put on the loopback."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    conf = tmp_path / "nginx-test.conf"
    conf.write_text(conf_text.replace(pxe.NGINX_LOG_DIR, str(logs))
                    .replace(pxe.NGINX_PID, str(logs / "nginx.pid")))
    add = f"ip addr add {address} dev lo nodad\n" if ":" in address else \
        f"ip addr add {address}/32 dev lo\n" if address else ""
    return in_namespace(f"{add}nginx -t -p {tmp_path} -c {conf} -e stderr "
                        "-g 'daemon off; user root root;'", timeout=60)


@pytest.mark.parametrize("server, listen, address", [
    ("http://[::1]:8080", "[::1]:8080", ""),
    ("http://[2001:db8::5]", "[2001:db8::5]:80", "2001:db8::5"),
    ("http://192.0.2.1:8080", "192.0.2.1:8080", "192.0.2.1"),
    ("http://boot.example.com", "80", ""),
])
def test_configs_for_awkward_paths_and_servers_pass_nginx_t_and_dnsmasq_test(
        tmp_path: Path, server: str, listen: str, address: str) -> None:
    out = tmp_path / AWKWARD / "pxe"
    out.parent.mkdir()
    build(write_site(tmp_path, {"server": server}), out)
    nginx_conf = (out / "nginx.conf").read_text()
    assert f"\n        listen {listen};\n" in nginx_conf
    checked = nginx_test(nginx_conf, tmp_path, address)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    dnsmasq_check(out / "dnsmasq.conf")
    # The checks can fail: the same config unquoted is refused.
    root = f"{out}/http"
    broken = nginx_conf.replace(pxe.config_quote(root), root)
    assert broken != nginx_conf and nginx_test(broken, tmp_path, address).returncode != 0


def test_awkward_paths_serve_the_tree_over_tftp_and_http(tmp_path: Path) -> None:
    """dnsmasq's tftp-root and nginx's root, quoted, name the tree itself: files come back."""
    out = tmp_path / AWKWARD / "pxe"
    out.parent.mkdir()
    build(write_site(tmp_path, {"server": GUEST_SERVER}), out)
    conf = tmp_path / "dnsmasq.conf"
    conf.write_text((out / "dnsmasq.conf").read_text() + "listen-address=127.0.0.1\n"
                    "bind-interfaces\n")
    got = tmp_path / "got"
    done = in_namespace(f"""
dnsmasq --no-daemon --conf-file={conf} 2>{tmp_path}/dnsmasq.log &
server=$!
for i in $(seq 100); do curl -sf -o {got} tftp://127.0.0.1/boot.ipxe && break; sleep 0.1; done
kill $server
wait $server || true
""")
    assert done.returncode == 0, done.stderr + (tmp_path / "dnsmasq.log").read_text()
    assert got.read_bytes() == (out / "tftp/boot.ipxe").read_bytes()
    with running_nginx(out, tmp_path) as (port, _logs):
        status, body, _kind = get(port, "GET", f"/ks/{H1}.cfg")
    assert (status, body) == (200, (out / f"http/ks/{H1}.cfg").read_bytes())


@pytest.mark.parametrize("folder", ["new\nline", "dollar$sign"])
def test_paths_the_configs_cannot_carry_are_one_line_errors(tmp_path: Path,
                                                             folder: str) -> None:
    site_path = write_site(tmp_path, {"server": GUEST_SERVER})
    done = subprocess.run([sys.executable, "-m", "builder", "pxe", str(site_path), "--base",
                           str(small_base_iso()), "-o", str(tmp_path / folder / "pxe")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("ksbuild: -o: "), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / folder / "pxe").exists()


# ---------------------------------------------------------------------------------------------
# nginx and `ksbuild serve` agree (issue 11 item 16).


def test_nginx_serves_no_symlink_no_dot_file_and_takes_done_only_by_post(
        nginx: tuple[Path, int, Path]) -> None:
    tree, port, logs = nginx
    http = tree / "http"
    (http / "passwd.cfg").symlink_to("/etc/passwd")
    (http / "ks" / "again.cfg").symlink_to(http / "ks" / f"{H1}.cfg")
    (http / "ks" / ".hidden.cfg").write_text("secret\n")
    (http / ".git").mkdir()
    (http / ".git" / "config").write_text("secret\n")
    (http / "centos" / "os").mkdir(parents=True)
    (http / "centos" / "os" / ".treeinfo").write_text("[general]\n")
    (http / "centos" / "os" / ".discinfo").write_text("1\n")
    for path in ("/passwd.cfg", "/ks/again.cfg", "/ks/.hidden.cfg", "/.git/config",
                 "/ks/%2ehidden.cfg"):
        status, body, _kind = get(port, "GET", path)
        assert status == 404 and b"secret" not in body and b"root:" not in body, path
    assert get(port, "GET", "/centos/os/.treeinfo")[:2] == (200, b"[general]\n")
    assert get(port, "GET", "/centos/os/.discinfo")[0] == 200
    assert get(port, "GET", f"/done/{H1}")[0] == 405
    assert get(port, "HEAD", f"/done/{H1}")[0] == 405
    assert get(port, "POST", f"/done/{H2}")[0] == 200
    log = logs / "ksbuild-done.log"
    deadline = time.monotonic() + 10
    while not log.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    assert H1 not in log.read_text() and H2 in log.read_text()
