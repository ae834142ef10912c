"""The boot-test fixtures work for real: the CentOS-shaped ISO has the real layout and boots under
BIOS/UEFI as CD and USB stick (printing its command line and KSBUILD-NO-KS, the negative control
the ISO tests rely on), PXE BIOS/UEFI boots fetch a kickstart over HTTP, and each check here can
fail (negative controls)."""

from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

import pytest

from builder.run import run
from tests.fixtures import (
    centos_iso,
    comps_xml,
    escape_label,
    grub_net_efi,
    initramfs,
    kernel,
    kernel_modules,
    pxelinux_files,
    sgdisk_problems,
)
from tests.fixtures.initramfs import Cpio
from tests.fixtures.iso import _build as build_iso
from tests.fixtures.qemu import DEFAULT_MAC, BootResult, boot, http_server

UEFI_VOLID = "CENTOS7_TEST"  # Debian's GRUB mangles \x20: UEFI boots use a label without escapes
REAL_ESCAPED = r"CentOS\x207\x20x86_64"


@pytest.fixture(scope="module")
def iso() -> Path:
    return centos_iso()


def extract(image: Path, path: str, dest: Path) -> bytes:
    target = dest / path.strip("/").replace("/", "_")
    run(["xorriso", "-osirrox", "on", "-indev", image, "-extract", path, target])
    return target.read_bytes()


def iso_paths(image: Path) -> set[str]:
    out = run(["xorriso", "-indev", image, "-find", "/"]).stdout.decode()
    return set(re.findall(r"'(/[^']*)'", out))


def report(image: Path) -> str:
    done = run(["xorriso", "-indev", image, "-report_el_torito", "plain",
                "-report_system_area", "plain"])
    return (done.stdout + done.stderr).decode()  # the volume id is in the stderr summary


# --- kernel and initramfs ---------------------------------------------------------------------

def test_kernel_modules_come_in_dependency_order() -> None:
    assert kernel().read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    names = [ko.stem for ko in kernel_modules()]
    for before, after in [("scsi_mod", "sr_mod"), ("libata", "ata_piix"), ("cdrom", "sr_mod"),
                          ("scsi_mod", "sd_mod"), ("virtio", "virtio_net")]:
        assert names.index(before) < names.index(after), names
    assert {"isofs", "e1000", "ata_piix"} <= set(names)


def test_initramfs_holds_init_busybox_and_modules(tmp_path: Path) -> None:
    listing = run(["cpio", "-t", "--quiet"], input=gzip.decompress(initramfs().read_bytes()),
                  cwd=tmp_path).stdout.decode().split()
    assert {"init", "bin/busybox", "bin/sh", "dev/console", "lib/modules/modules.load",
            "lib/modules/sr_mod.ko"} <= set(listing)
    assert listing == sorted(listing)


def test_cpio_writer_is_deterministic_and_readable(tmp_path: Path) -> None:
    def archive(order: list[str]) -> bytes:
        cpio = Cpio()
        for name in order:
            cpio.add(name, 0o100644, name.encode())
        return cpio.finish()

    first, second = archive(["b", "a"]), archive(["a", "b"])
    assert first == second
    run(["cpio", "-i", "--quiet"], input=first, cwd=tmp_path)
    assert (tmp_path / "a").read_text() == "a"


def test_escape_label_is_udev_encoding() -> None:
    assert escape_label("CentOS 7 x86_64") == REAL_ESCAPED
    assert escape_label("a/b'c#+.:=@_-") == r"a\x2fb\x27c#+.:=@_-"


# --- the ISO's shape ---------------------------------------------------------------------------

def test_iso_boot_records_and_hybrid_layout(iso: Path) -> None:
    text = report(iso)
    assert "Volume id    : 'CentOS 7 x86_64'" in text
    assert "El Torito cat path : /isolinux/boot.cat" in text
    assert re.search(r"El Torito boot img :\s+1\s+BIOS\s+y\s+none\s+0x0000\s+0x00\s+4\s", text)
    assert re.search(r"El Torito img opts :\s+1\s+boot-info-table", text)
    assert re.search(r"El Torito img path :\s+2\s+/images/efiboot.img", text)
    assert re.search(r"El Torito boot img :\s+2\s+UEFI", text)
    assert "System area summary: MBR isohybrid cyl-align-on GPT" in text
    assert re.search(r"MBR partition path :\s+2\s+/images/efiboot.img", text)
    assert re.search(r"GPT partition path :\s+2\s+/images/efiboot.img", text)


