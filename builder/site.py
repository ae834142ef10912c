"""Load a site file: YAML -> located values -> the grammar -> a frozen, checked model.

Everything is validated before anything is written: every error names the file, the line,
the path into the document and what is wrong.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import pickle
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from functools import cached_property, lru_cache
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from builder import network as net
from builder import sitecache
from builder.errors import InputError
from builder.gcpause import no_gc
from builder.network import NETWORK, Network
from builder.pxe.config import PXE, PxeSettings
from builder.pxe.config import parse as parse_pxe
from builder.schema import (
    SEEN_LIMIT,
    Bool,
    Enum,
    Field,
    Int,
    List,
    Located,
    Map,
    Str,
    hostname,
    ipv4_address,
    ipv4_interface,
    mac_address,
    type_name,
)

# ---------------------------------------------------------------------------------------------
# The model: what the rest of ksbuild reads. Frozen: nothing downstream changes the input.


@dataclass(frozen=True)
class Firewall:
    enabled: bool
    services: tuple[str, ...]


@dataclass(frozen=True)
class Packages:
    environment: str
    groups: tuple[str, ...]
    extra: tuple[str, ...]


@dataclass(frozen=True)
class Bridge:
    name: str
    slaves: tuple[str, ...]
    address: ipaddress.IPv4Interface | None  # None: DHCP
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    stp: bool
    forward_delay: int | None = None  # seconds, with stp (DEFAULT_FORWARD_DELAY if None)


@dataclass(frozen=True)
class Partition:
    mount: str
    size: int  # MiB
    grow: bool
    fstype: str


@dataclass(frozen=True)
class Storage:
    drives: tuple[str, ...]
    clear: bool
    autopart: str
    partitions: tuple[Partition, ...]


@dataclass(frozen=True)
class Repo:
    """A yum repository of the installed host (/etc/yum.repos.d/ksbuild.repo)."""

    name: str  # the repo id
    baseurl: str  # a URL, or "source": the host's install tree (e.g. the boot server's)
    gpgcheck: bool
    gpgkey: str | None
    enabled: bool
    install: bool  # also a kickstart `repo` line: used during the install


@dataclass(frozen=True)
class Host:
    hostname: str
    mac: str | None
    lang: str
    keyboard: str
    timezone: str
    ntp: tuple[str, ...]
    selinux: str
    firewall: Firewall
    root_password_hash: str | None
    root_password_env: str | None
    root_ssh_keys: tuple[str, ...]
    source: str  # "cdrom" or an http(s) URL of an install tree
    packages: Packages
    bridges: tuple[Bridge, ...]
    storage: Storage
    kernel_args: tuple[str, ...]
    after_install: str  # "poweroff" or "reboot": ISO and rendered kickstarts; PXE reboots
    # The site's salt_seed, else its first host's name: mixed into the salt of a password
    # from root_password_env, so equal passwords hash differently in different sites.
    salt_seed: str = ""
    nic_names: str = "predictable"  # or "eth": net.ifnames=0 biosdevname=0
    network: Network = Network((), (), None)  # every host's network, legacy bridges included
    repos: tuple[Repo, ...] = ()  # the installed host's yum repos (DEFAULT_REPOS if not given)

    @property
    def short_name(self) -> str:
        return self.hostname.split(".")[0]

    if not TYPE_CHECKING:  # for mypy, a class with __getattr__ has every attribute
        def __getattr__(self, name: str) -> Any:
            """A host from the site cache has only its sitecache.EAGER fields until another
            is read: that read fills in every host of its cache file (builder/sitecache.py)."""
            fill = self.__dict__.get(sitecache.FILL)
            if fill is None:
                raise AttributeError(f"'Host' object has no attribute {name!r}")
            fill()
            return object.__getattribute__(self, name)  # filled, or no such field

    def __getstate__(self) -> dict[str, Any]:
        """Its fields, all of them (pickle and copy would take a cached host's few)."""
        fill = self.__dict__.get(sitecache.FILL)
        if fill is not None:
            fill()
        return self.__dict__


# The fields' defaults are not class attributes, which would answer for a cached host's
# unfilled fields before Host.__getattr__ is asked (the generated __init__ keeps its own).
for _field in dataclass_fields(Host):
    if _field.name in vars(Host):
        delattr(Host, _field.name)


@dataclass(frozen=True)
class Media:
    """The base ISO a site builds from: exactly one of release (+ flavor), path or url."""

    release: str | None
    flavor: str | None
    path: Path | None  # resolved against the site file
    url: str | None
    sha256: str | None  # the user's pin; wins over every other checksum
    mirror: str | None
    origin: str = ""  # where it was given ("site.yaml:12: media"), for messages


@dataclass(frozen=True)
class Outputs:
    """What `ksbuild build` makes besides the kickstarts."""

    iso: str  # "none", "per-site" (one ISO, every host's kickstart) or "per-host"
    pxe: bool


@dataclass(frozen=True)
class SecureBoot:
    """The `secure_boot:` key: what a revoked UEFI first stage means (builder/secureboot.py)."""

    policy: str = "warn"  # warn: a warning per output; required: an error, nothing written
    revocations: Path | None = None  # a newer revocation list; None: the one ksbuild ships
    origin: str = ""  # "site.yaml:12" (where the key is), for messages


@dataclass(frozen=True)
class Site:
    path: Path
    hosts: tuple[Host, ...]
    overlays: Path | None  # the overlay root folder, resolved against the site file
    media: Media | None = None  # None: the site names no base media
    outputs: Outputs = Outputs(iso="none", pxe=False)
    pxe: PxeSettings | None = None  # the `pxe:` key (builder/pxe/config.py); None: not given
    secure_boot: SecureBoot = SecureBoot()
    # Set by load(): each host's digest, and the hosts tuple they are the digests of.
    digests: tuple[str, ...] = field(default=(), compare=False, repr=False)
    digested: tuple[Host, ...] = field(default=(), compare=False, repr=False)
    # What load() leaves for save_cache() to write.
    cache_update: sitecache.Update | None = field(default=None, compare=False, repr=False)

    @cached_property
    def _by_name(self) -> dict[str, Host]:
        return {host.hostname: host for host in self.hosts}

    @cached_property
    def host_digests(self) -> Mapping[str, str]:
        """hostname -> a sha256 (hex) such that equal digests mean equal Host models (==),
        in this site or any other loaded by the same ksbuild code. Cheap: load() derives it
        from the host's text (builder/sitecache.py). For a site whose hosts were replaced
        after loading (dataclasses.replace), it is the digest of each host's pickle."""
        if self.digested is not self.hosts or len(self.digests) != len(self.hosts):
            return {host.hostname: sitecache.model_digest(host) for host in self.hosts}
        return dict(zip((host.hostname for host in self.hosts), self.digests))

    def host(self, name: str) -> Host:
        try:
            return self._by_name[name.lower()]
        except KeyError:
            raise InputError(f"{self.path}: no host named {name!r} in the site") from None


def shared(kind: type[Any]) -> Any:
    """kind(**fields), one object for equal fields: hosts that take a mapping from the
    defaults (packages, storage, repos, the firewall) share one object, which the site cache
    then stores and unpickles once, not once a host (issue 16). Sharing cannot show but by
    `is`: the model is frozen, and equal fields are equal values of equal types (the grammar
    gives a field one type; Bool and Int refuse each other's values, typed=True keeps apart
    what == alone would not)."""
    return lru_cache(maxsize=256, typed=True)(kind)


# ---------------------------------------------------------------------------------------------
# The grammar. Patterns are deliberately narrow: every string here ends up in a kickstart line
# or a shell script, so nothing that could quote, expand or break a line gets through.

NAME = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
IFACE = r"[A-Za-z][A-Za-z0-9_.-]{0,14}"
IPV4 = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
HOSTNAME = LABEL + r"(?:\." + LABEL + r")*"
SHA512_CRYPT = r"\$6\$(?:rounds=[0-9]{4,9}\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}"
URL = r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~%+=,:@/-]*)?"
SSH_KEY = (
    r"(?:ssh-(?:rsa|ed25519|dss)|ecdsa-sha2-nistp(?:256|384|521)|sk-ssh-ed25519@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}(?: [A-Za-z0-9@._+:-]+)*"
)

