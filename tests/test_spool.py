"""
Tests for L{msagate.spool} and L{msagate.envelope}: durable storage of
accepted messages.

Commits run in a real thread pool.  The reactor is a stand-in whose
C{callFromThread} queues the call; the test runs the queued calls on its
own thread, which fires the L{Deferred}s without sleeping.
"""

from __future__ import annotations

import json
import os
import stat
import types
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

import msagate.spool
from msagate.envelope import FORMAT_VERSION, Envelope
from msagate.spool import MEMORY_LIMIT, Spool, newQueueID
from msagate.testing import ThreadResults

ENVELOPE = Envelope(
    sender="alice@example.org",
    recipients=("bob@example.net", "Carol@example.com"),
    user="alice",
    received=1700000000.25,
    body="8BITMIME",
    client="[192.0.2.7]:50000",
)


@pytest.fixture
def spool(tmp_path: Path, pool: ThreadPool, reactor: ThreadResults) -> Spool:
    """
    A prepared spool in a fresh directory.
    """
    result = Spool(str(tmp_path / "spool"), pool, reactor)
    result.prepare()
    return result


def listing(spool: Spool, name: str) -> list[str]:
    """
    Return the sorted file names in the spool's directory C{name}.
    """
    return sorted(os.listdir(os.path.join(spool.path, name)))


def store(spool: Spool, reactor: ThreadResults, data: bytes) -> str:
    """
    Store one message and return its queue ID, failing if the commit
    fails.
    """
    writer = spool.begin(ENVELOPE)
    writer.write(data)
    outcome = reactor.outcomeOf(writer.commit())
    assert outcome is None
    return writer.queueID


# The envelope.


def test_envelopeRoundTrip() -> None:
    """
    An envelope read back from its JSON equals the one written.
    """
    envelope = Envelope(
        sender="",
        recipients=("a@example.org",),
        user="alice",
        received=1.5,
        size=1234,
        extra={"envid": "x1"},
    )
    assert Envelope.fromJSON(envelope.toJSON()) == envelope
    assert Envelope.fromJSON(ENVELOPE.toJSON()) == ENVELOPE


def test_envelopeJSONIsReadable() -> None:
    """
    The JSON document carries the format version and each field by name,
    recipients as a list.
    """
    document = json.loads(ENVELOPE.toJSON())
    assert document["version"] == FORMAT_VERSION == 1
    assert document["recipients"] == ["bob@example.net", "Carol@example.com"]
    assert document["sender"] == "alice@example.org"
    assert document["body"] == "8BITMIME"


def test_envelopeDefaults() -> None:
    """
    An envelope defaults to a 7-bit body of unknown size from an unnamed
    client.
    """
    envelope = Envelope("", (), "alice", 0.0)
    assert (envelope.body, envelope.client, envelope.size) == ("7BIT", "", 0)
    assert envelope.extra == {}


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_envelopeUnknownVersionRefused(version: object) -> None:
    """
    An envelope of another format version is refused rather than misread.
    """
    document = json.loads(ENVELOPE.toJSON())
    document["version"] = version
    with pytest.raises(ValueError):
        Envelope.fromJSON(json.dumps(document).encode())


def test_envelopeWithoutVersionRefused() -> None:
    """
    An envelope without a format version is refused.
    """
    document = json.loads(ENVELOPE.toJSON())
    del document["version"]
    with pytest.raises(ValueError):
        Envelope.fromJSON(json.dumps(document).encode())


@pytest.mark.parametrize("data", [b"", b"{", b"\xff", b"garbage"])
def test_envelopeNotJSONRefused(data: bytes) -> None:
    """
    Data that is not JSON is refused with ValueError.
    """
    with pytest.raises(ValueError):
        Envelope.fromJSON(data)


@pytest.mark.parametrize(
    "data",
    [
        b"[1]",
        b'{"version": 1}',
        b'{"version": 1, "sender": "", "recipients": [], "user": "a",'
        b' "received": 1, "unknown": 1}',
    ],
    ids=["notAnObject", "fieldsMissing", "unknownField"],
)
def test_envelopeMalformedDocumentRefused(data: bytes) -> None:
    """
    JSON that is not an envelope document (not an object, a field missing
    or unknown) is refused with ValueError, as fromJSON promises.
    """
    with pytest.raises(ValueError):
        Envelope.fromJSON(data)


# Queue IDs.


