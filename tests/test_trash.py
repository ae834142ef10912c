"""builder/trash.py: replaced files are moved aside at once and deleted during a later build."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from builder.trash import Trash


def files(root: Path, count: int, prefix: str) -> list[str]:
    (root / "gen").mkdir(exist_ok=True)
    paths = [root / "gen" / f"{prefix}{number}.cfg" for number in range(count)]
    for number, path in enumerate(paths):
        path.write_text(f"{prefix} {number}\n")
    return [str(path) for path in paths]


def trash_files(trash: Path) -> dict[str, set[str]]:
    return {folder.name: {path.read_text() for path in folder.iterdir()}
            for folder in trash.iterdir()}


def test_take_moves_the_files_into_one_new_folder_and_skips_those_gone(tmp_path: Path) -> None:
    paths = files(tmp_path, 3, "old")
    Path(paths[1]).unlink()
    trash = Trash(tmp_path / "trash")
    trash.take([*paths, str(tmp_path / "never-there")])
    assert not any(Path(path).exists() for path in paths)
    assert list(trash_files(tmp_path / "trash").values()) == [{"old 0\n", "old 2\n"}]


def test_the_trash_is_emptied_while_the_body_runs_and_only_what_it_held_before(
        tmp_path: Path) -> None:
    trash = Trash(tmp_path / "trash")
    trash.take(files(tmp_path, 200, "old"))
    (first,) = (tmp_path / "trash").iterdir()
    with trash.emptied_meanwhile():
        trash.take(files(tmp_path, 5, "new"))  # what this build replaces: for the next
        deadline = time.monotonic() + 30
        while first.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not first.exists(), "the trash was not emptied while the body ran"
    assert list(trash_files(tmp_path / "trash").values()) == [
        {f"new {number}\n" for number in range(5)}]
    assert not any(t.name == "ksbuild-trash" for t in threading.enumerate())


def test_the_thread_stops_when_the_body_ends_and_the_rest_waits(tmp_path: Path) -> None:
    trash = Trash(tmp_path / "trash")
    trash.take(files(tmp_path, 2000, "old"))
    with trash.emptied_meanwhile():
        pass  # a build with little to do
    assert not any(t.name == "ksbuild-trash" for t in threading.enumerate())
    left = sum(len(names) for names in trash_files(tmp_path / "trash").values())
    with trash.emptied_meanwhile():
        deadline = time.monotonic() + 30
        while any((tmp_path / "trash").iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert left > 0 and not any((tmp_path / "trash").iterdir())


def test_no_thread_without_a_trash(tmp_path: Path) -> None:
    before = threading.active_count()
    with Trash(tmp_path / "trash").emptied_meanwhile():
        assert threading.active_count() == before


def test_where_no_trash_can_be_made_the_files_are_unlinked(tmp_path: Path) -> None:
    (tmp_path / "trash").write_text("a file where the trash folder goes\n")
    paths = files(tmp_path, 3, "old")
    Trash(tmp_path / "trash").take(paths)
    assert not any(Path(path).exists() for path in paths)
    with Trash(tmp_path / "trash").emptied_meanwhile():
        pass
