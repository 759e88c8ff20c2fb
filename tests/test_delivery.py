"""
Delivery end to end: msagate running in the test reactor takes mail over
loopback with STARTTLS and AUTH, and relays it to a real SMTP sink that
stands in for the smarthost (or for a domain's mail exchanger found with a
real DNS server).
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
import threading

import pytest
from conftest import USERS, RunningServer, inReactor, setRelay
from sink import Sink, serverTLS, startSink
from twisted.internet import reactor as globalReactor
from twisted.logger import globalLogPublisher
from twisted.names import dns
from twisted.names.server import DNSServerFactory

from msagate._certs import CertificateAuthority
from msagate.cli import main as msagateCommand
from msagate.control import sendRequest

WAIT = 30
HEADER = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\n"
    b"Subject: relay test\r\nDate: Thu, 03 Dec 2026 12:00:00 +0000\r\n"
    b"Message-ID: <relay-test@example.org>\r\n\r\n"
)


class MailLog:
    """
    The operator log events of the test, and a way to wait for one from
    the main thread.
    """

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._condition = threading.Condition()

    def __call__(self, event: dict) -> None:
        with self._condition:
            self.events.append(event)
            self._condition.notify_all()

    def waitFor(self, predicate, timeout: float = WAIT) -> dict:
        """
        @return: the first event that C{predicate} accepts, once logged.
        """

        def found():
            return next((e for e in self.events if predicate(e)), None)

        with self._condition:
            if not self._condition.wait_for(found, timeout):
                raise AssertionError("no such log event")
            return found()

    def removed(self, queueID: str) -> dict:
        return self.waitFor(
            lambda e: (
                e.get("queueID") == queueID
                and "reason" in e
                and "removed" in e.get("log_text", "")
            )
        )

    def relayed(self, queueID: str, recipient: str) -> dict:
        return self.waitFor(
            lambda e: (
                e.get("queueID") == queueID and e.get("recipient") == recipient
            )
        )


@pytest.fixture
def mailLog():
    log = MailLog()
    globalLogPublisher.addObserver(log)
    yield log
    globalLogPublisher.removeObserver(log)


@pytest.fixture
def sink(runningReactor, authority):
    """
    A sink with STARTTLS, whose certificate the test CA issued.
    """
    running = inReactor(startSink, serverTLS(authority))
    yield running
    inReactor(running.stop)


def relayServer(serverFiles, relay: str) -> RunningServer:
    """
    msagate with the test configuration and a C{[relay]} section.
    """
    setRelay(serverFiles, relay)
    return RunningServer(serverFiles)


@pytest.fixture
def running():
    servers: list[RunningServer] = []
    yield servers
    for server in servers:
        server.stop()


def submit(server: RunningServer, recipients, body: bytes = b"hello\r\n"):
    """
    Submit one message as alice over STARTTLS and AUTH.

    @return: the queue ID from the 250 reply.
    """
    context = ssl.create_default_context(cafile=server.caFile)
    with smtplib.SMTP(
        "127.0.0.1", server.ports["submission"], timeout=WAIT
    ) as client:
        client.starttls(context=context)
        client.login("alice", USERS["alice"].decode())
        client.mail("alice@example.org")
        for recipient in recipients:
            client.rcpt(recipient)
        code, text = client.data(HEADER + body)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def smarthost(sink: Sink, security: str = "starttls", extra: str = "") -> str:
    return (
        "mode = smarthost\n"
        f"smarthosts = localhost:{sink.port}\n"
        f"security = {security}\nca_file = ca.pem\n" + extra
    )


def test_relayedToSmarthost(serverFiles, sink, running, mailLog):
    """
    An accepted message reaches the smarthost over verified STARTTLS
    (TLS-17), byte for byte behind msagate's Received field, with every
    line that starts with a dot intact at and around 16 KiB chunk
    boundaries (SMTP-3, SEC-2); it then leaves the queue (SMTP-35).
    """
    server = relayServer(serverFiles, smarthost(sink))
    running.append(server)
    lines = []
    while sum(map(len, lines)) < 70000:
        lines.append(b"." * (len(lines) % 3 + 1) + b"x" * (len(lines) % 97))
    # Every line starts with a dot, so some straddle the chunk boundaries
    # of the client's reads wherever the Received field puts them.
    body = b"\r\n".join(lines) + b"\r\n.\r\n..\r\n"
    queueID = submit(server, ["bob@example.net"], body)

    [received] = sink.waitForMessages(1)
    assert received.data.startswith(b"Received: ")
    assert received.data.endswith(HEADER + body)
    assert received.tls
    assert not received.bareLFDot
    assert received.recipients == ("bob@example.net",)
    mailLog.removed(queueID)
    assert server.queued() == []


def test_wrongCertificateKeepsMailQueued(
    serverFiles, runningReactor, running, mailLog
):
    """
    A smarthost whose certificate no trusted authority issued gets
    nothing: the message stays queued with the reason logged (TLS-17).
    """
    stranger = CertificateAuthority("another CA")
    sink = inReactor(startSink, serverTLS(stranger))
    try:
        server = relayServer(serverFiles, smarthost(sink))
        running.append(server)
        queueID = submit(server, ["bob@example.net"])

        event = mailLog.relayed(queueID, "bob@example.net")
        assert event["outcome"] == "deferred"
        assert "certificate" in event["reply"].lower()
        assert sink.messages == []
        assert not any(c.startswith(b"MAIL") for c in sink.commands)
    finally:
        inReactor(sink.stop)


def test_authenticatesToSmarthost(serverFiles, sink, running, mailLog):
    """
    With a username, msagate logs in to the smarthost once TLS is up
    (TLS-18) and marks the message's MAIL with AUTH=<> (AUTH-17).
    """
    sink.users = {"relay-user": "relay secret"}
    sink.requireAuth = True
    (serverFiles.parent / "relay-password").write_text("relay secret\n")
    server = relayServer(
        serverFiles,
        smarthost(
            sink,
            extra="username = relay-user\npassword_file = relay-password\n",
        ),
    )
    running.append(server)
    submit(server, ["bob@example.net"])

    [received] = sink.waitForMessages(1)
    assert received.user == "relay-user"
    assert "AUTH=<>" in received.parameters
    logged = " ".join(str(e) for e in mailLog.events)
    assert "relay secret" not in logged


def test_permanentFailureIsReported(serverFiles, sink, running, mailLog):
    """
    A recipient the smarthost refuses for good is reported to the sender
    in a delivery status notification sent with the null sender, while
    the other recipient is delivered (SMTP-36).
    """
    server = relayServer(serverFiles, smarthost(sink))
    running.append(server)
    queueID = submit(server, ["bob@example.net", "perm@example.net"])

    original, report = sink.waitForMessages(2)
    assert original.recipients == ("bob@example.net",)
    assert report.sender == ""
    assert report.recipients == ("alice@example.org",)
    parsed = email.message_from_bytes(report.data, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    status = parsed.get_payload()[1].as_string()
    assert "Final-Recipient: rfc822; perm@example.net" in status
    assert "550 5.1.1" in status
    mailLog.removed(queueID)


def test_deferredThenFlushed(serverFiles, sink, running, mailLog):
    """
    A recipient answered 4xx stays queued, is listed by C{msagate queue
    list}, and goes out when the administrator flushes the queue through
    the control socket (SMTP-40).
    """
    server = relayServer(serverFiles, smarthost(sink))
    running.append(server)
    queueID = submit(server, ["temp@example.net"])
    event = mailLog.relayed(queueID, "temp@example.net")
    assert event["outcome"] == "deferred"

    assert msagateCommand(["--config", str(serverFiles), "queue", "list"]) == 0
    sink.replyFor = lambda recipient: (250, "2.1.5 ok")
    answer = sendRequest(str(server.spool / "control"), "flush", queueID)

    assert queueID in answer
    [received] = sink.waitForMessages(1)
    assert received.recipients == ("temp@example.net",)
    mailLog.removed(queueID)


def test_deliveredByMX(serverFiles, sink, running, mailLog):
    """
    In MX mode msagate asks the configured name server for the recipient
    domain's MX and delivers to it with opportunistic STARTTLS.
    """
    authority = _Zone(
        {
            b"example.net": [
                dns.Record_MX(10, b"localhost", ttl=60),
            ]
        }
    )
    factory = DNSServerFactory(authorities=[authority])
    protocol = dns.DNSDatagramProtocol(factory)
    port = inReactor(
        lambda: globalReactor.listenUDP(0, protocol, interface="127.0.0.1")
    )
    try:
        server = relayServer(
            serverFiles,
            f"mode = mx\nmx_port = {sink.port}\n"
            f"dns_servers = 127.0.0.1:{port.getHost().port}\n",
        )
        running.append(server)
        queueID = submit(server, ["bob@example.net"])

        [received] = sink.waitForMessages(1)
        assert received.tls
        mailLog.removed(queueID)
    finally:
        inReactor(port.stopListening)


class _Zone:
    """
    A tiny authority: the records of each name, nothing else.
    """

    def __init__(self, records: dict[bytes, list]) -> None:
        self.records = records

    def query(self, query, timeout=None):
        from twisted.internet.defer import fail, succeed
        from twisted.names.error import DomainError

        name = query.name.name.lower()
        answers = [
            dns.RRHeader(name, record.TYPE, dns.IN, 60, record, auth=True)
            for record in self.records.get(name, [])
            if record.TYPE == query.type
        ]
        if name not in self.records:
            return fail(DomainError(name))
        return succeed((answers, [], []))


def test_implicitTLSSmarthost(serverFiles, runningReactor, authority, running):
    """
    A smarthost on a port with TLS from the first byte (RFC 8314) gets
    the message over TLS whose certificate msagate checked (TLS-17).
    """
    sink = inReactor(startSink, serverTLS(authority), implicitTLS=True)
    try:
        server = relayServer(serverFiles, smarthost(sink, "implicit"))
        running.append(server)
        submit(server, ["bob@example.net"])

        [received] = sink.waitForMessages(1)
        assert received.tls
    finally:
        inReactor(sink.stop)


def test_holdAndReleaseThroughTheCommand(serverFiles, sink, running, mailLog):
    """
    C{msagate queue hold} keeps a deferred message from being tried, even
    by a flush; C{release} sends it at once.
    """
    server = relayServer(serverFiles, smarthost(sink))
    running.append(server)
    queueID = submit(server, ["temp@example.net"])
    mailLog.relayed(queueID, "temp@example.net")
    sink.replyFor = lambda recipient: (250, "2.1.5 ok")
    config = ["--config", str(serverFiles), "queue"]

    assert msagateCommand([*config, "hold", queueID]) == 0
    assert msagateCommand([*config, "flush", queueID]) == 0
    assert sink.messages == []
    assert msagateCommand([*config, "release", queueID]) == 0

    [received] = sink.waitForMessages(1)
    assert received.recipients == ("temp@example.net",)
    mailLog.removed(queueID)
