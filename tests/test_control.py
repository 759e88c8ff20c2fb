"""
Tests for L{msagate.control}: the control protocol over an in-memory
transport with a L{Clock}, and the control socket for real: a UNIX socket
in the test reactor, asked by L{sendRequest} from the test's thread.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import inReactor
from twisted.internet import reactor as globalReactor
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from msagate.control import (
    IDLE_TIMEOUT,
    MAX_REQUEST,
    ControlEndpoint,
    ControlError,
    ControlFactory,
    ControlProtocol,
    IQueueControl,
    ServerNotRunning,
    listenControl,
    parseRequest,
    sendRequest,
)
from msagate.testing import RecordingQueueControl

KNOWN = "0000000000001AAAAA"
UNKNOWN = "0000000000002BBBBB"


class Connection:
    """
    A control protocol connected to a L{StringTransport}, on a L{Clock}.
    """

    def __init__(self, control: RecordingQueueControl) -> None:
        self.clock = Clock()
        factory = ControlFactory(control, self.clock)
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        """
        Deliver C{data} and return what the server wrote since.
        """
        self.transport.clear()
        self.protocol.dataReceived(data)
        return self.transport.value()


@pytest.fixture
def control() -> RecordingQueueControl:
    """
    A fake queue.
    """
    return RecordingQueueControl(KNOWN)


@pytest.fixture
def connection(control: RecordingQueueControl) -> Connection:
    """
    A control connection to the fake queue.
    """
    return Connection(control)


def test_fakeProvidesInterface(control: RecordingQueueControl) -> None:
    """
    The fake queue used here provides IQueueControl, and the control
    endpoint provides IStreamServerEndpoint.
    """
    assert verifyObject(IQueueControl, control)
    endpoint = ControlEndpoint(globalReactor, "/nonexistent/control")
    assert verifyObject(IStreamServerEndpoint, endpoint)


def test_factoryBuildsProtocol(control: RecordingQueueControl) -> None:
    """
    The factory builds a ControlProtocol that points back to it.
    """
    factory = ControlFactory(control, Clock())
    protocol = factory.buildProtocol(None)
    assert isinstance(protocol, ControlProtocol)
    assert protocol.factory is factory


# Requests and answers over an in-memory transport.


@pytest.mark.parametrize(
    "request_, call",
    [
        (b"flush\n", ("flush", None)),
        (f"flush {KNOWN}\n".encode(), ("flush", KNOWN)),
        (f"hold {KNOWN}\n".encode(), ("hold", KNOWN)),
        (f"release {KNOWN}\n".encode(), ("release", KNOWN)),
        (f"delete {KNOWN}\n".encode(), ("delete", KNOWN)),
        (f"hold {KNOWN}\r\n".encode(), ("hold", KNOWN)),
    ],
)
def test_request(
    connection: Connection,
    control: RecordingQueueControl,
    request_: bytes,
    call: tuple[str, str | None],
) -> None:
    """
    Each request calls the queue's method of the same name with the queue
    ID, answers "ok" and the queue's text on one line, and closes the
    connection.
    """
    answer = connection.send(request_)
    assert control.calls == [call]
    assert answer == f"ok {call[0]} done\n".encode()
    assert connection.transport.disconnecting


def test_unknownQueueID(
    connection: Connection, control: RecordingQueueControl
) -> None:
    """
    A queue ID the queue does not know is answered with an error naming
    it.
    """
    answer = connection.send(f"delete {UNKNOWN}\n".encode())
    assert answer == f"error no message {UNKNOWN} in the queue\n".encode()
    assert control.calls == [("delete", UNKNOWN)]
    assert connection.transport.disconnecting


@pytest.mark.parametrize(
    "request_",
    [
        b"\n",
        b"purge\n",
        b"HOLD " + KNOWN.encode() + b"\n",
        b"hold\n",
        b"delete\n",
        b"release\n",
        b"hold " + KNOWN.lower().encode() + b"\n",
        b"hold 12345\n",
        b"hold ../../etc/passwd\n",
        b"flush " + KNOWN.encode() + b" " + KNOWN.encode() + b"\n",
        b"hold \xc3\xa9\n",
    ],
)
def test_badRequest(
    connection: Connection, control: RecordingQueueControl, request_: bytes
) -> None:
    """
    An unknown command, a missing, extra or malformed queue ID, or a
    non-ASCII request is answered with an error, the connection closes,
    and the queue is not asked.
    """
    answer = connection.send(request_)
    assert answer.startswith(b"error ") and answer.endswith(b"\n")
    assert answer.count(b"\n") == 1
    assert control.calls == []
    assert connection.transport.disconnecting


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"flush", ("flush", None)),
        (b"flush " + KNOWN.encode(), ("flush", KNOWN)),
        (b" delete  " + KNOWN.encode() + b" \r", ("delete", KNOWN)),
    ],
)
def test_parseRequest(line: bytes, expected: tuple[str, str | None]) -> None:
    """
    parseRequest returns the command and its queue ID, whatever the spaces
    around them and a CR before the line end.
    """
    assert parseRequest(line) == expected


def test_requestTooLong(
    connection: Connection, control: RecordingQueueControl
) -> None:
    """
    A request line longer than 256 octets is refused and the connection
    closes; one of exactly 256 octets is read.
    """
    answer = connection.send(b"x" * (MAX_REQUEST + 1))
    assert answer == b"error request too long\n"
    assert connection.transport.disconnecting
    assert connection.send(b"y" * 100) == b""

    fits = Connection(control).send(
        b"flush" + b" " * (MAX_REQUEST - 5) + b"\n"
    )
    assert fits == b"ok flush done\n"
    assert MAX_REQUEST == 256


def test_answerWaitsForQueue(
    connection: Connection, control: RecordingQueueControl
) -> None:
    """
    The answer is written only once the queue's Deferred fires.
    """
    control.waiting = []
    assert connection.send(f"hold {KNOWN}\n".encode()) == b""
    assert not connection.transport.disconnecting
    control.waiting[0].callback("held until released")
    assert connection.transport.value() == b"ok held until released\n"
    assert connection.transport.disconnecting


def test_answerAfterConnectionLost(
    connection: Connection, control: RecordingQueueControl
) -> None:
    """
    A client that goes away before the answer does no harm.
    """
    control.waiting = []
    connection.send(f"hold {KNOWN}\n".encode())
    connection.protocol.connectionLost(None)
    control.waiting[0].callback("held")
    assert connection.clock.getDelayedCalls() == []


def test_onlyFirstRequestAnswered(
    connection: Connection, control: RecordingQueueControl
) -> None:
    """
    Only the first request of a connection is performed, even when more
    lines arrive while it runs.
    """
    control.waiting = []
    connection.send(f"hold {KNOWN}\ndelete {KNOWN}\n".encode())
    connection.send(b"flush\n")
    assert control.calls == [("hold", KNOWN)]


def test_answerIsOneLine(
    connection: Connection, control: RecordingQueueControl
) -> None:
    """
    A multi-line text from the queue is sent as one line.
    """
    control.text = "{command} first line\nsecond\r\nline"
    answer = connection.send(b"flush\n")
    assert answer == b"ok flush first line second line\n"


def test_refusalText(
    connection: Connection, control: RecordingQueueControl
) -> None:
    """
    A ControlError from the queue is answered with its text.
    """
    control.problem = ControlError("being delivered; try again")
    answer = connection.send(f"delete {KNOWN}\n".encode())
    assert answer == b"error being delivered; try again\n"


def test_unexpectedErrorLogged(
    connection: Connection,
    control: RecordingQueueControl,
    logged: list[dict[str, Any]],
) -> None:
    """
    An unexpected exception from the queue is logged with its traceback;
    the client hears only that there was an internal error.
    """
    control.problem = RuntimeError("secret detail")
    answer = connection.send(f"hold {KNOWN}\n".encode())
    assert answer == b"error internal error; see the server's log\n"
    failures = [event for event in logged if "log_failure" in event]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)


def test_requestLogged(
    connection: Connection, logged: list[dict[str, Any]]
) -> None:
    """
    Each request is logged once with its outcome, for the operator.
    """
    connection.send(f"release {KNOWN}\n".encode())
    events = [event for event in logged if "request" in event]
    assert len(events) == 1
    assert events[0]["request"] == f"release {KNOWN}"
    assert events[0]["outcome"] == "ok"
    assert events[0]["text"] == "release done"


def test_idleTimeout(
    connection: Connection, control: RecordingQueueControl
) -> None:
    """
    A connection that sends no request within the timeout is closed
    without an answer.
    """
    connection.clock.advance(IDLE_TIMEOUT - 1)
    assert not connection.transport.disconnecting
    connection.clock.advance(1)
    assert connection.transport.disconnecting
    assert connection.transport.value() == b""


def test_noTimeoutOnceAsked(
    connection: Connection, control: RecordingQueueControl
) -> None:
    """
    Once a request arrived, the timeout no longer applies: the queue may
    take its time.
    """
    control.waiting = []
    connection.send(b"fl")
    connection.clock.advance(IDLE_TIMEOUT / 2)
    connection.send(b"ush\n")
    connection.clock.advance(IDLE_TIMEOUT * 2)
    assert not connection.transport.disconnecting
    assert connection.clock.getDelayedCalls() == []


# Over a real UNIX socket.


@pytest.fixture
def socketPath(tmp_path: Path) -> str:
    """
    Where the control socket goes.
    """
    return str(tmp_path / "control")


@pytest.fixture
def server(
    runningReactor: Any, socketPath: str, control: RecordingQueueControl
) -> Iterator[IListeningPort]:
    """
    The fake queue answering on the control socket in the test reactor.
    """
    port = inReactor(listenControl, globalReactor, socketPath, control)
    yield port
    inReactor(port.stopListening)


def test_socketOk(
    server: IListeningPort, socketPath: str, control: RecordingQueueControl
) -> None:
    """
    sendRequest returns the text of an ok answer.
    """
    assert sendRequest(socketPath, "hold", KNOWN) == "hold done"
    assert sendRequest(socketPath, "flush", None) == "flush done"
    assert control.calls == [("hold", KNOWN), ("flush", None)]


def test_socketUnknownQueueID(server: IListeningPort, socketPath: str) -> None:
    """
    An unknown queue ID raises ControlError with the server's text.
    """
    with pytest.raises(ControlError) as caught:
        sendRequest(socketPath, "delete", UNKNOWN)
    assert str(caught.value) == f"no message {UNKNOWN} in the queue"


def test_socketError(
    server: IListeningPort, socketPath: str, control: RecordingQueueControl
) -> None:
    """
    An error answer raises ControlError with its text.
    """
    control.problem = ControlError("not now")
    with pytest.raises(ControlError, match="^not now$"):
        sendRequest(socketPath, "release", KNOWN)


def test_socketBadRequest(server: IListeningPort, socketPath: str) -> None:
    """
    A request the server cannot read raises ControlError.
    """
    with pytest.raises(ControlError, match="unknown command"):
        sendRequest(socketPath, "purge", KNOWN)


def test_socketIsPrivate(server: IListeningPort, socketPath: str) -> None:
    """
    The control socket is a socket with mode 0600.
    """
    mode = os.stat(socketPath).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_sendRequestWordsChecked(socketPath: str) -> None:
    """
    sendRequest refuses a command or argument that would not be one word
    of one line.
    """
    for command, argument in [("hold", f"{KNOWN}\nflush"), ("", None)]:
        with pytest.raises(ValueError):
            sendRequest(socketPath, command, argument)


def test_serverNotRunningWithoutSocket(socketPath: str) -> None:
    """
    Without a socket file, sendRequest raises ServerNotRunning.
    """
    with pytest.raises(ServerNotRunning) as caught:
        sendRequest(socketPath, "flush", None)
    assert caught.value.path == socketPath


def staleSocket(path: str) -> None:
    """
    Leave a socket file at C{path} that nothing listens on, as a killed
    server does.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_serverNotRunningWithStaleSocket(socketPath: str) -> None:
    """
    With a socket file that nothing listens on, sendRequest raises
    ServerNotRunning.
    """
    staleSocket(socketPath)
    with pytest.raises(ServerNotRunning):
        sendRequest(socketPath, "hold", KNOWN)


