"""The network files ksbuild writes describe a network that works, not only text that parses.

The fleet example's LACP host is installed in the %post sandbox; the ifcfg and route files
its %post leaves are read the way RHEL 7's initscripts read them (tests/initscripts.py) into
a script of `ip` commands; a QEMU guest (Debian's kernel, busybox, no NIC at all) makes the
machine inside itself: network namespaces, veth pairs as the host's NICs (with the site's
MACs, under names the site never uses), a partner namespace bonding its ends in 802.3ad
(the switch), VLANs and a guest on the guests' bridge. The host side runs the script; then
pings cross every bridge and VLAN (jumbo frames unfragmented on the storage VLAN), and bond
mode, LACP state, MTU and the routing table are read back from /sys and ip. Nothing leaves
the guest; the addresses are the example's TEST-NET ones.
"""

from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path

import pytest
import yaml

from builder.kickstart import render_site
from builder.network import BOND, BRIDGE, NIC, VLAN, Device, Network
from builder.site import load
from tests.conftest import REPO
from tests.fixtures.kernel import kernel
from tests.fixtures.netlab import lab_initramfs
from tests.fixtures.qemu import boot
from tests.initscripts import IfcfgError, ifup_script
from tests.sandbox import Sandbox

FLEET = REPO / "kickstarts/fleet.yaml"
# Guest LANs on bridges without a host address: /28s of it (the partner's end, a guest).
GUEST_NETS = ipaddress.IPv4Network("203.0.113.128/25")
SETTLE_WAIT = 60  # seconds for LACP to agree and STP bridges to forward, under TCG
TOOLS = 'ip() { /usr/sbin/ip "$@"; }\nping() { /usr/bin/ping "$@"; }'


def installed_files(tmp_path: Path, site_path: Path,
                    hostname: str) -> tuple[Network, dict[str, str], dict[str, str]]:
    """The network-scripts folder as the host's %post leaves it (run in the sandbox, over
    the files anaconda wrote), file name -> text; and the machine's NICs, kernel name ->
    MAC (a NIC the site picks by MAC alone gets a name the site never uses)."""
    site = load(site_path)
    host = site.host(hostname)
    kickstart = render_site(site, (host,))[hostname]
    box = Sandbox(tmp_path / "box")
    nics = {}
    for number, device in enumerate(host.network.devices, 1):
        if device.kind == NIC:
            nics[device.device or f"enp{number}s0f0"] = device.mac or f"52:54:00:ee:00:{number:02x}"
    box.seed_anaconda_network(kickstart, nics)
    result = box.install(kickstart)
    assert result.ok, result.report()
    folder = box.target / "etc/sysconfig/network-scripts"
    files = {p.name: p.read_text() for p in folder.iterdir() if p.name.startswith(
        ("ifcfg-", "route-"))}
    return host.network, files, nics


