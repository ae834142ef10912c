"""Which kickstart an install ISO carries, and how the installer finds the right one.

- One host (a single-host site, or `--host NAME`): `/ks.cfg` is that host's kickstart.
- Several hosts (the per-site ISO): every host's kickstart is on the ISO as
  `/ks/<hostname>.cfg`, and `/ks.cfg` is a small dispatcher: a `%pre` script reads the MACs of
  the machine's NICs (/sys/class/net/*/address), looks them up in a table of the hosts that
  have a `mac`, copies `ks/<hostname>.cfg` from the install medium to /tmp, and the dispatcher
  `%include`s it. The medium is found at /run/install/repo (where the installer mounted it)
  or mounted read-only by its label. No match stops the install (`%pre --erroronfail`) with a
  message naming the MACs seen and the hosts known: installing a machine as the wrong host
  (with that host's static address) would be worse than stopping. A host without a `mac` can
  still be installed from the per-site ISO by editing the boot line to
  `inst.ks=hd:LABEL=<label>:/ks/<hostname>.cfg`, or get its own ISO with `--host`.

Why not one kickstart with every host inside: kickstart sections cannot nest, so a `%pre`
that wrote out a host's `%packages`/`%post` would end at the first `%end` of the text it
carries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from builder.errors import InputError
from builder.media.bootmenu import escape_label
from builder.site import Host

KS_DIR = "/ks"
PICKED = "/tmp/ksbuild-host.cfg"


@dataclass(frozen=True)
class IsoKickstarts:
    ks_cfg: bytes  # /ks.cfg
    extra: dict[str, bytes]  # more files by ISO path (/ks/<hostname>.cfg)
    hosts: tuple[str, ...]  # the hosts this ISO installs


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def dispatcher(hosts: list[Host], label: str) -> str:
    """The /ks.cfg of a multi-host ISO (see the module docstring)."""
    with_mac = sorted((h for h in hosts if h.mac), key=lambda h: h.hostname)
    cases = "\n".join(f"        {h.mac}) host={h.hostname} ;;" for h in with_mac)
    known = " ".join(f"{h.hostname}={h.mac}" for h in with_mac) or "(none)"
    return f"""\
# ksbuild: this ISO installs {len(hosts)} hosts; %pre picks this machine's kickstart by MAC
# from {KS_DIR}/<hostname>.cfg on the install medium. A host without a MAC: boot with
# inst.ks=hd:LABEL={escape_label(label)}:{KS_DIR}/<hostname>.cfg
%include {PICKED}

%pre --erroronfail --log=/tmp/ksbuild-pick.log
sysfs=${{KSBUILD_SYSFS:-/sys}}
label={_sh_quote(label)}
seen=
host=
for file in "$sysfs"/class/net/*/address; do
    [ -r "$file" ] || continue
    mac=$(tr 'A-F' 'a-f' < "$file")
    seen="$seen $mac"
    case "$mac" in
{cases or "        none) ;;"}
    esac
    [ -n "$host" ] && break
done
if [ -z "$host" ]; then
    echo "ksbuild: no kickstart on this ISO for the MAC(s):$seen" >&2
    echo "ksbuild: hosts known by MAC: {known}" >&2
    exit 1
fi
media=
for dir in ${{KSBUILD_MEDIA:-}} /run/install/repo /tmp/ksbuild-media; do
    if [ -f "$dir{KS_DIR}/$host.cfg" ]; then media=$dir; break; fi
done
if [ -z "$media" ]; then
    mkdir -p /tmp/ksbuild-media
    device=$(blkid -L "$label" 2>/dev/null || echo "/dev/disk/by-label/{escape_label(label)}")
    mount -o ro "$device" /tmp/ksbuild-media && media=/tmp/ksbuild-media
fi
if [ -z "$media" ] || ! cp "$media{KS_DIR}/$host.cfg" {PICKED}; then
    echo "ksbuild: this machine is $host, but {KS_DIR}/$host.cfg is not readable on the" \\
         "medium labelled $label" >&2
    exit 1
fi
echo "ksbuild: this machine is $host ({KS_DIR}/$host.cfg)"
%end
"""


def for_iso(rendered: dict[str, str], hosts: list[Host], label: str) -> IsoKickstarts:
    """The kickstart files for an ISO holding the kickstarts in `rendered` (hostname -> text)."""
    if not rendered:
        raise InputError("no host to build an ISO for")
    if len(rendered) == 1:
        (name, text), = rendered.items()
        return IsoKickstarts(text.encode("utf-8"), {}, (name,))
    if not any(h.mac for h in hosts):
        raise InputError(
            "none of the site's hosts has a `mac`, so a per-site ISO could not tell them apart "
            "at install time; give the hosts their install NIC's mac, or build one ISO per "
            "host with --host")
    extra = {f"{KS_DIR}/{name}.cfg": text.encode("utf-8") for name, text in rendered.items()}
    picker = dispatcher(hosts, label)
    # The installer parses /ks.cfg like any kickstart: the same grammars as the hosts'.
    from builder.ksvalidate import Validator  # pykickstart: imported only where it is used

    Validator().validate(picker, "ks.cfg (the per-site dispatcher)")
    return IsoKickstarts(picker.encode("utf-8"), extra, tuple(sorted(rendered)))


SOURCE_COMMANDS = ("cdrom", "harddrive", "url", "nfs", "repo", "liveimg", "install")
LABEL_REF = re.compile(r"LABEL=((?:\\x[0-9A-Fa-f]{2}|[^\s:\\])+)")


def _unescape(label: str) -> str:
    return re.sub(r"\\x([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), label)


def check_source_labels(text: str, volid: str, what: str) -> None:
    """A kickstart whose install source names a LABEL= must name this ISO's volume ID."""
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0] not in SOURCE_COMMANDS:
            continue
        for found in LABEL_REF.finditer(line):
            named = _unescape(found.group(1))
            if named != volid:
                raise InputError(
                    f"{what}:{number}: the install source names LABEL={found.group(1)} but the "
                    f"ISO's volume ID is {volid!r}; the installer would not find its packages")
