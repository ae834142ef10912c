"""The installed host's yum repos (`repos`): the grammar, the kickstart's `repo` lines
(validated by pykickstart), and what the %post step leaves in /etc/yum.repos.d/ (run for real
in the sandbox): the site's repos, nothing naming the dead CentOS mirrors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from builder import site
from builder.errors import InputError
from builder.kickstart import Renderer, render_site
from tests.sandbox import Sandbox
from tests.sandbox.checks import check_repos
from tests.sitefiles import BASE, write_site

SOURCE = "http://10.0.2.100/centos/7.9.2009/os/x86_64/"
REPOS = [
    {"name": "local", "baseurl": "source", "gpgcheck": False, "install": True},
    {"name": "updates", "baseurl": "https://vault.centos.org/7.9.2009/updates/$basearch/",
     "install": True},
    {"name": "epel", "baseurl": "https://example.org/epel/7/$basearch/", "enabled": False,
     "gpgkey": "https://example.org/RPM-GPG-KEY-EPEL-7"},
]


def doc(repos: Any = None, source: str = SOURCE) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    document["hosts"] = document["hosts"][:1]
    document["defaults"]["source"] = source
    if repos is not None:
        document["defaults"]["repos"] = repos
    return document


def installed(tmp_path: Path, document: dict[str, Any]) -> tuple[Sandbox, site.Host, str]:
    loaded = site.load(write_site(tmp_path, document))
    host = loaded.hosts[0]
    kickstart = render_site(loaded)[host.hostname]
    box = Sandbox(tmp_path / "box")
    box.seed_anaconda_network(kickstart)
    result = box.install(kickstart)
    assert result.ok, result.report()
    return box, host, kickstart


def test_default_repos_are_the_vault_with_gpgcheck(tmp_path: Path) -> None:
    box, host, kickstart = installed(tmp_path, doc())
    assert [(r.name, r.baseurl, r.gpgcheck, r.gpgkey) for r in host.repos] == [
        (name, f"https://vault.centos.org/7.9.2009/{path}/$basearch/", True,
         "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7")
        for name, path in (("base", "os"), ("updates", "updates"), ("extras", "extras"))]
    assert check_repos(box.target, host) == []
    folder = box.target / "etc/yum.repos.d"
    assert sorted(p.name for p in folder.iterdir()) == [
        "CentOS-Base.repo", "CentOS-Media.repo", "CentOS-fasttrack.repo", "ksbuild.repo"]
    for name in ("CentOS-Base.repo", "CentOS-fasttrack.repo"):
        assert (folder / name).read_text().startswith("# Emptied by ksbuild")
    text = (folder / "ksbuild.repo").read_text()
    assert "[base]\nname=base\nbaseurl=https://vault.centos.org/7.9.2009/os/$basearch/\n" \
           "enabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7\n" in text
    assert "\nrepo " not in kickstart  # none used during the install unless asked


def test_site_repos_are_written_and_used_during_the_install_when_asked(tmp_path: Path) -> None:
    box, host, kickstart = installed(tmp_path, doc(REPOS))
    assert check_repos(box.target, host) == []
    text = (box.target / "etc/yum.repos.d/ksbuild.repo").read_text()
    assert f"[local]\nname=local\nbaseurl={SOURCE}\nenabled=1\ngpgcheck=0\n" in text
    assert "[epel]\nname=epel\nbaseurl=https://example.org/epel/7/$basearch/\nenabled=0\n" in text
    assert "mirror" not in text
    # pykickstart (RHEL7) parsed these when the kickstart was rendered.
    assert f"\nrepo --name=local --baseurl={SOURCE}\n" in kickstart
    assert "\nrepo --name=updates --baseurl=https://vault.centos.org/7.9.2009/updates/" \
           "$basearch/\n" in kickstart
    assert "--name=epel" not in kickstart


def test_a_second_run_changes_nothing(tmp_path: Path) -> None:
    box, host, kickstart = installed(tmp_path, doc(REPOS))
    first = (box.target / "etc/yum.repos.d/CentOS-Base.repo").read_text()
    assert box.install(kickstart).ok
    assert (box.target / "etc/yum.repos.d/CentOS-Base.repo").read_text() == first
    assert check_repos(box.target, host) == []


@pytest.mark.parametrize(("repos", "expected"), [
    ([{"name": "a", "baseurl": "https://x.example/"}, {"name": "a", "baseurl": "source"}],
     "hosts[0].repos[1].name: repo a is listed twice"),
    ([{"name": "a", "baseurl": "ftp://x.example/"}], "repos[0].baseurl"),
    ([{"name": "a b", "baseurl": "source"}], "repos[0].name"),
    ([{"baseurl": "source"}], "repos[0]"),
])
def test_bad_repos_are_one_line(tmp_path: Path, repos: list[dict[str, Any]],
                                expected: str) -> None:
    document = doc()
    document["hosts"][0]["repos"] = repos
    with pytest.raises(InputError) as caught:
        site.load(write_site(tmp_path, document))
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_source_repo_needs_a_url_source(tmp_path: Path) -> None:
    loaded = site.load(write_site(tmp_path, doc([{"name": "a", "baseurl": "source"}],
                                                source="cdrom")))
    with pytest.raises(InputError, match="`baseurl: source` needs an http"):
        Renderer(loaded).render_host(loaded.hosts[0])
