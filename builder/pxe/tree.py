"""Build a PXE tree that installs a site's hosts over the network, each by its MAC, under BIOS
and UEFI, once.

    OUT/
      tftp/                      served by TFTP (dnsmasq)
        pxelinux.0 ldlinux.c32 menu.c32 libutil.c32 libcom32.c32     BIOS (this machine's)
        pxelinux.cfg/default             unknown machines: a menu that boots the local disk
        pxelinux.cfg/01-<mac>            one per host
        BOOTX64.EFI grubx64.efi          UEFI shim + GRUB (the base ISO's: signed, Secure Boot)
        grub.cfg                         loads grub.cfg-01-<mac> by $net_default_mac, else disk
        grub.cfg-01-<mac>                one per host (the name Red Hat's GRUB looks for itself)
        boot.ipxe, ipxe/<mac>.ipxe       iPXE: chains the per-host script by MAC
        images/vmlinuz images/initrd.img the base's images/pxeboot/ kernel and initrd
      http/ks/<host>.cfg         served by HTTP (nginx or `ksbuild serve`)
      http/images/vmlinuz initrd.img   the same kernel and initrd (hard links), for iPXE and
                                 GRUB, which fetch them over HTTP: a 50 MB initrd over TFTP is
                                 the slowest step of a PXE boot and the first to fail when many
                                 machines boot at once. pxelinux has only TFTP.
      http/centos/<release>/os/x86_64/  with pxe.install_tree: local, the base ISO as the
                                 install tree (builder/pxe/installtree.py; installtree.json
                                 records what was published, for the next rebuild)
      dnsmasq.conf nginx.conf    for the boot server (paths: pxe.tree_path or OUT)
      hosts.json                 the index: each host's MAC and install entries (state.py)
      state/installed/<host>     hosts that have installed (written at run time)

A host's entry boots the installer with `inst.ks=<server>/ks/<host>.cfg`, `inst.repo=`,
`inst.ks.sendmac`, `ip=dhcp` on its boot NIC (`BOOTIF=`) and the site's pxe.boot_args. Its
kickstart's last %post step calls `<server>/done/<host>`; `ksbuild serve` then switches its
three entries to local boot (state.py), and `ksbuild pxe -o OUT --reinstall HOST` switches
them back. Rebuilding the tree keeps installed hosts installed. With nginx instead of
`ksbuild serve`, see the comment at the top of the generated nginx.conf.

The site's `pxe:` key is described in builder/pxe/config.py. Everything is checked and rendered
into a new version folder beside the current one first; OUT is a symlink to the current
version, switched in one rename (builder/output.py Generations), so readers never see a mix.
Which hosts have installed (state/) lives in each version and is carried into the new one
under the tree's lock, held until the switch: the markers and the entries they switched
change together. The bytes depend only on the inputs. Files are 0644 and folders 0755
whatever the umask: dnsmasq and nginx read them as other users.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

from builder import kickstart, network
from builder.errors import InputError
from builder.output import (
    Generations,
    link_new_files,
    same_bytes,
    umask,
    write_bytes,
    write_new,
    write_new_files,
)
from builder.pxe import config as pxeconfig
from builder.pxe import events as pxeevents
from builder.pxe import grubimage
from builder.pxe import menus as pxemenus
from builder.pxe import state as pxestate
from builder.pxe.config import PxeSettings
from builder.schema import parse_option
from builder.site import MEDIA_RELEASES, Host, Site

if TYPE_CHECKING:  # imported where used: only pxe.install_tree: local needs it
    from builder.pxe import installtree

DEFAULT_SETTINGS = PxeSettings(
    server=None, install_tree=None, boot_args=(), menu_timeout=5, tree_path=None,
    pxelinux=None, syslinux_modules=None, shim=None, grub=None, grub_commands="auto",
    dhcp=None)

# Where distributions put syslinux's BIOS files: Debian/Ubuntu, RHEL/Fedora, Arch, old Debian.
PXELINUX_PLACES = (Path("/usr/lib/PXELINUX/pxelinux.0"), Path("/usr/share/syslinux/pxelinux.0"),
                   Path("/usr/lib/syslinux/bios/pxelinux.0"), Path("/usr/lib/syslinux/pxelinux.0"))
MODULE_PLACES = (Path("/usr/lib/syslinux/modules/bios"), Path("/usr/share/syslinux"),
                 Path("/usr/lib/syslinux/bios"), Path("/usr/lib/syslinux"))
# syslinux 5+ splits the core into ldlinux.c32 and menu.c32 needs two libraries; syslinux 4
# (RHEL 7) has only menu.c32.
MODERN_MODULES = ("ldlinux.c32", "menu.c32", "libutil.c32", "libcom32.c32")
ISO_FILES = {
    "tftp/images/vmlinuz": "/images/pxeboot/vmlinuz",
    "tftp/images/initrd.img": "/images/pxeboot/initrd.img",
}
ISO_SHIM = "/EFI/BOOT/BOOTX64.EFI"
ISO_GRUB = "/EFI/BOOT/grubx64.efi"
TFTP_MAX = 1000  # concurrent TFTP transfers dnsmasq serves (its default: 50)
NGINX_LOG_DIR = "/var/log/nginx"
NGINX_PID = "/run/ksbuild-nginx.pid"
SERVE_BACKEND = "127.0.0.1:8081"  # where nginx.conf expects `ksbuild serve` (loopback only)
FILE_MODE = 0o644
DONE_LOG_STATE = Path("state") / "done-log.position"  # how far --done-log has read
DIR_MODE = 0o755


# The sha256 of a file of the previous tree (relative to it), if known; else None.
HashOf = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Options:
    site: Site
    out: Path
    base: Path  # the base ISO (images/pxeboot/, EFI/BOOT/)
    server: str | None = None  # --server; wins over the site's pxe.server
    reinstall: tuple[str, ...] = ()  # hosts to switch back to install
    jobs: int | None = None
    # The live tree this build replaces (write_tree builds into an empty `out` beside it):
    # its installed hosts are carried over, its unchanged files hard-linked.
    previous: Path | None = None
    # Where the tree is served from, named in dnsmasq.conf and nginx.conf unless the site
    # sets pxe.tree_path: the final path, not the temporary one it is written to.
    served_as: Path | None = None
    # Hosts whose files in `previous` (PXE kickstart, install entries, index line) are
    # current (the caller knows their inputs did not change and the files are the ones it
    # wrote): hard-linked (the line copied) from there, not rendered and compared again.
    reuse_hosts: frozenset[str] = frozenset()
    # Hosts whose install entries and index line in `previous` are current, though their PXE
    # kickstart is not (a field of `defaults` changed that no entry reads): the entries
    # hard-linked (or left, where `present`), the line copied, none rendered again.
    same_entry_hosts: frozenset[str] = frozenset()
    # PXE kickstarts the caller rendered (hostname -> text); the others are rendered here.
    kickstarts: Mapping[str, str] = field(default_factory=dict)
    # PXE kickstarts the caller rendered and wrote already, with the tree's writer
    # (Plan.kickstarts): hostname -> their sha256.
    written: Mapping[str, str] = field(default_factory=dict)
    # The sha256 of the previous tree's files, where the caller knows them (its manifest).
    previous_hash: HashOf | None = None
    # Whether `out` holds a file (relative) already, a hard link to the same file of
    # `previous`: a build's new generation made from its spare (builder/build.py) holds the
    # unchanged hosts' files. Nothing else is in `out`.
    present: Callable[[str], bool] = field(default=lambda relative: False)
    # Hosts of reuse_hosts whose PXE kickstart and install entries are all `present`: not
    # looked at one file at a time (10,000 hosts when one of a large fleet changed).
    present_hosts: frozenset[str] = frozenset()
    # The base ISO and the boot loader files are those the previous tree's copies were made
    # from (the caller knows by their key).
    loaders_unchanged: bool = False
    # A folder that keeps the templates compiled (menus.template).
    compiled: Path | None = None


@dataclass
class Result:
    out: Path
    hosts: int
    installed: list[str]  # hosts kept at local boot
    reinstalled: list[str]
    grub_commands: str
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase
    install_tree: installtree.Published | None = None  # with pxe.install_tree: local
    # sha256 of the files written from bytes in memory (relative to the tree): the manifest
    # need not read them back.
    hashes: dict[str, str] = field(default_factory=dict)
    # Files (relative to the tree) the writer found in it already with the bytes to write (of
    # the spare it reuses: the previous tree's): the build takes them for the files OUT has.
    kept: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Settings and checks, before anything is written.


def settings_of(site: Site, server: str | None) -> tuple[PxeSettings, str]:
    settings = site.pxe or DEFAULT_SETTINGS
    chosen = server or settings.server
    if not chosen:
        raise InputError(f"{site.path}: a PXE tree needs the boot server's URL: "
                         "pxe: {server: http://HOST[:PORT]} in the site, or --server")
    return settings, chosen.rstrip("/")


def check_hosts(site: Site, settings: PxeSettings) -> None:
    for host in site.hosts:
        if not host.mac:
            raise InputError(f"{site.path}: host {host.hostname} has no mac: a PXE boot finds "
                             "its host by the MAC of its boot NIC; add `mac:` to the host")
        if settings.install_tree is None and host.source == "cdrom":
            raise InputError(f"{site.path}: host {host.hostname} installs from cdrom; a PXE "
                             "install needs an http(s) install tree: set its `source` or "
                             "pxe.install_tree")


def preflight(site: Site, server: str | None, served_as: Path) -> None:
    """The checks of a tree build that need no base ISO, for a caller that must finish them
    before writing anything (`ksbuild build`)."""
    settings, chosen = settings_of(site, server)
    server_url(chosen)
    check_hosts(site, settings)
    find_bios_loaders(settings)
    if settings.tree_path is not None:
        config_path(settings.tree_path, f"{settings.origin}.tree_path")
    else:
        config_path(served_as, "-o")


def local_install_tree(site: Site, settings: PxeSettings, server: str,
                       base: BaseIso) -> tuple[PxeSettings, str | None]:
    """With pxe.install_tree: local, the settings with the published tree's URL as the install
    tree, and its folder under http/; the base must carry what every host installs."""
    if settings.install_tree != "local":
        return settings, None
    # Here: a tree without a local install tree needs none of them (~10 ms of start-up).
    from builder.media import flavor as media_flavor
    from builder.media import isofs
    from builder.pxe import installtree

    what = str(base.path)
    found = media_flavor.detect(lambda path: isofs.read(base.iso, path), what)
    media_flavor.check_install_source(found, site.hosts, what, "pxe.install_tree: local")
    release = site.media.release if site.media and site.media.release else \
        installtree.full_release(found.release, MEDIA_RELEASES)
    folder = installtree.folder_for(release)
    return replace(settings, install_tree=f"{server}/{folder}/"), folder


def server_url(server: str) -> str:
    """The server URL (--server or pxe.server) checked by the site file's grammar: the raw
    text is what the boot entries and kickstarts carry, so a newline or a path in it must
    never get through (urlsplit would drop the newline and accept it)."""
    checked: str = parse_option(pxeconfig.SERVER, server, "--server")
    return checked


# ---------------------------------------------------------------------------------------------
# Boot loaders and the base ISO.


@dataclass(frozen=True)
class BiosLoaders:
    pxelinux: Path
    modules: dict[str, Path]  # name in the TFTP root -> file on this machine


def find_bios_loaders(settings: PxeSettings) -> BiosLoaders:
    pxelinux = settings.pxelinux or next((p for p in PXELINUX_PLACES if p.is_file()), None)
    if pxelinux is None or not pxelinux.is_file():
        where = settings.pxelinux or ", ".join(str(p) for p in PXELINUX_PLACES)
        raise InputError(f"pxelinux.0 not found ({where}): install syslinux's PXE files "
                         "(Debian: pxelinux syslinux-common; RHEL: syslinux-tftpboot) or set "
                         "pxe.pxelinux")
    places = (settings.syslinux_modules,) if settings.syslinux_modules else MODULE_PLACES
    for folder in places:
        # pxelinux.0 is compressed: which syslinux it is shows in its modules' folder.
        modern = (folder / "ldlinux.c32").is_file()
        wanted = MODERN_MODULES if modern else ("menu.c32",)
        if all((folder / name).is_file() for name in wanted):
            return BiosLoaders(pxelinux, {name: folder / name for name in wanted})
    raise InputError(f"menu.c32 (and with syslinux 5+, ldlinux.c32, libutil.c32, libcom32.c32) "
                     f"not found in {', '.join(str(p) for p in places)}: install syslinux's "
                     "BIOS modules (Debian: syslinux-common) or set pxe.syslinux_modules")


class BaseIso:
    """Files of the base ISO, read with pycdlib (Rock Ridge, else Joliet, else ISO 9660)."""

    def __init__(self, path: Path) -> None:
        from builder.media.baseiso import open_base_file, read_base_head

        self.path = path
        read_base_head(path)  # a regular file, an ISO, not truncated: else one line
        self.handle: BinaryIO = open_base_file(path)
        self._iso: Any = None

    @property
    def iso(self) -> Any:
        """The image's pycdlib object, opened on first use: pycdlib reads every directory
        record on open (0.2 s for a DVD's 6,000 files), which a rebuild that finds the
        tree's copies of the kernel and loaders current never needs."""
        if self._iso is None:
            import pycdlib

            iso = pycdlib.PyCdlib()
            try:
                iso.open_fp(self.handle)
            except Exception as exc:  # pycdlib raises its own and plain errors on bad images
                raise InputError(f"{self.path}: not a readable ISO 9660 image: {exc}") from None
            self._iso = iso
        return self._iso

    def _where(self, path: str) -> dict[str, str]:
        if self.iso.has_rock_ridge():
            return {"rr_path": path}
        if self.iso.has_joliet():
            return {"joliet_path": path}
        return {"iso_path": path.upper() + ";1"}

    def has(self, path: str) -> bool:
        from pycdlib.pycdlibexception import PyCdlibException

        try:
            self.iso.get_record(**self._where(path))
        except PyCdlibException:
            return False
        return True

    def copy(self, path: str, target: Path) -> None:
        if not self.has(path):
            raise InputError(f"{self.path}: no {path} in the ISO (a CentOS 7 install ISO has "
                             "images/pxeboot/ and EFI/BOOT/)")
        target.unlink(missing_ok=True)  # a new file: never written through a shared link
        with target.open("wb") as out:
            self.iso.get_file_from_iso_fp(out, **self._where(path))
        os.chmod(target, FILE_MODE)

    def close(self) -> None:
        if self._iso is not None:
            self._iso.close()
        self.handle.close()

    def __enter__(self) -> BaseIso:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Writing.


QUEUED_MAX = 4096  # files a Writer holds before writing them


class Writer:
    """Files under a fresh folder with fixed modes (the umask must not change what is served)."""

    def __init__(self, root: Path, previous: Path | None = None,
                 previous_hash: HashOf | None = None,
                 present: Callable[[str], bool] = lambda relative: False) -> None:
        self.root = root
        self.present = present  # hard links to the previous tree's files there already
        # The tree this one replaces: a file with the same bytes there is hard-linked, not
        # written (a rebuild after one host changed writes that host's files only; writing
        # 40,000 entries and then swapping each for a link cost ~20 s). `previous_hash`
        # tells the sha256 of a previous file where known (a rebuild of every host compares
        # hashes instead of reading 60,000 files).
        self.previous = previous
        self.previous_hash = previous_hash or (lambda relative: None)
        self.hashes: dict[str, str] = {}  # sha256 of the files given as bytes
        self.queued: list[tuple[str, bytes]] = []
        self.twins: list[tuple[str, str]] = []  # (file, a name for it) linked by flush()
        self.kept: list[str] = []  # those `present` with the bytes to write: left as they are
        # Files copied in (loaders, kernel, initrd), compared with the previous tree's after.
        self.copied: list[str] = []
        # 40,000 files for a large fleet: skip the chmod when the umask leaves 0644 as it is.
        self.fix_mode = umask() & FILE_MODE != 0

    def folder(self, relative: str) -> Path:
        path = self.root
        for part in Path(relative).parts:  # each level its mode, not only the last
            path = path / part
            path.mkdir(exist_ok=True)
            os.chmod(path, DIR_MODE)
        return path

    def text(self, relative: str, text: str) -> None:
        self.data(relative, text.encode())

    def data(self, relative: str, data: bytes) -> None:
        sha = self.hashes[relative] = hashlib.sha256(data).hexdigest()
        if self._linked(relative, data, sha):
            return
        self.queued.append((f"{self.root}/{relative}", data))  # written by flush()
        if len(self.queued) >= QUEUED_MAX:  # a bounded copy of the bytes in memory
            self.flush()

    def twin(self, relative: str, of: str, data: bytes) -> None:
        """data() of `relative`, whose `data` data() gave `of` before: a hard link to that
        file, one inode for both names. A new inode is most of a new file's cost, and more than
        all of it on ext4 without a journal in the minutes after many files were deleted: its
        allocator then passes over each free inode deleted in the last 60 s (300 s more while
        the inode's table block is not written back), one by one, for each new file (Linux
        fs/ext4/ialloc.c, find_inode_bit and recently_deleted, RECENTCY_MIN/RECENTCY_DIRTY)."""
        sha = self.hashes[relative] = self.hashes[of]
        if not self._linked(relative, data, sha):
            self.twins.append((f"{self.root}/{of}", f"{self.root}/{relative}"))

    def now(self, relative: str, data: bytes) -> str:
        """data(), written at once, in this process (a render worker, which knows no
        `hashes`): the sha256 of the file."""
        sha = hashlib.sha256(data).hexdigest()
        if not self._linked(relative, data, sha):
            write_new(f"{self.root}/{relative}", data, FILE_MODE, exact=self.fix_mode)
        return sha

    def _linked(self, relative: str, data: bytes, sha: str) -> bool:
        """A hard link to the previous tree's file, if it has the same bytes."""
        if self.previous is None:
            return False
        was = self.previous_hash(relative)
        source = f"{self.previous}/{relative}"  # a string: a Path costs ~4 us, 40,000 times
        if same_bytes(source, data, sha, was):
            self.link(source, relative)
            return True
        return False

    def flush(self) -> None:
        """Write the files queued by data(), in this thread: a tree's 40,000 entries are
        written while render workers take both cores (start_tree), where more threads
        only cost more CPU (output.IO_THREADS)."""
        write_new_files(self.queued, FILE_MODE, exact=self.fix_mode, threads=1)
        link_new_files(self.twins, threads=1)  # after their files, written above or before
        self.queued, self.twins = [], []

    def link(self, source: str | Path, relative: str) -> None:
        """A hard link to a file of the previous tree (written 0644 by a Writer); none where
        the tree has it already (`present`), noted as `kept`. Strings, not Paths, for speed:
        50,000 links when one host of a large fleet changed."""
        if self.present(relative):
            self.kept.append(relative)
        else:
            os.link(source, f"{self.root}/{relative}")

    def link_recorded(self, relative: str) -> bool:
        """Link the previous tree's file if it is the one recorded (previous_hash knows it):
        a loader, kernel or initrd copied from the same source (an initrd is 50 MB)."""
        if self.previous is None or self.previous_hash(relative) is None:
            return False
        self.link(self.previous / relative, relative)
        return True

    def copy(self, source: Path, relative: str) -> Path:
        target = self.root / relative
        target.unlink(missing_ok=True)  # a new file: never written through a shared link
        shutil.copyfile(source, target)
        os.chmod(target, FILE_MODE)
        self.copied.append(relative)
        return target

    def extract(self, base: BaseIso, iso_path: str, relative: str) -> None:
        """The base ISO's file `iso_path` as `relative`."""
        base.copy(iso_path, self.root / relative)
        self.copied.append(relative)


def boot_host(host: Host, server: str, settings: PxeSettings) -> pxemenus.BootHost:
    assert host.mac is not None
    tree = settings.install_tree or host.source
    args = [f"inst.ks={server}/ks/{host.hostname}.cfg", "inst.ks.sendmac", f"inst.repo={tree}",
            "ip=dhcp", f"BOOTIF=01-{pxemenus.mac_dashes(host.mac)}",
            *network.kernel_args(host.nic_names), *settings.boot_args]
    return pxemenus.BootHost(host.hostname, host.mac, " ".join(args),
                             f"{server}/done/{host.hostname}")


def dhcp_leases(site: Site, settings: PxeSettings) -> list[str]:
    """dnsmasq dhcp-host values: each host's fixed address in the DHCP subnet, or a pool one."""
    dhcp = settings.dhcp
    if dhcp is None or dhcp.mode != "server":
        return []
    leases = []
    for host in sorted(site.hosts, key=lambda h: h.hostname):
        install = host.network.install
        given = [install.address] if install and install.address else []
        addresses = [a.ip for a in (*given, *host.network.addresses) if a.ip in dhcp.subnet]
        if addresses:
            leases.append(f"{host.mac},{addresses[0]},{host.short_name}")
        elif dhcp.range is not None:
            leases.append(f"{host.mac},{host.short_name}")
        else:
            raise InputError(f"{settings.origin}.dhcp: host {host.hostname} has no static "
                             f"address in {dhcp.subnet} and there is no range to lease one "
                             "from; give it an address there or add dhcp.range")
    return leases


def nginx_listen(server: str) -> tuple[str, str | None]:
    """nginx's `listen` value and server_name for the server URL (an IPv6 address in
    brackets, as nginx wants it: `listen [::1]:8080`)."""
    parts = urlsplit(server)
    host = parts.hostname or ""
    port = parts.port or 80
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return str(port), host
    return (f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"), None


def config_path(path: Path, what: str) -> Path:
    """A path dnsmasq.conf and nginx.conf can both carry (quoted, `config_quote`): absolute,
    no control character (a newline would end the directive and start another, which
    dnsmasq would run as root in a dhcp-script=), and no `$`, which nginx expands as a
    variable in `root` and has no escape for."""
    path = path.absolute()
    text = str(path)
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127 or c == "$"), None)
    if bad is not None:
        raise InputError(f"{what}: {text!r}: dnsmasq.conf and nginx.conf cannot name a path "
                         f"with {bad!r} in it; choose another folder")
    return path


