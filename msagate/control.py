# -*- test-case-name: tests.test_control -*-
"""
The control socket: how C{msagate queue} asks a running server to act on
its queue.

A running server holds the spool lock and is the only writer of delivery
state, so the administration command must not touch the files behind its
back.  It sends one request over the UNIX socket C{spool/control} (mode
0600) and prints the answer.  The protocol is one line each way::

    flush\\n            flush QUEUEID\\n     hold QUEUEID\\n
    release QUEUEID\\n  delete QUEUEID\\n

answered by C{ok TEXT\\n} or C{error TEXT\\n}, after which the server
closes the connection.  The server side asks an L{IQueueControl} (the
relay manager); the client side is L{sendRequest}, plain blocking socket
code for the command.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IReactorUNIX,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from msagate.maillog import printable
from msagate.queue import isQueueID

CONTROL = "control"
COMMANDS = ("flush", "hold", "release", "delete")
# The longest request line, line end excluded.
MAX_REQUEST = 256
# The longest answer text the server sends, and the most a client reads.
MAX_TEXT = 1000
MAX_ANSWER = 8192
IDLE_TIMEOUT = 30.0

if TYPE_CHECKING:

    class _ControlReactor(IReactorUNIX, IReactorTime):
        """
        What the control socket needs of a reactor, for the type checker
        only: UNIX sockets and time.
        """


class IQueueControl(Interface):
    """
    Acts on the queue of a running server; the relay manager provides it.

    Each method returns a L{Deferred} that fires with a short text for the
    operator, naming the message it is about (such as C{"QUEUEID held"}).
    It fails with L{KeyError} for an unknown queue ID, or with
    L{ControlError} to refuse with the error's text.
    """

    def flush(queueID: str | None) -> Deferred[str]:
        """
        Try the message C{queueID} now, or every message when L{None}.
        """

    def hold(queueID: str) -> Deferred[str]:
        """
        Put a message on hold: it is not tried until released.
        """

    def release(queueID: str) -> Deferred[str]:
        """
        Release a held message; it is tried as soon as possible.
        """

    def delete(queueID: str) -> Deferred[str]:
        """
        Remove a message from the queue without delivering it.
        """


class ControlError(Exception):
    """
    A control request was refused or failed; the text says why, for the
    operator.
    """


class ServerNotRunning(Exception):
    """
    No server answers on the control socket: the socket does not exist,
    or nothing listens on it any more.

    @ivar path: the control socket's path.
    """

    def __init__(self, path: str) -> None:
        super().__init__(f"no server listens on {path}")
        self.path = path


class ControlProtocol(LineOnlyReceiver):
    """
    The server side of one control connection: one request, one answer,
    then the connection closes.  A connection that sends no request
    within its timeout is closed.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    log = Logger()
    transport: ITransport

    def __init__(
        self, control: IQueueControl, clock: IReactorTime, timeout: float
    ) -> None:
        self._control = control
        self._clock = clock
        self._timeout = timeout
        self._idle: IDelayedCall | None = None
        self._received = False

    def connectionMade(self) -> None:
        """
        Start waiting for the request.
        """
        self._idle = self._clock.callLater(self._timeout, self._timedOut)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        Stop waiting; an answer still to come goes nowhere.
        """
        self._stopIdleTimer()

    def lineReceived(self, line: bytes) -> None:
        """
        Answer the first request; ignore anything after it.
        """
        if self._received:
            return
        self._received = True
        self._stopIdleTimer()
        try:
            command, queueID = parseRequest(line)
        except ValueError as error:
            self._answer(printable(line), "error", str(error))
            return
        request = command if queueID is None else f"{command} {queueID}"
        answering = maybeDeferred(self._perform, command, queueID)
        answering.addCallbacks(
            lambda text: self._answer(request, "ok", text),
            self._failed,
            errbackArgs=(request, queueID),
        )

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        Refuse a request longer than L{MAX_REQUEST} octets.
        """
        if self._received:
            return
        self._received = True
        self._stopIdleTimer()
        self._answer("(too long)", "error", "request too long")

    def _perform(self, command: str, queueID: str | None) -> Deferred[str]:
        if command == "flush":
            return self._control.flush(queueID)
        assert queueID is not None
        actions = {
            "hold": self._control.hold,
            "release": self._control.release,
            "delete": self._control.delete,
        }
        return actions[command](queueID)

    def _failed(
        self, failure: Failure, request: str, queueID: str | None
    ) -> None:
        if failure.check(KeyError):
            text = f"no message {queueID} in the queue"
        elif failure.check(ControlError):
            text = str(failure.value)
        else:
            self.log.failure(
                "control request {request} failed", failure, request=request
            )
            text = "internal error; see the server's log"
        self._answer(request, "error", text)

    def _answer(self, request: str, outcome: str, text: str) -> None:
        text = " ".join(text.split())[:MAX_TEXT]
        self.log.info(
            "control request {request}: {outcome} {text}",
            request=request,
            outcome=outcome,
            text=printable(text),
        )
        self.transport.write(f"{outcome} {text}\n".encode())
        self.transport.loseConnection()

    def _timedOut(self) -> None:
        self._idle = None
        self.transport.loseConnection()

    def _stopIdleTimer(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None


class ControlFactory(Factory):
    """
    Builds a L{ControlProtocol} for each connection to the control socket.
    """

    def __init__(
        self,
        control: IQueueControl,
        clock: IReactorTime,
        timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.control = control
        self.clock = clock
        self.timeout = timeout

    def buildProtocol(self, addr: IAddress | None) -> ControlProtocol:
        """
        @return: a L{ControlProtocol} for one connection.
        """
        protocol = ControlProtocol(self.control, self.clock, self.timeout)
        protocol.factory = self
        return protocol


def parseRequest(line: bytes) -> tuple[str, str | None]:
    """
    Read one request line.

    @param line: the line without its LF; a CR before it is allowed.
    @return: the command and its queue ID (L{None} for C{flush} alone).
    @raise ValueError: when the line is not a valid request; the text
        says why.
    """
    try:
        words = line.decode("ascii").split()
    except UnicodeDecodeError:
        raise ValueError("request is not ASCII") from None
    if not words or words[0] not in COMMANDS:
        raise ValueError(f"unknown command; use one of {', '.join(COMMANDS)}")
    command, arguments = words[0], words[1:]
    if len(arguments) > 1 or (not arguments and command != "flush"):
        raise ValueError(f"{command} takes one queue ID")
    if arguments and not isQueueID(arguments[0]):
        raise ValueError("bad queue ID")
    return command, arguments[0] if arguments else None


@implementer(IStreamServerEndpoint)
class ControlEndpoint:
    """
    The control socket, created with mode 0600.  A socket file left by a
    server that died is removed first, which is safe only for the holder
    of the spool lock.

    @ivar path: the socket's path.
    """

    def __init__(self, reactor: IReactorUNIX, path: str) -> None:
        self.path = path
        self._reactor = reactor

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen on the socket, replacing a stale one.
        """
        try:
            _removeStaleSocket(self.path)
        except OSError:
            return fail()
        endpoint = UNIXServerEndpoint(self._reactor, self.path, mode=0o600)
        listening: Deferred[IListeningPort] = endpoint.listen(factory)
        return listening


def listenControl(
    reactor: _ControlReactor, path: str, control: IQueueControl
) -> Deferred[IListeningPort]:
    """
    Answer control requests on the socket C{path} by asking C{control}.

    @return: a L{Deferred} firing with the listening port.
    """
    endpoint = ControlEndpoint(reactor, path)
    return endpoint.listen(ControlFactory(control, reactor))


def sendRequest(
    socketPath: str,
    command: str,
    argument: str | None,
    timeout: float = 30,
) -> str:
    """
    Send one request to the server and wait for its answer (blocking).

    @param command: one of L{COMMANDS}.
    @param argument: the queue ID, or L{None}.
    @param timeout: how long to wait for the server, in seconds.
    @return: the text of an C{ok} answer.
    @raise ServerNotRunning: when no server listens on C{socketPath}.
    @raise ControlError: when the server answers C{error}, or closes the
        connection without a valid answer.
    @raise OSError: when the socket cannot be used (permission denied,
        timeout).
    """
    words = [command] if argument is None else [command, argument]
    if any(not word or len(word.split()) != 1 for word in words):
        raise ValueError("a request word must not be empty or hold spaces")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(socketPath)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ServerNotRunning(socketPath) from None
        try:
            connection.sendall(" ".join(words).encode("ascii") + b"\n")
            answer = _receiveLine(connection)
        except (BrokenPipeError, ConnectionResetError):
            answer = ""
    outcome, _, text = answer.partition(" ")
    if outcome == "ok":
        return text
    if outcome == "error":
        raise ControlError(text)
    raise ControlError("the server gave no valid answer")


def _receiveLine(connection: socket.socket) -> str:
    received = bytearray()
    while b"\n" not in received and len(received) < MAX_ANSWER:
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    line, newline, _ = bytes(received).partition(b"\n")
    return line.decode("utf-8", "replace") if newline else ""


def _removeStaleSocket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    # Anything but a socket is left alone, and listening then fails.
    if stat.S_ISSOCK(mode):
        os.unlink(path)
