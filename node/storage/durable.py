"""Writing files so that a crash never leaves a half-written one: the helpers every durable
file of a node goes through (the update log's compaction, snapshots and their pointer, the
genesis copy, the generation counter).

The recipe is always "temp file + fsync + rename + fsync(dir)": readers see the old file or
the new one. A write that does not fit (ENOSPC/EDQUOT, also when a library reports it in
words) removes its temp file and raises DiskFull naming the folder.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import DiskFull

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (which makes a rename or a new entry in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a write may take fewer than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def is_no_space(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, also when a library reports it in words (safetensors: "os error 28")."""
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE_ERRNOS
    text = str(exc)
    return any(f"os error {n})" in text for n in NO_SPACE_ERRNOS) or "No space left on device" in text


def removing_tmp(tmp: Path, what: str, write) -> None:
    """Run write(); on failure remove the temp file, and name a full disk as such."""
    try:
        write()
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_no_space(exc):
            raise DiskFull(f"no space left on the device of {tmp.parent} to write {what}; free some "
                           "space and try again") from None
        raise


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace path's contents with data, atomically and durably."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")

    def write():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    removing_tmp(tmp, path.name, write)
    fsync_path(path.parent)