def config_quote(text: str) -> str:
    """A value in double quotes for nginx.conf and dnsmasq.conf: both read `\\` and `\"`
    inside quotes, and take spaces, `,`, `;`, `#` and `{}` there literally (nginx:
    ngx_conf_read_token; dnsmasq 2.90: option.c read_file, which hides commas in quotes)."""
    if re.fullmatch(r"[A-Za-z0-9._/+@=~%:-]+", text):
        return text  # nothing either file reads specially: as it is, easier to read
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_configs(site: Site, settings: PxeSettings, server: str, tree: Path,
                   compiled: Path | None = None) -> dict[str, str]:
    listen, name = nginx_listen(server)
    return {
        "dnsmasq.conf": pxemenus.render("dnsmasq.conf.j2", compiled=compiled, tree=tree,
                                        dhcp=settings.dhcp, leases=dhcp_leases(site, settings),
                                        tftp_max=TFTP_MAX,
                                        tftp_root=config_quote(f"{tree}/tftp"),
                                        tree_sh=shlex.quote(str(tree))),
        "nginx.conf": pxemenus.render("nginx.conf.j2", compiled=compiled, tree=tree,
                                      listen=listen, server_name=name, log_dir=NGINX_LOG_DIR,
                                      pid_file=NGINX_PID, backend=SERVE_BACKEND,
                                      root=config_quote(f"{tree}/http"),
                                      tree_sh=shlex.quote(str(tree))),
    }


