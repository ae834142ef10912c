"""What a base ISO is: CentOS 7 or not, and which of NetInstall, Minimal, DVD or Everything.

All four CentOS 7 ISOs share one volume ID (`CentOS 7 x86_64`), so the ID cannot tell them
apart. What can: `.discinfo` (release on line 2, arch on line 3) and `.treeinfo`
([general] family, version, arch) say it is CentOS 7; a NetInstall ISO has no `repodata/`;
the comps file that `repodata/repomd.xml` names lists the environments and groups the medium
can install. Minimal's comps hold only `core` and `minimal`, so a `source: cdrom` host that
wants `@^virtualization-host-environment` cannot install from it: we refuse before writing.
"""

from __future__ import annotations

import configparser
import gzip
import lzma
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from builder.errors import InputError
from builder.site import Host

# Reads a file of the ISO by its path ("/repodata/repomd.xml"); None if it is not there.
Reader = Callable[[str], "bytes | None"]


@dataclass(frozen=True)
class Flavor:
    name: str  # "NetInstall", "Minimal" or "DVD/Everything"
    release: str  # from .discinfo or .treeinfo, e.g. "7.9"
    environments: frozenset[str]
    groups: frozenset[str]


def detect(read: Reader, what: str) -> Flavor:
    release = _release(read, what)
    repomd = read("/repodata/repomd.xml")
    if repomd is None:
        return Flavor("NetInstall", release, frozenset(), frozenset())
    comps = _comps(read, repomd, what)
    environments = frozenset(_ids(comps, "environment"))
    groups = frozenset(_ids(comps, "group"))
    minimal = "virtualization-host-environment" not in environments and \
        environments <= {"minimal"}
    return Flavor("Minimal" if minimal else "DVD/Everything", release, environments, groups)


def _release(read: Reader, what: str) -> str:
    discinfo = read("/.discinfo")
    treeinfo = read("/.treeinfo")
    if discinfo is None and treeinfo is None:
        raise InputError(f"{what}: not a CentOS 7 install medium (no .discinfo or .treeinfo)")
    if treeinfo is not None:
        general = _treeinfo(treeinfo, what)
        family, version = general.get("family", ""), general.get("version", "")
        if "centos" not in family.lower() or not version.startswith("7"):
            raise InputError(f"{what}: .treeinfo says {family or '?'} {version or '?'}, "
                             "not CentOS 7")
        if general.get("arch", "x86_64") != "x86_64":
            raise InputError(f"{what}: .treeinfo says arch {general['arch']}, not x86_64")
    if discinfo is not None:
        lines = discinfo.decode("utf-8", errors="replace").splitlines()
        release = lines[1].strip() if len(lines) > 1 else ""
        if not re.fullmatch(r"7(?:\.\d+)*", release):
            raise InputError(f"{what}: .discinfo names release {release or '?'}, not CentOS 7")
        return release
    return _treeinfo(treeinfo or b"", what).get("version", "7")


def _treeinfo(data: bytes, what: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(data.decode("utf-8", errors="replace"))
    except configparser.Error as exc:
        raise InputError(f"{what}: .treeinfo is not readable: {exc}".splitlines()[0]) from None
    return dict(parser["general"]) if parser.has_section("general") else {}


def _comps(read: Reader, repomd: bytes, what: str) -> bytes:
    try:
        root = ET.fromstring(repomd)
    except ET.ParseError as exc:
        raise InputError(f"{what}: repodata/repomd.xml is not XML: {exc}") from None
    hrefs: dict[str, str] = {}
    for data in root.iter():
        if data.tag.endswith("}data") or data.tag == "data":
            location = next((c for c in data if c.tag.endswith("location")), None)
            if location is not None and location.get("href"):
                hrefs[data.get("type", "")] = location.get("href", "")
    for kind, unpack in (("group", _plain), ("group_gz", gzip.decompress),
                         ("group_xz", lzma.decompress)):
        if kind in hrefs:
            raw = read("/" + hrefs[kind].lstrip("/"))
            if raw is None:
                raise InputError(f"{what}: repomd.xml names {hrefs[kind]}, which is missing")
            try:
                return unpack(raw)
            except (OSError, lzma.LZMAError, EOFError) as exc:
                raise InputError(f"{what}: cannot unpack {hrefs[kind]}: {exc}") from None
    raise InputError(f"{what}: repodata/repomd.xml names no comps (group) file")


def _plain(data: bytes) -> bytes:
    return data


def _ids(comps: bytes, kind: str) -> Iterable[str]:
    try:
        root = ET.fromstring(comps)
    except ET.ParseError as exc:
        raise InputError(f"the comps file is not XML: {exc}") from None
    for element in root.iter(kind):
        ident = element.find("id")
        if ident is not None and ident.text:
            yield ident.text.strip()


def check_cdrom_hosts(flavor: Flavor, hosts: Iterable[Host], what: str) -> None:
    """Refuse a base that lacks what a `source: cdrom` host installs from it."""
    check_install_source(flavor, [h for h in hosts if h.source == "cdrom"], what,
                         "`source: cdrom`")


def check_install_source(flavor: Flavor, hosts: Iterable[Host], what: str, how: str) -> None:
    """Refuse a base that lacks what `hosts` install from it (`how` says why they do)."""
    for host in hosts:
        packages = host.packages
        if flavor.name == "NetInstall":
            raise InputError(
                f"{what}: a NetInstall ISO carries no packages, and host {host.hostname} has "
                f"{how}; use the DVD or Everything ISO, or an http(s) source")
        missing = [f"@^{packages.environment}"] if \
            packages.environment not in flavor.environments else []
        missing += [f"@{g}" for g in packages.groups if g not in flavor.groups]
        if missing:
            kind = "a Minimal ISO" if flavor.name == "Minimal" else "this ISO"
            raise InputError(
                f"{what}: {kind} lacks {', '.join(missing)}, which host {host.hostname} "
                f"installs with {how}; use the DVD or Everything ISO, or an http(s) "
                "source")
