"""
A real SMTP server for tests: it stands in for the smarthost or the MX
that msagate relays to, and records what it receives.

It runs in the test reactor, on 127.0.0.1 and a free port::

    sink = inReactor(startSink, tlsOptions=serverTLS(authority))
    sink.configure(pipelining=False)       # behaviour, between sessions
    inReactor(deliver, plainEndpoint(sink), [message], settings)
    [received] = sink.waitForMessages(1)   # from the main thread
    inReactor(sink.stop)

L{deliver} runs msagate's own client (L{msagate.client}) against it; any
other client may connect to C{sink.port} as well.

What it speaks: EHLO and HELO, PIPELINING (input is handled in order, line
by line), SIZE, 8BITMIME, STARTTLS, AUTH PLAIN and LOGIN, MAIL, RCPT,
DATA, RSET, NOOP and QUIT.  Each is announced or enforced as the
attributes of L{Sink} say.  The DATA reader is strict (RFC 5321 section
4.5.2): data ends only at CRLF "." CRLF, and it records any bare LF that a
dot follows, the shape of an SMTP smuggling attempt.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.internet import reactor as globalReactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory

from msagate._certs import CertificateAuthority
from msagate.client import (
    ClientSettings,
    OutboundMessage,
    RecipientOutcome,
    connectSession,
)

CRLF = b"\r\n"
HOSTNAME = "sink.test"
# How long a test in the main thread waits for the sink, at most.
WAIT = 10


class Unstuffer:
    """
    The receiving side of RFC 5321 section 4.5.2, line by line: data ends
    at a line that is a lone ".", and a line's leading "." is removed.

    @ivar data: the message as the client meant it, CRLF line endings.
    @ivar bareLFDot: whether the wire held a LF without CR before it and
        a "." right after it.
    @ivar finished: whether the end of data has been read.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.bareLFDot = False
        self.finished = False
        self._partial = b""

    def feed(self, wire: bytes) -> bytes | None:
        """
        Read the next bytes after the 354 reply.

        @return: L{None} while data goes on; after the end of data, what
            followed it (the client's next commands).
        """
        buffer = self._partial + wire
        start = 0
        while True:
            end = buffer.find(CRLF, start)
            if end < 0:
                self._partial = buffer[start:]
                return None
            line, start = buffer[start:end], end + len(CRLF)
            if line == b".":
                self.finished = True
                return buffer[start:]
            self._line(line)

    def _line(self, line: bytes) -> None:
        # Within a line split at CRLF every LF is a bare one.
        if b"\n." in line:
            self.bareLFDot = True
        if line.startswith(b"."):
            line = line[1:]
        self.data += line + CRLF


def unstuff(wire: bytes) -> tuple[bytes, bytes]:
    """
    Read a whole DATA section.

    @return: the message and what followed the end of data.
    @raise ValueError: when the wire holds no end of data.
    """
    reader = Unstuffer()
    rest = reader.feed(wire)
    if rest is None:
        raise ValueError("no end of data")
    return bytes(reader.data), rest


@dataclass(frozen=True)
class Received:
    """
    One message the sink received.

    @ivar sender: the reverse path, without brackets.
    @ivar recipients: the recipients it accepted.
    @ivar data: the message, un-stuffed.
    @ivar parameters: the MAIL parameters, as sent (C{"SIZE=12 AUTH=<>"}).
    @ivar tls: whether the session was under TLS.
    @ivar user: who had authenticated, or C{""}.
    @ivar bareLFDot: whether the data held a bare LF followed by a ".".
    """

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    parameters: str
    tls: bool
    user: str
    bareLFDot: bool


def defaultReply(recipient: str) -> tuple[int, str]:
    """
    The default reply to RCPT: a local part starting with C{temp} gets a
    temporary failure, one starting with C{perm} a permanent one.
    """
    local = recipient.rpartition("@")[0].lower()
    if local.startswith("temp"):
        return 451, "4.2.0 try later"
    if local.startswith("perm"):
        return 550, "5.1.1 no such user"
    return 250, "2.1.5 ok"