def _loaders(writer: Writer, base: BaseIso, settings: PxeSettings, unchanged: bool) -> str:
    """Copy the BIOS and UEFI loaders, kernel and initrd (or, `unchanged`: the sources are
    those of the previous tree's copies, link those still as recorded); return the GRUB
    commands to use."""
    bios = find_bios_loaders(settings)
    recorded = writer.link_recorded if unchanged else lambda relative: False
    if not recorded("tftp/pxelinux.0"):
        writer.copy(bios.pxelinux, "tftp/pxelinux.0")
    for name, source in sorted(bios.modules.items()):
        if not recorded(f"tftp/{name}"):
            writer.copy(source, f"tftp/{name}")
    for relative, iso_path in ISO_FILES.items():
        # The same bytes for the HTTP side (one copy on disk).
        served = f"http/{relative.split('/', 1)[1]}"
        if recorded(relative) and recorded(served):
            continue
        writer.extract(base, iso_path, relative)
        os.link(writer.root / relative, writer.root / served)
        writer.copied.append(served)
    for given, iso_path, name in ((settings.shim, ISO_SHIM, "BOOTX64.EFI"),
                                  (settings.grub, ISO_GRUB, "grubx64.efi")):
        if given is not None and not given.is_file():
            raise InputError(f"{settings.origin}: {given}: no such file")
        if recorded(f"tftp/{name}"):
            continue
        if given is not None:
            writer.copy(given, f"tftp/{name}")
        else:
            writer.extract(base, iso_path, f"tftp/{name}")
    if settings.grub_commands != "auto":
        return settings.grub_commands
    grub = (writer.root / "tftp" / "grubx64.efi").read_bytes()
    return "linuxefi" if grubimage.has_linuxefi(grub) else "linux"


