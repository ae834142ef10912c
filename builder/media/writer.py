"""Writing the repacked image: pycdlib's mastering with a kernel-side data copy, the media
MD5 computed behind the writer, and pycdlib's clock frozen.

- File data that comes unchanged from the base moves with copy_file_range, inside the kernel
  as `cp` does (plain pread/pwrite where the file system cannot), in 32 MiB steps; memory
  stays flat whatever the ISO's size.
- pycdlib writes the descriptors, directories and boot catalog first, then the file data;
  with its inode list sorted by extent that data goes out front to back, so everything below
  the current write position is final. A thread hashes up to there (builder.media.isomd5),
  and reads the data copied from the base in the base, so it may run ahead of the copy: the
  copy and the MD5 run on two cores, and no byte is read twice.
- pycdlib stamps time.time() in local time on what it touches; frozen_clock makes both
  answer a fixed epoch, in UTC, so the bytes do not depend on the clock or the time zone.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import mmap
import os
import threading
import time
import types
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pycdlib
import pycdlib.dates
import pycdlib.headervd
import pycdlib.inplaceeditor
import pycdlib.pycdlib
import pycdlib.udf
import pycdlib.utils

from builder.errors import InputError
from builder.media import hybrid, isomd5
from builder.progress import Progress

COPY_CHUNK = 32 << 20  # bytes per copy_file_range call: the hash and progress follow
HASH_CHUNK = 16 << 20  # bytes mapped at a time by the hasher


@contextlib.contextmanager
def frozen_clock(epoch: int) -> Iterator[None]:
    """While active, pycdlib's time.time() is `epoch` and its local time is UTC."""
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


class Writer(pycdlib.PyCdlib):
    """PyCdlib whose file data copy runs in the kernel (copy_file_range) for data that comes
    from the base ISO, and which reports the offset below which the output is final."""

    def __init__(self) -> None:
        super().__init__()
        self.on_final: Callable[[int], None] = lambda offset: None
        # (output offset, length, source fd, source offset) of data copied from the base.
        self.on_copy: Callable[[int, int, int, int], None] = lambda *copy: None
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
        if self.in_order:
            # The hash reads these bytes in the base (Hasher.copied), so it need not wait for
            # the copy: a writer slowed by the kernel's dirty page limits (a 4 GiB image) no
            # longer holds the MD5 back.
            self.on_copy(start, ino.data_length, ino.data_fp.fileno(), source)
            final(start + ino.data_length)
        yield from _copy_range(ino.data_fp.fileno(), outfp.fileno(), source, start,
                               ino.data_length)


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


@dataclass(frozen=True)
class _Copy:
    """Output bytes [start, end) are the bytes of `fd` from `fd_at` on."""

    start: int
    end: int
    fd: int
    fd_at: int


class Hasher(threading.Thread):
    """Hashes the output behind the writer: bytes below `final` never change again.

    Data copied from the base is hashed from the base (Writer.on_copy): its pages are clean,
    while the output's are being written back, and a fault on a page under writeback waits
    for its lock (measured: ~0.2 s more per GiB). Each piece is read through a short-lived
    memory map, not read() into a buffer: copying 1 GiB out of the page cache costs ~0.13 s
    more than the MD5 itself, which is the floor of a repack. One window at a time is mapped
    (HASH_CHUNK), so the resident memory stays flat."""

    def __init__(self, fd: int, volume_bytes: int) -> None:
        super().__init__(name="ksbuild-md5", daemon=True)
        self.fd = fd
        self.digest = isomd5.MediaDigest(volume_bytes)
        self._final = 0
        self._copies: collections.deque[_Copy] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.error: BaseException | None = None

    def copied(self, start: int, length: int, fd: int, fd_at: int) -> None:
        with self._cond:
            self._copies.append(_Copy(start, start + length, fd, fd_at))

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
                    fd, fd_at, limit = self._source(self.digest.offset, limit)
                want = min(HASH_CHUNK, limit - self.digest.offset,
                           self.digest.length - self.digest.offset)
                self._hash(fd, fd_at, want)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc

    def _source(self, offset: int, limit: int) -> tuple[int, int, int]:
        """Where the output's bytes from `offset` are read (fd, its offset) and up to where
        that holds (at most `limit`)."""
        while self._copies and self._copies[0].end <= offset:
            self._copies.popleft()
        if not self._copies:
            return self.fd, offset, limit
        copy = self._copies[0]
        if copy.start <= offset:
            return copy.fd, copy.fd_at + offset - copy.start, min(limit, copy.end)
        return self.fd, offset, min(limit, copy.start)

    def _hash(self, fd: int, start: int, length: int) -> None:
        """Feed `length` bytes of `fd` from `start` to the digest. Beyond the end of the file
        (a hole at the end of the output, not yet extended) they read as zeros: a map there
        would fault (SIGBUS), so only what the file holds is mapped."""
        present = max(0, min(length, os.fstat(fd).st_size - start))
        if present:
            aligned = start - start % mmap.ALLOCATIONGRANULARITY
            with mmap.mmap(fd, start + present - aligned, mmap.MAP_SHARED, mmap.PROT_READ,
                           offset=aligned) as window, memoryview(window) as view:
                self.digest.update(view[start - aligned:])
        if present < length:
            self.digest.update(bytes(length - present))


def write_image(iso: Writer, temp: Path, system_area: bytes, plan: hybrid.Hybrid | None,
                volume_bytes: int, name: str, progress: Progress) -> tuple[str, int]:
    """Write `iso` into the empty file `temp`: the system area, the volume, the hybrid tail,
    then the media checksum. Returns (MD5, file size)."""
    # r+b, not w+b: the temporary file is new and empty, and ext4 flushes a file that was
    # truncated on open when it is closed (auto_da_alloc), which costs a second per GiB.
    with temp.open("r+b") as out:
        fd = out.fileno()
        os.pwrite(fd, system_area, 0)  # pycdlib leaves the first 32 KiB to us
        hasher = Hasher(fd, volume_bytes)
        iso.on_final = hasher.advance
        iso.on_copy = hasher.copied
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
