# -*- test-case-name: tests.test_client -*-
"""
The wire side of msagate's outbound client: the protocol that splits the
next hop's input into replies (RFC 5321 section 4.2) and hands them out in
order, which makes pipelining natural, and the producer that streams a
stuffed message to the transport with flow control.  L{msagate.client}
builds sessions on them.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    IReactorTime,
    ISystemHandle,
    ITCPTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from msagate._stuffing import DotStuffer

if TYPE_CHECKING:

    class _IClientTransport(ITLSTransport, ISystemHandle, IConsumer):
        """
        What the client uses of its transport, for the type checker only:
        Twisted's TCP and TLS transports provide all of it, but none of
        their interfaces says so alone.
        """


_T = TypeVar("_T")

# RFC 5321 section 4.5.3.1.5 allows 512 octets; extensions make replies
# longer, and no reply needs more than this.
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 200
# Replies the next hop may send before they are asked for.
MAX_UNREAD_REPLIES = 1000

_REPLY_LINE = re.compile(rb"([2-5][0-9]{2})(?:([ -])(.*))?", re.DOTALL)
_ENHANCED_STATUS = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)")


@dataclass(frozen=True)
class Response:
    """
    One reply of the next hop.

    @ivar code: the three-digit reply code.
    @ivar lines: the text of each line of the reply, without the code.
    """

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """
        The lines joined by spaces.
        """
        return " ".join(self.lines)

    @property
    def status(self) -> str:
        """
        The enhanced status code the reply starts with (RFC 2034), such as
        C{"5.1.1"}, or C{""} when it has none or one whose class does not
        match the reply code.
        """
        match = _ENHANCED_STATUS.match(self.lines[0] if self.lines else "")
        if match is None or match.group(1)[0] != str(self.code)[0]:
            return ""
        return match.group(1)

    @property
    def positive(self) -> bool:
        """
        Whether the code is 2yz: done.
        """
        return 200 <= self.code < 300

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


class DeliveryError(Exception):
    """
    A session or a transaction failed as a whole, before any recipient has
    an outcome.

    @ivar reason: what happened, for the operator.
    @ivar status: the enhanced status code for a delivery status
        notification (RFC 3463), such as C{"4.4.2"}.
    @ivar permanent: whether trying again cannot help.
    @ivar response: the next hop's reply that caused the failure, if one
        did.
    @ivar tlsFailed: whether a TLS handshake failed; in opportunistic mode
        the relay manager may try again without TLS.
    """

    def __init__(
        self,
        reason: str,
        status: str,
        permanent: bool = False,
        response: Response | None = None,
        tlsFailed: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.permanent = permanent
        self.response = response
        self.tlsFailed = tlsFailed


def temporaryStatus(response: Response, default: str) -> str:
    """
    @return: the enhanced status of C{response} as a temporary one, or
        C{default} when it has none: a session that cannot be set up is
        tried again later, whatever the next hop says.
    """
    status = response.status
    return "4" + status[1:] if status else default


@implementer(IHandshakeListener)
class ClientProtocol(Protocol):
    """
    Splits the next hop's input into replies and hands them out one at a
    time, in order, each to the one who waits for it.  Replies that come
    before they are waited for (pipelining) are kept until then.

    A failure (a timeout, a lost connection, a malformed reply) sticks: it
    fails the wait under way and every later one.

    @ivar error: the failure, once there is one.
    @ivar tlsStarted: whether TLS was started on the connection.
    @ivar handshakeDone: whether its handshake has completed.
    """

    # Set by makeConnection, before any method here runs.
    transport: _IClientTransport

    def __init__(
        self, reactor: IReactorTime, host: str, implicitTLS: bool
    ) -> None:
        self.host = host
        self.error: DeliveryError | None = None
        self.tlsStarted = implicitTLS
        self.handshakeDone = False
        self.stage = "waiting for the greeting"
        self._reactor = reactor
        self._buffer = b""
        self._code = b""
        self._lines: list[str] = []
        self._replies: deque[Response] = deque()
        self._waiter: Deferred[Response] | None = None
        self._timer: IDelayedCall | None = None
        self._body: BodyProducer | None = None
        self._lost = False
        self._aborted = False
        self._whenLost: list[Deferred[None]] = []

    # Connection events.

    def connectionMade(self) -> None:
        # Commands are small writes that each wait for a reply.
        if ITCPTransport.providedBy(self.transport):
            try:
                self.transport.setTcpNoDelay(True)
            except OSError:
                pass

    def handshakeCompleted(self) -> None:
        self.handshakeDone = True

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self._stop(self._lostError(reason))
        whenLost, self._whenLost = self._whenLost, []
        for waiting in whenLost:
            waiting.callback(None)

    def _lostError(self, reason: Failure | None) -> DeliveryError:
        if self.tlsStarted and not self.handshakeDone:
            return DeliveryError(
                f"TLS with {self.host} failed: {tlsProblem(reason)}",
                "4.7.5",
                tlsFailed=True,
            )
        return DeliveryError(
            f"{self.host}: connection lost {self.stage}", "4.4.2"
        )

    # Replies.

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while self.error is None:
            line, found, rest = self._buffer.partition(b"\n")
            if not found:
                break
            self._buffer = rest
            self._lineReceived(line.removesuffix(b"\r"))
        if self.error is None and len(self._buffer) > MAX_REPLY_LINE:
            self._malformed("a reply line is too long")

    def _lineReceived(self, line: bytes) -> None:
        match = _REPLY_LINE.fullmatch(line)
        if len(line) > MAX_REPLY_LINE:
            self._malformed("a reply line is too long")
        elif match is None:
            self._malformed("a reply does not start with a reply code")
        elif self._lines and match.group(1) != self._code:
            self._malformed("the lines of a reply have different codes")
        elif len(self._lines) >= MAX_REPLY_LINES:
            self._malformed("a reply has too many lines")
        else:
            self._code = match.group(1)
            self._lines.append(
                (match.group(3) or b"").decode("utf-8", "replace")
            )
            if match.group(2) != b"-":
                self._replyReceived(
                    Response(int(self._code), tuple(self._lines))
                )

    def _replyReceived(self, response: Response) -> None:
        self._lines = []
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            self._cancelTimer()
            waiter.callback(response)
        elif len(self._replies) < MAX_UNREAD_REPLIES:
            self._replies.append(response)
        else:
            self._malformed("too many replies that were not asked for")

    def _malformed(self, problem: str) -> None:
        self.fail(
            DeliveryError(
                f"{self.host}: malformed reply {self.stage}: {problem}",
                "4.5.0",
            )
        )

    def nextReply(self, what: str, timeout: float) -> Deferred[Response]:
        """
        Wait for the next reply.

        @param what: what the reply answers, for error messages, as in
            C{"the reply to MAIL"}.
        @param timeout: seconds to wait.
        @return: a L{Deferred} firing with the L{Response}, or failing
            with the L{DeliveryError} of the session.
        """
        self.stage = f"waiting for {what}"
        if self._replies:
            return succeed(self._replies.popleft())
        if self.error is not None:
            return fail(self.error)
        self._waiter = Deferred()
        self._timer = self._reactor.callLater(timeout, self._timedOut)
        return self._waiter

    def _timedOut(self) -> None:
        self._timer = None
        reason = f"{self.host}: timed out {self.stage}"
        self.fail(DeliveryError(reason, "4.4.2"))

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # Commands and data.

    def sendLines(self, lines: list[str]) -> None:
        """
        Send command lines in one write.  Nothing is logged: the lines may
        hold credentials, and a log line per command would cost more than
        the command.

        @param lines: the commands, without CRLF.
        """
        if self.error is None:
            wire = "".join(line + "\r\n" for line in lines)
            self.transport.write(wire.encode("ascii"))

    def sendBody(
        self, data: BinaryIO, chunkSize: int, timeout: float
    ) -> Deferred[None]:
        """
        Send message data, stuffed, and the end-of-data marker.

        @param data: the message file.
        @param chunkSize: octets to read at a time.
        @param timeout: seconds the next hop may refuse to take more.
        @return: a L{Deferred} firing once all is written, or failing with
            the L{DeliveryError} of the session.
        """
        self.stage = "while sending the message data"
        if self.error is not None:
            return fail(self.error)
        producer = BodyProducer(self, self._reactor, data, chunkSize, timeout)
        self._body = producer
        producer.done.addBoth(self._bodyDone)
        producer.start()
        return producer.done

    def _bodyDone(self, result: object) -> object:
        self._body = None
        return result

    def startTLS(self, creator: IOpenSSLClientConnectionCreator) -> None:
        """
        Start the TLS handshake; what is sent from now on waits for it.
        """
        self.tlsStarted = True
        self.transport.startTLS(creator)

    # Ending.

    def fail(self, error: DeliveryError) -> None:
        """
        Fail the session: the wait under way and every later one fail with
        C{error}, and the connection is aborted.
        """
        if self.error is None:
            self._stop(error)
            self.abort()

    def _stop(self, error: DeliveryError) -> None:
        if self.error is not None:
            return
        self.error = error
        self._cancelTimer()
        body, self._body = self._body, None
        if body is not None:
            body.abandon(error)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.errback(error)

    def close(self, timeout: float) -> Deferred[None]:
        """
        Close the connection, and abort it if it is not closed within
        C{timeout} seconds.

        @return: a L{Deferred} that fires once the connection is closed or
            aborted.
        """
        if self._lost:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._whenLost.append(closed)
        self.transport.loseConnection()

        def abort() -> None:
            self.abort()
            if closed in self._whenLost:
                self._whenLost.remove(closed)
                closed.callback(None)

        aborting = self._reactor.callLater(timeout, abort)
        return closed.addBoth(cancelling(aborting))

    def abort(self) -> None:
        """
        Abort the connection at once.
        """
        if not (self._lost or self._aborted):
            self._aborted = True
            self.transport.abortConnection()


def cancelling(call: IDelayedCall) -> Callable[[_T], _T]:
    """
    @return: a callback that cancels C{call} if it is still to come, and
        passes its result on.
    """

    def cancel(result: _T) -> _T:
        if call.active():
            call.cancel()
        return result

    return cancel


@implementer(IPushProducer)
class BodyProducer:
    """
    Writes the stuffed message data to the transport as fast as it takes
    it, reading the file only as the transport asks for more.

    @ivar done: fires once the data and the end marker are written.
    """

    def __init__(
        self,
        protocol: ClientProtocol,
        reactor: IReactorTime,
        data: BinaryIO,
        chunkSize: int,
        timeout: float,
    ) -> None:
        self.done: Deferred[None] = Deferred()
        self._protocol = protocol
        self._reactor = reactor
        self._transport = protocol.transport
        self._data = data
        self._chunkSize = chunkSize
        self._timeout = timeout
        self._stuffer = DotStuffer()
        self._paused = False
        self._finished = False
        self._stall: IDelayedCall | None = None

    def start(self) -> None:
        """
        Register with the transport and start writing.
        """
        self._transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self._cancelStall()
        while not (self._paused or self._finished):
            try:
                chunk = self._data.read(self._chunkSize)
            except OSError as error:
                reason = f"cannot read the message: {error.strerror}"
                self._protocol.fail(DeliveryError(reason, "4.3.0"))
                return
            if not chunk:
                self._finish()
                return
            self._transport.write(self._stuffer.stuff(chunk))

    def pauseProducing(self) -> None:
        self._paused = True
        if self._stall is None and not self._finished:
            self._stall = self._reactor.callLater(self._timeout, self._stalled)

    def stopProducing(self) -> None:
        # The connection is gone; the protocol reports why.
        self._finished = True
        self._cancelStall()

    def abandon(self, error: DeliveryError) -> None:
        """
        Stop for good because the session failed with C{error}.
        """
        self._finished = True
        self._cancelStall()
        if not self.done.called:
            self.done.errback(error)

    def _finish(self) -> None:
        self._finished = True
        self._transport.write(self._stuffer.end())
        self._transport.unregisterProducer()
        self.done.callback(None)

    def _stalled(self) -> None:
        self._stall = None
        error = DeliveryError(
            f"{self._protocol.host}: timed out while sending the message data",
            "4.4.2",
        )
        self._protocol.fail(error)

    def _cancelStall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None


def tlsProblem(reason: Failure | None) -> str:
    """
    @return: why a TLS handshake failed, in words.
    """
    value = reason.value if reason is not None else None
    if isinstance(value, VerificationError):
        return f"certificate verification failed: {value}"
    if isinstance(value, SSL.Error):
        # pyOpenSSL lists (library, function, reason) for each problem.
        problems = [
            str(problem[-1])
            for problem in (value.args[0] if value.args else [])
            if isinstance(problem, tuple)
        ]
        text = ", ".join(problems) or "handshake error"
        if "certificate verify failed" in problems:
            return f"certificate verification failed: {text}"
        return text
    return f"connection closed during the handshake ({describe(value)})"


def describe(error: object) -> str:
    return str(error) or type(error).__name__