def test_listenReplacesStaleSocket(
    runningReactor: Any, socketPath: str, control: RecordingQueueControl
) -> None:
    """
    listenControl removes a stale socket file and listens in its place.
    """
    staleSocket(socketPath)
    port = inReactor(listenControl, globalReactor, socketPath, control)
    try:
        assert sendRequest(socketPath, "flush", None) == "flush done"
    finally:
        inReactor(port.stopListening)
    assert not os.path.exists(socketPath)


def test_listenLeavesOtherFiles(
    runningReactor: Any, socketPath: str, control: RecordingQueueControl
) -> None:
    """
    A file at the socket's path that is not a socket is left alone, and
    listening fails.
    """
    Path(socketPath).write_text("not a socket")
    with pytest.raises(CannotListenError):
        inReactor(listenControl, globalReactor, socketPath, control)
    assert Path(socketPath).read_text() == "not a socket"


class Hangup(Protocol):
    """
    A server that closes every connection without a word.
    """

    def connectionMade(self) -> None:
        self.transport.loseConnection()


def test_noAnswer(runningReactor: Any, socketPath: str) -> None:
    """
    A server that closes the connection without an answer makes
    sendRequest raise ControlError.
    """
    endpoint = UNIXServerEndpoint(globalReactor, socketPath)
    port = inReactor(endpoint.listen, Factory.forProtocol(Hangup))
    try:
        with pytest.raises(ControlError, match="no valid answer"):
            sendRequest(socketPath, "flush", None)
    finally:
        inReactor(port.stopListening)


def test_sendRequestTimeout(socketPath: str) -> None:
    """
    A server that accepts the connection but never answers makes
    sendRequest give up after its timeout with an OSError.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(socketPath)
        silent.listen(1)
        with pytest.raises(TimeoutError):
            sendRequest(socketPath, "flush", None, timeout=0.2)
