"""
Unit tests of the submission protocol's state machine, over an in-memory
transport with a L{Clock}.
"""

from __future__ import annotations

import base64
import re

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import WrappingFactory

from msagate.errors import TemporaryAuthFailure
from msagate.protocol import SessionSettings, SubmissionProtocol, noDelay
from msagate.realm import SubmissionRealm
from msagate.testing import (
    FakeTLSTransport,
    MemorySpool,
    StaticSenderSource,
    connectedSession,
    memoryPortal,
)
from msagate.throttle import AuthThrottle

PASSWORD = b"correct horse"
PLAIN = base64.b64encode(b"\0alice\0" + PASSWORD).decode()
MESSAGE = (
    b"From: alice@example.org\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Hi Bob.\r\n"
)
REPLY = re.compile(rb"^(\d{3})([ -])(.*)$")


def portal(**overrides) -> Portal:
    senders = {"alice": ["alice@example.org", "@team.example.org"]}
    return memoryPortal({b"alice": PASSWORD, b"bob": b"pw"}, senders)


class Session:
    """
    A protocol on a fake transport, with helpers that send lines and
    collect complete replies.
    """

    def __init__(self, **options) -> None:
        self.spool = options.pop("spool", MemorySpool())
        self.protocol, self.transport, self.clock = connectedSession(
            options.pop("portal", None) or portal(),
            spool=self.spool,
            **options,
        )
        self.greeting = self.take()

    def send(self, data: bytes) -> list[bytes]:
        self.protocol.dataReceived(data)
        return self.take()

    def take(self) -> list[bytes]:
        """
        @return: the complete reply lines written since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return data.split(b"\r\n")[:-1]

    def codes(self, data: bytes) -> list[bytes]:
        return [line[:9] for line in self.send(data) if line[3:4] == b" "]

    def login(self) -> None:
        self.send(b"EHLO client.example\r\n")
        assert self.codes(b"STARTTLS\r\n") == [b"220 2.0.0"]
        assert self.send(b"EHLO client.example\r\n")[0].startswith(b"250-")
        assert self.codes(f"AUTH PLAIN {PLAIN}\r\n".encode()) == [b"235 2.7.0"]


def submitted(session: Session, message: bytes = MESSAGE) -> list[bytes]:
    session.login()
    return session.codes(
        b"MAIL FROM:<alice@example.org>\r\n"
        b"RCPT TO:<bob@example.net>\r\n"
        b"DATA\r\n"
    ) + session.codes(message + b".\r\n")


class TestGreeting:
    def test_greeting(self):
        """
        The greeting names the server (SMTP-12) and has no enhanced code.
        """
        assert Session().greeting == [b"220 msa.example.org ESMTP ready"]

    def test_ehloBeforeTLS(self):
        """
        Before TLS, EHLO offers STARTTLS and no AUTH (AUTH-1, TLS-1), and
        every extension msagate serves (SMTP-33).
        """
        lines = Session().send(b"EHLO client.example\r\n")
        assert lines[0] == b"250-msa.example.org greets client.example"
        keywords = [line[4:] for line in lines[1:]]
        assert keywords == [
            b"PIPELINING",
            b"SIZE 26214400",
            b"8BITMIME",
            b"ENHANCEDSTATUSCODES",
            b"STARTTLS",
        ]

    def test_ehloAfterTLS(self):
        """
        Under TLS, EHLO offers AUTH PLAIN LOGIN and no STARTTLS (TLS-6,
        AUTH-18).
        """
        session = Session(implicitTLS=True)
        keywords = [line[4:] for line in session.send(b"EHLO c.example\r\n")]
        assert b"AUTH PLAIN LOGIN" in keywords
        assert b"STARTTLS" not in keywords

    def test_helo(self):
        """
        HELO gets a single-line 250 without extensions (SMTP-13), whatever
        name the client gives (SMTP-16).
        """
        lines = Session().send(b"HELO client.example\r\n")
        assert lines == [b"250 msa.example.org greets client.example"]

    @pytest.mark.parametrize(
        "line",
        [b"EHLO", b"EHLO a\nb", b"EHLO a b", b"EHLO -bad-", b"HELO [1.2.3]"],
    )
    def test_badHelloArgument(self, line):
        """
        A missing or malformed EHLO argument gets 501 (SMTP-15).
        """
        assert Session().codes(line + b"\r\n") == [b"501 5.5.4"]

    def test_addressLiteral(self):
        """
        An address literal is a valid EHLO argument (SMTP-15).
        """
        lines = Session().send(b"EHLO [IPv6:2001:db8::1]\r\n")
        assert lines[0] == b"250-msa.example.org greets [IPv6:2001:db8::1]"


class TestBeforeTLS:
    @pytest.mark.parametrize(
        "command",
        [
            b"MAIL FROM:<a@example.org>",
            b"AUTH PLAIN " + PLAIN.encode(),
            b"VRFY alice",
            b"RCPT TO:<a@example.org>",
            b"DATA",
        ],
    )
    def test_refused(self, command):
        """
        Before TLS, commands other than the greeting and session commands
        get 530 5.7.0 (TLS-7, AUTH-1, SUB-26).
        """
        session = Session()
        session.send(b"EHLO c.example\r\n")
        assert session.codes(command + b"\r\n") == [b"530 5.7.0"]

    @pytest.mark.parametrize(
        "command, code",
        [
            (b"NOOP", b"250 2.0.0"),
            (b"RSET", b"250 2.0.0"),
            (b"HELP", b"214 2.0.0"),
            (b"NOOP ignored", b"250 2.0.0"),
        ],
    )
    def test_served(self, command, code):
        """
        NOOP, RSET and HELP work before EHLO and TLS and are answered at
        once (SMTP-34, SMTP-21, EXT-4).
        """
        assert Session().codes(command + b"\r\n") == [code]

    def test_starttls(self):
        """
        STARTTLS answers 220 and starts TLS on the transport (TLS-3).
        """
        session = Session()
        session.send(b"EHLO c.example\r\n")
        assert session.codes(b"STARTTLS\r\n") == [b"220 2.0.0"]
        assert session.transport.tlsStarted

    def test_starttlsDiscardsPipelinedPlaintext(self):
        """
        Commands sent in plaintext behind STARTTLS are never executed
        (TLS-5, SEC-4).
        """
        session = Session()
        session.send(b"EHLO c.example\r\n")
        lines = session.send(b"STARTTLS\r\nNOOP\r\nEHLO evil.example\r\n")
        assert lines == [b"220 2.0.0 Ready to start TLS"]

    def test_starttlsResetsState(self):
        """
        After STARTTLS the client must greet again (TLS-4).
        """
        session = Session()
        session.send(b"EHLO c.example\r\nSTARTTLS\r\n")
        assert session.codes(b"AUTH PLAIN " + PLAIN.encode() + b"\r\n") == [
            b"503 5.5.1"
        ]

    def test_starttlsArgument(self):
        """
        STARTTLS takes no argument (TLS-2).
        """
        assert Session().codes(b"STARTTLS now\r\n") == [b"501 5.5.4"]

    def test_starttlsTwice(self):
        """
        STARTTLS under TLS gets 503 (TLS-6).
        """
        session = Session(implicitTLS=True)
        assert session.codes(b"STARTTLS\r\n") == [b"503 5.5.1"]

    def test_starttlsUnavailable(self):
        """
        Without a certificate STARTTLS is neither offered nor served
        (TLS-1, TLS-3).
        """
        session = Session(startTLS=False)
        assert b"250 STARTTLS" not in session.send(b"EHLO c.example\r\n")
        assert session.codes(b"STARTTLS\r\n") == [b"454 4.7.0"]


class TestAuth:
    def session(self, **options) -> Session:
        session = Session(implicitTLS=True, **options)
        session.send(b"EHLO c.example\r\n")
        return session

    def test_plainInitialResponse(self):
        """
        AUTH PLAIN with an initial response authenticates (AUTH-2).
        """
        session = self.session()
        assert session.codes(f"AUTH PLAIN {PLAIN}\r\n".encode()) == [
            b"235 2.7.0"
        ]

    def test_plainEmptyChallenge(self):
        """
        AUTH PLAIN without a response gets the exact empty challenge, and
        the response follows on its own line (AUTH-3).
        """
        session = self.session()
        assert session.send(b"AUTH PLAIN\r\n") == [b"334 "]
        assert session.codes(PLAIN.encode() + b"\r\n") == [b"235 2.7.0"]

    def test_login(self):
        """
        AUTH LOGIN prompts for the user name and the password.
        """
        session = self.session()
        prompt = session.send(b"AUTH LOGIN\r\n")
        assert prompt == [b"334 " + base64.b64encode(b"Username:")]
        assert session.send(base64.b64encode(b"alice") + b"\r\n") == [
            b"334 " + base64.b64encode(b"Password:")
        ]
        reply = session.codes(base64.b64encode(PASSWORD) + b"\r\n")
        assert reply == [b"235 2.7.0"]

    def test_loginInitialResponse(self):
        """
        AUTH LOGIN may carry the user name, and then prompts only for the
        password.
        """
        session = self.session()
        user = base64.b64encode(b"alice")
        assert session.send(b"AUTH LOGIN " + user + b"\r\n") == [
            b"334 " + base64.b64encode(b"Password:")
        ]
        reply = session.codes(base64.b64encode(PASSWORD) + b"\r\n")
        assert reply == [b"235 2.7.0"]

    def test_wrongPassword(self):
        """
        A wrong password and an unknown user get the same 535 5.7.8, after
        the failure delay (AUTH-11).
        """
        replies = []
        for credentials in (b"\0alice\0wrong", b"\0nobody\0wrong"):
            session = self.session()
            line = b"AUTH PLAIN " + base64.b64encode(credentials) + b"\r\n"
            assert session.send(line) == []
            session.clock.advance(1)
            replies.append(session.take())
        assert replies[0] == replies[1]
        assert replies[0] == [b"535 5.7.8 Authentication credentials invalid"]

    def test_tooManyFailures(self):
        """
        Three failures are answered 535, each after a longer delay; the
        next AUTH ends the session with 421 4.7.0 (AUTH-15).
        """
        session = self.session()
        bad = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0x") + b"\r\n"
        for delay in (1, 2, 3):
            session.send(bad)
            session.clock.advance(delay - 0.5)
            assert session.take() == []
            session.clock.advance(0.5)
            assert session.take()[0].startswith(b"535 5.7.8")
            assert not session.transport.disconnecting
        good = f"AUTH PLAIN {PLAIN}\r\n".encode()
        assert session.codes(good) == [b"421 4.7.0"]
        assert session.transport.disconnecting

    @pytest.mark.parametrize("response", [b"YW!Jj", b"=AAA", b"AAA=BBB"])
    def test_badBase64(self, response):
        """
        A response that is not strict base64 gets 501 5.5.2 (AUTH-5).
        """
        session = self.session()
        assert session.codes(b"AUTH PLAIN " + response + b"\r\n") == [
            b"501 5.5.2"
        ]

    def test_cancel(self):
        """
        A response of '*' cancels the exchange with 501 (AUTH-4).
        """
        session = self.session()
        session.send(b"AUTH PLAIN\r\n")
        assert session.codes(b"*\r\n") == [b"501 5.7.0"]
        assert session.codes(b"NOOP\r\n") == [b"250 2.0.0"]

    def test_unknownMechanism(self):
        """
        An unknown mechanism gets 504 (AUTH-8).
        """
        assert self.session().codes(b"AUTH CRAM-MD5\r\n") == [b"504 5.5.4"]

    def test_again(self):
        """
        A second AUTH gets 503 (AUTH-6).
        """
        session = self.session()
        session.send(f"AUTH PLAIN {PLAIN}\r\n".encode())
        assert session.codes(f"AUTH PLAIN {PLAIN}\r\n".encode()) == [
            b"503 5.5.1"
        ]

    def test_authzidDiffers(self):
        """
        PLAIN with an authorisation identity other than the user is
        refused like bad credentials (AUTH-14).
        """
        session = self.session()
        blob = base64.b64encode(b"bob\0alice\0" + PASSWORD)
        session.send(b"AUTH PLAIN " + blob + b"\r\n")
        session.clock.advance(1)
        assert session.take()[0].startswith(b"535 5.7.8")

    def test_longResponse(self):
        """
        An exchange line over 12288 octets gets 500 5.5.6 and the session
        goes on (AUTH-10).
        """
        session = self.session()
        session.send(b"AUTH PLAIN\r\n")
        assert session.codes(b"A" * 20000 + b"\r\n") == [b"500 5.5.6"]
        assert session.codes(b"NOOP\r\n") == [b"250 2.0.0"]

    def test_temporaryFailure(self):
        """
        A checker whose backend is down yields 454 4.7.0, never 535
        (AUTH-12).
        """

        class Down:
            credentialInterfaces = portal().checkers.keys()

            def requestAvatarId(self, credentials):
                return defer.fail(TemporaryAuthFailure("directory down"))

        broken = Portal(SubmissionRealm(StaticSenderSource({})), [Down()])
        session = self.session(portal=broken)
        assert session.codes(f"AUTH PLAIN {PLAIN}\r\n".encode()) == [
            b"454 4.7.0"
        ]

    def test_neverLogged(self):
        """
        No log event carries the password or the AUTH exchange, in clear
        or in base64 (SEC-9, STYLE).
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            session = self.session()
            session.send(b"AUTH PLAIN\r\n")
            session.send(PLAIN.encode() + b"\r\n")
            wrong = base64.b64encode(b"\0alice\0secret-wrong")
            self.session().send(b"AUTH PLAIN " + wrong + b"\r\n")
        finally:
            globalLogPublisher.removeObserver(events.append)
        text = repr(events).encode()
        assert events
        for secret in (PASSWORD, PLAIN.encode(), b"secret-wrong", wrong):
            assert secret not in text


