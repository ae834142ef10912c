"""Issue 16: an incremental build's outputs are byte for byte those of a clean build of the
same inputs, whatever was edited (a host added, renamed, removed, its MAC changed, a default,
a template or an overlay file changed); and it rewrites only what the edit touches."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder import build, kickstart
from tests.test_build import media_site, tree_bytes

Edit = Callable[[dict[str, Any], Path], None]


def add_host(doc: dict[str, Any], _: Path) -> None:
    host = copy.deepcopy(doc["hosts"][0])
    host.update(hostname="added.example.com", mac="52:54:00:12:34:99")
    host["bridge"]["address"] = "192.168.1.199/16"
    doc["hosts"].append(host)


def change_mac(doc: dict[str, Any], _: Path) -> None:
    doc["hosts"][0]["mac"] = "52:54:00:12:34:98"


def rename_host(doc: dict[str, Any], _: Path) -> None:
    doc["hosts"][0]["hostname"] = "renamed.example.com"


def remove_host(doc: dict[str, Any], _: Path) -> None:
    del doc["hosts"][-1]


def change_default(doc: dict[str, Any], _: Path) -> None:
    doc["defaults"]["timezone"] = "Europe/Berlin"


def change_template(_: dict[str, Any], root: Path) -> None:
    template = root / "templates" / "host.ks.j2"
    template.write_text(template.read_text() + "\n# an edited template\n")


def change_overlay(_: dict[str, Any], root: Path) -> None:
    (root / "overlays" / "common" / "etc" / "motd").write_text("managed, edited\n")


EDITS: list[Edit] = [add_host, change_mac, rename_host, change_default, change_template,
                     change_overlay, remove_host]


def test_incremental_builds_equal_clean_builds(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(kickstart.template_dir(), templates)
    monkeypatch.setenv("KSBUILD_TEMPLATES", str(templates))
    site_path = media_site(tmp_path, "per-host")
    options = build.Options(site=site_path, out=tmp_path / "out", source_date_epoch=1700000000)
    build.build(options)
    for number, edit in enumerate(EDITS):
        doc = yaml.safe_load(site_path.read_text())
        edit(doc, tmp_path)
        site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        incremental = build.build(options)
        assert not incremental.up_to_date, edit.__name__
        clean = tmp_path / f"clean{number}" / "out"
        build.build(build.Options(site=site_path, out=clean, source_date_epoch=1700000000))
        mine, theirs = tree_bytes(options.out), tree_bytes(clean)
        assert sorted(mine) == sorted(theirs), edit.__name__
        assert [name for name in mine if mine[name] != theirs[name]] == [], edit.__name__
        shutil.rmtree(clean.parent)


def test_one_host_changed_renders_only_its_pxe_kickstart(tmp_path: Path) -> None:
    """The PXE step reuses the live tree's kickstarts of hosts whose inputs are unchanged
    (it rendered every one of them again before)."""
    site_path = media_site(tmp_path)
    out = tmp_path / "out"
    options = build.Options(site=site_path, out=out, source_date_epoch=1700000000)
    build.build(options)
    kept = out / "pxe" / "http" / "ks" / "cdh-host.c7.jevoncode.com.cfg"
    identity = (kept.stat().st_ino, kept.stat().st_mtime_ns)
    doc = yaml.safe_load(site_path.read_text())
    doc["hosts"][1]["timezone"] = "Europe/Berlin"
    site_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    rendered: list[str] = []
    real = kickstart.render_site

    def counting(site: Any, hosts: Any = None, **kwargs: Any) -> dict[str, str]:
        chosen = hosts if hosts is not None else site.hosts
        rendered.extend(h.hostname for h in chosen)
        return real(site, hosts, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kickstart, "render_site", counting)
        changed = build.build(options)
    # Once for ks/, once for the PXE tree: the changed host only.
    assert rendered == ["kvm2.example.com", "kvm2.example.com"]
    assert (kept.stat().st_ino, kept.stat().st_mtime_ns) == identity
    assert "pxe/http/ks/kvm2.example.com.cfg" in changed.written
    assert build.build(options).up_to_date
