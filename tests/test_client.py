"""
Tests of msagate's outbound ESMTP client.

The unit tier plays the next hop by hand over an in-memory transport with
a L{Clock}; the loopback tier delivers to the test sink (L{sink.Sink}) over
127.0.0.1, with real TLS where TLS is the point.
"""

from __future__ import annotations

import base64
import io
from dataclasses import replace

import pytest
from conftest import inReactor
from OpenSSL import SSL
from sink import deliver, plainEndpoint, serverTLS, startSink
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from msagate._certs import CertificateAuthority
from msagate.client import (
    QUIT_TIMEOUT,
    ClientSettings,
    DeliveryError,
    OutboundMessage,
    Response,
    SMTPSession,
    connectSession,
)
from msagate.testing import FakeTLSTransport

HOST = "mx.example.net"
PASSWORD = "s3cret pass"
# Timeouts short enough that a broken loopback test fails rather than
# hangs; the unit tests advance their clock by these.
SETTINGS = ClientSettings(
    heloName="msa.example.org", security="none", timeout=20, dataTimeout=40
)
BODY = b"Subject: test\r\n\r\nHello.\r\n.dot line\r\n"
GREETING = b"220 mx.example.net ESMTP\r\n"
PIPELINING = b"250-mx.example.net\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
PLAIN_EHLO = b"250-mx.example.net\r\n250 8BITMIME\r\n"


def message(
    *recipients: str,
    body: bytes = BODY,
    sender: str = "alice@example.org",
    eightBit: bool = False,
) -> OutboundMessage:
    """
    @return: a message for C{recipients} (bob@example.net by default).
    """
    return OutboundMessage(
        sender=sender,
        recipients=recipients or ("bob@example.net",),
        data=io.BytesIO(body),
        size=len(body),
        eightBit=eightBit,
    )


def outcome(deferred: defer.Deferred):
    """
    @return: the result of a fired L{defer.Deferred}, or its exception.
    @raise AssertionError: when it has not fired.
    """
    results = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    result = results[0]
    return result.value if isinstance(result, Failure) else result


def codes(outcomes) -> list[tuple[str, int]]:
    """
    @return: each recipient with the code of the reply that decided.
    """
    return [(o.recipient, o.response.code) for o in outcomes]


