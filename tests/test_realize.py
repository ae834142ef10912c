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
import re
import shlex
from pathlib import Path

import pytest

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
GUEST_NET = ipaddress.IPv4Interface("203.0.113.129/25")  # the partner's end of a guest LAN
LACP_WAIT = 60  # seconds for the bonds to agree, under TCG
TOOLS = 'ip() { /usr/sbin/ip "$@"; }\nping() { /usr/bin/ping "$@"; }'


def installed_files(tmp_path: Path, hostname: str) -> tuple[Network, dict[str, str]]:
    """The network-scripts folder as the host's %post leaves it (run in the sandbox, over
    the files anaconda wrote), file name -> text."""
    site = load(FLEET)
    host = site.host(hostname)
    kickstart = render_site(site, (host,))[hostname]
    box = Sandbox(tmp_path / "box")
    nics = {f"enp{n}s0f0": d.mac for n, d in enumerate(host.network.devices, 1)
            if d.kind == NIC and d.mac}
    box.seed_anaconda_network(kickstart, nics)
    result = box.install(kickstart)
    assert result.ok, result.report()
    folder = box.target / "etc/sysconfig/network-scripts"
    files = {p.name: p.read_text() for p in folder.iterdir() if p.name.startswith(
        ("ifcfg-", "route-"))}
    return host.network, files


def partner_end(network: Network, vlan: Device) -> tuple[Device | None, list[str]]:
    """The host's device that holds VLAN `vlan`'s address (the VLAN or its bridge), and the
    partner's addresses on that VLAN: the gateway or another host of the subnet, the
    gateways of routes through it; a guest LAN when the host has no address there."""
    holder = network[vlan.master] if vlan.master else vlan
    if holder.address is None:
        return holder if holder.kind == BRIDGE else None, [str(GUEST_NET)]
    subnet = holder.address.network
    mine = holder.gateway or next(ip for ip in subnet.hosts() if ip != holder.address.ip)
    ends = [f"{mine}/{subnet.prefixlen}"]
    ends += [f"{r.via}/{subnet.prefixlen}" for r in network.routes if r.device == holder.name]
    return holder, ends


def lab_script(network: Network, ifup: str) -> str:
    nics = [d for d in network.devices if d.kind == NIC]
    (bond,) = [d for d in network.devices if d.kind == BOND]
    vlans = [d for d in network.devices if d.kind == VLAN and d.parent == bond.name]
    mode = dict(bond.bond_options)
    # Debian's busybox shell runs its own applets before PATH: name the real programs.
    lines = [TOOLS, "set -u", "ip netns add host", "ip netns add partner", "ip netns add guest",
             "ip -n host link set lo up", "ip -n partner link set lo up"]
    # The machine: one veth pair per NIC, the host's end with the site's MAC.
    for number, nic in enumerate(nics, 1):
        lines.append(f"ip link add enp{number}s0f0 address {nic.mac} netns host type veth "
                     f"peer name swp{number} netns partner")
    # The switch: a bond in 802.3ad over the other ends, the VLANs, the far addresses.
    lines.append(f"ip -n partner link add pbond type bond mode 802.3ad miimon 100 "
                 f"lacp_rate {mode.get('lacp_rate', 'slow')}")
    lines += [f"ip -n partner link set swp{n} master pbond" for n in range(1, len(nics) + 1)]
    lines.append(f"ip -n partner link set pbond mtu {bond.mtu or 1500} up")
    targets: list[tuple[str, str, str]] = []  # (netns, what, address) to ping
    for vlan in vlans:
        name = f"pbond.{vlan.vlan_id}"
        lines += [f"ip -n partner link add link pbond name {name} type vlan id {vlan.vlan_id}",
                  f"ip -n partner link set {name} mtu {vlan.mtu or 1500} up"]
        holder, ends = partner_end(network, vlan)
        lines += [f"ip -n partner addr add {end} dev {name}" for end in ends]
        if holder is not None and holder.address is not None:
            targets.append(("host", f"{holder.name} over {vlan.name}", ends[0].split("/")[0]))
        elif holder is not None:  # a guest on the bridge, as libvirt plugs one in
            guest = ipaddress.IPv4Interface(f"{GUEST_NET.ip + 1}/{GUEST_NET.network.prefixlen}")
            targets.append(("guest", f"a guest on {holder.name} over {vlan.name}",
                            str(GUEST_NET.ip)))
            lines.append(f"GUEST_ADDRESS={guest} GUEST_BRIDGE={holder.name}")
    for route in network.routes:  # the far side of each static route: a /32 on lo
        far = next(route.to.hosts())
        lines.append(f"ip -n partner addr add {far}/32 dev lo")
        targets.append(("host", f"route {route.to} via {route.via}", str(far)))
    lines.append("cat > /ifup.sh <<'KSBUILD_IFUP'\n" + TOOLS + "\n" + ifup + "KSBUILD_IFUP")
    lines.append('ip netns exec host sh /ifup.sh || echo "KSBUILD-NET ifup failed $?"')
    lines += [
        'if [ -n "${GUEST_BRIDGE:-}" ]; then',
        "    ip link add vnet0 netns host type veth peer name eth0 netns guest",
        '    ip -n host link set vnet0 master "$GUEST_BRIDGE" up',
        '    ip -n guest addr add "$GUEST_ADDRESS" dev eth0',
        "    ip -n guest link set eth0 up",
        "fi",
        # LACP: wait until the partner is known and every slave is in the bond's aggregator.
        f"bond=/sys/class/net/{bond.name}/bonding",
        f"tries=0; while [ $tries -lt {LACP_WAIT} ]; do",
        '    agg=$(ip netns exec host cat $bond/ad_aggregator 2>/dev/null)',
        '    ok=1; for s in $(ip netns exec host cat $bond/slaves); do',
        '        [ "$(ip netns exec host cat /sys/class/net/$s/bonding_slave/ad_aggregator_id)"'
        ' = "$agg" ] || ok=0; done',
        '    partner=$(ip netns exec host cat $bond/ad_partner_mac)',
        '    [ $ok = 1 ] && [ "$partner" != 00:00:00:00:00:00 ] && break',
        "    sleep 1; tries=$((tries + 1)); done",
        'echo "KSBUILD-NET lacp_seconds $tries"',
    ]
    reads = {"mode": "mode", "ad_partner_mac": "ad_partner_mac",
             "ad_aggregator": "ad_aggregator", "slaves": "slaves", "lacp_rate": "lacp_rate"}
    lines += [f'echo "KSBUILD-NET bond_{key} $(ip netns exec host cat $bond/{path})"'
              for key, path in reads.items()]
    lines += ['for s in $(ip netns exec host cat $bond/slaves); do echo "KSBUILD-NET '
              'slave_aggregator $s $(ip netns exec host cat '
              '/sys/class/net/$s/bonding_slave/ad_aggregator_id)"; done',
              'echo "KSBUILD-NET partner_mac $(cat /sys/class/net/pbond/address 2>/dev/null ||'
              ' ip netns exec partner cat /sys/class/net/pbond/address)"']
    for device in network.devices:
        if device.device:
            lines.append(f'echo "KSBUILD-NET mtu {device.device} $(ip netns exec host cat '
                         f'/sys/class/net/{device.device}/mtu)"')
            lines.append(f'echo "KSBUILD-NET operstate {device.device} $(ip netns exec host '
                         f'cat /sys/class/net/{device.device}/operstate)"')
    for netns, what, address in targets:
        lines.append(_ping(netns, what, address, 56))
    for device in network.devices:  # jumbo frames where the site asks for them, not split
        if device.mtu and device.mtu > 1500 and device.address is not None:
            far = next(ip for ip in device.address.network.hosts() if ip != device.address.ip)
            lines.append(_ping("host", f"jumbo on {device.name}", str(far), device.mtu - 28))
            lines.append(_ping("host", f"too big on {device.name}", str(far),
                               device.mtu - 27))
    lines += ['ip netns exec host ip -4 route show | sed "s/^/KSBUILD-NET route /"',
              'ip netns exec host ip -o -4 addr show | awk \'{print "KSBUILD-NET addr", $2, $4}\'']
    return "\n".join(lines) + "\n"


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


