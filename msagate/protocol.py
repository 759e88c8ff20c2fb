# -*- test-case-name: tests.test_protocol -*-
"""
The ESMTP submission protocol.

Implements the server side of RFC 5321 as RFC 6409 restricts it for
submission, with the extensions PIPELINING (RFC 2920), SIZE (RFC 1870),
8BITMIME (RFC 6152), ENHANCEDSTATUSCODES (RFC 2034, RFC 3463), STARTTLS
(RFC 3207) and AUTH (RFC 4954) with PLAIN and LOGIN.

The protocol parses, sequences and limits; it asks the cred portal who the
user is, the user's account which senders it may use, and the spool to keep
the message.  It never knows what backs any of them.

Session states, in the order a session goes through them:

  - B{connected}: greeted; on a STARTTLS listener, only EHLO, HELO,
    STARTTLS, NOOP, RSET, HELP and QUIT are served until TLS is up.
  - B{TLS}: entered by the handshake after STARTTLS, or from the first byte
    on an implicit TLS listener.  Everything learnt before STARTTLS is
    forgotten and the client must greet again (RFC 3207 section 4.2).
  - B{authenticated}: entered by a successful AUTH; MAIL, RCPT and DATA are
    served from here on (RFC 6409 section 4.3).
  - B{transaction}: from an accepted MAIL until the end of DATA, RSET, a
    new EHLO or HELO.

Input is handled one command at a time: while a command waits for an
answer (the credential check, the spool's fsync), later pipelined input
stays in the buffer, so replies always come in order (RFC 2920 section
3.2).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ISystemHandle,
    ITLSTransport,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from msagate import maillog, replies
from msagate.address import (
    AddressError,
    Mailbox,
    decodeXtext,
    defaultPostmaster,
    isHelloArgument,
    parseMailbox,
    parseParameters,
    parsePath,
    splitPathArgument,
)
from msagate.envelope import Envelope
from msagate.errors import TemporaryAuthFailure
from msagate.intake import IncomingMessage
from msagate.interfaces import IAccount, ISpool
from msagate.message import TraceInfo
from msagate.replies import Refused, Reply
from msagate.sasl import (
    MECHANISMS,
    SASLCancelled,
    SASLEncodingError,
    SASLExchange,
    SASLFailure,
)
from msagate.throttle import AuthThrottle

if TYPE_CHECKING:
    from OpenSSL import SSL

    class _ISessionTransport(ITLSTransport, ISystemHandle, IPushProducer):
        """
        What a session uses of its transport, for the type checker only:
        Twisted's TCP and TLS transports provide all of it, but none of
        their interfaces says so alone.
        """


# RFC 5321 section 4.5.3.1.4 asks for 512 octets; extensions add to that.
MAX_COMMAND_LINE = 2048
# RFC 4954 section 4: an AUTH line must hold any offered mechanism's data.
MAX_AUTH_LINE = 12288
# Seconds a closing connection may take to send its last replies.
CLOSE_GRACE = 30
# Input held while a command is pending, before reading from the socket
# pauses.
MAX_PENDING_INPUT = 65536


@dataclass(frozen=True)
class Command:
    """
    Where a command is served.

    @ivar beforeTLS: served on a STARTTLS listener before TLS is up.
    @ivar beforeAuth: served before the client has authenticated.
    """

    beforeTLS: bool
    beforeAuth: bool


_ANYTIME = Command(beforeTLS=True, beforeAuth=True)
_UNDER_TLS = Command(beforeTLS=False, beforeAuth=True)
_AUTHENTICATED = Command(beforeTLS=False, beforeAuth=False)

# RFC 3207 section 4 (TLS first) and RFC 4954 section 6 (AUTH first); each
# command's handler is the protocol's do_VERB method.
COMMANDS = {
    "EHLO": _ANYTIME,
    "HELO": _ANYTIME,
    "STARTTLS": _ANYTIME,
    "NOOP": _ANYTIME,
    "RSET": _ANYTIME,
    "HELP": _ANYTIME,
    "QUIT": _ANYTIME,
    "AUTH": _UNDER_TLS,
    "MAIL": _AUTHENTICATED,
    "RCPT": _AUTHENTICATED,
    "DATA": _AUTHENTICATED,
    "VRFY": _AUTHENTICATED,
}

# Commands of RFC 5321 and its extensions that msagate does not offer.
UNIMPLEMENTED = frozenset(
    {"ETRN", "ATRN", "TURN", "EXPN", "BDAT", "SEND", "SOML", "SAML"}
)


@dataclass(frozen=True)
class SessionSettings:
    """
    What a submission session needs to know of the configuration.

    @ivar hostname: this server's fully qualified name.
    @ivar messageSize: the largest message accepted, in octets.
    @ivar recipients: the most recipients accepted per message.
    @ivar errors: the failed commands after which the session is closed.
    @ivar connections: the most sessions a listener serves at once; 0 for
        no limit.
    @ivar clientConnections: the most sessions from one client address;
        0 for no limit.
    @ivar idleTimeout: seconds without input before the session is closed.
    @ivar lineLength: the longest message line, CRLF included.
    @ivar headerSize: the largest header section held in memory.
    @ivar maxAuthFailures: failed AUTHs after which a further AUTH closes
        the session.
    @ivar authFailureDelay: seconds the nth failed AUTH waits, times n.
    @ivar receivedClientAddress: whether Received shows the client's IP.
    @ivar maxReceived: how many Received fields mean a mail loop.
    @ivar postmaster: where mail for C{<Postmaster>} goes.
    """

    hostname: str
    messageSize: int = 26214400
    recipients: int = 100
    errors: int = 20
    connections: int = 1000
    clientConnections: int = 50
    idleTimeout: float = 300
    lineLength: int = 1000
    headerSize: int = 262144
    maxAuthFailures: int = 3
    authFailureDelay: float = 1
    receivedClientAddress: bool = True
    maxReceived: int = 100
    postmaster: str = ""


@dataclass
class _Transaction:
    sender: Mailbox | None
    body: str
    recipients: list[str] = field(default_factory=list)


class _Close(Exception):
    """
    Raised inside the protocol to end the session after a reply.
    """


# What a command gives: its reply, a Deferred that fires with it, or None
# when the command has replied itself.
_Outcome = Reply | defer.Deferred[Reply] | None

# What the portal's login gives when asked for IAccount.
_Avatar = tuple[type[Interface], IAccount, Callable[[], None]]


@implementer(IHandshakeListener)
class SubmissionProtocol(Protocol, TimeoutMixin):
    """
    One submission session; see the module docstring for its states.

    @ivar factory: the L{SubmissionFactory} that made it.
    @ivar session: a short random identifier, in every log line.
    @ivar countedAs: the address the session counts against in the
        per-client connection limit.
    """

    log = Logger()
    factory: SubmissionFactory
    # Set by makeConnection, before any method here runs.
    transport: _ISessionTransport

    def __init__(self, factory: SubmissionFactory) -> None:
        self.factory = factory
        self.settings = factory.settings
        self.session = secrets.token_hex(5)
        self.countedAs = ""
        self._buffer = b""
        self._busy = False
        self._closed = False
        self._connectLogged = False
        self._paused = False
        self._tlsParameters: tuple[str | None, str | None] | None = None
        self._abortCall: IDelayedCall | None = None
        self._overlongLine = False
        self._tls = factory.implicitTLS
        self._hello: str | None = None
        self._esmtp = False
        self._account: IAccount | None = None
        self._logout: Callable[[], None] | None = None
        self._transaction: _Transaction | None = None
        self._sasl: SASLExchange | None = None
        self._message: IncomingMessage | None = None
        self._errors = 0
        self._authFailures = 0
        self._commands: dict[str, list[int]] = {}

    def callLater(
        self, period: float, func: Callable[[], object]
    ) -> IDelayedCall:
        """
        Schedule the idle timeout of L{TimeoutMixin} on the factory's
        reactor rather than the global one.
        """
        return self.factory.reactor.callLater(period, func)

    # Connection events.

    @property
    def peer(self) -> str:
        """
        The client's address as logs show it.  Behind a C{haproxy:}
        endpoint it is the proxy's until the PROXY header has been read,
        so it is asked each time.
        """
        return describeAddress(self.transport.getPeer())

    def connectionMade(self) -> None:
        noDelay(self.transport)
        self.factory.sessionStarted(self)
        self.setTimeout(self.settings.idleTimeout)
        self._reply(replies.GREETING.fill(host=self.settings.hostname))

    def _logConnect(self) -> None:
        # Logged with the first input or the end of the session, when a
        # PROXY header has told the client's real address.
        if not self._connectLogged:
            self._connectLogged = True
            maillog.connected(self.session, self.peer, self.factory.name)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._logConnect()
        self._closed = True
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()
        self.setTimeout(None)
        self.factory.sessionEnded(self)
        if self._message is not None:
            self._message.abort()
        if self._logout is not None:
            self._logout()
        user = self._account.user if self._account else ""
        maillog.disconnected(self.session, self.peer, user, self._commands)

    def handshakeCompleted(self) -> None:
        version, cipher = _tlsDescription(self.transport)
        maillog.tlsStarted(self.session, version or "", cipher or "")

    def timeoutConnection(self) -> None:
        # RFC 5321 section 4.5.3.2.7: at least 5 minutes, then 421.
        self._reply(replies.IDLE_TIMEOUT)
        self._hangUp()

    def shutDown(self) -> None:
        """
        Tell the client the service is stopping (RFC 5321 section 3.8).
        """
        if not self._closed:
            self._reply(replies.SHUTTING_DOWN)
            self._hangUp()

    def _hangUp(self) -> None:
        """
        Close the connection once the replies written so far are sent, and
        handle no more input.  A client that does not read them, or never
        finishes its TLS handshake, would keep the connection open: it is
        cut off after L{CLOSE_GRACE} seconds.
        """
        if self._abortCall is None:
            self._closed = True
            self.transport.loseConnection()
            self._abortCall = self.callLater(
                CLOSE_GRACE, self.transport.abortConnection
            )

    def dataReceived(self, data: bytes) -> None:
        self._logConnect()
        self.resetTimeout()
        self._buffer += data
        self._process()
        if self._busy and len(self._buffer) > MAX_PENDING_INPUT:
            self._paused = True
            self.transport.pauseProducing()

    # The input loop.

    def _process(self) -> None:
        while self._buffer and not self._busy and not self._closed:
            if self._message is not None:
                rest = self._message.feed(self._buffer)
                self._buffer = b""
                if rest is None:
                    return
                self._buffer = rest
                self._endOfData(self._message)
                continue

            line, crlf, rest = self._buffer.partition(b"\r\n")
            if not crlf:
                self._holdPartialLine()
                return
            self._buffer = rest
            if self._overlongLine or len(line) > MAX_AUTH_LINE:
                self._overlongLine = False
                self._lineTooLong()
            else:
                self._lineReceived(line)

    def _holdPartialLine(self) -> None:
        # RFC 5321 section 4.5.3.1.5: refuse an over-long line, and resume
        # at the next CRLF without reading any part of it as a command.
        if len(self._buffer) > MAX_AUTH_LINE:
            self._buffer = self._buffer[-1:]
            self._overlongLine = True

    def _lineTooLong(self) -> None:
        if self._sasl is not None:
            self._sasl = None
            self._reply(replies.AUTH_LINE_TOO_LONG)
        else:
            self._reply(replies.LINE_TOO_LONG)

    def _lineReceived(self, line: bytes) -> None:
        try:
            if self._sasl is not None:
                self._authResponse(self._sasl, line)
            else:
                self._command(line)
        except _Close:
            self._hangUp()

    def _command(self, line: bytes) -> None:
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        shown = maillog.printable(verb, 20)
        try:
            verbText = verb.decode("ascii")
            text = argument.decode("ascii")
        except UnicodeDecodeError:
            self._refuse(shown, Refused(replies.NOT_ASCII))
            return
        command = COMMANDS.get(verbText)
        if command is None:
            known = verbText in UNIMPLEMENTED
            reply = (
                replies.NOT_IMPLEMENTED if known else replies.UNKNOWN_COMMAND
            )
            self._refuse(shown, Refused(reply))
            return

        if len(line) > MAX_COMMAND_LINE and verbText != "AUTH":
            self._refuse(verbText, Refused(replies.LINE_TOO_LONG))
            return
        if any(c < " " or c == "\x7f" for c in text):
            reason = "control character in the arguments"
            self._refuse(verbText, Refused(replies.BAD_SYNTAX, reason))
            return
        refusal = self._gate(command)
        if refusal is not None:
            self._refuse(verbText, Refused(refusal))
            return
        handler = getattr(self, "do_" + verbText)
        self._run(verbText, lambda: handler(text))

    def _gate(self, command: Command) -> Reply | None:
        if not (self._tls or command.beforeTLS):
            return replies.TLS_REQUIRED
        if not (self._account or command.beforeAuth):
            return replies.AUTH_REQUIRED
        return None

    def _run(self, verb: str, call: Callable[[], _Outcome]) -> None:
        """
        Run one command's C{call} and send its reply, now or when the
        L{defer.Deferred} it returns fires.
        """
        try:
            result = call()
        except Refused as refusal:
            self._refuse(verb, refusal)
            return
        except _Close:
            raise
        except Exception:
            self.log.failure(
                "{session}: {verb} failed", session=self.session, verb=verb
            )
            self._reply(replies.LOCAL_ERROR, verb)
            return
        if isinstance(result, defer.Deferred):
            self._wait(verb, result)
        elif result is not None and result.isFailure:
            self._refuse(verb, Refused(result))
        elif result is not None:
            self._reply(result, verb)

    def _wait(self, verb: str, pending: defer.Deferred[Reply]) -> None:
        """
        Hold further input until C{pending} fires with the reply.
        """
        self._busy = True

        def replied(reply: Reply | None) -> None:
            # Failures arrive as Refused; a failure reply here is a failed
            # AUTH, which maillog.authFailed has already logged.
            if reply is not None:
                self._reply(reply, verb)

        def refused(failure: Failure) -> None:
            if isinstance(failure.value, Refused):
                self._refuse(verb, failure.value)
            elif failure.check(_Close):
                self._hangUp()
            else:
                self.log.failure(
                    "{session}: {verb} failed",
                    failure,
                    session=self.session,
                    verb=verb,
                )
                self._reply(replies.LOCAL_ERROR, verb)

        def resume(ignored: object) -> None:
            self._busy = False
            if self._closed:
                return
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()
            self._process()

        pending.addCallbacks(replied, refused)
        pending.addBoth(resume)

    # Replies.

    def _reply(self, reply: Reply, verb: str = "", *lines: str) -> None:
        if self._closed:
            return
        if verb and reply.code != 354:
            counts = self._commands.setdefault(verb, [0, 0])
            counts[0] += not reply.isFailure
            counts[1] += 1
        self.transport.write(reply.format(*lines))
        if reply.isFailure and reply.code not in (421, 535, 454):
            self._countError()

    def _refuse(self, stage: str, refusal: Refused) -> None:
        maillog.rejected(self.session, stage, refusal.reply, refusal.reason)
        self._reply(refusal.reply, stage)

    def _countError(self) -> None:
        # RFC 5321 section 7.8: a client that keeps failing is cut off.
        self._errors += 1
        if self._errors >= self.settings.errors:
            self.transport.write(replies.TOO_MANY_ERRORS.format())
            self._hangUp()

    # Greetings and session commands.

    def do_EHLO(self, argument: str) -> None:
        self._greet(argument, esmtp=True)

    def do_HELO(self, argument: str) -> None:
        self._greet(argument, esmtp=False)

    def _greet(self, argument: str, esmtp: bool) -> None:
        verb = "EHLO" if esmtp else "HELO"
        if not isHelloArgument(argument):
            raise Refused(replies.BAD_DOMAIN, f"bad {verb} {argument!r}")
        self._hello, self._esmtp = argument, esmtp
        self._transaction = None

        greeting = replies.HELO_OK.fill(
            host=self.settings.hostname, client=argument
        )
        keywords = self._keywords() if esmtp else ()
        self._reply(greeting, verb, *keywords)

    def _keywords(self) -> list[str]:
        keywords = [
            "PIPELINING",
            f"SIZE {self.settings.messageSize}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
        ]
        if not self._tls and self.factory.contextFactory is not None:
            keywords.append("STARTTLS")
        if self._tls:
            keywords.append("AUTH " + " ".join(MECHANISMS))
        return keywords

    def do_NOOP(self, argument: str) -> Reply:
        return replies.OK

    def do_HELP(self, argument: str) -> Reply:
        return replies.HELP

    def do_VRFY(self, argument: str) -> Reply:
        # RFC 5321 section 3.5.3: never confirm or deny a user.
        return replies.VRFY_CANNOT

    def do_RSET(self, argument: str) -> Reply:
        if argument:
            return replies.NO_ARGUMENTS
        self._transaction = None
        return replies.OK

    def do_QUIT(self, argument: str) -> None:
        if argument:
            raise Refused(replies.NO_ARGUMENTS)
        self._reply(replies.CLOSING, "QUIT")
        raise _Close()

    def do_STARTTLS(self, argument: str) -> Reply | None:
        if self._tls:
            return replies.TLS_ACTIVE
        if argument:
            return replies.NO_ARGUMENTS
        if self.factory.contextFactory is None:
            return replies.TLS_UNAVAILABLE

        self._reply(replies.READY_FOR_TLS, "STARTTLS")
        # RFC 3207 section 6: nothing the client sent in plaintext after
        # STARTTLS may be acted on (CVE-2011-0411).
        self._buffer = b""
        self.transport.startTLS(self.factory.contextFactory)
        self._tls = True
        self._tlsParameters = None
        self._hello, self._esmtp, self._transaction = None, False, None
        return None

    # Authentication.

    def do_AUTH(self, argument: str) -> _Outcome:
        if self._account is not None:
            return replies.AUTH_ALREADY
        if self._transaction is not None:
            return replies.AUTH_IN_TRANSACTION
        if not self._esmtp:
            return replies.SAY_HELLO
        # RFC 4954 section 9: a client may be cut off after repeated
        # failures, though not before the third.
        if self._authFailures >= self.settings.maxAuthFailures:
            reason = "too many failed authentications in this session"
        elif self.factory.throttle.blocked(self._clientHost()):
            reason = "too many failed authentications from this address"
        else:
            reason = ""
        if reason:
            refusal = Refused(replies.TOO_MANY_AUTH_FAILURES, reason)
            self._refuse("AUTH", refusal)
            raise _Close()
        name, _, initial = argument.partition(" ")
        exchange = SASLExchange.forName(name)
        if exchange is None:
            return replies.AUTH_UNKNOWN_MECHANISM
        if " " in initial:
            return replies.BAD_SYNTAX

        self._sasl = exchange
        return self._saslStep(lambda: exchange.start(initial))

    def _authResponse(self, exchange: SASLExchange, line: bytes) -> None:
        self._run(
            "AUTH", lambda: self._saslStep(lambda: exchange.respond(line))
        )

    def _saslStep(
        self, step: Callable[[], str | UsernamePassword]
    ) -> _Outcome:
        try:
            outcome = step()
        except SASLCancelled:
            self._sasl = None
            return replies.AUTH_CANCELLED
        except SASLEncodingError:
            self._sasl = None
            return replies.AUTH_BAD_BASE64
        except SASLFailure as failure:
            return self._login(None, str(failure))

        if isinstance(outcome, str):
            self._reply(replies.AUTH_CHALLENGE.fill(challenge=outcome))
            return None
        return self._login(outcome, "")

    def _login(
        self, credentials: UsernamePassword | None, problem: str
    ) -> defer.Deferred[Reply]:
        # Called while an exchange is under way.
        assert self._sasl is not None
        mechanism = self._sasl.name
        self._sasl = None
        if credentials is None:
            attempt = defer.fail(UnauthorizedLogin(problem))
        else:
            attempt = defer.maybeDeferred(
                self.factory.portal.login, credentials, None, IAccount
            )
        return attempt.addCallbacks(
            self._loggedIn,
            self._loginFailed,
            callbackArgs=(mechanism,),
            errbackArgs=(mechanism,),
        )

    def _loggedIn(self, result: _Avatar, mechanism: str) -> Reply:
        interface, account, logout = result
        if self._closed:
            logout()
            return replies.AUTH_OK
        self._account, self._logout = account, logout
        maillog.authenticated(self.session, account.user, mechanism)
        return replies.AUTH_OK

    def _loginFailed(
        self, failure: Failure, mechanism: str
    ) -> Reply | Failure | defer.Deferred[Reply]:
        if failure.check(TemporaryAuthFailure):
            reply = replies.AUTH_TEMPORARY
            maillog.authFailed(
                self.session, mechanism, reply, str(failure.value)
            )
            return reply
        if not failure.check(UnauthorizedLogin):
            return failure

        self._authFailures += 1
        self.factory.throttle.failed(self._clientHost())
        reply = replies.AUTH_FAILED
        maillog.authFailed(self.session, mechanism, reply, "bad credentials")
        # A failure answers only after a delay that grows with each one,
        # to slow down password guessing (RFC 4954 section 9).
        delay = self.settings.authFailureDelay * self._authFailures
        return deferLater(self.factory.reactor, delay, lambda: reply)

    # The mail transaction.

    def do_MAIL(self, argument: str) -> Reply:
        if self._transaction is not None:
            return replies.NESTED_MAIL
        path, parameters = _splitPath(
            argument, "FROM", replies.BAD_SENDER_SYNTAX
        )
        sender = _parsePath(path, replies.BAD_SENDER_SYNTAX)
        body = self._mailParameters(parameters)

        # MAIL is served only after AUTH (see COMMANDS).
        assert self._account is not None
        if sender is not None:
            if not sender.isQualified:
                raise Refused(replies.SENDER_NOT_QUALIFIED, str(sender))
            if not self._account.maySendAs(sender):
                reason = f"user {self._account.user} may not use <{sender}>"
                raise Refused(replies.SENDER_NOT_OWNED, reason)
        self._transaction = _Transaction(sender, body)
        return replies.SENDER_OK

    def _mailParameters(self, text: str) -> str:
        parameters = _parseParameters(text)
        body = parameters.pop("BODY", "7BIT")
        size = parameters.pop("SIZE", "0")
        auth = parameters.pop("AUTH", "<>")
        if parameters:
            raise Refused(replies.UNKNOWN_PARAMETER, " ".join(parameters))

        if body is None or body.upper() not in ("7BIT", "8BITMIME"):
            raise Refused(replies.BAD_PARAMETER, "BODY")
        if size is None or not (size.isdigit() and len(size) <= 20):
            raise Refused(replies.BAD_PARAMETER, "SIZE")
        if int(size) > self.settings.messageSize:
            raise Refused(replies.SIZE_EXCEEDED, f"SIZE={size}")
        # RFC 4954 section 5: AUTH= must be accepted, but from a client it
        # is never trusted; its value is checked and then dropped.
        try:
            decodeXtext(auth or "")
        except AddressError:
            raise Refused(replies.BAD_PARAMETER, "AUTH") from None
        return body.upper()

    def do_RCPT(self, argument: str) -> Reply:
        if self._transaction is None:
            return replies.NEED_MAIL
        path, parameters = _splitPath(
            argument, "TO", replies.BAD_RECIPIENT_SYNTAX
        )
        if parameters:
            raise Refused(replies.UNKNOWN_PARAMETER, parameters)
        recipient = self._recipient(path)

        # RFC 6409 section 4.2.
        if not recipient.isQualified:
            raise Refused(replies.RECIPIENT_NOT_QUALIFIED, str(recipient))
        recipients = self._transaction.recipients
        if len(recipients) >= self.settings.recipients:
            raise Refused(replies.TOO_MANY_RECIPIENTS)
        if str(recipient) not in recipients:
            recipients.append(str(recipient))
        return replies.RECIPIENT_OK

    def _recipient(self, path: str) -> Mailbox:
        # RFC 5321 section 4.5.1: <Postmaster> without a domain, any case.
        if path.lower() == "<postmaster>":
            postmaster = self.settings.postmaster or defaultPostmaster(
                self.settings.hostname
            )
            return parseMailbox(postmaster)
        recipient = _parsePath(path, replies.BAD_RECIPIENT_SYNTAX)
        if recipient is None:
            raise Refused(replies.BAD_RECIPIENT_SYNTAX, "null recipient")
        return recipient

    def do_DATA(self, argument: str) -> Reply | None:
        if argument:
            return replies.NO_ARGUMENTS
        if self._transaction is None:
            return replies.NEED_MAIL
        if not self._transaction.recipients:
            return replies.NEED_RCPT
        if self._buffer:
            # The client did not wait for 354: the message would be read
            # from input the server never agreed to take as data.
            reason = "message data sent before the 354 reply"
            self._refuse("DATA", Refused(replies.PIPELINED_DATA, reason))
            raise _Close()

        try:
            self._message = self._newMessage(self._transaction)
        except OSError as error:
            self.log.error(
                "{session}: cannot open a spool file: {error}",
                session=self.session,
                error=error.strerror,
            )
            self._transaction = None
            return replies.LOCAL_ERROR
        self._reply(replies.START_DATA, "DATA")
        return None

    def _newMessage(self, transaction: _Transaction) -> IncomingMessage:
        # DATA is served only after AUTH (see COMMANDS).
        assert self._account is not None
        now = self.factory.reactor.seconds()
        envelope = Envelope(
            sender=str(transaction.sender or ""),
            recipients=tuple(transaction.recipients),
            user=self._account.user,
            received=now,
            body=transaction.body,
            client=self.peer,
        )
        writer = self.factory.spool.begin(envelope)
        return IncomingMessage(
            writer,
            self._account,
            self._trace(writer.queueID, transaction),
            now=now,
            hostname=self.settings.hostname,
            maxSize=self.settings.messageSize,
            lineLength=self.settings.lineLength,
            headerSize=self.settings.headerSize,
            maxReceived=self.settings.maxReceived,
        )

    def _clientHost(self) -> str:
        # Asked each time: behind a PROXY header the peer changes after
        # connectionMade.
        address = self.transport.getPeer()
        return getattr(address, "host", None) or str(address)

    def _trace(self, queueID: str, transaction: _Transaction) -> TraceInfo:
        # TLS parameters do not change within a session: ask once.
        if self._tlsParameters is None:
            self._tlsParameters = _tlsDescription(self.transport)
        version, cipher = self._tlsParameters
        client: str | None = getattr(self.transport.getPeer(), "host", None)
        if not self.settings.receivedClientAddress:
            client = None
        return TraceInfo(
            helo=self._hello or "",
            clientAddress=client,
            byHost=self.settings.hostname,
            protocol="ESMTPSA" if self._tls else "ESMTPA",
            queueID=queueID,
            recipients=list(transaction.recipients),
            tlsVersion=version,
            tlsCipher=cipher,
        )

    def _endOfData(self, message: IncomingMessage) -> None:
        transaction = self._transaction
        # DATA reads a message only within a transaction.
        assert transaction is not None
        self._message = self._transaction = None
        queued = message.finish().addCallback(
            self._queued, message, transaction
        )
        self._wait("DATA", queued)

    def _queued(
        self,
        ignored: None,
        message: IncomingMessage,
        transaction: _Transaction,
    ) -> Reply:
        maillog.queued(
            self.session,
            message.queueID,
            self._account.user if self._account else "",
            str(transaction.sender or ""),
            len(transaction.recipients),
            message.size,
        )
        return replies.QUEUED.fill(queueID=message.queueID)


class SubmissionFactory(Factory):
    """
    Makes L{SubmissionProtocol}s for one listener.

    @ivar name: the listener's name, for the log.
    @ivar settings: the L{SessionSettings}.
    @ivar portal: the C{twisted.cred} portal that checks credentials and
        hands out L{IAccount} avatars.
    @ivar spool: the L{msagate.interfaces.ISpool} for accepted messages.
    @ivar reactor: the reactor, for time (an L{IReactorTime}).
    @ivar contextFactory: the TLS context for STARTTLS, or L{None} when the
        listener offers no STARTTLS.
    @ivar implicitTLS: whether the listener's connections are TLS from the
        first byte.
    @ivar sessions: the sessions now open.
    """

    def __init__(
        self,
        name: str,
        settings: SessionSettings,
        portal: Portal,
        spool: ISpool,
        reactor: IReactorTime,
        contextFactory: IOpenSSLServerConnectionCreator | None = None,
        implicitTLS: bool = False,
        throttle: AuthThrottle | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.portal = portal
        self.spool = spool
        self.reactor = reactor
        self.contextFactory = contextFactory
        self.implicitTLS = implicitTLS
        self.throttle = throttle or AuthThrottle(reactor, 0, 0)
        self.sessions: set[SubmissionProtocol] = set()
        self._perClient: Counter[str] = Counter()

    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        """
        A session, or a refusal when there are too many (RFC 5321 section
        4.3.2 allows 421 at connection time).
        """
        client = getattr(addr, "host", None) or str(addr)
        limit, perClient = (
            self.settings.connections,
            self.settings.clientConnections,
        )
        if (limit and len(self.sessions) >= limit) or (
            perClient and self._perClient[client] >= perClient
        ):
            return _Refusal(replies.TOO_MANY_CONNECTIONS, client)
        session = SubmissionProtocol(self)
        session.countedAs = client
        return session

    def sessionStarted(self, session: SubmissionProtocol) -> None:
        """
        Count an open session under the address it connected from.
        """
        self.sessions.add(session)
        self._perClient[session.countedAs] += 1

    def sessionEnded(self, session: SubmissionProtocol) -> None:
        """
        Forget a closed session.
        """
        self.sessions.discard(session)
        self._perClient[session.countedAs] -= 1
        if self._perClient[session.countedAs] <= 0:
            del self._perClient[session.countedAs]

    def shutDown(self) -> None:
        """
        Tell every open session that the service is stopping.
        """
        for session in list(self.sessions):
            session.shutDown()


class _Refusal(Protocol):
    """
    Tells a client it cannot be served now, and hangs up.
    """

    log = Logger()
    # Set by makeConnection, before connectionMade.
    transport: ITransport

    def __init__(self, reply: Reply, client: str) -> None:
        self.reply = reply
        self.client = client

    def connectionMade(self) -> None:
        self.log.warn(
            "refused a connection from {client}: {reason}",
            client=self.client,
            reason=self.reply.text,
        )
        self.transport.write(self.reply.format())
        self.transport.loseConnection()


def noDelay(transport: object) -> None:
    """
    Turn off Nagle's algorithm on a TCP connection, through any wrappers
    (TLS, PROXY protocol), which pass the call on.  A command-and-reply
    protocol otherwise waits for delayed acknowledgements at every small
    write: each STARTTLS and AUTH round trip would cost tens of
    milliseconds.
    """
    setNoDelay = getattr(transport, "setTcpNoDelay", None)
    if setNoDelay is not None:
        try:
            setNoDelay(True)
        except OSError:
            pass


def _splitPath(
    argument: str, keyword: str, pathReply: Reply
) -> tuple[str, str]:
    """
    Split MAIL's or RCPT's argument: a missing C{FROM:<} or C{TO:<} is a
    syntax error of the command, anything after it one of the path.
    """
    try:
        return splitPathArgument(argument, keyword)
    except AddressError as error:
        start = argument[: len(keyword) + 2].upper()
        reply = pathReply if start == keyword + ":<" else replies.BAD_SYNTAX
        raise Refused(reply, str(error)) from None


def _parsePath(path: str, reply: Reply) -> Mailbox | None:
    try:
        return parsePath(path)
    except AddressError as error:
        raise Refused(reply, f"{error}: {maillog.printable(path)}") from None


def _parseParameters(text: str) -> dict[str, str | None]:
    try:
        return parseParameters(text)
    except AddressError as error:
        raise Refused(replies.BAD_SYNTAX, str(error)) from None


def _tlsDescription(
    transport: _ISessionTransport,
) -> tuple[str | None, str | None]:
    if not ISSLTransport.providedBy(transport):
        return None, None
    # Under TLS the handle is the pyOpenSSL connection.
    connection = cast("SSL.Connection", transport.getHandle())
    try:
        version = connection.get_protocol_version_name()
        cipher = connection.get_cipher_name()
    except AttributeError:
        return None, None
    return version, cipher


def describeAddress(address: IAddress) -> str:
    """
    @return: C{host:port} (C{[host]:port} for IPv6) for an IP address, or
        the address's own text for others (UNIX sockets).
    """
    if not isinstance(address, IPv4Address | IPv6Address):
        return str(address)
    host = address.host
    if ":" in host:
        return f"[{host}]:{address.port}"
    return f"{host}:{address.port}"
