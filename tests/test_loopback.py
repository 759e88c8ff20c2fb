"""
What a client sees: msagate on real loopback sockets with real TLS, driven
by smtplib and by raw sockets where smtplib is too polite.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
import threading

import pytest
from conftest import USERS, RunningServer, inReactor
from twisted.internet import defer

MESSAGE = (
    b"From: alice@example.org\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: loopback\r\n"
    b"\r\n"
    b"Hello over TLS.\r\n"
)
TIMEOUT = 30


def clientContext(server: RunningServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.caFile)


def starttls(server: RunningServer) -> smtplib.SMTP:
    client = smtplib.SMTP(
        "127.0.0.1", server.ports["submission"], timeout=TIMEOUT
    )
    client.ehlo("client.example")
    client.starttls(context=clientContext(server))
    client.ehlo("client.example")
    return client


def implicit(server: RunningServer) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL(
        "127.0.0.1",
        server.ports["submissions"],
        context=clientContext(server),
        timeout=TIMEOUT,
    )
    client.ehlo("client.example")
    return client


class Raw:
    """
    A line-oriented SMTP client over a plain or TLS socket.
    """

    def __init__(self, sock) -> None:
        self.sock = sock
        self.pending = b""

    @classmethod
    def connect(cls, port: int) -> Raw:
        return cls(socket.create_connection(("127.0.0.1", port), TIMEOUT))

    def reply(self) -> bytes:
        """
        @return: the next complete reply, all its lines.
        """
        lines = []
        while True:
            while b"\r\n" not in self.pending:
                data = self.sock.recv(65536)
                if not data:
                    raise EOFError(b"".join(lines))
                self.pending += data
            line, self.pending = self.pending.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\r\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def startTLS(self, server: RunningServer) -> None:
        assert self.command(b"STARTTLS").startswith(b"220 2.0.0")
        assert self.pending == b""
        self.sock = clientContext(server).wrap_socket(
            self.sock, server_hostname="localhost"
        )

    def login(self, user: str = "alice") -> None:
        blob = base64.b64encode(b"\0" + user.encode() + b"\0" + USERS[user])
        assert self.command(b"AUTH PLAIN " + blob).startswith(b"235")


def authenticatedRaw(server: RunningServer) -> Raw:
    raw = Raw.connect(server.ports["submission"])
    assert raw.reply().startswith(b"220 ")
    raw.command(b"EHLO client.example")
    raw.startTLS(server)
    raw.command(b"EHLO client.example")
    raw.login()
    return raw


class TestSubmission:
    @pytest.mark.parametrize("connect", [starttls, implicit])
    def test_submit(self, server, connect):
        """
        A message submitted over STARTTLS or implicit TLS with AUTH lands
        in the spool with its Received field (SUB-1, SUB-2, SUB-3, AUTH-2,
        HDR-1..4, TLS-15, SMTP-35).
        """
        client = connect(server)
        client.login("alice", USERS["alice"].decode())
        refused = client.sendmail(
            "alice@example.org", ["bob@example.net"], MESSAGE
        )
        client.quit()

        assert refused == {}
        [data] = server.queued()
        received = data.split(b"\r\nFrom:", 1)[0]
        assert received.startswith(b"Received: from client.example")
        assert b"[127.0.0.1]" in received
        assert b"with ESMTPSA id" in received
        assert b"tls TLS_" in received
        assert data.endswith(b"\r\n\r\nHello over TLS.\r\n")

    def test_queueIDInReply(self, server):
        """
        The 250 reply to the message carries the queue ID of the spooled
        files.
        """
        client = starttls(server)
        client.login("alice", USERS["alice"].decode())
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        code, text = client.data(MESSAGE)
        client.quit()

        assert code == 250
        queueID = text.decode().rsplit(" ", 1)[1]
        assert (server.spool / "queue" / (queueID + ".json")).exists()
        assert (server.spool / "queue" / (queueID + ".eml")).exists()

    def test_wrongPassword(self, server):
        """
        A wrong password and an unknown user get the same 535 5.7.8
        (AUTH-11).
        """
        answers = []
        for user, password in (("alice", "wrong"), ("nobody", "wrong")):
            client = implicit(server)
            with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
                client.login(user, password)
            answers.append(caught.value.args)
            client.close()
        assert answers[0] == answers[1]
        assert answers[0][0] == 535

    def test_senderNotOwned(self, server):
        """
        Bob may not send as alice (SUB-16).
        """
        client = implicit(server)
        client.login("bob", USERS["bob"].decode())
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            client.sendmail("alice@example.org", ["x@example.net"], MESSAGE)
        assert caught.value.smtp_code == 553
        assert server.queued() == []

    def test_sameRepliesOnBothListeners(self, server):
        """
        Both listeners apply the same policy (SUB-3).
        """
        outcomes = []
        for connect in (starttls, implicit):
            client = connect(server)
            client.login("alice", USERS["alice"].decode())
            outcomes.append(
                [
                    client.mail("ceo@example.org"),
                    client.rset(),
                    client.mail("alice@example.org"),
                    client.rcpt("b@sales"),
                ]
            )
            client.quit()
        assert outcomes[0] == outcomes[1]


class TestTLS:
    def test_plaintextInjection(self, server):
        """
        Plaintext sent in the same segment as STARTTLS is never answered
        inside TLS (TLS-5, SEC-4).
        """
        raw = Raw.connect(server.ports["submission"])
        raw.reply()
        raw.command(b"EHLO client.example")
        raw.send(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<alice@example.org>\r\n")
        assert raw.reply().startswith(b"220 2.0.0")
        raw.pending = b""
        raw.sock = clientContext(server).wrap_socket(
            raw.sock, server_hostname="localhost"
        )
        assert raw.command(b"EHLO again.example").startswith(b"250-")
        assert raw.command(b"NOOP") == b"250 2.0.0 OK"

    def test_noDelay(self, server):
        """
        Both listeners' sessions run with Nagle's algorithm off, under TLS
        too, so that no reply waits for a delayed acknowledgement.
        """

        def tcpSocket(transport):
            # Through the TLS layer to the TCP connection.
            while not hasattr(transport, "socket"):
                transport = transport.transport
            return transport.socket

        def options():
            return [
                tcpSocket(session.transport).getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY
                )
                for factory in server.service.factories
                for session in factory.sessions
            ]

        clients = [starttls(server), implicit(server)]
        assert inReactor(options) == [1, 1]
        for client in clients:
            client.quit()

    def test_tlsLogged(self, server, logged):
        """
        The log names each session's TLS version and cipher (TLS-14).
        """
        client = implicit(server)
        client.quit()
        texts = [
            event["log_format"].format(**event)
            for event in logged
            if event.get("log_namespace") == "msagate.mail"
        ]
        assert any(re.search(r": TLS TLSv1\.[23] with \S+", t) for t in texts)

    def test_noEhloAfterStarttls(self, server):
        """
        After the handshake the session starts over: AUTH needs a new EHLO
        (TLS-4).
        """
        raw = Raw.connect(server.ports["submission"])
        raw.reply()
        raw.command(b"EHLO client.example")
        raw.startTLS(server)
        blob = base64.b64encode(b"\0alice\0" + USERS["alice"])
        assert raw.command(b"AUTH PLAIN " + blob).startswith(b"503 5.5.1")

    def test_authBeforeTLS(self, server):
        """
        AUTH is neither offered nor accepted before TLS (AUTH-1).
        """
        raw = Raw.connect(server.ports["submission"])
        raw.reply()
        assert b"AUTH" not in raw.command(b"EHLO client.example")
        blob = base64.b64encode(b"\0alice\0" + USERS["alice"])
        assert raw.command(b"AUTH PLAIN " + blob).startswith(b"530 5.7.0")

    def test_implicitTLSSendsNothingInClear(self, server):
        """
        On the implicit TLS listener a plaintext client gets no SMTP text
        (TLS-11).
        """
        raw = Raw.connect(server.ports["submissions"])
        raw.send(b"EHLO client.example\r\n")
        data = b""
        try:
            while chunk := raw.sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        assert b"220" not in data and b"250" not in data

    @pytest.mark.parametrize(
        "version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]
    )
    def test_oldVersionsRefused(self, server, version):
        """
        TLS 1.0 and 1.1 handshakes fail (TLS-9).
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(server.caFile)
        context.minimum_version = version
        context.maximum_version = version
        try:
            context.set_ciphers("ALL:@SECLEVEL=0")
        except ssl.SSLError:
            pass
        sock = socket.create_connection(
            ("127.0.0.1", server.ports["submissions"]), TIMEOUT
        )
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            context.wrap_socket(sock, server_hostname="localhost")
        sock.close()