FIREWALL = Map(
    {
        "enabled": Field(Bool("true keeps firewalld running; false masks it"), default=True),
        "services": Field(
            List(Str(r"[a-z0-9][a-z0-9_-]*", "a firewalld service", what="a service name")),
            default=("ssh",),
        ),
    },
    "firewalld on the installed host",
)

PACKAGES = Map(
    {
        "environment": Field(
            Str(NAME, "the comps environment, installed as @^NAME", what="a group name"),
            default="virtualization-host-environment",
        ),
        "groups": Field(List(Str(NAME, what="a group name"), "extra comps groups"), default=()),
        "extra": Field(
            List(
                Str("-?" + NAME, "a package; a leading - excludes it", what="a package name"),
                "extra packages",
            ),
            default=(),
        ),
    },
    "%packages",
    build=shared(Packages),
)

BRIDGE = Map(
    {
        "name": Field(Str(IFACE, "bridge device", what="an interface name"), default="br0"),
        "slaves": Field(
            List(Str(IFACE, what="an interface name"), "NICs enslaved to the bridge", 1, 16),
            required=True,
        ),
        "address": Field(
            Str(IPV4 + r"/[0-9]{1,2}", "static address/prefix; omit for DHCP",
                what="an IPv4 address/prefix", convert=ipv4_interface),
        ),
        "gateway": Field(
            Str(IPV4, what="an IPv4 address", convert=ipv4_address), ),
        "dns": Field(
            List(Str(IPV4, what="an IPv4 address", convert=ipv4_address), "name servers",
                 max_items=3),
            default=(),
        ),
        "stp": Field(Bool("spanning tree on the bridge"), default=False),
        "forward_delay": Field(Int(2, 30, "seconds, with stp (default 15); NetworkManager "
                                   "refuses 0 with STP on")),
    },
    "a Linux bridge with the host's address, so guests sit on the LAN",
    build=Bridge,
)

PARTITION = Map(
    {
        "mount": Field(Str(r"/|(?:/[A-Za-z0-9._-]+)+|swap|biosboot", what="a mount point"),
                       required=True),
        "size": Field(Int(1, 64 * 1024 * 1024, "size in MiB (the minimum with grow)"),
                      required=True),
        "grow": Field(Bool("grow to fill the free space"), default=False),
        "fstype": Field(Enum(("xfs", "ext4", "ext3", "ext2", "vfat", "efi", "swap", "biosboot")),
                        default="xfs"),
    },
    build=shared(Partition),
)

STORAGE = Map(
    {
        "drives": Field(List(Str(r"[a-z][a-z0-9]{1,15}", what="a disk name (sda, vda, nvme0n1)"),
                             "the disks to use; all others are left alone"), default=()),
        "clear": Field(Bool("erase the disks' partitions first"), default=True),
        "autopart": Field(Enum(("lvm", "plain", "thinp"), "autopart --type, without partitions"),
                          default="lvm"),
        "partitions": Field(List(PARTITION, "an explicit layout instead of autopart"),
                            default=()),
    },
    build=shared(Storage),
)

STORAGE_DEFAULT = Storage(drives=(), clear=True, autopart="lvm", partitions=())

# yum's $basearch and $releasever are allowed in a repo URL; file:// for a local mirror.
REPO_URL = r"(?:https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?|file://)(?:/[A-Za-z0-9._~%+=,:@/$-]*)?"
GPG_KEY_CENTOS7 = "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7"  # centos-release ships it
REPO = Map(
    {
        "name": Field(Str(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "the repo id, [name] in the file",
                          what="a repo id"), required=True),
        "baseurl": Field(Str(r"source|" + REPO_URL, "the repo's URL ($basearch allowed), or "
                             "`source`: the host's install tree (with pxe.install_tree: "
                             "local, the boot server's copy of the DVD)",
                             what="an http(s) or file URL, or source", max_length=2048),
                         required=True),
        "gpgcheck": Field(Bool("check package signatures"), default=True),
        "gpgkey": Field(Str(REPO_URL, "the signing key's URL", what="a URL",
                            max_length=2048), default=GPG_KEY_CENTOS7),
        "enabled": Field(Bool("yum uses the repo"), default=True),
        "install": Field(Bool("also a kickstart `repo` line: the install takes packages (and "
                              "updates) from it too"), default=False),
    },
    "a yum repository of the installed host",
    build=shared(Repo),
)
VAULT = "https://vault.centos.org/7.9.2009"
DEFAULT_REPOS = tuple(Repo(name, f"{VAULT}/{name if name != 'base' else 'os'}/$basearch/",
                           True, GPG_KEY_CENTOS7, True, False)
                      for name in ("base", "updates", "extras"))

