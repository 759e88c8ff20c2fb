"""
Tests for L{msagate.relay}: the relay manager on a fake clock, with a real
spool and queue on disk, and fake next hops whose answers each test sets.
"""

from __future__ import annotations

import email
import email.policy
import os
import random
from dataclasses import dataclass, field

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import dns
from twisted.names.error import DNSNameError
from zope.interface import implementer
from zope.interface.verify import verifyObject

from msagate.client import (
    ClientSettings,
    DeliveryError,
    RecipientOutcome,
    Response,
)
from msagate.control import IQueueControl
from msagate.destination import LINGER
from msagate.envelope import Envelope
from msagate.interfaces import IConnector
from msagate.nexthop import Host
from msagate.outbound import NextHopConnector
from msagate.queue import QueueStore
from msagate.relay import RelayManager, RelaySettings
from msagate.spool import Spool
from msagate.testing import ClockReactor, ImmediatePool

DAY = 86400.0
MESSAGE = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\n"
    b"Subject: hello\r\nMessage-ID: <1@example.org>\r\n\r\n"
    b"..a line that starts with a dot\r\nbye\r\n"
)
SMARTHOSTS = (Host("relay1.example.net", 25), Host("relay2.example.net", 25))


def reply(code: int, text: str) -> Response:
    return Response(code, (text,))


@dataclass
class FakeSession:
    """
    A next hop's session: answers each recipient by the connector's rule
    and records what it was given.
    """

    connector: FakeConnector
    host: str
    sent: list[tuple[str, tuple[str, ...], bytes]] = field(
        default_factory=list
    )
    closed: bool = False

    def send(self, message):
        self.connector.sending += 1
        if self.connector.hang:
            waiting: Deferred[list[RecipientOutcome]] = Deferred()
            self.connector.hanging.append(waiting)
            return waiting
        data = message.data.read()
        self.sent.append((message.sender, message.recipients, data))
        self.connector.delivered.append(
            (self.host, message.sender, message.recipients, data)
        )
        error = self.connector.sendError
        if error is not None:
            return fail(error)
        return succeed(
            [
                RecipientOutcome(r, self.connector.answer(r))
                for r in message.recipients
            ]
        )

    def quit(self):
        self.closed = True
        return succeed(None)

    def abort(self):
        self.closed = True


@implementer(IConnector)
@dataclass
class FakeConnector:
    """
    Next hops by name: reachable unless listed in C{down}.
    """

    down: dict[str, DeliveryError] = field(default_factory=dict)
    sendError: DeliveryError | None = None
    hang: bool = False
    hanging: list[Deferred] = field(default_factory=list)
    connections: list[tuple[str, str]] = field(default_factory=list)
    sessions: list[FakeSession] = field(default_factory=list)
    delivered: list = field(default_factory=list)
    sending: int = 0

    def answer(self, recipient: str) -> Response:
        local = recipient.partition("@")[0]
        if local.startswith("temp"):
            return reply(451, "4.2.0 try again later")
        if local.startswith("perm"):
            return reply(550, "5.1.1 no such user")
        return reply(250, "2.0.0 ok")

    def connect(self, host, security):
        self.connections.append((str(host), security))
        if host.name in self.down:
            return fail(self.down[host.name])
        session = FakeSession(self, host.name)
        self.sessions.append(session)
        return succeed(session)


class FakeResolver:
    """
    MX records by domain; a domain not listed does not exist.
    """

    def __init__(self, records: dict[str, list[tuple[int, str]]]) -> None:
        self.records = records

    def lookupMailExchange(self, name, timeout=None):
        if name not in self.records:
            return fail(DNSNameError(name))
        answers = [
            dns.RRHeader(
                name, dns.MX, payload=dns.Record_MX(preference, exchange)
            )
            for preference, exchange in self.records[name]
        ]
        return succeed((answers, [], []))