def test_queueIDsUnique() -> None:
    """
    Ten thousand queue IDs made in a row are all different.
    """
    ids = [newQueueID() for _ in range(10000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 18 and set(i) <= set("0123456789ABCDEF") for i in ids)


def test_queueIDsTimePartNeverDecreases() -> None:
    """
    The time part of successive queue IDs never decreases.
    """
    stamps = [newQueueID()[:13] for _ in range(10000)]
    assert stamps == sorted(stamps)


def test_queueIDsSortByTime(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An ID made a microsecond later sorts after, whatever the random parts.
    """
    now = iter([0x123456789ABCD * 1000, 0x123456789ABCE * 1000 + 999])
    bits = iter([0xFFFFF, 0])
    monkeypatch.setattr(
        msagate.spool, "time", types.SimpleNamespace(time_ns=lambda: next(now))
    )
    monkeypatch.setattr(
        msagate.spool,
        "secrets",
        types.SimpleNamespace(randbits=lambda n: next(bits)),
    )
    first, second = newQueueID(), newQueueID()
    assert (first, second) == ("123456789ABCDFFFFF", "123456789ABCE00000")
    assert first < second


# prepare


def test_prepareCreatesDirectories(tmp_path: Path, pool, reactor) -> None:
    """
    prepare makes the spool, incoming/ and queue/ directories, private to
    the owner, and can run again.
    """
    spool = Spool(str(tmp_path / "a" / "spool"), pool, reactor)
    spool.prepare()
    spool.prepare()
    for name in ("incoming", "queue"):
        path = tmp_path / "a" / "spool" / name
        assert path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_prepareClearsLeftovers(spool: Spool, reactor) -> None:
    """
    prepare removes everything in incoming/ and every half-committed
    message in queue/, and keeps the committed ones (SMTP-35).
    """
    kept = store(spool, reactor, b"kept\r\n")
    base = Path(spool.path)
    (base / "incoming" / "AAA.eml").write_bytes(b"partial")
    (base / "incoming" / "AAA.json").write_bytes(b"{}")
    (base / "queue" / "BBB.eml").write_bytes(b"no envelope")
    (base / "queue" / "CCC.json").write_bytes(b"{}")

    spool.prepare()

    assert listing(spool, "incoming") == []
    assert listing(spool, "queue") == [kept + ".eml", kept + ".json"]
    assert spool.queued() == [kept]


def test_prepareRemovesBrokenMessagesWithTheirState(
    spool: Spool, reactor
) -> None:
    """
    A message in queue/ lacking its envelope or its data is removed with
    all its files, delivery state included; a state file alone is removed
    too.
    """
    kept = store(spool, reactor, b"kept\r\n")
    queue = Path(spool.path) / "queue"
    for name in (
        "0000000000001AAAAA.eml",
        "0000000000001AAAAA.state",
        "0000000000002BBBBB.json",
        "0000000000002BBBBB.state",
        "0000000000003CCCCC.state",
    ):
        (queue / name).write_bytes(b"{}")

    spool.prepare()

    assert listing(spool, "queue") == [kept + ".eml", kept + ".json"]


def test_prepareKeepsStateOfCompleteMessage(spool: Spool, reactor) -> None:
    """
    The delivery state of a complete message survives prepare.
    """
    kept = store(spool, reactor, b"kept\r\n")
    state = Path(spool.path) / "queue" / (kept + ".state")
    state.write_bytes(b'{"version": 1}')

    spool.prepare()

    assert listing(spool, "queue") == [
        kept + ".eml",
        kept + ".json",
        kept + ".state",
    ]
    assert state.read_bytes() == b'{"version": 1}'


def test_prepareRemovesStrayTemporaryState(spool: Spool, reactor) -> None:
    """
    A temporary state file that a crash left behind is removed, whether
    its message is complete or not; unrelated files stay.
    """
    kept = store(spool, reactor, b"kept\r\n")
    queue = Path(spool.path) / "queue"
    (queue / (kept + ".state.tmp")).write_bytes(b"half")
    (queue / "0000000000001AAAAA.state.tmp").write_bytes(b"half")
    (queue / "README").write_bytes(b"operator's note")

    spool.prepare()

    assert listing(spool, "queue") == sorted(
        ["README", kept + ".eml", kept + ".json"]
    )


# Storing messages.


def test_commitStoresDataAndEnvelope(spool: Spool, reactor) -> None:
    """
    A committed message is QUEUEID.eml with the data written and
    QUEUEID.json with the envelope and its size, in queue/ (SMTP-35).
    """
    writer = spool.begin(ENVELOPE)
    writer.write(b"Subject: hi\r\n")
    writer.write(b"\r\nbody\r\n")
    assert writer.size == 21

    assert reactor.outcomeOf(writer.commit()) is None

    queueID = writer.queueID
    assert listing(spool, "incoming") == []
    assert listing(spool, "queue") == [queueID + ".eml", queueID + ".json"]
    queued = Path(spool.path) / "queue"
    data = (queued / (queueID + ".eml")).read_bytes()
    assert data == b"Subject: hi\r\n\r\nbody\r\n"
    envelope = Envelope.fromJSON((queued / (queueID + ".json")).read_bytes())
    assert envelope.size == 21
    assert envelope == Envelope(**{**vars(ENVELOPE), "size": 21})
    assert writer.envelope == envelope


def test_dataIsInIncomingUntilCommit(spool: Spool, reactor) -> None:
    """
    A message larger than L{MEMORY_LIMIT} lives in incoming/ while it is
    written, in a file the pool created, and is not queued; a smaller one
    stays in memory until its commit.
    """
    small = spool.begin(ENVELOPE)
    small.write(b"x")
    big = spool.begin(ENVELOPE)
    big.write(b"x" * (MEMORY_LIMIT + 1))
    reactor.runOne()
    assert listing(spool, "incoming") == [big.queueID + ".eml"]
    assert listing(spool, "queue") == []
    assert spool.queued() == []
    big.abort()
    small.abort()


def test_filesArePrivate(spool: Spool, reactor) -> None:
    """
    The data and envelope files are readable by the owner alone (mode
    0600), while incoming and once queued.
    """
    writer = spool.begin(ENVELOPE)
    writer.write(b"x" * (MEMORY_LIMIT + 1))
    reactor.runOne()
    path = Path(spool.path) / "incoming" / (writer.queueID + ".eml")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reactor.outcomeOf(writer.commit())
    for suffix in (".eml", ".json"):
        path = Path(spool.path) / "queue" / (writer.queueID + suffix)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_abortRemovesTheMessage(spool: Spool, reactor) -> None:
    """
    abort leaves nothing of the message in the spool, whether it was only
    in memory, its file was being created, or its file existed.
    """
    small = spool.begin(ENVELOPE)
    small.write(b"unwanted")
    small.abort()

    early = spool.begin(ENVELOPE)
    early.write(b"x" * (MEMORY_LIMIT + 1))
    early.abort()
    reactor.runOne()

    late = spool.begin(ENVELOPE)
    late.write(b"x" * (MEMORY_LIMIT + 1))
    reactor.runOne()
    late.write(b"unwanted")
    late.abort()
    assert listing(spool, "incoming") == []
    assert listing(spool, "queue") == []


def test_queueIDInUse(spool: Spool, reactor, monkeypatch) -> None:
    """
    A queue ID that is already in use fails the new message and leaves
    the other one alone, committed or not.
    """
    monkeypatch.setattr(msagate.spool, "newQueueID", lambda: "00000000AAAAA")
    first = spool.begin(ENVELOPE)
    first.write(b"first")
    reactor.outcomeOf(first.commit())
    second = spool.begin(ENVELOPE)
    second.write(b"second")
    failure = reactor.outcomeOf(second.commit())
    assert isinstance(failure, Failure) and failure.check(FileExistsError)
    assert spool.queued() == ["00000000AAAAA"]
    data = (Path(spool.path) / "queue" / "00000000AAAAA.eml").read_bytes()
    assert data == b"first"

    big = spool.begin(ENVELOPE)
    big.write(b"x" * (MEMORY_LIMIT + 1))
    reactor.runOne()
    third = spool.begin(ENVELOPE)
    third.write(b"third")
    failure = reactor.outcomeOf(third.commit())
    assert isinstance(failure, Failure) and failure.check(FileExistsError)
    assert listing(spool, "incoming") == ["00000000AAAAA.eml"]
    big.abort()


def test_queuedOldestFirst(spool: Spool, reactor, monkeypatch) -> None:
    """
    queued lists the committed messages by arrival, oldest first, whatever
    the order of their commits.
    """
    now = iter(range(1_000_000_000, 1_000_100_000, 1000))
    monkeypatch.setattr(
        msagate.spool, "time", types.SimpleNamespace(time_ns=lambda: next(now))
    )
    writers = [spool.begin(ENVELOPE) for _ in range(5)]
    for writer in reversed(writers):
        writer.write(b"x")
        assert reactor.outcomeOf(writer.commit()) is None
    assert spool.queued() == [writer.queueID for writer in writers]


def test_queuedIgnoresHalfCommitted(spool: Spool, reactor) -> None:
    """
    A data file without its envelope is not a queued message.
    """
    queueID = store(spool, reactor, b"x")
    (Path(spool.path) / "queue" / "0000000000000AAAAA.eml").write_bytes(b"x")
    assert spool.queued() == [queueID]


def failOnCall(monkeypatch, name: str, failing: int) -> list[int]:
    """
    Replace C{os.<name>} so that its C{failing}th call raises L{OSError};
    return the list that counts the calls.
    """
    real = getattr(os, name)
    calls: list[int] = []

    def replacement(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == failing:
            raise OSError(5, f"{name} failed")
        return real(*args)

    monkeypatch.setattr(os, name, replacement)
    return calls


@pytest.mark.parametrize(
    "name, failing",
    [
        ("fsync", 1),
        ("fsync", 2),
        ("fsync", 3),
        ("link", 1),
        ("rename", 1),
    ],
)
def test_failedCommitLeavesNothing(
    spool: Spool, reactor, monkeypatch, name: str, failing: int
) -> None:
    """
    A commit that fails at any step (data fsync, envelope fsync, the
    data's link into the queue, the envelope's rename, directory fsync)
    fails its Deferred and leaves nothing behind (SMTP-35).
    """
    writer = spool.begin(ENVELOPE)
    writer.write(b"doomed")
    calls = failOnCall(monkeypatch, name, failing)

    outcome = reactor.outcomeOf(writer.commit())

    assert isinstance(outcome, Failure)
    assert outcome.check(OSError)
    assert len(calls) == failing
    monkeypatch.undo()
    assert listing(spool, "incoming") == []
    assert listing(spool, "queue") == []
    assert spool.queued() == []


def test_failedCommitKeepsOthers(spool: Spool, reactor, monkeypatch) -> None:
    """
    A failed commit removes only its own message, never one already
    queued.
    """
    kept = store(spool, reactor, b"kept")
    writer = spool.begin(ENVELOPE)
    writer.write(b"doomed")
    failOnCall(monkeypatch, "fsync", 3)
    assert isinstance(reactor.outcomeOf(writer.commit()), Failure)
    monkeypatch.undo()
    assert spool.queued() == [kept]
    assert listing(spool, "queue") == [kept + ".eml", kept + ".json"]


def test_commitRunsInThePool(spool: Spool, reactor) -> None:
    """
    A small message reaches the disk in one call to the pool, which
    creates, writes and commits it: the Deferred fires once the reactor
    runs the call the pool thread handed back, and not before.
    """
    writer = spool.begin(ENVELOPE)
    writer.write(b"x")
    outcome: list[object] = []
    writer.commit().addBoth(outcome.append)
    assert outcome == []
    reactor.runOne()
    assert outcome == [None]
    assert spool.queued() == [writer.queueID]


# Observers.


def test_observerToldOfCommit(spool: Spool, reactor) -> None:
    """
    Each observer is called with the queue ID and the committed envelope,
    size included, on the thread that fires the commit, before the
    commit's Deferred fires.
    """
    calls: list[tuple[str, str, Envelope, list[object]]] = []
    outcome: list[object] = []
    for name in ("first", "second"):
        spool.addObserver(
            lambda queueID, envelope, name=name: calls.append(
                (name, queueID, envelope, list(outcome))
            )
        )
    writer = spool.begin(ENVELOPE)
    writer.write(b"12345")
    writer.commit().addBoth(outcome.append)
    while not outcome:
        reactor.runOne()

    committed = Envelope(**{**vars(ENVELOPE), "size": 5})
    assert outcome == [None]
    assert calls == [
        ("first", writer.queueID, committed, []),
        ("second", writer.queueID, committed, []),
    ]


def test_observerFailureLogged(spool: Spool, reactor, logged) -> None:
    """
    An observer that raises is logged with its traceback; the commit
    still succeeds and the other observers are still told.
    """
    told: list[str] = []

    def broken(queueID: str, envelope: Envelope) -> None:
        raise RuntimeError("observer bug")

    spool.addObserver(broken)
    spool.addObserver(lambda queueID, envelope: told.append(queueID))
    queueID = store(spool, reactor, b"x")

    assert told == [queueID]
    assert spool.queued() == [queueID]
    failures = [event for event in logged if "log_failure" in event]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    assert failures[0]["queueID"] == queueID


def test_observerNotToldOfFailedCommit(
    spool: Spool, reactor, monkeypatch
) -> None:
    """
    Observers hear nothing of a commit that fails.
    """
    told: list[str] = []
    spool.addObserver(lambda queueID, envelope: told.append(queueID))
    writer = spool.begin(ENVELOPE)
    writer.write(b"doomed")
    failOnCall(monkeypatch, "rename", 1)
    assert isinstance(reactor.outcomeOf(writer.commit()), Failure)
    assert told == []
