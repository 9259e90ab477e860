"""Atomic writes: every file and checkpoint directory appears whole or not at all.

A file is written to a temp path in the same directory, flushed, fsynced and renamed into
place; a directory is built under a temp name and renamed, then its parent is fsynced.
Readers treat a directory without its ``DONE`` marker as absent.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pathunlearn.errors import UserError

DONE = "DONE"


class atomic_write:  # noqa: N801 - used like open()
    """``with atomic_write(path) as f:`` writes a temp file, fsyncs and renames it into place.

    On an exception the temp file is removed and an existing file at ``path`` is untouched.
    """

    def __init__(self, path: str | Path, mode: str = "w"):
        self.path, self.mode = Path(path), mode

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                        suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        kwargs = {} if "b" in self.mode else {"encoding": "utf-8"}
        self.f = os.fdopen(fd, self.mode, **kwargs)
        return self.f

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.f.flush()
                os.fsync(self.f.fileno())
            self.f.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """``with atomic_dir(out) as tmp:`` fill ``tmp``; on success it becomes ``out`` with a
    ``DONE`` marker. An existing ``out`` is replaced only after the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        mask = _umask()
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700 directories
        for f in tmp.rglob("*"):
            if f.is_dir():
                os.chmod(f, 0o777 & ~mask)
            elif f.is_file():
                os.chmod(f, 0o666 & ~mask)
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
        write_text(tmp / DONE, "ok\n")
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_done(path: str | Path) -> bool:
    """A checkpoint or result directory exists only once its DONE marker does."""
    return (Path(path) / DONE).is_file()


def check_writable(directory: str | Path) -> None:
    """A UserError unless ``directory`` is (or can be made as) a directory this process can
    write: its nearest existing ancestor must be a directory that takes a file (tried with a
    temporary file, removed at once; nothing is created otherwise)."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "the output directory" if probe == directory else f"its parent {probe}"
        raise UserError(f"{directory}: {what} is a file, not a directory")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=".pathunlearn-write-check-")
    except OSError as e:
        reason = "read-only file system" if e.errno == errno.EROFS else (e.strerror or str(e))
        raise UserError(f"{directory}: cannot write in {probe} ({reason})") from None
    os.close(fd)
    os.unlink(name)


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex), read in 4 MiB blocks: data files in keys, a
    prefix's checkpoint files, the files a report key vouches for."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()