class Lab:
    """The shell script that makes the machine, its switch (the partner namespace), runs
    the host's ifup script and prints what the test asserts (KSBUILD-NET lines)."""

    def __init__(self, network: Network, nics: dict[str, str]) -> None:
        self.network = network
        self.nics = nics
        # Debian's busybox shell runs its own applets before PATH: name the real programs.
        self.lines = [TOOLS, "set -u", "ip netns add host", "ip netns add partner",
                      "ip -n host link set lo up", "ip -n partner link set lo up"]
        self.made: set[str] = set()  # partner devices made so far
        self.targets: list[tuple[str, str, str]] = []  # (netns, what, address) to ping
        self.guest_nets = list(GUEST_NETS.subnets(new_prefix=28))

    def uplink(self, device: Device) -> tuple[str, int | None]:
        """The partner's device facing `device`, and the VLAN tag on the way."""
        if device.kind == VLAN:
            base, _ = self.uplink(self.network[device.parent or ""])
            return base, device.vlan_id
        if device.kind == BRIDGE:
            return self.uplink(self.network[device.ports[0]])
        if device.kind == NIC and device.master and self.network[device.master].kind == BOND:
            return self.uplink(self.network[device.master])
        if device.kind == BOND:
            return self.switch_for_bond(device), None
        kernel = next(k for k, mac in self.nics.items()
                      if k == device.device or mac == device.mac)
        return f"sw{list(self.nics).index(kernel) + 1}", None

    def switch_for_bond(self, bond: Device) -> str:
        """802.3ad: the partner bonds its ends too (LACP); other modes: a plain switch (a
        bridge of its ends), as active-backup or balance-* expect."""
        name = f"pb{[d.name for d in self.network.devices].index(bond.name)}"
        if name in self.made:
            return name
        self.made.add(name)
        ports = [f"sw{list(self.nics).index(self.kernel(self.network[s])) + 1}"
                 for s in bond.slaves]
        if dict(bond.bond_options)["mode"] == "802.3ad":
            rate = dict(bond.bond_options).get("lacp_rate", "slow")
            self.lines.append(f"ip -n partner link add {name} type bond mode 802.3ad "
                              f"miimon 100 lacp_rate {rate}")
        else:
            self.lines.append(f"ip -n partner link add {name} type bridge")
        for port in ports:  # a bond takes only slaves that are down
            self.lines += [f"ip -n partner link set {port} down",
                           f"ip -n partner link set {port} master {name}",
                           f"ip -n partner link set {port} up"]
        self.lines.append(f"ip -n partner link set {name} mtu {bond.mtu or 1500} up")
        return name

    def kernel(self, nic: Device) -> str:
        return next(k for k, mac in self.nics.items() if k == nic.device or mac == nic.mac)

    def partner_device(self, device: Device) -> str:
        base, vlan_id = self.uplink(device)
        if vlan_id is None:
            return base
        name = f"{base}.{vlan_id}"
        if name not in self.made:
            self.made.add(name)
            mtu = max((d.mtu or 1500 for d in self.network.devices
                       if d.kind == VLAN and d.vlan_id == vlan_id), default=1500)
            self.lines += [f"ip -n partner link add link {base} name {name} type vlan id "
                           f"{vlan_id}", f"ip -n partner link set {name} mtu {mtu} up"]
        return name

    def script(self, ifup: str) -> str:
        for number, (name, mac) in enumerate(self.nics.items(), 1):
            self.lines.append(f"ip link add {name} address {mac} netns host type veth "
                              f"peer name sw{number} netns partner")
            self.lines.append(f"ip -n partner link set sw{number} up")
        guests = []
        for device in self.network.devices:
            if device.master:
                continue
            if device.address is not None:
                self.far_end(device)
            elif device.kind == BRIDGE:
                guests.append(device)
        self.lines.append("cat > /ifup.sh <<'KSBUILD_IFUP'\n" + TOOLS + "\n" + ifup +
                          "KSBUILD_IFUP")
        self.lines.append('ip netns exec host sh /ifup.sh || echo "KSBUILD-NET ifup failed $?"')
        for number, bridge in enumerate(guests):
            self.guest(number, bridge)
        self.wait_and_read()
        for netns, what, address in self.targets:
            self.lines.append(_ping(netns, what, address, 56))
        for device in self.network.devices:  # jumbo frames where the site asks, not split
            if device.mtu and device.mtu > 1500 and device.address is not None:
                far = next(ip for ip in device.address.network.hosts()
                           if ip != device.address.ip)
                self.lines.append(_ping("host", f"jumbo on {device.name}", str(far),
                                        device.mtu - 28))
                self.lines.append(_ping("host", f"too big on {device.name}", str(far),
                                        device.mtu - 27))
        self.lines += [
            'ip netns exec host ip -4 route show | sed "s/^/KSBUILD-NET route /"',
            "ip netns exec host ip -o -4 addr show | awk '{print \"KSBUILD-NET addr\", $2, $4}'"]
        return "\n".join(self.lines) + "\n"

    def far_end(self, holder: Device) -> None:
        """The partner's addresses in `holder`'s subnet: the gateway or another host, the
        gateways of the routes through it, and a /32 behind each route."""
        assert holder.address is not None
        subnet = holder.address.network
        mine = holder.gateway or next(ip for ip in subnet.hosts() if ip != holder.address.ip)
        name = self.partner_device(holder)
        self.lines.append(f"ip -n partner addr add {mine}/{subnet.prefixlen} dev {name}")
        self.targets.append(("host", f"{holder.name} to {name}", str(mine)))
        for route in self.network.routes:
            if route.device == holder.name:
                far = next(route.to.hosts())
                self.lines += [f"ip -n partner addr add {route.via}/{subnet.prefixlen} dev "
                               f"{name}", f"ip -n partner addr add {far}/32 dev lo"]
                self.targets.append(("host", f"route {route.to} via {route.via}", str(far)))

    def guest(self, number: int, bridge: Device) -> None:
        """A guest on a bridge without a host address, plugged in as libvirt does."""
        subnet = self.guest_nets[number]
        ours, theirs = list(subnet.hosts())[:2]
        name = self.partner_device(bridge)
        self.lines += [
            f"ip -n partner addr add {ours}/{subnet.prefixlen} dev {name}",
            f"ip netns add guest{number}",
            f"ip link add vnet{number} netns host type veth peer name eth0 netns guest{number}",
            # libvirt gives the tap its bridge's MTU (a smaller port would lower the bridge's)
            f"ip -n host link set vnet{number} mtu {bridge.mtu or 1500}",
            f"ip -n host link set vnet{number} master {bridge.device} up",
            f"ip -n guest{number} addr add {theirs}/{subnet.prefixlen} dev eth0",
            f"ip -n guest{number} link set eth0 up"]
        self.targets.append((f"guest{number}", f"a guest on {bridge.name} to {name}",
                             str(ours)))

    def wait_and_read(self) -> None:
        """Wait for LACP (every slave in the bond's aggregator, a partner known) and for
        STP bridges to forward; then print bond, bridge and MTU facts from /sys."""
        bonds = [d for d in self.network.devices if d.kind == BOND]
        bridges = [d for d in self.network.devices if d.kind == BRIDGE]
        self.lines += [
            "sys() { ip netns exec host cat \"/sys/class/net/$1\"; }",
            "settled() {",
            *[f"    [ \"$(sys {b.device}/bonding/ad_partner_mac)\" != 00:00:00:00:00:00 ] "
              f"|| return 1\n    for s in $(sys {b.device}/bonding/slaves); do [ \"$(sys "
              f"$s/bonding_slave/ad_aggregator_id)\" = \"$(sys {b.device}/bonding/"
              "ad_aggregator)\" ] || return 1; done"
              for b in bonds if dict(b.bond_options)["mode"] == "802.3ad"],
            *[f"    for p in $(ip netns exec host ls /sys/class/net/{b.device}/brif); do "
              f"[ \"$(sys {b.device}/brif/$p/state)\" = 3 ] || return 1; done"
              for b in bridges],
            "    return 0", "}",
            f"tries=0; while [ $tries -lt {SETTLE_WAIT} ] && ! settled; do sleep 1; "
            "tries=$((tries + 1)); done",
            'echo "KSBUILD-NET settled_seconds $tries"']
        for bond in bonds:
            for key in ("mode", "ad_partner_mac", "ad_aggregator", "slaves", "lacp_rate",
                        "active_slave", "primary", "miimon"):
                self.lines.append(f'echo "KSBUILD-NET bond {bond.device} {key} '
                                  f'$(sys {bond.device}/bonding/{key})"')
            self.lines.append(f"for s in $(sys {bond.device}/bonding/slaves); do echo "
                              f"\"KSBUILD-NET slave_aggregator {bond.device} $s $(sys "
                              "$s/bonding_slave/ad_aggregator_id)\"; done")
        self.lines.append("for b in $(ip netns exec partner ls /sys/class/net); do echo "
                          "\"KSBUILD-NET partner_mac $b $(ip netns exec partner cat "
                          "/sys/class/net/$b/address 2>/dev/null)\"; done")
        for bridge in bridges:
            for key in ("stp_state", "forward_delay"):
                self.lines.append(f'echo "KSBUILD-NET bridge {bridge.device} {key} '
                                  f'$(sys {bridge.device}/bridge/{key})"')
        for device in self.network.devices:
            name = device.device or self.kernel(device)
            self.lines.append(f'echo "KSBUILD-NET mtu {name} $(sys {name}/mtu)"')
            self.lines.append(f'echo "KSBUILD-NET operstate {name} $(sys {name}/operstate)"')


