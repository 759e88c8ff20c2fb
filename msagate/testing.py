# -*- test-case-name: tests.test_protocol -*-
"""
Fakes for testing msagate and code built on it; none is for production.

  - L{MemorySpool}: an L{ISpool} that keeps messages in memory;
  - L{StaticSenderSource}: an L{ISenderSource} from a dictionary;
  - L{FakeTLSTransport}: a L{StringTransport} that can start TLS;
  - L{connectedSession}: a protocol on a fake transport, greeted;
  - L{ThreadResults}: a reactor stand-in for code that works in a thread
    pool;
  - L{ImmediatePool} and L{ClockReactor}: a thread pool that runs work at
    once and a L{Clock} that takes results back at once, so that code
    using a pool runs step by step on a fake clock;
  - L{RecordingQueueControl}: an L{IQueueControl} that knows one message
    and records the requests.
"""

from __future__ import annotations

import itertools
import queue
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from twisted.cred.checkers import (
    ICredentialsChecker,
    InMemoryUsernamePasswordDatabaseDontUse,
)
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLServerConnectionCreator,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import alsoProvides, implementer

from msagate.control import IQueueControl
from msagate.envelope import Envelope
from msagate.interfaces import ISenderSource, ISpool, ISpoolWriter
from msagate.protocol import SessionSettings, SubmissionFactory
from msagate.realm import SubmissionRealm
from msagate.senders import SenderPermissions
from msagate.throttle import AuthThrottle

if TYPE_CHECKING:
    from OpenSSL import SSL
    from twisted.protocols.tls import TLSMemoryBIOProtocol

_T = TypeVar("_T")


@implementer(ISpool)
class MemorySpool:
    """
    A spool in memory.

    @ivar messages: the committed messages, as C{(queueID, envelope,
        data)}.
    @ivar failCommit: when true, commits fail with L{OSError}.
    @ivar pending: when not L{None}, commits wait: each appends its
        unfired L{defer.Deferred} here for the test to fire.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[str, Envelope, bytes]] = []
        self.aborted: list[str] = []
        self.failCommit = False
        self.pending: list[defer.Deferred[None]] | None = None
        self._ids = itertools.count(1)

    def begin(self, envelope: Envelope) -> MemorySpoolWriter:
        return MemorySpoolWriter(self, f"Q{next(self._ids):04d}", envelope)


@implementer(ISpoolWriter)
class MemorySpoolWriter:
    """
    One message on its way into a L{MemorySpool}.
    """

    def __init__(
        self, spool: MemorySpool, queueID: str, envelope: Envelope
    ) -> None:
        self.queueID = queueID
        self.envelope = envelope
        self.data = bytearray()
        self.size = 0
        self._spool = spool

    def write(self, data: bytes) -> None:
        self.data += data
        self.size += len(data)

    def commit(self) -> defer.Deferred[None]:
        if self._spool.failCommit:
            return defer.fail(OSError(28, "No space left on device"))
        record = (self.queueID, self.envelope, bytes(self.data))
        if self._spool.pending is None:
            self._spool.messages.append(record)
            return defer.succeed(None)
        waiting: defer.Deferred[None] = defer.Deferred()
        waiting.addCallback(lambda _: self._spool.messages.append(record))
        self._spool.pending.append(waiting)
        return waiting

    def abort(self) -> None:
        self._spool.aborted.append(self.queueID)


@implementer(ISenderSource)
class StaticSenderSource:
    """
    Sender permissions from a dictionary of user to entries.
    """

    def __init__(self, entries: dict[str, list[str]]) -> None:
        self.entries = entries

    def sendersFor(self, user: str) -> SenderPermissions:
        return SenderPermissions.fromEntries(self.entries.get(user, ()))


class FakeTLSTransport(StringTransport):
    """
    A L{StringTransport} whose C{startTLS} records the call and then
    behaves as a TLS 1.3 connection.

    @ivar tlsStarted: whether C{startTLS} was called.
    """

    def __init__(self, peer: IAddress | None = None) -> None:
        super().__init__(
            peerAddress=peer or IPv4Address("TCP", "192.0.2.7", 50000)
        )
        self.tlsStarted = False

    def startTLS(self, contextFactory: object) -> None:
        self.tlsStarted = True
        alsoProvides(self, ISSLTransport)

    def getHandle(self) -> _FakeTLSConnection:
        return _FakeTLSConnection()


class _FakeTLSConnection:
    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"

    def get_cipher_name(self) -> str:
        return "TLS_AES_256_GCM_SHA384"


def memoryPortal(
    users: dict[bytes, bytes], senders: dict[str, list[str]]
) -> Portal:
    """
    @return: a portal over in-memory passwords and sender entries.
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse(**{})
    for name, password in users.items():
        checker.addUser(name, password)
    realm = SubmissionRealm(StaticSenderSource(senders))
    return Portal(realm, [_DecodingChecker(checker)])


@implementer(ICredentialsChecker)
class _DecodingChecker:
    """
    Returns str avatar IDs, as msagate's own checkers do.
    """

    def __init__(
        self, checker: InMemoryUsernamePasswordDatabaseDontUse
    ) -> None:
        self.checker = checker
        self.credentialInterfaces = checker.credentialInterfaces

    # ICredentialsChecker types avatar IDs as bytes; msagate's are str,
    # which the portal hands to the realm untouched.
    def requestAvatarId(  # type: ignore[override]
        self, credentials: IUsernamePassword
    ) -> defer.Deferred[str]:
        result = defer.maybeDeferred(self.checker.requestAvatarId, credentials)
        return result.addCallback(lambda name: name.decode())


