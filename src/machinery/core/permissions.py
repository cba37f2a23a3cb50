"""Whether a file is safe to run from: the ownership and permission rules of the machine store.

A file is safe when it is owned by the agent's user or root and not writable by group or others
(anyone who can change it can run commands as the agent). A program named by a relative path
(``./check.sh``, ``bin/run``) must also resolve, links and ``..`` included, inside its machine
directory, and the directories leading to it there must be safe too. The store applies these
rules when a machine loads (:mod:`machinery.agent.store`); the process runner applies the same
function to the rendered program of every command when it runs
(:class:`machinery.core.process.ProcessRunner`), since a templated program is known only then.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["command_problem", "inside", "permission_problem", "stat_problem"]


def permission_problem(path: Path, uid: int) -> str | None:
    """Why ``path`` is unsafe to run from, or None: it must be owned by ``uid`` or root and not
    writable by group or others (anyone who can write a manifest can run commands as us)."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror}"
    return stat_problem(str(path), st, uid)


def stat_problem(path: str, st: os.stat_result, uid: int) -> str | None:
    """:func:`permission_problem` for a file already stat'ed."""
    if st.st_uid not in (uid, 0):
        return f"{path} is owned by uid {st.st_uid}, not by the agent's user ({uid}) or root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def inside(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or below it (both already resolved)."""
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def command_problem(directory: Path, program: str, uid: int) -> tuple[Path, str] | None:
    """Whether ``program`` (a command's first word), if a relative path with a ``/`` (so inside
    ``directory``: see :func:`machinery.core.process.resolve_program`), is unsafe to run: it
    resolves outside ``directory``, or the file or a directory leading to it inside
    ``directory`` fails :func:`permission_problem`. Returns the path at fault and why, or None:
    safe, missing, a bare name or absolute."""
    if "/" not in program or os.path.isabs(program):
        return None
    path = directory / program
    if not os.path.exists(path):
        return None  # the watcher reports "command not found" when it runs
    real_directory = os.path.realpath(directory)
    real_path = os.path.realpath(path)
    if not inside(real_path, real_directory):
        # Said without naming the target: where a link points is not the store's to tell.
        return path, f"{path} resolves outside the machine directory {directory}"
    problem = permission_problem(path, uid)
    if problem is not None:
        return path, problem
    # The directories the file really is in (links resolved), below the machine directory.
    folder = Path(real_directory)
    for part in os.path.relpath(real_path, real_directory).split(os.sep)[:-1]:
        folder = folder / part
        problem = permission_problem(folder, uid)
        if problem is not None:
            return folder, problem
    return None
