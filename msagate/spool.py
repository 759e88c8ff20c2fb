# -*- test-case-name: tests.test_spool -*-
"""
The spool: where accepted messages wait for the relay manager.

Layout under the spool directory::

    incoming/   messages still being received; never read by anyone else
    queue/      committed messages, QUEUEID.eml (the data) and QUEUEID.json
                (the envelope, see L{msagate.envelope}), and the relay
                manager's QUEUEID.state (see L{msagate.queue})

A message is committed by fsyncing its data and its envelope, renaming the
data and then the envelope into C{queue/}, and fsyncing that directory; the
250 reply waits for all of it (RFC 5321 section 6.1).  The envelope is the
commit mark: a C{.eml} without its C{.json} in C{queue/} is the trace of a
commit that a crash interrupted before the client heard 250, and is removed
at start-up like everything left in C{incoming/}; so is a C{.state} whose
message is gone, and a C{.state.tmp} that a crash left behind.

Once a message is committed, the spool tells its observers (the relay
manager), so that delivery can start at once.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import BinaryIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from msagate.envelope import Envelope
from msagate.interfaces import ISpool, ISpoolWriter

INCOMING = "incoming"
QUEUE = "queue"
DATA_SUFFIX = ".eml"

# The size up to which a message being received is kept in memory: most
# messages then reach the disk in one step, at commit.
MEMORY_LIMIT = 256 * 1024
ENVELOPE_SUFFIX = ".json"
STATE_SUFFIX = ".state"
TEMPORARY_SUFFIX = ".tmp"


def newQueueID() -> str:
    """
    @return: a queue identifier that sorts by arrival time: 13 hex digits
        of microseconds since the epoch and 5 random hex digits.
    """
    return f"{time.time_ns() // 1000:013X}{secrets.randbits(20):05X}"


@implementer(ISpool)
class Spool:
    """
    A spool directory on the local file system.

    Data is written on the reactor thread (it goes to the page cache).
    Creating a message's file and the fsyncs and renames of a commit run in
    C{pool}: they wait for the file system's journal, which other commits
    keep busy.

    @ivar path: the spool directory.
    """

    log = Logger()

    def __init__(
        self, path: str, pool: ThreadPool, reactor: IReactorFromThreads
    ) -> None:
        self.path = path
        self._pool = pool
        self._reactor = reactor
        self._observers: list[Callable[[str, Envelope], None]] = []

    def prepare(self, owner: tuple[int, int] | None = None) -> None:
        """
        Create the directories and clear the traces of interrupted
        submissions and interrupted state updates.  Called once at
        start-up, before listening, by the holder of the spool lock (see
        L{msagate.queue.QueueStore.lock}).

        @param owner: the user and group ID the directories should belong
            to, when msagate will drop root privileges to run as them.
        @raise OSError: when the directories cannot be made.
        """
        for name in ("", INCOMING, QUEUE):
            path = os.path.join(self.path, name)
            os.makedirs(path, 0o700, exist_ok=True)
            if owner is not None:
                os.chown(path, *owner)
        for name in os.listdir(os.path.join(self.path, INCOMING)):
            self._discard(os.path.join(self.path, INCOMING, name))
        for name in self._leftovers():
            self._discard(os.path.join(self.path, QUEUE, name))

    def addObserver(self, observer: Callable[[str, Envelope], None]) -> None:
        """
        Have C{observer} told of every message committed from now on.

        @param observer: called on the reactor thread with the queue ID and
            the committed envelope, size included, before the commit's
            L{Deferred} fires to its caller.  What it raises is logged and
            does not fail the commit.
        """
        self._observers.append(observer)

    def queued(self) -> list[str]:
        """
        @return: the queue IDs of the committed messages, oldest first.
        """
        names = os.listdir(os.path.join(self.path, QUEUE))
        return sorted(
            name[: -len(ENVELOPE_SUFFIX)]
            for name in names
            if name.endswith(ENVELOPE_SUFFIX)
        )

    def begin(self, envelope: Envelope) -> SpoolWriter:
        """
        Start storing one message.  It waits in memory until it grows past
        L{MEMORY_LIMIT}, when its file is created in the pool; a smaller
        message is written, made durable and committed in one go.
        """
        return SpoolWriter(self, newQueueID(), envelope)

    def _create(self, writer: SpoolWriter) -> Deferred[BinaryIO]:
        return deferToThreadPool(
            self._reactor, self._pool, _createExclusive, self._incoming(writer)
        )

    def _incoming(self, writer: SpoolWriter) -> str:
        return os.path.join(self.path, INCOMING, writer.queueID + DATA_SUFFIX)

    def _commit(self, writer: SpoolWriter) -> Deferred[None]:
        committing = deferToThreadPool(
            self._reactor, self._pool, self._commitInThread, writer
        )
        return committing.addCallback(lambda _: self._committed(writer))

    def _committed(self, writer: SpoolWriter) -> None:
        for observer in list(self._observers):
            try:
                observer(writer.queueID, writer.envelope)
            except Exception:
                self.log.failure(
                    "an observer of queued message {queueID} failed",
                    queueID=writer.queueID,
                )

    def _commitInThread(self, writer: SpoolWriter) -> None:
        incoming = os.path.join(self.path, INCOMING, writer.queueID)
        queued = os.path.join(self.path, QUEUE, writer.queueID)
        # What to remove should the commit fail: only files of this
        # message, never those of another with the same queue ID.
        ours = [incoming] if writer._file is not None else []
        try:
            if writer._file is None:
                # The reactor thread no longer touches a committed message.
                writer._file = _createExclusive(incoming + DATA_SUFFIX)
                ours.append(incoming)
                writer._file.write(writer._early)
            _syncAndClose(writer._file)
            writeDurably(incoming + ENVELOPE_SUFFIX, writer.envelope.toJSON())
            # A link, unlike a rename, never replaces a committed message
            # that happens to have the same queue ID.
            os.link(incoming + DATA_SUFFIX, queued + DATA_SUFFIX)
            ours.append(queued)
            os.unlink(incoming + DATA_SUFFIX)
            os.rename(incoming + ENVELOPE_SUFFIX, queued + ENVELOPE_SUFFIX)
            syncDirectory(os.path.join(self.path, QUEUE))
        except BaseException:
            if writer._file is not None:
                writer._file.close()
            for path in ours:
                self._discard(path + ENVELOPE_SUFFIX)
                self._discard(path + DATA_SUFFIX)
            raise

    def _abort(self, writer: SpoolWriter) -> None:
        # Without a file, nothing on disk is the writer's: a file by its
        # name belongs to another message.
        if writer._file is None:
            return
        writer._file.close()
        self._discard(
            os.path.join(self.path, INCOMING, writer.queueID + DATA_SUFFIX)
        )

    def _leftovers(self) -> list[str]:
        names = set(os.listdir(os.path.join(self.path, QUEUE)))
        temporary = STATE_SUFFIX + TEMPORARY_SUFFIX
        stray = [name for name in names if name.endswith(temporary)]
        stems = {name.split(".", 1)[0] for name in names}
        return stray + [
            name
            for stem in stems
            if not {stem + DATA_SUFFIX, stem + ENVELOPE_SUFFIX} <= names
            for suffix in (DATA_SUFFIX, ENVELOPE_SUFFIX, STATE_SUFFIX)
            if (name := stem + suffix) in names
        ]

    def _discard(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as error:
            self.log.error(
                "cannot remove {path}: {error}", path=path, error=error
            )


@implementer(ISpoolWriter)
class SpoolWriter:
    """
    One message being written to a L{Spool}.

    @ivar queueID: the message's queue identifier.
    @ivar envelope: its envelope; the size is filled in at commit.
    @ivar size: the octets written so far.
    """

    def __init__(self, spool: Spool, queueID: str, envelope: Envelope) -> None:
        self.queueID = queueID
        self.envelope = envelope
        self.size = 0
        self._spool = spool
        self._file: BinaryIO | None = None
        self._early = bytearray()
        self._problem: OSError | None = None
        self._aborted = False
        self._opened: Deferred[None] | None = None

    def write(self, data: bytes) -> None:
        """
        Append C{data} to the message.

        @raise OSError: when the message cannot be written.
        """
        if self._problem is not None:
            raise self._problem
        if self._file is None:
            self._early += data
            if len(self._early) > MEMORY_LIMIT and self._opened is None:
                self._opened = self._spool._create(self).addCallbacks(
                    self._fileCreated, self._fileNotCreated
                )
        else:
            self._file.write(data)
        self.size += len(data)

    def commit(self) -> Deferred[None]:
        """
        Make the message durable; see L{ISpoolWriter.commit}.
        """
        self.envelope = replace(self.envelope, size=self.size)
        if self._opened is None:
            return self._spool._commit(self)
        return self._opened.addCallback(lambda _: self._commitCreated())

    def abort(self) -> None:
        """
        Throw the message away, now or once its file exists.
        """
        self._aborted = True
        self._early = bytearray()
        if self._file is not None:
            self._spool._abort(self)

    def _fileCreated(self, file: BinaryIO) -> None:
        self._file = file
        if self._aborted:
            self._spool._abort(self)
            return
        try:
            file.write(self._early)
        except OSError as error:
            self._problem = error
        self._early = bytearray()

    def _fileNotCreated(self, failure: Failure) -> None:
        failure.trap(OSError)
        assert isinstance(failure.value, OSError)
        self._problem = failure.value

    def _commitCreated(self) -> Deferred[None]:
        if self._problem is not None:
            self._spool._abort(self)
            raise self._problem
        return self._spool._commit(self)


def _createExclusive(path: str) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


def _syncAndClose(file: BinaryIO) -> None:
    try:
        file.flush()
        os.fsync(file.fileno())
    finally:
        file.close()


def writeDurably(
    path: str,
    data: bytes,
    replacing: bool = False,
    prepare: Callable[[int], None] | None = None,
) -> None:
    """
    Write C{data} to a new file only its owner may read, and fsync it.

    @param replacing: whether an existing file of that name is truncated
        rather than an error.
    @param prepare: called with the open file descriptor before anything
        is written (to change its owner, say).
    @raise OSError: when the file cannot be written.
    """
    how = os.O_TRUNC if replacing else os.O_EXCL
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | how, 0o600)
    try:
        if prepare is not None:
            prepare(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def syncDirectory(path: str) -> None:
    """
    Make the entries of directory C{path} durable (after a rename, say).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
