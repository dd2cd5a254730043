"""
Owner-only modes for every file and folder the daemon and the CLI make under their home.

Owns the process umask (0o077 added to the user's, so a ``umask 000`` or ``002`` shell cannot
leave the runner sockets, logs, KV caches, settings or the store open to other users; children
such as llama-server inherit it) and the start-time walk that takes group and other bits off what
an older version left behind.  The modes the store sets explicitly on files it renames into place
come from here too.  Knows nothing of the config: callers name the folders.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

PRIVATE_UMASK = 0o077
FILE_MODE = 0o600  # what a file written whole and renamed into place gets (blobs, manifests)
DIR_MODE = 0o700
_OPEN_BITS = 0o077  # group and other


def private_umask() -> int:
    """Add 0o077 to the process umask (kept by threads and children); the umask before."""
    old = os.umask(PRIVATE_UMASK)
    os.umask(old | PRIVATE_UMASK)
    return old


def tighten(roots: Iterable[Path]) -> tuple[int, list[str]]:
    """Take group and other bits off each root and all below it, never following a symlink.

    Blocking (a walk): call it in a thread.  A root that is missing is skipped; one that is
    ``/`` or the user's own home directory is refused, since the walk would reach far beyond
    what is ours.  Returns how many entries changed and the errors met (the walk goes on).
    """
    changed, errors = 0, []
    refused = {Path("/"), Path.home().resolve()}
    for root in _outermost(roots):
        if root in refused:
            errors.append(f"{root}: not tightened (it is / or the home directory)")
            continue
        try:
            changed += _tighten_tree(root, errors)
        except FileNotFoundError:
            continue
        except OSError as e:
            errors.append(f"{root}: {e.strerror or e}")
    return changed, errors


def _outermost(roots: Iterable[Path]) -> list[Path]:
    """The resolved roots, without any that lie inside another (walked once)."""
    resolved = sorted({Path(os.path.realpath(r)) for r in roots}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for r in resolved:
        if not any(r.is_relative_to(k) for k in kept):
            kept.append(r)
    return kept


def _tighten_tree(root: Path, errors: list[str]) -> int:
    changed = int(_tighten_entry(os.fspath(root), None, errors))
    # fwalk holds each folder open and names entries relative to it, and (follow_symlinks=False)
    # never enters a symlinked folder: a rename racing the walk cannot send it elsewhere.
    for top, dirs, files, top_fd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirs, *files):
            changed += _tighten_entry(name, top_fd, errors, where=top)
    return changed


def _tighten_entry(name: str, dir_fd: int | None, errors: list[str], where: str = "") -> bool:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode) or not st.st_mode & _OPEN_BITS:
            return False
        mode = stat.S_IMODE(st.st_mode) & ~_OPEN_BITS
        try:
            os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)
        except (NotImplementedError, ValueError):
            # No fchmodat(AT_SYMLINK_NOFOLLOW) here (or it became a symlink meanwhile): chmod
            # through the name only if it is still not a symlink.
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                return False
            os.chmod(name, mode, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as e:
        errors.append(f"{os.path.join(where, name)}: {e.strerror or e}")
        return False
    return True
