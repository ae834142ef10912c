"""Fetch base media: the CentOS 7 ISO a site builds from, or the PXE boot files of an install
tree, into a cache keyed by sha256.

A download goes to `<cache>/<sha256>/<name>.part`, is resumed with a Range request after a
break, and gets its final name only once its sha256 matches, so a crash, Ctrl-C or a full disk
never leaves a file that later looks valid. A lock per cache entry keeps two ksbuild processes
from writing the same partial file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin, urlsplit

from builder import __version__
from builder.cachedir import default_cache_dir
from builder.errors import InputError, KsbuildError
from builder.output import write_bytes
from builder.progress import Progress, Silent
from builder.site import MEDIA_FLAVORS, MEDIA_RELEASES, URL, Media

if TYPE_CHECKING:  # imported where used: a build from a local ISO never loads them (~55 ms)
    import socket

    import requests

DEFAULT_MIRROR = "https://vault.centos.org/"
MIRROR_ENV = "KSBUILD_MIRROR"
ARCH = "x86_64"

# The published sha256 of the official 7.9.2009 ISOs (vault's sha256sum.txt). Kept in the code
# so that a mirror serving another file together with a matching sha256sum.txt is still caught.
KNOWN_SHA256 = {
    "CentOS-7-x86_64-NetInstall-2009.iso":
        "b79079ad71cc3c5ceb3561fff348a1b67ee37f71f4cddfec09480d4589c191d6",
    "CentOS-7-x86_64-Minimal-2009.iso":
        "07b94e6b1a0b0260b94c83d6bb76b26bf7a310dc78d7a9c7432809fb9bc6194a",
    "CentOS-7-x86_64-DVD-2009.iso":
        "e33d7b1ea7a9e2f38c8f693215dd85254c3a4fe446f93f563279715b68d07987",
    "CentOS-7-x86_64-Everything-2009.iso":
        "689531cce9cf484378481ae762fae362791a9be078fda10e4f6977bf8fa71350",
}

CHUNK = 1 << 20
SMALL_LIMIT = 1 << 20  # sha256sum.txt and .treeinfo are a few KiB; refuse anything huge
# Ceilings for a body whose length nobody told us: above any CentOS 7 ISO (Everything-2009,
# the largest, is under 10 GiB) and any kernel or initrd (an initrd is ~60 MiB).
ISO_LIMIT = 16 << 30
BOOT_FILE_LIMIT = 1 << 30
MAX_REDIRECTS = 10
DEADLINE_ENV = "KSBUILD_FETCH_DEADLINE"
DEFAULT_DEADLINE = 4 * 3600.0  # a DVD ISO at 500 kB/s takes 2.5 h
SMALL_DEADLINE = 120.0
SHA256 = re.compile(r"[0-9a-f]{64}")
SAFE_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]{0,200}")


@dataclass(frozen=True)
class FetchOptions:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # longest silence of the server in the middle of a body
    retries: int = 4  # further attempts after the first one fails
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one (7.5 s in all)
    backoff_max: float = 30.0
    # Seconds one file may take in all, retries included (a server that drips a byte every
    # few seconds never trips read_timeout). None: $KSBUILD_FETCH_DEADLINE, else 4 hours.
    deadline: float | None = None


def deadline_from_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    value = environ.get(DEADLINE_ENV, "").strip()
    if not value:
        return DEFAULT_DEADLINE
    if not re.fullmatch(r"[0-9]{1,7}(?:\.[0-9]+)?", value) or float(value) <= 0:
        raise InputError(f"{DEADLINE_ENV}={value!r}: expected seconds (a positive number)")
    return float(value)


@dataclass(frozen=True)
class PxeBootFiles:
    vmlinuz: Path
    initrd: Path
    treeinfo: Path


# ---------------------------------------------------------------------------------------------
# Where things are.


def choose_mirror(flag: str | None, media: Media | None = None) -> str:
    """The mirror base URL: --mirror, then $KSBUILD_MIRROR, then the site's, then the vault."""
    candidates = (
        ("--mirror", flag),
        (MIRROR_ENV, os.environ.get(MIRROR_ENV)),
        (media.origin + ".mirror" if media else "", media.mirror if media else None),
    )
    for where, value in candidates:
        if value:
            if not re.fullmatch(URL, value):
                raise InputError(f"{where}: {value!r} is not an http(s) URL")
            return value if value.endswith("/") else value + "/"
    return DEFAULT_MIRROR


