"""
Crash safety: a real C{twistd msagate} process is killed with SIGKILL
while a client sends DATA, right after a 250 reply, and while a message is
being relayed; restarted each time, it must in the end have relayed every
message that got a 250, completely, and none that did not (SMTP-35).

Delivery is at least once: a message whose relay was cut before the next
hop's reply is sent again after the restart.  The test counts such
duplicates and prints the figure.
"""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import ssl
import subprocess
import threading

import pytest
from conftest import USERS, inReactor, setRelay
from sink import Sink, startSink
from test_tap import LISTENING, ROOT, TWISTD

WAIT = 60
SEED = int(os.environ.get("MSAGATE_CRASH_SEED", "20261203"))


class Server:
    """
    A C{twistd msagate} process whose output a thread keeps reading, so
    that its log never fills the pipe and can be waited on.
    """

    def __init__(self, config) -> None:
        self.process = subprocess.Popen(
            [
                *TWISTD,
                "--nodaemon",
                "--pidfile=",
                "msagate",
                "--config",
                str(config),
            ],
            cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.output = b""
        self._condition = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = int(self._waitFor(LISTENING).group(2))

    def _read(self) -> None:
        while data := os.read(self.process.stdout.fileno(), 65536):
            with self._condition:
                self.output += data
                self._condition.notify_all()
        with self._condition:
            self.output += b"\n[exited]\n"
            self._condition.notify_all()

    def _waitFor(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        def found():
            return pattern.search(self.output) or b"[exited]" in self.output

        with self._condition:
            self._condition.wait_for(found, WAIT)
            match = pattern.search(self.output)
        assert match, f"not in the log: {pattern.pattern!r}\n{self.output!r}"
        return match

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(WAIT)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(WAIT)


class Client:
    """
    Submits numbered messages as alice over STARTTLS and AUTH.

    @ivar accepted: the message numbers answered 250.
    """

    def __init__(self, caFile: str, rng: random.Random) -> None:
        self.context = ssl.create_default_context(cafile=caFile)
        self.rng = rng
        self.number = 0
        self.accepted: set[int] = set()

    def message(self, number: int) -> bytes:
        return HEADER % number + body(number)

    def session(self, server: Server) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=WAIT)
        client.starttls(context=self.context)
        client.login("alice", USERS["alice"].decode())
        return client

    def submit(self, server: Server, count: int) -> None:
        with self.session(server) as client:
            for _ in range(count):
                self.number += 1
                client.sendmail(
                    "alice@example.org",
                    ["bob@example.net"],
                    self.message(self.number),
                )
                self.accepted.add(self.number)

    def killDuringData(self, server: Server) -> None:
        """
        Send part of a message's data, then kill the server.
        """
        client = self.session(server)
        self.number += 1
        data = self.message(self.number)
        client.mail("alice@example.org")
        client.rcpt("bob@example.net")
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.sock.sendall(data[: self.rng.randint(1, len(data))])
        server.kill()
        client.close()

    def killAfterAccepted(self, server: Server) -> None:
        """
        Submit a message and kill the server as soon as it says 250.
        """
        client = self.session(server)
        self.number += 1
        client.sendmail(
            "alice@example.org", ["bob@example.net"], self.message(self.number)
        )
        self.accepted.add(self.number)
        server.kill()
        client.close()


HEADER = (
    b"From: alice@example.org\r\nTo: bob@example.net\r\n"
    b"Subject: crash test\r\nMessage-ID: <crash-%d@example.org>\r\n\r\n"
)


def body(number: int) -> bytes:
    """
    @return: the body of message C{number}: up to about 100 KB of lines
        that start with a dot.
    """
    lines = random.Random(number).randint(1, 3000)
    return b"".join(
        b".line %d of message %d\r\n" % (line, number) for line in range(lines)
    )


def waitUntil(sink: Sink, predicate) -> None:
    with sink._condition:
        assert sink._condition.wait_for(predicate, WAIT), "sink waited in vain"


def numberOf(data: bytes) -> int:
    found = re.search(rb"Message-ID: <crash-(\d+)@example\.org>", data)
    assert found, data[:500]
    return int(found.group(1))


def killDuringRelay(client: Client, server: Server, sink: Sink) -> range:
    """
    Submit a message, and kill the server once the sink has its data but
    has not answered.

    @return: the indices of the sink's messages it never answered.
    """
    hang = inReactor(lambda: len(sink.configure(hangAfterData=True).messages))
    client.submit(server, 1)
    waitUntil(sink, lambda: len(sink.messages) > hang)
    server.kill()
    answer = inReactor(
        lambda: len(sink.configure(hangAfterData=False).messages)
    )
    return range(hang, answer)


@pytest.fixture
def sink(runningReactor):
    running = inReactor(startSink)
    yield running
    inReactor(running.stop)


def test_killedServerLosesNothing(serverFiles, sink):
    """
    Whatever the moment of a SIGKILL, every message answered 250 reaches
    the next hop complete after a restart, and no message cut during DATA
    ever does (SMTP-35).
    """
    rng = random.Random(SEED)
    setRelay(
        serverFiles,
        f"mode = smarthost\nsmarthosts = 127.0.0.1:{sink.port}\n"
        "security = none\n",
    )
    client = Client(str(serverFiles.parent / "ca.pem"), rng)
    phases = ["data", "accepted", "relay"]
    phases += [rng.choice(phases) for _ in range(3)]
    unanswered: set[int] = set()

    for phase in phases:
        server = Server(serverFiles)
        client.submit(server, rng.randint(1, 4))
        if phase == "data":
            client.killDuringData(server)
        elif phase == "accepted":
            client.killAfterAccepted(server)
        else:
            unanswered.update(killDuringRelay(client, server, sink))

    def answered():
        return [
            numberOf(message.data)
            for index, message in enumerate(sink.messages)
            if index not in unanswered
        ]

    server = Server(serverFiles)
    try:
        waitUntil(sink, lambda: client.accepted <= set(answered()))
    finally:
        server.stop()

    numbers = [numberOf(message.data) for message in sink.messages]
    assert set(numbers) == client.accepted
    for message in sink.messages:
        assert message.data.endswith(
            b"\r\n\r\n" + body(numberOf(message.data))
        )
    spool = serverFiles.parent / "spool"
    assert os.listdir(spool / "incoming") == []
    duplicates = len(answered()) - len(set(answered()))
    resent = len(numbers) - len(set(numbers))
    print(
        f"\ncrash test: {len(phases)} kills, {len(client.accepted)} messages "
        f"accepted, all relayed; {resent} sent twice because a kill cut "
        f"their relay, {duplicates} of them answered 250 twice by the sink"
    )
