"""Repacked ISOs booted in QEMU (TCG): the kickstart must reach the kernel (`inst.ks=` on the
command line, by the menu's default entry, without a key press) and resolve to the very bytes
we put on the medium. The guest is the fixture's reporting initramfs (tests/fixtures).

Matrix: BIOS CD, BIOS USB stick, UEFI CD (GRUB reads the ISO 9660 grub.cfg), UEFI CD reading
the grub.cfg copy inside images/efiboot.img, UEFI USB stick (the EFI partition of the GPT,
then that copy). Debian's GRUB mangles `\\x20`, so the UEFI bases have a volume ID without
characters to escape; the escaped-label path runs end to end under BIOS (spaces, and a volume
ID full of other characters). Negative controls: the unrepacked bases boot without any
kickstart, and the media-check default is taken only when asked for.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import centos_iso
from tests.fixtures.qemu import BootResult, boot
from tests.fixtures.tree import escape_label
from tests.test_iso_support import ONE_HOST, REPO, ksbuild, write_site

pytestmark = pytest.mark.boot

UEFI_VOLID = "CENTOS7"  # nothing to escape: Debian's GRUB passes it intact
ODD_VOLID = "KVM (7)&x y#+.="


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_site(tmp_path_factory.mktemp("site"), ONE_HOST)


@pytest.fixture(scope="module")
def expected_ks(site: Path) -> bytes:
    from builder import kickstart
    from builder import site as site_module

    (text,) = kickstart.render_site(site_module.load(site)).values()
    return text.encode()


def repack(site: Path, base: Path, out: Path, *args: str) -> Path:
    done = ksbuild("iso", site, "--base", base, "-o", out, "--timeout", "2", *args)
    assert done.returncode == 0, done.stderr
    return out


def assert_kickstart(result: BootResult, label: str, expected: bytes) -> None:
    info = result.describe()
    assert result.done and not result.timed_out, info
    cmdline = result.cmdline
    assert cmdline is not None, info
    assert f"inst.ks=hd:LABEL={escape_label(label)}:/ks.cfg" in cmdline.split(), info
    assert "rd.live.check" not in cmdline.split(), info  # the install entry, not media check
    assert result.kickstart_source == f"hd:LABEL={escape_label(label)}:/ks.cfg", info
    assert result.kickstart_sha256 == hashlib.sha256(expected).hexdigest(), info


@pytest.mark.parametrize("mode", ["bios-cd", "bios-usb"])
def test_bios(site: Path, expected_ks: bytes, tmp_path: Path, mode: str) -> None:
    """The real CentOS label, with spaces: `\\x20` escapes through isolinux to the kernel."""
    out = repack(site, centos_iso(), tmp_path / "bios.iso")
    assert_kickstart(boot(mode, media=out, timeout=240), "CentOS 7 x86_64", expected_ks)


@pytest.mark.parametrize(("mode", "efi_config"), [
    ("uefi-cd", "iso9660"), ("uefi-cd", "efiboot"), ("uefi-usb", "efiboot"),
])
def test_uefi(site: Path, expected_ks: bytes, tmp_path: Path, mode: str,
              efi_config: str) -> None:
    base = centos_iso(UEFI_VOLID, efi_config=efi_config)
    out = repack(site, base, tmp_path / "uefi.iso")
    result = boot(mode, media=out, timeout=300)
    assert f"KSBUILD-GRUB-CONFIG {efi_config}" in result.log, result.describe()
    assert_kickstart(result, UEFI_VOLID, expected_ks)


def test_new_volume_id_full_of_odd_characters_bios(site: Path, expected_ks: bytes,
                                                    tmp_path: Path) -> None:
    out = repack(site, centos_iso(), tmp_path / "odd.iso", "--volid", ODD_VOLID)
    result = boot("bios-cd", media=out, timeout=240)
    assert_kickstart(result, ODD_VOLID, expected_ks)
    assert f"inst.stage2=hd:LABEL={escape_label(ODD_VOLID)}" in (result.cmdline or "").split()


def test_keep_media_check_makes_it_the_default(site: Path, expected_ks: bytes,
                                               tmp_path: Path) -> None:
    out = repack(site, centos_iso(), tmp_path / "check.iso", "--keep-media-check")
    result = boot("bios-cd", media=out, timeout=240)
    assert "rd.live.check" in (result.cmdline or "").split(), result.describe()
    assert result.kickstart_sha256 == hashlib.sha256(expected_ks).hexdigest(), result.describe()


@pytest.mark.parametrize(("mode", "volid", "efi_config"), [
    ("bios-cd", "CentOS 7 x86_64", "iso9660"), ("uefi-usb", UEFI_VOLID, "efiboot"),
])
def test_unrepacked_base_boots_without_kickstart(mode: str, volid: str,
                                                 efi_config: str) -> None:
    """Negative control: the same boot of the base shows no inst.ks (the checks can fail)."""
    result = boot(mode, media=centos_iso(volid, efi_config=efi_config), timeout=300,
                  press_enter=True)
    assert result.done and result.no_ks, result.describe()
    assert "rd.live.check" in (result.cmdline or "").split()  # the base's default entry


def test_ksbuild_boot_command(site: Path, expected_ks: bytes, tmp_path: Path) -> None:
    """`ksbuild boot` (serial console, no network, no KVM): the same kickstart arrives."""
    out = repack(site, centos_iso(), tmp_path / "cmd.iso")
    done = subprocess.run([sys.executable, "-m", "builder", "boot", str(out), "--console",
                           "--no-network", "--no-kvm", "--memory", "1024"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "-nic none" in done.stderr and "-no-reboot" in done.stderr
    result = BootResult("ksbuild-boot", done.stdout.replace("\r\n", "\n"), 0.0, False, 0)
    assert_kickstart(result, "CentOS 7 x86_64", expected_ks)
