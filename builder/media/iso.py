"""Repack an official CentOS 7 ISO so that it installs unattended.

What changes (everything else is copied as it is):
- `/ks.cfg` (ISO 9660, Rock Ridge and Joliet names) holds the kickstart;
- the files of the site's `overlays/iso/` folder land at their paths (a file that exists is
  replaced; new folders are made); ISO 9660 names are made 8.3 (`A-Z0-9_`), Rock Ridge and
  Joliet keep the real names;
- `isolinux/isolinux.cfg`, `EFI/BOOT/grub.cfg` and the `EFI/BOOT/grub.cfg` inside
  `images/efiboot.img` get `inst.ks=hd:LABEL=<volume ID>:/ks.cfg`, the default entry and the
  timeout (builder.media.bootmenu, builder.media.fat);
- the volume ID, when --volid asks for one (primary and Joliet descriptors, every LABEL=);
- the isohybrid MBR and GPT follow the new layout (builder.media.hybrid);
- the media checksum is implanted again (builder.media.isomd5).

How: pycdlib opens the base, the edits go in through builder.media.isofs, and
builder.media.writer writes the image (kernel-side copy, MD5 behind the writer, memory flat
whatever the ISO's size) with pycdlib's clock frozen at SOURCE_DATE_EPOCH, else at the base's
own creation time, in UTC: the same inputs give the same bytes in any time zone, at any time.
The image is written beside the output under a temporary name and renamed at the end: a
crash, Ctrl-C or a full disk leaves no partial ISO.

A site's ISO (build_site_iso) carries one host's kickstart, or every host's with a dispatcher
that picks by MAC (builder.media.kickstarts).
"""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pycdlib.pycdlibexception import PyCdlibException

from builder.errors import InputError
from builder.media import bootmenu, fat, hybrid, isomd5, kickstarts
from builder.media.baseiso import PVD, SECTOR, open_base_file, read_base_head
from builder.media.flavor import Flavor, check_cdrom_hosts, detect
from builder.media.isofs import KS_PATH, Edit, apply_overlay, read
from builder.media.kickstarts import check_source_labels
from builder.media.writer import Writer, frozen_clock, write_image
from builder.network import ETH_NAMES_ARGS
from builder.output import atomic_file
from builder.progress import Progress, Silent
from builder.site import Host, Site

ISOLINUX_CFG = "/isolinux/isolinux.cfg"
GRUB_CFG = "/EFI/BOOT/grub.cfg"
EFIBOOT_IMG = "/images/efiboot.img"
EFIBOOT_GRUB_CFG = "EFI/BOOT/grub.cfg"


@dataclass(frozen=True)
class Payload:
    """What the ISO carries besides the base's files: /ks.cfg and more files by ISO path."""

    ks_cfg: bytes
    extra: dict[str, bytes] = field(default_factory=dict)


# Called with the output's volume ID and the base's flavor, once both are known and before
# anything is written; may refuse the base (InputError).
PayloadFor = Callable[[str, Flavor], Payload]


def fixed(ks_cfg: bytes) -> PayloadFor:
    """A payload of one kickstart, whatever the base."""
    return lambda volid, flavor: Payload(ks_cfg)


@dataclass(frozen=True)
class RepackOptions:
    payload: PayloadFor
    volid: str | None = None  # None: keep the base's
    timeout: int = 5  # seconds in the boot menus
    keep_media_check: bool = False
    overlay: Path | None = None  # a folder whose files go onto the ISO at their paths
    epoch: int | None = None  # SOURCE_DATE_EPOCH; None: the base's creation time
    installer_args: tuple[str, ...] = ()  # more kernel arguments on every installer entry


@dataclass(frozen=True)
class RepackResult:
    output: Path
    volid: str
    flavor: Flavor
    md5: str
    size: int


def source_date_epoch(environ: dict[str, str] | os._Environ[str] = os.environ) -> int | None:
    value = environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    if not re.fullmatch(r"[0-9]{1,12}", value.strip()):
        raise InputError(f"SOURCE_DATE_EPOCH={value!r}: expected whole seconds since 1970")
    return int(value)


def volume_creation_epoch(pvd_sector: bytes) -> int:
    """The PVD's volume creation date (offset 813) as seconds since the epoch; 0 if unset."""
    raw = pvd_sector[813:830]
    digits = raw[:16].decode("ascii", errors="replace")
    if not digits.isdigit() or digits == "0" * 16:
        return 0
    offset = int.from_bytes(raw[16:17], "little", signed=True) * 15 * 60
    stamp = time.strptime(digits[:14], "%Y%m%d%H%M%S")
    return max(0, calendar.timegm(stamp) - offset)


# ---------------------------------------------------------------------------------------------
# The repack.


