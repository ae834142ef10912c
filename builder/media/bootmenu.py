"""Edit the boot menus of CentOS 7 media: `isolinux/isolinux.cfg` (BIOS) and `EFI/BOOT/grub.cfg`
(UEFI, on the ISO 9660 and inside `images/efiboot.img`).

- Every entry that starts the installer (install, media check, basic graphics: a kernel line
  with `inst.stage2=`/`inst.repo=`/`stage2=` and no `rescue`) gets
  `inst.ks=hd:LABEL=<label>:/ks.cfg`, replacing any `inst.ks=`/`ks=` it had. Rescue, memtest
  and local boot stay as they are.
- The install entry becomes the default (the media-check entry with keep_media_check), and the
  timeout is set.
- A new volume ID replaces the old one in every `LABEL=` and in GRUB's `search -l '...'` line.

Lines are edited as text with regular expressions, never re-split with shlex: the `\\x20`
escapes of labels (udev's encoding, which the installer decodes) and any other backslash in the
files survive byte for byte, and so does every line we do not touch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from builder.errors import InputError

LABEL_SAFE = re.compile(r"[A-Za-z0-9#+.:=@_-]")
# Kernel arguments that mark an entry as one that starts the installer from this medium.
INSTALLER_ARG = re.compile(r"(?<!\S)(?:inst\.stage2|inst\.repo|stage2|repo)=\S")
RESCUE_ARG = re.compile(r"(?<!\S)(?:inst\.)?rescue(?:=\S*)?(?!\S)")
MEDIA_CHECK_ARG = re.compile(r"(?<!\S)rd\.live\.check(?!\S)")
KICKSTART_ARG = re.compile(r"[ \t]*(?<!\S)(?:inst\.ks|ks)=\S*")


def escape_label(label: str) -> str:
    """A volume label as kernel command lines carry it: `\\xNN` outside A-Za-z0-9#+.:=@_-."""
    return "".join(c if LABEL_SAFE.fullmatch(c) else f"\\x{ord(c):02x}" for c in label)


def check_volume_id(volid: str, joliet: bool = True) -> None:
    """Refuse a volume ID the menus or the installer could not carry intact."""
    limit = 16 if joliet else 32  # Joliet keeps 16 UCS-2 characters; blkid may prefer them
    problems = []
    if not volid or volid != volid.strip(" "):
        problems.append("it is empty or starts or ends with a space")
    if len(volid) > limit:
        problems.append(f"it is longer than {limit} characters"
                        + (" (the Joliet limit)" if joliet else ""))
    if any(not (" " <= c <= "~") for c in volid):
        problems.append("it has characters outside printable ASCII")
    if "'" in volid:
        problems.append("it has a ' (GRUB's search line quotes the label with ')")
    if ":" in volid:
        problems.append("it has a : (inst.ks=hd:LABEL=...:/ks.cfg separates the path with :)")
    if problems:
        raise InputError(f"volume ID {volid!r}: " + "; ".join(problems))


@dataclass(frozen=True)
class MenuEdit:
    old_label: str
    new_label: str
    timeout: int  # seconds
    keep_media_check: bool = False
    ks_path: str = "/ks.cfg"
    installer_args: tuple[str, ...] = ()  # added before inst.ks= (e.g. net.ifnames=0)

    @property
    def ks_arg(self) -> str:
        """What every installer entry gets at the end of its kernel arguments."""
        return " ".join([*self.installer_args,
                         f"inst.ks=hd:LABEL={escape_label(self.new_label)}:{self.ks_path}"])


def is_installer_args(args: str) -> bool:
    return bool(INSTALLER_ARG.search(args)) and not RESCUE_ARG.search(args)


def add_kickstart(args: str, ks_arg: str) -> str:
    """Kernel arguments with every inst.ks=/ks= removed and `ks_arg` added at the end."""
    stripped = KICKSTART_ARG.sub("", args)
    body = stripped.rstrip(" \t")
    return f"{body} {ks_arg}{stripped[len(body):]}"


def relabel(text: str, old: str, new: str) -> str:
    """Every `LABEL=<old>` (escaped or raw) becomes `LABEL=<new>` (escaped)."""
    if old == new:
        return text
    forms = sorted({escape_label(old), old}, key=len, reverse=True)
    pattern = re.compile(r"(LABEL=)(?:" + "|".join(re.escape(f) for f in forms) + r")(?=[\s:]|$)",
                         re.M)
    return pattern.sub(lambda m: m.group(1) + escape_label(new), text)