def test_iso_partition_tables_are_sound_and_a_broken_gpt_is_caught(iso: Path,
                                                                    tmp_path: Path) -> None:
    assert sgdisk_problems(iso) == []
    broken = tmp_path / "broken.iso"
    shutil.copyfile(iso, broken)
    with broken.open("r+b") as f:  # one byte of the primary GPT partition array (LBA 2)
        f.seek(2 * 512 + 60)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert any("CRC" in p for p in sgdisk_problems(broken))


def test_iso_media_check_passes_and_fails_when_changed(iso: Path, tmp_path: Path) -> None:
    assert run(["checkisomd5", iso], check=False).returncode == 0
    changed = tmp_path / "changed.iso"
    shutil.copyfile(iso, changed)
    with changed.open("r+b") as f:
        f.seek(20 * 2048)
        f.write(b"X")
    assert run(["checkisomd5", changed], check=False).returncode != 0


def test_iso_has_the_centos_7_layout_and_menus(iso: Path, tmp_path: Path) -> None:
    paths = iso_paths(iso)
    for path in ("/isolinux/isolinux.bin", "/isolinux/ldlinux.c32", "/isolinux/vesamenu.c32",
                 "/isolinux/libcom32.c32", "/isolinux/libutil.c32", "/isolinux/vmlinuz",
                 "/isolinux/initrd.img", "/isolinux/boot.msg", "/isolinux/boot.cat",
                 "/images/pxeboot/vmlinuz", "/images/pxeboot/initrd.img", "/images/efiboot.img",
                 "/EFI/BOOT/BOOTX64.EFI", "/EFI/BOOT/grubx64.efi", "/EFI/BOOT/grub.cfg",
                 "/LiveOS/squashfs.img", "/.discinfo", "/.treeinfo", "/Packages", "/repodata"):
        assert path in paths, path
    isolinux = extract(iso, "/isolinux/isolinux.cfg", tmp_path).decode()
    assert "timeout 600\n" in isolinux
    check = isolinux.split("label check\n")[1].split("\n\n")[0]
    assert "  menu default\n" in check and "rd.live.check" in check
    assert isolinux.count(f"inst.stage2=hd:LABEL={REAL_ESCAPED} ") == 4
    for label in ("linux", "vesa", "rescue", "memtest", "local"):
        assert f"\nlabel {label}\n" in isolinux
    grub = extract(iso, "/EFI/BOOT/grub.cfg", tmp_path).decode()
    assert 'set default="1"\n' in grub and "set timeout=60\n" in grub
    assert "search --no-floppy --set=root -l 'CentOS 7 x86_64'\n" in grub
    assert f"\tlinuxefi /images/pxeboot/vmlinuz inst.stage2=hd:LABEL={REAL_ESCAPED} quiet\n" in grub
    assert "\tinitrdefi /images/pxeboot/initrd.img\n" in grub
    assert extract(iso, "/.discinfo", tmp_path).decode().splitlines()[1:] == ["7.9", "x86_64"]
    assert "mainimage = LiveOS/squashfs.img" in extract(iso, "/.treeinfo", tmp_path).decode()
    assert extract(iso, "/isolinux/vmlinuz", tmp_path) == kernel().read_bytes()


def test_efiboot_img_is_fat_anaconda_with_its_own_grub_cfg(iso: Path, tmp_path: Path) -> None:
    image = tmp_path / "efiboot.img"
    image.write_bytes(extract(iso, "/images/efiboot.img", tmp_path))
    label = run(["mlabel", "-s", "-i", image, "::"]).stdout.decode()
    assert label.split() == ["Volume", "label", "is", "ANACONDA"], label
    listing = run(["mdir", "-/", "-b", "-i", image, "::"]).stdout.decode().split()
    assert {"::/EFI/BOOT/BOOTX64.EFI", "::/EFI/BOOT/grubx64.efi",
            "::/EFI/BOOT/grub.cfg"} <= set(listing), listing
    inner = run(["mtype", "-i", image, "::/EFI/BOOT/grub.cfg"]).stdout
    assert inner == extract(iso, "/EFI/BOOT/grub.cfg", tmp_path)


