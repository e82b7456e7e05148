"""File access for the teacher store, through pyarrow.fs alone: local paths and URIs alike.

One class, `Storage`, serves a plain local path (also a shared filesystem mounted locally) through
`pyarrow.fs.LocalFileSystem`, and any URI pyarrow understands (file://, s3://, gs://, hdfs://,
abfs://, ...) through `pyarrow.fs.FileSystem.from_uri`, the same layer Ray's own storage uses. So
the local path and the cluster path are one code path, tested by every local test.

Atomic writes: a file is written under a temporary name in the same directory
(`<name>.tmp-<pid>-<random>`) and then moved onto its final name. Locally (and on HDFS) the move is
a rename, atomic on POSIX; on object stores the object appears whole or not at all. The store
writes the manifest last, so the manifest is the commit point: it never names a file that is not
there in full. Leftover temporaries of a writer that died mid-write are never read (no reader looks
at `.tmp-` names) and are removed by the next builder under the key's lock (`remove_temps`).

No fsync: pyarrow's streams do not offer one. This costs durability, not correctness: after a power
loss a file whose contents did not reach the disk fails its SHA-256 check against the manifest (or
the manifest itself is unreadable), and the store then treats that checkpoint (or the whole teacher)
as missing and rebuilds it. A wrong teacher is never loaded.

Locks (`Storage.lock(name)`, the default; callers that span machines inject their own)
-------------------------------------------------------------------------------------
* Local and shared-filesystem roots (plain paths, file:// URIs): `filelock.FileLock` on
  `<root>/<name>.lock`. It works across processes on one machine, and across nodes when the root is
  on a POSIX shared filesystem with working `flock` (NFSv4, Lustre, GPFS, CephFS; not every NFS
  mount honours it). The OS releases it when its holder dies.
* Object stores (s3://, gs://, ...) have no locks: a lock within this process only. Processes that
  may write the same name at the same time must share a lock from outside (on a Ray cluster,
  `trainables/locks.py`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from typing import Iterator

import pyarrow.fs as pafs

from explorer.errors import bad_value

__all__ = ["Storage", "TEMP_MARK", "is_local"]

log = logging.getLogger("kdx.storage")

TEMP_MARK = ".tmp-"
_LOCAL_SCHEMES = ("file", "local")  # the URI schemes pyarrow serves with LocalFileSystem
_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


class TeacherStoreWarning(UserWarning):
    """A broken file in the teacher store (it is rebuilt, never used), or a store without a
    cross-process lock."""


def is_local(root: str) -> bool:
    """True when `root` is on a filesystem this machine mounts (a plain path, file:// or local://):
    where a lock file next to the data works. False for object stores and other remote URIs."""
    root = os.fspath(root)
    return "://" not in root or root.split("://", 1)[0].lower() in _LOCAL_SCHEMES


class Storage:
    """Files under one root: a local path (made absolute, `~` expanded) or a pyarrow URI.

    `root` is what users see (the absolute path, or the URI without a trailing slash); `base` is the
    root as the filesystem `fs` names it; `local` says whether it is on a locally mounted
    filesystem. Paths passed to the methods are filesystem paths built with `join`."""

    def __init__(self, root: str):
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise bad_value("store", root, "allowed: a local path or a URI such as s3://bucket/teachers")
        root = os.fspath(root)
        self.local = is_local(root)
        if "://" in root:
            try:
                self.fs, base = pafs.FileSystem.from_uri(root)
            except Exception as e:  # pyarrow raises ArrowInvalid / OSError
                raise bad_value("store", root, f"allowed: a local path or a URI pyarrow.fs understands ({e})") from None
            self.root = root.rstrip("/")
            self.base = base.rstrip("/") or "/"
        else:
            self.fs = pafs.LocalFileSystem()
            self.root = self.base = os.path.abspath(os.path.expanduser(root))

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def join(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def display(self, path: str) -> str:
        """`path` as the user wrote the root: a local path, or a URI."""
        rel = path[len(self.base):].lstrip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def makedirs(self, path: str) -> None:
        self.fs.create_dir(path, recursive=True)

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def read(self, path: str) -> bytes:
        """The whole file; FileNotFoundError when it is not there (whatever the filesystem's own error)."""
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            if not self.exists(path):
                raise FileNotFoundError(path) from e
            raise

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write under a temporary name in the same directory, then move onto `path` (see the module
        docstring): readers see the old file or the whole new one, never a partial one."""
        tmp = f"{path}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)  # a rename locally/HDFS; copy-then-delete on object stores
        finally:
            with contextlib.suppress(Exception):
                if self.exists(tmp):
                    self.fs.delete_file(tmp)

    def remove_temps(self, path: str) -> None:
        """Delete leftovers of writers that died mid-write in directory `path` (call it only while
        holding the lock that excludes every other writer of that directory)."""
        for info in self._entries(path):
            if TEMP_MARK in info.base_name and info.type == pafs.FileType.File:
                with contextlib.suppress(Exception):
                    self.fs.delete_file(info.path)

    def list_dirs(self, path: str) -> list[str]:
        """Names of the directories directly under `path`, sorted ([] when `path` does not exist)."""
        return sorted(i.base_name for i in self._entries(path) if i.type == pafs.FileType.Directory)

    def _entries(self, path: str) -> list:
        return self.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the lock `name` under this root: a file lock where the filesystem is mounted here, a
        lock within this process on object stores (see the module docstring)."""
        if not self.local:
            with _PROCESS_LOCKS_GUARD:
                lk = _PROCESS_LOCKS.setdefault(f"{self.root}/{name}", threading.Lock())
            with lk:
                yield
            return
        import filelock

        lk = filelock.FileLock(os.path.join(self.base, f"{name}.lock"))
        try:
            lk.acquire(timeout=0.5)
        except filelock.Timeout:
            log.info("%s/%s is locked by another process; waiting for it", self.root, name)
            lk.acquire()
        try:
            yield
        finally:
            lk.release()