# Every field a host has; `defaults` takes all of them but the ones that identify one host.
HOST_FIELDS: dict[str, Field] = {
    "hostname": Field(Str(HOSTNAME, "fully qualified host name (RFC 1123)",
                          what="a host name (RFC 1123)", convert=hostname), required=True),
    "mac": Field(Str(r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}", "the install NIC's MAC",
                     what="a MAC address", convert=mac_address)),
    "lang": Field(Str(r"[a-z]{2,3}(?:_[A-Z]{2})?(?:\.[A-Za-z0-9-]+)?(?:@[a-z]+)?",
                      what="a locale (en_US.UTF-8)"), default="en_US.UTF-8"),
    "keyboard": Field(Str(r"[a-z][a-z0-9_-]*", what="a console keymap (us, de-latin1)"),
                      default="us"),
    "timezone": Field(Str(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+)*",
                          what="a time zone (Asia/Shanghai)"), default="UTC"),
    "ntp": Field(List(Str(HOSTNAME + "|" + IPV4, what="an NTP server name"), "NTP servers"),
                 default=()),
    "selinux": Field(Enum(("enforcing", "permissive", "disabled")), default="enforcing"),
    "firewall": Field(FIREWALL),
    "root_password_hash": Field(Str(SHA512_CRYPT, "SHA-512 crypt hash ($6$...)",
                                    what="a SHA-512 crypt hash ($6$salt$hash)")),
    "root_password_env": Field(Str(r"[A-Za-z_][A-Za-z0-9_]*",
                                   "environment variable holding the plaintext root password, "
                                   "hashed at build time", what="an environment variable name")),
    "root_ssh_keys": Field(List(Str(SSH_KEY, what="an OpenSSH public key", max_length=16384),
                                "authorized keys for root"), default=()),
    "source": Field(Str(r"cdrom|" + URL, "install source: cdrom or an http(s) install tree",
                        what="'cdrom' or an http(s) URL"),
                    default="https://vault.centos.org/7.9.2009/os/x86_64/"),
    "packages": Field(PACKAGES),
    "bridge": Field(BRIDGE),
    "bridges": Field(List(BRIDGE, "several bridges; `bridge` is the one-bridge shorthand",
                          max_items=16)),
    "network": Field(NETWORK),
    "nic_names": Field(Enum(("predictable", "eth"), "NIC names: the kernel's predictable "
                            "names (em1, eno1, enp3s0f0), or eth0, eth1... by adding "
                            "net.ifnames=0 biosdevname=0 to the installer and the installed "
                            "kernel"), default="predictable"),
    "storage": Field(STORAGE),
    "kernel_args": Field(List(Str(r"[A-Za-z0-9_.-]+(?:=[A-Za-z0-9_.,:/-]+)?",
                                  what="a kernel argument"), "extra kernel arguments"),
                         default=()),
    "after_install": Field(Enum(
        ("poweroff", "reboot"),
        "what an ISO (or a rendered kickstart) install does at its end. poweroff: the machine "
        "stays off until someone removes the medium. reboot: it boots again at once, and a "
        "machine that boots the ISO first (a USB stick, most virtual media: `reboot --eject` "
        "ejects only CDs) installs itself again, every time, wiping its disks. PXE installs "
        "always reboot (install-once switching sends them to their disk)"), default="poweroff"),
}
HOST_FIELDS["repos"] = Field(List(REPO, "the installed host's yum repos, written to "
                                       "/etc/yum.repos.d/ksbuild.repo; the stock CentOS repo "
                                       "files, which point at dead mirrors, are emptied. "
                                       "Default: os, updates and extras of 7.9.2009 on "
                                       "vault.centos.org, gpgcheck on", max_items=64))
HOST = Map(HOST_FIELDS, "one KVM host")
DEFAULTS = Map({k: v for k, v in HOST_FIELDS.items() if k not in ("hostname", "mac")},
               "values every host gets unless it sets its own")

# CentOS 7 releases whose ISOs follow CentOS-7-x86_64-<flavor>-<build>.iso on the vault.
MEDIA_RELEASES = ("7.2.1511", "7.3.1611", "7.4.1708", "7.5.1804", "7.6.1810", "7.7.1908",
                  "7.8.2003", "7.9.2009")
MEDIA_FLAVORS = ("NetInstall", "Minimal", "DVD", "Everything")

MEDIA = Map(
    {
        "release": Field(Enum(MEDIA_RELEASES, "a CentOS 7 release, fetched from the mirror")),
        "flavor": Field(Enum(MEDIA_FLAVORS, "which ISO of the release (only with release); "
                             "Minimal lacks the Virtualization Host packages"), default="DVD"),
        "path": Field(Str(r"[A-Za-z0-9._+,@%=~ /-]+", "a local ISO, relative to the site file",
                          what="a file path", max_length=4096)),
        "url": Field(Str(URL, "an ISO to download (needs sha256)", what="an http(s) URL",
                         max_length=2048)),
        "sha256": Field(Str(r"[0-9A-Fa-f]{64}", "the ISO's sha256; wins over published sums",
                            what="a sha256 (64 hex digits)", convert=str.lower)),
        "mirror": Field(Str(URL, "mirror base URL (with release); --mirror and KSBUILD_MIRROR "
                            "override it", what="an http(s) URL", max_length=2048),
                        default="https://vault.centos.org/"),
    },
    "the base ISO: {release, flavor} from a mirror, a local {path}, or {url, sha256}",
)