def _ping(netns: str, what: str, address: str, size: int) -> str:
    quoted = shlex.quote(what)
    return (f"if ip netns exec {netns} ping -n -c 2 -W 5 -M do -s {size} {address} "
            f">/tmp/ping 2>&1; then echo \"KSBUILD-NET ping ok {size} {address} \"{quoted}; "
            f"else echo \"KSBUILD-NET ping FAILED {size} {address} \"{quoted}; "
            "tail -n 3 /tmp/ping; fi")


def results(log: str) -> list[list[str]]:
    return [line.split()[1:] for line in log.splitlines() if line.startswith("KSBUILD-NET ")]


def test_initscripts_reading_refuses_what_it_does_not_know() -> None:
    """The reading is strict: an unknown key, DHCP, or a master no file defines is an error,
    not something silently left out of the lab."""
    with pytest.raises(IfcfgError, match="does not know"):
        ifup_script({"ifcfg-eth0": "DEVICE=eth0\nONBOOT=yes\nETHTOOL_OPTS=x\n"})
    with pytest.raises(IfcfgError, match="BOOTPROTO=dhcp"):
        ifup_script({"ifcfg-eth0": "DEVICE=eth0\nONBOOT=yes\nBOOTPROTO=dhcp\n"})
    with pytest.raises(IfcfgError, match="no ONBOOT=yes file has DEVICE=bond0"):
        ifup_script({"ifcfg-eth0": "DEVICE=eth0\nONBOOT=yes\nMASTER=bond0\nSLAVE=yes\n"})