def _check_reinstall(site: Site, names: Iterable[str]) -> list[str]:
    return sorted({site.host(name).hostname for name in names})


def build_tree(options: Options) -> Result:
    """Build the tree at `options.out` as a new version beside the current one and switch to
    it in one rename (output.Generations): a reader (dnsmasq, nginx, `ksbuild serve`) sees
    the old tree or the new, never a mix, even if this process is killed. The tree's lock is
    held from carrying over which hosts have installed until the switch."""
    out = options.out.absolute()
    versions = Generations(out)
    with pxestate.TreeLock(out) as lock, versions.new() as new:
        result = write_tree(replace(options, out=new, previous=out, served_as=out), lock)
        versions.switch(new)
        versions.sweep()  # dead runs' versions (the lock is held: no other build switches)
    return replace(result, out=out)


def write_tree(options: Options, lock: pxestate.TreeLock,
               opened: tuple[BaseIso, Plan] | None = None,
               started: Started | None = None) -> Result:
    """Check and render everything, write the tree into the empty folder `options.out`, then
    acquire `lock` (the live tree's) and carry over from `options.previous` which hosts have
    installed. Returns with the lock held: the caller releases it once the new tree is in
    place. Files equal to the previous tree's are hard links to them (an unchanged file
    keeps its identity: a rebuild after a change to one host rewrites that host's files).
    `opened`: the base ISO and the plan, when the caller made them (to render the PXE
    kickstarts with its own); `started`: what start_tree() wrote with them meanwhile."""
    if opened is not None:
        return _write_tree(options, lock, *opened, started)
    # Opened once: pycdlib parses every directory record on open (~1 s for a DVD).
    with BaseIso(options.base) as base:
        return _write_tree(options, lock, base, plan(options, base))


