"""Writing outputs so that a crash, Ctrl-C, kill -9 or a full disk never leaves a half-written
one: everything goes to a temporary name beside its target and is renamed into place at the
end.

Whole trees (a PXE tree, a build's output generation) are versioned folders behind one
symlink (`Generations`): the next version is built beside the current one and one rename of
the symlink switches readers from the old version to the new, never to a mix. A process
holds an flock on each temporary file or folder it is writing, so the next run can tell the
debris of a dead run (no lock) from a live one's work and remove only the former (`sweep`).

Outputs follow the umask (a kickstart carries a password hash: `umask 077` must keep it
private), except what a PXE tree serves, which builder/pxe/tree.py writes 0644.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Creating and unlinking files is bound by the file system's latency (allocating or freeing
# an inode and its blocks, the journal), not by the CPU: a few threads at once remove a
# generation of 24,000 small files in ~1.2 s instead of ~4 s, and write them 1.4-1.6x as fast
# (ext4, measured on the 2-core reference machine). Not while the render workers take both
# cores: there the threads only take turns for the GIL, and the same files cost more CPU
# than in one thread (40,000 PXE entries: 1.25 vs 1.13 s), taken from the workers.
IO_THREADS = 4


def umask() -> int:
    """The process umask, read without changing it (Linux); if unknown, assume the worst."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o077


def file_mode() -> int:
    """The mode a new file gets under the umask (open(2) with 0666)."""
    return 0o666 & ~umask()