@dataclass(frozen=True)
class _Boot:
    boot_lba: int | None
    efi_lba: int | None
    efi_bytes: int | None


def _boot_entries(iso: Any, what: str) -> _Boot:
    catalog = iso.eltorito_boot_catalog
    if catalog is None:
        raise InputError(f"{what}: not a boot medium (no El Torito boot catalog)")
    entries = [(catalog.validation_entry.platform_id, catalog.initial_entry)]
    for section in catalog.sections:
        entries += [(section.platform_id, e) for e in section.section_entries]
    bios = next((e for p, e in entries if p == 0), None)
    efi = next((e for p, e in entries if p == 0xEF), None)
    return _Boot(
        boot_lba=bios.inode.extent_location() if bios is not None else None,
        efi_lba=efi.inode.extent_location() if efi is not None else None,
        efi_bytes=efi.inode.get_data_length() if efi is not None else None,
    )


def _volume_id(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").rstrip(" \0")


def open_base(base: Path) -> tuple[Any, BinaryIO, bytes, int]:
    head, size = read_base_head(base)
    handle = open_base_file(base)
    iso = Writer()
    try:
        iso.open_fp(handle)
    except PyCdlibException as exc:
        handle.close()
        raise InputError(f"{base}: not a readable ISO 9660 image: {exc}") from None
    return iso, handle, head, size


def check_output(base: Path, output: Path) -> None:
    """Refuse an output that is a folder, or that is the base itself (by device and inode,
    whatever the names: the repack would replace the base it reads)."""
    if output.is_dir():
        raise InputError(f"-o {output}: is a folder; give the ISO file to write")
    try:
        same = os.path.samefile(base, output)
    except OSError:
        return  # no output yet (or no base: open_base says so)
    if same:
        raise InputError(f"-o {output}: is the base ISO ({base}); the repack would replace "
                         "it: write to another file")


def repack(base: Path, output: Path, options: RepackOptions,
           progress: Progress | None = None) -> RepackResult:
    check_output(base, output)
    shown = progress or Silent()
    iso, handle, head, base_size = open_base(base)
    try:
        epoch = options.epoch if options.epoch is not None else \
            volume_creation_epoch(head[PVD:])
        with frozen_clock(epoch):
            return _repack(iso, base, head, base_size, output, options, shown)
    finally:
        iso.close()
        handle.close()


def _repack(iso: Any, base: Path, head: bytes, base_size: int, output: Path,
            options: RepackOptions, progress: Progress) -> RepackResult:
    what = str(base)
    flavor = detect(lambda p: read(iso, p), what)
    old_volid = _volume_id(iso.pvd.volume_identifier)
    volid = options.volid if options.volid is not None else old_volid
    if options.volid is not None:
        bootmenu.check_volume_id(volid, joliet=iso.has_joliet())
    old_boot = _boot_entries(iso, what)
    system_area = head[:hybrid.SYSTEM_AREA]
    rebuild_hybrid = hybrid.is_hybrid(system_area)
    if iso.isohybrid_mbr is not None:
        iso.rm_isohybrid()  # we rebuild it ourselves (see builder.media.hybrid)

    edit = Edit(iso)
    if options.overlay is not None:
        apply_overlay(edit, options.overlay)
    _edit_menus(iso, edit, bootmenu.MenuEdit(old_volid, volid, options.timeout,
                                             options.keep_media_check, KS_PATH,
                                             options.installer_args), what)
    payload = options.payload(volid, flavor)
    for path, data in sorted(payload.extra.items()):
        edit.add(path, data, 0o100444)
    edit.add(KS_PATH, payload.ks_cfg, 0o100444)
    _set_volume_id(iso, volid)
    iso.pvd.application_use = b" " * isomd5.APPDATA_SIZE  # the media check reads it as blanks

    iso.force_consistency()
    volume_bytes = iso.pvd.space_size * iso.logical_block_size
    new_boot = _boot_entries(iso, what)
    plan = None
    if rebuild_hybrid:
        base_volume = int.from_bytes(head[PVD + 80:PVD + 84], "little") * SECTOR
        plan = hybrid.rebuild(
            system_area,
            hybrid.Layout(base_volume, base_size, old_boot.boot_lba, old_boot.efi_lba,
                          old_boot.efi_bytes),
            hybrid.Layout(volume_bytes, 0, new_boot.boot_lba, new_boot.efi_lba,
                          new_boot.efi_bytes),
            what)
    with atomic_file(output, exchange=True) as temp:
        md5, size = write_image(iso, temp, plan.head if plan else system_area, plan,
                                volume_bytes, output.name, progress)
    return RepackResult(output, volid, flavor, md5, size)


def _set_volume_id(iso: Any, volid: str) -> None:
    iso.pvd.volume_identifier = volid.encode("ascii").ljust(32, b" ")
    if iso.joliet_vd is not None:
        # UCS-2, padded with UCS-2 spaces; check_volume_id keeps it within 16 characters.
        joliet = volid[:16].encode("utf-16-be")
        iso.joliet_vd.volume_identifier = (joliet + " ".encode("utf-16-be") * 16)[:32]


def _edit_menus(iso: Any, edit: Edit, menu: bootmenu.MenuEdit, what: str) -> None:
    isolinux = read(iso, ISOLINUX_CFG)
    grub = read(iso, GRUB_CFG)
    if isolinux is None or grub is None:
        missing = ISOLINUX_CFG if isolinux is None else GRUB_CFG
        raise InputError(f"{what}: not a CentOS 7 boot medium (no {missing.lstrip('/')})")
    edit.replace(ISOLINUX_CFG, _encode(bootmenu.edit_isolinux(
        _decode(isolinux, ISOLINUX_CFG, what), menu, f"{what}: {ISOLINUX_CFG.lstrip('/')}")))
    edit.replace(GRUB_CFG, _encode(bootmenu.edit_grub(
        _decode(grub, GRUB_CFG, what), menu, f"{what}: {GRUB_CFG.lstrip('/')}")))
    image = read(iso, EFIBOOT_IMG)
    if image is None:
        raise InputError(f"{what}: not a CentOS 7 boot medium (no {EFIBOOT_IMG.lstrip('/')})")
    fat_image = fat.FatImage(bytearray(image), f"{what}: {EFIBOOT_IMG.lstrip('/')}")
    inner_what = f"{what}: {EFIBOOT_IMG.lstrip('/')}: {EFIBOOT_GRUB_CFG}"
    inner = _decode(fat_image.read(EFIBOOT_GRUB_CFG), EFIBOOT_GRUB_CFG, what)
    fat_image.write(EFIBOOT_GRUB_CFG, _encode(bootmenu.edit_grub(inner, menu, inner_what)))
    edit.replace(EFIBOOT_IMG, bytes(fat_image.data))


def _decode(data: bytes, path: str, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what}: {path.lstrip('/')} is not UTF-8 text") from None


def _encode(text: str) -> bytes:
    return text.encode("utf-8")


# ---------------------------------------------------------------------------------------------
# A site's ISO: which kickstarts, checked against the base (see builder.media.kickstarts).


def installer_args(hosts: list[Host], what: str) -> tuple[str, ...]:
    """The hosts' `nic_names: eth` gives the installer the same NIC names as the installed
    host (net.ifnames=0 biosdevname=0); one ISO's menus serve all its hosts, so they agree."""
    choices = {host.nic_names for host in hosts}
    if len(choices) > 1:
        raise InputError(f"{what}: the hosts on one ISO must agree on nic_names (found "
                         f"{', '.join(sorted(choices))}); build one ISO per host")
    return ETH_NAMES_ARGS if choices == {"eth"} else ()


def build_site_iso(site: Site, base: Path, output: Path, *, host: str | None = None,
                   volid: str | None = None, timeout: int = 5, keep_media_check: bool = False,
                   progress: Progress | None = None, epoch: int | None = None,
                   rendered: dict[str, str] | None = None,
                   compiled: Path | None = None) -> RepackResult:
    """Repack `base` into `output` with the kickstart of `host`, or of every host of `site`.

    `epoch`: SOURCE_DATE_EPOCH (None: the environment's, else the base's creation time).
    `rendered` (hostname -> kickstart, as kickstart.render_site returns) saves rendering
    again when the caller has them; only the chosen hosts' are used. `compiled`: a folder
    for the compiled templates (kickstart.CompiledTemplates)."""
    from builder import kickstart

    hosts = [site.host(host)] if host else list(site.hosts)
    if rendered is None:
        rendered = kickstart.render_site(site, tuple(hosts), compiled=compiled)
    else:
        rendered = {h.hostname: rendered[h.hostname] for h in hosts}
    what = str(base)

    def payload(label: str, flavor: Flavor) -> Payload:
        check_cdrom_hosts(flavor, hosts, what)
        for name, text in rendered.items():
            check_source_labels(text, label, f"{name}.cfg")
        chosen = kickstarts.for_iso(rendered, hosts, label)
        return Payload(chosen.ks_cfg, chosen.extra)

    overlay = site.overlays / "iso" if site.overlays is not None else None
    options = RepackOptions(
        payload=payload, volid=volid, timeout=timeout, keep_media_check=keep_media_check,
        overlay=overlay if overlay is not None and overlay.is_dir() else None,
        epoch=epoch if epoch is not None else source_date_epoch(),
        installer_args=installer_args(hosts, what))
    return repack(base, output, options, progress)