class Sink:
    """
    The server's behaviour and what it has seen.  Set the behaviour
    before a session starts; the records may be read from any thread
    after L{waitForMessages}.

    @ivar greeting: the code of the greeting.
    @ivar ehlo: whether EHLO is known; when false it gets 502, and the
        client must fall back to HELO.
    @ivar pipelining: announce PIPELINING.
    @ivar eightBitMIME: announce 8BITMIME; BODY=8BITMIME is refused
        without it.
    @ivar sizeLimit: announce SIZE with this limit and enforce it; L{None}
        for no SIZE.
    @ivar offerSTARTTLS: announce STARTTLS (needs L{tlsOptions}).
    @ivar requireTLS: refuse MAIL before TLS.
    @ivar requireAuth: refuse MAIL before AUTH.
    @ivar users: the passwords of the users AUTH accepts; AUTH is
        announced (with or without TLS) when there are any.
    @ivar authMechanisms: the mechanisms AUTH announces; PLAIN and LOGIN
        work whatever it says.
    @ivar replyFor: gives the reply to RCPT for a recipient.
    @ivar mailReply: when set, the reply to every MAIL.
    @ivar dataReply: when set, the reply to DATA instead of 354.
    @ivar messageReply: when set, the reply after the data instead of 250.
    @ivar hangAfterData: never answer the end of data.
    @ivar dropAfterData: close the connection at the end of data.
    @ivar tlsOptions: the server's TLS settings.
    @ivar port: the port it listens on.
    @ivar messages: the L{Received} messages: accepted ones, and those
        left unanswered or dropped after the data.
    @ivar commands: every line received outside DATA, in order.
    @ivar sessions: how many sessions were opened.
    """

    def __init__(self, tlsOptions: CertificateOptions | None = None) -> None:
        self.greeting = 220
        self.ehlo = True
        self.pipelining = True
        self.eightBitMIME = True
        self.sizeLimit: int | None = None
        self.offerSTARTTLS = tlsOptions is not None
        self.requireTLS = False
        self.requireAuth = False
        self.users: dict[str, str] = {}
        self.authMechanisms = "PLAIN LOGIN"
        self.replyFor: Callable[[str], tuple[int, str]] = defaultReply
        self.mailReply: tuple[int, str] | None = None
        self.dataReply: tuple[int, str] | None = None
        self.messageReply: tuple[int, str] | None = None
        self.hangAfterData = False
        self.dropAfterData = False
        self.tlsOptions = tlsOptions
        self.port = 0
        self.messages: list[Received] = []
        self.commands: list[bytes] = []
        self.sessions = 0
        self._condition = threading.Condition()
        self._listening = None
        self._open: set[_SinkSession] = set()

    def configure(self, **options: object) -> Sink:
        """
        Set behaviour attributes by name.

        @raise AttributeError: for a name that is not one of them.
        """
        for name, value in options.items():
            if not hasattr(self, name) or name.startswith("_"):
                raise AttributeError(f"Sink has no option {name!r}")
            setattr(self, name, value)
        return self

    def waitForMessages(
        self, count: int, timeout: float = WAIT
    ) -> list[Received]:
        """
        Wait, in a thread other than the reactor's, until C{count} messages
        have arrived.

        @return: the messages received so far.
        @raise AssertionError: when they have not arrived in C{timeout}
            seconds.
        """
        with self._condition:
            arrived = self._condition.wait_for(
                lambda: len(self.messages) >= count, timeout
            )
            if not arrived:
                raise AssertionError(
                    f"{len(self.messages)} of {count} messages arrived"
                )
            return list(self.messages)

    def stop(self) -> defer.Deferred[None]:
        """
        Stop listening and cut every open session.  Call it in the reactor
        thread.
        """
        for session in list(self._open):
            session.transport.abortConnection()
        return defer.maybeDeferred(self._listening.stopListening)

    def _record(self, message: Received) -> None:
        with self._condition:
            self.messages.append(message)
            self._condition.notify_all()

    def _started(self, session: _SinkSession) -> None:
        with self._condition:
            self.sessions += 1
            self._open.add(session)

    def _ended(self, session: _SinkSession) -> None:
        self._open.discard(session)