class RecordingTransport(FakeTLSTransport):
    """
    A fake transport that keeps each write apart, and pauses its producer
    once it holds C{limit} octets, as a socket with a full buffer does.
    """

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.limit = limit

    def write(self, data: bytes) -> None:
        super().write(data)
        self.writes.append(data)
        full = self.limit is not None and len(self.value()) >= self.limit
        if full and self.producer is not None:
            self.producer.pauseProducing()


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    Connects a factory's protocol to a L{RecordingTransport}.
    """

    def __init__(self, transport: RecordingTransport) -> None:
        self.transport = transport
        self.protocol = None

    def connect(self, factory):
        self.protocol = factory.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        return defer.succeed(self.protocol)


class NextHop:
    """
    The next hop's side of a client session, played by the test.

    @ivar setUp: the L{defer.Deferred} of L{connectSession}.
    """

    def __init__(self, settings: ClientSettings = SETTINGS, limit=None):
        self.clock = Clock()
        self.transport = RecordingTransport(limit)
        self.endpoint = FakeEndpoint(self.transport)
        self.settings = settings
        self.setUp = connectSession(self.endpoint, HOST, settings, self.clock)
        self.protocol = self.endpoint.protocol

    def send(self, data: bytes) -> bytes:
        """
        Send C{data} to the client.

        @return: what the client wrote in answer.
        """
        self.protocol.dataReceived(data)
        return self.take()

    def take(self) -> bytes:
        """
        @return: what the client wrote since the last call.
        """
        written = self.transport.value()
        self.transport.clear()
        self.transport.writes.clear()
        return written

    def session(self, ehlo: bytes = PIPELINING) -> SMTPSession:
        """
        Greet, answer EHLO with C{ehlo}, and give the session.
        """
        assert self.send(GREETING) == b"EHLO msa.example.org\r\n"
        self.send(ehlo)
        session = outcome(self.setUp)
        assert isinstance(session, SMTPSession), session
        return session

    def drain(self) -> None:
        """
        Let a paused body producer go on until it pauses again or ends.
        """
        self.transport.clear()
        self.transport.producer.resumeProducing()


class TestResponse:
    def test_parts(self):
        """
        A reply has a text, an enhanced status code when it starts with
        one of its class, and shows as the next hop wrote it.
        """
        response = Response(550, ("5.1.1 no such user", "really"))
        assert response.text == "5.1.1 no such user really"
        assert response.status == "5.1.1"
        assert str(response) == "550 5.1.1 no such user really"
        assert not response.positive

    @pytest.mark.parametrize(
        ("code", "line"),
        [(550, "no such user"), (550, "4.1.1 wrong class"), (250, "2.0")],
    )
    def test_noStatus(self, code, line):
        """
        Without a well-formed enhanced code of the reply's class, the
        status is empty.
        """
        assert Response(code, (line,)).status == ""


class TestSettings:
    def test_passwordHidden(self):
        """
        The password does not show in the settings' repr, which may end up
        in a log.
        """
        settings = replace(SETTINGS, username="relay", password=PASSWORD)
        assert PASSWORD not in repr(settings)
        assert "relay" in repr(settings)

    def test_unknownSecurity(self):
        """
        A security mode the client does not know is refused.
        """
        with pytest.raises(ValueError):
            ClientSettings(heloName="a.example", security="tls")


class TestGreeting:
    def test_ehloAfterGreeting(self):
        """
        The client waits for the greeting, multi-line ones too, then says
        EHLO with its name, and learns the extensions, keywords
        upper-cased.
        """
        hop = NextHop()
        assert hop.send(b"220-mx.example.net\r\n") == b""
        assert hop.send(b"220 ESMTP\r\n") == b"EHLO msa.example.org\r\n"
        hop.send(
            b"250-mx.example.net hello\r\n250-size 1000\r\n"
            b"250-AUTH PLAIN LOGIN\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        )
        session = outcome(hop.setUp)
        assert session.extensions == {
            "SIZE": "1000",
            "AUTH": "PLAIN LOGIN",
            "PIPELINING": "",
            "8BITMIME": "",
        }
        assert not session.tlsActive
        assert session.describeTLS() == ""
        assert verifyObject(IHandshakeListener, hop.protocol)

    def test_bareLineFeeds(self):
        """
        Replies whose lines end in a bare LF are understood.
        """
        hop = NextHop()
        hop.send(b"220 mx\n")
        hop.send(b"250-mx\n250 PIPELINING\n")
        assert "PIPELINING" in outcome(hop.setUp).extensions

    @pytest.mark.parametrize("code", [b"421", b"554"])
    def test_refused(self, code):
        """
        A greeting that refuses the session is a temporary failure, even a
        5yz one: the next hop may take mail later.
        """
        hop = NextHop()
        assert hop.send(code + b" 4.3.2 busy\r\n") == b""
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert not error.permanent
        assert error.response.code == int(code)
        assert error.status.startswith("4.")
        assert hop.transport.disconnected

    def test_heloFallback(self):
        """
        A next hop that refuses EHLO with 5yz is greeted with HELO, and
        has no extensions.
        """
        hop = NextHop()
        hop.send(GREETING)
        answer = hop.send(b"502 5.5.1 what?\r\n")
        assert answer == b"HELO msa.example.org\r\n"
        hop.send(b"250 mx.example.net\r\n")
        assert outcome(hop.setUp).extensions == {}

    def test_ehloTemporary(self):
        """
        EHLO refused with 4yz is a temporary failure; HELO is not tried.
        """
        hop = NextHop()
        hop.send(GREETING)
        assert hop.send(b"421 4.3.0 later\r\n") == b""
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert error.status == "4.3.0"

    def test_heloRefused(self):
        """
        HELO refused after EHLO is a temporary failure.
        """
        hop = NextHop()
        hop.send(GREETING)
        hop.send(b"500 no\r\n")
        hop.send(b"550 go away\r\n")
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert not error.permanent

    def test_connectionRefused(self):
        """
        A connection that cannot be made is a temporary failure 4.4.1.
        """

        @implementer(IStreamClientEndpoint)
        class Refusing:
            def connect(self, factory):
                return defer.fail(ConnectionRefusedError("nobody home"))

        setUp = connectSession(Refusing(), HOST, SETTINGS, Clock())
        error = outcome(setUp)
        assert isinstance(error, DeliveryError)
        assert (error.status, error.permanent) == ("4.4.1", False)
        assert "nobody home" in error.reason


class TestMalformed:
    @pytest.mark.parametrize(
        "reply",
        [
            b"25 short\r\n",
            b"abc\r\n",
            b"2500 long code\r\n",
            b"250x\r\n",
            b"150 preliminary\r\n",
            b"220-first\r\n221 second\r\n",
            b"220 " + b"x" * 5000 + b"\r\n",
            b"220 " + b"x" * 5000,
        ],
    )
    def test_greeting(self, reply):
        """
        A reply whose code is not three digits, whose lines disagree on
        the code, or with a line over 4096 octets fails the session
        (temporary) and aborts the connection.
        """
        hop = NextHop()
        hop.send(reply)
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert (error.status, error.permanent) == ("4.5.0", False)
        assert "malformed reply" in error.reason
        assert hop.transport.disconnected

    def test_unexpectedDataReply(self):
        """
        DATA answered with 250 instead of 354 fails the transaction: the
        body was never sent, so no recipient may count as delivered.
        """
        hop = NextHop()
        session = hop.session(PLAIN_EHLO)
        sending = session.send(message())
        hop.send(b"250 ok\r\n")
        hop.send(b"250 ok\r\n")
        hop.send(b"250 ok\r\n")
        error = outcome(sending)
        assert isinstance(error, DeliveryError)
        assert error.status == "4.5.0"
        assert hop.transport.disconnected


class TestTransaction:
    def test_pipelined(self):
        """
        With PIPELINING, MAIL, every RCPT and DATA go out in one write
        (RFC 2920); after 354 the stuffed body and the end marker follow.
        """
        hop = NextHop()
        session = hop.session()
        sending = session.send(message("bob@example.net", "carol@example.net"))
        assert hop.transport.writes == [
            b"MAIL FROM:<alice@example.org>\r\n"
            b"RCPT TO:<bob@example.net>\r\n"
            b"RCPT TO:<carol@example.net>\r\n"
            b"DATA\r\n"
        ]
        hop.take()
        wire = hop.send(
            b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n"
        )
        assert wire == (b"Subject: test\r\n\r\nHello.\r\n..dot line\r\n.\r\n")
        assert not sending.called
        hop.send(b"250 2.0.0 queued as X\r\n")
        assert codes(outcome(sending)) == [
            ("bob@example.net", 250),
            ("carol@example.net", 250),
        ]

    def test_stepwise(self):
        """
        Without PIPELINING the client waits for each reply before the next
        command.
        """
        hop = NextHop()
        session = hop.session(PLAIN_EHLO)
        sending = session.send(message("bob@example.net", "carol@example.net"))
        assert hop.take() == b"MAIL FROM:<alice@example.org>\r\n"
        assert hop.send(b"250 ok\r\n") == b"RCPT TO:<bob@example.net>\r\n"
        assert hop.send(b"250 ok\r\n") == b"RCPT TO:<carol@example.net>\r\n"
        assert hop.send(b"250 ok\r\n") == b"DATA\r\n"
        assert hop.send(b"354 go\r\n").endswith(b"\r\n.\r\n")
        hop.send(b"250 queued\r\n")
        assert codes(outcome(sending)) == [
            ("bob@example.net", 250),
            ("carol@example.net", 250),
        ]

    def test_stepwiseNoRecipient(self):
        """
        Without PIPELINING, when every RCPT is refused no DATA is sent, and
        the next transaction starts with RSET.
        """
        hop = NextHop()
        session = hop.session(PLAIN_EHLO)
        sending = session.send(message("temp@example.net", "perm@example.net"))
        hop.send(b"250 ok\r\n")
        hop.send(b"451 4.2.0 later\r\n")
        assert hop.send(b"550 5.1.1 unknown\r\n") == b""
        assert codes(outcome(sending)) == [
            ("temp@example.net", 451),
            ("perm@example.net", 550),
        ]
        session.send(message())
        assert hop.take() == b"RSET\r\n"
        assert hop.send(b"250 ok\r\n") == b"MAIL FROM:<alice@example.org>\r\n"

    @pytest.mark.parametrize("ehlo", [PIPELINING, PLAIN_EHLO])
    def test_mailRefused(self, ehlo):
        """
        A refused MAIL decides for every recipient; nothing more is sent
        unless pipelined, and RSET comes before the next transaction.
        """
        hop = NextHop()
        session = hop.session(ehlo)
        sending = session.send(message("bob@example.net", "carol@example.net"))
        hop.take()
        replies = b"550 5.7.1 sender refused\r\n"
        if ehlo is PIPELINING:
            replies += b"503 5.5.1 no MAIL\r\n" * 2 + b"503 5.5.1 no RCPT\r\n"
        assert hop.send(replies) == b""
        outcomes = outcome(sending)
        assert [o.response.status for o in outcomes] == ["5.7.1", "5.7.1"]
        session.send(message())
        assert hop.take() == b"RSET\r\n"

    def test_mixedRecipients(self):
        """
        Refused recipients keep their RCPT reply; the accepted ones get
        the reply to the final dot.
        """
        hop = NextHop()
        session = hop.session()
        sending = session.send(
            message("ok@example.net", "temp@example.net", "perm@example.net")
        )
        hop.take()
        hop.send(
            b"250 ok\r\n250 ok\r\n451 4.2.0 later\r\n550 5.1.1 unknown\r\n"
            b"354 go\r\n"
        )
        hop.send(b"250 2.0.0 queued\r\n")
        outcomes = outcome(sending)
        assert codes(outcomes) == [
            ("ok@example.net", 250),
            ("temp@example.net", 451),
            ("perm@example.net", 550),
        ]
        assert outcomes[0].response.text == "2.0.0 queued"

    @pytest.mark.parametrize("ehlo", [PIPELINING, PLAIN_EHLO])
    def test_dataRefused(self, ehlo):
        """
        A refused DATA decides for the accepted recipients, no body is
        sent, and RSET comes before the next transaction.
        """
        hop = NextHop()
        session = hop.session(ehlo)
        sending = session.send(message("ok@example.net", "perm@example.net"))
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"550 5.1.1 unknown\r\n"):
            hop.send(reply)
        assert hop.send(b"451 4.3.0 disk full\r\n") == b""
        assert codes(outcome(sending)) == [
            ("ok@example.net", 451),
            ("perm@example.net", 550),
        ]
        session.send(message())
        assert hop.take() == b"RSET\r\n"

    @pytest.mark.parametrize("code", [b"554 5.6.0 spam", b"452 4.3.1 full"])
    def test_finalRefused(self, code):
        """
        A refusal after the data decides for every accepted recipient; the
        transaction ended cleanly, so the next one needs no RSET.
        """
        hop = NextHop()
        session = hop.session()
        sending = session.send(message("a@example.net", "b@example.net"))
        hop.send(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        hop.send(code + b"\r\n")
        assert [o.response.code for o in outcome(sending)] == [
            int(code[:3])
        ] * 2
        session.send(message())
        assert hop.take().startswith(b"MAIL FROM:")

    def test_pipelinedNoRecipientButData(self):
        """
        DATA accepted although every pipelined RCPT was refused: only the
        end marker is sent, its reply is ignored, and RSET follows.
        """
        hop = NextHop()
        session = hop.session()
        sending = session.send(message("perm@example.net"))
        hop.take()
        answer = hop.send(b"250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n")
        assert answer == b".\r\n"
        hop.send(b"554 5.5.1 no recipients\r\n")
        assert codes(outcome(sending)) == [("perm@example.net", 550)]
        session.send(message())
        assert hop.take() == b"RSET\r\n"

    def test_twoMessages(self):
        """
        Two messages go over one session, one after the other.
        """
        hop = NextHop()
        session = hop.session()
        first = session.send(message(body=b"one\r\n"))
        hop.take()
        hop.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        hop.send(b"250 first\r\n")
        second = session.send(message(body=b"two\r\n"))
        assert hop.take().startswith(b"MAIL FROM:<alice@example.org>")
        assert hop.send(b"250 ok\r\n250 ok\r\n354 go\r\n") == b"two\r\n.\r\n"
        hop.send(b"250 second\r\n")
        assert outcome(first)[0].response.text == "first"
        assert outcome(second)[0].response.text == "second"

    def test_oneAtATime(self):
        """
        A second transaction cannot start while one is under way.
        """
        session = NextHop().session()
        session.send(message())
        with pytest.raises(RuntimeError):
            session.send(message())

    def test_nullSenderAndParameters(self):
        """
        The null sender goes out as <>; SIZE and BODY parameters follow
        when announced and needed.
        """
        hop = NextHop()
        session = hop.session(
            b"250-mx\r\n250-SIZE 0\r\n250-8BITMIME\r\n250 PIPELINING\r\n"
        )
        session.send(message(sender="", eightBit=True))
        assert hop.take().split(b"\r\n")[0] == (
            f"MAIL FROM:<> SIZE={len(BODY)} BODY=8BITMIME".encode()
        )

    def test_sizeTooBig(self):
        """
        A message over the announced SIZE limit fails permanently (5.3.4)
        and nothing is sent; the session stays usable.
        """
        hop = NextHop()
        session = hop.session(b"250-mx\r\n250 SIZE 10\r\n")
        error = outcome(session.send(message()))
        assert isinstance(error, DeliveryError)
        assert (error.status, error.permanent) == ("5.3.4", True)
        assert hop.take() == b""
        assert not hop.transport.disconnected
        session.send(message(body=b"short\r\n"))
        assert hop.take() == b"MAIL FROM:<alice@example.org> SIZE=7\r\n"

    def test_eightBitUnsupported(self):
        """
        EXT-9: an 8-bit message to a next hop without 8BITMIME fails
        permanently with 5.6.3; msagate does not convert, and sends
        nothing.
        """
        hop = NextHop()
        session = hop.session(b"250-mx\r\n250 PIPELINING\r\n")
        error = outcome(session.send(message(eightBit=True)))
        assert isinstance(error, DeliveryError)
        assert (error.status, error.permanent) == ("5.6.3", True)
        assert "8BITMIME" in error.reason
        assert hop.take() == b""

    def test_badAddress(self):
        """
        An address that would break the command line is refused before
        anything is sent.
        """
        hop = NextHop()
        session = hop.session()
        error = outcome(session.send(message("bob@x\r\nDATA")))
        assert isinstance(error, DeliveryError)
        assert error.permanent
        assert hop.take() == b""

    def test_rsetRefused(self):
        """
        A refused RSET fails the session (temporary).
        """
        hop = NextHop()
        session = hop.session(PLAIN_EHLO)
        session.send(message())
        hop.send(b"451 4.3.0 later\r\n")
        sending = session.send(message())
        assert hop.take() == b"RSET\r\n"
        assert hop.send(b"500 what\r\n") == b""
        error = outcome(sending)
        assert isinstance(error, DeliveryError)
        assert not error.permanent
        assert hop.transport.disconnected


class TestFlowControl:
    def test_streamed(self):
        """
        The body is read as the transport takes it: a full transport pauses
        the reading, and each resumption reads more, chunk by chunk.
        """
        body = b"line of the message\r\n" * 1000
        settings = replace(SETTINGS, chunkSize=1000)
        hop = NextHop(settings, limit=4000)
        session = hop.session()
        data = io.BytesIO(body)
        sending = session.send(
            OutboundMessage(
                "a@example.org", ("b@example.net",), data, len(body)
            )
        )
        hop.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        assert verifyObject(IPushProducer, hop.transport.producer)
        assert data.tell() < len(body)

        wire = b""
        while hop.transport.producer is not None:
            reading = data.tell()
            hop.drain()
            wire += hop.transport.value()
            assert data.tell() - reading <= 4000
        assert wire.endswith(b".\r\n")
        hop.send(b"250 ok\r\n")
        assert outcome(sending)[0].response.code == 250

    def test_stalled(self):
        """
        A next hop that takes no more data for the command timeout fails
        the transaction (4.4.2), and the connection is aborted.
        """
        hop = NextHop(replace(SETTINGS, chunkSize=1000), limit=1000)
        session = hop.session()
        sending = session.send(message(body=b"x" * 5000 + b"\r\n"))
        hop.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        hop.clock.advance(SETTINGS.timeout - 1)
        assert not sending.called
        hop.clock.advance(1)
        error = outcome(sending)
        assert isinstance(error, DeliveryError)
        assert error.status == "4.4.2"
        assert "while sending the message data" in error.reason
        assert hop.transport.disconnected

    def test_lostDuringData(self):
        """
        A connection lost while sending the data fails the transaction
        (temporary, 4.4.2).
        """
        hop = NextHop(replace(SETTINGS, chunkSize=1000), limit=1000)
        session = hop.session()
        sending = session.send(message(body=b"x" * 5000 + b"\r\n"))
        hop.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        hop.transport.producer.stopProducing()
        hop.protocol.connectionLost(Failure(ConnectionLost()))
        error = outcome(sending)
        assert isinstance(error, DeliveryError)
        assert (error.status, error.permanent) == ("4.4.2", False)
        assert "connection lost while sending the message data" in str(error)

    def test_unreadable(self):
        """
        A message file that cannot be read fails the transaction
        (temporary) and aborts the connection: the data is half sent.
        """

        class Broken(io.BytesIO):
            def read(self, size=-1):
                raise OSError(5, "Input/output error")

        hop = NextHop()
        session = hop.session()
        sending = session.send(
            OutboundMessage("a@example.org", ("b@example.net",), Broken(), 9)
        )
        hop.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        error = outcome(sending)
        assert isinstance(error, DeliveryError)
        assert "Input/output error" in error.reason
        assert hop.transport.disconnected


class TestTimeouts:
    def test_greeting(self):
        """
        No greeting within the timeout fails the set-up (4.4.2).
        """
        hop = NextHop()
        hop.clock.advance(SETTINGS.timeout - 1)
        assert not hop.setUp.called
        hop.clock.advance(1)
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert error.status == "4.4.2"
        assert "waiting for the greeting" in error.reason
        assert hop.transport.disconnected

    def test_reply(self):
        """
        Each reply has the command timeout; a RCPT left unanswered fails
        the transaction.
        """
        hop = NextHop()
        session = hop.session(PLAIN_EHLO)
        sending = session.send(message())
        hop.clock.advance(SETTINGS.timeout - 1)
        hop.send(b"250 ok\r\n")
        hop.clock.advance(SETTINGS.timeout - 1)
        assert not sending.called
        hop.clock.advance(1)
        error = outcome(sending)
        assert isinstance(error, DeliveryError)
        assert "the reply to RCPT TO:<bob@example.net>" in error.reason

    def test_finalDot(self):
        """
        The reply to the final dot has the longer data timeout.
        """
        hop = NextHop()
        session = hop.session()
        sending = session.send(message())
        hop.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        hop.clock.advance(SETTINGS.dataTimeout - 1)
        assert not sending.called
        hop.clock.advance(1)
        error = outcome(sending)
        assert isinstance(error, DeliveryError)
        assert error.status == "4.4.2"
        assert "the reply to the end of data" in error.reason
        assert hop.transport.disconnected

    def test_lostAfterData(self):
        """
        A connection lost before the reply to the final dot fails the
        transaction, and the session after it.
        """
        hop = NextHop()
        session = hop.session()
        sending = session.send(message())
        hop.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        hop.protocol.connectionLost(Failure(ConnectionLost()))
        error = outcome(sending)
        assert isinstance(error, DeliveryError)
        assert "lost waiting for the reply to the end of data" in error.reason
        again = outcome(session.send(message()))
        assert isinstance(again, DeliveryError)


class TestQuit:
    def test_quit(self):
        """
        QUIT is sent, and once the reply is in the connection is closed.
        """
        hop = NextHop()
        session = hop.session()
        closing = session.quit()
        assert hop.take() == b"QUIT\r\n"
        hop.send(b"221 bye\r\n")
        assert hop.transport.disconnecting
        assert not closing.called
        hop.protocol.connectionLost(Failure(ConnectionLost()))
        assert outcome(closing) is None

    def test_quitUnanswered(self):
        """
        A next hop that answers nothing to QUIT does not make QUIT fail:
        the connection is closed, then aborted.
        """
        hop = NextHop()
        session = hop.session()
        closing = session.quit()
        hop.clock.advance(10)
        assert hop.transport.disconnecting
        hop.clock.advance(10)
        assert outcome(closing) is None
        assert hop.transport.disconnected


class TestAuth:
    def authSession(self, ehlo: bytes, **options) -> NextHop:
        """
        Set up a session under implicit TLS with credentials, up to the
        client's first AUTH line, kept as C{hop.auth}.
        """
        settings = replace(
            SETTINGS, security="implicit", username="relay", password=PASSWORD
        )
        hop = NextHop(replace(settings, **options))
        hop.send(GREETING)
        hop.take()
        hop.auth = hop.send(ehlo)
        return hop

    def test_plain(self, logged):
        """
        AUTH PLAIN sends the credentials in the initial response; after
        235, MAIL carries AUTH=<> (AUTH-17).  Neither the password nor the
        exchange is logged.
        """
        hop = self.authSession(b"250-mx\r\n250 AUTH LOGIN PLAIN\r\n")
        blob = base64.b64encode(b"\0relay\0" + PASSWORD.encode())
        assert hop.auth == b"AUTH PLAIN " + blob + b"\r\n"
        hop.send(b"235 2.7.0 ok\r\n")
        session = outcome(hop.setUp)
        assert session.authenticated
        session.send(message())
        assert hop.take() == b"MAIL FROM:<alice@example.org> AUTH=<>\r\n"

        text = repr([list(event.values()) for event in logged])
        assert PASSWORD not in text
        assert blob.decode() not in text

    def test_login(self, logged):
        """
        AUTH LOGIN, when PLAIN is not offered: user name, then password,
        each in answer to its prompt.
        """
        hop = self.authSession(b"250-mx\r\n250 AUTH LOGIN\r\n")
        assert hop.auth == b"AUTH LOGIN\r\n"
        user = hop.send(b"334 VXNlcm5hbWU6\r\n")
        assert user == base64.b64encode(b"relay") + b"\r\n"
        password = hop.send(b"334 UGFzc3dvcmQ6\r\n")
        assert password == base64.b64encode(PASSWORD.encode()) + b"\r\n"
        hop.send(b"235 2.7.0 ok\r\n")
        assert outcome(hop.setUp).authenticated

        text = repr([list(event.values()) for event in logged])
        assert password.strip().decode() not in text

    def test_refused(self):
        """
        535 is a temporary failure: a credential problem must not bounce
        mail.  The password is in no part of the error.
        """
        hop = self.authSession(b"250-mx\r\n250 AUTH PLAIN\r\n")
        hop.send(b"535 5.7.8 bad credentials\r\n")
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert (error.status, error.permanent) == ("4.7.8", False)
        assert "relay" in error.reason
        assert PASSWORD not in repr(vars(error)) + str(error)
        assert hop.transport.disconnected

    def test_notOffered(self):
        """
        Credentials set but no usable AUTH offered: temporary failure.
        """
        hop = self.authSession(b"250-mx\r\n250 AUTH CRAM-MD5\r\n")
        assert hop.auth == b""
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert not error.permanent

    @pytest.mark.parametrize("security", ["none", "opportunistic"])
    def test_notWithoutTLS(self, security):
        """
        TLS-18: without TLS no AUTH line is sent, even when offered; the
        session fails (temporary).
        """
        hop = self.authSession(
            b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n", security=security
        )
        assert hop.auth == b""
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert not error.permanent
        assert "without TLS" in error.reason


class TestStartTLS:
    def tlsSession(self, security: str = "starttls") -> tuple[NextHop, list]:
        """
        Greet a client in C{security} mode.

        @return: the next hop, and the host names TLS creators were asked
            for.
        """
        creators = []

        def creator(host):
            creators.append(host)
            return object()

        settings = replace(SETTINGS, security=security, tlsCreator=creator)
        hop = NextHop(settings)
        hop.send(GREETING)
        return hop, creators

    def test_startTLS(self):
        """
        STARTTLS is sent when offered; after 220 TLS starts with the
        creator for the host, and EHLO is said again, whose extensions
        replace the first ones.
        """
        hop, creators = self.tlsSession()
        answer = hop.send(b"250-mx\r\n250-SIZE 5\r\n250 STARTTLS\r\n")
        assert answer == b"STARTTLS\r\n"
        assert hop.send(b"220 2.0.0 go\r\n") == b"EHLO msa.example.org\r\n"
        assert hop.transport.tlsStarted
        assert creators == [HOST]
        hop.protocol.handshakeCompleted()
        hop.send(b"250-mx\r\n250 PIPELINING\r\n")
        session = outcome(hop.setUp)
        assert session.tlsActive
        assert session.extensions == {"PIPELINING": ""}
        assert session.describeTLS() == "TLSv1.3 TLS_AES_256_GCM_SHA384"

    def test_notOffered(self):
        """
        STARTTLS required but not offered: temporary failure, nothing more
        is sent.
        """
        hop, _ = self.tlsSession()
        assert hop.send(b"250-mx\r\n250 PIPELINING\r\n") == b""
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert not error.permanent
        assert "does not offer STARTTLS" in error.reason
        assert hop.transport.disconnected

    def test_refused(self):
        """
        STARTTLS required and refused: temporary failure.
        """
        hop, _ = self.tlsSession()
        hop.send(b"250-mx\r\n250 STARTTLS\r\n")
        hop.send(b"454 4.7.0 no TLS today\r\n")
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert error.status == "4.7.0"

    def test_handshakeFailed(self):
        """
        A failed handshake is a temporary failure marked C{tlsFailed}.
        """
        hop, _ = self.tlsSession()
        hop.send(b"250-mx\r\n250 STARTTLS\r\n")
        hop.send(b"220 go\r\n")
        problem = SSL.Error(
            [("SSL routines", "", "certificate verify failed")]
        )
        hop.protocol.connectionLost(Failure(problem))
        error = outcome(hop.setUp)
        assert isinstance(error, DeliveryError)
        assert error.tlsFailed
        assert not error.permanent
        assert "certificate verification failed" in error.reason

    @pytest.mark.parametrize(
        "ehlo",
        [b"250-mx\r\n250 PIPELINING\r\n", b"250-mx\r\n250 STARTTLS\r\n"],
    )
    def test_opportunistic(self, ehlo):
        """
        In opportunistic mode, a next hop without STARTTLS, or refusing
        it, gets the mail in plain text.
        """
        hop, _ = self.tlsSession("opportunistic")
        if hop.send(ehlo) == b"STARTTLS\r\n":
            assert hop.send(b"454 4.7.0 no\r\n") == b""
        session = outcome(hop.setUp)
        assert isinstance(session, SMTPSession)
        assert not session.tlsActive


# The loopback tier.


@pytest.fixture
def sink(runningReactor, authority):
    """
    A sink offering STARTTLS with a certificate for localhost from the
    session's test CA.
    """
    running = inReactor(startSink, tlsOptions=serverTLS(authority))
    yield running
    inReactor(running.stop)


def trusting(authority: CertificateAuthority):
    """
    @return: a TLS creator that verifies the next hop's certificate and
        name against C{authority} (TLS-17).
    """
    root = Certificate.loadPEM(authority.certificate)
    return lambda host: optionsForClientTLS(host, trustRoot=root)


def verified(authority, **options) -> ClientSettings:
    """
    @return: settings that require STARTTLS and verify the next hop with
        C{authority}.
    """
    return replace(
        SETTINGS,
        security="starttls",
        tlsCreator=trusting(authority),
        **options,
    )


def failure(function, *args, **kwargs) -> DeliveryError:
    """
    Run C{function} in the reactor and give the L{DeliveryError} it fails
    with.
    """
    with pytest.raises(DeliveryError) as caught:
        inReactor(function, *args, **kwargs)
    return caught.value


class TestLoopback:
    def test_verifiedTLS(self, sink, authority):
        """
        TLS-17: STARTTLS to a next hop whose certificate a trusted CA
        issued for its name; the message arrives under TLS.
        """
        [outcomes] = inReactor(
            deliver, plainEndpoint(sink), [message()], verified(authority)
        )
        [received] = sink.waitForMessages(1)
        assert codes(outcomes) == [("bob@example.net", 250)]
        assert received.tls
        assert received.data == BODY
        assert received.recipients == ("bob@example.net",)

    def test_describeTLS(self, sink, authority):
        """
        A session under TLS describes the protocol version and cipher.
        """

        async def describe():
            session = await connectSession(
                plainEndpoint(sink),
                "localhost",
                verified(authority),
                globalReactor,
            )
            description = session.describeTLS()
            await session.quit()
            return description

        description = inReactor(
            lambda: defer.Deferred.fromCoroutine(describe())
        )
        assert description.startswith("TLSv1.")

    def test_otherCA(self, sink):
        """
        TLS-17: a certificate from a CA the client does not trust fails
        the handshake: a temporary error with C{tlsFailed}, and no mail
        command is sent.
        """
        stranger = CertificateAuthority("another CA")
        error = failure(
            deliver, plainEndpoint(sink), [message()], verified(stranger)
        )
        assert error.tlsFailed
        assert not error.permanent
        assert "certificate verification failed" in error.reason
        assert sink.messages == []
        assert not any(c.startswith(b"MAIL") for c in sink.commands)

    def test_wrongName(self, runningReactor, authority):
        """
        TLS-17: a certificate from the trusted CA for another name fails
        the handshake (DNS-ID check).
        """
        other = inReactor(
            startSink, tlsOptions=serverTLS(authority, ("other.example",))
        )
        try:
            error = failure(
                deliver, plainEndpoint(other), [message()], verified(authority)
            )
        finally:
            inReactor(other.stop)
        assert error.tlsFailed
        assert "certificate verification failed" in error.reason
        assert other.messages == []

    def test_implicitTLS(self, runningReactor, authority):
        """
        Implicit TLS: the endpoint wraps the connection, the client just
        talks.
        """
        implicit = inReactor(
            startSink, tlsOptions=serverTLS(authority), implicitTLS=True
        )
        try:
            endpoint = wrapClientTLS(
                trusting(authority)("localhost"), plainEndpoint(implicit)
            )
            settings = replace(SETTINGS, security="implicit")
            [outcomes] = inReactor(deliver, endpoint, [message()], settings)
            [received] = implicit.waitForMessages(1)
        finally:
            inReactor(implicit.stop)
        assert codes(outcomes) == [("bob@example.net", 250)]
        assert received.tls

    def test_implicitTLSOtherCA(self, runningReactor, authority):
        """
        Implicit TLS to a certificate that does not verify fails with
        C{tlsFailed}, before any reply.
        """
        implicit = inReactor(
            startSink, tlsOptions=serverTLS(authority), implicitTLS=True
        )
        try:
            creator = trusting(CertificateAuthority("another CA"))
            endpoint = wrapClientTLS(
                creator("localhost"), plainEndpoint(implicit)
            )
            settings = replace(SETTINGS, security="implicit")
            error = failure(deliver, endpoint, [message()], settings)
        finally:
            inReactor(implicit.stop)
        assert error.tlsFailed
        assert implicit.messages == []

    def test_auth(self, sink, authority):
        """
        AUTH to a next hop that demands it, under verified TLS; MAIL
        carries AUTH=<> (AUTH-17).
        """
        sink.configure(requireAuth=True, users={"relay": PASSWORD})
        settings = verified(authority, username="relay", password=PASSWORD)
        inReactor(deliver, plainEndpoint(sink), [message()], settings)
        [received] = sink.waitForMessages(1)
        assert received.user == "relay"
        assert "AUTH=<>" in received.parameters

    def test_authLogin(self, sink, authority):
        """
        AUTH LOGIN when the next hop offers nothing else.
        """
        sink.configure(
            requireAuth=True, users={"relay": PASSWORD}, authMechanisms="LOGIN"
        )
        settings = verified(authority, username="relay", password=PASSWORD)
        inReactor(deliver, plainEndpoint(sink), [message()], settings)
        [received] = sink.waitForMessages(1)
        assert received.user == "relay"
        assert any(c == b"AUTH LOGIN" for c in sink.commands)

    def test_authWrongPassword(self, sink, authority):
        """
        A wrong password is a temporary failure, and no mail is sent.
        """
        sink.configure(requireAuth=True, users={"relay": "another"})
        settings = verified(authority, username="relay", password=PASSWORD)
        error = failure(deliver, plainEndpoint(sink), [message()], settings)
        assert not error.permanent
        assert error.response.code == 535
        assert not any(c.startswith(b"MAIL") for c in sink.commands)

    def test_noAuthWithoutTLS(self, sink):
        """
        TLS-18: a next hop without STARTTLS that offers AUTH receives no
        AUTH line; the delivery fails (temporary).
        """
        sink.configure(offerSTARTTLS=False, users={"relay": PASSWORD})
        settings = replace(
            SETTINGS,
            security="opportunistic",
            username="relay",
            password=PASSWORD,
        )
        error = failure(deliver, plainEndpoint(sink), [message()], settings)
        assert not error.permanent
        assert sink.commands[0].startswith(b"EHLO")
        assert not any(c.upper().startswith(b"AUTH") for c in sink.commands)

    @pytest.mark.parametrize("pipelining", [True, False])
    def test_recipients(self, sink, pipelining):
        """
        Per-recipient outcomes from a real server: 2yz, 4yz and 5yz.
        """
        sink.configure(pipelining=pipelining, offerSTARTTLS=False)
        recipients = ("ok@example.net", "temp@example.net", "perm@example.net")
        [outcomes] = inReactor(
            deliver, plainEndpoint(sink), [message(*recipients)], SETTINGS
        )
        [received] = sink.waitForMessages(1)
        assert codes(outcomes) == [
            ("ok@example.net", 250),
            ("temp@example.net", 451),
            ("perm@example.net", 550),
        ]
        assert received.recipients == ("ok@example.net",)

    def test_severalMessages(self, sink, authority):
        """
        Several messages over one connection, with a failed transaction
        between them (RSET).
        """
        messages = [
            message(body=b"first\r\n"),
            message("perm@example.net"),
            message(body=b"third\r\n"),
        ]
        sink.configure(pipelining=False)
        results = inReactor(
            deliver, plainEndpoint(sink), messages, verified(authority)
        )
        received = sink.waitForMessages(2)
        assert [codes(o)[0][1] for o in results] == [250, 550, 250]
        assert [r.data for r in received] == [b"first\r\n", b"third\r\n"]
        assert sink.sessions == 1
        assert b"RSET" in sink.commands

    def test_heloFallback(self, sink):
        """
        A next hop that does not know EHLO gets HELO, and the mail.
        """
        sink.configure(ehlo=False, offerSTARTTLS=False)
        inReactor(deliver, plainEndpoint(sink), [message()], SETTINGS)
        assert sink.waitForMessages(1)[0].data == BODY

    def test_hangAfterData(self, sink):
        """
        A next hop that never answers the final dot: the transaction fails
        once the data timeout has passed on the client's clock.
        """
        sink.configure(hangAfterData=True, offerSTARTTLS=False)
        clock = Clock()
        results = []

        def start():
            sending = deliver(
                plainEndpoint(sink), [message()], SETTINGS, clock=clock
            )
            sending.addBoth(results.append)

        inReactor(start)
        sink.waitForMessages(1)
        inReactor(clock.advance, SETTINGS.dataTimeout - 1)
        assert results == []
        inReactor(clock.advance, 1)
        # The session then closes the aborted connection, with a timeout.
        inReactor(clock.advance, QUIT_TIMEOUT)
        [error] = [r.value for r in results]
        assert isinstance(error, DeliveryError)
        assert "the reply to the end of data" in error.reason

    def test_dropAfterData(self, sink):
        """
        A next hop that drops the connection after the data: temporary
        failure, connection lost.
        """
        sink.configure(dropAfterData=True, offerSTARTTLS=False)
        error = failure(deliver, plainEndpoint(sink), [message()], SETTINGS)
        assert error.status == "4.4.2"
        assert "connection lost" in error.reason

    def test_connectionRefused(self, runningReactor):
        """
        Nobody listening: temporary failure 4.4.1.
        """
        closed = inReactor(startSink)
        port = closed.port
        inReactor(closed.stop)
        endpoint = TCP4ClientEndpoint(globalReactor, "127.0.0.1", port)
        error = failure(deliver, endpoint, [message()], SETTINGS)
        assert error.status == "4.4.1"
