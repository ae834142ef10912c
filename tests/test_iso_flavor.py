"""builder.media.flavor (what a base ISO is) and the small policies of builder.media.iso."""

from __future__ import annotations

import gzip
import lzma

import pytest

from builder.errors import InputError
from builder.media import iso
from builder.media.flavor import Flavor, check_cdrom_hosts, detect
from builder.site import load
from tests.fixtures.tree import comps_xml
from tests.test_iso_support import ONE_HOST, write_site

DISCINFO = b"1603728831.612616\n7.9\nx86_64\n"
TREEINFO = b"[general]\nname = CentOS-7\nfamily = CentOS\nversion = 7\narch = x86_64\n"


def repomd(kind: str, href: str) -> bytes:
    return (f'<?xml version="1.0"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo">'
            f'<data type="primary"><location href="repodata/p.xml.gz"/></data>'
            f'<data type="{kind}"><location href="{href}"/></data></repomd>').encode()


def reader(files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    return lambda path: files.get(path)


@pytest.mark.parametrize(("kind", "pack"), [("group", lambda b: b), ("group_gz", gzip.compress),
                                            ("group_xz", lzma.compress)])
def test_dvd_comps_in_any_packing(kind: str, pack) -> None:  # type: ignore[no-untyped-def]
    href = f"repodata/abc-c7-x86_64-comps.xml{'.gz' if kind == 'group_gz' else ''}"
    files = {"/.discinfo": DISCINFO, "/.treeinfo": TREEINFO,
             "/repodata/repomd.xml": repomd(kind, href),
             "/" + href: pack(comps_xml("DVD").encode())}
    flavor = detect(reader(files), "dvd.iso")
    assert flavor.name == "DVD/Everything" and flavor.release == "7.9"
    assert "virtualization-host-environment" in flavor.environments
    assert "virtualization-hypervisor" in flavor.groups


def test_minimal_and_netinstall() -> None:
    href = "repodata/abc-c7-minimal-x86_64-comps.xml"
    minimal = detect(reader({"/.discinfo": DISCINFO, "/repodata/repomd.xml": repomd("group", href),
                             "/" + href: comps_xml("Minimal").encode()}), "m.iso")
    assert minimal.name == "Minimal" and minimal.environments == {"minimal"}
    assert detect(reader({"/.treeinfo": TREEINFO}), "n.iso").name == "NetInstall"


@pytest.mark.parametrize(("files", "why"), [
    ({}, r"no \.discinfo or \.treeinfo"),
    ({"/.treeinfo": b"[general]\nfamily = Fedora\nversion = 7\n"}, "not CentOS 7"),
    ({"/.treeinfo": TREEINFO.replace(b"x86_64", b"aarch64")}, "arch aarch64"),
    ({"/.discinfo": b"1\n6.10\nx86_64\n"}, "release 6.10"),
    ({"/.discinfo": DISCINFO, "/repodata/repomd.xml": b"<not xml"}, "not XML"),
    ({"/.discinfo": DISCINFO, "/repodata/repomd.xml": repomd("group", "repodata/c.xml")},
     "names repodata/c.xml, which is missing"),
    ({"/.discinfo": DISCINFO, "/repodata/repomd.xml": repomd("primary_db", "x")},
     "names no comps"),
])
def test_refused_bases(files: dict[str, bytes], why: str) -> None:
    with pytest.raises(InputError, match=why):
        detect(reader(files), "base.iso")


def test_cdrom_hosts_need_their_groups(tmp_path) -> None:  # type: ignore[no-untyped-def]
    site = load(write_site(tmp_path, ONE_HOST, source="cdrom"))
    everything = Flavor("DVD/Everything", "7.9", frozenset({"virtualization-host-environment"}),
                        frozenset({"core"}))
    check_cdrom_hosts(everything, site.hosts, "dvd.iso")
    lacking = Flavor("DVD/Everything", "7.9", frozenset({"minimal"}), frozenset({"core"}))
    with pytest.raises(InputError, match=r"this ISO lacks @\^virtualization-host-environment"):
        check_cdrom_hosts(lacking, site.hosts, "custom.iso")
    url_site = load(write_site(tmp_path, ONE_HOST))
    check_cdrom_hosts(lacking, url_site.hosts, "custom.iso")  # an http source needs nothing


def test_source_date_epoch() -> None:
    assert iso.source_date_epoch({}) is None
    assert iso.source_date_epoch({"SOURCE_DATE_EPOCH": ""}) is None
    assert iso.source_date_epoch({"SOURCE_DATE_EPOCH": "1700000000"}) == 1_700_000_000
    with pytest.raises(InputError, match="SOURCE_DATE_EPOCH='yesterday'"):
        iso.source_date_epoch({"SOURCE_DATE_EPOCH": "yesterday"})


def test_volume_creation_epoch() -> None:
    pvd = bytearray(2048)
    pvd[813:830] = b"2020110314552900" + bytes([32])  # 14:55:29 at UTC+8 (32 quarter hours)
    assert iso.volume_creation_epoch(bytes(pvd)) == 1604386529  # 06:55:29 UTC
    assert iso.volume_creation_epoch(bytes(2048)) == 0