class Relay:
    """
    A relay manager on a fake clock, its spool, queue and next hops.
    """

    def __init__(self, path, **settings) -> None:
        self.clock = ClockReactor()
        self.clock.advance(1_000_000)
        pool = ImmediatePool()
        self.spool = Spool(str(path), pool, self.clock)
        self.spool.prepare()
        self.store = QueueStore(str(path))
        self.connector = FakeConnector()
        self.resolver = FakeResolver(
            {
                "example.net": [(10, "mx1.example.net")],
                "example.com": [(10, "mx.example.com")],
                "example.org": [(10, "mx.example.org")],
            }
        )
        defaults = dict(
            hostname="msa.example.org",
            mode="smarthost",
            smarthosts=SMARTHOSTS,
            retryMinimum=300,
            retryMaximum=3600,
            maxLifetime=5 * DAY,
        )
        self.manager = RelayManager(
            RelaySettings(**{**defaults, **settings}),
            self.store,
            self.spool,
            self.connector,
            pool,
            self.clock,
            resolver=self.resolver,
            randomness=random.Random(7),
        )

    def start(self) -> None:
        self.manager.startService()

    def submit(
        self,
        recipients=("bob@example.net",),
        sender="alice@example.org",
        data=MESSAGE,
    ) -> str:
        envelope = Envelope(
            sender=sender,
            recipients=tuple(recipients),
            user="alice",
            received=self.clock.seconds(),
        )
        writer = self.spool.begin(envelope)
        writer.write(data)
        committed = writer.commit()
        assert committed.called
        return writer.queueID

    def queued(self) -> list[str]:
        return self.store.queueIDs()

    def state(self, queueID):
        return self.store.read(queueID).state


@pytest.fixture
def relay(tmp_path):
    running = Relay(tmp_path / "spool")
    running.start()
    yield running
    running.manager.stopService()


def reports(relay: Relay):
    """
    @return: the delivery status notifications sent, parsed, with their
        recipients.
    """
    found = []
    for _, sender, recipients, data in relay.connector.delivered:
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        if sender == "" and parsed.get_content_type() == "multipart/report":
            found.append((recipients, parsed))
    return found


def test_interface(relay):
    """
    The relay manager serves the administration requests; the fake
    connector is a connector.
    """
    assert verifyObject(IQueueControl, relay.manager)
    assert verifyObject(IConnector, relay.connector)


def test_deliveredAtOnce(relay):
    """
    A committed message goes to the first smarthost at once, byte for byte,
    and leaves the queue once delivered (SMTP-35).
    """
    queueID = relay.submit()

    assert relay.connector.delivered == [
        (
            "relay1.example.net",
            "alice@example.org",
            ("bob@example.net",),
            MESSAGE,
        )
    ]
    assert queueID not in relay.queued()
    assert relay.manager.messages == {}


def test_temporaryFailureRetried(relay):
    """
    A 4xx answer keeps the recipient queued with its reply and a retry
    delay around C{retryMinimum} that grows with each attempt (SMTP-40).
    """
    queueID = relay.submit(["temp@example.net"])

    state = relay.state(queueID)
    assert state.attempts == 1
    assert state.recipients["temp@example.net"].status == "pending"
    assert "451 4.2.0" in state.recipients["temp@example.net"].reply
    first = state.nextAttempt - relay.clock.seconds()
    assert 300 * 0.75 <= first <= 300 * 1.25

    relay.clock.advance(first)
    state = relay.state(queueID)
    assert state.attempts == 2
    second = state.nextAttempt - relay.clock.seconds()
    assert 600 * 0.75 <= second <= 600 * 1.25
    assert len(relay.connector.delivered) == 2
    assert reports(relay) == []


def test_retryDelayCapped(tmp_path):
    """
    Retry delays stop growing at C{retryMaximum}, jitter included.
    """
    relay = Relay(tmp_path / "spool", retryMaximum=1000)
    relay.start()
    queueID = relay.submit(["temp@example.net"])
    for _ in range(6):
        relay.clock.advance(
            relay.state(queueID).nextAttempt - relay.clock.seconds()
        )

    delay = relay.state(queueID).nextAttempt - relay.clock.seconds()
    assert 750 <= delay <= 1000


def test_permanentFailureBounced(relay):
    """
    A 5xx answer fails the recipient: a delivery status notification
    (RFC 3464) goes to the sender with the null sender, and the message
    leaves the queue (SMTP-36).
    """
    queueID = relay.submit(["perm@example.net", "bob@example.net"])

    assert queueID not in relay.queued()
    [(recipients, report)] = reports(relay)
    assert recipients == ("alice@example.org",)
    assert report.get_content_type() == "multipart/report"
    status = report.get_payload()[1]
    text = status.as_string()
    assert "Final-Recipient: rfc822; perm@example.net" in text
    assert "bob@example.net" not in text
    assert "550 5.1.1 no such user" in text
    assert relay.queued() == []


