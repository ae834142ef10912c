"""Secure Boot (issue 15): our Authenticode hash against pesign's, our revocation warning
against the firmware's verdict. The stand-in for a distribution's shim is Debian's
`shim-signed` (signed by Microsoft), booted by Debian's Secure Boot OVMF with Microsoft's
keys; "revoked" means its hash is added both to the firmware's dbx and to the list ksbuild
is given."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from builder import secureboot
from builder.errors import InputError
from builder.media import boot
from tests.fixtures import centos_iso
from tests.fixtures.shim import signed_shim
from tests.sitefiles import site_doc, write_site
from tests.test_build import ksbuild

CENTOS_79_SHIM = "dda0121dcf167db1e2622d10f454701837ac6af304a03ec06b3027904988c56b"
GRUB_IMAGES = sorted(Path("/usr/lib/grub/x86_64-efi/monolithic").glob("*.efi"))
SERVER = "http://10.1.0.5:8080"
MICROSOFT = boot.MICROSOFT_OWNER
# What the serial console shows: OVMF's boot manager refusing the CD's first stage, or shim
# running (it then refuses the test ISO's unsigned GRUB: its own "Verification failed").
REFUSED = "Access Denied"
SHIM_STARTED = "Verification failed"


def pesign_hash(path: Path) -> str:
    done = subprocess.run(["pesign", "-h", "-i", str(path)], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.split("hash:")[1].split()[0].lower()


# ---------------------------------------------------------------------------------------------
# The hash.


def test_authenticode_hash_equals_pesigns_for_signed_and_unsigned_images() -> None:
    images = [signed_shim(), *GRUB_IMAGES]
    assert len(images) >= 3
    for image in images:
        ours = secureboot.authenticode_sha256(image.read_bytes(), str(image))
        assert ours == pesign_hash(image), image


def test_hash_ignores_checksum_and_signature_but_not_code() -> None:
    data = bytearray(signed_shim().read_bytes())
    original = secureboot.authenticode_sha256(bytes(data), "shim")
    pe = int.from_bytes(data[0x3C:0x40], "little")
    checksum = pe + 24 + 64
    data[checksum:checksum + 4] = b"\xff\xff\xff\xff"
    cert_offset = int.from_bytes(data[pe + 24 + 112 + 32:pe + 24 + 112 + 36], "little")
    data[cert_offset + 100] ^= 0xFF  # inside the signature
    assert secureboot.authenticode_sha256(bytes(data), "shim") == original
    data[0x400 + 16] ^= 0xFF  # inside the first section
    assert secureboot.authenticode_sha256(bytes(data), "shim") != original


def test_not_a_pe_image_is_one_line_of_input_error() -> None:
    with pytest.raises(InputError, match=r"^x\.efi: not a PE \(UEFI\) image: no MZ header$"):
        secureboot.authenticode_sha256(b"\x7fELF" + bytes(200), "x.efi")
    with pytest.raises(InputError, match="not a PE"):
        secureboot.authenticode_sha256(b"MZ" + bytes(10), "y.efi")


# ---------------------------------------------------------------------------------------------
# The revocation lists.


def test_shipped_list_revokes_the_centos_79_shim_since_2021_04_01() -> None:
    shipped = secureboot.load_revocations()
    revoked = shipped.by_hash[CENTOS_79_SHIM]
    assert revoked.date == "2021-04-01"
    assert revoked.filename == "cent-7.9-20200730-shim64-bit.efi"
    assert "secureboot_objects" in shipped.source and shipped.as_of >= "2021-04-01"
    assert len(shipped.by_hash) == 39


def test_microsofts_own_format_is_read(tmp_path: Path) -> None:
    listed = {"images": {"amd64": [{"authenticodeHash": CENTOS_79_SHIM.upper(),
                                    "dateOfAddition": "2021-04-01", "filename": "a.efi"}],
                         "arm64": [{"authenticodeHash": "AB" * 32,
                                    "dateOfAddition": "2023-05-09"}]},
              "certificates": [], "svns": []}
    path = tmp_path / "dbx_info_msft_latest.json"
    path.write_text(json.dumps(listed))
    loaded = secureboot.load_revocations(path)
    assert set(loaded.by_hash) == {CENTOS_79_SHIM, "ab" * 32}
    assert loaded.as_of == "2023-05-09"
    path.write_text('{"images": {"amd64": [{"authenticodeHash": "xyz"}]}}')
    with pytest.raises(InputError, match="not a revocation list"):
        secureboot.load_revocations(path)


def test_a_dbx_update_bin_is_read_bare_or_signed(tmp_path: Path) -> None:
    """Signature lists written by virt-fw-sigdb (virt-firmware), bare and behind the
    EFI_VARIABLE_AUTHENTICATION_2 header a signed DBXUpdate.bin starts with."""
    other = "5f" * 32
    esl = tmp_path / "dbx.esl"
    subprocess.run([shutil.which("virt-fw-sigdb") or str(Path(sys.executable).parent /
                                                         "virt-fw-sigdb"),
                    "-o", str(esl), "--add-hash", MICROSOFT, CENTOS_79_SHIM,
                    "--add-hash", MICROSOFT, other], check=True, capture_output=True)
    pkcs7 = uuid.UUID("4aafd29d-68df-49ee-8aa9-347d375665a7").bytes_le
    signature = b"\x30\x82" + bytes(40)  # stands for the PKCS#7 blob; only its length counts
    header = bytes(16) + struct.pack("<IHH", 24 + len(signature), 0x0200, 0x0EF1) + pkcs7
    signed = tmp_path / "DBXUpdate.bin"
    signed.write_bytes(header + signature + esl.read_bytes())
    for path in (esl, signed):
        loaded = secureboot.load_revocations(path)
        assert set(loaded.by_hash) == {CENTOS_79_SHIM, other}
        assert loaded.by_hash[other].date == "" and loaded.source == path.name
    shim = signed_shim().read_bytes()
    undated = secureboot.load_revocations(esl)
    undated.by_hash[pesign_hash(signed_shim())] = secureboot.Revocation(
        pesign_hash(signed_shim()), "", "", "")
    stages = secureboot.check("iso/a.iso", {"EFI/BOOT/BOOTX64.EFI": shim}, undated, "base")
    (line,) = secureboot.warnings(stages, {"iso/a.iso": "turn it off"})
    assert "revoked by Microsoft's dbx (no date in the list): " in line
    (odd,) = secureboot.check("iso/a.iso", {"EFI/BOOT/BOOTX64.EFI": b"not PE"}, undated, "b")
    assert odd.record()["authenticode_sha256"] is None and odd.revoked is None
    (tmp_path / "junk.bin").write_bytes(b"\x01" * 64)
    with pytest.raises(InputError, match=r"junk\.bin: not a revocation list"):
        secureboot.load_revocations(tmp_path / "junk.bin")


# ---------------------------------------------------------------------------------------------
# Build time: warnings, manifest, the `required` policy.


def shim_site(tmp_path: Path, revoked: str | None = None, policy: str | None = None) -> Path:
    """A site on the test ISO that carries shim-signed as BOOTX64.EFI; `revoked`: a hash the
    site's revocation list revokes (besides nothing else)."""
    base = tmp_path / "base.iso"
    if not base.exists():
        shutil.copyfile(centos_iso("CENTOS7", shim=signed_shim()), base)
    extra: dict[str, object] = {}
    if revoked is not None:
        (tmp_path / "dbx.json").write_text(json.dumps({"entries": [
            {"authenticodeHash": revoked.upper(), "dateOfAddition": "2024-01-02",
             "filename": "shimx64.efi", "description": "test"}]}))
        extra["revocations"] = "dbx.json"
    if policy is not None:
        extra["policy"] = policy
    doc = site_doc(media={"path": "base.iso"}, outputs={"iso": "per-site", "pxe": True},
                   pxe={"server": SERVER}, **({"secure_boot": extra} if extra else {}))
    return write_site(tmp_path, doc)


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ksbuild: warning:")]