def iso_name(release: str, flavor: str) -> str:
    return f"CentOS-7-{ARCH}-{flavor}-{release.rsplit('.', 1)[1]}.iso"


def iso_url(mirror: str, release: str, flavor: str) -> str:
    return f"{mirror}{release}/isos/{ARCH}/{iso_name(release, flavor)}"


def tree_url(mirror: str, release: str) -> str:
    """The release's install tree (with .treeinfo and images/pxeboot/) on a mirror."""
    return f"{mirror}{release}/os/{ARCH}/"


def media_from_options(release: str | None, flavor: str | None, url: str | None,
                       sha256: str | None) -> Media:
    """Media given on the command line instead of in a site file."""
    if sha256 is not None and not SHA256.fullmatch(sha256.lower()):
        raise InputError(f"--sha256: {sha256!r} is not a sha256 (64 hex digits)")
    sha = sha256.lower() if sha256 else None
    if url is not None:
        if release or flavor:
            raise InputError("--url: give --url or --release/--flavor, not both")
        if not re.fullmatch(URL, url):
            raise InputError(f"--url: {url!r} is not an http(s) URL")
        if sha is None:
            raise InputError("--url needs --sha256, so the download can be verified")
        return Media(None, None, None, url, sha, None, origin="command line")
    release = release or MEDIA_RELEASES[-1]
    if release not in MEDIA_RELEASES:
        raise InputError(f"--release: {release!r} is not one of {', '.join(MEDIA_RELEASES)}")
    flavor = flavor or "DVD"
    if flavor not in MEDIA_FLAVORS:
        raise InputError(f"--flavor: {flavor!r} is not one of {', '.join(MEDIA_FLAVORS)}")
    return Media(release, flavor, None, None, sha, None, origin="command line")


# ---------------------------------------------------------------------------------------------
# The public entry points.


def resolve_media(media: Media, *, cache_dir: Path | None = None, mirror: str | None = None,
                  progress: Progress | None = None, options: FetchOptions | None = None,
                  sha256_of: Callable[[Path], str] | None = None) -> Path:
    """A verified local ISO for `media`: the user's own file, or one fetched into the cache.

    `mirror` is the --mirror flag (None: $KSBUILD_MIRROR, the site's mirror, the vault).
    `sha256_of`: the sha256 of a local file, where the caller remembers it (`ksbuild build`
    does, by size and mtime: a pinned 4 GiB ISO is not read again on every rebuild)."""
    if media.path is not None:
        return _local_iso(media, sha256_of or _file_sha256)
    cache = cache_dir or default_cache_dir()
    with _Fetcher(options, progress) as fetcher:
        if media.url is not None:
            assert media.sha256 is not None  # the site grammar requires it with url
            name = _file_name(media.url, "base.iso")
            fetcher.offline_hint = _offline_hint(name)
            return fetcher.fetch(media.url, media.sha256, name, cache, ISO_LIMIT)
        assert media.release is not None and media.flavor is not None
        name = iso_name(media.release, media.flavor)
        url = iso_url(choose_mirror(mirror, media), media.release, media.flavor)
        fetcher.offline_hint = _offline_hint(name)
        expected = media.sha256 or _expected_iso_sha256(fetcher, url, name, cache)
        return fetcher.fetch(url, expected, name, cache, ISO_LIMIT)


