# -*- test-case-name: tests.test_client -*-
"""
The ESMTP client that delivers queued mail to the next hop: a smarthost or
the MX of the recipients' domain.

L{connectSession} connects, reads the greeting, greets with EHLO (HELO
when EHLO is refused), starts TLS as the L{ClientSettings} ask, and
authenticates when credentials are set.  The L{SMTPSession} it gives then
runs mail transactions, one L{SMTPSession.send} after the other, each
giving one L{RecipientOutcome} per recipient.  What is done with them
(retries, bounces, the operator's log) is the relay manager's business:
this module logs nothing, so no command line with credentials can reach a
log.

Extensions used when the next hop announces them: PIPELINING (RFC 2920),
SIZE (RFC 1870), 8BITMIME (RFC 6152), STARTTLS (RFC 3207) and AUTH
(RFC 4954) with PLAIN or LOGIN.  The message data is stuffed by a
L{msagate._stuffing.DotStuffer}, which is correct at any chunk boundary
(SMTP-3, SEC-2), and streamed from the spool file with flow control by
the wire-level pieces of L{msagate._wire}.

Every failure of a session or a transaction is a L{DeliveryError}; only
SIZE and 8BITMIME refusals, found before anything is sent, are permanent.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar, cast

from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS

from msagate._wire import (
    ClientProtocol,
    DeliveryError,
    Response,
    describe,
    temporaryStatus,
)

_T = TypeVar("_T")

# The values of ClientSettings.security.
SECURITY = ("starttls", "opportunistic", "implicit", "none")
# Octets read from the spool file at a time.
CHUNK_SIZE = 65536
# Seconds to wait for the reply to QUIT, and then for the close.
QUIT_TIMEOUT = 10

__all__ = [
    "ClientSettings",
    "DeliveryError",
    "OutboundMessage",
    "RecipientOutcome",
    "Response",
    "SMTPSession",
    "connectSession",
]


@dataclass(frozen=True)
class ClientSettings:
    """
    How to talk to the next hop.

    @ivar heloName: our fully qualified name, for EHLO and HELO.
    @ivar security: C{"starttls"}: STARTTLS is required, and a next hop
        that does not offer it or fails the handshake is a temporary
        failure; C{"opportunistic"}: STARTTLS when offered; C{"implicit"}:
        the endpoint wraps the connection in TLS, the client just talks;
        C{"none"}: never TLS.
    @ivar tlsCreator: given the next hop's host name, the TLS settings for
        STARTTLS, which decide what is verified (TLS-17); L{None} for
        C{optionsForClientTLS(host)}, which verifies against the system's
        trusted CAs.
    @ivar username: the user to authenticate as, or C{""} for none.
    @ivar password: the password; it is never logged and never appears in
        an exception.
    @ivar timeout: seconds to wait for each reply, and for the next hop to
        take more data while sending the message (RFC 5321 section
        4.5.3.2).
    @ivar dataTimeout: seconds to wait for the reply to the final "."
        (RFC 5321 section 4.5.3.2.6).
    @ivar chunkSize: octets read from the message file at a time.
    """

    heloName: str
    security: str = "starttls"
    tlsCreator: Callable[[str], IOpenSSLClientConnectionCreator] | None = None
    username: str = ""
    password: str = ""
    timeout: float = 300
    dataTimeout: float = 600
    chunkSize: int = CHUNK_SIZE

    def __post_init__(self) -> None:
        if self.security not in SECURITY:
            raise ValueError(f"unknown security {self.security!r}")
        if self.chunkSize < 1:
            raise ValueError("chunkSize must be positive")

    def __repr__(self) -> str:
        # The default one would show the password.
        return (
            f"ClientSettings(heloName={self.heloName!r}, "
            f"security={self.security!r}, username={self.username!r})"
        )


@dataclass(frozen=True)
class OutboundMessage:
    """
    One message to deliver.

    @ivar sender: the reverse path without its brackets; C{""} for the null
        sender.
    @ivar recipients: the forward paths, without brackets.
    @ivar data: the stored message (CRLF line endings), positioned at its
        start; it is read in chunks, never whole.
    @ivar size: the size of the data in octets.
    @ivar eightBit: whether the message was submitted as BODY=8BITMIME.
    """

    sender: str
    recipients: tuple[str, ...]
    data: BinaryIO
    size: int
    eightBit: bool = False


@dataclass(frozen=True)
class RecipientOutcome:
    """
    What became of one recipient.

    @ivar recipient: the recipient's address.
    @ivar response: the reply that decided: 2yz delivered, 4yz try again
        later, 5yz failed.
    """

    recipient: str
    response: Response


class SMTPSession:
    """
    A session with the next hop, set up by L{connectSession}: greeted, with
    TLS and authentication as the settings ask.  It runs one transaction
    at a time; several in turn deliver several messages over one
    connection.

    @ivar host: the next hop's host name.
    @ivar extensions: the EHLO keywords the next hop announced, upper-case,
        each with its parameters (C{""} for none); empty after HELO.
    @ivar tlsActive: whether the session runs under TLS.
    @ivar authenticated: whether the session has authenticated.
    """

    def __init__(
        self,
        protocol: ClientProtocol,
        host: str,
        settings: ClientSettings,
    ) -> None:
        self.host = host
        self.extensions: dict[str, str] = {}
        self.tlsActive = settings.security == "implicit"
        self.authenticated = False
        self._protocol = protocol
        self._settings = settings
        self._busy = False
        # A transaction that did not end cleanly is reset before the next.
        self._dirty = False

    def describeTLS(self) -> str:
        """
        @return: the TLS version and cipher, such as C{"TLSv1.3
            TLS_AES_256_GCM_SHA384"}, or C{""} without TLS.
        """
        if not self.tlsActive:
            return ""
        # Under TLS the handle is the pyOpenSSL connection.
        handle = cast("SSL.Connection", self._protocol.transport.getHandle())
        try:
            version = handle.get_protocol_version_name()
            cipher = handle.get_cipher_name()
        except AttributeError:
            return ""
        return f"{version} {cipher or ''}".strip()

    # Setting up.

    async def _open(self) -> None:
        greeting = await self._reply("the greeting")
        if not greeting.positive:
            raise self._setupFailed(greeting, "refused the session", "4.4.0")
        await self._greet()
        await self._startTLS()
        if self._settings.username:
            await self._authenticate()

    async def _greet(self) -> None:
        name = self._settings.heloName
        response = await self._command(f"EHLO {name}", "the reply to EHLO")
        if response.positive:
            self.extensions = _extensions(response.lines[1:])
            return

        # RFC 5321 section 3.2: a server that does not know EHLO.
        if response.code >= 500:
            self.extensions = {}
            response = await self._command(f"HELO {name}", "the reply to HELO")
            if response.positive:
                return
        raise self._setupFailed(response, "refused our greeting", "4.4.0")

    async def _startTLS(self) -> None:
        security = self._settings.security
        if security not in ("starttls", "opportunistic"):
            return
        if "STARTTLS" not in self.extensions:
            if security == "opportunistic":
                return
            reason = f"{self.host} does not offer STARTTLS"
            raise self._fail(DeliveryError(reason, "4.7.10"))

        response = await self._command("STARTTLS", "the reply to STARTTLS")
        if response.code != 220:
            # RFC 3207 section 4: the session goes on without TLS.
            if security == "opportunistic":
                return
            raise self._setupFailed(response, "refused STARTTLS", "4.7.5")

        creator = self._settings.tlsCreator or optionsForClientTLS
        self._protocol.startTLS(creator(self.host))
        # RFC 3207 section 4.2: forget what was learnt without TLS.  The
        # reply comes only once the handshake has succeeded.
        await self._greet()
        self.tlsActive = True

    async def _authenticate(self) -> None:
        # TLS-18: credentials never travel in the clear.
        if not self.tlsActive:
            reason = (
                f"not authenticating to {self.host} without TLS; "
                f"the session is not encrypted"
            )
            raise self._fail(DeliveryError(reason, "4.7.10"))

        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            response = await self._authPlain()
        elif "LOGIN" in mechanisms:
            response = await self._authLogin()
        else:
            reason = f"{self.host} offers neither AUTH PLAIN nor AUTH LOGIN"
            raise self._fail(DeliveryError(reason, "4.7.0"))

        # A credential problem is ours to fix: mail waits, never bounces.
        if response.code != 235:
            user = self._settings.username
            refusal = f"refused authentication as {user}"
            raise self._setupFailed(response, refusal, "4.7.0")
        self.authenticated = True

    async def _authPlain(self) -> Response:
        # RFC 4616 section 2, with the initial response of RFC 4954.
        message = "\0".join(
            ["", self._settings.username, self._settings.password]
        )
        return await self._command(
            f"AUTH PLAIN {_base64(message)}",
            "the reply to AUTH PLAIN",
        )

    async def _authLogin(self) -> Response:
        response = await self._command("AUTH LOGIN", "the reply to AUTH LOGIN")
        if response.code != 334:
            return response
        response = await self._command(
            _base64(self._settings.username),
            "the reply to the user name",
        )
        if response.code != 334:
            return response
        return await self._command(
            _base64(self._settings.password),
            "the reply to the password",
        )

    # Transactions.

    def send(
        self, message: OutboundMessage
    ) -> Deferred[list[RecipientOutcome]]:
        """
        Run one mail transaction.

        With PIPELINING, MAIL, every RCPT and DATA go in one write (RFC
        2920 section 3.1); without it, one at a time, and no DATA when no
        recipient is accepted.

        @param message: the message.
        @return: a L{Deferred} firing with one L{RecipientOutcome} for each
            recipient, in order: a refused MAIL gives its reply to every
            recipient, a refused RCPT to its recipient, a refused DATA or
            the reply to the final "." to every accepted one.
        @raise RuntimeError: when a transaction is already under way.
        @raise DeliveryError: (in the L{Deferred}) when the message is too
            big for the next hop (permanent, 5.3.4) or 8-bit where it
            supports only 7 bits (permanent, 5.6.3), in which cases nothing
            is sent; or when the session fails, by a timeout, a lost
            connection or a malformed reply (temporary), and the connection
            is aborted.
        """
        if self._busy:
            raise RuntimeError("a transaction is already under way")
        self._busy = True
        sending = Deferred.fromCoroutine(self._transaction(message))
        return sending.addBoth(self._idle)

    def _idle(self, result: _T) -> _T:
        self._busy = False
        self._protocol.stage = "between transactions"
        return result

    async def _transaction(
        self, message: OutboundMessage
    ) -> list[RecipientOutcome]:
        if self._protocol.error is not None:
            raise self._protocol.error
        self._check(message)
        try:
            if self._dirty:
                await self._reset()
            if "PIPELINING" in self.extensions:
                return await self._pipelined(message)
            return await self._stepwise(message)
        except BaseException:
            self.abort()
            raise

    def _check(self, message: OutboundMessage) -> None:
        limit = _sizeLimit(self.extensions)
        if limit and message.size > limit:
            reason = (
                f"the message ({message.size} octets) exceeds the size "
                f"limit of {self.host} ({limit} octets)"
            )
            raise DeliveryError(reason, "5.3.4", permanent=True)
        # EXT-9: msagate does not convert 8-bit messages to 7 bits.
        if message.eightBit and "8BITMIME" not in self.extensions:
            reason = f"{self.host} does not support 8BITMIME"
            raise DeliveryError(reason, "5.6.3", permanent=True)
        for address in (message.sender, *message.recipients):
            if not _isPlainAddress(address):
                reason = f"address not fit for SMTP: {address!r}"
                raise DeliveryError(reason, "5.1.3", permanent=True)

    async def _reset(self) -> None:
        response = await self._command("RSET", "the reply to RSET")
        if not response.positive:
            raise self._setupFailed(response, "refused RSET", "4.5.0")
        self._dirty = False

    async def _pipelined(
        self, message: OutboundMessage
    ) -> list[RecipientOutcome]:
        rcpts = [f"RCPT TO:<{r}>" for r in message.recipients]
        self._dirty = True
        self._protocol.sendLines([self._mailCommand(message), *rcpts, "DATA"])

        mail = await self._transactionReply("the reply to MAIL")
        replies = [
            await self._transactionReply(f"the reply to RCPT TO:<{r}>")
            for r in message.recipients
        ]
        data = await self._dataReply()

        accepted = mail.positive and any(r.positive for r in replies)
        if data.code == 354 and not accepted:
            # RFC 2920 section 3.1: DATA went out before the refusals
            # came back; an empty message ends it.
            await self._command(".", "the reply to an empty message")
            return _outcomes(message, mail, replies, None)
        if data.code != 354:
            return _outcomes(message, mail, replies, data)
        return _outcomes(message, mail, replies, await self._body(message))

    async def _stepwise(
        self, message: OutboundMessage
    ) -> list[RecipientOutcome]:
        self._dirty = True
        self._protocol.sendLines([self._mailCommand(message)])
        mail = await self._transactionReply("the reply to MAIL")
        if not mail.positive:
            return _outcomes(message, mail, [], None)

        replies = []
        for recipient in message.recipients:
            self._protocol.sendLines([f"RCPT TO:<{recipient}>"])
            what = f"the reply to RCPT TO:<{recipient}>"
            replies.append(await self._transactionReply(what))
        if not any(r.positive for r in replies):
            return _outcomes(message, mail, replies, None)

        self._protocol.sendLines(["DATA"])
        data = await self._dataReply()
        if data.code != 354:
            return _outcomes(message, mail, replies, data)
        return _outcomes(message, mail, replies, await self._body(message))

    def _mailCommand(self, message: OutboundMessage) -> str:
        parts = [f"MAIL FROM:<{message.sender}>"]
        if "SIZE" in self.extensions:
            parts.append(f"SIZE={message.size}")
        if message.eightBit:
            parts.append("BODY=8BITMIME")
        # AUTH-17, RFC 4954 section 5: we vouch for no one's identity.
        if self.authenticated and "AUTH" in self.extensions:
            parts.append("AUTH=<>")
        return " ".join(parts)

    async def _body(self, message: OutboundMessage) -> Response:
        await self._protocol.sendBody(
            message.data, self._settings.chunkSize, self._settings.timeout
        )
        response = await self._transactionReply(
            "the reply to the end of data", self._settings.dataTimeout
        )
        # RFC 5321 section 4.1.1.4: the reply ends the transaction.
        self._dirty = False
        return response

    async def _transactionReply(
        self, what: str, timeout: float | None = None
    ) -> Response:
        response = await self._reply(what, timeout)
        if response.code // 100 == 3:
            raise self._unexpected(response, what)
        return response

    async def _dataReply(self) -> Response:
        response = await self._reply("the reply to DATA")
        # RFC 5321 section 4.3.2: 354, or a refusal.
        if response.code != 354 and response.code < 400:
            raise self._unexpected(response, "the reply to DATA")
        return response

    # Ending.

    def quit(self) -> Deferred[None]:
        """
        Say QUIT, wait a little for the reply, and close the connection.

        @return: a L{Deferred} that fires once the connection is closed; it
            never fails.
        """
        return Deferred.fromCoroutine(self._quit())

    async def _quit(self) -> None:
        if self._protocol.error is None:
            self._protocol.sendLines(["QUIT"])
            try:
                await self._protocol.nextReply(
                    "the reply to QUIT", QUIT_TIMEOUT
                )
            except DeliveryError:
                pass
        await self._protocol.close(QUIT_TIMEOUT)

    def abort(self) -> None:
        """
        Abort the connection at once; a transaction under way fails.
        """
        self._protocol.abort()

    # Helpers.

    async def _command(self, line: str, what: str) -> Response:
        self._protocol.sendLines([line])
        return await self._reply(what)

    async def _reply(
        self, what: str, timeout: float | None = None
    ) -> Response:
        return await self._protocol.nextReply(
            what, self._settings.timeout if timeout is None else timeout
        )

    def _fail(self, error: DeliveryError) -> DeliveryError:
        self._protocol.fail(error)
        return error

    def _setupFailed(
        self, response: Response, what: str, default: str
    ) -> DeliveryError:
        reason = f"{self.host} {what}"
        status = temporaryStatus(response, default)
        return self._fail(DeliveryError(reason, status, response=response))

    def _unexpected(self, response: Response, what: str) -> DeliveryError:
        reason = f"unexpected {what} from {self.host}"
        return self._fail(DeliveryError(reason, "4.5.0", response=response))


def connectSession(
    endpoint: IStreamClientEndpoint,
    host: str,
    settings: ClientSettings,
    reactor: IReactorTime,
) -> Deferred[SMTPSession]:
    """
    Connect to the next hop and set up a session: read the greeting, say
    EHLO (HELO when EHLO is refused), start TLS and authenticate as
    C{settings} ask.

    @param endpoint: where the next hop listens; for C{"implicit"}
        security, an endpoint that wraps the connection in TLS.
    @param host: the next hop's host name, which its certificate must
        name (TLS-17).
    @param settings: the L{ClientSettings}.
    @param reactor: the reactor's clock, for the timeouts.
    @return: a L{Deferred} firing with the L{SMTPSession}, or failing with
        a temporary L{DeliveryError}: status 4.4.1 when the connection
        fails, C{tlsFailed} set when a TLS handshake fails (a certificate
        that does not verify among others), a refused greeting, STARTTLS
        required but not offered, credentials refused or impossible to send
        safely (TLS-18).  After a failure the connection is closed.
    """
    factory = _ClientFactory(reactor, host, settings.security == "implicit")
    connecting = endpoint.connect(factory)
    return Deferred.fromCoroutine(
        _setUp(cast("Deferred[ClientProtocol]", connecting), host, settings)
    )


class _ClientFactory(Factory):
    """
    Makes the one protocol of a connection to the next hop.
    """

    noisy = False

    def __init__(
        self, reactor: IReactorTime, host: str, implicitTLS: bool
    ) -> None:
        self.reactor = reactor
        self.host = host
        self.implicitTLS = implicitTLS

    def buildProtocol(self, addr: IAddress | None) -> ClientProtocol:
        return ClientProtocol(self.reactor, self.host, self.implicitTLS)


async def _setUp(
    connecting: Deferred[ClientProtocol], host: str, settings: ClientSettings
) -> SMTPSession:
    try:
        protocol = await connecting
    except Exception as error:
        reason = f"cannot connect to {host}: {describe(error)}"
        raise DeliveryError(reason, "4.4.1") from None

    session = SMTPSession(protocol, host, settings)
    try:
        await session._open()
    except BaseException:
        session.abort()
        raise
    return session


def _outcomes(
    message: OutboundMessage,
    mail: Response,
    replies: list[Response],
    last: Response | None,
) -> list[RecipientOutcome]:
    """
    Give each recipient the reply that decided its fate.

    @param mail: the reply to MAIL; when refused, it decides for all.
    @param replies: the reply to each RCPT.
    @param last: the refusal of DATA or the reply to the final "."; it
        decides for the accepted recipients.  L{None} when there was
        neither.
    """
    if not mail.positive:
        return [RecipientOutcome(r, mail) for r in message.recipients]
    return [
        RecipientOutcome(
            recipient,
            reply if last is None or not reply.positive else last,
        )
        for recipient, reply in zip(message.recipients, replies, strict=True)
    ]


def _extensions(lines: tuple[str, ...]) -> dict[str, str]:
    """
    @param lines: the lines of a reply to EHLO after the first.
    @return: each keyword, upper-case, with its parameters.
    """
    extensions = {}
    for line in lines:
        keyword, _, parameters = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = parameters.strip()
    return extensions


def _sizeLimit(extensions: dict[str, str]) -> int:
    """
    @return: the SIZE limit announced, or 0 for none (RFC 1870 section 4).
    """
    parameters = extensions.get("SIZE", "")
    return int(parameters) if parameters.isdigit() else 0


def _isPlainAddress(address: str) -> bool:
    # What the spool holds was checked on submission; this guards the
    # command lines against anything that is not printable ASCII.
    return address.isascii() and address.isprintable()


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