class SlowChecker:
    """
    A checker that answers only when the test says so.
    """

    def __init__(self, inner):
        self.inner = inner
        self.credentialInterfaces = inner.credentialInterfaces
        self.waiting: list[tuple[defer.Deferred, object]] = []

    def requestAvatarId(self, credentials):
        waiting: defer.Deferred = defer.Deferred()
        self.waiting.append((waiting, credentials))
        return waiting

    def release(self):
        for waiting, credentials in self.waiting:
            result = defer.maybeDeferred(
                self.inner.requestAvatarId, credentials
            )
            result.chainDeferred(waiting)


class TestPipelining:
    def test_repliesInOrderBehindSlowAuth(self):
        """
        AUTH, MAIL, RCPT and DATA in one write are answered in order once
        the slow credential check completes (AUTH-19, EXT-3).
        """
        base = portal()
        slow = SlowChecker(list(base.checkers.values())[0])
        slowPortal = Portal(base.realm, [slow])
        session = Session(implicitTLS=True, portal=slowPortal)
        session.send(b"EHLO c.example\r\n")

        batch = (
            f"AUTH PLAIN {PLAIN}\r\n".encode()
            + b"MAIL FROM:<alice@example.org>\r\n"
            b"RCPT TO:<bob@example.net>\r\n"
            b"RCPT TO:<carol@example.net>\r\n"
            b"DATA\r\n"
        )
        assert session.send(batch) == []
        slow.release()
        codes = [line[:9] for line in session.take()]
        assert codes == [
            b"235 2.7.0",
            b"250 2.1.0",
            b"250 2.1.5",
            b"250 2.1.5",
            b"354 End d",
        ]

    def test_errorDoesNotDiscardInput(self):
        """
        A failed command in a pipelined group leaves the rest of the group
        to be served (EXT-5).
        """
        session = Session()
        session.login()
        codes = session.codes(
            b"MAIL FROM:<bad@@x>\r\nRSET\r\nMAIL FROM:<alice@example.org>\r\n"
        )
        assert codes == [b"501 5.1.7", b"250 2.0.0", b"250 2.1.0"]

    def test_dataWithBody(self):
        """
        A client that sends the message before the 354 reply is cut off
        (SEC-3).
        """
        session = Session()
        session.login()
        codes = session.codes(
            b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\n"
            b"DATA\r\n" + MESSAGE + b".\r\n"
        )
        assert codes == [b"250 2.1.0", b"250 2.1.5", b"554 5.5.0"]
        assert session.transport.disconnecting
        assert session.spool.messages == []


