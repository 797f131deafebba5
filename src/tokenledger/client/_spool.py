"""Local files: the spool of unacknowledged events and the dead-letter file of refused ones."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class FileLock:
    """Exclusive across threads (a mutex) and processes (flock on a file never replaced)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._mutex:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock


def _fsync_dir(directory: Path) -> None:
    # A new or renamed file is durable only once its directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_durably(path: Path, lines: Sequence[str]) -> None:
    """Append whole lines and fsync; the caller holds the lock."""
    data = "".join(line + "\n" for line in lines).encode()
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A crash mid-append left a torn last line: end it, so ours stays whole.
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


class Spool:
    """Events not yet acknowledged by the server, one JSON line each."""

    def __init__(self, path: Path, lock: FileLock) -> None:
        self.path = path
        self.lock = lock

    def append(self, lines: Sequence[str]) -> None:
        with self.lock.held():
            _append_durably(self.path, lines)

    def read(self) -> list[str]:
        with self.lock.held():
            return self._lines()

    def remove(self, lines: Iterable[str]) -> None:
        """Compact: rewrite the spool without these lines (temp file, fsync, rename)."""
        drop = Counter(lines)
        with self.lock.held():
            keep: list[str] = []
            for line in self._lines():
                # Other processes may have appended meanwhile: drop only what was settled.
                if drop[line] > 0:
                    drop[line] -= 1
                else:
                    keep.append(line)
            fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write("".join(line + "\n" for line in keep).encode())
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, self.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            _fsync_dir(self.path.parent)

    def _lines(self) -> list[str]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        # Lines are ASCII JSON (non-ASCII is escaped), so only b"\n" separates them.
        return [line.decode("utf-8", "replace") for line in data.split(b"\n") if line.strip()]


class DeadLetters:
    """Events the server refused for good, each with the server's error, as JSON lines."""

    def __init__(self, path: Path, lock: FileLock) -> None:
        self.path = path
        self.lock = lock

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        lines = [json.dumps(record, separators=(",", ":")) for record in records]
        with self.lock.held():
            _append_durably(self.path, lines)
