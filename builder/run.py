"""The one way ksbuild runs an external program: an argument list (never a shell string),
a C locale so output parses the same everywhere, and a failure that names the command line.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

from builder.errors import ToolError

Arg = Union[str, Path]


def command_line(argv: Sequence[Arg]) -> str:
    return shlex.join(str(a) for a in argv)


def run(
    argv: Sequence[Arg],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    check: bool = True,
    capture: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv`, capture stdout and stderr (bytes); raise ToolError if it fails.

    With check=False a non-zero exit is returned, not raised (for tools whose exit code is an
    answer, such as checkisomd5); a missing program or a timeout still raises. With
    capture=False the program shares ksbuild's terminal (an interactive QEMU window).
    """
    full_env = dict(os.environ)
    full_env.update({"LANG": "C", "LC_ALL": "C"})
    if env:
        full_env.update(env)
    args = [str(a) for a in argv]
    try:
        done = subprocess.run(args, input=input, capture_output=capture, env=full_env,
                              cwd=cwd, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ToolError(f"{args[0]}: program not found (running: {command_line(args)})") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"timed out after {timeout} s: {command_line(args)}") from None
    if check and done.returncode != 0:
        detail = (done.stderr or b"").decode(errors="replace").strip().splitlines()
        last = f": {detail[-1]}" if detail else ""
        raise ToolError(f"exit {done.returncode}: {command_line(args)}{last}")
    return done