@dataclass(frozen=True)
class Plan:
    """What a tree build decides before it renders anything: the settings (with a local
    install tree's URL), the server, where the tree is served from, each host's boot entry
    values."""
    settings: PxeSettings
    server: str
    tree_path: Path
    tree_folder: str | None  # with pxe.install_tree: local, its folder under http/
    hosts: BootHosts
    reinstall: list[str]

    def kickstarts(self, hosts: Iterable[Host], writer: Writer | None = None
                   ) -> kickstart.Variant:
        """The PXE kickstarts of `hosts`: installed from the install tree, reporting done
        and events to the server. `writer`: each written where it is rendered (its sha256
        rendered instead of its text; Options.written)."""
        output = None if writer is None else functools.partial(_write_kickstart, writer)
        return kickstart.Variant(tuple(hosts), self._kickstart_values, self._installs, output)

    def _kickstart_values(self, host: Host) -> dict[str, str]:
        return {"pxe_done_url": self.hosts[host.hostname].done_url,
                "pxe_events_url": f"{self.server}/events/{host.hostname}"}

    def _installs(self, host: Host) -> Host:
        tree = self.settings.install_tree
        return replace(host, source=tree) if tree is not None else host


def _write_kickstart(writer: Writer, host: Host, text: str) -> str:
    return writer.now(f"http/ks/{host.hostname}.cfg", text.encode())