def realize(tmp_path: Path, site_path: Path,
            hostname: str) -> tuple[Network, dict[str, list[list[str]]], str]:
    """Install the host's files, bring them up in the guest; (model, the KSBUILD-NET
    results by key, the serial log)."""
    network, files, nics = installed_files(tmp_path, site_path, hostname)
    script = Lab(network, nics).script(ifup_script(files))
    initrd = lab_initramfs(script, tmp_path / "lab.img")
    result = boot("bios-cd", kernel=kernel(), initrd=initrd,
                  append="console=ttyS0 panic=-1 quiet", timeout=300)
    assert "KSBUILD-LAB-END" in result.log, result.describe()
    found: dict[str, list[list[str]]] = {}
    for row in results(result.log):
        found.setdefault(row[0], []).append(row[1:])
    return network, found, result.log


def assert_works(network: Network, found: dict[str, list[list[str]]], log: str) -> None:
    """What holds for any layout: the script ran, every ping got through (and the one a
    byte over a jumbo MTU did not), each bond runs its mode, 802.3ad bonds aggregate every
    slave with the partner, bridges have the site's STP and delay, MTUs, addresses, the one
    default route and the static routes are the site's."""
    assert "ifup" not in found and int(found["settled_seconds"][0][0]) < SETTLE_WAIT, log
    pings = {" ".join(r[3:]): r[0] for r in found["ping"]}
    assert pings and all(status == ("FAILED" if what.startswith("too big") else "ok")
                         for what, status in pings.items()), log
    bond_facts = {(r[0], r[1]): r[2:] for r in found.get("bond", [])}
    partner_macs = {r[1] for r in found["partner_mac"] if len(r) == 2}
    for bond in (d for d in network.devices if d.kind == BOND):
        options = dict(bond.bond_options)
        mode = options["mode"]
        assert bond_facts[(bond.name, "mode")] == [mode, str(BOND_MODE_NUMBERS[mode])], log
        assert bond_facts[(bond.name, "miimon")] == [options["miimon"]]
        kernel_slaves = bond_facts[(bond.name, "slaves")]
        assert len(kernel_slaves) == len(bond.slaves), log
        if mode == "802.3ad":
            aggregator = bond_facts[(bond.name, "ad_aggregator")]
            slaves = [r[2] for r in found["slave_aggregator"] if r[0] == bond.name]
            assert slaves == aggregator * len(bond.slaves), log
            assert bond_facts[(bond.name, "ad_partner_mac")][0] in partner_macs, log
            assert bond_facts[(bond.name, "lacp_rate")][0] == options.get("lacp_rate", "slow")
        if "primary" in options:
            assert bond_facts[(bond.name, "primary")][0] == bond_facts[
                (bond.name, "active_slave")][0], log
    bridge_facts = {(r[0], r[1]): r[2] for r in found.get("bridge", [])}
    for bridge in (d for d in network.devices if d.kind == BRIDGE):
        assert bridge_facts[(bridge.name, "stp_state")] == ("1" if bridge.stp else "0")
        assert bridge_facts[(bridge.name, "forward_delay")] == str(bridge.forward_delay * 100)
    mtus = {name: int(mtu) for name, mtu in found["mtu"]}
    assert all(mtus[d.device] == (d.mtu or 1500) for d in network.devices if d.device), mtus
    assert all(state in ("up", "unknown") for _, state in found["operstate"]), log
    routes = [" ".join(r) for r in found["route"]]
    default = [d for d in network.devices if d.default_route]
    assert [r for r in routes if r.startswith("default")] == [
        f"default via {d.gateway} dev {d.device}" for d in default], routes
    for route in network.routes:
        assert f"{route.to} via {route.via} dev {network[route.device].device}" in routes
    addresses = {name: address for name, address in found["addr"] if name != "lo"}
    assert addresses == {d.device: str(d.address) for d in network.devices if d.address}


