"""
Fixtures shared by the test tiers.

The loopback tier runs the real reactor in a background thread for the
whole test session; tests talk to msagate from the main thread with
blocking clients (smtplib, ssl sockets) over 127.0.0.1, and set things up
inside the reactor thread with L{inReactor}.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

import bcrypt
import pytest
from twisted.internet import reactor as globalReactor
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool

from msagate._certs import CertificateAuthority
from msagate.config import loadConfig
from msagate.tap import buildService
from msagate.testing import ThreadResults

USERS = {"alice": b"alice's password", "bob": b"bob's password"}
SENDERS = "alice: alice@example.org, @team.example.org\nbob: bob@example.org\n"


def _loopbackOnly(method):
    """
    Wrap a socket method that takes an address so that it refuses any
    address but a loopback one or a UNIX socket path.
    """

    def checked(self, address, *args):
        target = address[0] if isinstance(address, tuple) else None
        if (
            target is not None
            and not ipaddress.ip_address(target.split("%")[0]).is_loopback
        ):
            raise AssertionError(f"a test tried to reach {address}")
        return method(self, address, *args)

    return checked


@pytest.fixture(scope="session", autouse=True)
def loopbackOnly():
    """
    Tests reach nothing but this machine: a connection or datagram to any
    other address fails the test that tried.
    """
    originals = {
        name: getattr(socket.socket, name)
        for name in ("connect", "connect_ex")
    }
    for name, method in originals.items():
        setattr(socket.socket, name, _loopbackOnly(method))
    sendto = socket.socket.sendto

    def checkedSendto(self, data, *rest):
        _loopbackOnly(lambda s, a, *r: None)(self, rest[-1])
        return sendto(self, data, *rest)

    socket.socket.sendto = checkedSendto
    yield
    for name, method in originals.items():
        setattr(socket.socket, name, method)
    socket.socket.sendto = sendto


@pytest.fixture(scope="session")
def runningReactor():
    """
    The global reactor, running in a daemon thread until the session ends.
    """
    thread = threading.Thread(
        target=globalReactor.run,
        kwargs={"installSignalHandlers": False},
        daemon=True,
    )
    thread.start()
    yield globalReactor
    globalReactor.callFromThread(globalReactor.stop)
    thread.join(timeout=30)


def inReactor(function, *args, **kwargs):
    """
    Run C{function} in the reactor thread and wait for its result (or the
    result of the L{Deferred} it returns).
    """
    return blockingCallFromThread(globalReactor, function, *args, **kwargs)


@pytest.fixture
def pool():
    """
    A started thread pool, stopped after the test.
    """
    threads = ThreadPool(minthreads=1, maxthreads=2, name="msagate-test")
    threads.start()
    yield threads
    threads.stop()


@pytest.fixture
def reactor() -> ThreadResults:
    """
    A reactor stand-in for results coming back from L{pool}.
    """
    return ThreadResults()


@pytest.fixture
def logged():
    """
    Collect the log events emitted during a test.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture(scope="session")
def authority():
    """
    A certificate authority and a server certificate for 127.0.0.1 and
    localhost.
    """
    return CertificateAuthority()


@pytest.fixture
def serverFiles(tmp_path, authority):
    """
    A complete configuration directory: certificate, htpasswd users, a
    sender map and a configuration listening on free loopback ports.

    @return: the path of the configuration file.
    """
    issued = authority.issue(["localhost", "127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(issued.certificate)
    (tmp_path / "key.pem").write_bytes(issued.key)
    (tmp_path / "ca.pem").write_bytes(authority.certificate)
    (tmp_path / "htpasswd").write_bytes(
        b"".join(
            user.encode() + b":" + bcrypt.hashpw(pw, bcrypt.gensalt(4)) + b"\n"
            for user, pw in USERS.items()
        )
    )
    (tmp_path / "senders").write_text(SENDERS)
    (tmp_path / "msagate.ini").write_text(
        "[server]\nhostname = msa.example.org\nspool = spool\n"
        "[listener:submission]\nendpoint = tcp:0:interface=127.0.0.1\n"
        "tls = starttls\n"
        "[listener:submissions]\nendpoint = tcp:0:interface=127.0.0.1\n"
        "tls = implicit\n"
        "[tls]\ncertificate = cert.pem\nkey = key.pem\n"
        "[auth]\nhtpasswd = htpasswd\nfailure_delay = 0\n"
        "[senders]\nmap = senders\n" + RELAY_NOWHERE
    )
    return tmp_path / "msagate.ini"


# Tests never relay off this machine: unless a test sets a next hop of its
# own, the smarthost is a loopback port where nothing listens, so every
# message simply stays queued.
RELAY_NOWHERE = (
    "[relay]\nmode = smarthost\nsmarthosts = 127.0.0.1:9\nsecurity = none\n"
)


def setRelay(path, relay: str) -> None:
    """
    Replace the C{[relay]} section of the configuration file at C{path}
    (the last one) with the options in C{relay}.
    """
    text = path.read_text()
    path.write_text(text[: text.index("[relay]\n")] + "[relay]\n" + relay)


class RunningServer:
    """
    msagate started from a configuration file inside the test reactor.

    @ivar ports: the listening port of each listener, by name.
    @ivar spool: the spool directory.
    @ivar caFile: the CA certificate clients should trust.
    """

    def __init__(self, path) -> None:
        self.config = loadConfig(str(path))
        self.service = inReactor(buildService, self.config, globalReactor)
        inReactor(self.service.startService)
        addresses = inReactor(self.service.whenListening)
        self.ports = {
            name: address.port for name, address in addresses.items()
        }
        self.spool = path.parent / "spool"
        self.caFile = str(path.parent / "ca.pem")

    def queued(self) -> list[bytes]:
        """
        @return: the data of every committed message, oldest first.
        """
        queue = self.spool / "queue"
        names = sorted(queue.glob("*.json"))
        return [queue.joinpath(n.stem + ".eml").read_bytes() for n in names]

    def stop(self) -> None:
        inReactor(self.service.stopService)


@pytest.fixture
def server(runningReactor, serverFiles):
    """
    A running msagate with the users of L{USERS}.
    """
    running = RunningServer(serverFiles)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def slapd():
    """
    A private OpenLDAP server for the whole session (see L{tests.slapd}).
    A machine without slapd fails the tests that need it, with the reason.
    """
    from tests.slapd import Slapd

    server = Slapd()
    server.start()
    yield server
    server.stop()
