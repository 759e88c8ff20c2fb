# -*- test-case-name: tests.test_queue -*-
"""
The queue store: the committed messages of the spool and their delivery
state, read and written on disk.

Beside each committed message (see L{msagate.spool}) the relay manager
keeps its delivery state in C{queue/QUEUEID.state}, a JSON document; a
message without one was never tried.  The state is replaced atomically
(written to C{QUEUEID.state.tmp}, fsynced, renamed), so a reader such as
C{msagate queue list} sees either the old document or the new one.

One process at a time may write: the one that holds the spool lock,
C{spool/lock}.  A running server holds it for its whole life; the
administration command takes it only when no server runs.

Everything here is blocking file I/O: the relay manager calls it from a
thread pool, the administration command calls it directly.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from types import TracebackType
from typing import Any

from twisted.logger import Logger

from msagate.envelope import Envelope
from msagate.spool import (
    DATA_SUFFIX,
    ENVELOPE_SUFFIX,
    QUEUE,
    STATE_SUFFIX,
    TEMPORARY_SUFFIX,
    syncDirectory,
    writeDurably,
)

STATE_FORMAT_VERSION = 1
LOCK = "lock"
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
STATUSES = (PENDING, DELIVERED, FAILED)

# How much of a message headers() reads at a time, and at most.
HEADER_CHUNK = 65536
HEADER_LIMIT = 1 << 20

_QUEUE_ID = re.compile("[0-9A-F]{18}")


def isQueueID(text: str) -> bool:
    """
    @return: whether C{text} is a queue ID: 18 upper-case hexadecimal
        digits, as L{msagate.spool.newQueueID} makes them.
    """
    return _QUEUE_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class RecipientState:
    """
    Where the delivery to one recipient stands.

    @ivar status: C{"pending"}, C{"delivered"} or C{"failed"}.
    @ivar reply: the last reply of the next hop, or the local reason,
        such as C{"451 4.2.0 try later"}; the queue listing shows it.
    @ivar dsnStatus: the enhanced status code for delivery reports, such
        as C{"4.4.1"}.
    @ivar remote: the next hop that gave the reply.
    @ivar diagnostic: the next hop's last reply, word for word, for
        delivery reports; C{""} when no next hop answered.
    @ivar reported: whether the sender was told of the failure.
    """

    status: str = PENDING
    reply: str = ""
    dsnStatus: str = ""
    remote: str = ""
    diagnostic: str = ""
    reported: bool = False


@dataclass(frozen=True)
class DeliveryState:
    """
    The delivery state of one queued message.

    @ivar recipients: the state of each recipient, by forward path; a
        recipient missing from it is pending.
    @ivar attempts: how many delivery attempts were made.
    @ivar lastAttempt: when the last attempt was made, seconds since the
        epoch, or L{None} before the first.
    @ivar nextAttempt: when the next attempt is due, seconds since the
        epoch; C{0} means as soon as possible.
    @ivar held: whether an operator put the message on hold: it is not
        tried until released.
    @ivar warned: whether a delay warning was sent for it.
    """

    recipients: dict[str, RecipientState] = field(default_factory=dict)
    attempts: int = 0
    lastAttempt: float | None = None
    nextAttempt: float = 0.0
    held: bool = False
    warned: bool = False

    def recipient(self, forwardPath: str) -> RecipientState:
        """
        @return: the state of the recipient C{forwardPath}.
        """
        return self.recipients.get(forwardPath, RecipientState())

    def pending(self, envelope: Envelope) -> tuple[str, ...]:
        """
        @return: the recipients of C{envelope} still pending, in envelope
            order.
        """
        return self.withStatus(envelope, PENDING)

    def withStatus(self, envelope: Envelope, status: str) -> tuple[str, ...]:
        """
        @return: the recipients of C{envelope} whose status is C{status},
            in envelope order.
        """
        return tuple(
            forwardPath
            for forwardPath in envelope.recipients
            if self.recipient(forwardPath).status == status
        )

    def withRecipient(
        self, forwardPath: str, state: RecipientState
    ) -> DeliveryState:
        """
        @return: a copy of this state where C{forwardPath} has C{state}.
        """
        recipients = {**self.recipients, forwardPath: state}
        return replace(self, recipients=recipients)

    def toJSON(self) -> bytes:
        """
        @return: the state as a UTF-8 JSON document.
        """
        document = {"version": STATE_FORMAT_VERSION, **asdict(self)}
        return json.dumps(document, indent=1, sort_keys=True).encode()

    @classmethod
    def fromJSON(cls, data: bytes) -> DeliveryState:
        """
        Read a state written by L{toJSON}.

        @raise ValueError: when C{data} is not such a document.
        """
        document = _object(json.loads(data), "a delivery state")
        if document.pop("version", None) != STATE_FORMAT_VERSION:
            raise ValueError("unknown delivery state format version")
        recipients = _object(document.pop("recipients", {}), "recipients")
        _checkFields(document, _STATE_FIELDS)
        return cls(
            recipients={
                path: _recipientState(value)
                for path, value in recipients.items()
            },
            **document,
        )


# The type each field of a state document must have; bool is told apart
# from int, which JSON does not do.
_STATE_FIELDS: dict[str, tuple[type, ...]] = {
    "attempts": (int,),
    "lastAttempt": (int, float, type(None)),
    "nextAttempt": (int, float),
    "held": (bool,),
    "warned": (bool,),
}
_RECIPIENT_FIELDS: dict[str, tuple[type, ...]] = {
    **{
        name: (str,)
        for name in ("status", "reply", "dsnStatus", "remote", "diagnostic")
    },
    "reported": (bool,),
}


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object")
    return value


def _checkFields(
    document: dict[str, Any], kinds: dict[str, tuple[type, ...]]
) -> None:
    for name, value in document.items():
        if name not in kinds:
            raise ValueError(f"unknown field {name!r}")
        wrongBool = isinstance(value, bool) and bool not in kinds[name]
        if wrongBool or not isinstance(value, kinds[name]):
            raise ValueError(f"field {name!r} has the wrong type")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"field {name!r} is not a finite number")


def _recipientState(value: object) -> RecipientState:
    document = _object(value, "a recipient state")
    _checkFields(document, _RECIPIENT_FIELDS)
    state = RecipientState(**document)
    if state.status not in STATUSES:
        raise ValueError(f"unknown recipient status {state.status!r}")
    return state


@dataclass(frozen=True)
class QueueEntry:
    """
    One queued message, as read from the spool.

    @ivar queueID: its queue ID.
    @ivar envelope: its envelope.
    @ivar state: its delivery state.
    @ivar dataPath: the file holding its data.
    @ivar size: the size of that file in octets.
    """

    queueID: str
    envelope: Envelope
    state: DeliveryState
    dataPath: str
    size: int


class SpoolBusy(Exception):
    """
    Another process holds the spool lock.

    @ivar pid: the holder's process ID, when its lock file says it.
    """

    def __init__(self, pid: int | None) -> None:
        holder = "another process" if pid is None else f"process {pid}"
        super().__init__(f"the spool is locked by {holder}")
        self.pid = pid


class SpoolLock:
    """
    The exclusive right to write to a spool, held until released; a
    context manager that releases it on exit.

    @ivar path: the lock file.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """
        Give up the lock; releasing it again does nothing.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> SpoolLock:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


class QueueStore:
    """
    The committed messages of a spool directory and their delivery state.

    Every method takes a queue ID; a name that is not one (see
    L{isQueueID}) names no message.

    @ivar path: the spool directory.
    @ivar queuePath: its C{queue/} directory.
    """

    log = Logger()

    def __init__(self, spoolPath: str) -> None:
        self.path = spoolPath
        self.queuePath = os.path.join(spoolPath, QUEUE)

    def queueIDs(self) -> list[str]:
        """
        @return: the queue IDs of the committed messages (those with an
            envelope), oldest first.
        @raise OSError: when the queue directory cannot be read.
        """
        stems = (
            name[: -len(ENVELOPE_SUFFIX)]
            for name in os.listdir(self.queuePath)
            if name.endswith(ENVELOPE_SUFFIX)
        )
        return sorted(stem for stem in stems if isQueueID(stem))

    def exists(self, queueID: str) -> bool:
        """
        @return: whether C{queueID} is a committed message.
        """
        return isQueueID(queueID) and os.path.exists(
            self._base(queueID) + ENVELOPE_SUFFIX
        )

    def dataPath(self, queueID: str) -> str:
        """
        @return: the path of the file holding a message's data.
        @raise KeyError: when C{queueID} is not a queue ID.
        """
        return self._base(queueID) + DATA_SUFFIX

    def read(self, queueID: str) -> QueueEntry:
        """
        Read a message's envelope and delivery state.

        @raise KeyError: when the message does not exist, or any of its
            files vanished while being read.
        @raise ValueError: when its envelope or its state is damaged.
        @raise OSError: when its files cannot be read.
        """
        base = self._base(queueID)
        try:
            envelope = Envelope.fromJSON(_readFile(base + ENVELOPE_SUFFIX))
            state = self._readState(base + STATE_SUFFIX)
            size = os.stat(base + DATA_SUFFIX).st_size
        except FileNotFoundError:
            raise KeyError(queueID) from None
        return QueueEntry(queueID, envelope, state, base + DATA_SUFFIX, size)

    def entries(self) -> Iterator[QueueEntry]:
        """
        Read every committed message, oldest first.  A message removed
        while listing is skipped; so is a damaged one, which is logged.

        @raise OSError: when the queue cannot be read.
        """
        for queueID in self.queueIDs():
            try:
                yield self.read(queueID)
            except KeyError:
                continue
            except ValueError as error:
                self.log.error(
                    "queued message {queueID} is damaged: {reason}",
                    queueID=queueID,
                    reason=str(error),
                )

    def saveState(self, queueID: str, state: DeliveryState) -> None:
        """
        Replace a message's delivery state, durably and atomically: a
        crash leaves either the old state or the new one.

        When run as root, the file is given to the owner of the queue
        directory, so that a server running as that user can replace it.

        @raise KeyError: when the message is not queued.
        @raise OSError: when the state cannot be written; the old state
            is then left in place.
        """
        base = self._base(queueID)
        if not os.path.exists(base + ENVELOPE_SUFFIX):
            raise KeyError(queueID)
        path = base + STATE_SUFFIX
        temporary = path + TEMPORARY_SUFFIX
        try:
            writeDurably(
                temporary,
                state.toJSON(),
                replacing=True,
                prepare=lambda fd: _giveToOwner(fd, self.queuePath),
            )
            os.rename(temporary, path)
        except BaseException:
            _unlinkIfPresent(temporary)
            raise
        syncDirectory(self.queuePath)

    def remove(self, queueID: str) -> None:
        """
        Remove a message and its state.  The envelope goes first, so that
        a crash half-way leaves no committed message, only files that
        start-up clears.  Files already gone are no error.

        The directory is not synced: a removal that a crash undoes only
        brings the message back to be delivered again (at least once),
        and a sync for every delivered message would cost the disk as
        much as accepting it.

        @raise KeyError: when C{queueID} is not a queue ID.
        @raise OSError: when a file cannot be removed.
        """
        base = self._base(queueID)
        for suffix in (
            ENVELOPE_SUFFIX,
            STATE_SUFFIX,
            STATE_SUFFIX + TEMPORARY_SUFFIX,
            DATA_SUFFIX,
        ):
            _unlinkIfPresent(base + suffix)

    def headers(self, queueID: str, limit: int = HEADER_LIMIT) -> bytes:
        """
        Read a message's header section, up to and including the empty
        line that ends it, without reading its body.

        @param limit: the most octets returned, for a header section that
            never ends.
        @return: the header section; the whole message when it has no
            body.
        @raise KeyError: when the message does not exist.
        @raise OSError: when its data cannot be read.
        """
        try:
            fd = os.open(self._base(queueID) + DATA_SUFFIX, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyError(queueID) from None
        try:
            return _readHeaderSection(fd, limit)
        finally:
            os.close(fd)

    def lock(self) -> SpoolLock:
        """
        Take the spool lock without waiting.  Its file, C{spool/lock}
        (mode 0600), holds the holder's process ID.

        @raise SpoolBusy: when another holder has it.
        @raise OSError: when the lock file cannot be opened.
        """
        path = os.path.join(self.path, LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _readPID(fd)
            os.close(fd)
            raise SpoolBusy(pid) from None
        except BaseException:
            os.close(fd)
            raise
        _giveToOwner(fd, self.path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return SpoolLock(path, fd)

    def _base(self, queueID: str) -> str:
        if not isQueueID(queueID):
            raise KeyError(queueID)
        return os.path.join(self.queuePath, queueID)

    def _readState(self, path: str) -> DeliveryState:
        try:
            return DeliveryState.fromJSON(_readFile(path))
        except FileNotFoundError:
            return DeliveryState()


def _readFile(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _readHeaderSection(fd: int, limit: int) -> bytes:
    section = bytearray()
    while len(section) < limit:
        chunk = os.read(fd, HEADER_CHUNK)
        if not chunk:
            break
        # The empty line may begin in the previous chunk.
        start = max(0, len(section) - 3)
        section += chunk
        end = _headerEnd(section, start)
        if end is not None:
            return bytes(section[:end])
    return bytes(section[:limit])


def _headerEnd(section: bytearray, start: int) -> int | None:
    # RFC 5322 section 2.1: the header section ends at the first empty
    # line; the spool stores CRLF line ends only.
    if section.startswith(b"\r\n"):
        return 2
    found = section.find(b"\r\n\r\n", start)
    return None if found < 0 else found + 4


def _readPID(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).strip()
    return int(text) if text.isdigit() else None


def _giveToOwner(fd: int, directory: str) -> None:
    if os.geteuid() != 0:
        return
    owner = os.stat(directory)
    os.fchown(fd, owner.st_uid, owner.st_gid)


def _unlinkIfPresent(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