class TestData:
    @pytest.mark.parametrize(
        "smuggled",
        [
            b"\n.\nMAIL FROM:<ceo@example.org>\r\n",
            b"\n.\r\nMAIL FROM:<ceo@example.org>\r\n",
            b"\r\n.\nMAIL FROM:<ceo@example.org>\r\n",
            b"\r.\r\nMAIL FROM:<ceo@example.org>\r\n",
            b"\r\n.\rMAIL FROM:<ceo@example.org>\r\n",
        ],
    )
    def test_smuggling(self, server, smuggled):
        """
        No end-of-data variant but CRLF.CRLF ends the message; the message
        with a bare CR or LF is refused after the real end and nothing is
        kept (SMTP-1, SEC-1).
        """
        raw = authenticatedRaw(server)
        raw.command(b"MAIL FROM:<alice@example.org>")
        raw.command(b"RCPT TO:<bob@example.net>")
        assert raw.command(b"DATA").startswith(b"354")
        raw.send(MESSAGE + b"x" + smuggled + b"RCPT TO:<v@example.net>\r\n")
        raw.send(b"DATA\r\nsmuggled\r\n.\r\n")
        assert raw.reply().startswith(b"550 5.6.0")
        assert raw.command(b"NOOP") == b"250 2.0.0 OK"
        assert server.queued() == []

    def test_longLineStaysInData(self, server):
        """
        A line far over the limit keeps the session in DATA: the lines
        after it are never run as commands (SMTP-7).
        """
        raw = authenticatedRaw(server)
        raw.command(b"MAIL FROM:<alice@example.org>")
        raw.command(b"RCPT TO:<bob@example.net>")
        raw.command(b"DATA")
        raw.send(MESSAGE + b"y" * 20000 + b"\r\nRSET\r\n")
        raw.send(b"MAIL FROM:<x@example.org>\r\n.\r\n")
        assert raw.reply().startswith(b"554 5.6.0")
        assert raw.command(b"NOOP") == b"250 2.0.0 OK"
        assert server.queued() == []

    def test_oversized(self, server):
        """
        A message over the size limit is read to the end, then refused
        with 552 5.3.4 and not kept (EXT-8).
        """
        client = implicit(server)
        client.login("alice", USERS["alice"].decode())
        big = MESSAGE + (b"z" * 998 + b"\r\n") * 27000
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        assert client.data(big)[0] == 552
        assert client.noop()[0] == 250
        assert server.queued() == []

    def test_sizeParameter(self, server):
        """
        SIZE above the limit is refused at MAIL (EXT-7).
        """
        client = implicit(server)
        client.login("alice", USERS["alice"].decode())
        code, _ = client.mail("alice@example.org", ["SIZE=999999999"])
        assert code == 552

    def test_dotsAndEightBit(self, server):
        """
        Dot-stuffed lines and 8-bit content are stored as sent (SMTP-2,
        EXT-9).
        """
        client = starttls(server)
        client.login("alice", USERS["alice"].decode())
        body = MESSAGE + b".\r\n..\r\n.dot\r\nGr\xc3\xbc\xc3\x9fe\r\n"
        client.sendmail(
            "alice@example.org",
            ["bob@example.net"],
            body,
            mail_options=["BODY=8BITMIME"],
        )
        client.quit()
        assert server.queued()[0].endswith(
            b"\r\n\r\nHello over TLS.\r\n"
            b".\r\n..\r\n.dot\r\nGr\xc3\xbc"
            b"\xc3\x9fe\r\n"
        )