def _split(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _eol(line: str) -> str:
    return line[len(line.rstrip("\r\n")):]


# ---------------------------------------------------------------------------------------------
# isolinux.cfg


ISO_LABEL = re.compile(r"^([ \t]*)label[ \t]+(\S+)", re.I)
ISO_APPEND = re.compile(r"^([ \t]*append[ \t]+)(.*?)([ \t]*)$", re.I)
ISO_MENU_DEFAULT = re.compile(r"^[ \t]*menu[ \t]+default[ \t]*$", re.I)
ISO_TIMEOUT = re.compile(r"^([ \t]*timeout[ \t]+)\d+", re.I)
ISO_DEFAULT = re.compile(r"^([ \t]*default[ \t]+)(\S+)", re.I)
ISO_ENTRY_END = re.compile(r"^[ \t]*menu[ \t]+(?:begin|end)\b", re.I)


@dataclass
class _Entry:
    label: str
    start: int  # index of the `label` line
    end: int  # one past its last line
    indent: str
    installer: bool = False
    media_check: bool = False


def _isolinux_entries(lines: list[str]) -> list[_Entry]:
    entries: list[_Entry] = []
    for i, line in enumerate(lines):
        found = ISO_LABEL.match(line)
        if (found or ISO_ENTRY_END.match(line)) and entries and entries[-1].end == -1:
            entries[-1].end = i
        if found:
            entries.append(_Entry(found.group(2), i, -1, found.group(1) + "  "))
    if entries and entries[-1].end == -1:
        entries[-1].end = len(lines)
    for entry in entries:
        for line in lines[entry.start:entry.end]:
            append = ISO_APPEND.match(line.rstrip("\r\n"))
            if append and is_installer_args(append.group(2)):
                entry.installer = True
                entry.media_check = bool(MEDIA_CHECK_ARG.search(append.group(2)))
    return entries


class _Choosable(Protocol):
    installer: bool
    media_check: bool


E = TypeVar("E", bound=_Choosable)


def _pick_default(entries: Sequence[E], keep_media_check: bool, what: str) -> E:
    installers = [e for e in entries if e.installer]
    if not installers:
        raise InputError(f"{what}: no entry starts the installer (no kernel line with "
                         "inst.stage2=); is this a CentOS 7 boot medium?")
    plain = [e for e in installers if not e.media_check]
    checks = [e for e in installers if e.media_check]
    if keep_media_check and checks:
        return checks[0]
    return plain[0] if plain else installers[0]


def edit_isolinux(text: str, edit: MenuEdit, what: str = "isolinux/isolinux.cfg") -> str:
    lines = _split(relabel(text, edit.old_label, edit.new_label))
    entries = _isolinux_entries(lines)
    default = _pick_default(entries, edit.keep_media_check, what)
    out: list[str] = []
    timeout_set = False
    for i, line in enumerate(lines):
        body, eol = line.rstrip("\r\n"), _eol(line)
        entry = next((e for e in entries if e.start <= i < e.end), None)
        if ISO_MENU_DEFAULT.match(body):
            continue  # every old default goes; the chosen entry gets its own below
        append = ISO_APPEND.match(body)
        if entry is not None and entry.installer and append:
            body = append.group(1) + add_kickstart(append.group(2), edit.ks_arg) + append.group(3)
        elif entry is None and ISO_TIMEOUT.match(body):
            body = ISO_TIMEOUT.sub(lambda m: m.group(1) + str(_isolinux_timeout(edit)), body)
            timeout_set = True
        elif entry is None and (found := ISO_DEFAULT.match(body)) and \
                any(e.label == found.group(2) for e in entries):
            body = found.group(1) + default.label + body[found.end():]
        out.append(body + eol)
        if entry is default and i == default.start:
            out.append(f"{default.indent}menu default{eol or chr(10)}")
    if not timeout_set:
        out.insert(0, f"timeout {_isolinux_timeout(edit)}\n")
    return "".join(out)


def _isolinux_timeout(edit: MenuEdit) -> int:
    # Tenths of a second; 0 would mean "wait for ever", so the shortest real wait is 1.
    return max(1, edit.timeout * 10)


# ---------------------------------------------------------------------------------------------
# grub.cfg


GRUB_LINUX = re.compile(r"^([ \t]*(?:linux|linuxefi|linux16)[ \t]+\S+)(.*?)([ \t]*)$")
GRUB_MENUENTRY = re.compile(r"^[ \t]*menuentry\b")
GRUB_SUBMENU = re.compile(r"^[ \t]*submenu\b")
GRUB_SET_DEFAULT = re.compile(r"^([ \t]*set[ \t]+default=).*$")
GRUB_SET_TIMEOUT = re.compile(r"^([ \t]*set[ \t]+timeout=).*$")
GRUB_SEARCH_LABEL = re.compile(r"^([ \t]*search\b.*?(?:-l|--label)[ \t]+)('[^']*'|\"[^\"]*\"|\S+)")


@dataclass
class _GrubEntry:
    path: str  # GRUB's default syntax: "0", or "2>1" inside a submenu
    start: int
    installer: bool = False
    media_check: bool = False
    linux_lines: tuple[int, ...] = ()


def _grub_entries(lines: list[str]) -> list[_GrubEntry]:
    """Menu entries with their GRUB default path, found by brace depth."""
    entries: list[_GrubEntry] = []
    counters = [0]  # the next entry number at each submenu depth
    stack: list[str] = []  # "entry" or "submenu" for each open block
    prefix: list[str] = []
    current: _GrubEntry | None = None
    linux: list[int] = []
    for i, line in enumerate(lines):
        body = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        if GRUB_MENUENTRY.match(body) or GRUB_SUBMENU.match(body):
            number = counters[-1]
            counters[-1] += 1
            if GRUB_MENUENTRY.match(body):
                current = _GrubEntry(">".join([*prefix, str(number)]), i)
                linux = []
                stack.append("entry")
            else:
                prefix.append(str(number))
                counters.append(0)
                stack.append("submenu")
            continue
        if current is not None and GRUB_LINUX.match(body.rstrip("\r\n")):
            linux.append(i)
        if body.strip() == "}" and stack:
            kind = stack.pop()
            if kind == "entry" and current is not None:
                current.linux_lines = tuple(linux)
                entries.append(current)
                current = None
            elif kind == "submenu":
                prefix.pop()
                counters.pop()
    for entry in entries:
        for index in entry.linux_lines:
            found = GRUB_LINUX.match(lines[index].rstrip("\r\n"))
            if found and is_installer_args(found.group(2)):
                entry.installer = True
                entry.media_check = bool(MEDIA_CHECK_ARG.search(found.group(2)))
    return entries


def edit_grub(text: str, edit: MenuEdit, what: str = "EFI/BOOT/grub.cfg") -> str:
    lines = _split(relabel(text, edit.old_label, edit.new_label))
    entries = _grub_entries(lines)
    chosen = _pick_default(entries, edit.keep_media_check, what)
    installer_lines = {i for e in entries if e.installer for i in e.linux_lines}
    out: list[str] = []
    seen_default = seen_timeout = False
    for i, line in enumerate(lines):
        body, eol = line.rstrip("\r\n"), _eol(line)
        linux = GRUB_LINUX.match(body)
        if i in installer_lines and linux and is_installer_args(linux.group(2)):
            body = linux.group(1) + add_kickstart(linux.group(2), edit.ks_arg) + linux.group(3)
        elif GRUB_SET_DEFAULT.match(body):
            body = GRUB_SET_DEFAULT.sub(lambda m: f'{m.group(1)}"{chosen.path}"', body)
            seen_default = True
        elif GRUB_SET_TIMEOUT.match(body):
            body = GRUB_SET_TIMEOUT.sub(lambda m: f"{m.group(1)}{edit.timeout}", body)
            seen_timeout = True
        elif (search := GRUB_SEARCH_LABEL.match(body)) and \
                search.group(2).strip("'\"") == edit.old_label:
            body = f"{search.group(1)}'{edit.new_label}'{body[search.end():]}"
        out.append(body + eol)
    head = []
    if not seen_default:
        head.append(f'set default="{chosen.path}"\n')
    if not seen_timeout:
        head.append(f"set timeout={edit.timeout}\n")
    return "".join(head + out)
