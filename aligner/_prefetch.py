"""Input files read and hashed on a thread of their own, while the process still imports.

``mesial align`` spends its first 0.1 s importing (NumPy, the pipeline), on one core: the other is
idle. Reading its scans (the copy into memory and the page faults of a fresh buffer, about 5 ms for
a 13 MB arch) and their SHA-256 (about 7 ms) need neither NumPy nor the GIL for long, so
:class:`FilePrefetch` does both on a thread from the moment the command knows its files, and
:func:`~.io.read_mesh` takes the bytes and the digest from it instead of doing that work itself.

Only the standard library here (the point is to start before NumPy is imported). A file is handed
over only when it is still the file that was read: the same device, inode, size and modification
time before the read, after it, and when :func:`~.io.read_mesh` asks (the size it checks against
its limit). Anything else (a file above ``max_bytes``, not a regular file, an error, a change) is
left to :func:`~.io.read_mesh`, which reads it and reports as before.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

Identity = tuple[int, int, int, int]


def identity(status: os.stat_result) -> Identity:
    """What tells that a file is still the one that was read: device, inode, size, modification time (ns)."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class FilePrefetch:
    """Read and hash ``paths`` on a daemon thread, in order; :meth:`take` hands each one over once.

    Parameters
    ----------
    paths : sequence of str or Path
    max_bytes : int
        Larger files are not read here (nor more than this from a file that grows).
    """

    def __init__(self, paths: Sequence[str | Path], max_bytes: int) -> None:
        self._keys = list(dict.fromkeys(str(path) for path in paths))  # (a file named twice is read once)
        self._max_bytes = max_bytes
        self._done = {key: threading.Event() for key in self._keys}
        self._read: dict[str, tuple[Identity, bytes, str] | None] = {}
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for key in self._keys:
            try:
                self._read[key] = self._one(key)
            except (OSError, MemoryError, ValueError):  # (read_mesh reads it again and says what is wrong)
                self._read[key] = None
            finally:
                self._done[key].set()

    def _one(self, key: str) -> tuple[Identity, bytes, str] | None:
        with open(key, "rb") as handle:
            before = os.fstat(handle.fileno())
            if not stat.S_ISREG(before.st_mode) or before.st_size > self._max_bytes:
                return None
            data = handle.read(before.st_size + 1)  # (one byte more: a file that grew is not handed over)
            after = os.fstat(handle.fileno())
        if identity(after) != identity(before) or len(data) != before.st_size:
            return None  # written to meanwhile
        return identity(before), data, hashlib.sha256(data).hexdigest()

    def ready(self) -> None:
        """Wait until every file has been read (or given up)."""
        for done in self._done.values():
            done.wait()

    def take(self, path: str | Path, status: os.stat_result) -> tuple[bytes, str] | None:
        """The bytes and hex SHA-256 of ``path`` if it was read and ``status`` (its ``stat`` now) is the
        file that was read; else None. Waits for the file's turn; hands a file over once (memory freed)."""
        key = str(path)
        if key not in self._done:
            return None
        self._done[key].wait()
        read = self._read.pop(key, None)
        if read is None or read[0] != identity(status):
            return None
        return read[1], read[2]