def startSink(
    tlsOptions: CertificateOptions | None = None,
    implicitTLS: bool = False,
    **options: object,
) -> defer.Deferred[Sink]:
    """
    Start a sink on 127.0.0.1 and a free port; call it in the reactor
    thread (through C{inReactor}).

    @param tlsOptions: the TLS settings for STARTTLS, and for implicit
        TLS.
    @param implicitTLS: TLS from the first byte, as on port 465.
    @param options: behaviour attributes of L{Sink}.
    @return: a L{defer.Deferred} firing with the listening L{Sink}.
    """
    sink = Sink(tlsOptions).configure(**options)
    factory: Factory = _SinkFactory(sink, implicitTLS)
    if implicitTLS:
        factory = TLSMemoryBIOFactory(tlsOptions, False, factory)
    endpoint = TCP4ServerEndpoint(globalReactor, 0, interface="127.0.0.1")

    def listening(port) -> Sink:
        sink._listening = port
        sink.port = port.getHost().port
        return sink

    return endpoint.listen(factory).addCallback(listening)


def serverTLS(
    authority: CertificateAuthority,
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> CertificateOptions:
    """
    @return: server TLS settings with a certificate from C{authority}.
    """
    issued = authority.issue(list(hostnames))
    return CertificateOptions(
        privateKey=serialization.load_pem_private_key(issued.key, None),
        certificate=x509.load_pem_x509_certificate(issued.certificate),
    )


class _SinkFactory(Factory):
    noisy = False

    def __init__(self, sink: Sink, implicitTLS: bool) -> None:
        self.sink = sink
        self.implicitTLS = implicitTLS

    def buildProtocol(self, addr) -> _SinkSession:
        return _SinkSession(self.sink, self.implicitTLS)


class _SinkSession(Protocol):
    """
    One session of the sink.
    """

    def __init__(self, sink: Sink, implicitTLS: bool) -> None:
        self.sink = sink
        self.tls = implicitTLS
        self.user = ""
        self._buffer = b""
        self._reader: Unstuffer | None = None
        self._auth: Callable[[bytes], None] | None = None
        self._silent = False
        self._reset()

    def _reset(self) -> None:
        self._sender: str | None = None
        self._parameters = ""
        self._recipients: list[str] = []

    def connectionMade(self) -> None:
        self.sink._started(self)
        self._reply(self.sink.greeting, f"{HOSTNAME} ESMTP sink")

    def connectionLost(self, reason=None) -> None:
        self.sink._ended(self)

    def _reply(self, code: int, *lines: str) -> None:
        if self._silent:
            return
        last = len(lines) - 1
        self.transport.write(
            b"".join(
                f"{code}{' ' if i == last else '-'}{line}".encode() + CRLF
                for i, line in enumerate(lines)
            )
        )

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer and not self._silent:
            if self._reader is not None:
                rest = self._reader.feed(self._buffer)
                self._buffer = b""
                if rest is None:
                    return
                self._buffer = rest
                self._endOfData(self._reader)
                continue
            line, found, rest = self._buffer.partition(CRLF)
            if not found:
                return
            self._buffer = rest
            self._lineReceived(line)

    def _lineReceived(self, line: bytes) -> None:
        self.sink.commands.append(line)
        if self._auth is not None:
            step, self._auth = self._auth, None
            step(line)
            return
        verb, _, argument = line.decode("ascii", "replace").partition(" ")
        handler = getattr(self, "do_" + verb.upper(), None)
        if handler is None:
            self._reply(500, "5.5.2 unknown command")
        else:
            handler(argument)

    # Session commands.

    def do_EHLO(self, argument: str) -> None:
        if not self.sink.ehlo:
            self._reply(502, "5.5.1 EHLO not implemented")
            return
        self._reset()
        self._reply(250, f"{HOSTNAME} greets {argument}", *self._keywords())

    def _keywords(self) -> list[str]:
        sink = self.sink
        keywords = ["ENHANCEDSTATUSCODES"]
        if sink.pipelining:
            keywords.append("PIPELINING")
        if sink.eightBitMIME:
            keywords.append("8BITMIME")
        if sink.sizeLimit is not None:
            keywords.append(f"SIZE {sink.sizeLimit}")
        if sink.offerSTARTTLS and not self.tls:
            keywords.append("STARTTLS")
        if sink.users:
            keywords.append(f"AUTH {sink.authMechanisms}")
        return keywords

    def do_HELO(self, argument: str) -> None:
        self._reset()
        self._reply(250, HOSTNAME)

    def do_NOOP(self, argument: str) -> None:
        self._reply(250, "2.0.0 ok")

    def do_RSET(self, argument: str) -> None:
        self._reset()
        self._reply(250, "2.0.0 reset")

    def do_QUIT(self, argument: str) -> None:
        self._reply(221, "2.0.0 bye")
        self.transport.loseConnection()

    def do_STARTTLS(self, argument: str) -> None:
        if self.tls or not self.sink.offerSTARTTLS:
            self._reply(454, "4.7.0 TLS not available")
            return
        self._reply(220, "2.0.0 go ahead")
        # RFC 3207 section 4.2: nothing sent before the handshake counts.
        self._buffer = b""
        self.transport.startTLS(self.sink.tlsOptions)
        self.tls, self.user = True, ""
        self._reset()

    # AUTH (RFC 4954).

    def do_AUTH(self, argument: str) -> None:
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if self.user:
            self._reply(503, "5.5.1 already authenticated")
        elif mechanism == "PLAIN" and initial:
            self._plain(initial.encode())
        elif mechanism == "PLAIN":
            self._challenge(b"", self._plain)
        elif mechanism == "LOGIN":
            self._challenge(b"Username:", self._loginUser)
        else:
            self._reply(504, "5.5.4 unknown mechanism")

    def _challenge(self, text: bytes, step: Callable[[bytes], None]) -> None:
        self._auth = step
        self._reply(334, base64.b64encode(text).decode())

    def _plain(self, line: bytes) -> None:
        parts = _decode(line).split(b"\0")
        if len(parts) != 3:
            self._reply(501, "5.5.2 malformed PLAIN")
            return
        self._check(parts[1], parts[2])

    def _loginUser(self, line: bytes) -> None:
        user = _decode(line)
        self._challenge(
            b"Password:", lambda line: self._check(user, _decode(line))
        )

    def _check(self, user: bytes, password: bytes) -> None:
        name = user.decode("utf-8", "replace")
        if self.sink.users.get(name) == password.decode("utf-8", "replace"):
            self.user = name
            self._reply(235, "2.7.0 authenticated")
        else:
            self._reply(535, "5.7.8 bad credentials")

    # The mail transaction.

    def do_MAIL(self, argument: str) -> None:
        sink = self.sink
        path, parameters = _path(argument, "FROM:")
        if sink.requireTLS and not self.tls:
            self._reply(530, "5.7.0 must issue STARTTLS first")
        elif sink.requireAuth and not self.user:
            self._reply(530, "5.7.0 authentication required")
        elif path is None:
            self._reply(501, "5.5.4 syntax: MAIL FROM:<address>")
        elif self._sender is not None:
            self._reply(503, "5.5.1 nested MAIL")
        else:
            self._mail(path, parameters)

    def _mail(self, sender: str, parameters: str) -> None:
        sink = self.sink
        values = dict(
            (item.partition("=")[0].upper(), item.partition("=")[2])
            for item in parameters.split()
        )
        size = values.get("SIZE", "0")
        if sink.sizeLimit and size.isdigit() and int(size) > sink.sizeLimit:
            self._reply(552, "5.3.4 message too big")
        elif values.get("BODY", "").upper() == "8BITMIME" and not (
            sink.eightBitMIME
        ):
            self._reply(555, "5.5.4 BODY=8BITMIME not supported")
        elif sink.mailReply is not None:
            self._replyAndMaybeStart(sink.mailReply, sender, parameters)
        else:
            self._replyAndMaybeStart((250, "2.1.0 ok"), sender, parameters)

    def _replyAndMaybeStart(
        self, reply: tuple[int, str], sender: str, parameters: str
    ) -> None:
        if 200 <= reply[0] < 300:
            self._sender, self._parameters = sender, parameters
        self._reply(*reply)

    def do_RCPT(self, argument: str) -> None:
        path, _ = _path(argument, "TO:")
        if self._sender is None:
            self._reply(503, "5.5.1 need MAIL first")
        elif not path:
            self._reply(501, "5.5.4 syntax: RCPT TO:<address>")
        else:
            code, text = self.sink.replyFor(path)
            if 200 <= code < 300:
                self._recipients.append(path)
            self._reply(code, text)

    def do_DATA(self, argument: str) -> None:
        if self.sink.dataReply is not None:
            code, text = self.sink.dataReply
            self._reply(code, text)
            if code == 354:
                self._reader = Unstuffer()
        elif self._sender is None:
            self._reply(503, "5.5.1 need MAIL first")
        elif not self._recipients:
            self._reply(554, "5.5.1 no valid recipients")
        else:
            self._reply(354, "end with <CRLF>.<CRLF>")
            self._reader = Unstuffer()

    def _endOfData(self, reader: Unstuffer) -> None:
        self._reader = None
        sink = self.sink
        message = Received(
            sender=self._sender or "",
            recipients=tuple(self._recipients),
            data=bytes(reader.data),
            parameters=self._parameters,
            tls=self.tls,
            user=self.user,
            bareLFDot=reader.bareLFDot,
        )
        self._reset()
        code, text = sink.messageReply or (250, "2.0.0 queued")
        if sink.sizeLimit and len(message.data) > sink.sizeLimit:
            code, text = 552, "5.3.4 message too big"
        if not message.recipients:
            code, text = 554, "5.5.1 no valid recipients"

        if sink.dropAfterData or sink.hangAfterData:
            self._silent = True
            sink._record(message)
            if sink.dropAfterData:
                self.transport.abortConnection()
            return
        if 200 <= code < 300:
            sink._record(message)
        self._reply(code, text)


def _path(argument: str, keyword: str) -> tuple[str | None, str]:
    """
    @return: the address between the brackets after C{keyword}, and the
        parameters after them; L{None} when malformed.
    """
    if not argument.upper().startswith(keyword + "<"):
        return None, ""
    path, found, parameters = argument[len(keyword) + 1 :].partition(">")
    return (path if found else None), parameters.strip()


def _decode(line: bytes) -> bytes:
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return b""


def plainEndpoint(sink: Sink) -> TCP4ClientEndpoint:
    """
    @return: an endpoint that connects to C{sink} without TLS.
    """
    return TCP4ClientEndpoint(globalReactor, "127.0.0.1", sink.port)


def deliver(
    endpoint: IStreamClientEndpoint,
    messages: list[OutboundMessage],
    settings: ClientSettings,
    host: str = "localhost",
    clock: IReactorTime | None = None,
) -> defer.Deferred[list[list[RecipientOutcome]]]:
    """
    Send C{messages} over one session of msagate's client, then QUIT;
    call it in the reactor thread (through C{inReactor}).

    @param clock: the clock of the client's timeouts; the reactor's by
        default.
    @return: a L{defer.Deferred} firing with the outcomes of each message,
        or failing with the first L{msagate.client.DeliveryError}.
    """

    async def run() -> list[list[RecipientOutcome]]:
        session = await connectSession(
            endpoint, host, settings, clock or globalReactor
        )
        try:
            return [await session.send(message) for message in messages]
        finally:
            await session.quit()

    return defer.Deferred.fromCoroutine(run())