def _hold(path: Path) -> int:
    """Open `path` (a file or a folder) and take an exclusive flock on it: the mark of a live
    writer. Closed (and so released) by the caller, or by the kernel when the process dies."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@contextlib.contextmanager
def atomic_file(target: Path, mode: int | None = None,
                exchange: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` in one rename.
    `mode`: default the umask's. `exchange`: for a large file (an ISO), swap it with an existing
    `target` and remove the old one after, rather than rename over it: ext4 (auto_da_alloc)
    starts writing back the whole new file inside a rename that replaces a file, 0.8 s per GiB
    measured, where the swap costs nothing and the removal ~0.3 s."""
    import tempfile  # here, as below: a no-op `ksbuild build` writes nothing (~3 ms)

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    temp = Path(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield temp
        os.chmod(temp, file_mode() if mode is None else mode)
        if exchange and _exchange(temp, target):
            temp.unlink()  # now the old file
        else:
            os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _exchange(temp: Path, target: Path) -> bool:
    """Swap `temp` and `target`, an existing regular file, in one step (renameat2 with
    RENAME_EXCHANGE, Linux 3.15); False where that cannot be done: no such target, not a
    regular file, or a file system or C library without it."""
    try:
        if not stat.S_ISREG(os.lstat(target).st_mode):
            return False
    except FileNotFoundError:
        return False
    import ctypes  # only an ISO's output needs it, not every command's start-up

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_cwd, rename_exchange = -100, 2
    done: int = renameat2(at_cwd, os.fsencode(temp), at_cwd, os.fsencode(target),
                          rename_exchange)
    return done == 0


def write_bytes(target: Path, data: bytes, mode: int | None = None) -> None:
    with atomic_file(target, mode) as temp:
        temp.write_bytes(data)


def same_bytes(path: str | Path, data: bytes, sha: str, recorded: str | None) -> bool:
    """Whether the file at `path` holds `data` (whose sha256 is `sha`): by the sha256 the
    last build `recorded` for that very file, if any (no read); else by its bytes."""
    return recorded == sha if recorded is not None else has_bytes(path, data)


def has_bytes(path: str | Path, data: bytes) -> bool:
    try:
        with open(path, "rb") as handle:
            return os.fstat(handle.fileno()).st_size == len(data) and handle.read() == data
    except OSError:
        return False


def write_new(path: str | Path, data: bytes, mode: int = 0o666, exact: bool = False) -> None:
    """A new file in a folder nobody reads yet (a generation being built, switched into
    place as a whole): no temporary name needed. `mode` is masked by the umask (the kernel
    applies it: nothing to read per file), unless `exact`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:  # a file of a reused version (a spare): replaced, never
        os.unlink(path)      # written through (the current version may share its inode)
        fd = os.open(path, flags, mode)
    try:
        if exact:
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def link_new(source: str, target: str) -> None:
    """os.link(source, target) into a folder nobody reads yet, as write_new() writes there:
    a file of a reused version at `target` is replaced."""
    try:
        os.link(source, target)
    except FileExistsError:
        os.unlink(target)
        os.link(source, target)


def link_new_files(pairs: list[tuple[str, str]], threads: int = IO_THREADS) -> None:
    """link_new(source, target) of each pair, by `threads` threads."""
    def link(chunk: list[tuple[str, str]]) -> None:
        for source, target in chunk:
            link_new(source, target)

    in_threads(link, pairs, threads)


def write_new_files(files: list[tuple[str, bytes]], mode: int = 0o666, exact: bool = False,
                    times: tuple[int, int] | None = None, threads: int = IO_THREADS) -> None:
    """write_new() of each (path, data), by `threads` threads; `times`: (atime, mtime)."""
    def write(chunk: list[tuple[str, bytes]]) -> None:
        for path, data in chunk:
            write_new(path, data, mode, exact)
            if times is not None:
                os.utime(path, times)

    in_threads(write, files, threads)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `target`; on success it takes `target`'s place.

    The old folder is moved aside and removed only after the new one is in place, so readers
    never see a mix of old and new files.
    """
    import tempfile  # not at start-up (atomic_file)

    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    fd = _hold(temp)
    try:
        yield temp
        os.chmod(temp, 0o755)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old",
                                        dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(temp, target)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Debris of dead runs.


def is_live(path: Path) -> bool:
    """True if some process holds the flock a writer takes on its temporary file or folder."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno not in (errno.ENOENT, errno.ELOOP)  # vanished, or a symlink: dead
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep(folder: Path, patterns: Iterable[str], keep: Iterable[Path] = ()) -> list[Path]:
    """Remove what matches `patterns` in `folder` (ksbuild's own temporary names only) unless
    it is in `keep` or a live process holds it; the paths removed. Matched against the names
    listed (one read of the folder), not globbed: a glob of a name without a wildcard skips
    a dangling symlink, as a temporary link to an output not made is."""
    kept = {p.name for p in keep}
    patterns = tuple(patterns)  # read once a name
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        if name not in kept and any(fnmatch.fnmatchcase(name, p) for p in patterns):
            path = folder / name
            if not is_live(path):
                remove(path)
                removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# Versioned trees behind one symlink.


# The suffix of the folder kept beside the current version to make the next one from.
SPARE = ".spare"


class Generations:
    """`link` is a relative symlink to the current version, a folder `.<name>.<random>.v`
    beside it. A new version is built beside the current one and `switch` renames a new
    symlink over `link`: one rename, so a reader sees the old tree or the new, never a mix,
    whatever happens to the writer."""

    def __init__(self, link: Path) -> None:
        self.link = link.absolute()
        self.pattern = f".{self.link.name}.*"

    def current(self) -> Path | None:
        """The current version (or a folder at `link` written before versions existed)."""
        if self.link.is_symlink():
            target = self.link.parent / os.readlink(self.link)
            return target if target.is_dir() else None
        return self.link if self.link.is_dir() else None

    @contextlib.contextmanager
    def new(self, reuse: Path | None = None) -> Iterator[Path]:
        """A new version folder (0755: a served tree must be traversable), held (flock) while
        it is built; removed if the build fails. Empty, or `reuse` (the current version's
        spare, see switch()) renamed to it: the caller then removes from it what it will not
        keep before it writes anything."""
        import tempfile  # not at start-up (atomic_file)

        self.link.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{self.link.name}.", suffix=".v",
                                       dir=self.link.parent))
        if reuse is not None:
            os.replace(reuse, folder)  # over the empty folder just made: one rename
        fd = _hold(folder)
        try:
            os.chmod(folder, 0o755)
            yield folder
        except BaseException:
            if self.current() != folder:
                remove_tree(folder)
            raise
        finally:
            os.close(fd)

    def spare(self) -> Path | None:
        """The current version's spare (see switch()), if there is one."""
        current = self.current()
        if current is None or current == self.link:
            return None
        spare = current.with_name(current.name + SPARE)
        return spare if spare.is_dir() and not spare.is_symlink() else None

    def switch(self, version: Path, prune: Callable[[Path], None] | None = None,
               filled: Path | None = None) -> None:
        """Make `version` the current one. The one it replaces is removed; or, with `prune`,
        kept as `version`'s spare: the next version is made from it by adding what changed,
        where making it from nothing means linking every unchanged file again (60,000 for a
        large PXE fleet) and removing the replaced version means unlinking them all. `prune`
        prunes the replaced version to the files it shares with `version` (hard links); with
        none to replace (a first build), `filled` becomes the spare: a version folder (new())
        the caller filled with links to `version`'s files."""
        old = self.current()
        keep = prune is not None and self.keeps_replaced()
        if old == self.link:  # a plain folder from before: moved aside first (not atomic, once)
            import tempfile  # not at start-up (atomic_file)

            aside = Path(tempfile.mkdtemp(prefix=f".{self.link.name}.", suffix=".v",
                                          dir=self.link.parent))
            os.replace(self.link, aside / "old")
            old = aside
        temp = self.link.parent / f".{self.link.name}.{version.name}.link"
        temp.unlink(missing_ok=True)
        os.symlink(version.name, temp)
        os.replace(temp, self.link)
        _sync_folder(self.link.parent)
        spare = version.with_name(version.name + SPARE)
        if old is not None and old != version and self.owns(old):
            stale = old.with_name(old.name + SPARE)  # the old version's spare, not reused
            if stale.is_dir():
                remove_tree(stale)
            if keep and prune is not None:
                prune(old)  # named a spare only once pruned: killed before, a dead version
                os.replace(old, spare)
                filled = None
            else:
                remove_tree(old)
        if filled is not None:
            os.replace(filled, spare)

    def keeps_replaced(self) -> bool:
        """switch() with `prune` keeps the version it replaces (there is one, made by this
        class), rather than filling a spare from the new version."""
        old = self.current()
        return old is not None and old != self.link and self.owns(old)

    def owns(self, folder: Path) -> bool:
        """A version of this link's (not, say, the folder of another link it pointed at)."""
        return folder.parent == self.link.parent and folder.match(f"{self.pattern}.v")

    def sweep(self) -> list[Path]:
        """Remove the versions (and temporary links) of dead runs, spares but the current
        version's, and the `.part`/`.old` folders of ksbuild before versions; never the
        current version or a live one."""
        current = self.current()
        keep = [current, current.with_name(current.name + SPARE)] if current is not None else []
        return sweep(self.link.parent, [f"{self.pattern}.v", f"{self.pattern}.link",
                                        f"{self.pattern}.part", f"{self.pattern}.old",
                                        f"{self.pattern}{SPARE}"], keep)


def remove_tree(root: Path) -> None:
    """shutil.rmtree(root, ignore_errors=True), its files unlinked by IO_THREADS threads.
    Symlinks are removed, never followed."""
    files: list[str] = []
    folders: list[str] = []
    for folder, dirs, names in os.walk(root):
        folders.append(folder)
        links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]
        files += [os.path.join(folder, name) for name in (*names, *links)]
    unlink_files(files)
    for folder in reversed(folders):  # the deepest first
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    shutil.rmtree(root, ignore_errors=True)  # whatever appeared meanwhile


def in_threads(work: Callable[[list[T]], object], items: list[T],
               threads: int = IO_THREADS) -> None:
    """work(part) for `threads` parts of `items` at once (each item in one part); in this
    thread where there are few, or `threads` is 1. An exception in any part is raised here."""
    if len(items) < 64 or threads <= 1:
        work(items)
        return
    from concurrent.futures import ThreadPoolExecutor  # with logging: not at start-up

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [items[k::threads] for k in range(threads)]))


def unlink_files(paths: list[str]) -> None:
    """Unlink each path (gone already: fine), by IO_THREADS threads."""
    in_threads(_unlink_all, paths)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a crash after the build reports success must not
    bring the old version back)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link (same inode: an unchanged output keeps its identity and costs no space),
    or a copy where the file system has none."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def link_tree(source: Path, target: Path,
              present: Callable[[str], bool] = lambda relative: False) -> None:
    """`target`: a copy of the folder `source` made of hard links; `present`: whether
    `target` holds a file (relative) already, the same as `source`'s."""
    for folder, dirs, names in os.walk(source):
        relative = os.path.relpath(folder, source)
        into = os.path.normpath(f"{target}/{relative}")
        os.makedirs(into, exist_ok=True)
        shutil.copystat(folder, into)
        prefix = "" if relative == "." else f"{relative}/"
        for name in names + [d for d in dirs if os.path.islink(f"{folder}/{d}")]:
            if present(prefix + name):
                continue
            if os.path.islink(f"{folder}/{name}"):  # copied as a link, never followed
                os.symlink(os.readlink(f"{folder}/{name}"), f"{into}/{name}")
            else:
                link_or_copy(f"{folder}/{name}", f"{into}/{name}")