def fetch_pxeboot(tree: str, *, cache_dir: Path | None = None,
                  progress: Progress | None = None, options: FetchOptions | None = None,
                  treeinfo_sha256: str | None = None, iso: Path | None = None) -> PxeBootFiles:
    """The kernel and initrd of an install tree, each checked against the sha256 its .treeinfo
    lists in [checksums]. The .treeinfo itself is trusted as served (HTTPS), unless pinned by
    `treeinfo_sha256`.

    A .treeinfo without [checksums] (CentOS 7.9.2009's has none) vouches for nothing: then the
    files must equal the copies in `iso`, a verified ISO of the same release (its kernel and
    initrd are the tree's, from the same compose); without one they are refused."""
    base = tree if tree.endswith("/") else tree + "/"
    cache = cache_dir or default_cache_dir()
    with _Fetcher(options, progress) as fetcher:
        fetcher.offline_hint = (f"PXE boot files need a reachable install tree "
                                f"(--mirror or {MIRROR_ENV}, or a local mirror's URL)")
        url = base + ".treeinfo"
        data = fetcher.get_small(url, missing_ok=False)
        assert data is not None
        digest = hashlib.sha256(data).hexdigest()
        if treeinfo_sha256 is not None and digest != treeinfo_sha256.lower():
            raise KsbuildError(f"{url}: sha256 {digest} is not the pinned {treeinfo_sha256}")
        kernel, initrd, sums = parse_treeinfo(data, url)
        # Checksums that came over plain http vouch for nothing: a verified ISO's copies do.
        unprotected = treeinfo_sha256 is None and urlsplit(url).scheme == "http"
        for path in (kernel, initrd):
            if path not in sums or (unprotected and iso is not None):
                sums[path] = _sha256_in_iso(iso, path, url)
        if unprotected and iso is None:
            _warn_if_plain_http(fetcher.progress, url, "the kernel and initrd")
        treeinfo = cache / digest / "treeinfo"
        if not treeinfo.is_file():
            write_bytes(treeinfo, data)
        return PxeBootFiles(
            vmlinuz=fetcher.fetch(base + kernel, sums[kernel], "vmlinuz", cache, BOOT_FILE_LIMIT),
            initrd=fetcher.fetch(base + initrd, sums[initrd], "initrd.img", cache,
                                 BOOT_FILE_LIMIT),
            treeinfo=treeinfo,
        )


def parse_treeinfo(data: bytes, url: str) -> tuple[str, str, dict[str, str]]:
    """The kernel and initrd paths of a .treeinfo, and the sha256 it lists for both."""
    import configparser  # a build from a local ISO reads no .treeinfo

    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # paths keep their case
    try:
        parser.read_string(data.decode("utf-8"), source=url)
    except (UnicodeDecodeError, configparser.Error) as exc:
        raise KsbuildError(f"{url}: not a valid .treeinfo: {exc}".splitlines()[0]) from None
    images = f"images-{ARCH}"
    kernel = parser.get(images, "kernel", fallback="images/pxeboot/vmlinuz")
    initrd = parser.get(images, "initrd", fallback="images/pxeboot/initrd.img")
    sums: dict[str, str] = {}
    for path in (kernel, initrd):
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._/-]*", path) or ".." in path.split("/"):
            raise KsbuildError(f"{url}: [{images}] names an odd path {path!r}")
        listed = parser.get("checksums", path, fallback="")
        if not listed:
            continue  # the caller needs another voucher (see fetch_pxeboot)
        algorithm, _, value = listed.partition(":")
        if algorithm != "sha256" or not SHA256.fullmatch(value.lower()):
            raise KsbuildError(f"{url}: [checksums] gives no sha256 for {path}, "
                               f"so it cannot be verified")
        sums[path] = value.lower()
    return kernel, initrd, sums


def _sha256_in_iso(iso: Path | None, path: str, url: str) -> str:
    """The sha256 of `path` in a verified ISO of the tree's release: what vouches for a boot
    file when the .treeinfo lists no checksum for it."""
    if iso is None:
        raise KsbuildError(
            f"{url} lists no checksum for {path} (the 7.9.2009 trees have no [checksums]), so "
            "nothing vouches for it; fetch the release's ISO first (`ksbuild fetch`, checked "
            "against its published sha256): its copy then vouches for the tree's")
    import pycdlib
    from pycdlib.pycdlibexception import PyCdlibException

    from builder.media import isofs

    image = pycdlib.PyCdlib()
    try:
        image.open(str(iso))
        data = isofs.read(image, "/" + path)
        image.close()
    except PyCdlibException as exc:
        raise KsbuildError(f"{iso}: not a readable ISO: {exc}") from None
    if data is None:
        raise KsbuildError(f"{iso} has no {path} to check {url}'s copy against")
    return hashlib.sha256(data).hexdigest()