class TestBeforeAuth:
    @pytest.mark.parametrize(
        "command",
        [
            b"MAIL FROM:<alice@example.org>",
            b"RCPT TO:<b@example.net>",
            b"DATA",
            b"VRFY alice",
        ],
    )
    def test_refused(self, command):
        """
        Under TLS but before AUTH, mail commands and VRFY get 530 5.7.0
        (SUB-4, SUB-5, SUB-6).
        """
        session = Session(implicitTLS=True)
        session.send(b"EHLO c.example\r\n")
        assert session.codes(command + b"\r\n") == [b"530 5.7.0"]


class TestTransaction:
    def session(self) -> Session:
        session = Session()
        session.login()
        return session

    def test_mailBeforeAuth(self):
        """
        MAIL before AUTH gets 530 5.7.0 (SUB-4), whatever the address
        tricks (SUB-26).
        """
        session = Session(implicitTLS=True)
        session.send(b"EHLO c.example\r\n")
        for path in (
            b"<u@ext.example>",
            b"<u%ext@msa.example>",
            b'<"u@ext"@msa.example>',
            b"<@msa.example:u@ext.example>",
        ):
            assert session.codes(b"MAIL FROM:" + path + b"\r\n") == [
                b"530 5.7.0"
            ]

    @pytest.mark.parametrize(
        "line, code",
        [
            (b"MAIL FROM:<alice@example.org>", b"250 2.1.0"),
            (b"mail from:<Alice@Example.ORG>", b"250 2.1.0"),
            (b"MAIL FROM:<alice+list@example.org>", b"250 2.1.0"),
            (b"MAIL FROM:<anyone@team.example.org>", b"250 2.1.0"),
            (b"MAIL FROM:<>", b"250 2.1.0"),
            (b"MAIL FROM:<bob@example.org>", b"553 5.7.1"),
            (b"MAIL FROM:<alice@host>", b"554 5.1.8"),
            (b"MAIL FROM:<a@@b.example>", b"501 5.1.7"),
            (b"MAIL FROM: <alice@example.org>", b"501 5.5.4"),
            (b"MAIL FROM:alice@example.org", b"501 5.5.4"),
            (b"MAIL FROM:<alice@example.org> FOO=1", b"555 5.5.4"),
            (b"MAIL FROM:<alice@example.org> SIZE=abc", b"501 5.5.4"),
            (b"MAIL FROM:<alice@example.org> SIZE=1 SIZE=2", b"501 5.5.4"),
            (b"MAIL FROM:<alice@example.org> SIZE=26214401", b"552 5.3.4"),
            (b"MAIL FROM:<alice@example.org> SIZE=26214400", b"250 2.1.0"),
            (b"MAIL FROM:<alice@example.org> BODY=8BITMIME", b"250 2.1.0"),
            (b"MAIL FROM:<alice@example.org> BODY=BINARYMIME", b"501 5.5.4"),
            (b"MAIL FROM:<alice@example.org> AUTH=<>", b"250 2.1.0"),
            (b"MAIL FROM:<alice@example.org> AUTH=x+ZZ", b"501 5.5.4"),
            (b"MAIL FROM:<alice@b_c.example>", b"501 5.1.7"),
            (b"MAIL FROM:<\xc3\xbc@example.org>", b"501 5.5.2"),
        ],
    )
    def test_mail(self, line, code):
        """
        MAIL's sender is checked for syntax (SUB-14, SMTP-26, SMTP-28),
        qualification (SUB-11), ownership (SUB-16, SEC-6, SUB-7) and
        parameters (EXT-7, EXT-9, AUTH-16, SMTP-25).
        """
        assert self.session().codes(line + b"\r\n") == [code]

    @pytest.mark.parametrize(
        "line, code",
        [
            (b"RCPT TO:<bob@example.net>", b"250 2.1.5"),
            (b"RCPT TO:<POSTMASTER>", b"250 2.1.5"),
            (b"RCPT TO:<@h1.example,@h2.example:u@example.net>", b"250 2.1.5"),
            (b"RCPT TO:<b@sales>", b"554 5.1.2"),
            (b'RCPT TO:<"x@y.example>', b"501 5.1.3"),
            (b"RCPT TO:<>", b"501 5.1.3"),
            (b"RCPT TO:<bob@example.net> NOTIFY=NEVER", b"555 5.5.4"),
        ],
    )
    def test_rcpt(self, line, code):
        """
        RCPT checks syntax (SUB-14), qualification (SUB-11), accepts
        Postmaster (SUB-19) and source routes (SMTP-29).
        """
        session = self.session()
        session.send(b"MAIL FROM:<alice@example.org>\r\n")
        assert session.codes(line + b"\r\n") == [code]

    def test_minimumCommandSet(self):
        """
        None of the commands RFC 5321 requires gets 500 (SMTP-31).
        """
        session = self.session()
        for verb in (
            b"EHLO c.example",
            b"HELO c.example",
            b"MAIL FROM:<>",
            b"RCPT TO:<b@example.net>",
            b"RSET",
            b"NOOP",
            b"VRFY x",
            b"DATA",
        ):
            assert not session.send(verb + b"\r\n")[-1].startswith(b"500")

    def test_longCommandLine(self):
        """
        A MAIL line of 511 octets with parameters is not too long (SMTP-4).
        """
        session = self.session()
        path = b"a" * 64 + b"@" + b".".join([b"d" * 60] * 3) + b".org"
        line = b"MAIL FROM:<" + path + b"> BODY=8BITMIME AUTH="
        line += b"x" * (509 - len(line))
        assert len(line) + 2 == 511
        assert session.codes(line + b"\r\n") == [b"553 5.7.1"]

    def test_sequence(self):
        """
        RCPT before MAIL, DATA before RCPT, a second MAIL and AUTH in a
        transaction get 503 or 554 (SMTP-18, SMTP-19, SMTP-20, EXT-6,
        AUTH-6, AUTH-7).
        """
        session = self.session()
        assert session.codes(b"RCPT TO:<b@example.net>\r\n") == [b"503 5.5.1"]
        assert session.codes(b"DATA\r\n") == [b"503 5.5.1"]
        session.send(b"MAIL FROM:<alice@example.org>\r\n")
        assert session.codes(b"MAIL FROM:<>\r\n") == [b"503 5.5.1"]
        assert session.codes(b"DATA\r\n") == [b"554 5.5.1"]
        assert session.codes(b"AUTH PLAIN\r\n") == [b"503 5.5.1"]

    def test_ehloResetsTransaction(self):
        """
        A new EHLO clears the transaction (SMTP-14).
        """
        session = self.session()
        session.send(b"MAIL FROM:<alice@example.org>\r\nEHLO c.example\r\n")
        assert session.codes(b"RCPT TO:<b@example.net>\r\n") == [b"503 5.5.1"]

    def test_recipientLimit(self):
        """
        100 recipients are accepted, the 101st gets 452 4.5.3 and the
        others stay (SMTP-8).
        """
        session = self.session()
        session.send(b"MAIL FROM:<alice@example.org>\r\n")
        lines = b"".join(
            b"RCPT TO:<r%d@example.net>\r\n" % n for n in range(101)
        )
        codes = session.codes(lines)
        assert codes == [b"250 2.1.5"] * 100 + [b"452 4.5.3"]
        session.send(b"DATA\r\n")
        session.send(MESSAGE + b".\r\n")
        assert len(session.spool.messages[0][1].recipients) == 100

    @pytest.mark.parametrize(
        "line, code",
        [
            (b"VRFY alice", b"252 2.0.0"),
            (b"EXPN list", b"502 5.5.1"),
            (b"ETRN example.org", b"502 5.5.1"),
            (b"FOO", b"500 5.5.2"),
            (b"DATA x", b"501 5.5.4"),
            (b"RSET x", b"501 5.5.4"),
            (b"QUIT x", b"501 5.5.4"),
            (b"XCLIENT ADDR=10.0.0.1", b"500 5.5.2"),
            (b"XFORWARD NAME=x", b"500 5.5.2"),
        ],
    )
    def test_otherCommands(self, line, code):
        """
        VRFY never enumerates users (SMTP-30, SEC-8); unimplemented and
        unknown commands get 502 and 500 (SMTP-24, EXT-18), XCLIENT and
        XFORWARD included (SEC-10); DATA, RSET and QUIT take no parameters
        (SMTP-23).
        """
        assert self.session().codes(line + b"\r\n") == [code]

    def test_quit(self):
        """
        QUIT gets 221 and closes (SMTP-22).
        """
        session = Session()
        assert session.codes(b"QUIT\r\n") == [b"221 2.0.0"]
        assert session.transport.disconnecting

    def test_overlongCommand(self):
        """
        An over-long command line gets 500 and no part of it is run as a
        command (SMTP-5).
        """
        session = Session()
        codes = session.codes(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n")
        assert codes == [b"500 5.5.2", b"250 2.0.0"]
        huge = b"x" * 30000 + b"\r\nQUIT\r\n"
        assert session.codes(huge) == [b"500 5.5.2", b"221 2.0.0"]


class TestData:
    def test_accepted(self):
        """
        An accepted message is acknowledged with its queue ID once the
        spool has committed it (SMTP-35), with a Received field saying
        ESMTPSA and the TLS cipher (HDR-1, HDR-3, HDR-4).
        """
        session = Session()
        codes = submitted(session)
        assert codes == [
            b"250 2.1.0",
            b"250 2.1.5",
            b"354 End d",
            b"250 2.0.0",
        ]
        queueID, envelope, data = session.spool.messages[0]
        assert envelope.sender == "alice@example.org"
        assert envelope.recipients == ("bob@example.net",)
        assert envelope.user == "alice"
        assert data.startswith(b"Received: from client.example ([192.0.2.7])")
        assert b"with ESMTPSA id " + queueID.encode() in data
        assert b"tls TLS_AES_256_GCM_SHA384" in data
        assert re.search(
            rb"\r\nMessage-ID: <[^>]+@msa\.example\.org>\r\n", data
        )
        assert b"\r\nDate: " in data
        assert data.endswith(b"\r\n\r\nHi Bob.\r\n")

    def test_queueIDInReply(self):
        """
        The 250 reply names the queue ID.
        """
        session = Session()
        session.login()
        session.send(
            b"MAIL FROM:<alice@example.org>\r\n"
            b"RCPT TO:<bob@example.net>\r\nDATA\r\n"
        )
        reply = session.send(MESSAGE + b".\r\n")
        assert reply == [b"250 2.0.0 OK queued as Q0001"]

    def test_replyWaitsForCommit(self):
        """
        No 250 is sent before the spool reports the message durable, and
        input behind it waits (SMTP-35, EXT-3).
        """
        spool = MemorySpool()
        spool.pending = []
        session = Session(spool=spool)
        session.login()
        session.send(
            b"MAIL FROM:<alice@example.org>\r\n"
            b"RCPT TO:<bob@example.net>\r\nDATA\r\n"
        )
        assert session.send(MESSAGE + b".\r\nNOOP\r\n") == []
        spool.pending[0].callback(None)
        assert [line[:9] for line in session.take()] == [
            b"250 2.0.0",
            b"250 2.0.0",
        ]

    def test_commitFailure(self):
        """
        A spool that cannot commit answers 451 4.3.0 and keeps nothing.
        """
        spool = MemorySpool()
        spool.failCommit = True
        session = Session(spool=spool)
        assert submitted(session)[-1] == b"451 4.3.0"
        assert spool.messages == []

    @pytest.mark.parametrize(
        "body, code",
        [
            (b"x\n.\r\nMAIL FROM:<s@v.example>\r\n", b"550 5.6.0"),
            (b"x\r.\r\n", b"550 5.6.0"),
            (b"x\r\n.\nRSET\r\n", b"550 5.6.0"),
            (
                b"x" * 20000 + b"\r\nRSET\r\nMAIL FROM:<x@y.example>\r\n",
                b"554 5.6.0",
            ),
        ],
    )
    def test_refusedBody(self, body, code):
        """
        Bare CR or LF and over-long lines never end DATA early and get one
        refusal after the real end; nothing is kept (SMTP-1, SMTP-7, SEC-1).
        """
        session = Session()
        codes = submitted(session, MESSAGE + body)
        assert codes[-1] == code
        assert len(codes) == 4
        assert session.spool.messages == []
        assert session.spool.aborted == ["Q0001"]

    def test_tooBig(self):
        """
        A message over the limit is read to its end, then refused with 552
        (EXT-8).
        """
        settings = SessionSettings(
            hostname="msa.example.org", messageSize=70000
        )
        session = Session(settings=settings)
        big = MESSAGE + (b"y" * 998 + b"\r\n") * 80
        assert submitted(session, big)[-1] == b"552 5.3.4"
        assert session.spool.messages == []

    def test_fromNotOwned(self):
        """
        A From: the user may not use is refused after DATA with 550 5.7.1
        (SUB-18, SEC-6).
        """
        session = Session()
        message = MESSAGE.replace(b"From: alice@", b"From: ceo@")
        assert submitted(session, message)[-1] == b"550 5.7.1"
        assert session.spool.messages == []

    def test_noFrom(self):
        """
        A message without From is refused with 554 5.6.0 (SUB-20).
        """
        session = Session()
        message = MESSAGE.replace(b"From: alice@example.org\r\n", b"")
        assert submitted(session, message)[-1] == b"554 5.6.0"

    def test_eightBitWithoutBody(self):
        """
        8-bit data without BODY=8BITMIME is accepted and kept intact
        (EXT-10).
        """
        session = Session()
        body = MESSAGE + "Gr\u00fc\u00dfe\r\n".encode()
        assert submitted(session, body)[-1] == b"250 2.0.0"
        assert session.spool.messages[0][2].endswith(
            b"Gr\xc3\xbc\xc3\x9fe\r\n"
        )

    def test_64KiBMessage(self):
        """
        A 64 KiB message is accepted (SMTP-10).
        """
        session = Session()
        big = MESSAGE + (b"y" * 78 + b"\r\n") * 830
        assert len(big) > 65536
        assert submitted(session, big)[-1] == b"250 2.0.0"

    def test_dotUnstuffing(self):
        """
        Dot-stuffed lines are stored without their first dot (SMTP-2).
        """
        session = Session()
        submitted(session, MESSAGE + b"..\r\n...x\r\n")
        data = session.spool.messages[0][2]
        assert data.endswith(b"Hi Bob.\r\n.\r\n..x\r\n")

    def test_disconnectDuringData(self):
        """
        A client that goes away in the middle of the data leaves nothing
        in the spool.
        """
        session = Session()
        session.login()
        session.send(
            b"MAIL FROM:<alice@example.org>\r\n"
            b"RCPT TO:<bob@example.net>\r\nDATA\r\n"
        )
        session.send(MESSAGE[:40])
        session.protocol.connectionLost(None)
        assert session.spool.messages == []
        assert session.spool.aborted == ["Q0001"]

    def test_transactionEndsAfterData(self):
        """
        After DATA a new transaction needs a new MAIL.
        """
        session = Session()
        submitted(session)
        assert session.codes(b"RCPT TO:<b@example.net>\r\n") == [b"503 5.5.1"]


class TestClientLimits:
    def test_addressBlockedAcrossSessions(self):
        """
        After too many failures from one address, a new session from it
        gets 421 4.7.0 at AUTH, even with the right password (SEC-5).
        """
        throttle = AuthThrottle(Clock(), limit=4, window=900)
        bad = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0x") + b"\r\n"
        for _ in range(2):
            session = Session(implicitTLS=True, throttle=throttle)
            session.send(b"EHLO c.example\r\n")
            for _ in range(2):
                session.send(bad)
                session.clock.advance(10)
        session = Session(implicitTLS=True, throttle=throttle)
        session.send(b"EHLO c.example\r\n")
        codes = session.codes(f"AUTH PLAIN {PLAIN}\r\n".encode())
        assert codes == [b"421 4.7.0"]
        assert session.transport.disconnecting

    def test_connectionLimits(self):
        """
        Sessions over the per-client limit are refused with 421 4.7.0
        (SEC-7), and a closed session frees its place.
        """
        session = Session(
            settings=SessionSettings(
                hostname="msa.example.org", clientConnections=2
            )
        )
        factory = session.protocol.factory
        address = IPv4Address("TCP", "192.0.2.7", 50001)

        def connect() -> tuple[object, FakeTLSTransport]:
            protocol = factory.buildProtocol(address)
            transport = FakeTLSTransport()
            protocol.makeConnection(transport)
            return protocol, transport

        first, _ = connect()
        second, _ = connect()
        refused, transport = connect()
        assert transport.value().startswith(b"421 4.7.0 ")
        assert transport.disconnecting
        assert not isinstance(refused, SubmissionProtocol)

        first.connectionLost(None)
        third, transport = connect()
        assert isinstance(third, SubmissionProtocol)
        assert transport.value().startswith(b"220 ")


class TestLimits:
    def test_idleTimeout(self):
        """
        An idle session is closed with 421 4.4.2 after the timeout, not
        before (SMTP-11).
        """
        session = Session()
        session.clock.advance(299)
        assert session.take() == []
        session.clock.advance(1)
        assert session.take() == [
            b"421 4.4.2 Idle timeout, closing connection"
        ]
        assert session.transport.disconnecting

    def test_unreadRepliesAbort(self):
        """
        A client that does not take the final reply (or never completes its
        TLS handshake) is cut off 30 seconds after the close began.
        """
        session = Session()
        session.clock.advance(300)
        assert session.transport.disconnecting
        session.clock.advance(29)
        assert not session.transport.disconnected
        session.clock.advance(1)
        assert session.transport.disconnected

    def test_closedSessionLeavesNoTimer(self):
        """
        Once the connection is gone, nothing of the session stays
        scheduled.
        """
        session = Session()
        session.send(b"QUIT\r\n")
        session.protocol.connectionLost(None)
        assert session.clock.getDelayedCalls() == []

    def test_inputResetsTimeout(self):
        """
        Each input restarts the idle timer.
        """
        session = Session()
        session.clock.advance(200)
        session.send(b"NOOP\r\n")
        session.clock.advance(200)
        assert session.take() == []

    def test_tooManyErrors(self):
        """
        After 20 failed commands the session ends with 421 4.7.0 (SMTP-38).
        """
        session = Session()
        lines = session.send(b"FOO\r\n" * 25)
        assert lines[-1].startswith(b"421 4.7.0")
        assert lines[:20] == [b"500 5.5.2 Command not recognized"] * 20
        assert len(lines) == 21
        assert session.transport.disconnecting

    def test_shutDown(self):
        """
        Stopping the service tells open sessions 421 4.3.2 (SMTP-39).
        """
        session = Session()
        session.protocol.factory.shutDown()
        assert session.take() == [b"421 4.3.2 Service shutting down"]


def test_everyReplyHasEnhancedCode():
    """
    Every reply after the greeting and EHLO in a whole session carries an
    enhanced status code of the same class (EXT-1, SMTP-32).
    """
    session = Session()
    session.login()
    lines = session.send(
        b"NOOP\r\nVRFY x\r\nFOO\r\nMAIL FROM:<alice@example.org>\r\n"
        b"RCPT TO:<bob@example.net>\r\nRCPT TO:<x@y>\r\nDATA\r\n"
    ) + session.send(MESSAGE + b".\r\nRSET\r\nQUIT\r\n")
    for line in lines:
        code, separator, text = REPLY.match(line).groups()
        if code != b"354":
            assert re.match(rb"[245]\.\d{1,3}\.\d{1,3} ", text)
            assert text[:1] == code[:1]


def test_unauthorizedLoginFromRealm():
    """
    A realm that refuses the user yields 535, as a wrong password does.
    """
    assert UnauthorizedLogin


class _TCPTransport:
    """
    Records what a session asks of its TCP connection.
    """

    noDelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.noDelay = enabled


def test_noDelayThroughWrappers():
    """
    Sessions turn Nagle's algorithm off on their TCP connection, also when
    TLS or the PROXY protocol wraps it, and ignore transports without TCP.
    """
    tcp = _TCPTransport()
    wrapper = WrappingFactory(Factory.forProtocol(Protocol)).buildProtocol(
        None
    )
    wrapper.makeConnection(tcp)
    noDelay(wrapper)
    assert tcp.noDelay
    noDelay(object())
