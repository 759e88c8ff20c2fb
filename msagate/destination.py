# -*- test-case-name: tests.test_relay -*-
"""
The next hops of the relay manager and the sessions that carry mail to
them.

Each next hop (the smarthosts, or one recipient domain in MX mode) has a
queue of L{Job}s and a bounded number of sessions.  A session takes one
job after another while there is work, and says QUIT once none has come
for L{LINGER} seconds; a next hop that cannot be reached fails the jobs
no other session will take.  What became of each recipient is handed back
as a L{RecipientState}, which the relay manager records.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from msagate._wire import cancelling
from msagate.client import (
    DeliveryError,
    OutboundMessage,
    RecipientOutcome,
    SMTPSession,
)
from msagate.interfaces import IConnector
from msagate.nexthop import Host, NextHopError
from msagate.queue import DELIVERED, FAILED, PENDING, RecipientState

_T = TypeVar("_T")

# How long an idle outbound connection waits for another message to the
# same next hop before it says QUIT.
LINGER = 2.0


@dataclass
class Job:
    """
    Some recipients of one queued message, bound for one next hop.

    @ivar dataPath: the file that holds the message.
    @ivar eightBit: whether it was submitted as BODY=8BITMIME.
    @ivar done: fires with the new state of each recipient.
    """

    sender: str
    recipients: tuple[str, ...]
    dataPath: str
    size: int
    eightBit: bool
    done: Deferred[dict[str, RecipientState]] = field(default_factory=Deferred)


class NextHops:
    """
    Every next hop with work, and the limits on their sessions.
    """

    log = Logger()

    def __init__(
        self,
        connector: IConnector,
        reactor: IReactorTime,
        perDestination: int,
        total: int,
    ) -> None:
        """
        @param perDestination: the most sessions to one next hop.
        @param total: the most sessions in all.
        """
        self.connector = connector
        self.reactor = reactor
        self.perDestination = perDestination
        self.total = total
        self.sessions = 0
        self._destinations: dict[str, _Destination] = {}

    def send(
        self, key: str, security: str, hosts: list[Host], job: Job
    ) -> None:
        """
        Queue C{job} for the next hop C{key}, reached at C{hosts} in order
        with the TLS mode C{security}.
        """
        destination = self._destinations.get(key)
        if destination is None:
            destination = _Destination(self, key, security)
            self._destinations[key] = destination
        destination.hosts = hosts
        destination.add(job)

    def abort(self) -> None:
        """
        Cut every session; their jobs fail as temporary failures.
        """
        for destination in list(self._destinations.values()):
            destination.abort()

    def sessionClosed(self, destination: _Destination) -> None:
        """
        A session ended: make room for next hops that wait for one.
        """
        self.sessions -= 1
        if destination.isIdle():
            self._destinations.pop(destination.key, None)
        for waiting in list(self._destinations.values()):
            waiting.startSessions()


class _Destination:
    """
    One next hop: the jobs waiting for it and the sessions carrying them.

    @ivar hosts: where to connect, in order.
    """

    def __init__(self, owner: NextHops, key: str, security: str) -> None:
        self.key = key
        self.hosts: list[Host] = []
        self._owner = owner
        self._security = security
        self._jobs: deque[Job] = deque()
        self._idle: deque[Deferred[Job | None]] = deque()
        self._sessions: list[SMTPSession] = []
        self._active = 0
        self._connecting = 0

    def add(self, job: Job) -> None:
        if self._idle:
            self._idle.popleft().callback(job)
            return
        self._jobs.append(job)
        self.startSessions()

    def startSessions(self) -> None:
        owner = self._owner
        # A session still connecting will take a job of its own.
        while (
            len(self._jobs) > self._connecting
            and self._active < owner.perDestination
            and owner.sessions < owner.total
        ):
            self._active += 1
            owner.sessions += 1
            running = Deferred.fromCoroutine(self._run())
            running.addErrback(
                lambda failure: owner.log.failure(
                    "relay session to {destination} failed",
                    failure,
                    destination=self.key or "the smarthosts",
                )
            )

    def isIdle(self) -> bool:
        return not (self._jobs or self._active)

    def abort(self) -> None:
        for session in self._sessions:
            session.abort()
        idle, self._idle = self._idle, deque()
        for waiter in idle:
            waiter.callback(None)

    async def _run(self) -> None:
        self._connecting += 1
        try:
            opened = await self._open()
        finally:
            self._connecting -= 1
        if isinstance(opened, _Unreachable):
            self._failWaiting(opened.error, opened.host)
            self._active -= 1
            self._owner.sessionClosed(self)
            return
        session, host = opened
        self._sessions.append(session)
        try:
            await self._carry(session, host)
        finally:
            if session in self._sessions:
                self._sessions.remove(session)
            session.quit()
            self._active -= 1
            self._owner.sessionClosed(self)

    async def _open(self) -> tuple[SMTPSession, str] | _Unreachable:
        """
        @return: a session with the first host that can be reached, and
            that host as the log and the reports name it; or, when none
            can, why not.
        """
        failure: DeliveryError | NextHopError
        failure = NextHopError("no host to connect to", "4.4.4", False)
        tried = ""
        for host in self.hosts:
            tried = str(host)
            try:
                return await self._connectTo(host), tried
            except DeliveryError as error:
                self._owner.log.info(
                    "relay: cannot use {host}: {reason}",
                    host=tried,
                    reason=error.reason,
                )
                failure = error
        return _Unreachable(failure, tried)

    async def _connectTo(self, host: Host) -> SMTPSession:
        connector = self._owner.connector
        try:
            return await connector.connect(host, self._security)
        except DeliveryError as error:
            # Opportunistic TLS may fall back to plain text once the
            # handshake failed (RFC 7435 section 5).
            if not (error.tlsFailed and self._security == "opportunistic"):
                raise
        return await connector.connect(host, "none")

    def _failWaiting(
        self, error: DeliveryError | NextHopError, host: str
    ) -> None:
        # Other sessions still working show the next hop is reachable:
        # only the jobs no session will take fail with this error.
        if self._active > 1:
            count = 1 if self._jobs else 0
        else:
            count = len(self._jobs)
        for _ in range(count):
            job = self._jobs.popleft()
            job.done.callback(errorStates(job.recipients, error, host))

    async def _carry(self, session: SMTPSession, host: str) -> None:
        while True:
            job = await self._next()
            if job is None:
                return
            try:
                outcomes = await session.send(self._outbound(job))
            except DeliveryError as error:
                job.done.callback(errorStates(job.recipients, error, host))
                if not error.permanent:
                    return
            except OSError as error:
                reason = f"cannot read the queued message: {error.strerror}"
                problem = DeliveryError(reason, "4.3.0", False)
                job.done.callback(errorStates(job.recipients, problem, ""))
            else:
                job.done.callback(outcomeStates(outcomes, host))

    def _next(self) -> Deferred[Job | None]:
        if self._jobs:
            return succeed(self._jobs.popleft())
        waiter: Deferred[Job | None] = Deferred()
        self._idle.append(waiter)
        reactor = self._owner.reactor

        def giveUp() -> None:
            if waiter in self._idle:
                self._idle.remove(waiter)
                waiter.callback(None)

        timer = reactor.callLater(LINGER, giveUp)
        waiter.addBoth(cancelling(timer))
        return waiter

    def _outbound(self, job: Job) -> OutboundMessage:
        data = open(job.dataPath, "rb")
        job.done.addBoth(_closing(data))
        return OutboundMessage(
            sender=job.sender,
            recipients=job.recipients,
            data=data,
            size=job.size,
            eightBit=job.eightBit,
        )


def outcomeStates(
    outcomes: Iterable[RecipientOutcome], host: str
) -> dict[str, RecipientState]:
    states = {}
    for outcome in outcomes:
        response = outcome.response
        status, default = {
            2: (DELIVERED, "2.0.0"),
            4: (PENDING, "4.0.0"),
        }.get(response.code // 100, (FAILED, "5.0.0"))
        states[outcome.recipient] = RecipientState(
            status=status,
            reply=str(response),
            dsnStatus=response.status or default,
            remote=host,
            diagnostic=str(response),
        )
    return states


def errorStates(
    recipients: Iterable[str], error: DeliveryError | NextHopError, host: str
) -> dict[str, RecipientState]:
    """
    @return: the state of each recipient when the whole attempt failed:
        C{reply} says why in msagate's words, with the next hop's reply
        when one caused it, which is also the report's diagnostic.
    """
    reply = error.reason
    response = getattr(error, "response", None)
    diagnostic = "" if response is None else str(response)
    if diagnostic:
        reply = f"{error.reason}: {diagnostic}"
    state = RecipientState(
        status=FAILED if error.permanent else PENDING,
        reply=reply,
        dsnStatus=error.status,
        remote=host,
        diagnostic=diagnostic,
    )
    return {recipient: state for recipient in recipients}


@dataclass(frozen=True)
class _Unreachable:
    """
    No host of a next hop could be used.

    @ivar error: why the last one tried could not.
    @ivar host: the last host tried, or C{""} when there was none.
    """

    error: DeliveryError | NextHopError
    host: str


def _closing(file: BinaryIO) -> Callable[[_T], _T]:
    def close(result: _T) -> _T:
        file.close()
        return result

    return close
