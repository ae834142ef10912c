"""Root passwords: only SHA-512 crypt hashes ever leave ksbuild."""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import Any

CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _sha512_crypt() -> Any:
    """passlib's sha512_crypt, imported when a password is hashed: most sites give the hash
    itself, and passlib costs ~5 ms of every `ksbuild iso` that renders a kickstart."""
    from passlib.hash import sha512_crypt

    return sha512_crypt


def _salt_for(password: str, seed: str) -> str:
    """A salt that is the same on every build (outputs must be reproducible) yet unique per
    password and site (`seed`: the site's salt_seed or first host name; with one fixed salt,
    equal passwords gave equal hashes in every site in the world), and as slow to derive as
    the hash is to compute, so it gives no shortcut for guessing the password."""
    digest = hashlib.scrypt(password.encode(),
                            salt=b"ksbuild root password salt\0" + seed.encode(),
                            n=2**14, r=8, p=1, dklen=12)
    text = base64.b64encode(digest, altchars=b"./").decode()
    return "".join(c if c in CRYPT_ALPHABET else "." for c in text)[:16]


@functools.lru_cache(maxsize=64)
def sha512_crypt(password: str, seed: str) -> str:
    """The `$6$` hash of `password` with the salt of `seed`; cached, since a fleet usually
    shares one password."""
    return str(_sha512_crypt().using(salt=_salt_for(password, seed), rounds=5000).hash(password))


def sha512_crypt_random(password: str) -> str:
    """The `$6$` hash of `password` with a random salt (`ksbuild hash-password`: the result
    goes into a site file, which keeps builds reproducible)."""
    return str(_sha512_crypt().using(rounds=5000).hash(password))