def verified_release_iso(media: Media, cache_dir: Path | None = None) -> Path | None:
    """An ISO of `media`'s release that is already here and verified: the site's own file,
    or any official ISO of the release in the cache (every flavor carries the same
    images/pxeboot/). None when there is none; nothing is downloaded."""
    if media.path is not None:
        return _local_iso(media)
    cache = cache_dir or default_cache_dir()
    if media.url is not None and media.sha256 is not None:
        cached = cache / media.sha256 / _file_name(media.url, "base.iso")
        return cached if cached.is_file() else None
    for flavor in MEDIA_FLAVORS:
        name = iso_name(media.release or "", flavor)
        known = KNOWN_SHA256.get(name)
        if known and (cache / known / name).is_file():
            return cache / known / name
    return None


def published_sha256(text: str, name: str) -> str | None:
    """The sha256 a `sha256sum` listing (`<hex>  <name>` lines) gives for `name`."""
    for line in text.splitlines():
        match = re.fullmatch(r"([0-9A-Fa-f]{64}) [ *](\S.*)", line.strip())
        if match and match.group(2).strip() == name:
            return match.group(1).lower()
    return None


# ---------------------------------------------------------------------------------------------
# ISO checksums and local files.


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _local_iso(media: Media, sha256_of: Callable[[Path], str] = _file_sha256) -> Path:
    path = media.path
    assert path is not None
    if not path.is_file():
        raise InputError(f"{media.origin}.path: {path} does not exist or is not a file")
    if media.sha256 is not None:
        digest = sha256_of(path)
        if digest != media.sha256:
            raise InputError(f"{media.origin}.path: {path} has sha256 {digest}, "
                             f"not the pinned {media.sha256}")
    return path


def _expected_iso_sha256(fetcher: _Fetcher, url: str, name: str, cache: Path) -> str:
    """The sha256 an official ISO must have: the one ksbuild knows, cross-checked against the
    mirror's sha256sum.txt; for releases ksbuild knows none of, the mirror's alone."""
    known = KNOWN_SHA256.get(name)
    if known and (cache / known / name).is_file():
        return known  # nothing to ask the network
    sums_url = url.rsplit("/", 1)[0] + "/sha256sum.txt"
    data = fetcher.get_small(sums_url, missing_ok=True)
    published = published_sha256(data.decode("utf-8", "replace"), name) if data else None
    if known and published and published != known:
        raise KsbuildError(f"{sums_url} gives sha256 {published} for {name}, but the official "
                           f"one is {known}; not trusting this mirror")
    if known:
        if not published:
            fetcher.progress.note(f"{name}: {sums_url} does not list it; checking against "
                                  f"the official sha256 ksbuild knows")
        return known
    if published:
        _warn_if_plain_http(fetcher.progress, sums_url, name)
        return published
    raise KsbuildError(f"cannot verify {name}: {sums_url} does not list it and ksbuild knows "
                       f"no sha256 for it; pin one in the site file (media: {{..., sha256: ...}})")


def _warn_if_plain_http(progress: Progress, url: str, vouches_for: str) -> None:
    """A checksum list fetched over plain http vouches for nothing: whoever can change the
    files on the way can change the list too."""
    if urlsplit(url).scheme == "http":
        progress.note(f"WARNING: {url} comes over plain http and nothing else vouches for "
                      f"{vouches_for}: anyone on the way could swap both; use an https mirror "
                      "or pin the sha256")