def test_noBounceForNullSender(relay, logged):
    """
    A message with the null sender that fails is removed without any
    notification (SMTP-36: none about notifications).
    """
    relay.submit(["perm@example.net"], sender="")

    assert reports(relay) == []
    assert relay.queued() == []


def test_bounceOfBounceNeverSent(relay):
    """
    The notification itself, when its delivery fails, is not reported to
    anyone (it has the null sender).
    """
    relay.submit(["perm@example.net"], sender="perm-sender@example.org")

    senders = [sender for _, sender, _, _ in relay.connector.delivered]
    assert senders == ["perm-sender@example.org", ""]
    assert relay.queued() == []


def test_expiry(relay):
    """
    A recipient still failing temporarily when the message has been
    queued for C{maxLifetime} is given up with a failure report whose
    status is the last temporary one.
    """
    queueID = relay.submit(["temp@example.net"])
    while queueID in relay.queued():
        state = relay.state(queueID)
        assert state.nextAttempt <= relay.clock.seconds() + 5 * DAY
        relay.clock.advance(state.nextAttempt - relay.clock.seconds())

    [(recipients, report)] = reports(relay)
    text = report.get_payload()[1].as_string()
    assert "Action: failed" in text
    assert "Status: 4.2.0" in text
    assert relay.clock.seconds() - 1_000_000 == pytest.approx(5 * DAY)


def test_delayWarning(tmp_path):
    """
    With C{delayWarning} set, the sender hears once that a message is
    delayed, and the message stays queued.
    """
    relay = Relay(tmp_path / "spool", delayWarning=3000)
    relay.start()
    queueID = relay.submit(["temp@example.net"])
    for _ in range(8):
        relay.clock.advance(
            relay.state(queueID).nextAttempt - relay.clock.seconds()
        )

    [(_, report)] = reports(relay)
    text = report.get_payload()[1].as_string()
    assert "Action: delayed" in text
    assert "Will-Retry-Until:" in text
    assert relay.state(queueID).warned
    assert queueID in relay.queued()


def test_failoverToSecondSmarthost(relay, logged):
    """
    When the first smarthost cannot be reached, the second is used, and
    the log names it with its port.
    """
    relay.connector.down["relay1.example.net"] = DeliveryError(
        "connection refused", "4.4.1", False
    )
    relay.submit()

    assert [host for host, *_ in relay.connector.delivered] == [
        "relay2.example.net"
    ]
    [sent] = [e for e in logged if e.get("outcome") == "sent"]
    assert sent["relay"] == "relay2.example.net:25"


def test_noSmarthostReachable(relay):
    """
    When no smarthost can be reached, every recipient is deferred with
    the reason of the last failure.
    """
    for host in SMARTHOSTS:
        relay.connector.down[host.name] = DeliveryError(
            "connection refused", "4.4.1", False
        )
    queueID = relay.submit(["bob@example.net", "carol@example.net"])

    state = relay.state(queueID)
    assert {r.status for r in state.recipients.values()} == {"pending"}
    assert state.recipients["bob@example.net"].dsnStatus == "4.4.1"


def test_permanentSessionError(relay):
    """
    A permanent failure of the whole transaction (such as a message too
    big for the next hop) fails every recipient of it.
    """
    relay.connector.sendError = DeliveryError(
        "message too big for the next hop", "5.3.4", True
    )
    relay.submit(["bob@example.net"])

    # The notification itself fails the same way, and is dropped.
    senders = [sender for _, sender, _, _ in relay.connector.delivered]
    assert senders == ["alice@example.org", ""]
    assert relay.queued() == []


def test_messagesShareAConnection(tmp_path):
    """
    Messages waiting for the same next hop go over one connection, which
    is closed once no message has come for a moment.
    """
    relay = Relay(tmp_path / "spool", destinationConnections=1)
    relay.start()
    relay.connector.hang = True
    relay.submit()
    relay.submit()
    relay.submit()
    [first] = relay.connector.hanging
    relay.connector.hang = False
    first.callback([RecipientOutcome("bob@example.net", reply(250, "ok"))])

    assert len(relay.connector.sessions) == 1
    [session] = relay.connector.sessions
    assert len(session.sent) == 2
    assert not session.closed
    relay.clock.advance(LINGER)
    assert session.closed