def test_fleet_host_network_comes_up_in_a_guest(tmp_path: Path) -> None:
    network, files = installed_files(tmp_path, "kvm1.example.com")
    script = lab_script(network, ifup_script(files))
    initrd = lab_initramfs(script, tmp_path / "lab.img")
    result = boot("bios-cd", kernel=kernel(), initrd=initrd,
                  append="console=ttyS0 panic=-1 quiet", timeout=300)
    log = result.log
    assert "KSBUILD-LAB-END" in log, result.describe()
    found = results(log)
    problems = [" ".join(r) for r in found if "FAILED" in r or r[:1] == ["ifup"]]
    problems = [p for p in problems if not p.startswith("ping FAILED") or "too big" not in p]
    assert problems == [], log

    def values(key: str) -> list[list[str]]:
        return [r[1:] for r in found if r[0] == key]

    bond = network["bond0"]
    # Bond mode and LACP: the partner (the switch's bond) is known, both slaves aggregate.
    assert values("bond_mode") == [["802.3ad", "4"]], log
    assert values("bond_lacp_rate") == [["fast", "1"]], log
    assert values("bond_ad_partner_mac") == values("partner_mac") != [["00:00:00:00:00:00"]]
    aggregator = values("bond_ad_aggregator")[0][0]
    slaves = values("slave_aggregator")
    assert len(slaves) == len(bond.slaves) == 2 and all(a == aggregator for _, a in slaves)
    # The NICs, picked by MAC, got their files whatever the kernel named them.
    assert sorted(values("bond_slaves")[0]) == ["enp1s0f0", "enp2s0f0"]
    # MTU as the site says: 9000 on the bond and the storage VLAN, 1500 on the others.
    mtus = {name: int(mtu) for name, mtu in values("mtu")}
    assert mtus == {d.device: d.mtu or 1500 for d in network.devices if d.device}, mtus
    assert all(state in ("up", "unknown") for _, state in values("operstate")), log
    # Pings across every VLAN and bridge, the static route, a guest on the guests' bridge.
    pings = {" ".join(r[3:]): r[0] for r in values("ping")}  # status size address what
    assert pings == {
        "br-mgmt over bond0.10": "ok", "a guest on br-guest over bond0.20": "ok",
        "bond0.30 over bond0.30": "ok", "route 203.0.113.0/24 via 192.0.2.254": "ok",
        "jumbo on bond0.30": "ok", "too big on bond0.30": "FAILED"}, log
    # The routing table: one default route, through the management bridge; the route file.
    routes = [" ".join(r) for r in values("route")]
    assert [r for r in routes if r.startswith("default")] == [
        "default via 192.0.2.1 dev br-mgmt"], routes
    assert "203.0.113.0/24 via 192.0.2.254 dev br-mgmt" in routes, routes
    addresses = {name: address for name, address in values("addr") if name != "lo"}
    assert addresses == {"br-mgmt": "192.0.2.11/24", "bond0.30": "198.51.100.11/24"}
    assert re.search(r"KSBUILD-NET lacp_seconds \d+", log)