@implementer(IOpenSSLServerConnectionCreator)
class _FakeTLSSettings:
    """
    Stands for a listener's TLS settings, which a L{FakeTLSTransport}
    never uses.
    """

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        raise NotImplementedError("a FakeTLSTransport makes no connection")


def connectedSession(
    portal: Portal,
    spool: ISpool | None = None,
    settings: SessionSettings | None = None,
    clock: Clock | None = None,
    implicitTLS: bool = False,
    startTLS: bool = True,
    throttle: AuthThrottle | None = None,
) -> tuple[Protocol, FakeTLSTransport, Clock]:
    """
    Connect a L{SubmissionProtocol} to a L{FakeTLSTransport}.

    @param startTLS: whether the listener offers STARTTLS.
    @return: the protocol, its transport and the clock.
    """
    clock = clock or Clock()
    factory = SubmissionFactory(
        "test",
        settings or SessionSettings(hostname="msa.example.org"),
        portal,
        spool if spool is not None else MemorySpool(),
        clock,
        contextFactory=_FakeTLSSettings() if startTLS else None,
        implicitTLS=implicitTLS,
        throttle=throttle,
    )
    transport = FakeTLSTransport()
    if implicitTLS:
        alsoProvides(transport, ISSLTransport)
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    return protocol, transport, clock


# A call a pool thread hands back: the function and its arguments.
_Call = tuple[Callable[..., object], tuple[object, ...], dict[str, object]]


class ThreadResults:
    """
    The part of a reactor that L{deferToThreadPool} uses, for tests that run
    a real thread pool: what a pool thread hands back waits in a queue
    until the test's thread runs it, so tests need no running reactor and
    no sleeps.
    """

    def __init__(self) -> None:
        self.calls: queue.Queue[_Call] = queue.Queue()

    def callFromThread(
        self, f: Callable[..., object], *args: object, **kwargs: object
    ) -> None:
        """
        Queue C{f(*args, **kwargs)} for the test's thread.
        """
        self.calls.put((f, args, kwargs))

    def runOne(self, timeout: float = 10) -> None:
        """
        Run the next call a pool thread hands back.

        @raise queue.Empty: when none comes within C{timeout} seconds.
        """
        f, args, kwargs = self.calls.get(timeout=timeout)
        f(*args, **kwargs)

    def outcomeOf(
        self, deferred: defer.Deferred[_T], timeout: float = 10
    ) -> _T | Failure:
        """
        Run handed-back calls until C{deferred} fires.

        @return: its result, or its L{Failure}.
        """
        outcome: list[_T | Failure] = []
        deferred.addBoth(outcome.append)
        while not outcome:
            self.runOne(timeout)
        return outcome[0]

    def resultOf(
        self, deferred: defer.Deferred[_T], timeout: float = 10
    ) -> _T:
        """
        Like L{outcomeOf}, but raise the exception of a failure.
        """
        outcome = self.outcomeOf(deferred, timeout)
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome


class ImmediatePool:
    """
    The part of a L{ThreadPool} that L{deferToThreadPool} uses, running
    each call at once in the caller's thread.
    """

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, object], object],
        f: Callable[..., object],
        *args: object,
        **kwargs: object,
    ) -> None:
        """
        Run C{f(*args, **kwargs)} now and hand its outcome to C{onResult}.
        """
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class ClockReactor(Clock):
    """
    A L{Clock} that also takes back results from threads, at once: with
    L{ImmediatePool}, work done "in a thread" completes synchronously.
    """

    def callFromThread(
        self, f: Callable[..., object], *args: object, **kwargs: object
    ) -> None:
        """
        Run C{f(*args, **kwargs)} now.
        """
        f(*args, **kwargs)


@implementer(IQueueControl)
class RecordingQueueControl:
    """
    A queue that knows one message and records the administrator's
    requests, in place of a running server's relay manager.

    @ivar known: the queue ID of the one message.
    @ivar calls: the requests, as C{(command, queueID)}.
    @ivar problem: when set, every request fails with it.
    @ivar waiting: when a list, requests wait: each appends its unfired
        Deferred.
    @ivar text: what a successful request answers, a format with the
        fields C{command} and C{target} (the queue ID, or C{all}).
    """

    def __init__(self, known: str, text: str = "{command} done") -> None:
        self.known = known
        self.text = text
        self.calls: list[tuple[str, str | None]] = []
        self.problem: Exception | None = None
        self.waiting: list[defer.Deferred[str]] | None = None

    def _act(self, command: str, queueID: str | None) -> defer.Deferred[str]:
        self.calls.append((command, queueID))
        if self.problem is not None:
            return defer.fail(self.problem)
        if queueID not in (None, self.known):
            return defer.fail(KeyError(queueID))
        if self.waiting is not None:
            self.waiting.append(defer.Deferred())
            return self.waiting[-1]
        target = queueID or "all"
        return defer.succeed(self.text.format(command=command, target=target))

    def flush(self, queueID: str | None) -> defer.Deferred[str]:
        """
        Record a flush.
        """
        return self._act("flush", queueID)

    def hold(self, queueID: str) -> defer.Deferred[str]:
        """
        Record a hold.
        """
        return self._act("hold", queueID)

    def release(self, queueID: str) -> defer.Deferred[str]:
        """
        Record a release.
        """
        return self._act("release", queueID)

    def delete(self, queueID: str) -> defer.Deferred[str]:
        """
        Record a deletion.
        """
        return self._act("delete", queueID)