def test_build_records_the_first_stages_and_warns_only_when_revoked(tmp_path: Path) -> None:
    shim_hash = pesign_hash(signed_shim())
    clean = ksbuild("build", str(shim_site(tmp_path)), "-o", str(tmp_path / "out"))
    assert clean.returncode == 0, clean.stderr
    assert warnings_of(clean.stderr) == []
    record = json.loads((tmp_path / "out" / "manifest.json").read_text())["secure_boot"]
    assert {(s["output"], s["file"], s["authenticode_sha256"], s["revoked_since"])
            for s in record["first_stages"]} == {
        ("iso/site.iso", "EFI/BOOT/BOOTX64.EFI", shim_hash, None),
        ("iso/site.iso", "images/efiboot.img:EFI/BOOT/BOOTX64.EFI", shim_hash, None),
        ("pxe", "tftp/BOOTX64.EFI", shim_hash, None)}
    assert record["revocations"]["entries"] == 39 and record["warnings"] == []

    revoked = ksbuild("build", str(shim_site(tmp_path, revoked=shim_hash)), "-o",
                      str(tmp_path / "out"))
    assert revoked.returncode == 0, revoked.stderr
    lines = warnings_of(revoked.stderr)
    assert len(lines) == 2, revoked.stderr  # one per output
    iso_line, pxe_line = lines
    for line, output in ((iso_line, "iso/site.iso"), (pxe_line, "pxe")):
        assert line.startswith(f"ksbuild: warning: {output}: Secure Boot: ")
        assert shim_hash in line and "since 2024-01-02" in line and "Access Denied" in line
    assert "EFI/BOOT/BOOTX64.EFI, images/efiboot.img:EFI/BOOT/BOOTX64.EFI" in iso_line
    assert "Secure Boot off" in iso_line and "pxe.shim" in pxe_line
    document = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {s["revoked_since"] for s in document["secure_boot"]["first_stages"]} == {
        "2024-01-02"}
    assert "revocations" in {e["kind"] for e in document["inputs"]}
    again = ksbuild("build", str(tmp_path / "site.yaml"), "-o", str(tmp_path / "out"))
    assert "nothing to do" in again.stderr and warnings_of(again.stderr) == lines
    # A changed list alone (same site file) is a change: the manifest and warnings follow it.
    listed = tmp_path / "dbx.json"
    listed.write_text(listed.read_text().replace("2024-01-02", "2025-06-07"))
    newer = ksbuild("build", str(tmp_path / "site.yaml"), "-o", str(tmp_path / "out"))
    assert "nothing to do" not in newer.stderr
    assert [line.replace("2025-06-07", "2024-01-02") for line in warnings_of(newer.stderr)
            ] == lines