MAX_HOSTS = 100_000  # the documented limit (README), checked before any host is parsed
SITE_FIELDS: dict[str, Field] = {
    "defaults": Field(DEFAULTS),
    "hosts": Field(List(HOST, "the hosts to install", min_items=1, max_items=MAX_HOSTS),
                   required=True),
    "overlays": Field(Str(r"[A-Za-z0-9._/-]+", "overlay root folder, relative to the site file",
                          what="a folder path")),
    "media": Field(MEDIA),
    "outputs": Field(Map({
        "iso": Field(Enum(("none", "per-site", "per-host"),
                          "install ISOs: one for the site, one per host, or none; "
                          "default: per-site when `media` is given, else none")),
        "pxe": Field(Bool("a PXE tree; default: true when `pxe` and `media` are given")),
    }, "what `ksbuild build` makes besides the kickstarts")),
    "pxe": Field(PXE),
    "salt_seed": Field(Str(r"[A-Za-z0-9._+@:-]+", "mixed into the salt of root_password_env "
                           "hashes, so that equal passwords hash differently in other sites "
                           "(default: the first host's name)",
                           what="a seed (letters, digits and ._+@:-)", max_length=128)),
    "secure_boot": Field(Map({
        "policy": Field(Enum(("warn", "required"),
                             "a UEFI first stage (shim) the revocation list revokes: warn, or "
                             "required (Secure Boot must work: an error)"), default="warn"),
        "revocations": Field(Str(r"[A-Za-z0-9._+,@%=~ /-]+",
                                 "a newer revocation list (Microsoft's dbx_info_msft_latest.json"
                                 " or ksbuild's format), relative to the site file; default: "
                                 "the list ksbuild ships", what="a file path", max_length=4096)),
    }, "Secure Boot: is the UEFI first stage the outputs hand out revoked by Microsoft's dbx?")),
}
SITE = Map(SITE_FIELDS, "a ksbuild site file")
SITE_WITHOUT_HOSTS = Map({k: v for k, v in SITE_FIELDS.items() if k != "hosts"})


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the site file, for editors; shipped as builder/site.schema.json."""
    schema = SITE.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ksbuild site file"
    # `bridge` and `bridges` are two spellings of one thing: never both.
    host_schema = schema["properties"]["hosts"]["items"]
    # `network` is the other way to say it: never beside them.
    exclusive = {"anyOf": [{"required": pair} for pair in (
        ["bridge", "bridges"], ["network", "bridge"], ["network", "bridges"])]}
    host_schema["not"] = exclusive
    schema["properties"]["defaults"]["not"] = exclusive
    # media: exactly one of release (with flavor, mirror), path or url (with sha256).
    def media_kind(required: list[str], banned: list[str]) -> dict[str, Any]:
        return {"required": required, "not": {"anyOf": [{"required": [k]} for k in banned]}}

    schema["properties"]["media"]["oneOf"] = [
        media_kind(["release"], ["path", "url"]),
        media_kind(["path"], ["release", "url", "flavor", "mirror"]),
        media_kind(["url", "sha256"], ["release", "path", "flavor", "mirror"]),
    ]
    return schema


# ---------------------------------------------------------------------------------------------
# YAML -> Located, with line numbers and without silently merged duplicate keys.


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser when present: a 10,000-host site loads ~5x faster."""

    _plain_tags: dict[str, str] = {}  # a plain scalar's tag depends on its text alone

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        """The resolver tries a list of regexes on every scalar; a fleet repeats its keys
        and many values thousands of times, so remember the answer per text."""
        if kind is not yaml.ScalarNode or not implicit[0]:
            return super().resolve(kind, value, implicit)
        tag = self._plain_tags.get(value)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(self._plain_tags) >= SEEN_LIMIT:
                self._plain_tags.clear()
            self._plain_tags[value] = tag
        return tag


# A site file nests ~6 levels; aliases may repeat parts of it, but what they expand to stays
# in proportion to the text (an "alias bomb" of 400 bytes expands to millions of values).
MAX_DEPTH = 64
EXPANSION_PER_BYTE = 2
EXPANSION_FLOOR = 100_000


def _node_line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_shape(root: yaml.Node, file: str, text_length: int) -> None:
    """Refuse, before anything walks the tree, what would walk forever or blow up: an alias
    inside its own anchor, nesting past MAX_DEPTH, and aliases that expand to more values than
    the text can justify. Each node is visited once however often it is aliased (iterative,
    so no RecursionError), and its expanded size is summed from its children's."""
    budget = max(EXPANSION_FLOOR, EXPANSION_PER_BYTE * text_length)
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the nodes whose subtree is being walked: the current path
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > budget:
                raise InputError(f"{file}:{_node_line(node)}: YAML aliases here expand to more "
                                 f"than {budget} values; write the values out or use fewer "
                                 "aliases")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise InputError(f"{file}:{_node_line(node)}: a YAML alias refers to a value that "
                             "contains it")
        if depth > MAX_DEPTH:
            raise InputError(f"{file}:{_node_line(node)}: nested more than {MAX_DEPTH} levels "
                             "deep")
        open_nodes.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in reversed(_children(node)))


STR_TAG = "tag:yaml.org,2002:str"


def _construct(node: yaml.Node, path: str, file: str, loader: _Loader) -> Any:
    """A scalar's value; a tag it cannot carry (`!!int abc`, `!!timestamp x`) is one line."""
    if node.tag == STR_TAG:  # most of a site: the constructor would return node.value
        return node.value
    try:
        return loader.construct_object(node)
    except (ValueError, TypeError, AttributeError, OverflowError, KeyError, IndexError):
        raise InputError(f"{file}:{_node_line(node)}: {path or '(top)'}: {node.value!r} cannot "
                         f"be read as {node.tag.rsplit(':', 1)[-1]}") from None


