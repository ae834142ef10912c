"""Secure Boot: will the firmware start the UEFI first stage an ISO or a PXE tree hands out?

UEFI firmware with Secure Boot on refuses ("Access Denied") an image whose Authenticode hash
is in its forbidden-signature database, dbx. Microsoft's dbx has revoked every CentOS 7.9
shim since 2021-04-01 (BootHole 2), so on machines whose firmware has that dbx, the 7.9 media
install under UEFI only with Secure Boot off. ksbuild cannot change that; it says so before the
machines stop at a firmware error: it hashes the first stage each output hands out and looks
the hash up in a revocation list (shipped: builder/secureboot-dbx.json; or the site's
`secure_boot.revocations`, e.g. a newer copy of Microsoft's dbx_info_msft_latest.json).

The Authenticode hash (Microsoft's "Windows Authenticode Portable Executable Signature
Format", section "Calculating the PE Image Hash"; as edk2's DxeImageVerificationLib computes
it when it checks dbx): SHA-256 over the headers up to SizeOfHeaders without the CheckSum
field and the Certificate Table data-directory entry, then every section's raw data in order
of PointerToRawData, then whatever follows the sections, less the certificate table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import InputError
from builder.site import SecureBoot, Site

SHIPPED = Path(__file__).with_name("secureboot-dbx.json")
CERTIFICATE_TABLE = 4  # index of the Certificate Table in the optional header's data directories
PE32, PE32_PLUS = 0x10B, 0x20B


# ---------------------------------------------------------------------------------------------
# The Authenticode hash of a PE image.


def authenticode_sha256(data: bytes, what: str) -> str:
    """The Authenticode SHA-256 (lower-case hex) of a PE image; InputError if it is not one."""
    try:
        return _authenticode(data)
    except (struct.error, ValueError) as exc:
        raise InputError(f"{what}: not a PE (UEFI) image: {exc}") from None


def _authenticode(data: bytes) -> str:
    if data[:2] != b"MZ":
        raise ValueError("no MZ header")
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    if data[pe:pe + 4] != b"PE\0\0":
        raise ValueError("no PE signature")
    sections, _, _, _, optional_size = struct.unpack_from("<HIIIH", data, pe + 6)
    optional = pe + 24
    (magic,) = struct.unpack_from("<H", data, optional)
    if magic not in (PE32, PE32_PLUS):
        raise ValueError(f"unknown optional header magic {magic:#x}")
    checksum = optional + 64
    (size_of_headers,) = struct.unpack_from("<I", data, optional + 60)
    directories = optional + (96 if magic == PE32 else 112)
    (directory_count,) = struct.unpack_from("<I", data, directories - 4)
    digest = hashlib.sha256()
    cert_offset = cert_size = 0
    if directory_count > CERTIFICATE_TABLE:
        entry = directories + 8 * CERTIFICATE_TABLE
        cert_offset, cert_size = struct.unpack_from("<II", data, entry)
        digest.update(data[:checksum])
        digest.update(data[checksum + 4:entry])
        digest.update(data[entry + 8:size_of_headers])
    else:
        digest.update(data[:checksum])
        digest.update(data[checksum + 4:size_of_headers])
    if size_of_headers > len(data) or cert_offset + cert_size > len(data):
        raise ValueError("headers or certificate table beyond the end of the file")
    table = optional + optional_size
    # Each section header: SizeOfRawData at +16, PointerToRawData at +20.
    raw = [struct.unpack_from("<II", data, table + 40 * i + 16) for i in range(sections)]
    hashed = size_of_headers
    for pointer, size in sorted((pointer, size) for size, pointer in raw):
        if size == 0:
            continue
        if pointer + size > len(data):
            raise ValueError("a section extends beyond the end of the file")
        digest.update(data[pointer:pointer + size])
        hashed += size
    if len(data) > hashed + cert_size:
        digest.update(data[hashed:len(data) - cert_size])
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Revocation lists.


@dataclass(frozen=True)
class Revocation:
    sha256: str  # lower-case hex
    date: str  # when Microsoft added it to dbx (YYYY-MM-DD)
    filename: str  # the revoked file's name as Microsoft lists it
    reason: str  # the CVEs


@dataclass(frozen=True)
class Revocations:
    source: str
    as_of: str  # the newest entry's date
    path: Path
    by_hash: dict[str, Revocation]


def load_revocations(path: Path | None = None) -> Revocations:
    """The shipped list, or a given one: ksbuild's own format (`entries`), Microsoft's
    dbx_info_msft_latest.json (`images` by architecture), both with `authenticodeHash` and
    `dateOfAddition` per entry; or a dbx update as firmware takes it (DBXUpdate.bin: EFI
    signature lists, with or without the authenticated-variable header), which has no dates."""
    chosen = path or SHIPPED
    try:
        data = chosen.read_bytes()
        if data.lstrip()[:1] == b"{":
            document = json.loads(data.decode("utf-8"))
            found = {e.sha256: e for e in map(_revocation, _entries(document))}
            source = str(document.get("source") or chosen.name)
        else:
            found = {sha: Revocation(sha, "", "", "") for sha in signature_list_hashes(data)}
            source = chosen.name
    except OSError as exc:
        raise InputError(f"{chosen}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
        raise InputError(f"{chosen}: not a revocation list (ksbuild's secureboot-dbx.json, "
                         "Microsoft's dbx_info_msft_latest.json or a dbx update .bin): "
                         f"{exc}") from None
    as_of = max((r.date for r in found.values()), default="")
    return Revocations(source, as_of, chosen, found)


# The UEFI specification's GUIDs, as stored (mixed-endian).
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328").bytes_le
WIN_CERT_TYPE_EFI_GUID = 0x0EF1
EFI_TIME_SIZE = 16


def signature_list_hashes(data: bytes) -> list[str]:
    """The SHA-256 entries of EFI_SIGNATURE_LISTs (UEFI 2.10, 32.4.1). A signed dbx update
    starts with an EFI_VARIABLE_AUTHENTICATION_2 header (EFI_TIME, then a WIN_CERTIFICATE of
    type EFI_GUID whose dwLength covers itself), which is skipped: the lists follow it."""
    at = 0
    if len(data) >= EFI_TIME_SIZE + 8:
        length, _, kind = struct.unpack_from("<IHH", data, EFI_TIME_SIZE)
        if kind == WIN_CERT_TYPE_EFI_GUID:
            at = EFI_TIME_SIZE + length
    hashes = []
    while at < len(data):
        kind = data[at:at + 16]
        list_size, header_size, signature_size = struct.unpack_from("<III", data, at + 16)
        if list_size < 28 + header_size or at + list_size > len(data) or signature_size < 16:
            raise ValueError(f"a malformed signature list at byte {at}")
        if kind == EFI_CERT_SHA256:
            first = at + 28 + header_size
            for entry in range(first, at + list_size, signature_size):
                hashes.append(data[entry + 16:entry + signature_size].hex())  # after the owner
        at += list_size
    if not hashes:
        raise ValueError("no SHA-256 entries")
    return hashes


def _entries(document: Any) -> list[dict[str, Any]]:
    if "entries" in document:
        return list(document["entries"])
    return [entry for images in document["images"].values() for entry in images]


def _revocation(entry: dict[str, Any]) -> Revocation:
    sha = str(entry["authenticodeHash"]).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"authenticodeHash {entry['authenticodeHash']!r} is not a SHA-256")
    return Revocation(sha, str(entry.get("dateOfAddition", "")), str(entry.get("filename", "")),
                      str(entry.get("description", "")))


# ---------------------------------------------------------------------------------------------
# Checking what an output hands out.


@dataclass(frozen=True)
class FirstStage:
    """One copy of a first stage in one output, and what the revocation list says of it."""

    output: str  # iso/site.iso, pxe
    file: str  # EFI/BOOT/BOOTX64.EFI, images/efiboot.img:EFI/BOOT/BOOTX64.EFI, tftp/BOOTX64.EFI
    sha256: str | None  # its Authenticode SHA-256; None: not a PE image
    revoked: Revocation | None

    def record(self) -> dict[str, Any]:
        """Its manifest entry."""
        return {"output": self.output, "file": self.file, "authenticode_sha256": self.sha256,
                "revoked": self.revoked is not None,
                "revoked_since": self.revoked.date or None if self.revoked else None}


def check(output: str, files: dict[str, bytes], revocations: Revocations,
          what: str) -> list[FirstStage]:
    """Hash each first stage (file name in the output -> its bytes) and look it up. The
    build does not judge what is not a PE image: it is recorded without a hash."""
    found = []
    for name, data in files.items():
        try:
            sha: str | None = authenticode_sha256(data, f"{what}: {name}")
        except InputError:
            sha = None  # not a PE image: no firmware starts it, so no dbx refuses it either
        found.append(FirstStage(output, name, sha,
                                revocations.by_hash.get(sha) if sha is not None else None))
    return found


def warnings(stages: list[FirstStage], advice: dict[str, str]) -> list[str]:
    """One line per output with a revoked first stage; `advice`: output -> what to do."""
    lines = []
    for output in dict.fromkeys(s.output for s in stages):
        revoked = [s for s in stages if s.output == output and s.revoked]
        if not revoked:
            continue
        first = revoked[0]
        assert first.revoked is not None
        names = ", ".join(s.file for s in revoked)
        since = f"since {first.revoked.date}" if first.revoked.date else "(no date in the list)"
        lines.append(f"{output}: Secure Boot: {names} (Authenticode SHA-256 {first.sha256}) is "
                     f"revoked by Microsoft's dbx {since}: firmware with that dbx refuses it "
                     f"(Access Denied); {advice[output]}")
    return lines


ISO_ADVICE = ("install these hosts with Secure Boot off, or over PXE with a shim that is not "
              "revoked (pxe.shim)")
PXE_ADVICE = "set pxe.shim to a shim that is not revoked, or turn Secure Boot off on these hosts"


def enforce(lines: list[str], policy: SecureBoot) -> list[str]:
    """The warnings, or with policy `required` the first of them as an error."""
    if lines and policy.policy == "required":
        raise InputError(f"{policy.origin}: secure_boot.policy: required, but {lines[0]}")
    return lines


# ---------------------------------------------------------------------------------------------
# Where the first stages are.

ISO_SHIM = "EFI/BOOT/BOOTX64.EFI"
EFIBOOT_IMG = "images/efiboot.img"


def iso_first_stages(base: Path, overlay: Path | None) -> dict[str, bytes]:
    """The ISO's first stages as the repacked ISO will carry them: EFI/BOOT/BOOTX64.EFI (what
    firmware starts from a USB stick or a disk copy) and the copy in images/efiboot.img (what
    it starts from the CD's El Torito EFI image); a file under the site's overlays/iso/
    replaces the base's."""
    from builder.media import fat
    from builder.media.baseiso import read_base_files

    def from_overlay(name: str) -> bytes | None:
        given = overlay / name if overlay is not None else None
        return given.read_bytes() if given is not None and given.is_file() else None

    on_base = read_base_files(base, ["/" + ISO_SHIM, "/" + EFIBOOT_IMG])
    shim = from_overlay(ISO_SHIM) or on_base["/" + ISO_SHIM]
    image = from_overlay(EFIBOOT_IMG) or on_base["/" + EFIBOOT_IMG]
    found = {}
    if shim is not None:
        found[ISO_SHIM] = shim
    if image is not None:
        efiboot = fat.FatImage(bytearray(image), f"{base}: {EFIBOOT_IMG}")
        with contextlib.suppress(fat.FatError):  # an image without one: nothing to check
            found[f"{EFIBOOT_IMG}:{ISO_SHIM}"] = efiboot.read(ISO_SHIM)
    return found


def pxe_first_stage(base: Path, shim: Path | None, origin: str = "pxe") -> dict[str, bytes]:
    """The PXE tree's first stage, tftp/BOOTX64.EFI: pxe.shim, else the base ISO's."""
    if shim is not None:
        try:
            return {PXE_SHIM: shim.read_bytes()}
        except OSError as exc:
            raise InputError(f"{origin}.shim: {shim}: {exc.strerror or exc}") from None
    found = iso_first_stages(base, None)
    return {PXE_SHIM: found[ISO_SHIM]} if ISO_SHIM in found else {}


PXE_SHIM = "tftp/BOOTX64.EFI"


# ---------------------------------------------------------------------------------------------
# The whole check, for `ksbuild build`, `ksbuild iso` and `ksbuild pxe`.


@dataclass
class Verdict:
    stages: list[FirstStage]
    warnings: list[str]
    revocations: Revocations

    def record(self) -> dict[str, Any]:
        """The manifest's `secure_boot` section."""
        return {"revocations": {"source": self.revocations.source,
                                "as_of": self.revocations.as_of,
                                "entries": len(self.revocations.by_hash)},
                "first_stages": [s.record() for s in self.stages],
                "warnings": self.warnings}


def check_outputs(site: Site, base: Path, isos: list[str], pxe: str | None) -> Verdict:
    """Check the first stages of the ISO outputs `isos` and of the PXE tree `pxe` (names as
    the user sees them); InputError if the site requires Secure Boot and one is revoked."""
    revocations = load_revocations(site.secure_boot.revocations)
    stages: list[FirstStage] = []
    advice = {}
    if isos:
        overlay = site.overlays / "iso" if site.overlays is not None else None
        files = iso_first_stages(base, overlay)
        for name in isos:
            stages += check(name, files, revocations, str(base))
            advice[name] = ISO_ADVICE
    if pxe is not None:
        shim = site.pxe.shim if site.pxe is not None else None
        origin = site.pxe.origin if site.pxe is not None else "pxe"
        stages += check(pxe, pxe_first_stage(base, shim, origin), revocations,
                        str(shim or base))
        advice[pxe] = PXE_ADVICE
    lines = enforce(warnings(stages, advice), site.secure_boot)
    return Verdict(stages, lines, revocations)
