"""The site file's `pxe:` key: what a PXE tree needs beyond the hosts (see builder/pxe/tree.py).

    pxe:
      server: http://10.1.0.5:8080   # the boot server's base URL (ksbuild serve or nginx):
                                     #   inst.ks=<server>/ks/<host>.cfg, %post calls
                                     #   <server>/done/<host>. http only, no path.
                                     #   `ksbuild pxe --server URL` overrides it.
      install_tree: http://10.1.0.5/centos/7/os/x86_64/
                                     # the install tree (inst.repo= and the kickstart's `url`)
                                     #   of every PXE-installed host; default: each host's
                                     #   `source` (which must then be a URL, not cdrom).
                                     #   `local`: the base ISO (DVD or Everything) published
                                     #   under http/centos/<release>/os/x86_64/ on the boot
                                     #   server itself (builder/pxe/installtree.py)
      verify_packages: sample        # with install_tree: local, which packages are checked
                                     #   against the primary metadata's checksums: a sample
                                     #   of 64, or all (every package's size is always checked)
      boot_args: [console=ttyS0,115200n8]   # extra installer arguments on every host's entry
      menu_timeout: 5                # seconds the default menu (unknown machines) waits
                                     #   before it boots the local disk
      tree_path: /srv/ksbuild/pxe    # where the tree will live on the boot server, for the
                                     #   paths in dnsmasq.conf and nginx.conf; default: the
                                     #   output folder
      pxelinux: /usr/lib/PXELINUX/pxelinux.0        # BIOS loader; default: searched in the
      syslinux_modules: /usr/lib/syslinux/modules/bios  # Debian and RHEL places
      shim: path/BOOTX64.EFI         # UEFI first stage; default: the base ISO's EFI/BOOT one
      grub: path/grubx64.efi         # UEFI GRUB; default: the base ISO's EFI/BOOT one
      grub_commands: auto            # linuxefi (CentOS's GRUB), linux (upstream GRUB), or
                                     #   auto: linuxefi if the shipped GRUB has that command
      dhcp:                          # optional; without it dnsmasq serves TFTP only and an
                                     #   existing DHCP server points clients at it
        mode: server                 # dnsmasq hands out addresses (each host its static
                                     #   address as a fixed lease). `proxy` is refused:
                                     #   CentOS 7's GRUB cannot boot from proxy answers
        interface: eth1              # the NIC dnsmasq serves on (required)
        subnet: 10.1.0.0/24          # the network served (required)
        range: {start: 10.1.0.100, end: 10.1.0.199}   # dynamic pool (server mode, optional)
        router: 10.1.0.1             # server mode: default gateway handed out
        dns: [10.1.0.1]              # server mode: name servers handed out
        lease_time: 12h              # server mode

Paths are relative to the site file. Relative file names are resolved here; whether the files
exist is checked when a tree is built (a site without PXE use must not need them).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from builder.schema import Enum, Field, Int, List, Located, Map, Str, ipv4_address

# Kept in step with builder/site.py (which imports this module, so it cannot import site).
IPV4 = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
IFACE = r"[A-Za-z][A-Za-z0-9_.-]{0,14}"
HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
# The server is a base URL: scheme, host, optional port, nothing after (ksbuild serve and the
# generated nginx.conf serve at the root). http only: anaconda needs a trusted certificate for
# https, and the boot files carry nothing secret that TLS would protect here.
# An IPv6 address in brackets (RFC 3986), as in http://[::1]:8080; checked by server_url.
IPV6_LITERAL = r"\[[0-9A-Fa-f:.]{2,45}\]"
SERVER_URL = r"http://(?:" + HOST_PART + "|" + IPV6_LITERAL + r")(?::[0-9]{1,5})?/?"
TREE_URL = r"https?://" + HOST_PART + r"(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%+=,:@/-]*)?"
PATH = r"[A-Za-z0-9._+,@%=~/-]+"
BOOT_ARG = r"[A-Za-z0-9_.-]+(?:=[A-Za-z0-9_.,:/@+-]+)?"
LEASE = r"[0-9]{1,7}[smhdw]?|infinite"


@dataclass(frozen=True)
class Dhcp:
    mode: str  # "server" or "proxy"
    interface: str | None
    subnet: ipaddress.IPv4Network
    range: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address] | None
    router: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    lease_time: str


@dataclass(frozen=True)
class PxeSettings:
    server: str | None  # without a trailing slash
    install_tree: str | None  # a URL, or "local" (the base ISO published in the tree)
    boot_args: tuple[str, ...]
    menu_timeout: int
    tree_path: Path | None
    pxelinux: Path | None
    syslinux_modules: Path | None
    shim: Path | None
    grub: Path | None
    grub_commands: str  # "auto", "linuxefi" or "linux"
    dhcp: Dhcp | None
    origin: str = ""  # "site.yaml:12: pxe", for messages
    verify_packages: str = "sample"  # or "all"


def server_url(text: str) -> str:
    """The server URL without its trailing slash, once its port is one a server can listen
    on and a bracketed address is an IPv6 one."""
    parts = urlsplit(text)
    port = parts.port  # ValueError above 65535
    if port == 0:
        raise ValueError("port 0 is not one a server listens on")
    if text[len("http://"):].startswith("["):
        ipaddress.IPv6Address(parts.hostname or "")
    return text.rstrip("/")


SERVER = Str(SERVER_URL, "the boot server's base URL (http://host[:port], an IPv6 address "
             "in brackets); --server overrides it", what="an http://host[:port] URL",
             convert=server_url)


def _file(description: str) -> Field:
    return Field(Str(PATH, description, what="a file path", max_length=4096))


def ipv4_network(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text, strict=True)


ADDRESS = Str(IPV4, what="an IPv4 address", convert=ipv4_address)

DHCP = Map(
    {
        "mode": Field(Enum(("server", "proxy"), "server: dnsmasq hands out the addresses. "
                           "proxy (an existing DHCP server hands them out) is refused: "
                           "CentOS 7's GRUB cannot boot UEFI machines from proxy answers"),
                      default="server"),
        "interface": Field(Str(IFACE, "the boot server's NIC dnsmasq answers on (required: "
                               "a DHCP server must not answer on every network it sees)",
                               what="an interface name"), required=True),
        "subnet": Field(Str(IPV4 + r"/[0-9]{1,2}", "the network served, e.g. 10.1.0.0/24",
                            what="an IPv4 network", convert=ipv4_network), required=True),
        "range": Field(Map({
            "start": Field(ADDRESS, required=True),
            "end": Field(ADDRESS, required=True),
        }, "a dynamic address pool (server mode); hosts with a static address in the subnet "
           "get it as a fixed lease")),
        "router": Field(Str(IPV4, "default gateway handed out (server mode)",
                            what="an IPv4 address", convert=ipv4_address)),
        "dns": Field(List(ADDRESS, "name servers handed out (server mode)", max_items=3),
                     default=()),
        "lease_time": Field(Str(LEASE, "lease time: seconds, or with m/h/d/w, or infinite",
                                what="a lease time (12h)"), default="12h"),
    },
    "DHCP by dnsmasq; without it dnsmasq serves TFTP only",
)

PXE = Map(
    {
        "server": Field(SERVER),
        "install_tree": Field(Str(r"local|" + TREE_URL, "install tree of every PXE install "
                                  "(inst.repo and the kickstart's url): an http(s) URL, or "
                                  "local: the base ISO published on the boot server; default: "
                                  "each host's source",
                                  what="local or an http(s) URL", max_length=2048)),
        "verify_packages": Field(Enum(("sample", "all"), "with install_tree: local, the "
                                      "packages checked against the primary metadata's "
                                      "checksums: a sample of 64, or all"), default="sample"),
        "boot_args": Field(List(Str(BOOT_ARG, what="a kernel argument"),
                                "extra installer (kernel) arguments on every host's entry"),
                           default=()),
        "menu_timeout": Field(Int(1, 3600, "seconds the default menu waits before booting "
                                  "the local disk"), default=5),
        "tree_path": Field(Str("/" + PATH, "absolute path of the tree on the boot server, for "
                               "dnsmasq.conf and nginx.conf; default: the output folder",
                               what="an absolute path", max_length=4096)),
        "pxelinux": _file("pxelinux.0 (BIOS); default: searched on this machine"),
        "syslinux_modules": _file("folder with ldlinux.c32 and menu.c32 for pxelinux.0; "
                                  "default: searched on this machine"),
        "shim": _file("the UEFI first stage (BOOTX64.EFI); default: the base ISO's"),
        "grub": _file("the UEFI GRUB (grubx64.efi); default: the base ISO's"),
        "grub_commands": Field(Enum(("auto", "linuxefi", "linux"),
                                    "GRUB's kernel commands: linuxefi/initrdefi (CentOS) or "
                                    "linux/initrd (upstream); auto: by the shipped GRUB"),
                               default="auto"),
        "dhcp": Field(DHCP),
    },
    "the PXE tree: boot server, install tree, boot loaders, optional DHCP",
)


def parse(site_path: Path, given: Located | None) -> PxeSettings | None:
    """The `pxe:` key, with the checks across its keys that the grammar cannot express."""
    if given is None:
        return None
    parsed = PXE.parse(given)

    def resolved(key: str) -> Path | None:
        value = parsed[key]
        return site_path.parent / Path(value).expanduser() if value else None

    return PxeSettings(
        server=parsed["server"],
        install_tree=parsed["install_tree"],
        verify_packages=parsed["verify_packages"],
        boot_args=parsed["boot_args"],
        menu_timeout=parsed["menu_timeout"],
        tree_path=Path(parsed["tree_path"]) if parsed["tree_path"] else None,
        pxelinux=resolved("pxelinux"),
        syslinux_modules=resolved("syslinux_modules"),
        shim=resolved("shim"),
        grub=resolved("grub"),
        grub_commands=parsed["grub_commands"],
        dhcp=_dhcp(parsed["dhcp"], given.value.get("dhcp")),
        origin=f"{given.file}:{given.line}: pxe",
    )


def _dhcp(parsed: dict[str, Any] | None, given: Located | None) -> Dhcp | None:
    if parsed is None or given is None:
        return None
    subnet: ipaddress.IPv4Network = parsed["subnet"]
    where = given.value
    if parsed["mode"] == "proxy":
        # rhboot/grub2 rhel-7.9 grub-core/net/drivers/efi/efinet.c:833 configures the network
        # from the PXE mode's DhcpAck only (never its ProxyOffer); proxy offers reached GRUB
        # upstream in 2021. A UEFI machine
        # would load GRUB from the proxy's answer and then stop at a grub> prompt.
        raise where["mode"].error(
            "proxy DHCP cannot boot UEFI machines: CentOS 7's GRUB reads its TFTP server and "
            "boot file only from the DHCP server's own answer and would stop at a grub> "
            "prompt; use mode: server, or leave out `dhcp` and point the network's DHCP "
            "server at this machine (next-server, boot file per client architecture)")
    pool = None
    if parsed["range"] is not None:
        start, end = parsed["range"]["start"], parsed["range"]["end"]
        for name, address in (("start", start), ("end", end)):
            if address not in subnet:
                raise where["range"].value[name].error(f"{address} is not inside {subnet}")
        if start > end:
            raise where["range"].error(f"start {start} comes after end {end}")
        pool = (start, end)
    if parsed["router"] is not None and parsed["router"] not in subnet:
        raise where["router"].error(f"{parsed['router']} is not inside {subnet}")
    return Dhcp(mode=parsed["mode"], interface=parsed["interface"], subnet=subnet, range=pool,
                router=parsed["router"], dns=parsed["dns"], lease_time=parsed["lease_time"])