def _locate(node: yaml.Node, path: str, file: str, loader: _Loader, depth: int = 1,
            merges: bool = True) -> Located:
    """`merges`: the text may hold a `<<` merge key (else flattening is a no-op, skipped)."""
    line = node.start_mark.line + 1
    if depth > MAX_DEPTH:
        raise InputError(f"{file}:{line}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, yaml.ScalarNode):
        return Located(_construct(node, path, file, loader), path, file, line)
    if isinstance(node, yaml.MappingNode):
        if merges:
            loader.flatten_mapping(node)
        items: dict[str, Located] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                key_line = key_node.start_mark.line + 1
                raise InputError(f"{file}:{key_line}: {path or '(top)'}: a key is not text")
            key = _construct(key_node, path, file, loader)
            if not isinstance(key, str) or key in items:
                key_line = key_node.start_mark.line + 1
                problem = "given twice" if key in items else "is not text"
                raise InputError(f"{file}:{key_line}: {path or '(top)'}: key {key!r} {problem}")
            items[key] = _locate(value_node, f"{path}.{key}" if path else key, file, loader,
                                 depth + 1, merges)
        return Located(items, path, file, line)
    return Located(
        [_locate(n, f"{path}[{i}]", file, loader, depth + 1, merges)
         for i, n in enumerate(node.value)],
        path, file, line,
    )


def read_text(path: Path) -> str:
    name = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{name}:{line}: not UTF-8 text (byte {data[exc.start]:#04x})") from None
    return text


def _compose(text: str, name: str) -> Located:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise InputError(f"{name}:1: the file is empty")
        if "&" in text:  # aliases need anchors; without, _locate visits each node once
            check_shape(node, name, len(text))
        return _locate(node, "", name, loader, merges="<<" in text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(f"{name}:{line}: YAML syntax error: {problem}") from None
    except yaml.reader.ReaderError as exc:
        raise InputError(f"{name}:{_reader_error_line(text, exc)}: YAML syntax error: "
                         f"{exc.reason} (character {_char_code(exc.character)})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{name}: YAML syntax error: {exc}".replace("\n", " ")) from None
    finally:
        loader.dispose()


def _char_code(character: int | str) -> str:
    code = character if isinstance(character, int) else ord(character)
    return f"U+{code:04X}"


def _reader_error_line(text: str, exc: yaml.reader.ReaderError) -> int:
    """libyaml reports a byte offset, the pure-Python reader a character index: find the
    character itself instead."""
    character = exc.character if isinstance(exc.character, str) else chr(exc.character)
    found = text.find(character)
    return text.count("\n", 0, found) + 1 if found >= 0 else 1


def merge(base: Located, over: Located) -> Located:
    """Deep-merge a host over the defaults: mappings merge, anything else is replaced."""
    if isinstance(base.value, dict) and isinstance(over.value, dict):
        merged = dict(base.value)
        for key, value in over.value.items():
            merged[key] = merge(merged[key], value) if key in merged else value
        return Located(merged, over.path, over.file, over.line)
    return over


# ---------------------------------------------------------------------------------------------
# Loading and the checks the grammar cannot express.


def load(path: Path | str, cache: Path | None = None) -> Site:
    """The site file's model. `cache`: a file for the per-host cache (builder/sitecache.py;
    `ksbuild build` keeps it in OUT/.ksbuild): the hosts whose text did not change are taken
    from it, and it is updated. Whatever the cache holds, the model and every error are the
    ones a load without it gives."""
    path = Path(path)
    with no_gc():
        if cache is not None:
            loaded = _load_cached(path, cache) or _load_parallel(path)
            if loaded is not None:
                return loaded
        return _load(path)


def save_cache(site: Site, cache: Path, data: bytes | None = None) -> None:
    """Write what the load of `site` learned into the cache file (atomically); after the
    build succeeded, so a cache never describes a site that failed. `data`: cache_data's,
    made before (while a build's workers render)."""
    with contextlib.suppress(OSError), no_gc():  # the cache only saves time
        sitecache.sweep(cache)
        if site.cache_update is not None:
            sitecache.write(cache, site.cache_update, data)


def cache_data(site: Site) -> bytes | None:
    """The pickle save_cache writes (~0.1 s for 10,000 hosts), if any."""
    with no_gc():
        return None if site.cache_update is None else sitecache.encode(site.cache_update.entries)


def _load(path: Path) -> Site:
    """The full load; with the cache entries of its hosts where the text splits into them."""
    text = read_text(path)
    doc = _compose(text, str(path))
    if not isinstance(doc.value, dict):
        raise doc.error("expected a mapping with `hosts:` at the top of the site file")
    # Everything but the hosts is checked as written; each host is checked once, merged over
    # the defaults (so a host is never parsed twice).
    SITE_WITHOUT_HOSTS.parse(Located({k: v for k, v in doc.value.items() if k != "hosts"},
                                     doc.path, doc.file, doc.line))
    if "hosts" not in doc.value:
        raise doc.error("missing required key 'hosts'")
    raw_hosts = doc.value["hosts"]
    if not isinstance(raw_hosts.value, list):
        raise raw_hosts.error(f"expected a list of hosts, got {type_name(raw_hosts.value)}")
    if not raw_hosts.value:
        raise raw_hosts.error("needs at least one host")
    if len(raw_hosts.value) > MAX_HOSTS:
        raise raw_hosts.error(f"{len(raw_hosts.value)} hosts; a site holds at most "
                              f"{MAX_HOSTS:,} (split the fleet into several sites)")
    defaults = doc.value.get("defaults", Located({}, "defaults", str(path), doc.line))
    given_seed = doc.value["salt_seed"].value if "salt_seed" in doc.value else None
    first = _host(merge(defaults, raw_hosts.value[0]), given_seed)
    hosts = (first, *(_host(merge(defaults, raw), first.salt_seed)
                      for raw in raw_hosts.value[1:]))
    keys = [_fleet_keys(host) for host in hosts]
    conflict = _fleet_conflict(keys)
    if conflict is not None:
        index, key, other = conflict
        kind, value = key.split("=", 1)
        raise raw_hosts.value[index].error(f"{kind} {value} is already used by hosts[{other}]")
    site = _site(path, doc, hosts)
    split = sitecache.split(text)
    if split is None or not _aligned(split, raw_hosts.value):
        digests = tuple(sitecache.model_digest(host) for host in hosts)
        return replace(site, digests=digests, digested=site.hosts)
    digests = tuple(sitecache.host_digest(split.frame_digest, host.salt_seed, chunk)
                    for host, chunk in zip(hosts, split.chunks))
    entries = {chunk: (host, key, digest)
               for chunk, host, key, digest in zip(split.chunks, hosts, keys, digests)}
    return replace(site, digests=digests, digested=site.hosts,
                   cache_update=sitecache.Update(split.frame_digest, entries, None))


def _site(path: Path, doc: Located, hosts: tuple[Host, ...]) -> Site:
    """The site around its checked hosts."""
    overlays = doc.value.get("overlays")
    media = _media(path, doc.value.get("media"))
    pxe = parse_pxe(path, doc.value.get("pxe"))
    return Site(path=path, hosts=hosts, overlays=_overlays(path, overlays), media=media,
                outputs=_outputs(doc.value.get("outputs"), media, pxe is not None), pxe=pxe,
                secure_boot=_secure_boot(path, doc.value.get("secure_boot")))


def _aligned(split: sitecache.Split, raws: list[Located]) -> bool:
    """Each chunk holds the host YAML read there (so the split is the parser's)."""
    if len(split.starts) != len(raws):
        return False
    ends = (*split.starts[1:], split.end)
    return all(start < raw.line <= end for start, end, raw in zip(split.starts, ends, raws))


def _load_cached(path: Path, cache_file: Path) -> Site | None:
    """The load from the cache, or None where it cannot be exactly the full load's: the text
    does not split, the cache is unusable or for another frame, too many hosts changed, or
    anything (a changed host, a fleet-wide check, the frame) fails: the full load then gives
    the error, as it always has."""
    try:
        text = read_text(path)
        split = sitecache.split(text)
        if split is None or len(split.chunks) > MAX_HOSTS:
            return None
        cache = sitecache.read(cache_file, split.frame_digest)
        if cache is None:
            return None
        return _from_cache(path, split, cache)
    except Exception:  # noqa: BLE001 - a cache is never a reason to fail: the full load decides
        return None


def _from_cache(path: Path, split: sitecache.Split, cache: sitecache.Cache) -> Site | None:
    chunks = split.chunks
    missing = [index for index, chunk in enumerate(chunks) if chunk not in cache.hosts]
    if len(missing) > max(16, len(chunks) // 8):
        return None  # composing them one by one costs more than the full load
    name = str(path)
    frame = _frame(path, split)
    if frame is None:
        return None
    doc, defaults, seed = frame
    if seed is None and chunks[0] in cache.hosts:
        seed = cache.hosts[chunks[0]][0].hostname  # as the full load: the first host's name
    new: dict[str, sitecache.Entry] = {}
    for index in missing:  # in order: the first host, if changed, names the seed
        host = _host(merge(defaults, _compose_item(split, index, name)), seed)
        seed = host.salt_seed
        new[chunks[index]] = (host, _fleet_keys(host), sitecache.host_digest(
            split.frame_digest, seed, chunks[index]))
    assert seed is not None
    # Over every host: map, attrgetter and itemgetter, in C (loops in Python were ~1/4 of a
    # load from the cache).
    entries: list[sitecache.Entry] = list(map(cache.hosts.get, chunks))  # type: ignore[arg-type]
    for index in missing:
        entries[index] = new[chunks[index]]
    hosts, digests = tuple(map(itemgetter(0), entries)), tuple(map(itemgetter(2), entries))
    if set(map(attrgetter("salt_seed"), hosts)) != {seed}:
        hosts, digests = _reseeded(split, seed, entries)
    if any(env and not os.environ.get(env) for env in
           set(map(attrgetter("root_password_env"), hosts))):
        return None
    if _fleet_conflict(list(map(itemgetter(1), entries))) is not None:
        return None
    site = _site(path, doc, hosts)
    return replace(site, digests=digests, digested=site.hosts,
                   cache_update=_cache_update(cache, split, dict(zip(chunks, entries)), new))


def _reseeded(split: sitecache.Split, seed: str, entries: list[sitecache.Entry]
              ) -> tuple[tuple[Host, ...], tuple[str, ...]]:
    """The hosts and their digests under the site's seed, never cached: a host parsed under
    another one takes this one, and the digest made with this one."""
    hosts = tuple(host if host.salt_seed == seed else replace(host, salt_seed=seed)
                  for host, _, _ in entries)
    digests = tuple(digest if host.salt_seed == seed else sitecache.host_digest(
        split.frame_digest, seed, chunk) for (host, _, digest), chunk in zip(entries, split.chunks))
    return hosts, digests


def _compose_item(split: sitecache.Split, index: int, name: str) -> Located:
    """A changed host's chunk read on its own, on its lines of the file; it must be one item
    of a sequence (else the split was not the parser's: ValueError)."""
    start = split.starts[index]
    loader = _Loader("\n" * start + split.chunks[index])
    try:
        node = loader.get_single_node()
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != 1:
            raise ValueError(f"hosts[{index}] is not one item on its own")
        raw = _locate(node.value[0], f"hosts[{index}]", name, loader, depth=3, merges=False)
    finally:
        loader.dispose()
    if not start < raw.line <= start + split.chunks[index].count("\n") + 1:
        raise ValueError(f"hosts[{index}] is not where its chunk is")
    return raw


# Hosts from which a load without a usable cache (a first build) is shared with a second
# process: forking and sending back half the models (~0.1 s each way for 5,000 hosts) costs
# less than composing and parsing them (~0.6 s).
PARALLEL_LOAD_MIN = 2000


def _load_parallel(path: Path) -> Site | None:
    """The full load's model, the hosts composed and parsed by two processes: a forked child
    takes the second half of the chunks (sitecache.split) and sends their models back. None
    where there are few hosts, one core, the text does not split, or anything fails or
    differs (the full load then decides, and gives the error, as _load_cached)."""
    if (os.cpu_count() or 1) < 2:
        return None
    try:
        text = read_text(path)
        split = sitecache.split(text)
        if split is None or not PARALLEL_LOAD_MIN <= len(split.chunks) <= MAX_HOSTS:
            return None
        frame = _frame(path, split)
        if frame is None:
            return None
        half = len(split.chunks) // 2
        child = _in_child(lambda: _parse_chunks(split, half, len(split.chunks), frame,
                                                str(path)))
        try:
            entries = _parse_chunks(split, 0, half, frame, str(path))
        except BaseException:
            child(False)
            raise
        entries += child(True)
    except Exception:  # noqa: BLE001 - the full load decides
        return None
    if _fleet_conflict([keys for _, keys, _ in entries]) is not None:
        return None
    site = _site(path, frame[0], tuple(host for host, _, _ in entries))
    return replace(site, digests=tuple(digest for _, _, digest in entries),
                   digested=site.hosts, cache_update=sitecache.Update(
                       split.frame_digest, dict(zip(split.chunks, entries)), None))


# The frame's document, the defaults and the site's salt_seed (None: the first host's name).
Frame = tuple[Located, Located, "str | None"]


def _frame(path: Path, split: sitecache.Split) -> Frame | None:
    """The site file without its hosts, checked; None where its `hosts:` is not where the
    split found it."""
    name = str(path)
    doc = _compose(split.frame, name)
    if not isinstance(doc.value, dict) or "hosts" not in doc.value:
        return None
    raw_hosts = doc.value["hosts"]
    if raw_hosts.line != split.hosts_line or raw_hosts.value is not None:
        return None
    SITE_WITHOUT_HOSTS.parse(Located({k: v for k, v in doc.value.items() if k != "hosts"},
                                     doc.path, doc.file, doc.line))
    defaults = doc.value.get("defaults", Located({}, "defaults", name, doc.line))
    seed = doc.value["salt_seed"].value if "salt_seed" in doc.value else None
    return doc, defaults, seed


def _parse_chunks(split: sitecache.Split, first: int, last: int, frame: Frame,
                  name: str) -> list[sitecache.Entry]:
    """The hosts of chunks first..last-1, composed as one text on their lines of the file
    (each chunk one at a time would scan all the lines above it again), parsed under the
    site's seed (the first host's name where the site gives none)."""
    _, defaults, seed = frame
    if seed is None:
        seed = _host(merge(defaults, _compose_item(split, 0, name)), None).salt_seed
    start = split.starts[first]
    loader = _Loader("\n" * start + "".join(split.chunks[first:last]))
    try:
        node = loader.get_single_node()
        if not isinstance(node, yaml.SequenceNode) or len(node.value) != last - first:
            raise ValueError(f"hosts[{first}:{last}] are not {last - first} items on their own")
        raws = [_locate(item, f"hosts[{first + index}]", name, loader, depth=3, merges=False)
                for index, item in enumerate(node.value)]
    finally:
        loader.dispose()
    ends = (*split.starts[first + 1:last], split.starts[last] if last < len(split.starts)
            else split.end)
    if not all(start < raw.line <= end
               for start, end, raw in zip(split.starts[first:last], ends, raws)):
        raise ValueError(f"hosts[{first}:{last}] are not where their chunks are")
    hosts = [_host(merge(defaults, raw), seed) for raw in raws]
    return [(host, _fleet_keys(host), sitecache.host_digest(split.frame_digest, seed, chunk))
            for host, chunk in zip(hosts, split.chunks[first:last])]


def _in_child(work: Callable[[], Any]) -> Callable[[bool], Any]:
    """work() in a forked child; returns the function that waits for its result (raises
    if it failed), or with False ends the child and returns None. The child only computes
    and pickles: it holds no lock nor file of ours."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's frames
        code = 1
        try:
            os.close(read)
            with os.fdopen(write, "wb") as stream:
                stream.write(sitecache.dumps(work()))
            code = 0
        finally:
            os._exit(code)
    os.close(write)

    def result(wanted: bool) -> Any:
        if not wanted:
            os.kill(pid, signal.SIGKILL)
        with os.fdopen(read, "rb") as stream:
            data = stream.read()
        _, status = os.waitpid(pid, 0)
        if not wanted:
            return None
        if os.waitstatus_to_exitcode(status) != 0:
            raise ChildProcessError(f"loading hosts in process {pid} failed")
        return pickle.loads(data)
    return result


def _cache_update(cache: sitecache.Cache, split: sitecache.Split,
                  entries: dict[str, sitecache.Entry],
                  new: dict[str, sitecache.Entry]) -> sitecache.Update | None:
    """The hosts parsed now go into the delta; once it holds many, all into a new base."""
    if not new:
        return None
    delta = {chunk: entries[chunk] for chunk in (*cache.delta, *new) if chunk in entries}
    if len(delta) > max(64, len(entries) // 8):
        return sitecache.Update(split.frame_digest, entries, None)
    return sitecache.Update(split.frame_digest, delta, cache.base_id)


def _host(merged: Located, salt_seed: str | None) -> Host:
    """One host; its salt_seed is the site's (None: not given, so its own name)."""
    fields = HOST.parse(merged)
    fields["salt_seed"] = fields["hostname"] if salt_seed is None else salt_seed
    if fields["bridge"] is not None and fields["bridges"] is not None:
        raise merged.error("give `bridge` or `bridges`, not both")
    bridges: tuple[Bridge, ...] = fields.pop("bridges") or ()
    bridge = fields.pop("bridge")
    if bridge is not None:  # the one-bridge shorthand, already parsed
        bridges = (bridge,)
    fields["bridges"] = bridges
    parsed_network = fields.pop("network")
    if parsed_network is not None and bridges:
        raise merged.value["network"].error("give `network` or `bridge`/`bridges`, not both")
    if parsed_network is not None:
        fields["network"] = net.build(parsed_network, merged.value["network"], fields["mac"])
    else:
        fields["network"] = net.from_bridges(bridges, fields["mac"])
    fields["firewall"] = _firewall(fields["firewall"], merged)
    fields["packages"] = fields["packages"] or PACKAGES.build(  # type: ignore[misc]
        environment="virtualization-host-environment", groups=(), extra=())
    fields["storage"] = fields["storage"] or STORAGE_DEFAULT
    fields["repos"] = DEFAULT_REPOS if fields["repos"] is None else fields["repos"]
    host = Host(**fields)
    _check_repos(host, merged)
    _check_password(host, merged)
    _check_bridges(host, merged)
    _check_storage(host, merged)
    return host


_FIREWALL = shared(Firewall)


def _firewall(parsed: dict[str, Any] | None, merged: Located) -> Firewall:
    if parsed is None:
        return _FIREWALL(enabled=True, services=("ssh",))  # type: ignore[no-any-return]
    written = merged.value["firewall"].value
    # A host that disables the firewall drops the services it inherits; only services written
    # next to `enabled: false`, in the same mapping, contradict it.
    if not parsed["enabled"] and "services" in written and _same_mapping(
            written["services"], written["enabled"]):
        raise written["services"].error("services are opened only when the firewall is enabled")
    services = parsed["services"] if parsed["enabled"] else ()
    return _FIREWALL(enabled=parsed["enabled"], services=services)  # type: ignore[no-any-return]


def _same_mapping(one: Located, other: Located) -> bool:
    return one.path.rpartition(".")[0] == other.path.rpartition(".")[0]


def _check_repos(host: Host, merged: Located) -> None:
    seen: set[str] = set()
    for index, repo in enumerate(host.repos):
        if repo.name in seen:
            raise merged.value["repos"].value[index].value["name"].error(
                f"repo {repo.name} is listed twice")
        seen.add(repo.name)


def _check_password(host: Host, merged: Located) -> None:
    given = [k for k in ("root_password_hash", "root_password_env") if getattr(host, k)]
    if len(given) != 1:
        raise merged.error(
            "give exactly one of root_password_hash or root_password_env "
            f"(found {len(given)}); a kickstart without one stops the install to ask")
    var = host.root_password_env
    if var is not None and not os.environ.get(var):
        raise merged.value["root_password_env"].error(
            f"environment variable {var} is not set or empty")


def _check_bridges(host: Host, merged: Located) -> None:
    key = "bridge" if "bridge" in merged.value else "bridges"
    devices: set[str] = set()
    gateways = 0
    for index, bridge in enumerate(host.bridges):
        where = merged.value[key]
        if key == "bridges":
            where = where.value[index]
        for device in (bridge.name, *bridge.slaves):
            if device in devices:
                raise where.error(f"interface {device} is used twice on this host")
            devices.add(device)
        if bridge.forward_delay is not None and not bridge.stp:
            raise where.value["forward_delay"].error(
                "a forward delay needs stp: true (without STP it is 0)")
        if bridge.gateway is not None:
            gateways += 1
            if bridge.address is None:
                raise where.value["gateway"].error("a gateway needs a static address")
            if bridge.gateway not in bridge.address.network:
                raise where.value["gateway"].error(
                    f"{bridge.gateway} is not inside {bridge.address.network}")
            if bridge.gateway == bridge.address.ip:
                raise where.value["gateway"].error(
                    f"{bridge.gateway} is the host's own address")
        if gateways > 1:
            raise where.error("only one bridge may carry the default gateway")


def _check_storage(host: Host, merged: Located) -> None:
    mounts = [p.mount for p in host.storage.partitions]
    if mounts and "/" not in mounts:
        raise merged.value["storage"].error("an explicit layout needs a / partition")
    for mount in mounts:
        if mounts.count(mount) > 1 and mount != "swap":
            raise merged.value["storage"].error(f"mount point {mount} given twice")


def _fleet_keys(host: Host) -> tuple[str, ...]:
    """What no two hosts may share: a name, a MAC, an address ("kind=value", in the order
    they are checked)."""
    macs = {host.mac} if host.mac else set()
    addresses = {a.ip for a in host.network.addresses}
    if host.network.install and host.network.install.address:
        addresses.add(host.network.install.address.ip)
    return (f"hostname={host.hostname}", *(f"mac={mac}" for mac in sorted(macs | set(
        host.network.macs))), *(f"address={ip}" for ip in sorted(addresses)))


def _fleet_conflict(keys: list[tuple[str, ...]]) -> tuple[int, str, int] | None:
    """The first host with a key an earlier host has: (its index, the key, the other's)."""
    every = list(itertools.chain.from_iterable(keys))
    if len(set(every)) == len(every):
        return None  # no key twice (a set in C: 30,000 keys in ~1 ms, the loop took ~4)
    seen: dict[str, int] = {}
    for index, host_keys in enumerate(keys):
        for key in host_keys:
            other = seen.setdefault(key, index)
            if other != index:
                return index, key, other
    return None


def _outputs(given: Located | None, media: Media | None, pxe_given: bool) -> Outputs:
    """Defaults: an ISO per site when there are base media, a PXE tree when `pxe:` is given.
    Both take their boot files from the base media."""
    chosen = given.value if given is not None else {}
    iso = chosen["iso"].value if "iso" in chosen else ("per-site" if media else "none")
    pxe = bool(chosen["pxe"].value) if "pxe" in chosen else pxe_given and media is not None
    if media is None and (iso != "none" or pxe):
        assert given is not None
        key = "iso" if iso != "none" else "pxe"
        raise chosen[key].error(f"{'an ISO' if key == 'iso' else 'a PXE tree'} needs base "
                                "media: add a `media:` key")
    return Outputs(iso=iso, pxe=pxe)


def _secure_boot(site_path: Path, given: Located | None) -> SecureBoot:
    if given is None:
        return SecureBoot(origin=str(site_path))
    parsed = SITE_FIELDS["secure_boot"].node.parse(given)
    revocations = parsed["revocations"]
    return SecureBoot(policy=parsed["policy"],
                      revocations=site_path.parent / Path(revocations).expanduser()
                      if revocations else None,
                      origin=f"{given.file}:{given.line}")


def _overlays(site_path: Path, given: Located | None) -> Path | None:
    if given is None:
        return None
    root = (site_path.parent / str(given.value)).resolve()
    if not root.is_dir():
        raise given.error(f"folder {root} does not exist")
    return root


def _media(site_path: Path, given: Located | None) -> Media | None:
    """The media key, with the checks across its keys that the grammar cannot express."""
    if given is None:
        return None
    parsed = MEDIA.parse(given)
    kinds = [key for key in ("release", "path", "url") if parsed[key] is not None]
    if len(kinds) != 1:
        raise given.error("give exactly one of release, path or url")
    for key in ("flavor", "mirror"):
        if key in given.value and parsed["release"] is None:
            raise given.value[key].error(f"{key} goes with release")
    if parsed["url"] is not None and parsed["sha256"] is None:
        raise given.error("a url needs its sha256, so the download can be verified")
    path = parsed["path"]
    return Media(
        release=parsed["release"],
        flavor=parsed["flavor"] if parsed["release"] else None,
        path=site_path.parent / Path(path).expanduser() if path else None,
        url=parsed["url"],
        sha256=parsed["sha256"],
        mirror=parsed["mirror"] if "mirror" in given.value else None,
        origin=f"{given.file}:{given.line}: media",
    )


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
