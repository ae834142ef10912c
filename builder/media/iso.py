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

How: pycdlib opens the base and writes the new image. Its file data copy is replaced by
copy_file_range, so the bytes of unchanged files move inside the kernel, as `cp` does, and
memory stays flat whatever the ISO's size. The MD5 for the media check is computed while the
image is written, by a thread that reads behind the writer (the copy and the hash run on two
cores). pycdlib stamps the current local time on what it touches; during the repack its clock
is frozen at SOURCE_DATE_EPOCH (else the base's own creation time) in UTC, so the same inputs
give the same bytes in any time zone, at any time. The image is written beside the output under
a temporary name and renamed at the end: a crash, Ctrl-C or a full disk leaves no partial ISO.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import io
import os
import re
import threading
import time
import types
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pycdlib
import pycdlib.dates
import pycdlib.headervd
import pycdlib.inplaceeditor
import pycdlib.pycdlib
import pycdlib.udf
import pycdlib.utils
from pycdlib.pycdlibexception import PyCdlibException

from builder.errors import InputError
from builder.media import bootmenu, fat, hybrid, isomd5, kickstarts
from builder.media.flavor import Flavor, check_cdrom_hosts, detect
from builder.media.kickstarts import check_source_labels
from builder.output import atomic_file
from builder.progress import Progress, Silent
from builder.site import Site

ISOLINUX_CFG = "/isolinux/isolinux.cfg"
GRUB_CFG = "/EFI/BOOT/grub.cfg"
EFIBOOT_IMG = "/images/efiboot.img"
EFIBOOT_GRUB_CFG = "EFI/BOOT/grub.cfg"
KS_PATH = "/ks.cfg"
COPY_CHUNK = 32 << 20  # bytes per copy_file_range call: the hash and progress follow
HASH_CHUNK = 4 << 20


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


@dataclass(frozen=True)
class RepackResult:
    output: Path
    volid: str
    flavor: Flavor
    md5: str
    size: int


# ---------------------------------------------------------------------------------------------
# Time: pycdlib asks time.time() and time.localtime(); during a repack both answer the epoch,
# in UTC.


@contextlib.contextmanager
def frozen_clock(epoch: int) -> Iterator[None]:
    fake = types.SimpleNamespace(
        time=lambda: float(epoch), localtime=time.gmtime, gmtime=time.gmtime,
        strftime=time.strftime, strptime=time.strptime, struct_time=time.struct_time)
    modules = (pycdlib.pycdlib, pycdlib.dates, pycdlib.headervd, pycdlib.inplaceeditor,
               pycdlib.udf, pycdlib.utils)
    saved = [m.time for m in modules]
    try:
        for module in modules:
            module.time = fake  # type: ignore[attr-defined]
        yield
    finally:
        for module, original in zip(modules, saved):
            module.time = original  # type: ignore[attr-defined]


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
# Checks on the base before pycdlib sees it: one clear line each.


def read_base_head(base: Path) -> tuple[bytes, int]:
    """The first 17 sectors of the base (system area + PVD) and its size; InputError if it is
    not an ISO 9660 image."""
    try:
        with base.open("rb") as f:
            head = f.read(17 * 2048)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise InputError(f"{base}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{base}: is a folder, not an ISO image") from None
    except OSError as exc:
        raise InputError(f"{base}: cannot read: {exc.strerror}") from None
    if len(head) < 17 * 2048 or head[16 * 2048:16 * 2048 + 6] != b"\x01CD001":
        raise InputError(f"{base}: not an ISO 9660 image (no primary volume descriptor)")
    return head, size


# ---------------------------------------------------------------------------------------------
# pycdlib with a fast data path and a hook that tracks how far the image is final.


class _Writer(pycdlib.PyCdlib):
    """PyCdlib whose file data copy runs in the kernel (copy_file_range) for data that comes
    from the base ISO, and which reports the offset below which the output is final."""

    def __init__(self) -> None:
        super().__init__()
        self.on_final: Callable[[int], None] = lambda offset: None
        self.in_order = True
        self._last_start = 0

    def _write_fp(self, outfp: BinaryIO, blocksize: int, progress_cb: Any,
                  progress_opaque: Any) -> None:
        # pycdlib writes the volume descriptors, directories and catalog first, then the file
        # data in the order of its inode list; sorted by extent, the data goes out front to
        # back, so all below the file being written is final and can be hashed at once.
        if self._needs_reshuffle:
            self._reshuffle_extents()
        self.inodes.sort(key=lambda ino: ino.extent_location())
        super()._write_fp(outfp, blocksize, progress_cb, progress_opaque)

    def _output_file_data(self, outfp: BinaryIO, blocksize: int,
                          ino: Any) -> Generator[int, None, None]:
        start = ino.extent_location() * self.logical_block_size
        outfp.flush()
        # Should a later pycdlib write out of order, the hash behind the writer is void and
        # is redone after the write.
        if start < self._last_start:
            self.in_order = False
        self._last_start = start
        final = self.on_final if self.in_order else (lambda offset: None)
        final(start)
        if (ino.original_data_location != ino.DATA_ON_ORIGINAL_ISO or ino.manage_fp or
                ino.boot_info_table is not None or not hasattr(ino.data_fp, "fileno")):
            yield from super()._output_file_data(outfp, blocksize, ino)
            outfp.flush()
            return
        source = ino.orig_extent_loc * self.logical_block_size
        done = 0
        for count in _copy_range(ino.data_fp.fileno(), outfp.fileno(), source, start,
                                 ino.data_length):
            done += count
            final(start + done)
            yield count


def _copy_range(src: int, dst: int, src_at: int, dst_at: int, length: int) -> Iterator[int]:
    done = 0
    while done < length:
        want = min(COPY_CHUNK, length - done)
        try:
            count = os.copy_file_range(src, dst, want, src_at + done, dst_at + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                 errno.EBADF):
                raise
            count = _copy_plain(src, dst, src_at + done, dst_at + done, want)
        if count == 0:
            raise InputError(f"the base ISO ends inside a file (at byte {src_at + done})")
        done += count
        yield count


def _copy_plain(src: int, dst: int, src_at: int, dst_at: int, length: int) -> int:
    data = os.pread(src, min(length, 1 << 20), src_at)
    if data:
        os.pwrite(dst, data, dst_at)
    return len(data)


class _Hasher(threading.Thread):
    """Hashes the output behind the writer: bytes below `final` never change again."""

    def __init__(self, fd: int, volume_bytes: int) -> None:
        super().__init__(name="ksbuild-md5", daemon=True)
        self.fd = fd
        self.digest = isomd5.MediaDigest(volume_bytes)
        self._final = 0
        self._cond = threading.Condition()
        self._stopping = False
        self.error: BaseException | None = None

    def advance(self, final: int) -> None:
        with self._cond:
            if final > self._final:
                self._final = final
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def run(self) -> None:
        try:
            while not self.digest.done:
                with self._cond:
                    while self._final <= self.digest.offset and not self._stopping:
                        self._cond.wait()
                    if self._stopping and self._final <= self.digest.offset:
                        return
                    limit = self._final
                want = min(HASH_CHUNK, limit - self.digest.offset,
                           self.digest.length - self.digest.offset)
                data = os.pread(self.fd, want, self.digest.offset)
                if len(data) < want:  # a hole at the end, not yet extended: zeros
                    data = data.ljust(want, b"\0")
                self.digest.update(data)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc


# ---------------------------------------------------------------------------------------------
# Reading and replacing files inside the opened image.


def _where(iso: Any, path: str) -> dict[str, str]:
    if iso.has_rock_ridge():
        return {"rr_path": path}
    if iso.has_joliet():
        return {"joliet_path": path}
    return {"iso_path": path.upper() + ";1"}


def _read(iso: Any, path: str) -> bytes | None:
    out = io.BytesIO()
    try:
        iso.get_file_from_iso_fp(out, **_where(iso, path))
    except PyCdlibException:
        return None
    return out.getvalue()


def _exists(iso: Any, path: str) -> bool:
    try:
        iso.get_record(**_where(iso, path))
    except PyCdlibException:
        return False
    return True


@dataclass
class _Edit:
    """Content given to pycdlib must stay readable until the image is written."""

    keep: list[io.BytesIO] = field(default_factory=list)

    def replace(self, iso: Any, path: str, data: bytes) -> None:
        buffer = io.BytesIO(data)
        self.keep.append(buffer)
        iso.update_file_contents_fp(buffer, len(data), **_where(iso, path))

    def add(self, iso: Any, path: str, data: bytes, mode: int) -> None:
        if _exists(iso, path):
            self.replace(iso, path, data)
            return
        parent, name = path.rsplit("/", 1)
        iso_parent = _ensure_dir(iso, parent)
        iso_name = _iso9660_name(iso, iso_parent, name, directory=False)
        buffer = io.BytesIO(data)
        self.keep.append(buffer)
        iso.add_fp(buffer, len(data), iso_path=f"{iso_parent.rstrip('/')}/{iso_name}",
                   rr_name=name if iso.has_rock_ridge() else None,
                   joliet_path=_joliet(iso, path),
                   file_mode=mode if iso.has_rock_ridge() else None)


def _joliet(iso: Any, path: str) -> str | None:
    # Joliet names hold at most 64 characters; Linux reads Rock Ridge names anyway.
    fits = all(len(part) <= 64 for part in path.split("/"))
    return path if iso.has_joliet() and fits else None


def _iso_path_of(iso: Any, path: str) -> str:
    record = iso.get_record(**_where(iso, path))
    return str(iso.full_path_from_dirrecord(record))


def _ensure_dir(iso: Any, path: str) -> str:
    """The ISO 9660 path of folder `path` (a real name), made (with parents) if missing."""
    if path in ("", "/"):
        return "/"
    if _exists(iso, path):
        return _iso_path_of(iso, path)
    parent, name = path.rsplit("/", 1)
    iso_parent = _ensure_dir(iso, parent)
    iso_path = f"{iso_parent.rstrip('/')}/{_iso9660_name(iso, iso_parent, name, directory=True)}"
    iso.add_directory(iso_path=iso_path,
                      rr_name=name if iso.has_rock_ridge() else None,
                      joliet_path=_joliet(iso, path),
                      file_mode=0o040555 if iso.has_rock_ridge() else None)
    return iso_path


def _iso9660_name(iso: Any, iso_parent: str, name: str, directory: bool) -> str:
    """A level-1 ISO 9660 name (8.3, A-Z0-9_) for `name`, unique in its folder."""
    taken = {child.file_identifier().decode("ascii", "replace").split(";")[0]
             for child in iso.list_children(iso_path=iso_parent)}
    stem, dot, ext = name.upper().rpartition(".") if not directory else ("", "", name.upper())
    if not dot:
        stem, ext = ext, ""
    stem = re.sub(r"[^A-Z0-9_]", "_", stem)[:8] or "_"
    ext = re.sub(r"[^A-Z0-9_]", "_", ext)[:3]
    for n in range(10000):
        base = stem if n == 0 else f"{stem[:8 - len(str(n)) - 1]}_{n}"
        candidate = f"{base}.{ext}" if ext else base
        if candidate.rstrip(".") not in taken and candidate not in taken:
            return candidate if directory else f"{candidate};1"
    raise InputError(f"{iso_parent}: too many files named like {name}")


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
    handle = base.open("rb")
    iso = _Writer()
    try:
        iso.open_fp(handle)
    except PyCdlibException as exc:
        handle.close()
        raise InputError(f"{base}: not a readable ISO 9660 image: {exc}") from None
    return iso, handle, head, size


def inspect_base(base: Path) -> tuple[str, Flavor]:
    """The base's volume ID and flavor (for checks before a repack)."""
    iso, handle, _head, _size = open_base(base)
    try:
        return _volume_id(iso.pvd.volume_identifier), detect(lambda p: _read(iso, p), str(base))
    finally:
        iso.close()
        handle.close()


def repack(base: Path, output: Path, options: RepackOptions,
           progress: Progress | None = None) -> RepackResult:
    shown = progress or Silent()
    iso, handle, head, base_size = open_base(base)
    try:
        epoch = options.epoch if options.epoch is not None else \
            volume_creation_epoch(head[16 * 2048:])
        with frozen_clock(epoch):
            return _repack(iso, base, head, base_size, output, options, shown)
    finally:
        iso.close()
        handle.close()


def _repack(iso: Any, base: Path, head: bytes, base_size: int, output: Path,
            options: RepackOptions, progress: Progress) -> RepackResult:
    what = str(base)
    flavor = detect(lambda p: _read(iso, p), what)
    old_volid = _volume_id(iso.pvd.volume_identifier)
    volid = options.volid if options.volid is not None else old_volid
    if options.volid is not None:
        bootmenu.check_volume_id(volid, joliet=iso.has_joliet())
    old_boot = _boot_entries(iso, what)
    system_area = head[:hybrid.SYSTEM_AREA]
    rebuild_hybrid = hybrid.is_hybrid(system_area)
    if iso.isohybrid_mbr is not None:
        iso.rm_isohybrid()  # we rebuild it ourselves (see builder.media.hybrid)

    edit = _Edit()
    if options.overlay is not None:
        _apply_overlay(iso, edit, options.overlay)
    _edit_menus(iso, edit, bootmenu.MenuEdit(old_volid, volid, options.timeout,
                                             options.keep_media_check, KS_PATH), what)
    payload = options.payload(volid, flavor)
    for path, data in sorted(payload.extra.items()):
        edit.add(iso, path, data, 0o100444)
    edit.add(iso, KS_PATH, payload.ks_cfg, 0o100444)
    _set_volume_id(iso, volid)
    iso.pvd.application_use = b" " * isomd5.APPDATA_SIZE  # the media check reads it as blanks

    iso.force_consistency()
    volume_bytes = iso.pvd.space_size * iso.logical_block_size
    new_boot = _boot_entries(iso, what)
    plan = None
    if rebuild_hybrid:
        plan = hybrid.rebuild(
            system_area,
            hybrid.Layout(int.from_bytes(head[16 * 2048 + 80:16 * 2048 + 84], "little") * 2048,
                          base_size, old_boot.boot_lba, old_boot.efi_lba, old_boot.efi_bytes),
            hybrid.Layout(volume_bytes, 0, new_boot.boot_lba, new_boot.efi_lba,
                          new_boot.efi_bytes),
            what)
    with atomic_file(output) as temp:
        md5, size = _write(iso, temp, plan.head if plan else system_area, plan, volume_bytes,
                           output.name, progress)
    return RepackResult(output, volid, flavor, md5, size)


def _write(iso: _Writer, temp: Path, system_area: bytes, plan: hybrid.Hybrid | None,
           volume_bytes: int, name: str, progress: Progress) -> tuple[str, int]:
    # r+b, not w+b: the temporary file is new and empty, and ext4 flushes a file that was
    # truncated on open when it is closed (auto_da_alloc), which costs a second per GiB.
    with temp.open("r+b") as out:
        fd = out.fileno()
        os.pwrite(fd, system_area, 0)  # pycdlib leaves the first 32 KiB to us
        hasher = _Hasher(fd, volume_bytes)
        iso.on_final = hasher.advance
        hasher.start()
        progress.start(f"writing {name}", volume_bytes)
        try:
            def report(done: int, total: int, opaque: Any) -> None:
                progress.advance(done)

            iso.write_fp(out, blocksize=1 << 20, progress_cb=report)
            out.flush()
            if plan is not None:
                plan.apply(fd)
            elif os.fstat(fd).st_size < volume_bytes:
                os.ftruncate(fd, volume_bytes)
            hasher.advance(volume_bytes)
        except BaseException:
            hasher.stop()
            progress.finish(ok=False)
            raise
        finally:
            hasher.join()
        if hasher.error is not None:
            raise hasher.error
        digest = hasher.digest if iso.in_order else isomd5.digest_file(fd, volume_bytes)
        md5, sums = digest.result()
        isomd5.write_appdata(fd, isomd5.appdata(md5, sums))
        progress.finish()
        return md5, os.fstat(fd).st_size


def _set_volume_id(iso: Any, volid: str) -> None:
    iso.pvd.volume_identifier = volid.encode("ascii").ljust(32, b" ")
    if iso.joliet_vd is not None:
        # UCS-2, padded with UCS-2 spaces; check_volume_id keeps it within 16 characters.
        joliet = volid[:16].encode("utf-16-be")
        iso.joliet_vd.volume_identifier = (joliet + " ".encode("utf-16-be") * 16)[:32]


def _edit_menus(iso: Any, edit: _Edit, menu: bootmenu.MenuEdit, what: str) -> None:
    isolinux = _read(iso, ISOLINUX_CFG)
    grub = _read(iso, GRUB_CFG)
    if isolinux is None or grub is None:
        missing = ISOLINUX_CFG if isolinux is None else GRUB_CFG
        raise InputError(f"{what}: not a CentOS 7 boot medium (no {missing.lstrip('/')})")
    edit.replace(iso, ISOLINUX_CFG, _encode(bootmenu.edit_isolinux(
        _decode(isolinux, ISOLINUX_CFG, what), menu, f"{what}: {ISOLINUX_CFG.lstrip('/')}")))
    edit.replace(iso, GRUB_CFG, _encode(bootmenu.edit_grub(
        _decode(grub, GRUB_CFG, what), menu, f"{what}: {GRUB_CFG.lstrip('/')}")))
    image = _read(iso, EFIBOOT_IMG)
    if image is None:
        raise InputError(f"{what}: not a CentOS 7 boot medium (no {EFIBOOT_IMG.lstrip('/')})")
    fat_image = fat.FatImage(bytearray(image), f"{what}: {EFIBOOT_IMG.lstrip('/')}")
    inner_what = f"{what}: {EFIBOOT_IMG.lstrip('/')}: {EFIBOOT_GRUB_CFG}"
    inner = _decode(fat_image.read(EFIBOOT_GRUB_CFG), EFIBOOT_GRUB_CFG, what)
    fat_image.write(EFIBOOT_GRUB_CFG, _encode(bootmenu.edit_grub(inner, menu, inner_what)))
    edit.replace(iso, EFIBOOT_IMG, bytes(fat_image.data))


def _decode(data: bytes, path: str, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what}: {path.lstrip('/')} is not UTF-8 text") from None


def _encode(text: str) -> bytes:
    return text.encode("utf-8")


def _apply_overlay(iso: Any, edit: _Edit, folder: Path) -> None:
    for item in sorted(folder.rglob("*")):
        relative = item.relative_to(folder).as_posix()
        if item.is_symlink():
            raise InputError(f"{item}: symbolic links are not supported in overlays")
        if not re.fullmatch(r"[A-Za-z0-9._+@-]+(?:/[A-Za-z0-9._+@-]+)*", relative):
            raise InputError(f"{item}: overlay path {relative!r} may hold only letters, digits "
                             "and ._+@-")
        if "/" + relative == KS_PATH:
            raise InputError(f"{item}: ks.cfg is the kickstart ksbuild writes; rename the file")
        if item.is_dir():
            _ensure_dir(iso, "/" + relative)
        else:
            mode = 0o100555 if os.access(item, os.X_OK) else 0o100444
            edit.add(iso, "/" + relative, item.read_bytes(), mode)


# ---------------------------------------------------------------------------------------------
# A site's ISO: which kickstarts, checked against the base (see builder.media.kickstarts).


def build_site_iso(site: Site, base: Path, output: Path, *, host: str | None = None,
                   volid: str | None = None, timeout: int = 5, keep_media_check: bool = False,
                   progress: Progress | None = None) -> RepackResult:
    """Repack `base` into `output` with the kickstart of `host`, or of every host of `site`."""
    from builder import kickstart

    hosts = [site.host(host)] if host else list(site.hosts)
    rendered = kickstart.render_site(site, tuple(hosts))
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
        epoch=source_date_epoch())
    return repack(base, output, options, progress)