def _printable(text: str) -> str:
    """A server's text made safe for a terminal: control characters escaped."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)[:300]


def _offline_hint(name: str) -> str:
    return (f"to build without the network, give a local ISO in the site file "
            f"(media: {{path: /path/to/{name}}}) or a reachable mirror (--mirror or {MIRROR_ENV})")


def _file_name(url: str, fallback: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    return name if SAFE_NAME.fullmatch(name) else fallback


# ---------------------------------------------------------------------------------------------
# Downloading.


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str, network: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.network = network  # False: the server answered, but with bytes that do not verify


class _BeyondEnd(Exception):
    """The server said our partial file already reaches (or passes) the end (HTTP 416)."""


T = TypeVar("T")


class _Fetcher:
    def __init__(self, options: FetchOptions | None, progress: Progress | None) -> None:
        self.options = options or FetchOptions()
        self.progress: Progress = progress or Silent()
        self.offline_hint = f"check the network or use a reachable mirror (--mirror, {MIRROR_ENV})"
        self.deadline = (self.options.deadline if self.options.deadline is not None
                         else deadline_from_env())
        import requests

        self.watchdog = _Watchdog()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"ksbuild/{__version__}"
        adapter = _watched_adapter(self.watchdog)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __enter__(self) -> _Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    # -- retries ------------------------------------------------------------------------------

    def retrying(self, url: str, name: str, attempt: Callable[[], T],
                 discard: Callable[[], None] = lambda: None, seconds: float | None = None) -> T:
        """Run `attempt` until it succeeds, retrying a bounded number of times with backoff,
        all within `seconds` (default: the deadline of a file). Giving up after a network
        failure keeps the partial file for a later resume; giving up on bytes that do not
        verify calls `discard`."""
        seconds = self.deadline if seconds is None else seconds
        ends = time.monotonic() + seconds
        failures = 0
        while True:
            self.watchdog.arm(ends - time.monotonic())
            try:
                return attempt()
            except _Retry as exc:
                if time.monotonic() >= ends or self.watchdog.fired:
                    raise KsbuildError(f"{url}: not done within {seconds:g} s, the deadline "
                                       f"for one file ({DEADLINE_ENV}); gave up",
                                       hint="a partial download is kept and resumed next time"
                                       ) from None
                failures += 1
                if failures > self.options.retries:
                    if exc.network:
                        raise KsbuildError(f"cannot download {url} ({exc.reason}; tried "
                                           f"{failures} times); {self.offline_hint}") from None
                    discard()
                    raise KsbuildError(f"{url}: {exc.reason} (gave up after {failures} "
                                       f"attempts; the file was not kept)") from None
                delay = min(self.options.backoff * 2 ** (failures - 1), self.options.backoff_max,
                            max(0.0, ends - time.monotonic()))
                self.progress.note(f"{name}: {exc.reason}; retry {failures} of "
                                   f"{self.options.retries} in {delay:.1f} s")
                time.sleep(delay)
            finally:
                self.watchdog.disarm()

    def get(self, url: str, headers: dict[str, str] | None = None) -> requests.Response:
        """The response to GET `url`, following redirects here rather than in requests, so
        that none goes from https to plain http (the .treeinfo that vouches for the kernel
        would then come unprotected while "sha256 verified" is still printed)."""
        import requests

        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self.session.get(
                    url, headers=headers, stream=True, allow_redirects=False,
                    timeout=(self.options.connect_timeout, self.options.read_timeout))
            except requests.RequestException as exc:
                raise _Retry(_reason(exc)) from None
            if not response.is_redirect:
                break
            target = urljoin(url, response.headers["Location"])
            response.close()
            _check_redirect(url, target)
            url = target
        else:
            raise KsbuildError(f"{url}: more than {MAX_REDIRECTS} redirects")
        if response.status_code == 429 or response.status_code >= 500:
            response.close()
            raise _Retry(f"HTTP {response.status_code} {response.reason}")
        return response

    # -- small files --------------------------------------------------------------------------

    def get_small(self, url: str, missing_ok: bool) -> bytes | None:
        """A small file (sha256sum.txt, .treeinfo); None if absent and `missing_ok`."""
        import requests

        name = _file_name(url, url)

        def attempt() -> bytes | None:
            with self.get(url) as response:
                if response.status_code in (404, 410) and missing_ok:
                    return None
                _check_status(response, url)
                body = bytearray()
                try:
                    for chunk in response.iter_content(CHUNK):
                        body += chunk
                        if len(body) > SMALL_LIMIT:
                            raise KsbuildError(f"{url}: larger than {SMALL_LIMIT} bytes; "
                                               f"not a {name}")
                except requests.RequestException as exc:
                    raise _Retry(_reason(exc)) from None
                return bytes(body)

        return self.retrying(url, name, attempt, seconds=min(self.deadline, SMALL_DEADLINE))

    # -- big files ----------------------------------------------------------------------------

    def fetch(self, url: str, sha256: str, name: str, cache: Path, limit: int) -> Path:
        """`<cache>/<sha256>/<name>`, downloaded from `url` unless already there. `limit`:
        the most bytes the file may have when the server gives no length."""
        folder = cache / sha256
        final = folder / name
        if final.is_file():
            self.progress.note(f"{name}: in the cache, {final}")
            return final
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KsbuildError(f"cannot create the cache folder {folder}: {exc.strerror}") from None
        with _locked(folder / ".lock", lambda: self.progress.note(
                f"{name}: another ksbuild is fetching it; waiting")):
            if final.is_file():
                self.progress.note(f"{name}: fetched meanwhile by another ksbuild, {final}")
                return final
            self.progress.note(f"{name}: fetching {url}")
            part = _Partial(folder / f"{name}.part")
            if part.size == 0 or part.digest() != sha256:
                self.retrying(url, name, lambda: self._attempt(url, part, sha256, limit),
                              discard=part.discard)
            part.promote(final)
        self.progress.note(f"{name}: sha256 verified, {final}")
        return final

    def _attempt(self, url: str, part: _Partial, sha256: str, limit: int) -> None:
        """One request for the rest of the file; returns once the whole file verifies."""
        try:
            length_known = self._receive(url, part, limit)
        except _BeyondEnd:
            length_known = True
        digest = part.digest()
        if digest == sha256:
            return
        if not length_known:
            # Without a length a truncated body looks like a complete one: ask for the rest.
            raise _Retry(f"the body ended after {part.size} bytes without a length and does "
                         f"not verify yet", network=False)
        if part.fresh:  # every byte came from this server in this run: the file is wrong
            part.discard()
            raise KsbuildError(f"{url}: sha256 {digest} does not match the expected {sha256}; "
                               f"the file was not kept")
        part.reset()
        raise _Retry("the partial file from an earlier run does not match; starting over",
                     network=False)

    def _receive(self, url: str, part: _Partial, limit: int) -> bool:
        """Append the server's bytes to `part`, never more than the length the server gave
        (else `limit`); True if the body's full length was known."""
        import requests

        offset = part.size
        headers = {"Accept-Encoding": "identity"}  # byte ranges of the file, not of a gzip
        if offset:
            headers["Range"] = f"bytes={offset}-"
            headers.update(part.if_range(url))
        with self.get(url, headers) as response:
            if response.status_code == 416 and offset:
                raise _BeyondEnd()
            _check_status(response, url)
            total = self._start_position(response, part, offset)
            part.remember(url, response.headers)
            self.progress.start(part.final_name, total, part.size)
            most = total if total is not None else limit
            try:
                with part.appending() as append:
                    for chunk in response.iter_content(CHUNK):
                        append(chunk[:most + 1 - part.size])
                        self.progress.advance(part.size)
                        if part.size > most:
                            break
            except requests.RequestException as exc:
                self.progress.finish(ok=False)
                raise _Retry(_reason(exc)) from None
            except OSError as exc:  # a full disk: the partial stays, for a later resume
                self.progress.finish(ok=False)
                raise KsbuildError(f"cannot write {part.path}: {exc.strerror}") from None
            except BaseException:  # Ctrl-C: end the bar's line before the CLI speaks
                self.progress.finish(ok=False)
                raise
            self.progress.finish()
        if part.size > most:
            part.discard()
            said = "the length it gave" if total is not None else "any such file can have"
            raise KsbuildError(f"{url}: the server sent more than {most} bytes, {said}; the "
                               "file was not kept")
        if total is not None and part.size != total:
            raise _Retry(f"the body ended at {part.size} of {total} bytes")
        return total is not None

    def _start_position(self, response: requests.Response, part: _Partial,
                        offset: int) -> int | None:
        """Where the body starts: continue the partial on a matching 206, else start over.
        Returns the full length of the file, if the server said."""
        if response.status_code == 206:
            match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)",
                                 response.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                part.reset()
                raise _Retry(f"the server answered another range than bytes={offset}-; "
                             f"starting over")
            return int(match.group(3)) if match.group(3) != "*" else None
        if offset:
            self.progress.note(f"{part.final_name}: the server sent the whole file instead of "
                               f"the rest from byte {offset}; starting over")
            part.reset()
        length = response.headers.get("Content-Length", "")
        return int(length) if length.isdigit() else None