def test_required_policy_makes_a_revoked_shim_an_error_before_anything_is_written(
        tmp_path: Path) -> None:
    shim_hash = pesign_hash(signed_shim())
    site = shim_site(tmp_path, revoked=shim_hash, policy="required")
    done = ksbuild("build", "-q", str(site), "-o", str(tmp_path / "out"))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"ksbuild: {site}:") and "secure_boot.policy: required, but " in line
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
    iso = ksbuild("iso", str(site), "--base", str(tmp_path / "base.iso"), "-o",
                  str(tmp_path / "x.iso"))
    assert iso.returncode == 2 and len(iso.stderr.splitlines()) == 1, iso.stderr
    assert not (tmp_path / "x.iso").exists()
    fine = shim_site(tmp_path, revoked="00" * 32, policy="required")
    assert ksbuild("build", str(fine), "-o", str(tmp_path / "out")).returncode == 0


def test_iso_and_pxe_commands_warn_and_pxe_shim_is_what_is_checked(tmp_path: Path) -> None:
    shim_hash = pesign_hash(signed_shim())
    site = shim_site(tmp_path, revoked=shim_hash)
    iso = ksbuild("iso", str(site), "--base", str(tmp_path / "base.iso"), "-o",
                  str(tmp_path / "site.iso"))
    assert iso.returncode == 0, iso.stderr
    (line,) = warnings_of(iso.stderr)
    assert f"{tmp_path / 'site.iso'}: Secure Boot:" in line and shim_hash in line
    pxe = ksbuild("pxe", str(site), "--base", str(tmp_path / "base.iso"), "-o",
                  str(tmp_path / "pxe"))
    assert pxe.returncode == 0, pxe.stderr
    (line,) = warnings_of(pxe.stderr)
    assert "tftp/BOOTX64.EFI" in line and "pxe.shim" in line
    # pxe.shim: a first stage that is not revoked (here Debian's GRUB) silences the warning.
    doc = site_doc(media={"path": "base.iso"}, pxe={"server": SERVER, "shim": str(GRUB_IMAGES[0])},
                   secure_boot={"revocations": "dbx.json"})
    other = write_site(tmp_path, doc, "other.yaml")
    pxe = ksbuild("pxe", str(other), "--base", str(tmp_path / "base.iso"), "-o",
                  str(tmp_path / "pxe2"))
    assert pxe.returncode == 0 and warnings_of(pxe.stderr) == [], pxe.stderr