@pytest.mark.parametrize("flavor,comps,virt", [
    ("DVD", "-c7-x86_64-comps.xml", True),
    ("Everything", "-c7-x86_64-comps.xml", True),
    ("Minimal", "-c7-minimal-x86_64-comps.xml", False),
    ("NetInstall", None, False),
])
def test_flavors_differ_as_real_media_do(flavor: str, comps: str | None, virt: bool,
                                         tmp_path: Path) -> None:
    image = centos_iso(flavor=flavor)
    paths = iso_paths(image)
    names = [p for p in paths if p.startswith("/repodata/") and p.endswith("-comps.xml")]
    if comps is None:
        assert "/repodata" not in paths and "/Packages" not in paths
        return
    assert len(names) == 1 and names[0].endswith(comps), names
    text = extract(image, names[0], tmp_path).decode()
    assert text == comps_xml(flavor)
    assert ("<id>virtualization-host-environment</id>" in text) is virt
    assert names[0] in extract(image, "/repodata/repomd.xml", tmp_path).decode().replace(
        'href="', 'href="/')


def test_discinfo_tells_same_labelled_flavors_apart(tmp_path: Path) -> None:
    flavors = ("DVD", "Everything", "Minimal", "NetInstall")
    stamps = set()
    for flavor in flavors:
        folder = tmp_path / flavor
        folder.mkdir()
        stamps.add(extract(centos_iso(flavor=flavor), "/.discinfo", folder))
    assert len(stamps) == len(flavors)