BOND_MODE_NUMBERS = {"balance-rr": 0, "active-backup": 1, "balance-xor": 2, "broadcast": 3,
                     "802.3ad": 4, "balance-tlb": 5, "balance-alb": 6}


def test_fleet_host_network_comes_up_in_a_guest(tmp_path: Path) -> None:
    """The fleet example: NICs by MAC in an 802.3ad bond, br-mgmt on VLAN 10 with the
    default route and a static route, br-guest on VLAN 20 with a guest, storage on VLAN 30
    with jumbo frames."""
    network, found, log = realize(tmp_path, FLEET, "kvm1.example.com")
    assert_works(network, found, log)
    pings = {" ".join(r[3:]): r[0] for r in found["ping"]}
    assert set(pings) == {
        "br-mgmt to pb2.10", "bond0.30 to pb2.30", "route 203.0.113.0/24 via 192.0.2.254",
        "a guest on br-guest to pb2.20", "jumbo on bond0.30", "too big on bond0.30"}, log
    # The NICs, picked by MAC, got their files whatever the kernel named them.
    assert {tuple(r[2:]) for r in found["bond"] if r[1] == "slaves"} == {
        ("enp1s0f0", "enp2s0f0")}
    assert "default via 192.0.2.1 dev br-mgmt" in [" ".join(r) for r in found["route"]]


SECOND = {
    "defaults": {"root_password_hash": "$6$ksbuildexample$QjxFPRYKzPP5427c/UElsobtSR1I2HT8q"
                                       "//HWLvV5ohvqmL1n2TXss6FPP4xC3vpLTPXIonQUOmaMzB7L1JAv1"},
    "hosts": [{"hostname": "lab2.example.com", "network": {
        # NICs by kernel name; one also by MAC (both bind); an active-backup bond with a
        # primary; a bridge straight on the bond (untagged) with STP; a VLAN on a NIC with
        # its own address and a route; a guests' bridge on a NIC with its own MTU.
        "nics": {"eno1": {}, "eno2": {}, "p1p1": {"mac": "52:54:00:21:00:03", "device": "p1p1"},
                 "p1p2": {"mtu": 4000}},
        "bonds": {"bond0": {"slaves": ["eno1", "eno2"], "mode": "active-backup",
                            "primary": "eno2", "miimon": 50}},
        "vlans": {"p1p1.40": {"address": "198.51.100.40/26", "mtu": 1400}},
        "bridges": {"br0": {"ports": ["bond0"], "address": "192.0.2.40/24",
                            "gateway": "192.0.2.1", "stp": True, "forward_delay": 2},
                    "brguest": {"ports": ["p1p2"], "mtu": 4000}},
        "routes": [{"to": "203.0.113.0/27", "via": "198.51.100.62"}],
        "dns": ["192.0.2.53"]}}],
}


def test_second_layout_comes_up_in_a_guest(tmp_path: Path) -> None:
    """Other paths of the files: active-backup with primary, a bridge on a bond with STP
    and a forward delay, a VLAN on a NIC (PHYSDEV= a NIC), a route on a VLAN, MTUs below
    and above 1500 on NICs, VLANs and bridges."""
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(SECOND, sort_keys=False))
    network, found, log = realize(tmp_path, path, "lab2.example.com")
    assert_works(network, found, log)
    pings = {" ".join(r[3:]): r[0] for r in found["ping"]}
    assert set(pings) == {"br0 to pb4", "p1p1.40 to sw3.40",
                          "route 203.0.113.0/27 via 198.51.100.62",
                          "a guest on brguest to sw4"}, log
    bond = {r[1]: r[2:] for r in found["bond"]}
    assert bond["mode"] == ["active-backup", "1"] and bond["active_slave"] == ["eno2"]
