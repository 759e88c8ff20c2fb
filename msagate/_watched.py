# -*- test-case-name: tests.test_watched -*-
"""
A file whose parsed contents follow the file as operators edit it.

Both the htpasswd checker and the sender map read small text files that
administrators change while msagate runs.  Tools such as C{htpasswd}
rewrite a file in place rather than renaming a new one over it, so a reader
can catch a half-written file: its contents are parsed into a new value and
swapped in whole, and a file that does not parse leaves the previous value
in force.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.logger import Logger

T = TypeVar("T")


class FileFormatError(ValueError):
    """
    A watched file does not parse.

    @ivar line: the 1-based number of the offending line.
    @ivar problem: what is wrong with it; never the line's text, which may
        hold a password hash.
    """

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


class WatchedFile(Generic[T]):
    """
    The parsed contents of a file, reloaded when the file changes.

    A change is a new inode, size or modification time.  Calls may come
    from several threads; one of them reloads while the others keep the
    value in force.

    @ivar path: the file's path.
    """

    log = Logger()

    def __init__(self, path: str, parse: Callable[[bytes], T]) -> None:
        """
        @param path: the file to read.
        @param parse: turns the file's contents into the value; it raises
            L{FileFormatError} for contents it cannot use.
        """
        self.path = path
        self._parse = parse
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._value: T | None = None

    def load(self) -> T:
        """
        Read the file now.

        @return: the parsed contents.
        @raise OSError: when the file cannot be read.
        @raise FileFormatError: when it does not parse.
        """
        with self._lock:
            signature, value = self._read()
            self._signature, self._value = signature, value
            return value

    def current(self) -> T:
        """
        Return the contents in force, reloading the file if it changed.

        While one thread reloads, the others get the previous contents at
        once instead of waiting for the new ones.

        @raise OSError: when the file has never been read and cannot be.
        @raise FileFormatError: when it has never been read and does not
            parse.
        """
        value = self._value
        if not self._lock.acquire(blocking=value is None):
            # Only a non-blocking acquire fails: a value is in force.
            assert value is not None
            return value

        try:
            if self._value is None:
                self._signature, self._value = self._read()
            elif self._currentSignature() != self._signature:
                self._reload()
            return self._value
        finally:
            self._lock.release()

    def _currentSignature(self) -> tuple[int, int, int] | None:
        try:
            return _signatureOf(os.stat(self.path))
        except OSError:
            return None

    def _reload(self) -> None:
        # The signature recorded is that of the bytes read, so that a write
        # finishing after the read still counts as a change; a file that
        # cannot be read is not tried again until it changes.
        try:
            self._signature, data = self._readBytes()
        except OSError as error:
            self._signature = self._currentSignature()
            self.log.warn(
                "{path}: cannot be read ({error}); the previous contents "
                "stay in force",
                path=self.path,
                error=error.strerror,
            )
            return

        try:
            self._value = self._parse(data)
        except FileFormatError as error:
            self.log.warn(
                "{path}: {problem} on line {line}; the previous contents "
                "stay in force",
                path=self.path,
                line=error.line,
                problem=error.problem,
            )
        else:
            self.log.info("{path}: reloaded", path=self.path)

    def _read(self) -> tuple[tuple[int, int, int], T]:
        signature, data = self._readBytes()
        return signature, self._parse(data)

    def _readBytes(self) -> tuple[tuple[int, int, int], bytes]:
        with open(self.path, "rb") as file:
            signature = _signatureOf(os.fstat(file.fileno()))
            return signature, file.read()


def _signatureOf(status: os.stat_result) -> tuple[int, int, int]:
    return (status.st_ino, status.st_size, status.st_mtime_ns)
