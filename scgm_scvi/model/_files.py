"""File-system details of writing outputs: permissions, a full disk, leftovers of killed runs."""

from __future__ import annotations

import errno
import os
import shutil

# below this many free bytes a failed write is reported as a full disk
_NEARLY_FULL = 64 << 20


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def respect_umask(path: str) -> None:
    """Give a file or directory made by ``tempfile`` (mode 600 / 700) the permissions that
    ``open`` / ``mkdir`` would have given it, so colleagues sharing a server can read outputs."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())


def disk_full_error(exc: BaseException, path: str, what: str) -> OSError | None:
    """An ``OSError`` that says the disk is full, when ``exc`` came from a nearly full disk."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        full = True
    else:
        try:
            full = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < _NEARLY_FULL
        except OSError:
            full = False
    if not full:
        return None
    return OSError(
        errno.ENOSPC,
        f"No space left on the device while writing {what} to {path!r}: free some space or "
        "choose another location; nothing was left behind",
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale(parent: str, prefix: str) -> None:
    """Delete ``prefix<pid>-*`` entries in ``parent`` whose process is gone (a killed save)."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid = name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            path = os.path.join(parent, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass
