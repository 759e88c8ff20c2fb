"""
Tests for L{msagate.queue}: delivery state, the queue store over a real
spool directory, and the spool lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.python.threadpool import ThreadPool

import msagate.queue
from msagate.envelope import Envelope
from msagate.queue import (
    HEADER_CHUNK,
    DeliveryState,
    QueueEntry,
    QueueStore,
    RecipientState,
    SpoolBusy,
    isQueueID,
)
from msagate.spool import Spool
from msagate.testing import ThreadResults

FIRST = "0000000000001AAAAA"
SECOND = "0000000000002BBBBB"
THIRD = "0000000000003CCCCC"
ENVELOPE = Envelope(
    sender="alice@example.org",
    recipients=("bob@example.net", "carol@example.com", "dave@example.org"),
    user="alice",
    received=1700000000.5,
    client="[192.0.2.7]:50000",
    size=42,
)
MESSAGE = b"Subject: hi\r\nFrom: alice@example.org\r\n\r\nbody\r\n"
STATE = DeliveryState(
    recipients={
        "bob@example.net": RecipientState(
            "delivered", "250 2.0.0 ok", "2.0.0", "mx.example.net"
        ),
        "carol@example.com": RecipientState(
            "pending", "451 4.2.0 try later", "4.2.0", "mx.example.com"
        ),
    },
    attempts=2,
    lastAttempt=1700000100.25,
    nextAttempt=1700001900.0,
    held=True,
    warned=True,
)


def queueMessage(
    spoolPath: Path,
    queueID: str,
    envelope: Envelope = ENVELOPE,
    data: bytes = MESSAGE,
) -> None:
    """
    Put a committed message in the spool, as L{Spool} leaves it.
    """
    queue = spoolPath / "queue"
    queue.mkdir(parents=True, exist_ok=True)
    (queue / (queueID + ".eml")).write_bytes(data)
    (queue / (queueID + ".json")).write_bytes(envelope.toJSON())


@pytest.fixture
def spoolPath(tmp_path: Path) -> Path:
    """
    A spool directory with an empty queue.
    """
    path = tmp_path / "spool"
    (path / "queue").mkdir(parents=True)
    return path


@pytest.fixture
def store(spoolPath: Path) -> QueueStore:
    """
    A queue store over L{spoolPath}.
    """
    return QueueStore(str(spoolPath))


def queueFiles(spoolPath: Path) -> list[str]:
    """
    @return: the sorted names in the spool's queue directory.
    """
    return sorted(os.listdir(spoolPath / "queue"))


# Delivery state.


def test_stateRoundTrip() -> None:
    """
    A delivery state read back from its JSON equals the one written.
    """
    assert DeliveryState.fromJSON(STATE.toJSON()) == STATE
    assert DeliveryState.fromJSON(DeliveryState().toJSON()) == DeliveryState()


def test_stateJSONIsReadable() -> None:
    """
    The JSON document carries a format version and every field by name,
    recipients by forward path.
    """
    document = json.loads(STATE.toJSON())
    assert document["version"] == 1
    assert document["attempts"] == 2
    assert document["held"] is True
    assert document["recipients"]["carol@example.com"] == {
        "status": "pending",
        "reply": "451 4.2.0 try later",
        "dsnStatus": "4.2.0",
        "remote": "mx.example.com",
        "diagnostic": "",
        "reported": False,
    }


def test_stateDefaults() -> None:
    """
    A new state has no attempt, is due at once, is neither held nor
    warned, and has every recipient pending.
    """
    state = DeliveryState()
    assert (state.attempts, state.lastAttempt, state.nextAttempt) == (
        0,
        None,
        0.0,
    )
    assert (state.held, state.warned) == (False, False)
    assert state.recipient("x@example.org") == RecipientState()
    assert RecipientState().status == "pending"


def test_pendingInEnvelopeOrder() -> None:
    """
    pending names the recipients neither delivered nor failed, in the
    envelope's order, counting those the state does not mention.
    """
    state = STATE.withRecipient(
        "dave@example.org", RecipientState("failed", "550 5.1.1 unknown")
    )
    assert STATE.pending(ENVELOPE) == ("carol@example.com", "dave@example.org")
    assert state.pending(ENVELOPE) == ("carol@example.com",)


def test_withRecipientCopies() -> None:
    """
    withRecipient returns a new state and leaves the original unchanged.
    """
    update = RecipientState("delivered", "250 ok")
    state = STATE.withRecipient("carol@example.com", update)
    assert state.recipient("carol@example.com") == update
    assert STATE.recipient("carol@example.com").status == "pending"
    assert state.attempts == STATE.attempts


def stateDocument(**changes: Any) -> bytes:
    """
    @return: the JSON of L{STATE} with C{changes} made to its document.
    """
    document = json.loads(STATE.toJSON())
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"\xff",
        b"[]",
        b'"state"',
        stateDocument(version=2),
        stateDocument(version="1"),
        stateDocument(attempts="2"),
        stateDocument(attempts=True),
        stateDocument(attempts=1.5),
        stateDocument(held="yes"),
        stateDocument(warned=1),
        stateDocument(nextAttempt=None),
        stateDocument(nextAttempt=float("nan")),
        stateDocument(lastAttempt=float("inf")),
        stateDocument(lastAttempt="now"),
        stateDocument(recipients=[]),
        stateDocument(recipients={"a@example.org": "pending"}),
        stateDocument(recipients={"a@example.org": {"status": "bounced"}}),
        stateDocument(recipients={"a@example.org": {"reply": 451}}),
        stateDocument(recipients={"a@example.org": {"unknown": ""}}),
        stateDocument(unknown=1),
    ],
)
def test_malformedStateRefused(data: bytes) -> None:
    """
    Anything but a state document of this version, with each field of
    its type, is refused with ValueError.
    """
    with pytest.raises(ValueError):
        DeliveryState.fromJSON(data)


def test_stateWithoutVersionRefused() -> None:
    """
    A state document without its version is refused.
    """
    document = json.loads(STATE.toJSON())
    del document["version"]
    with pytest.raises(ValueError):
        DeliveryState.fromJSON(json.dumps(document).encode())


def test_stateIntegerTimesAccepted() -> None:
    """
    Times written as JSON integers are read as numbers of seconds.
    """
    state = DeliveryState.fromJSON(stateDocument(nextAttempt=0, lastAttempt=5))
    assert (state.nextAttempt, state.lastAttempt) == (0, 5)


# Queue IDs.


@pytest.mark.parametrize("text", ["0000000000001AAAAA", "0123456789ABCDEF01"])
def test_isQueueID(text: str) -> None:
    """
    Eighteen upper-case hexadecimal digits make a queue ID.
    """
    assert isQueueID(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0000000000001aaaaa",
        "0000000000001AAAA",
        "0000000000001AAAAAA",
        "0000000000001AAAAG",
        "0000000000001AAAAA\n",
        " 0000000000001AAAAA",
        "000000000000\uff11AAAAA",
        "../../../etc/pass",
    ],
)
def test_notQueueID(text: str) -> None:
    """
    Lower case, the wrong length, other characters (non-ASCII digits, a
    line end) do not make a queue ID.
    """
    assert not isQueueID(text)


# Listing and reading.


def test_queueIDsOldestFirst(spoolPath: Path, store: QueueStore) -> None:
    """
    queueIDs lists the committed messages oldest first, and only them: a
    data file without its envelope, a state file or a stray name is not a
    message.
    """
    for queueID in (THIRD, FIRST, SECOND):
        queueMessage(spoolPath, queueID)
    queue = spoolPath / "queue"
    (queue / "0000000000004DDDDD.eml").write_bytes(b"half")
    (queue / (FIRST + ".state")).write_bytes(DeliveryState().toJSON())
    (queue / "notes.json").write_bytes(b"{}")
    assert store.queueIDs() == [FIRST, SECOND, THIRD]


def test_queueIDsOfRealSpool(
    tmp_path: Path, pool: ThreadPool, reactor: ThreadResults
) -> None:
    """
    The store reads what the real spool commits: its queue ID, envelope
    and data.
    """
    spool = Spool(str(tmp_path / "spool"), pool, reactor)
    spool.prepare()
    writer = spool.begin(ENVELOPE)
    writer.write(MESSAGE)
    assert reactor.outcomeOf(writer.commit()) is None

    store = QueueStore(spool.path)
    assert store.queueIDs() == [writer.queueID]
    entry = store.read(writer.queueID)
    assert entry.envelope == replace(ENVELOPE, size=len(MESSAGE))
    assert Path(entry.dataPath).read_bytes() == MESSAGE


def test_read(spoolPath: Path, store: QueueStore) -> None:
    """
    read returns the envelope, the state, the data file and its size.
    """
    queueMessage(spoolPath, FIRST)
    store.saveState(FIRST, STATE)
    entry = store.read(FIRST)
    dataPath = str(spoolPath / "queue" / (FIRST + ".eml"))
    assert entry == QueueEntry(FIRST, ENVELOPE, STATE, dataPath, len(MESSAGE))
    assert store.dataPath(FIRST) == dataPath


def test_readNeverTried(spoolPath: Path, store: QueueStore) -> None:
    """
    A message without a state file has the state of a message never
    tried.
    """
    queueMessage(spoolPath, FIRST)
    assert store.read(FIRST).state == DeliveryState()


@pytest.mark.parametrize("missing", [".json", ".eml", "both"])
def test_readMissing(spoolPath: Path, store: QueueStore, missing: str) -> None:
    """
    read raises KeyError for a message whose envelope or data is gone.
    """
    queueMessage(spoolPath, FIRST)
    for suffix in [".json", ".eml"] if missing == "both" else [missing]:
        (spoolPath / "queue" / (FIRST + suffix)).unlink()
    with pytest.raises(KeyError):
        store.read(FIRST)
    assert store.exists(FIRST) is (missing == ".eml")


@pytest.mark.parametrize("name", ["x", "../queue/" + FIRST, FIRST.lower()])
def test_notAQueueIDNamesNothing(
    spoolPath: Path, store: QueueStore, name: str
) -> None:
    """
    A name that is not a queue ID names no message, even when it would
    lead to a file.
    """
    queueMessage(spoolPath, FIRST)
    with pytest.raises(KeyError):
        store.read(name)
    with pytest.raises(KeyError):
        store.saveState(name, STATE)
    with pytest.raises(KeyError):
        store.remove(name)
    assert not store.exists(name)
    assert store.queueIDs() == [FIRST]


def test_readDamaged(spoolPath: Path, store: QueueStore) -> None:
    """
    A damaged envelope or state makes read raise ValueError.
    """
    queueMessage(spoolPath, FIRST)
    queueMessage(spoolPath, SECOND)
    (spoolPath / "queue" / (FIRST + ".json")).write_bytes(b"{")
    (spoolPath / "queue" / (SECOND + ".state")).write_bytes(b"[]")
    for queueID in (FIRST, SECOND):
        with pytest.raises(ValueError):
            store.read(queueID)


def test_entries(spoolPath: Path, store: QueueStore) -> None:
    """
    entries reads every message, oldest first.
    """
    for queueID in (SECOND, FIRST):
        queueMessage(spoolPath, queueID)
    assert [entry.queueID for entry in store.entries()] == [FIRST, SECOND]


def test_entriesSkipRemoved(spoolPath: Path, store: QueueStore) -> None:
    """
    A message removed while entries lists the queue is skipped.
    """
    for queueID in (FIRST, SECOND, THIRD):
        queueMessage(spoolPath, queueID)
    seen = []
    for entry in store.entries():
        seen.append(entry.queueID)
        if entry.queueID == FIRST:
            store.remove(SECOND)
    assert seen == [FIRST, THIRD]


def test_entriesSkipDamaged(
    spoolPath: Path, store: QueueStore, logged: list[dict[str, Any]]
) -> None:
    """
    A damaged message is skipped by entries and logged with its queue ID.
    """
    for queueID in (FIRST, SECOND):
        queueMessage(spoolPath, queueID)
    (spoolPath / "queue" / (FIRST + ".state")).write_bytes(b"garbage")
    assert [entry.queueID for entry in store.entries()] == [SECOND]
    damaged = [event for event in logged if event.get("queueID") == FIRST]
    assert len(damaged) == 1
    assert damaged[0]["log_level"].name == "error"


# Saving the state.


def test_saveState(spoolPath: Path, store: QueueStore) -> None:
    """
    saveState writes the state's JSON to QUEUEID.state, private to the
    owner, replaces an older one, and leaves no temporary file.
    """
    queueMessage(spoolPath, FIRST)
    store.saveState(FIRST, DeliveryState(attempts=1))
    store.saveState(FIRST, STATE)
    path = spoolPath / "queue" / (FIRST + ".state")
    assert path.read_bytes() == STATE.toJSON()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert queueFiles(spoolPath) == [
        FIRST + ".eml",
        FIRST + ".json",
        FIRST + ".state",
    ]


def recordCalls(
    monkeypatch: pytest.MonkeyPatch, names: list[str], fail: str = ""
) -> list[tuple[str, str]]:
    """
    Record the calls of the C{os} functions C{names} made by the queue
    module, each with the name of the file or directory concerned; the
    call named C{fail} raises L{OSError} instead.
    """
    calls: list[tuple[str, str]] = []
    paths: dict[int, str] = {}
    realOpen = os.open

    def opening(path: str, *args: Any) -> int:
        fd = realOpen(path, *args)
        paths[fd] = os.path.basename(path)
        return fd

    def recorder(name: str) -> Any:
        real = getattr(os, name)

        def call(first: Any, *args: Any) -> Any:
            target = (
                paths.get(first, first) if isinstance(first, int) else first
            )
            calls.append((name, os.path.basename(target)))
            if name == fail:
                raise OSError(5, f"{name} failed")
            return real(first, *args)

        return call

    monkeypatch.setattr(msagate.queue.os, "open", opening)
    for name in names:
        monkeypatch.setattr(msagate.queue.os, name, recorder(name))
    return calls


def test_saveStateIsDurable(
    spoolPath: Path, store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    saveState syncs the temporary file, then renames it over the state,
    then syncs the queue directory.
    """
    queueMessage(spoolPath, FIRST)
    calls = recordCalls(monkeypatch, ["fsync", "rename"])
    store.saveState(FIRST, STATE)
    assert calls == [
        ("fsync", FIRST + ".state.tmp"),
        ("rename", FIRST + ".state.tmp"),
        ("fsync", "queue"),
    ]


@pytest.mark.parametrize("failing", ["fsync", "rename", "write"])
def test_saveStateFailureKeepsOldState(
    spoolPath: Path,
    store: QueueStore,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    """
    When writing, syncing or renaming fails, saveState raises, the old
    state stays, and no temporary file is left behind.
    """
    queueMessage(spoolPath, FIRST)
    store.saveState(FIRST, STATE)
    recordCalls(monkeypatch, [failing], fail=failing)
    with pytest.raises(OSError):
        store.saveState(FIRST, DeliveryState())
    monkeypatch.undo()
    assert store.read(FIRST).state == STATE
    assert FIRST + ".state.tmp" not in queueFiles(spoolPath)


def test_saveStateOfUnknownMessage(spoolPath: Path, store: QueueStore) -> None:
    """
    saveState refuses with KeyError a message that is not queued, and
    writes nothing.
    """
    with pytest.raises(KeyError):
        store.saveState(FIRST, STATE)
    assert queueFiles(spoolPath) == []


def test_saveStateAsRootGivesToOwner(
    spoolPath: Path, store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Run as root, saveState gives the file to the owner of the queue
    directory; run as anyone else, it changes no owner.
    """
    queueMessage(spoolPath, FIRST)
    owner = os.stat(spoolPath / "queue")
    changes: list[tuple[int, int]] = []
    monkeypatch.setattr(
        msagate.queue.os, "fchown", lambda fd, u, g: changes.append((u, g))
    )
    monkeypatch.setattr(msagate.queue.os, "geteuid", lambda: 1000)
    store.saveState(FIRST, STATE)
    assert changes == []
    monkeypatch.setattr(msagate.queue.os, "geteuid", lambda: 0)
    store.saveState(FIRST, STATE)
    assert changes == [(owner.st_uid, owner.st_gid)]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_saveStateAsRootReally(spoolPath: Path, store: QueueStore) -> None:
    """
    As root, the state file really belongs to the queue directory's owner.
    """
    queueMessage(spoolPath, FIRST)
    os.chown(spoolPath / "queue", 65534, 65533)
    store.saveState(FIRST, STATE)
    path = spoolPath / "queue" / (FIRST + ".state")
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65533)


# Removing messages.


def test_remove(spoolPath: Path, store: QueueStore) -> None:
    """
    remove deletes the message's envelope, data and state, and leaves the
    other messages alone.
    """
    queueMessage(spoolPath, FIRST)
    queueMessage(spoolPath, SECOND)
    store.saveState(FIRST, STATE)
    (spoolPath / "queue" / (FIRST + ".state.tmp")).write_bytes(b"")
    store.remove(FIRST)
    assert queueFiles(spoolPath) == [SECOND + ".eml", SECOND + ".json"]
    assert store.queueIDs() == [SECOND]


def test_removeOrder(
    spoolPath: Path, store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    remove unlinks the envelope (the commit mark) first and the data last,
    and syncs nothing.
    """
    queueMessage(spoolPath, FIRST)
    store.saveState(FIRST, STATE)
    calls = recordCalls(monkeypatch, ["unlink", "fsync"])
    store.remove(FIRST)
    assert calls == [
        ("unlink", FIRST + ".json"),
        ("unlink", FIRST + ".state"),
        ("unlink", FIRST + ".state.tmp"),
        ("unlink", FIRST + ".eml"),
    ]


@pytest.mark.parametrize(
    "gone", [[".state"], [".eml"], [".json"], [".json", ".eml"]]
)
def test_removeTolerant(
    spoolPath: Path, store: QueueStore, gone: list[str]
) -> None:
    """
    remove succeeds when some or all of the message's files are already
    gone.
    """
    queueMessage(spoolPath, FIRST)
    store.saveState(FIRST, STATE)
    for suffix in gone:
        (spoolPath / "queue" / (FIRST + suffix)).unlink()
    store.remove(FIRST)
    store.remove(FIRST)
    assert queueFiles(spoolPath) == []


# The header section.


def test_headers(spoolPath: Path, store: QueueStore) -> None:
    """
    headers returns the header section up to and including the empty
    line.
    """
    queueMessage(spoolPath, FIRST)
    assert store.headers(FIRST) == (
        b"Subject: hi\r\nFrom: alice@example.org\r\n\r\n"
    )


def test_headersOfBigMessage(
    spoolPath: Path, store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The header section of a 20 MB message comes without reading more than
    a chunk of its body.
    """
    header = b"Subject: big\r\n\r\n"
    queueMessage(spoolPath, FIRST, data=header + b"x" * 20_000_000)
    read: list[int] = []
    realRead = os.read

    def counting(fd: int, size: int) -> bytes:
        data = realRead(fd, size)
        read.append(len(data))
        return data

    monkeypatch.setattr(msagate.queue.os, "read", counting)
    assert store.headers(FIRST) == header
    assert sum(read) <= HEADER_CHUNK


@pytest.mark.parametrize("offset", [-3, -2, -1, 0, 1])
def test_headersAcrossChunks(
    spoolPath: Path, store: QueueStore, offset: int
) -> None:
    """
    The empty line is found when it straddles two reads.
    """
    field = b"X-Long: " + b"a" * (HEADER_CHUNK + offset - 10) + b"\r\n"
    queueMessage(spoolPath, FIRST, data=field + b"\r\nbody\r\n\r\nmore\r\n")
    assert store.headers(FIRST) == field + b"\r\n"


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"\r\nbody only\r\n", b"\r\n"),
        (b"Subject: x\r\n", b"Subject: x\r\n"),
        (b"", b""),
    ],
    ids=["noHeader", "noBody", "empty"],
)
def test_headersWithoutBothParts(
    spoolPath: Path, store: QueueStore, data: bytes, expected: bytes
) -> None:
    """
    A message that starts with the empty line has an empty header
    section; a message without an empty line is all header.
    """
    queueMessage(spoolPath, FIRST, data=data)
    assert store.headers(FIRST) == expected


def test_headersLimit(spoolPath: Path, store: QueueStore) -> None:
    """
    A header section that never ends is cut at the limit.
    """
    queueMessage(spoolPath, FIRST, data=b"X: " + b"y" * 300_000)
    assert store.headers(FIRST, limit=100_000) == b"X: " + b"y" * 99_997


def test_headersOfUnknownMessage(store: QueueStore) -> None:
    """
    headers raises KeyError for a message that does not exist.
    """
    with pytest.raises(KeyError):
        store.headers(FIRST)


# The spool lock.


@pytest.fixture
def lock(store: QueueStore) -> Iterator[msagate.queue.SpoolLock]:
    """
    The spool lock, released after the test.
    """
    held = store.lock()
    yield held
    held.release()


def test_lockFile(spoolPath: Path, lock: msagate.queue.SpoolLock) -> None:
    """
    The lock file is spool/lock, private to the owner, and holds the
    holder's process ID.
    """
    path = spoolPath / "lock"
    assert lock.path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"{os.getpid()}\n"


def test_lockIsExclusive(
    spoolPath: Path, lock: msagate.queue.SpoolLock
) -> None:
    """
    A second lock, through its own open file, fails with SpoolBusy naming
    the holder's process ID.
    """
    with pytest.raises(SpoolBusy) as caught:
        QueueStore(str(spoolPath)).lock()
    assert caught.value.pid == os.getpid()
    assert str(os.getpid()) in str(caught.value)


def test_lockReleased(spoolPath: Path, store: QueueStore) -> None:
    """
    Once released, the lock can be taken again; releasing twice does no
    harm; leaving the with block releases it.
    """
    first = store.lock()
    first.release()
    first.release()
    with QueueStore(str(spoolPath)).lock() as second:
        with pytest.raises(SpoolBusy):
            store.lock()
    store.lock().release()
    assert second.path == first.path


def test_lockHolderUnknown(spoolPath: Path, store: QueueStore) -> None:
    """
    When the holder wrote no process ID, SpoolBusy says so with None.
    """
    fd = os.open(spoolPath / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(SpoolBusy) as caught:
            store.lock()
    finally:
        os.close(fd)
    assert caught.value.pid is None
    assert "another process" in str(caught.value)


def test_lockOverwritesOldPID(spoolPath: Path, store: QueueStore) -> None:
    """
    A lock file left with a longer process ID by an earlier holder ends
    up holding only the new holder's.
    """
    (spoolPath / "lock").write_text("123456789012\n")
    with store.lock():
        assert (spoolPath / "lock").read_text() == f"{os.getpid()}\n"


def test_lockAsRootGivesToOwner(
    spoolPath: Path, store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Taken by root, the lock file is given to the owner of the spool
    directory, so that a server running as that user can open it later.
    """
    owner = os.stat(spoolPath)
    changes: list[tuple[int, int]] = []
    monkeypatch.setattr(
        msagate.queue.os, "fchown", lambda fd, u, g: changes.append((u, g))
    )
    monkeypatch.setattr(msagate.queue.os, "geteuid", lambda: 0)
    store.lock().release()
    assert changes == [(owner.st_uid, owner.st_gid)]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_lockAsRootReally(spoolPath: Path, store: QueueStore) -> None:
    """
    As root, the lock file really belongs to the spool directory's owner.
    """
    os.chown(spoolPath, 65534, 65533)
    store.lock().release()
    path = spoolPath / "lock"
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65533)


def test_lockWithoutSpool(tmp_path: Path) -> None:
    """
    Locking a spool directory that does not exist raises OSError.
    """
    with pytest.raises(OSError):
        QueueStore(str(tmp_path / "missing")).lock()
