"""
Tests for L{msagate._watched}: a file whose parsed value follows its edits.
"""

from __future__ import annotations

import os
import queue
import threading

import pytest
from twisted.logger import formatEvent

from msagate._watched import FileFormatError, WatchedFile


class CountingParser:
    """
    A parser that decodes the file and counts its calls.

    A file whose text contains C{BAD} does not parse; the error names
    line 3.
    """

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes) -> str:
        self.calls += 1
        text = data.decode()
        if "BAD" in text:
            raise FileFormatError(3, "no separator")
        return text


@pytest.fixture
def path(tmp_path):
    """
    A file holding C{one}.
    """
    target = tmp_path / "watched"
    target.write_bytes(b"one")
    return target


def test_loadReturnsParsedValue(path):
    """
    load() reads and parses the file at once.
    """
    watched = WatchedFile(str(path), CountingParser())

    assert watched.load() == "one"


def test_unchangedFileIsNotParsedAgain(path):
    """
    current() does not parse again a file whose inode, size and mtime are
    unchanged.
    """
    parser = CountingParser()
    watched = WatchedFile(str(path), parser)
    watched.load()

    assert [watched.current() for _ in range(3)] == ["one"] * 3
    assert parser.calls == 1


def test_currentLoadsOnFirstUse(path):
    """
    current() on a file never loaded reads it.
    """
    watched = WatchedFile(str(path), CountingParser())

    assert watched.current() == "one"


def test_reloadOnInPlaceRewrite(path):
    """
    Rewriting the file in place, as htpasswd does, is picked up.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()

    path.write_bytes(b"three")

    assert watched.current() == "three"


def test_reloadOnAtomicReplaceWithSameSizeAndTime(path, tmp_path):
    """
    A new file renamed over the old one is picked up by its inode alone,
    even with the same size and modification time.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()
    status = os.stat(path)

    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"two")
    os.utime(replacement, ns=(status.st_atime_ns, status.st_mtime_ns))
    os.replace(replacement, path)

    assert watched.current() == "two"


def test_reloadOnSizeChangeWithMtimePutBack(path):
    """
    A rewrite whose modification time was put back (cp -p, rsync -t) is
    picked up when the size changed.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()
    status = os.stat(path)

    path.write_bytes(b"longer")
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))

    assert watched.current() == "longer"


def test_reloadOnMtimeChangeAlone(path):
    """
    A rewrite of the same size is picked up by its modification time.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()
    status = os.stat(path)

    path.write_bytes(b"two")
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 1000))

    assert watched.current() == "two"


def test_badNewFileKeepsOldValue(path, logged):
    """
    A new version that does not parse leaves the old value in force and is
    logged with its line number but not its text.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()

    path.write_bytes(b"BAD secret-hash")

    assert watched.current() == "one"
    texts = [formatEvent(event) for event in logged]
    assert any("line 3" in text and "no separator" in text for text in texts)
    assert not any("secret-hash" in text for text in texts)


def test_badNewFileIsNotParsedAgainUntilItChanges(path):
    """
    A version that did not parse is not parsed again on every call, but
    its next change is picked up.
    """
    parser = CountingParser()
    watched = WatchedFile(str(path), parser)
    watched.load()
    path.write_bytes(b"BAD")

    watched.current()
    watched.current()
    assert parser.calls == 2

    path.write_bytes(b"fixed")
    assert watched.current() == "fixed"


def test_deletedFileKeepsOldValueAndWarnsOnce(path, logged):
    """
    A deleted file leaves the old value in force and is logged once, not
    on every call.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()

    path.unlink()

    assert [watched.current() for _ in range(3)] == ["one"] * 3
    warnings = [e for e in logged if "cannot be read" in formatEvent(e)]
    assert len(warnings) == 1


def test_fileThatComesBackIsReloaded(path):
    """
    A deleted file that is created again is read again.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()
    path.unlink()
    watched.current()

    path.write_bytes(b"again")

    assert watched.current() == "again"


def test_loadRaisesOSErrorForMissingFile(tmp_path):
    """
    load() of a missing file raises OSError, for start-up to report.
    """
    watched = WatchedFile(str(tmp_path / "missing"), CountingParser())

    with pytest.raises(OSError):
        watched.load()


def test_loadRaisesFileFormatError(path):
    """
    load() of a file that does not parse raises FileFormatError with the
    line number.
    """
    path.write_bytes(b"BAD")
    watched = WatchedFile(str(path), CountingParser())

    with pytest.raises(FileFormatError) as raised:
        watched.load()
    assert raised.value.line == 3


def test_currentRaisesWhenNeverLoaded(tmp_path):
    """
    current() with no value yet and no readable file raises OSError.
    """
    watched = WatchedFile(str(tmp_path / "missing"), CountingParser())

    with pytest.raises(OSError):
        watched.current()


def test_writeFinishingAfterReadIsPickedUp(path):
    """
    When the file changes again after its bytes were read, the next call
    reads it once more rather than keeping the stale value.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()

    def finishWriting(data: bytes) -> str:
        path.write_bytes(b"complete")
        return data.decode()

    watched._parse = finishWriting
    path.write_bytes(b"partial")
    assert watched.current() == "partial"

    watched._parse = CountingParser()
    assert watched.current() == "complete"


def test_writeFinishingAfterFailedParseIsPickedUp(path):
    """
    When a half-written file fails to parse and the writer then finishes,
    the finished file is read.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()

    def finishWriting(data: bytes) -> str:
        path.write_bytes(b"complete")
        raise FileFormatError(1, "cut short")

    watched._parse = finishWriting
    path.write_bytes(b"half")
    assert watched.current() == "one"

    watched._parse = CountingParser()
    assert watched.current() == "complete"


def test_otherThreadsKeepOldValueDuringReload(path):
    """
    While one thread is parsing a new version, another thread gets the old
    value at once instead of waiting.
    """
    watched = WatchedFile(str(path), CountingParser())
    watched.load()
    entered, release = threading.Event(), threading.Event()

    def slowParse(data: bytes) -> str:
        entered.set()
        release.wait(timeout=10)
        return data.decode()

    watched._parse = slowParse
    path.write_bytes(b"two")
    reloader = threading.Thread(target=watched.current)
    reloader.start()
    assert entered.wait(timeout=10)

    results: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: results.put(watched.current())).start()
    try:
        assert results.get(timeout=10) == "one"
    finally:
        release.set()
        reloader.join(timeout=10)
    assert watched.current() == "two"


def test_concurrentCallsReloadOnce(path):
    """
    Many threads calling current() after one change parse the new version
    once, and each gets either the old or the new value.
    """
    parser = CountingParser()
    watched = WatchedFile(str(path), parser)
    watched.load()
    path.write_bytes(b"two")
    start = threading.Barrier(8)
    results: queue.Queue[str] = queue.Queue()

    def call() -> None:
        start.wait(timeout=10)
        results.put(watched.current())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    values = [results.get(timeout=10) for _ in threads]
    assert set(values) <= {"one", "two"}
    assert parser.calls == 2
    assert watched.current() == "two"