def test_destinationConnectionLimit(tmp_path):
    """
    No more than C{destinationConnections} sessions go to one next hop.
    """
    relay = Relay(tmp_path / "spool", destinationConnections=2)
    relay.start()
    relay.connector.hang = True
    for _ in range(5):
        relay.submit()

    assert len(relay.connector.sessions) == 2
    assert len(relay.connector.hanging) == 2


def test_mxGroupsRecipientsByDomain(tmp_path):
    """
    In MX mode each recipient domain is its own next hop, reached on its
    MX host with opportunistic TLS; an unknown domain fails for good.
    """
    relay = Relay(tmp_path / "spool", mode="mx", smarthosts=())
    relay.start()
    relay.submit(
        ["a@example.net", "b@example.com", "c@example.net", "d@nowhere.test"]
    )

    delivered = {
        host: recipients
        for host, sender, recipients, _ in relay.connector.delivered
        if sender
    }
    assert delivered == {
        "mx1.example.net": ("a@example.net", "c@example.net"),
        "mx.example.com": ("b@example.com",),
    }
    assert (
        "mx1.example.net:25",
        "opportunistic",
    ) in relay.connector.connections
    [(_, report)] = reports(relay)
    assert "d@nowhere.test" in report.get_payload()[1].as_string()


def test_opportunisticFallsBackToPlainText(tmp_path):
    """
    In MX mode a failed TLS handshake is followed by a plain-text attempt
    to the same host (RFC 7435).
    """
    relay = Relay(tmp_path / "spool", mode="mx", smarthosts=())
    relay.start()
    original = relay.connector.connect

    def connect(host, security):
        if security == "opportunistic":
            relay.connector.connections.append((str(host), security))
            error = DeliveryError("handshake failed", "4.7.5", False)
            error.tlsFailed = True
            return fail(error)
        return original(host, security)

    relay.connector.connect = connect
    relay.submit()

    assert relay.connector.connections == [
        ("mx1.example.net:25", "opportunistic"),
        ("mx1.example.net:25", "none"),
    ]
    assert relay.queued() == []


def test_queueLoadedAtStart(tmp_path):
    """
    On start the manager picks up every queued message and tries each when
    its state says (a crash or a restart loses nothing).
    """
    first = Relay(tmp_path / "spool")
    first.connector.hang = True
    first.start()
    queueID = first.submit()
    first.manager.stopService()

    second = Relay(tmp_path / "spool")
    second.start()
    second.clock.advance(0)
    assert second.connector.delivered[0][2] == ("bob@example.net",)
    assert queueID not in second.queued()


def test_deferredMessageWaitsAfterRestart(tmp_path):
    """
    A deferred message is not tried again at start before its time.
    """
    first = Relay(tmp_path / "spool")
    first.start()
    queueID = first.submit(["temp@example.net"])
    first.manager.stopService()

    second = Relay(tmp_path / "spool")
    second.clock.advance(first.clock.seconds() - second.clock.seconds())
    second.start()
    assert second.connector.delivered == []
    second.clock.advance(
        first.state(queueID).nextAttempt - second.clock.seconds()
    )
    assert len(second.connector.delivered) == 1


def test_holdAndRelease(relay):
    """
    A held message is not tried until released; release tries it at once.
    """
    queueID = relay.submit(["temp@example.net"])
    assert relay.manager.hold(queueID).result == f"{queueID} held"
    assert relay.state(queueID).held
    relay.clock.advance(DAY)
    assert len(relay.connector.delivered) == 1

    relay.manager.release(queueID)
    assert not relay.state(queueID).held
    assert len(relay.connector.delivered) == 2


def test_deleteAndFlush(relay):
    """
    Flush tries a deferred message now; delete removes it without a
    report; unknown queue IDs are refused.
    """
    queueID = relay.submit(["temp@example.net"])
    relay.manager.flush(queueID)
    assert len(relay.connector.delivered) == 2

    relay.manager.delete(queueID)
    assert relay.queued() == []
    assert reports(relay) == []
    with pytest.raises(KeyError):
        relay.manager.flush(queueID)


def test_deleteDuringAttempt(relay):
    """
    A message deleted while being delivered leaves the queue when the
    attempt ends, whatever its outcome.
    """
    relay.connector.hang = True
    queueID = relay.submit(["temp@example.net"])
    answer = relay.manager.delete(queueID).result
    assert "when its attempt ends" in answer

    relay.connector.hanging[0].callback(
        [RecipientOutcome("temp@example.net", reply(451, "4.2.0 later"))]
    )
    assert relay.queued() == []


