"""Running a program inside a root folder, cut off from this machine.

Three ways, chosen at runtime by what the machine allows:

- "chroot+ns" (root): chroot inside new mount, network, UTS, IPC and PID namespaces. The
  script sees no network interface but lo (down), cannot rename this machine, and a stray
  `reboot` or kill of PID 1 hits only the namespace.
- "userns" (not root): the same inside a user namespace where we are root (unshare
  --map-root-user), so chroot works without privileges.
- "chroot" (root, where namespaces are refused, e.g. some containers): a bare chroot. The
  root holds no network configuration or tools, so nothing can reach a network from it.

The real /dev/null is bind-mounted over <root>/dev/null in the namespaced ways; the bare
chroot gets a device node.
"""

from __future__ import annotations

import os
import shutil
import stat
from functools import cache
from pathlib import Path

from builder.run import run

MODES = ("chroot+ns", "userns", "chroot")
NAMESPACES = ["--mount", "--net", "--uts", "--ipc", "--pid", "--fork", "--kill-child"]
# Inside the namespaces, before the chroot: /dev/null, the log as stdout and stderr (as
# anaconda's execWithRedirect does), stdin empty, then the program from / in the root.
LAUNCH = ('root=$1 log=$2; shift 2; '
          'if [ "$MOUNT_DEV_NULL" = 1 ]; then mount --bind /dev/null "$root/dev/null"; fi; '
          'cd "$root" && exec chroot "$root" "$@" <"$root/dev/null" >"$root$log" 2>&1')
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C", "TERM": "dumb"}


def _busybox() -> str:
    found = shutil.which("busybox")
    if found is None:
        raise FileNotFoundError("busybox is not installed (busybox-static, see "
                                "tests/debian-packages.txt)")
    return found


def _works(argv: list[str]) -> bool:
    return run(argv, check=False, timeout=30).returncode == 0


@cache
def default_mode() -> str:
    """The strongest isolation this machine allows us."""
    if os.geteuid() != 0:
        if _works(["unshare", "--map-root-user", *NAMESPACES, "true"]):
            return "userns"
        raise RuntimeError("the %post sandbox needs root, or unprivileged user namespaces "
                           "(`unshare --map-root-user true` failed; on Ubuntu 24.04 see "
                           "sysctl kernel.apparmor_restrict_unprivileged_userns)")
    if _works(["unshare", *NAMESPACES, "true"]):
        return "chroot+ns"
    return "chroot"


def command(mode: str, root: Path, log: str, argv: list[str]) -> list[str]:
    """The command line that runs `argv` in `root`, output to `log` (a path in the root)."""
    if mode not in MODES:
        raise ValueError(f"unknown sandbox mode {mode!r}; one of {MODES}")
    env = [f"{key}={value}" for key, value in ENV.items()]
    env.append(f"MOUNT_DEV_NULL={0 if mode == 'chroot' else 1}")
    wrap = {"chroot+ns": ["unshare", *NAMESPACES],
            "userns": ["unshare", "--map-root-user", *NAMESPACES],
            "chroot": []}[mode]
    busybox = _busybox()
    return ["env", "-i", *env, *wrap, busybox, "sh", "-c", LAUNCH, "launch", str(root), log,
            *argv]


def prepare(mode: str, root: Path) -> None:
    """What a mode needs in the root before the first run."""
    null = root / "dev/null"
    if mode == "chroot" and not stat.S_ISCHR(null.lstat().st_mode):
        null.unlink()
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(null, 0o666)


def run_in(mode: str, root: Path, log: str, argv: list[str], timeout: float) -> int:
    """Run `argv` inside `root`; its exit status (output is in the log)."""
    return run(command(mode, root, log, argv), check=False, timeout=timeout).returncode