def plan(options: Options, base: BaseIso) -> Plan:
    site = options.site
    settings, server = settings_of(site, options.server)
    server = server_url(server)
    check_hosts(site, settings)
    reinstall = _check_reinstall(site, options.reinstall)
    tree_path = config_path(settings.tree_path, f"{settings.origin}.tree_path") \
        if settings.tree_path else config_path(options.served_as or options.out.absolute(), "-o")
    settings, tree_folder = local_install_tree(site, settings, server, base)
    return Plan(settings, server, tree_path, tree_folder, BootHosts(site, server, settings),
                reinstall)


class BootHosts(Mapping[str, pxemenus.BootHost]):
    """hostname -> the host's boot_host(), made when first asked for: a rebuild after one
    host of 10,000 changed needs few (the others' entries and index lines are linked)."""

    def __init__(self, site: Site, server: str, settings: PxeSettings) -> None:
        self.hosts = {host.hostname: host for host in site.hosts}
        self.server, self.settings = server, settings
        self.made: dict[str, pxemenus.BootHost] = {}

    def __getitem__(self, name: str) -> pxemenus.BootHost:
        made = self.made.get(name)
        if made is None:
            made = self.made[name] = boot_host(self.hosts[name], self.server, self.settings)
        return made

    def __iter__(self) -> Iterator[str]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)


@dataclass
class Started:
    """What start_tree() wrote."""
    writer: Writer
    menus: pxemenus.Menus
    grub_commands: str
    published: installtree.Published | None
    seconds: dict[str, float]


def _phases() -> tuple[dict[str, float], Callable[[str], None]]:
    """The wall time of each phase, and the function that ends one."""
    seconds: dict[str, float] = {}
    mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        seconds[name] = now - mark
        mark = now
    return seconds, phase


def _previous(options: Options, plan: Plan) -> tuple[Path, Path, Path | None, frozenset[str]]:
    """The folder written, the tree it replaces, that tree if it exists, and the hosts whose
    files are taken from it."""
    temp = options.out.absolute()
    previous = options.previous or temp
    old = previous if previous != temp and previous.is_dir() else None
    reused = options.reuse_hosts & set(plan.hosts) if old is not None else frozenset()
    return temp, previous, old, reused


def open_writer(options: Options, plan: Plan) -> Writer:
    """The tree's writer, its folders made (for the PXE kickstarts written as they are
    rendered, Plan.kickstarts, before start_tree)."""
    temp, _, old, _ = _previous(options, plan)
    temp.mkdir(exist_ok=True)
    os.chmod(temp, DIR_MODE)
    writer = Writer(temp, old, options.previous_hash, options.present)
    for folder in ("tftp/pxelinux.cfg", "tftp/ipxe", "tftp/images", "http/ks",
                   "http/images", str(pxestate.INSTALLED)):
        writer.folder(folder)
    return writer