class SlowPortal:
    """
    Wraps the server's portal so that logins wait for the test.
    """

    def __init__(self, portal) -> None:
        self.portal = portal
        self.waiting: list[defer.Deferred] = []
        self.called = threading.Event()

    def login(self, *args):
        held: defer.Deferred = defer.Deferred()
        held.addCallback(lambda _: self.portal.login(*args))
        self.waiting.append(held)
        self.called.set()
        return held

    def release(self) -> None:
        for held in self.waiting:
            held.callback(None)


def test_pipeliningBehindSlowChecker(server):
    """
    AUTH with an initial response, MAIL, RCPT and DATA written at once are
    answered in order after a slow credential check (AUTH-19, EXT-3).
    """
    factory = server.service.factories[1]
    slow = SlowPortal(factory.portal)
    factory.portal = slow
    context = clientContext(server)
    sock = context.wrap_socket(
        socket.create_connection(
            ("127.0.0.1", server.ports["submissions"]), TIMEOUT
        ),
        server_hostname="localhost",
    )
    raw = Raw(sock)
    raw.reply()
    raw.command(b"EHLO client.example")
    blob = base64.b64encode(b"\0alice\0" + USERS["alice"])
    raw.send(
        b"AUTH PLAIN " + blob + b"\r\n"
        b"MAIL FROM:<alice@example.org>\r\n"
        b"RCPT TO:<bob@example.net>\r\n"
        b"DATA\r\n"
    )
    assert slow.called.wait(TIMEOUT)
    inReactor(slow.release)
    replies = [raw.reply()[:3] for _ in range(4)]
    assert replies == [b"235", b"250", b"250", b"354"]


def test_testsStayOnLoopback():
    """
    The suite's guard refuses connections and datagrams to any address but
    a loopback one, so no test can reach the network by mistake.
    """
    with socket.socket() as stream, pytest.raises(AssertionError):
        stream.connect(("192.0.2.1", 25))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
        with pytest.raises(AssertionError):
            datagram.sendto(b"query", ("192.0.2.53", 53))
        datagram.sendto(b"query", ("127.0.0.1", 9))