def test_missing_pxe_shim_is_one_line_naming_the_site_key(tmp_path: Path) -> None:
    shim_site(tmp_path)
    doc = site_doc(media={"path": "base.iso"}, pxe={"server": SERVER, "shim": "nope.efi"})
    site = write_site(tmp_path, doc, "other.yaml")
    done = ksbuild("build", "-q", str(site), "-o", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"ksbuild: {site}:") and f"pxe.shim: {tmp_path / 'nope.efi'}: " in line


# ---------------------------------------------------------------------------------------------
# The firmware's verdict on the same file: QEMU, Secure Boot OVMF, Microsoft's keys.


def secure_boot_run(iso: Path, dbx_hashes: tuple[str, ...], log: Path,
                    timeout: float = 150) -> str:
    """Boot `iso` as `ksbuild boot --secure-boot [--dbx-hash H]` would (its own command line
    and variable store), until the firmware refuses the first stage or shim runs."""
    options = boot.BootOptions(iso=iso, secure_boot=True, dbx_hashes=dbx_hashes,
                               memory_mib=512, network=False, console=True, kvm=False,
                               disk_gib=1)
    with boot._machine(options) as (disk, ovmf), log.open("wb") as out:
        argv = boot.qemu_command(options, disk, ovmf)
        assert "q35,smm=on" in argv and "driver=cfi.pflash01,property=secure,value=on" in argv
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                text = log.read_bytes().decode(errors="replace")
                if REFUSED in text or SHIM_STARTED in text:
                    break
                time.sleep(0.5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return log.read_bytes().decode(errors="replace")


@pytest.mark.boot
def test_firmware_starts_the_shim_ksbuild_passes_and_refuses_the_one_it_warns_about(
        tmp_path: Path) -> None:
    shim_hash = pesign_hash(signed_shim())
    site = shim_site(tmp_path)
    built = ksbuild("build", str(site), "-o", str(tmp_path / "out"))
    assert built.returncode == 0 and warnings_of(built.stderr) == [], built.stderr
    iso = tmp_path / "out" / "iso" / "site.iso"
    # The CD boots images/efiboot.img's copy: ksbuild's hash of that very file is what the
    # firmware is told to revoke.
    stages = json.loads((tmp_path / "out" / "manifest.json").read_text())["secure_boot"]
    (ours,) = [s["authenticode_sha256"] for s in stages["first_stages"]
               if s["output"] == "iso/site.iso" and s["file"].startswith("images/efiboot.img")]
    assert ours == shim_hash

    started = secure_boot_run(iso, (), tmp_path / "clean.log")
    assert 'BdsDxe: starting Boot0001 "UEFI QEMU DVD-ROM' in started, started[-3000:]
    assert SHIM_STARTED in started and REFUSED not in started, started[-3000:]

    warned = ksbuild("build", str(shim_site(tmp_path, revoked=ours)), "-o",
                     str(tmp_path / "out"))
    assert warned.returncode == 0 and len(warnings_of(warned.stderr)) == 2, warned.stderr
    refused = secure_boot_run(iso, (ours,), tmp_path / "revoked.log")
    assert "BdsDxe: failed to load Boot0001" in refused, refused[-3000:]
    assert REFUSED in refused and SHIM_STARTED not in refused, refused[-3000:]


def test_boot_dbx_hash_that_is_not_a_sha256_is_one_line_exit_2(tmp_path: Path) -> None:
    image = tmp_path / "x.iso"
    image.write_bytes(bytes(4096))
    done = ksbuild("boot", str(image), "--dbx-hash", "12ab", "--no-kvm")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == \
        "ksbuild: --dbx-hash 12ab: not a SHA-256 (64 hex digits)", done.stderr
    assert "Traceback" not in done.stderr