def start_tree(options: Options, base: BaseIso, plan: Plan,
               writer: Writer | None = None) -> Started:
    """The part of the tree that needs no PXE kickstart: boot loaders, kernel, initrd, menus,
    server configs, each host's boot entries and index line (`ksbuild build` writes it while
    its workers render the kickstarts; _write_tree the rest). `writer`: open_writer's."""
    site, settings, hosts = options.site, plan.settings, plan.hosts
    temp, previous, old, reused = _previous(options, plan)
    seconds, phase = _phases()
    configs = server_configs(site, settings, plan.server, plan.tree_path, options.compiled)
    phase("checks and server configs")
    writer = writer or open_writer(options, plan)
    grub_commands = _loaders(writer, base, settings, options.loaders_unchanged)
    phase("boot loaders, kernel, initrd")
    published = None
    if plan.tree_folder is not None:
        published = _publish(base, temp, plan.tree_folder, previous,
                             settings.verify_packages == "all")
        phase("install tree published and verified")
    menus = pxemenus.Menus(grub_commands, settings.menu_timeout, http_root=plan.server,
                           compiled=options.compiled)
    for relative, text in {**menus.shared(), **configs}.items():
        writer.text(relative, text)
    same = options.same_entry_hosts.intersection(hosts) - reused if old is not None \
        else frozenset()
    lines = {name: _write_host(writer, menus, hosts[name])
             for name in sorted(set(hosts) - reused - same)}
    if old is not None:
        _link_entries(writer, old, [hosts[name] for name in sorted(same)])
    _write_index(writer, old, plan.server, reused | same, lines,
                 lambda name: _index_line(hosts[name], menus.host(hosts[name], local=False)))
    writer.flush()  # here, while `ksbuild build`'s workers render: not after them
    phase("entries and index written")
    return Started(writer, menus, grub_commands, published, seconds)


def _write_tree(options: Options, lock: pxestate.TreeLock, base: BaseIso, plan: Plan,
                started: Started | None = None) -> Result:
    site, hosts = options.site, plan.hosts
    temp, previous, old, reused = _previous(options, plan)
    seconds, phase = _phases()
    texts, written = dict(options.kickstarts), options.written
    fresh = [h for h in site.hosts
             if h.hostname not in reused and h.hostname not in texts and h.hostname not in written]
    start = functools.cache(lambda: started or start_tree(options, base, plan))
    if fresh:
        texts.update(kickstart.render_variants(site, {"pxe": plan.kickstarts(fresh)},
                                               jobs=options.jobs, meanwhile=start)["pxe"])
    phase("kickstarts (render + validate)")
    begun = start()
    writer, menus = begun.writer, begun.menus
    for name in sorted(set(hosts) - reused):
        if name in written:
            writer.hashes[f"http/ks/{name}.cfg"] = written[name]
        else:
            writer.text(f"http/ks/{name}.cfg", texts[name])
    writer.flush()
    phase("kickstarts written")
    if old is not None:
        for name in sorted(reused - options.present_hosts):
            writer.link(f"{old}/http/ks/{name}.cfg", f"http/ks/{name}.cfg")
        link_unchanged(temp, old, writer.copied)
        phase("unchanged files linked to the previous tree's")

    lock.acquire()  # held until the new tree is in place (the caller releases it)
    before = pxestate.installed(previous) & set(hosts)
    keep = before - set(plan.reinstall)
    if old is not None:
        # Under the lock: a host without a marker has its install entries in `old`.
        _link_entries(writer, old, [hosts[n] for n in sorted(reused - before
                                                             - options.present_hosts)])
        for name in sorted(reused & before):  # the old ones are local: install ones here
            _write_host(writer, menus, hosts[name])
        writer.flush()
    pxestate.carry_over(previous, temp, {name: hosts[name].mac for name in keep}, keep)
    carried = {relative for name in keep
               for relative in pxemenus.host_files(hosts[name].mac).values()}
    for relative in carried:  # their entries are the local ones now, not the bytes written
        writer.hashes.pop(relative, None)
    pxeevents.carry_over(previous, temp)
    if (previous / DONE_LOG_STATE).is_file():
        shutil.copyfile(previous / DONE_LOG_STATE, temp / DONE_LOG_STATE)
    phase("entries of unchanged hosts linked, state carried over")
    return Result(temp, len(hosts), sorted(keep), sorted(set(plan.reinstall) & before),
                  begun.grub_commands, [f"{name} had not installed; it installs anyway"
                                        for name in plan.reinstall if name not in before],
                  {**begun.seconds, **seconds}, begun.published, writer.hashes,
                  [name for name in writer.kept if name not in carried])


def _write_host(writer: Writer, menus: pxemenus.Menus, host: pxemenus.BootHost) -> bytes:
    """Write a host's install entries (one file for those with the same text: GRUB's two
    names); its index line."""
    entries = menus.host(host, local=False)
    firsts: dict[str, str] = {}  # text -> the first entry with it
    for relative, entry in entries.items():
        first = firsts.setdefault(entry, relative)
        if first == relative:
            writer.text(relative, entry)
        else:
            writer.twin(relative, first, entry.encode())
    return _index_line(host, entries)


