"""The boot entries of a PXE tree, from the templates in kickstarts/pxe/: pxelinux (BIOS),
GRUB (UEFI) and iPXE, each once for the whole tree (the fallback that boots the local disk)
and once per host (install, or local boot once the host has installed).

A host's entries are files named by its MAC (see host_files); builder/pxe/tree.py writes the
install ones, builder/pxe/state.py swaps them for the local ones and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import jinja2

from builder import __version__
from builder.errors import KsbuildError
from builder.kickstart import render_shared, template_dir, template_environment

# Names under kickstarts/pxe/.
SHARED_TEMPLATES = {
    "tftp/pxelinux.cfg/default": "pxelinux-default.cfg.j2",
    "tftp/grub.cfg": "grub.cfg.j2",
    "tftp/boot.ipxe": "boot.ipxe.j2",
}
HOST_TEMPLATES = {
    "pxelinux": "pxelinux-host.cfg.j2",
    "grub": "grub-host.cfg.j2",
    "grub_mac": "grub-host.cfg.j2",  # the same entry under the name tftp/grub.cfg loads
    "ipxe": "host.ipxe.j2",
}
# The kernel commands of GRUB: CentOS's GRUB has linuxefi/initrdefi, upstream GRUB (2.06+)
# only linux/initrd.
GRUB_COMMANDS = {"linuxefi": ("linuxefi", "initrdefi"), "linux": ("linux", "initrd")}


@dataclass(frozen=True)
class BootHost:
    hostname: str
    mac: str  # lower case, colons
    args: str = ""  # the installer's kernel command line (without kernel and initrd)
    done_url: str = ""


def mac_dashes(mac: str) -> str:
    return mac.replace(":", "-")


# {loader: (start, whether the MAC is spelt with dashes, end)} of the path in the tree of a
# host's entry. pxelinux and Red Hat's GRUB look for these names themselves (01- is the ARP
# type of Ethernet); grub.cfg and boot.ipxe load them for upstream GRUB and iPXE.
HOST_FILES = {
    "pxelinux": ("tftp/pxelinux.cfg/01-", True, ""),
    "grub": ("tftp/grub.cfg-01-", True, ""),
    # The same entry, named as GRUB spells $net_default_mac, for tftp/grub.cfg: upstream
    # GRUB reads that first, and CentOS's GRUB 2.02 cannot turn colons into dashes (it
    # has no regexp).
    "grub_mac": ("tftp/grub.cfg-mac-", False, ""),
    "ipxe": ("tftp/ipxe/", True, ".ipxe"),
}


def host_files(mac: str) -> dict[str, str]:
    """{loader: path in the tree} of one host's entries."""
    dashed = mac_dashes(mac)
    return {kind: f"{start}{dashed if dashes else mac}{end}"
            for kind, (start, dashes, end) in HOST_FILES.items()}


def hosts_files(macs: list[str], prefix: str = "") -> list[str]:
    """The paths of host_files() of each of `macs`, after `prefix`: the first loader's of
    every MAC, then the next loader's (`len(HOST_FILES)` times `macs` names their hosts), in
    one comprehension each: a fleet's 40,000 names at once."""
    dashed = [mac_dashes(mac) for mac in macs]
    return [f"{prefix}{start}{name}{end}" for start, dashes, end in HOST_FILES.values()
            for name in (dashed if dashes else macs)]


@lru_cache(maxsize=4)
def _environment(folder: Path, compiled: Path | None) -> jinja2.Environment:
    return template_environment(folder, compiled)


def template(name: str, folder: Path | None = None, compiled: Path | None = None
             ) -> jinja2.Template:
    """`compiled`: a folder that keeps the templates compiled (kickstart.CompiledTemplates):
    compiling a tree's nine was ~20 ms of every `ksbuild build` that writes one."""
    try:
        return _environment(folder or template_dir() / "pxe", compiled).get_template(name)
    except jinja2.TemplateError as exc:
        raise KsbuildError(f"template pxe/{name}: {exc}") from None


def render(name: str, *, compiled: Path | None = None, **values: object) -> str:
    try:
        return template(name, compiled=compiled).render(version=__version__, **values)
    except jinja2.TemplateError as exc:
        raise KsbuildError(f"rendering pxe/{name}: {exc}") from None


class Menus:
    """Renders entries with the templates loaded once (a fleet has 10,000 hosts)."""

    def __init__(self, grub_commands: str = "linux", menu_timeout: int = 5,
                 http_root: str | None = None, compiled: Path | None = None) -> None:
        self.grub_linux, self.grub_initrd = GRUB_COMMANDS[grub_commands]
        self.menu_timeout = menu_timeout
        # Where iPXE and GRUB fetch the kernel and initrd: the boot server over HTTP when
        # known, else TFTP (paths from the TFTP root).
        self.ipxe_root = http_root or ""
        self.grub_root = grub_http_root(http_root) if http_root else ""
        self.compiled = compiled  # see template()
        self.templates = {name: template(name, compiled=compiled)
                          for name in dict.fromkeys(HOST_TEMPLATES.values())}
        # What every host's entries read besides the host: the globals (as Template.render
        # adds them) and the settings.
        self.values = {**next(iter(self.templates.values())).environment.globals,
                       "grub_linux": self.grub_linux, "grub_initrd": self.grub_initrd,
                       "ipxe_root": self.ipxe_root, "grub_root": self.grub_root}

    def shared(self) -> dict[str, str]:
        return {path: render(name, compiled=self.compiled, menu_timeout=self.menu_timeout)
                for path, name in SHARED_TEMPLATES.items()}

    def host(self, host: BootHost, local: bool) -> dict[str, str]:
        """{path in the tree: text} of the host's entries, to install it or to boot locally."""
        values = {**self.values, "host": host, "local": local}
        files = host_files(host.mac)
        texts: dict[str, str] = {}  # by template name: grub and grub_mac are one text
        try:
            for name, entry in self.templates.items():
                texts[name] = render_shared(entry, values)
        except jinja2.TemplateError as exc:
            raise KsbuildError(f"rendering the boot entries of {host.hostname}: {exc}") from None
        return {files[kind]: texts[name] for kind, name in HOST_TEMPLATES.items()}


def grub_http_root(server: str) -> str:
    """GRUB's device for the server's HTTP root, `(http,HOST)`, or "" (TFTP) when the server
    is not on port 80: GRUB 2.02's http module (CentOS 7's) always connects to port 80
    (grub-core/net/http.c: grub_net_tcp_open (server, HTTP_PORT, ...)). It also resumes a
    transfer with `Range: bytes=N-`, which the server must answer with 206. An IPv6 server
    too: GRUB's device syntax separates its fields with commas and reads no brackets."""
    parts = urlsplit(server)
    if parts.port not in (None, 80) or not parts.hostname or ":" in parts.hostname:
        return ""
    return f"(http,{parts.hostname})"


def local_entries(hostname: str, mac: str) -> dict[str, str]:
    """The entries that boot an installed host from its disk (they need nothing else)."""
    return Menus().host(BootHost(hostname, mac), local=True)
