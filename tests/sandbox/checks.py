"""What a ksbuild host's %post must leave behind, checked against the site model (never
against the kickstart text: the checks must not share the renderer's mistakes).

Every check returns a list of problems, empty when all is well, so a test can show them all.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
import uuid
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from builder.network import Device, Network
from builder.overlay import Overlay
from builder.site import Host
from tests.sandbox import Sandbox
from tests.sandbox.root import FILES, IFCFG_LO
from tests.sandbox.tree import Tree, snapshot

SCRIPTS = "etc/sysconfig/network-scripts"
SYSTEMD = "etc/systemd/system"
FIREWALLD_UNIT = "/usr/lib/systemd/system/firewalld.service"
# systemctl verbs that need a running systemd: in the installer's chroot the real systemctl
# only prints "Running in chroot, ignoring request." and the script thinks it worked.
RUNTIME_VERBS = {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart",
                 "daemon-reload", "is-active", "status"}
ASSIGNMENT = re.compile(r"[A-Z][A-Z0-9_]*=\S*")
# Source an ifcfg file as initscripts do and print its variables (env -i: nothing else).
SOURCE_IFCFG = """set -a
. "$1" 2>/.sandbox/source-errors || exit 3
set +a
if [ -s /.sandbox/source-errors ]; then exit 4; fi
exec /usr/bin/env -0
"""


# What a ksbuild %post may change besides the overlay's files (and the scripts' logs).
CHANGES_ALLOWED = ("etc/hostname", "etc/selinux/config", SCRIPTS + "/", SYSTEMD + "/",
                   "etc/firewalld/zones/", "root/.ssh", "root/.ssh/authorized_keys",
                   "usr/local/sbin/ksbuild-firstboot", "etc/yum.repos.d/ksbuild.repo",
                   "etc/yum.repos.d/CentOS-Base.repo", "etc/yum.repos.d/CentOS-fasttrack.repo")
DEAD_MIRRORS = ("mirrorlist.centos.org", "mirror.centos.org")


def check_host(box: Sandbox, host: Host, overlay: Overlay) -> list[str]:
    return [*check_hostname(box.target, host), *check_selinux(box.target, host),
            *check_network(box, host), *check_firewall(box, host),
            *check_ssh_keys(box, host, overlay), *check_repos(box.target, host),
            *check_overlay(box.target, overlay), *check_nothing_else(box, overlay)]


def check_repos(target: Path, host: Host) -> list[str]:
    """/etc/yum.repos.d/ holds the site's repos (ksbuild.repo) and nothing that names the dead
    CentOS mirrors; the stock files that do not name them are left as they were."""
    folder = target / "etc/yum.repos.d"
    problems = [f"{path.relative_to(target)} still names {mirror}"
                for path in sorted(folder.glob("*.repo")) for mirror in DEAD_MIRRORS
                if mirror in path.read_text(encoding="utf-8")]
    media = folder / "CentOS-Media.repo"
    if media.read_text(encoding="utf-8") != FILES["etc/yum.repos.d/CentOS-Media.repo"]:
        problems.append("CentOS-Media.repo (no dead mirror in it) was changed")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string((folder / "ksbuild.repo").read_text(encoding="utf-8"))
    written = {name: dict(parser[name]) for name in parser.sections()}
    expected = {repo.name: {"name": repo.name,
                            "baseurl": host.source if repo.baseurl == "source" else repo.baseurl,
                            "enabled": str(int(repo.enabled)), "gpgcheck": str(int(repo.gpgcheck)),
                            **({"gpgkey": repo.gpgkey} if repo.gpgkey else {})}
                for repo in host.repos}
    if written != expected:
        problems.append(f"ksbuild.repo holds {written}, expected the site's repos {expected}")
    if (folder / "ksbuild.repo").stat().st_mode & 0o777 != 0o644:
        problems.append("ksbuild.repo is not mode 0644")
    return problems


def check_ssh_keys(box: Sandbox, host: Host, overlay: Overlay) -> list[str]:
    """root_ssh_keys end up as anaconda's `sshkey` would leave them: exactly those keys, one a
    line, in /root/.ssh/authorized_keys 0600 under /root/.ssh 0700, relabelled for sshd."""
    folder, keys = box.target / "root/.ssh", box.target / "root/.ssh/authorized_keys"
    if not host.root_ssh_keys:
        from_overlay = any(item.path.startswith("/root/.ssh") for item in overlay.files)
        return [] if from_overlay or not folder.exists() else [
            "/root/.ssh exists though the site gives no root_ssh_keys"]
    problems = []
    if folder.is_symlink() or not folder.is_dir() or folder.stat().st_mode & 0o7777 != 0o700:
        problems.append("/root/.ssh is not a folder with mode 0700")
    if keys.is_symlink() or not keys.is_file() or keys.stat().st_mode & 0o7777 != 0o600:
        return [*problems, "/root/.ssh/authorized_keys is not a file with mode 0600"]
    written = keys.read_text(encoding="utf-8")
    if written != "".join(key + "\n" for key in host.root_ssh_keys):
        problems.append(f"/root/.ssh/authorized_keys holds {written!r}, expected the site's "
                        f"keys {list(host.root_ssh_keys)}")
    if ["restorecon", "-R", "/root/.ssh"] not in box.calls():
        problems.append("/root/.ssh was not relabelled (restorecon -R /root/.ssh)")
    return problems


def check_hostname(target: Path, host: Host) -> list[str]:
    text = (target / "etc/hostname").read_text(encoding="utf-8")
    if text != host.hostname + "\n":
        return [f"/etc/hostname holds {text!r}, expected {host.hostname!r} and a newline"]
    return []


def check_selinux(target: Path, host: Host) -> list[str]:
    config = target / "etc/selinux/config"
    problems = []
    if not config.is_file() or config.is_symlink():
        return ["/etc/selinux/config is not a regular file any more"]
    lines = config.read_text(encoding="utf-8").splitlines()
    modes = [line for line in lines if line.startswith("SELINUX=")]
    if modes != [f"SELINUX={host.selinux}"]:
        problems.append(f"/etc/selinux/config: SELINUX= lines {modes}, expected "
                        f"['SELINUX={host.selinux}']")
    shipped = [line for line in FILES["etc/selinux/config"].splitlines()
               if not line.startswith("SELINUX=")]
    kept = [line for line in lines if not line.startswith("SELINUX=")]
    if kept != shipped:
        problems.append("/etc/selinux/config: lines other than SELINUX= were changed: "
                        f"{sorted(set(kept) ^ set(shipped))}")
    link = target / "etc/sysconfig/selinux"
    if not link.is_symlink() or str(link.readlink()) != "../selinux/config":
        problems.append("/etc/sysconfig/selinux is no longer a symlink to ../selinux/config")
    return problems


# --- network ---------------------------------------------------------------------------------


def read_ifcfg(box: Sandbox, path: Path) -> tuple[dict[str, str], list[str]]:
    """An ifcfg file's variables as initscripts get them: sourced by bash (inside the
    sandbox, since the file came from a script under test). Also every line must be a plain
    KEY=value assignment or a comment: anything else is a command that ifup would run."""
    name = "/" + path.relative_to(box.target).as_posix()
    problems = []
    keys: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if not ASSIGNMENT.fullmatch(_unquoted(line)):
            problems.append(f"{name}:{number}: not a KEY=value line: {line!r}")
        key = line.split("=", 1)[0]
        if key in keys:
            problems.append(f"{name}:{number}: {key} is set twice (the last one wins)")
        keys.add(key)
    status, output = box.run(["/usr/bin/env", "-i", "/bin/bash", "--norc", "--noprofile", "-c",
                              SOURCE_IFCFG, "read", name])
    if status != 0:
        errors = (box.target / ".sandbox/source-errors").read_text(encoding="utf-8")
        problems.append(f"{name}: sourcing it with bash fails: {errors.strip()!r}")
    pairs = [item.split("=", 1) for item in output.split("\0") if "=" in item]
    values = {key: value for key, value in pairs if key not in ("PWD", "SHLVL", "_")}
    return values, problems


def _unquoted(line: str) -> str:
    """KEY="a b" -> KEY=a_b, so quoted values with spaces still match ASSIGNMENT."""
    key, _, value = line.partition("=")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1].replace(" ", "_") or "''"
    return f"{key}={value}"


def check_network(box: Sandbox, host: Host) -> list[str]:
    """Every ifcfg and route file against the host's network model: one file per device and
    nothing else (anaconda's files for the same devices are gone), the keys initscripts
    reads for each kind, each file's own UUID, exactly the routes and the one default route
    the site says."""
    network = host.network
    folder = box.target / SCRIPTS
    files = {path.name: path for path in folder.iterdir()
             if path.name.startswith(("ifcfg-", "route-"))}
    expected = {"ifcfg-lo", *(f"ifcfg-{d.name}" for d in network.devices),
                *(f"route-{r.device}" for r in network.routes)}
    problems = [f"{SCRIPTS}/{name}: missing" for name in sorted(expected - set(files))]
    problems += [f"{SCRIPTS}/{name}: unexpected file (left over from anaconda?)"
                 for name in sorted(set(files) - expected)
                 if not _foreign_nic_left_alone(box, host, files[name])]
    if "ifcfg-lo" in files and files["ifcfg-lo"].read_text(encoding="utf-8") != IFCFG_LO:
        problems.append(f"{SCRIPTS}/ifcfg-lo was changed")
    uuids: dict[str, str] = {}
    defaults = []
    for device in network.devices:
        path = files.get(f"ifcfg-{device.name}")
        if path is None:
            continue
        values, found = read_ifcfg(box, path)
        where = f"{SCRIPTS}/ifcfg-{device.name}"
        found += _common_keys(where, device, values, path)
        found += _kind_keys(where, device, values, network)
        found += _layer3_keys(where, device, values)
        value = values.get("UUID")
        if value in uuids:
            found.append(f"{where}: UUID={value} is also in ifcfg-{uuids[value]}")
        uuids[value or ""] = device.name
        if values.get("DEFROUTE", "yes") == "yes" and values.get("BOOTPROTO") == "dhcp" or (
                values.get("GATEWAY") and values.get("DEFROUTE", "yes") == "yes"):
            defaults.append(device.name)
        problems += found
    wanted = [d.name for d in network.devices if d.default_route]
    if defaults != wanted:
        problems.append(f"the default route comes from {defaults}, the site says {wanted}")
    problems += _route_files(box, network, files)
    return problems


def _foreign_nic_left_alone(box: Sandbox, host: Host, path: Path) -> bool:
    """A file anaconda wrote that %post rightly keeps: another NIC of the machine, which the
    site does not mention, left off (ONBOOT=no); or, on a host whose site gives no devices,
    the install NIC's DHCP connection, on at boot (its only network)."""
    values, problems = read_ifcfg(box, path)
    sysfs = box.target / "sys/class/net" / values.get("DEVICE", "-") / "address"
    mac = (values.get("HWADDR") or (sysfs.read_text().strip() if sysfs.is_file() else "")).lower()
    network = host.network
    if not network.devices:
        install = network.install.device if network.install else None
        return not problems and mac == install and values.get("ONBOOT") == "yes"
    ours = values.get("DEVICE") in {d.device for d in network.devices} or mac in network.macs
    return not problems and not ours and values.get("ONBOOT") == "no"


def _common_keys(where: str, device: Device, values: dict[str, str], path: Path) -> list[str]:
    problems = _expect(where, values, {"NAME": device.name, "DEVICE": device.device})
    if (values.get("HWADDR") or "").lower() != (device.mac or ""):
        problems.append(f"{where}: HWADDR={values.get('HWADDR')!r}, the site's MAC is "
                        f"{device.mac!r}")
    try:
        uuid.UUID(values.get("UUID", ""))
    except ValueError:
        problems.append(f"{where}: UUID={values.get('UUID')!r} is not a UUID")
    if values.get("ONBOOT") != "yes":
        problems.append(f"{where}: ONBOOT={values.get('ONBOOT')!r}, expected 'yes'")
    if path.stat().st_mode & 0o7777 != 0o644:
        problems.append(f"{where}: mode {path.stat().st_mode & 0o7777:04o}, expected 0644")
    if values.get("MTU") != (str(device.mtu) if device.mtu else None):
        problems.append(f"{where}: MTU={values.get('MTU')!r}, the site says {device.mtu}")
    return problems


def _expect(where: str, values: dict[str, str], wanted: dict[str, str | None]) -> list[str]:
    """Each key has the wanted value; None: the key must be absent."""
    return [f"{where}: {key}={values.get(key)!r}, expected "
            f"{'no ' + key if value is None else repr(value)}"
            for key, value in wanted.items() if values.get(key) != value]


def _kind_keys(where: str, device: Device, values: dict[str, str],
               network: Network) -> list[str]:
    master = network[device.master] if device.master else None
    wanted: dict[str, str | None] = {
        "TYPE": {"nic": "Ethernet", "bond": "Bond", "vlan": "Vlan", "bridge": "Bridge"}[
            device.kind],
        "MASTER": master.name if master and master.kind == "bond" else None,
        "SLAVE": "yes" if master and master.kind == "bond" else None,
        "BRIDGE": master.name if master and master.kind == "bridge" else None,
        "VLAN": "yes" if device.kind == "vlan" else None,
        "PHYSDEV": network[device.parent].device if device.parent else None,
        "VLAN_ID": str(device.vlan_id) if device.vlan_id else None,
    }
    problems = _expect(where, values, wanted)
    if device.kind == "bond":
        options = dict(o.split("=", 1) for o in values.get("BONDING_OPTS", "").split())
        if options != dict(device.bond_options) or values.get("BONDING_MASTER") != "yes":
            problems.append(f"{where}: BONDING_OPTS={values.get('BONDING_OPTS')!r}, the site "
                            f"says {dict(device.bond_options)}")
    if device.kind == "bridge":
        delay = int(values.get("DELAY", "-1"))
        stp = values.get("STP", "no") == "yes"
        if stp != device.stp:
            problems.append(f"{where}: STP={values.get('STP')!r}, site says stp={device.stp}")
        # NetworkManager 1.18 refuses a forward delay of 0 with STP on: 2-30 s then.
        if (stp and not 2 <= delay <= 30) or (not stp and delay != 0) or (
                stp and delay != device.forward_delay):
            problems.append(f"{where}: DELAY={delay} with STP={'yes' if stp else 'no'}")
    return problems


def _layer3_keys(where: str, device: Device, values: dict[str, str]) -> list[str]:
    wanted: dict[str, str | None] = {"IPADDR": None, "PREFIX": None, "GATEWAY": None}
    if device.address:
        wanted.update(BOOTPROTO="static", IPADDR=str(device.address.ip),
                      PREFIX=str(device.address.network.prefixlen),
                      GATEWAY=str(device.gateway) if device.gateway else None)
    elif device.dhcp:
        wanted["BOOTPROTO"] = "dhcp"
    elif values.get("BOOTPROTO", "none") != "none":
        return [f"{where}: BOOTPROTO={values['BOOTPROTO']!r} on a device without an address"]
    for number in range(1, 5):
        dns = device.dns[number - 1] if number <= len(device.dns) else None
        wanted[f"DNS{number}"] = str(dns) if dns else None
    wanted["DOMAIN"] = " ".join(device.search) if device.search else None
    problems = _expect(where, values, wanted)
    if "GATEWAY" in values and "IPADDR" in values and "PREFIX" in values:
        subnet = ipaddress.ip_interface(f"{values['IPADDR']}/{values['PREFIX']}").network
        if ipaddress.ip_address(values["GATEWAY"]) not in subnet:
            problems.append(f"{where}: GATEWAY {values['GATEWAY']} is outside {subnet}")
    return problems


def _route_files(box: Sandbox, network: Network, files: dict[str, Path]) -> list[str]:
    """route-<device>: ADDRESSn/NETMASKn/GATEWAYn, numbered from 0 without gaps (initscripts'
    ifup-routes stops at the first missing number), each gateway in the device's subnet."""
    problems = []
    for name in sorted({route.device for route in network.routes}):
        path = files.get(f"route-{name}")
        if path is None:
            continue
        values, found = read_ifcfg(box, path)
        routes = set()
        for n in range(len(values) // 3):
            try:
                to = ipaddress.IPv4Network(f"{values[f'ADDRESS{n}']}/{values[f'NETMASK{n}']}")
                routes.add((to, ipaddress.IPv4Address(values[f"GATEWAY{n}"])))
            except (KeyError, ValueError) as exc:
                found.append(f"{SCRIPTS}/route-{name}: route {n}: {exc}")
        wanted = {(r.to, r.via) for r in network.routes if r.device == name}
        if routes != wanted or len(values) != 3 * len(wanted):
            found.append(f"{SCRIPTS}/route-{name}: routes {sorted(map(str, routes))}, the "
                         f"site says {sorted(map(str, wanted))}")
        subnet = network[name].address
        found += [f"{SCRIPTS}/route-{name}: gateway {via} is outside {subnet}"
                  for _, via in routes if subnet is None or via not in subnet.network]
        problems += found
    return problems


# --- firewall --------------------------------------------------------------------------------


def check_firewall(box: Sandbox, host: Host) -> list[str]:
    problems = [f"`{' '.join(call)}` does nothing in the installer's chroot"
                for call in box.calls() if call[:1] == ["systemctl"]
                and any(word in RUNTIME_VERBS for word in call[1:])]
    systemd = box.target / SYSTEMD
    unit = systemd / "firewalld.service"
    masked = unit.is_symlink() and str(unit.readlink()) == "/dev/null"
    links = sorted(path.relative_to(systemd).as_posix() for path in systemd.rglob("*")
                   if path.is_symlink() and str(path.readlink()) == FIREWALLD_UNIT)
    wanted = ["dbus-org.fedoraproject.FirewallD1.service",
              "multi-user.target.wants/firewalld.service"]
    if not host.firewall.enabled:
        if not masked:
            problems.append(f"/{SYSTEMD}/firewalld.service is not a mask (-> /dev/null)")
        if links:
            problems.append(f"firewalld is masked but still enabled by {links}")
        return problems
    if masked:
        problems.append("firewalld is masked but the site enables it")
    if links != wanted:
        problems.append(f"firewalld enablement links {links}, expected {wanted}")
    services = zone_services(box.target, "public")
    missing = [s for s in host.firewall.services if s not in services]
    if missing:
        problems.append(f"services {missing} are not open in the public zone ({services})")
    return problems


def zone_services(target: Path, zone: str) -> list[str]:
    """The services of a firewalld zone as firewalld reads them: /etc wins over /usr/lib."""
    path = target / f"etc/firewalld/zones/{zone}.xml"
    if not path.exists():
        path = target / f"usr/lib/firewalld/zones/{zone}.xml"
    root = ElementTree.parse(path).getroot()
    return [element.attrib["name"] for element in root.iter("service")]


# --- overlay ---------------------------------------------------------------------------------


def check_overlay(target: Path, overlay: Overlay) -> list[str]:
    problems = []
    for folder in overlay.dirs:
        path = target / folder.path.lstrip("/")
        if not path.is_dir() or path.is_symlink():
            problems.append(f"{folder.path}: not a folder")
        elif path.stat().st_mode & 0o7777 != folder.mode:
            problems.append(f"{folder.path}: mode {path.stat().st_mode & 0o7777:04o}, "
                            f"expected {folder.mode:04o}")
    for file in overlay.files:
        path = target / file.path.lstrip("/")
        if not path.is_file() or path.is_symlink():
            problems.append(f"{file.path}: missing or not a regular file")
            continue
        if path.read_bytes() != file.content:
            problems.append(f"{file.path}: content differs ({path.stat().st_size} bytes, "
                            f"expected {len(file.content)})")
        if path.stat().st_mode & 0o7777 != file.mode:
            problems.append(f"{file.path}: mode {path.stat().st_mode & 0o7777:04o}, "
                            f"expected {file.mode:04o}")
    return problems


# --- nothing else ----------------------------------------------------------------------------


def check_nothing_else(box: Sandbox, overlay: Overlay) -> list[str]:
    """Every change to the tree since before the first install is one the host's steps
    explain: a %post that writes through a symlink or to a mistyped path shows up here."""
    if box.before is None:
        return ["the sandbox never ran an install"]
    allowed = set(CHANGES_ALLOWED)
    for path in [*(d.path for d in overlay.dirs), *(f.path for f in overlay.files)]:
        parts = path.strip("/").split("/")
        allowed.update("/".join(parts[:n]) for n in range(1, len(parts) + 1))
    allowed.update(log.lstrip("/") for log in box.logs)
    after = snapshot(box.target)
    changed = sorted(path for path in set(box.before) | set(after)
                     if box.before.get(path) != after.get(path))
    return [f"/{path}: {_change(box.before, after, path)}, which no step explains"
            for path in changed
            if path not in allowed and not any(path.startswith(a) for a in allowed
                                               if a.endswith("/"))]


def _change(before: Tree, after: Tree, path: str) -> str:
    if path not in before:
        return "created"
    if path not in after:
        return "removed"
    return "changed"