def _check_redirect(source: str, target: str) -> None:
    scheme = urlsplit(target).scheme
    if scheme not in ("http", "https"):
        raise KsbuildError(f"{source}: redirected to {_printable(target)}, not an http(s) URL")
    if urlsplit(source).scheme == "https" and scheme == "http":
        raise KsbuildError(f"{source}: redirected from https to plain http "
                           f"({_printable(target)}); refusing to fetch it unprotected",
                           hint="give the mirror's plain http URL yourself (--mirror) if you "
                                "really mean to use it without TLS")


class _Watchdog:
    """Shuts down the sockets of a fetch when its deadline passes. A blocked read wakes only
    when its socket is shut down, and a server that drips a byte every few seconds (or
    streams an endless body) never trips the read timeout."""

    def __init__(self) -> None:
        self.sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None
        self.fired = False

    def track(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.add(sock)
            if self.fired:
                _shut(sock)

    def arm(self, seconds: float) -> None:
        self.disarm()
        self.fired = False
        self.timer = threading.Timer(max(0.0, seconds), self.fire)
        self.timer.daemon = True
        self.timer.start()

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def fire(self) -> None:
        with self.lock:
            self.fired = True
            for sock in list(self.sockets):
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    import socket  # loaded by requests already; not by a build from a local ISO

    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _watched_adapter(watchdog: _Watchdog) -> requests.adapters.HTTPAdapter:
    """An adapter whose connections tell `watchdog` their sockets (urllib3 pools take their
    connection class from a class attribute, and the pool manager its pool classes from
    pool_classes_by_scheme)."""
    import requests.adapters
    import urllib3.connection
    import urllib3.connectionpool

    class Connection(urllib3.connection.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            watchdog.track(self.sock)

    class TLSConnection(urllib3.connection.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            watchdog.track(self.sock)

    class Pool(urllib3.connectionpool.HTTPConnectionPool):
        ConnectionCls = Connection

    class TLSPool(urllib3.connectionpool.HTTPSConnectionPool):
        ConnectionCls = TLSConnection

    adapter = requests.adapters.HTTPAdapter()
    adapter.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TLSPool}
    return adapter


def _check_status(response: requests.Response, url: str) -> None:
    if response.status_code not in (200, 206):
        raise KsbuildError(f"{url}: HTTP {response.status_code} {response.reason}",
                           hint="check the mirror URL (--mirror, KSBUILD_MIRROR, media.mirror) "
                                "and the release; or give a local file (media: {path: ...})")


def _reason(exc: BaseException) -> str:
    """A short cause for a failed request, instead of urllib3's nested reprs."""
    import requests

    text = str(exc)
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ReadTimeout) or "Read timed out" in text:
        return "the server went silent (read timeout)"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in text:
        return "the connection broke off in the middle of the body"
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip().rstrip(".").lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def _locked(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """An exclusive lock on `path` (released when the file closes, also if the process dies)."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class _Partial:
    """A download in progress, under its own name, with the sha256 of what it holds so far.

    `fresh` is true while every byte in it came from this run, not from an earlier one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.final_name = path.name.removesuffix(".part")
        self.meta = path.with_name(path.name + ".json")  # validators for If-Range
        self._hash = hashlib.sha256()
        self.size = 0
        if path.exists():
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(CHUNK), b""):
                    self._hash.update(block)
                    self.size += len(block)
        self.fresh = self.size == 0

    def digest(self) -> str:
        return self._hash.hexdigest()

    def reset(self) -> None:
        self.path.write_bytes(b"")
        self.meta.unlink(missing_ok=True)
        self._hash = hashlib.sha256()
        self.size = 0
        self.fresh = True

    @contextlib.contextmanager
    def appending(self) -> Iterator[Callable[[bytes], None]]:
        with self.path.open("ab") as handle:

            def append(chunk: bytes) -> None:
                handle.write(chunk)
                self._hash.update(chunk)
                self.size += len(chunk)

            try:
                yield append
            finally:
                handle.flush()
                os.fsync(handle.fileno())

    def remember(self, url: str, headers: Any) -> None:
        """Keep the server's validators, so a resume can ask "the rest, if unchanged"."""
        meta = {"url": url, "etag": headers.get("ETag"),
                "last_modified": headers.get("Last-Modified")}
        write_bytes(self.meta, json.dumps(meta).encode())

    def if_range(self, url: str) -> dict[str, str]:
        try:
            meta = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(meta, dict) or meta.get("url") != url:
            return {}
        etag = meta.get("etag")
        if isinstance(etag, str) and etag and not etag.startswith("W/"):
            return {"If-Range": etag}  # weak ETags are not allowed in If-Range
        modified = meta.get("last_modified")
        return {"If-Range": modified} if isinstance(modified, str) and modified else {}

    def promote(self, final: Path) -> None:
        os.chmod(self.path, 0o644)
        os.replace(self.path, final)
        self.meta.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # make the rename itself durable
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
