"""builder.media.bootmenu on menus shaped like CentOS 7.9's (the fixture media templates)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.errors import InputError
from builder.media import bootmenu
from builder.media.bootmenu import MenuEdit, escape_label
from tests.fixtures.tree import MEDIA
from tests.fixtures.tree import escape_label as udev_escape

CENTOS = "CentOS 7 x86_64"


def menu(name: str, label: str = CENTOS, timeout: int = 60) -> str:
    text = (MEDIA / name).read_text()
    for key, value in {"@LABEL@": label, "@ESCAPED@": udev_escape(label),
                       "@ISOLINUX_TIMEOUT@": str(timeout * 10),
                       "@GRUB_TIMEOUT@": str(timeout)}.items():
        text = text.replace(key, value)
    return text


def isolinux_entries(text: str) -> dict[str, list[str]]:
    """label -> the entry's lines (up to the next label or menu begin/end)."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        found = re.match(r"\s*label\s+(\S+)", line, re.I)
        if found:
            current = entries.setdefault(found.group(1), [])
        elif re.match(r"\s*menu\s+(begin|end)", line, re.I):
            current = None
        if current is not None:
            current.append(line)
    return entries


def grub_entries(text: str) -> dict[str, list[str]]:
    """menuentry title -> its lines."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        found = re.match(r"\s*menuentry '([^']*)'", line)
        if found:
            current = entries.setdefault(found.group(1), [])
        if current is not None:
            current.append(line)
            if line.strip() == "}":
                current = None
    return entries


KS = f"inst.ks=hd:LABEL={udev_escape(CENTOS)}:/ks.cfg"
EDIT = MenuEdit(CENTOS, CENTOS, timeout=5)


# --- isolinux.cfg ------------------------------------------------------------------------------


def test_isolinux_installer_entries_get_the_kickstart() -> None:
    before = isolinux_entries(menu("isolinux.cfg.in"))
    after = isolinux_entries(bootmenu.edit_isolinux(menu("isolinux.cfg.in"), EDIT))
    assert set(after) == set(before) >= {"linux", "check", "vesa", "rescue", "memtest", "local"}
    for label in ("linux", "check", "vesa"):
        appends = [line for line in after[label] if line.strip().startswith("append")]
        assert len(appends) == 1 and appends[0].count("inst.ks=") == 1
        assert appends[0].endswith(" " + KS)
        assert f"inst.stage2=hd:LABEL={udev_escape(CENTOS)}" in appends[0]  # \x20 intact
    for label in ("rescue", "memtest", "local", "returntomain"):
        assert after[label] == before[label], label


def test_isolinux_default_and_timeout() -> None:
    text = bootmenu.edit_isolinux(menu("isolinux.cfg.in"), EDIT)
    entries = isolinux_entries(text)
    assert [label for label, lines in entries.items()
            if any(line.strip() == "menu default" for line in lines)] == ["linux"]
    assert re.findall(r"^timeout (\d+)$", text, re.M) == ["50"]
    kept = bootmenu.edit_isolinux(menu("isolinux.cfg.in"),
                                  MenuEdit(CENTOS, CENTOS, 0, keep_media_check=True))
    assert [label for label, lines in isolinux_entries(kept).items()
            if any(line.strip() == "menu default" for line in lines)] == ["check"]
    assert re.findall(r"^timeout (\d+)$", kept, re.M) == ["1"]  # 0 would wait for ever


def test_isolinux_only_the_edited_lines_change() -> None:
    original = menu("isolinux.cfg.in")
    edited = bootmenu.edit_isolinux(original, EDIT)
    removed = set(original.splitlines()) - set(edited.splitlines())
    assert all(re.match(r"\s*(append|menu default|timeout)\b", line) for line in removed)


def test_existing_kickstart_arguments_are_replaced() -> None:
    text = menu("isolinux.cfg.in").replace(
        "rd.live.check quiet", "rd.live.check ks=http://old/ks.cfg quiet inst.ks=cdrom:/a.cfg")
    check = isolinux_entries(bootmenu.edit_isolinux(text, EDIT))["check"]
    append = next(line for line in check if "append" in line)
    assert "ks=http://old" not in append and "cdrom:/a.cfg" not in append
    assert append.count("ks=") == 1 and append.endswith(KS)
    assert "inst.ks.sendmac" in bootmenu.add_kickstart("a inst.ks.sendmac ks=x", KS)


def test_crlf_files_keep_their_line_ends() -> None:
    text = menu("isolinux.cfg.in").replace("\n", "\r\n")
    edited = bootmenu.edit_isolinux(text, EDIT)
    assert "\n" not in edited.replace("\r\n", "")
    assert KS + "\r\n" in edited


def test_no_installer_entry_is_refused() -> None:
    with pytest.raises(InputError, match="no entry starts the installer"):
        bootmenu.edit_isolinux("default local\nlabel local\n  localboot 0xffff\n", EDIT)


# --- grub.cfg ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["linuxefi", "linux"])
def test_grub_installer_entries_get_the_kickstart(command: str) -> None:
    original = menu("grub.cfg.in").replace("linuxefi ", f"{command} ")
    after = grub_entries(bootmenu.edit_grub(original, EDIT))
    before = grub_entries(original)
    installers = [t for t in after if "Rescue" not in t]
    assert len(installers) == 3
    for title in installers:
        lines = [line for line in after[title] if line.strip().startswith(command + " ")]
        assert len(lines) == 1 and lines[0].endswith(" " + KS), title
        assert lines[0].startswith("\t")  # the tab indentation of the real file
    rescue = next(t for t in after if "Rescue" in t)
    assert after[rescue] == before[rescue]


def test_grub_default_timeout_and_submenu_numbering() -> None:
    text = bootmenu.edit_grub(menu("grub.cfg.in"), EDIT)
    assert re.findall(r'^set default="([^"]*)"$', text, re.M) == ["0"]
    assert re.findall(r"^set timeout=(\d+)$", text, re.M) == ["5"]
    kept = bootmenu.edit_grub(menu("grub.cfg.in"), MenuEdit(CENTOS, CENTOS, 5, True))
    assert re.findall(r'^set default="([^"]*)"$', kept, re.M) == ["1"]
    # An installer entry only inside a submenu: GRUB's "2>0" path.
    nested = ("set default=\"0\"\nmenuentry 'Local' {\n\tchainloader +1\n}\n"
              "menuentry 'Rescue' {\n\tlinux /vmlinuz inst.stage2=hd:LABEL=X rescue\n}\n"
              "submenu 'More' {\n\tmenuentry 'Install' {\n\t\tlinux /vmlinuz "
              "inst.stage2=hd:LABEL=X\n\t}\n}\n")
    assert 'set default="2>0"' in bootmenu.edit_grub(nested, MenuEdit("X", "X", 5))


# --- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("new", ["KVM HOSTS 7", "KVM_7.9+x@a#b=c", "A (b)&c/d\\e", "X"])
def test_new_volume_id_reaches_every_label(new: str) -> None:
    edit = MenuEdit(CENTOS, new, 5)
    iso_text = bootmenu.edit_isolinux(menu("isolinux.cfg.in"), edit)
    grub_text = bootmenu.edit_grub(menu("grub.cfg.in"), edit)
    for text in (iso_text, grub_text):
        assert udev_escape(CENTOS) not in text and CENTOS not in text
        labels = set(re.findall(r"LABEL=(\S+?)(?=[\s:]|$)", text, re.M))
        assert labels == {udev_escape(new)}
    assert re.findall(r"-l '([^']*)'", grub_text) == [new]  # the raw label, as lorax writes it
    assert f"inst.ks=hd:LABEL={udev_escape(new)}:/ks.cfg" in iso_text


def test_backslashes_in_the_files_survive() -> None:
    """Lines are not re-split (as shlex would): every backslash stays where it was."""
    odd = "  append initrd=initrd.img inst.stage2=hd:LABEL=CentOS\\x207\\x20x86_64 " \
          "foo=\"a b\\c\" bar='d\\ e' quiet"
    text = menu("isolinux.cfg.in").replace(
        "  append initrd=initrd.img inst.stage2=hd:LABEL=CentOS\\x207\\x20x86_64 quiet", odd)
    edited = bootmenu.edit_isolinux(text, EDIT)
    assert odd + " " + KS in edited.splitlines()


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_escape_label_is_udevs_encoding(label: str) -> None:
    escaped = escape_label(label)
    assert escaped == udev_escape(label)
    assert re.fullmatch(r"(?:[A-Za-z0-9#+.:=@_-]|\\x[0-9a-f]{2})*", escaped)
    decoded = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), escaped)
    assert decoded == label


@given(st.lists(st.text(alphabet="ab \\x20'\"#", max_size=30), max_size=8))
@settings(max_examples=200)
def test_lines_outside_entries_are_untouched(lines: list[str]) -> None:
    """Random text (with backslashes and quotes) before the menu passes through as it is."""
    prefix = "".join(f"# {line}\n" for line in lines)
    edited = bootmenu.edit_isolinux(prefix + menu("isolinux.cfg.in"), EDIT)
    assert edited.startswith(prefix)


@pytest.mark.parametrize("volid", ["KVM HOSTS 7", "A-b_c.d (x)&y", "x" * 16, "CentOS 7 x86_64"])
def test_good_volume_ids(volid: str) -> None:
    bootmenu.check_volume_id(volid)


@pytest.mark.parametrize(("volid", "why"), [
    ("", "empty"), (" A", "space"), ("A ", "space"), ("x" * 17, "longer than 16"),
    ("it's", "GRUB's search line"), ("a:b", "separates the path"), ("caf\u00e9", "ASCII"),
    ("tab\there", "ASCII"),
])
def test_bad_volume_ids(volid: str, why: str) -> None:
    with pytest.raises(InputError, match=why):
        bootmenu.check_volume_id(volid)


def test_without_joliet_32_characters_fit() -> None:
    bootmenu.check_volume_id("x" * 32, joliet=False)
    with pytest.raises(InputError, match="longer than 32"):
        bootmenu.check_volume_id("x" * 33, joliet=False)