def test_iso_build_is_byte_identical_whatever_tz_and_umask(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "1.iso", tmp_path / "2.iso"
    build_iso(first, "CentOS 7 x86_64", "NetInstall", "iso9660", 0, 60)
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    old = os.umask(0o077)
    try:
        build_iso(second, "CentOS 7 x86_64", "NetInstall", "iso9660", 0, 60)
    finally:
        os.umask(old)
    assert first.read_bytes() == second.read_bytes()


def test_size_padding_makes_a_big_sparse_image(tmp_path: Path) -> None:
    out = tmp_path / "big.iso"
    build_iso(out, "CentOS 7 x86_64", "NetInstall", "iso9660", 256 << 20, 60)
    assert out.stat().st_size > 256 << 20
    assert out.stat().st_blocks * 512 < 128 << 20  # holes dug: the filler takes no disk
    assert run(["checkisomd5", out], check=False).returncode == 0


# --- boots ---------------------------------------------------------------------------------------

def assert_plain_boot(result: BootResult, escaped_label: str) -> None:
    assert not result.timed_out, result.describe()
    assert result.cmdline is not None, result.describe()
    # The menus' default entry (media check) ran, with the label escaped as on real media.
    assert f"inst.stage2=hd:LABEL={escaped_label} rd.live.check quiet" in result.cmdline
    assert result.no_ks and result.kickstart is None and result.done, result.describe()
    print(f"\n{result.mode}: {result.seconds:.1f} s")


@pytest.mark.boot
@pytest.mark.parametrize("mode", ["bios-cd", "bios-usb"])
def test_plain_iso_boots_under_bios(mode: str, iso: Path) -> None:
    result = boot(mode, media=iso, press_enter=True)
    assert_plain_boot(result, REAL_ESCAPED)
    assert "ISOLINUX" in result.log


@pytest.mark.boot
@pytest.mark.parametrize("mode,efi_config", [("uefi-cd", "iso9660"), ("uefi-usb", "efiboot")])
def test_plain_iso_boots_under_uefi(mode: str, efi_config: str) -> None:
    image = centos_iso(UEFI_VOLID, efi_config=efi_config)
    result = boot(mode, media=image, press_enter=True)
    assert_plain_boot(result, UEFI_VOLID)
    assert result.grub_config == efi_config, result.describe()


def edit_grub_cfg_copy(image: Path, copy: str) -> None:
    """In place, change `rd.live.check quiet` to `rd.live.check QUIET` in ONE grub.cfg copy:
    the ISO 9660 /EFI/BOOT/grub.cfg or the one inside images/efiboot.img (same length, so no
    file system needs rewriting)."""
    lbas = run(["xorriso", "-indev", image, "-find", "/", "-exec", "report_lba"]).stdout.decode()
    path = "/EFI/BOOT/grub.cfg" if copy == "iso9660" else "/images/efiboot.img"
    found = re.search(rf"^File data lba:\s+0\s*,\s*(\d+)\s*,\s*\d+\s*,\s*(\d+)\s*,\s*'{path}'$",
                      lbas, re.M)
    assert found, lbas
    start, size = int(found.group(1)) * 2048, int(found.group(2))
    with image.open("r+b") as f:
        f.seek(start)
        region = f.read(size)
        line = b" rd.live.check quiet\n"
        at = region.index(line)
        assert region.count(line) == 1
        f.seek(start + at)
        f.write(b" rd.live.check QUIET\n")


@pytest.mark.boot
@pytest.mark.parametrize("efi_config", ["iso9660", "efiboot"])
def test_efi_config_switch_reads_that_grub_cfg_copy(efi_config: str, tmp_path: Path) -> None:
    """Only the selected copy is edited: booting its edited line proves which copy was read."""
    image = tmp_path / "edited.iso"
    shutil.copyfile(centos_iso(UEFI_VOLID, efi_config=efi_config), image)
    edit_grub_cfg_copy(image, efi_config)
    result = boot("uefi-cd", media=image, press_enter=True)
    assert result.cmdline is not None and result.cmdline.endswith(" rd.live.check QUIET"), \
        result.describe()
    print(f"\nuefi-cd, edited {efi_config} copy: {result.seconds:.1f} s")


@pytest.mark.boot
def test_initramfs_reads_hd_label_and_tries_sources_in_turn(iso: Path, tmp_path: Path) -> None:
    """Direct kernel boot (no boot loader): a missing file is reported, the next source used."""
    result = boot("bios-cd", media=iso, kernel=kernel(), initrd=initramfs(),
                  append=f"inst.ks=cdrom:/missing.cfg inst.ks=hd:LABEL={REAL_ESCAPED}:/.discinfo")
    assert result.ks_errors == ["no /missing.cfg on /dev/sr0"], result.describe()
    assert result.kickstart_source == f"hd:LABEL={REAL_ESCAPED}:/.discinfo"
    assert result.kickstart == extract(iso, "/.discinfo", tmp_path).decode()
    print(f"\ndirect kernel, hd:LABEL: {result.seconds:.1f} s")


def write_pxe_tree(tree: Path, mode: str, append: str) -> str:
    shutil.copyfile(kernel(), tree / "vmlinuz")
    shutil.copyfile(initramfs(), tree / "initrd.img")
    mac = DEFAULT_MAC.replace(":", "-")
    if mode == "pxe-bios":
        for name, path in pxelinux_files().items():
            shutil.copyfile(path, tree / name)
        (tree / "pxelinux.cfg").mkdir()
        (tree / "pxelinux.cfg" / "default").write_text("default local\nlabel local\n"
                                                       "  localboot 0\n")
        (tree / "pxelinux.cfg" / f"01-{mac}").write_text(
            f"default ks\nlabel ks\n  kernel vmlinuz\n  append initrd=initrd.img {append}\n")
        return "pxelinux.0"
    shutil.copyfile(grub_net_efi(), tree / "grubx64.efi")
    (tree / f"grub.cfg-01-{mac}").write_text(
        f"set timeout=1\nmenuentry 'ks' {{\n\tlinuxefi /vmlinuz {append}\n"
        "\tinitrdefi /initrd.img\n}\n")
    return "grubx64.efi"


@pytest.mark.boot
@pytest.mark.parametrize("mode", ["pxe-bios", "pxe-uefi"])
def test_pxe_boot_fetches_kickstart_through_guestfwd(mode: str, tmp_path: Path) -> None:
    tree, web = tmp_path / "tftp", tmp_path / "web"
    tree.mkdir()
    web.mkdir()
    kickstart = "#version=RHEL7\n# fetched over guestfwd\nrootpw --lock\n"
    (web / "ks.cfg").write_text(kickstart)
    bootfile = write_pxe_tree(tree, mode, "inst.ks=http://10.0.2.100/ks.cfg inst.ks.sendmac")
    with http_server(web) as server:
        result = boot(mode, tftp_dir=tree, bootfile=bootfile, http_port=server.port)
    assert result.kickstart == kickstart, result.describe()
    assert result.cmdline is not None and "inst.ks=http://10.0.2.100/ks.cfg" in result.cmdline
    assert server.requests[0][0] == "/ks.cfg"
    assert server.requests[0][1]["X-RHN-Provisioning-MAC-0"] == f"eth0 {DEFAULT_MAC}"
    print(f"\n{mode}: {result.seconds:.1f} s")


@pytest.mark.boot
def test_boot_timeout_kills_qemu(iso: Path) -> None:
    result = boot("bios-cd", media=iso, timeout=3)  # the menu waits 60 s: never done in 3 s
    assert result.timed_out and result.returncode is None and not result.done
    with pytest.raises(ProcessLookupError):
        os.kill(result.pid, 0)