def _index_line(host: pxemenus.BootHost, entries: dict[str, str]) -> bytes:
    return pxestate.index_line(pxestate.IndexedHost(host.hostname, host.mac, entries))


def _write_index(writer: Writer, old: Path | None, server: str, reused: frozenset[str],
                 lines: dict[str, bytes], line_of: Callable[[str], bytes]) -> None:
    """hosts.json: the `old` tree's with the `lines` of the hosts not `reused` spliced in
    (pxestate.splice_index: 23 MB for 10,000 hosts, not split and joined again, nor hashed
    when no line changed: its recorded file linked); where that file is missing or not as
    expected, every host's line, the reused ones' rendered again (`line_of`)."""
    previous = _read(old / pxestate.INDEX) if old is not None and reused else None
    data = None if previous is None else pxestate.splice_index(previous, server, reused, lines)
    if data is None:
        data = pxestate.index_from_lines(server, {**{name: line_of(name) for name in reused},
                                                  **lines})
    elif data is previous and writer.link_recorded(pxestate.INDEX):
        return
    writer.data(pxestate.INDEX, data)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _link_entries(writer: Writer, old: Path, hosts: list[pxemenus.BootHost]) -> None:
    """Hard links to the install entries of unchanged hosts in the previous tree."""
    for host in hosts:
        for relative in pxemenus.host_files(host.mac).values():
            writer.link(f"{old}/{relative}", relative)


def link_unchanged(new: Path, old: Path, candidates: Iterable[str]) -> None:
    """Replace each of the `candidates` (relative) of `new` that has the same bytes in `old`
    by a hard link to the old one."""
    for relative in candidates:
        path = new / relative
        if _same_file(path, old / relative):
            temp = path.with_name(f".{path.name}.link")
            try:
                os.link(old / relative, temp)
            except OSError:
                continue
            os.replace(temp, path)


def _same_file(new: Path, old: Path) -> bool:
    """Same bytes: the same inode (an install tree's files are hard-linked when unchanged),
    else same size and contents, compared in chunks (an install tree holds 4 GB)."""
    try:
        if new.samefile(old):
            return False  # already one file
        if not old.is_file() or old.is_symlink() or new.stat().st_size != old.stat().st_size:
            return False
        with new.open("rb") as a, old.open("rb") as b:
            while True:
                chunk = a.read(1 << 20)
                if chunk != b.read(1 << 20):
                    return False
                if not chunk:
                    return True
    except OSError:
        return False


def _publish(base: BaseIso, temp: Path, folder: str, previous: Path,
             all_packages: bool) -> installtree.Published:
    from builder.pxe import installtree  # only pxe.install_tree: local needs it

    fd = base.handle.fileno()
    published = installtree.publish(base.iso, fd, installtree.iso_identity(fd), temp, folder,
                                    previous if previous.is_dir() else None)
    published.packages, published.packages_hashed = installtree.verify(
        temp / "http" / folder, all_packages, what=f"{base.path} (as http/{folder})")
    return published


# ---------------------------------------------------------------------------------------------
# Switching hosts of an existing tree (no site needed).


def switch(tree: Path, done: Iterable[str] = (), reinstall: Iterable[str] = (),
           note: str = "") -> list[str]:
    """Mark hosts installed (local boot) or not (install); lines saying what changed."""
    lines = []
    for name, flag in [(n, True) for n in done] + [(n, False) for n in reinstall]:
        changed = pxestate.set_installed(tree, name, flag, note)
        what = "boots from its disk" if flag else "installs on its next network boot"
        lines.append(f"{name}: {what}{'' if changed else ' (already)'}")
    return lines


def require_tree(tree: Path) -> Path:
    if not (tree / pxestate.INDEX).is_file():
        raise InputError(f"{tree}: not a ksbuild PXE tree (no {pxestate.INDEX})")
    return tree



def apply_done_log(tree: Path, log: Path) -> list[str]:
    """Switch the hosts that nginx's done log (`<time> <client> <host>` lines) names since the
    last call to local boot. The position reached is kept in the tree, so a host switched back
    with --reinstall is not switched to local again by an old line; a rotated log (another
    inode, or shorter than the position) is read from its start."""
    try:
        handle = log.open("rb")
    except OSError as exc:
        raise InputError(f"--done-log {log}: {exc.strerror or exc}") from None
    state = tree / DONE_LOG_STATE
    with handle:
        info = os.fstat(handle.fileno())
        inode, position = _log_position(state)
        if inode != info.st_ino or position > info.st_size:
            position = 0
        handle.seek(position)
        data = handle.read()
    complete = data[:data.rfind(b"\n") + 1]  # a line nginx is still writing waits for next time
    index = pxestate.read_index(tree)
    lines = []
    for raw in complete.decode(errors="replace").splitlines():
        words = raw.split()
        if len(words) != 3:
            continue
        name = words[2].lower()
        if name not in index.hosts:
            lines.append(f"{name}: not in this PXE tree (ignored)")
            continue
        lines += switch(tree, done=[name], note=f"reported by {words[1]} at {words[0]}")
    with pxestate.locked(tree):
        write_bytes(state, f"{info.st_ino} {position + len(complete)}\n".encode())
    return lines


def _log_position(state: Path) -> tuple[int, int]:
    try:
        inode, position = state.read_text().split()
        return int(inode), int(position)
    except (OSError, ValueError):
        return -1, 0