def test_stateSurvivesOnDisk(relay):
    """
    The delivery state on disk holds each recipient's outcome so far.
    """
    queueID = relay.submit(["bob@example.net", "temp@example.net"])

    state = relay.state(queueID)
    assert state.recipients["bob@example.net"].status == "delivered"
    assert state.recipients["temp@example.net"].status == "pending"
    relay.clock.advance(state.nextAttempt - relay.clock.seconds())
    assert relay.connector.delivered[-1][2] == ("temp@example.net",)


def test_flushDuringAttempt(relay):
    """
    A flush that arrives while the message is being tried makes it tried
    again as soon as that attempt ends, not after the retry delay.
    """
    relay.connector.hang = True
    queueID = relay.submit(["temp@example.net"])
    answer = relay.manager.flush(queueID).result
    assert "again at once" in answer

    relay.connector.hanging.pop().callback(
        [RecipientOutcome("temp@example.net", reply(451, "4.2.0 later"))]
    )
    assert len(relay.connector.hanging) == 1
    assert relay.state(queueID).attempts == 1


def test_failureReportedAtOnce(relay):
    """
    A recipient refused for good is reported at the end of the attempt
    that found it, while another recipient of the message is still being
    retried; it is not reported again.
    """
    queueID = relay.submit(["perm@example.net", "temp@example.net"])
    [(_, report)] = reports(relay)
    text = report.get_payload()[1].as_string()
    assert "perm@example.net" in text
    assert "temp@example.net" not in text
    assert relay.state(queueID).recipients["perm@example.net"].reported

    relay.clock.advance(
        relay.state(queueID).nextAttempt - relay.clock.seconds()
    )
    assert len(reports(relay)) == 1


def test_unreachableHostNamed(relay):
    """
    When no smarthost can be reached, the state names the last one tried
    and says why in msagate's words.
    """
    for host in SMARTHOSTS:
        relay.connector.down[host.name] = DeliveryError(
            "connection refused", "4.4.1", False
        )
    queueID = relay.submit()

    state = relay.state(queueID).recipients["bob@example.net"]
    assert state.remote == "relay2.example.net:25"
    assert state.reply == "connection refused"
    assert state.diagnostic == ""


def test_filesRemovedBehindItsBack(relay, logged):
    """
    A message whose files an operator removed by hand is forgotten, with
    a log line, instead of failing at every retry.
    """
    queueID = relay.submit(["temp@example.net"])
    for path in (relay.store.queuePath,):
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
    relay.clock.advance(DAY)

    assert queueID not in relay.manager.messages
    assert any(
        "files left the queue" in e.get("log_format", "") for e in logged
    )


def test_deleteDamagedMessage(relay):
    """
    Delete also removes a message the manager does not track because its
    envelope is damaged.
    """
    queueID = relay.submit(["temp@example.net"])
    relay.manager.messages.pop(queueID)
    assert relay.manager.delete(queueID).result == f"{queueID} deleted"
    assert relay.queued() == []
    with pytest.raises(KeyError):
        relay.manager.delete(queueID)


def test_connectorInterface():
    """
    msagate's connector provides the interface the manager uses.
    """
    connector = NextHopConnector(
        reactor, ClientSettings(heloName="msa.example.org"), None, 30
    )
    assert verifyObject(IConnector, connector)


def test_releaseDuringAttempt(relay):
    """
    A message held and released while it is being tried is tried again as
    soon as that attempt ends.
    """
    relay.connector.hang = True
    queueID = relay.submit(["temp@example.net"])
    relay.manager.hold(queueID)
    relay.manager.release(queueID)

    relay.connector.hanging.pop().callback(
        [RecipientOutcome("temp@example.net", reply(451, "4.2.0 later"))]
    )
    assert len(relay.connector.hanging) == 1


def test_committedWhileStopped(tmp_path):
    """
    A message committed while the manager is stopped (a report written as
    it stops) is left to the queue on disk, which the next start reads.
    """
    relay = Relay(tmp_path / "spool")
    queueID = relay.submit()
    assert relay.manager.messages == {}

    relay.start()
    relay.clock.advance(0)
    assert relay.connector.delivered[0][2] == ("bob@example.net",)
    assert queueID not in relay.queued()
