"""OUT/.ksbuild/trash: the old files a build replaced, deleted while the next build runs.

Unlinking the last name of a file frees its inode and its blocks; on a file system mounted
with `discard` (the reference VM's root is) each free waits for the device. Measured there,
20,000 files of 10 KB: 3.5 s to unlink, 0.8 s to rename (0.5 s of system CPU each). A build
after a field of `defaults` changed replaces 20,001 files, and it unlinked them last, after
its switch, with nothing left to overlap. They are renamed into the trash instead (`take`),
and the next build with work to do unlinks them in a thread while its render workers keep
the main thread waiting (`emptied_meanwhile`). It stops when that build ends: a short build
leaves the rest to the one after. Bazel defers deleting its sandbox trees the same way
(bazelbuild/bazel, src/main/java/com/google/devtools/build/lib/sandbox/
AsynchronousTreeDeleter.java).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from builder.output import unlink_files


class Trash:
    """A folder of folders, one for each `take`, each holding files named 0, 1, ..."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def take(self, paths: Iterable[str]) -> None:
        """Move each file (gone already: fine) into the trash, to be deleted later; unlink
        it where it cannot go there (no trash folder can be made, another file system)."""
        import tempfile  # not at start-up: a build that replaced nothing needs none

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            folder = tempfile.mkdtemp(dir=self.root)
        except OSError:
            unlink_files(list(paths))
            return
        unmoved = []
        for number, path in enumerate(paths):
            try:
                os.rename(path, f"{folder}/{number}")
            except FileNotFoundError:
                pass
            except OSError:
                unmoved.append(path)
        unlink_files(unmoved)

    @contextlib.contextmanager
    def emptied_meanwhile(self) -> Iterator[None]:
        """Delete what the trash holds now in a thread while the body runs; the thread stops
        after the file it is unlinking when the body ends. Entered after the build's forks
        (its render workers): a child forked while a thread runs may inherit a lock that
        thread held, never to be released."""
        try:
            folders = sorted(os.listdir(self.root))
        except OSError:
            folders = []
        if not folders:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._empty, args=(folders, stop), daemon=True,
                                  name="ksbuild-trash")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _empty(self, folders: list[str], stop: threading.Event) -> None:
        """Unlink the folders' files, then the folders, until `stop`. Whatever fails stays
        for a later build: the trash is never a build's error."""
        for name in folders:
            path = f"{self.root}/{name}"
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    for file in os.listdir(fd):
                        if stop.is_set():
                            return
                        with contextlib.suppress(OSError):
                            os.unlink(file, dir_fd=fd)
                finally:
                    os.close(fd)
                os.rmdir(path)
