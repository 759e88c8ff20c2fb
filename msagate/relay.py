# -*- test-case-name: tests.test_relay -*-
"""
The relay manager: delivers what the spool holds to the next hop, retries
what can be retried and reports the rest to the sender.

Every committed message gets an attempt at once; a recipient answered
4xx (or that could not be reached) is tried again after a growing, jittered
delay, until the message has been queued for C{maxLifetime}.  A message
leaves the queue only once each of its recipients is delivered or has
failed for good, and only after the delivery status notification for the
failed ones is itself durably queued (RFC 5321 section 6.1).  A crash at
any point therefore repeats work (at-least-once delivery), never loses it.

Recipients are grouped by next hop: one group for the smarthosts, or one
per recipient domain in MX mode; L{msagate.destination} carries each
group's job to its next hop.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IResolver,
)
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.names.client import getResolver
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from msagate import maillog
from msagate.control import IQueueControl
from msagate.destination import Job, NextHops, errorStates
from msagate.dsn import RecipientReport, buildReport
from msagate.envelope import Envelope
from msagate.interfaces import IConnector, IServerReactor
from msagate.nexthop import Host, NextHopError, mailHosts
from msagate.queue import (
    DELIVERED,
    FAILED,
    PENDING,
    DeliveryState,
    QueueEntry,
    QueueStore,
    RecipientState,
)
from msagate.spool import Spool

_T = TypeVar("_T")

# The share of a retry delay that is random, so that messages deferred
# together do not come back together.
JITTER = 0.25

SMARTHOST = ""

# Why a message the administrator deleted left the queue.
DELETED = "deleted by the administrator"


@dataclass(frozen=True)
class RelaySettings:
    """
    How the relay manager delivers and retries.

    @ivar hostname: this server's name, the reporting MTA of its
        notifications.
    @ivar mode: C{"smarthost"} or C{"mx"}.
    @ivar smarthosts: the smarthosts, tried in order.
    @ivar security: the TLS mode toward the smarthosts; MX hosts are
        always C{"opportunistic"}.
    @ivar mxPort: the port of MX hosts.
    @ivar destinationConnections: the most sessions to one next hop.
    @ivar connections: the most outbound sessions in all.
    @ivar retryMinimum: the delay before the first retry.
    @ivar retryMaximum: the longest delay between two retries.
    @ivar maxLifetime: how long a message may stay queued.
    @ivar delayWarning: how long a message waits before its sender is
        told of the delay; 0 for never.
    """

    hostname: str
    mode: str = "mx"
    smarthosts: tuple[Host, ...] = ()
    security: str = "starttls"
    mxPort: int = 25
    destinationConnections: int = 20
    connections: int = 100
    retryMinimum: float = 300
    retryMaximum: float = 3600
    maxLifetime: float = 5 * 24 * 3600
    delayWarning: float = 0


@dataclass
class _Message:
    """
    A queued message as the relay manager tracks it.

    @ivar state: its delivery state as last saved.
    @ivar timer: the call of its next attempt, when one is scheduled.
    @ivar busy: whether an attempt is under way.
    @ivar deleting: whether it is to be deleted once the attempt ends.
    @ivar flushing: whether it is to be tried again as soon as the attempt
        under way ends.
    @ivar saving: fires once its last state or removal reached the disk.
    """

    queueID: str
    envelope: Envelope
    state: DeliveryState
    timer: IDelayedCall | None = None
    busy: bool = False
    deleting: bool = False
    flushing: bool = False
    saving: Deferred[None] = field(default_factory=lambda: succeed(None))


@implementer(IQueueControl)
class RelayManager(Service):
    """
    Delivers the spool's messages; see the module docstring.

    @ivar messages: the queued messages by queue ID.
    """

    log = Logger()

    def __init__(
        self,
        settings: RelaySettings,
        store: QueueStore,
        spool: Spool,
        connector: IConnector,
        pool: ThreadPool,
        reactor: IServerReactor,
        resolver: IResolver | None = None,
        randomness: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.messages: dict[str, _Message] = {}
        self._store = store
        self._spool = spool
        self._pool = pool
        self._reactor = reactor
        self._resolver = resolver
        self._random = randomness or random.Random()
        self._nextHops = NextHops(
            connector,
            reactor,
            settings.destinationConnections,
            settings.connections,
        )
        self._stopping = False
        self._removals: list[tuple[str, Deferred[None]]] = []
        self._removing = False
        spool.addObserver(self._committed)

    def startService(self) -> None:
        """
        Load the queue and schedule every message it holds.
        """
        super().startService()
        self._stopping = False
        loading = self._inPool(lambda: list(self._store.entries()))
        loading.addCallback(self._loaded)
        loading.addErrback(
            lambda failure: self.log.failure("cannot read the queue", failure)
        )

    def stopService(self) -> None:
        """
        Stop scheduling and close the outbound sessions; whatever was not
        delivered stays queued for the next start.
        """
        super().stopService()
        self._stopping = True
        for message in self.messages.values():
            _cancel(message)
        self._nextHops.abort()

    # IQueueControl

    def flush(self, queueID: str | None) -> Deferred[str]:
        """
        Try now: one message, or every message that is not held.
        """
        if queueID is not None:
            message = self._find(queueID)
            if message.state.held:
                return succeed(f"{queueID} is held; release it instead")
            if message.busy:
                message.flushing = True
                return succeed(f"{queueID} will be tried again at once")
            self._start(message)
            return succeed(f"{queueID} is being delivered")
        ready = [m for m in self.messages.values() if not m.state.held]
        for message in ready:
            message.flushing = message.busy
            self._start(message)
        return succeed(f"{_messages(len(ready))} being delivered")

    def hold(self, queueID: str) -> Deferred[str]:
        """
        Keep a message queued without trying it until it is released.
        """
        message = self._find(queueID)
        _cancel(message)
        message.state = replace(message.state, held=True)
        return self._save(message).addCallback(lambda _: f"{queueID} held")

    def release(self, queueID: str) -> Deferred[str]:
        """
        Let a held message go, and try it now.
        """
        message = self._find(queueID)
        message.state = replace(message.state, held=False, nextAttempt=0.0)
        message.flushing = message.busy
        saved = self._save(message)
        saved.addCallback(lambda _: self._start(message))
        return saved.addCallback(lambda _: f"{queueID} released")

    def delete(self, queueID: str) -> Deferred[str]:
        """
        Remove a message from the queue without telling its sender; also
        one whose files are damaged, which the manager does not track.
        """
        if queueID not in self.messages and self._store.exists(queueID):
            removing = self._removeFiles(queueID)
            removing.addCallback(lambda _: maillog.removed(queueID, DELETED))
        else:
            message = self._find(queueID)
            if message.busy:
                message.deleting = True
                return succeed(
                    f"{queueID} will be deleted when its attempt ends"
                )
            _cancel(message)
            removing = self._remove(message, DELETED)
        return removing.addCallback(lambda _: f"{queueID} deleted")

    # Scheduling

    def _loaded(self, entries: list[QueueEntry]) -> None:
        for entry in entries:
            if entry.queueID in self.messages:
                continue
            message = _Message(entry.queueID, entry.envelope, entry.state)
            self.messages[entry.queueID] = message
            if not message.state.held:
                self._schedule(message)
        self.log.info(
            "relay: {messages} in the queue", messages=_messages(len(entries))
        )

    def _committed(self, queueID: str, envelope: Envelope) -> None:
        # While stopped, the queue on disk is what the next start reads.
        if queueID in self.messages or not self.running:
            return
        message = _Message(queueID, envelope, DeliveryState(recipients={}))
        self.messages[queueID] = message
        self._start(message)

    def _schedule(self, message: _Message) -> None:
        _cancel(message)
        delay = max(0.0, message.state.nextAttempt - self._reactor.seconds())
        message.timer = self._reactor.callLater(delay, self._start, message)

    def _start(self, message: _Message) -> None:
        _cancel(message)
        if message.busy or self._stopping or not self.running:
            return
        message.busy = True
        attempt = Deferred.fromCoroutine(self._attempt(message))
        attempt.addErrback(self._attemptFailed, message)

    def _attemptFailed(self, failure: Failure, message: _Message) -> None:
        message.busy = False
        if not self._store.exists(message.queueID):
            # Its files were removed behind msagate's back.
            _cancel(message)
            self.messages.pop(message.queueID, None)
            self.log.error(
                "{queueID}: its files left the queue; message forgotten",
                queueID=message.queueID,
            )
            return
        self.log.failure(
            "{queueID}: delivery attempt failed",
            failure,
            queueID=message.queueID,
        )
        if message.queueID in self.messages and not self._stopping:
            retry = self._reactor.seconds() + self.settings.retryMinimum
            message.state = replace(message.state, nextAttempt=retry)
            self._schedule(message)

    def _retryDelay(self, attempts: int) -> float:
        settings = self.settings
        exponent = min(max(attempts - 1, 0), 32)
        delay = min(
            settings.retryMaximum, settings.retryMinimum * 2.0**exponent
        )
        jitter: float = self._random.uniform(1 - JITTER, 1 + JITTER)
        return min(delay * jitter, settings.retryMaximum)

    # One attempt

    async def _attempt(self, message: _Message) -> None:
        pending = _pending(message)
        groups: dict[str, list[str]] = {}
        for recipient in pending:
            groups.setdefault(self._nextHopOf(recipient), []).append(recipient)
        results = await gatherResults(
            [
                Deferred.fromCoroutine(self._deliver(message, key, group))
                for key, group in groups.items()
            ],
            consumeErrors=True,
        )
        updates: dict[str, RecipientState] = {}
        for result in results:
            updates.update(result)
        for recipient, update in updates.items():
            self._logOutcome(message, recipient, update)
        await self._record(message, updates)

    def _nextHopOf(self, recipient: str) -> str:
        if self.settings.mode == "smarthost":
            return SMARTHOST
        return recipient.rpartition("@")[2].lower()

    async def _deliver(
        self, message: _Message, key: str, recipients: list[str]
    ) -> dict[str, RecipientState]:
        try:
            hosts = await self._hostsFor(key)
        except NextHopError as error:
            return errorStates(recipients, error, "")
        envelope = message.envelope
        job = Job(
            sender=envelope.sender,
            recipients=tuple(recipients),
            dataPath=self._store.dataPath(message.queueID),
            size=envelope.size,
            eightBit=envelope.body == "8BITMIME",
        )
        self._nextHops.send(key, self._securityFor(key), hosts, job)
        return await job.done

    def _hostsFor(self, key: str) -> Deferred[list[Host]]:
        if key == SMARTHOST:
            return succeed(list(self.settings.smarthosts))
        if self._resolver is None:
            self._resolver = getResolver()
        return mailHosts(
            self._resolver, key, self.settings.mxPort, self._random.shuffle
        )

    def _securityFor(self, key: str) -> str:
        if key == SMARTHOST:
            return self.settings.security
        return "opportunistic"

    def _logOutcome(
        self, message: _Message, recipient: str, update: RecipientState
    ) -> None:
        outcome = {
            DELIVERED: "sent",
            FAILED: "bounced",
            PENDING: "deferred",
        }[update.status]
        delay = self._reactor.seconds() - message.envelope.received
        maillog.relayed(
            message.queueID,
            recipient,
            update.remote,
            outcome,
            update.dsnStatus,
            delay,
            update.reply,
        )

    async def _record(
        self, message: _Message, updates: dict[str, RecipientState]
    ) -> None:
        now = self._reactor.seconds()
        state = message.state
        recipients = {**state.recipients, **updates}
        state = replace(
            state,
            recipients=recipients,
            attempts=state.attempts + 1,
            lastAttempt=now,
        )
        message.state = state
        if message.deleting:
            await self._remove(message, DELETED)
            return

        age = now - message.envelope.received
        if _pending(message) and age >= self.settings.maxLifetime:
            message.state = replace(
                state, recipients={**recipients, **self._expire(message)}
            )
        await self._reportFailures(message)
        if not _pending(message):
            failed = len(_failed(message))
            delivered = len(message.envelope.recipients) - failed
            reason = f"delivered {delivered}, failed {failed}"
            await self._remove(message, reason)
            return

        await self._warnOfDelay(message, now)
        retry = now + self._retryDelay(message.state.attempts)
        expiry = message.envelope.received + self.settings.maxLifetime
        message.state = replace(message.state, nextAttempt=min(retry, expiry))
        await self._save(message)
        message.busy = False
        if message.flushing:
            message.flushing = False
            self._start(message)
        elif not message.state.held and not self._stopping:
            self._schedule(message)

    def _expire(self, message: _Message) -> dict[str, RecipientState]:
        days = self.settings.maxLifetime / 86400
        expired = {}
        for recipient in _pending(message):
            last = message.state.recipient(recipient)
            status = last.dsnStatus if last.dsnStatus[:1] == "4" else "4.4.7"
            reason = f"gave up after {days:g} days in the queue"
            if last.reply:
                reason += f"; last reply: {last.reply}"
            expired[recipient] = replace(
                last, status=FAILED, dsnStatus=status, reply=reason
            )
            self._logOutcome(message, recipient, expired[recipient])
        return expired

    async def _reportFailures(self, message: _Message) -> None:
        # Like Postfix, the sender hears of each failure at the end of the
        # attempt that found it, not when the whole message is done.
        unreported = [
            recipient
            for recipient in _failed(message)
            if not message.state.recipients[recipient].reported
        ]
        if not unreported:
            return
        if message.envelope.sender:
            await self._notify(message, unreported, "failed")
        recipients = dict(message.state.recipients)
        for recipient in unreported:
            recipients[recipient] = replace(
                recipients[recipient], reported=True
            )
        message.state = replace(message.state, recipients=recipients)

    async def _warnOfDelay(self, message: _Message, now: float) -> None:
        settings = self.settings
        age = now - message.envelope.received
        if (
            not settings.delayWarning
            or message.state.warned
            or not message.envelope.sender
            or age < settings.delayWarning
        ):
            return
        await self._notify(message, list(_pending(message)), "delayed")
        message.state = replace(message.state, warned=True)

    async def _notify(
        self, message: _Message, recipients: Sequence[str], action: str
    ) -> None:
        now = self._reactor.seconds()
        until = message.envelope.received + self.settings.maxLifetime
        reports = [
            _report(
                recipient,
                message.state.recipients[recipient],
                action,
                now,
                until if action == "delayed" else None,
            )
            for recipient in recipients
        ]
        headers = await self._inPool(self._store.headers, message.queueID)
        envelope, data = buildReport(
            message.envelope,
            message.queueID,
            reports,
            headers,
            self.settings.hostname,
            now,
        )
        writer = self._spool.begin(envelope)
        writer.write(data)
        await writer.commit()
        maillog.notified(
            message.queueID, writer.queueID, action, message.envelope.sender
        )

    # Disk

    def _save(self, message: _Message) -> Deferred[None]:
        state = message.state
        message.saving = message.saving.addCallback(
            lambda _: self._inPool(
                self._store.saveState, message.queueID, state
            )
        )
        return _follow(message.saving)

    def _remove(self, message: _Message, reason: str) -> Deferred[None]:
        self.messages.pop(message.queueID, None)
        message.saving = message.saving.addCallback(
            lambda _: self._removeFiles(message.queueID)
        )
        message.saving.addCallback(
            lambda _: maillog.removed(message.queueID, reason)
        )
        return _follow(message.saving)

    def _removeFiles(self, queueID: str) -> Deferred[None]:
        # Removals wait for each other and go to the pool together: under
        # load, one trip to the pool removes many delivered messages.
        removed: Deferred[None] = Deferred()
        self._removals.append((queueID, removed))
        if len(self._removals) == 1 and not self._removing:
            self._removeWaiting()
        return removed

    def _removeWaiting(self) -> None:
        batch, self._removals = self._removals, []
        self._removing = True
        removing = self._inPool(_removeAll, self._store, [q for q, _ in batch])

        def removed(problems: list[Exception | None]) -> None:
            self._removing = False
            for (_, done), problem in zip(batch, problems, strict=True):
                if problem is None:
                    done.callback(None)
                else:
                    done.errback(Failure(problem))
            if self._removals:
                self._removeWaiting()

        removing.addCallback(removed)

    def _inPool(
        self, function: Callable[..., _T], *args: object
    ) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def _find(self, queueID: str) -> _Message:
        message = self.messages.get(queueID)
        if message is None or message.deleting:
            raise KeyError(queueID)
        return message


def _pending(message: _Message) -> tuple[str, ...]:
    return message.state.pending(message.envelope)


def _failed(message: _Message) -> tuple[str, ...]:
    return message.state.withStatus(message.envelope, FAILED)


def _removeAll(
    store: QueueStore, queueIDs: list[str]
) -> list[Exception | None]:
    """
    Remove messages from C{store}.

    @return: for each message, L{None} or the exception that stopped its
        removal.
    """
    problems: list[Exception | None] = []
    for queueID in queueIDs:
        try:
            store.remove(queueID)
        except Exception as problem:
            problems.append(problem)
        else:
            problems.append(None)
    return problems


def _messages(count: int) -> str:
    return "1 message" if count == 1 else f"{count} messages"


def _report(
    recipient: str,
    state: RecipientState,
    action: str,
    now: float,
    until: float | None,
) -> RecipientReport:
    return RecipientReport(
        recipient=recipient,
        action=action,
        status=state.dsnStatus or ("5.0.0" if action == "failed" else "4.0.0"),
        diagnostic=state.diagnostic,
        remoteMTA=state.remote,
        reason="" if state.reply == state.diagnostic else state.reply,
        lastAttempt=now,
        willRetryUntil=until,
    )


def _cancel(message: _Message) -> None:
    if message.timer is not None and message.timer.active():
        message.timer.cancel()
    message.timer = None


def _follow(chain: Deferred[None]) -> Deferred[None]:
    """
    @return: a L{Deferred} that fires with C{chain}'s result without
        taking it from the chain's later callbacks.
    """
    follower: Deferred[None] = Deferred()

    def passOn(result: Any) -> Any:
        if isinstance(result, Failure):
            follower.errback(result)
            return None
        follower.callback(None)
        return result

    chain.addBoth(passOn)
    return follower
