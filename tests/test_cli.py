"""
Tests for L{msagate.cli}, the C{msagate} command, run in-process on a real
spool directory: the listing and the display of messages, the changes made
directly in the spool when no server runs, and the requests sent to a
server stand-in listening on the real control socket.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import inReactor
from twisted.internet import reactor as globalReactor
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyObject

import msagate.cli
from msagate import tap
from msagate.cli import DEFAULT_CONFIG, main
from msagate.control import IQueueControl, listenControl
from msagate.envelope import Envelope
from msagate.queue import DeliveryState, QueueStore, RecipientState
from msagate.spool import Spool
from msagate.testing import RecordingQueueControl, ThreadResults

ROOT = Path(__file__).parent.parent
FIRST = "0000000000001AAAAA"
SECOND = "0000000000002BBBBB"
UNKNOWN = "0000000000009FFFFF"
HEADER = b"Subject: hi\r\nFrom: alice@example.org\r\n\r\n"
MESSAGE = HEADER + b"x" * (600 - len(HEADER))
ALICE = Envelope(
    sender="alice@example.org",
    recipients=("bob@example.net", "carol@example.com", "dave@example.org"),
    user="alice",
    received=1700000000.0,
    body="8BITMIME",
    client="[192.0.2.7]:50000",
    size=600,
    extra={"envid": "x1"},
)
BOUNCE = Envelope(
    sender="",
    recipients=("postmaster@example.org",),
    user="bob",
    received=1700003600.0,
    size=600,
)
ALICE_STATE = DeliveryState(
    recipients={
        "bob@example.net": RecipientState(
            "delivered", "250 2.0.0 ok", "2.0.0", "mx.example.net"
        ),
        "carol@example.com": RecipientState(
            "pending", "451 4.2.0 try later", "4.2.0", "mx.example.com"
        ),
        "dave@example.org": RecipientState(
            "failed", "550 5.1.1 no such user", "5.1.1", "mx.example.org"
        ),
    },
    attempts=2,
    lastAttempt=1700000100.0,
    nextAttempt=1700001900.0,
    held=True,
)
CONFIG = (
    "[server]\nhostname = msa.example.org\nspool = spool\n"
    "[listener:submission]\nendpoint = tcp:0:interface=127.0.0.1\n"
    "tls = starttls\n"
    "[tls]\ncertificate = cert.pem\nkey = key.pem\n"
    "[auth]\nhtpasswd = htpasswd\n"
)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """
    Show times in UTC, whatever the machine's time zone.
    """
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def configFile(tmp_path: Path) -> Path:
    """
    A configuration whose spool, C{spool/} beside it, is prepared and
    empty.
    """
    path = tmp_path / "msagate.ini"
    path.write_text(CONFIG)
    Spool(str(tmp_path / "spool"), ThreadPool(), ThreadResults()).prepare()
    return path


@pytest.fixture
def spoolPath(configFile: Path) -> Path:
    """
    The spool directory of L{configFile}.
    """
    return configFile.parent / "spool"


@pytest.fixture
def store(spoolPath: Path) -> QueueStore:
    """
    The queue store of the spool, holding Alice's message (held, tried
    twice) and a bounce never tried.
    """
    queue = QueueStore(str(spoolPath))
    for queueID, envelope in ((FIRST, ALICE), (SECOND, BOUNCE)):
        (spoolPath / "queue" / (queueID + ".eml")).write_bytes(MESSAGE)
        (spoolPath / "queue" / (queueID + ".json")).write_bytes(
            envelope.toJSON()
        )
    queue.saveState(FIRST, ALICE_STATE)
    return queue


class Run:
    """
    The outcome of one run of the command.

    @ivar status: the exit status.
    @ivar out: what it wrote to standard output.
    @ivar err: what it wrote to standard error.
    """

    def __init__(self, status: int, out: str, err: str) -> None:
        self.status = status
        self.out = out
        self.err = err


@pytest.fixture
def command(configFile: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """
    Run the command on L{configFile} and return its L{Run}.
    """

    def run(*arguments: str) -> Run:
        status = main(["--config", str(configFile), *arguments])
        captured = capsys.readouterr()
        return Run(status, captured.out, captured.err)

    return run


# The listing.


def test_listEmpty(command: Any) -> None:
    """
    An empty queue is listed as such.
    """
    run = command("queue", "list")
    assert (run.status, run.out, run.err) == (0, "Mail queue is empty\n", "")


LISTING = f"""\
-Queue ID-          --Size-- ---Arrival Time----  -Sender/Recipient-------
{FIRST}!      600 Tue Nov 14 22:13:20  alice@example.org
{" " * 50}carol@example.com
{" " * 50}  (451 4.2.0 try later)
{" " * 50}dave@example.org
{" " * 50}  (failed: 550 5.1.1 no such user)

{SECOND}       600 Tue Nov 14 23:13:20  <>
{" " * 50}postmaster@example.org

-- 2 kB in 2 messages
"""


def test_list(command: Any, store: QueueStore) -> None:
    """
    The listing shows each message oldest first: queue ID with "!" when
    held, size, arrival, sender or "<>", the recipients not delivered with
    their last reply, and the total.
    """
    run = command("queue", "list")
    assert (run.status, run.err) == (0, "")
    assert run.out == LISTING


def test_listOneMessage(command: Any, store: QueueStore) -> None:
    """
    The total counts one message in the singular, and rounds kilobytes up.
    """
    store.remove(FIRST)
    run = command("queue", "list")
    assert run.out.endswith("\n-- 1 kB in 1 message\n")


def test_listEscapesControls(command: Any, store: QueueStore) -> None:
    """
    Control characters in a remote reply reach the terminal escaped.
    """
    state = ALICE_STATE.withRecipient(
        "carol@example.com", RecipientState(reply="451 \x1b[2J\x07 gone")
    )
    store.saveState(FIRST, state)
    run = command("queue", "list")
    assert "(451 \\x1b[2J\\x07 gone)" in run.out
    assert "\x1b" not in run.out


def test_listSkipsVanished(
    command: Any, store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A message delivered or deleted between the listing of the queue and
    the reading of its files is left out, and is no error.
    """
    listed = [FIRST, UNKNOWN, SECOND]
    monkeypatch.setattr(QueueStore, "queueIDs", lambda self: listed)
    run = command("queue", "list")
    assert (run.status, run.out, run.err) == (0, LISTING, "")


def test_listDamaged(command: Any, store: QueueStore, spoolPath: Path) -> None:
    """
    A damaged message is reported on standard error and makes the exit
    status 1; the others are still listed.
    """
    (spoolPath / "queue" / (FIRST + ".state")).write_bytes(b"{")
    run = command("queue", "list")
    assert run.status == 1
    assert run.err.startswith(f"msagate: {FIRST}: cannot read: ")
    assert SECOND in run.out and FIRST not in run.out
    assert run.out.endswith("-- 1 kB in 1 message\n")


def test_listWithoutSpool(tmp_path: Path, capsys: Any) -> None:
    """
    A spool that does not exist is an error, exit status 1.
    """
    config = tmp_path / "other.ini"
    config.write_text(CONFIG.replace("spool = spool", "spool = missing"))
    assert main(["--config", str(config), "queue", "list"]) == 1
    assert "cannot read" in capsys.readouterr().err


# One message.


SHOWN = f"""\
Queue ID:      {FIRST}
Held:          yes
Sender:        alice@example.org
User:          alice
Client:        [192.0.2.7]:50000
Arrival:       2023-11-14 22:13:20 +0000
Size:          600 octets
Body:          8BITMIME
Parameters:    envid=x1
Attempts:      2, the last at 2023-11-14 22:15:00 +0000
Next attempt:  none while held
Delay warning: not sent
Recipients:
  bob@example.net: delivered
    250 2.0.0 ok (from mx.example.net)
  carol@example.com: pending
    451 4.2.0 try later (from mx.example.com)
  dave@example.org: failed
    550 5.1.1 no such user (from mx.example.org)

Subject: hi
From: alice@example.org
"""


def test_show(command: Any, store: QueueStore) -> None:
    """
    show prints the envelope, the delivery state of each recipient and the
    header section, not the body.
    """
    run = command("queue", "show", FIRST)
    assert (run.status, run.err) == (0, "")
    assert run.out == SHOWN


def test_showNeverTried(command: Any, store: QueueStore) -> None:
    """
    A message never tried shows no attempt, is due as soon as possible,
    and has its recipients pending; the null sender shows as "<>".
    """
    run = command("queue", "show", SECOND.lower())
    assert run.status == 0
    lines = run.out.splitlines()
    assert "Sender:        <>" in lines
    assert "Attempts:      0" in lines
    assert "Next attempt:  as soon as possible" in lines
    assert "  postmaster@example.org: pending" in lines


def test_showDueLater(command: Any, store: QueueStore) -> None:
    """
    A message not held shows when it is due next.
    """
    store.saveState(FIRST, replace(ALICE_STATE, held=False, warned=True))
    lines = command("queue", "show", FIRST).out.splitlines()
    assert "Next attempt:  2023-11-14 22:45:00 +0000" in lines
    assert "Delay warning: sent" in lines


def test_showEscapesHeaders(
    command: Any, store: QueueStore, spoolPath: Path
) -> None:
    """
    Control characters in the header section are escaped; UTF-8 text is
    kept and invalid octets are shown as escapes.
    """
    header = (
        "Subject: caf\u00e9 \x1b]0;pwned\x07\r\n".encode() + b"X: \xff\r\n"
    )
    (spoolPath / "queue" / (SECOND + ".eml")).write_bytes(header + b"\r\n")
    out = command("queue", "show", SECOND).out
    assert out.endswith("\nSubject: caf\u00e9 \\x1b]0;pwned\\x07\nX: \\xff\n")


def test_showUnknown(command: Any, store: QueueStore) -> None:
    """
    An unknown queue ID is an error, exit status 1.
    """
    run = command("queue", "show", UNKNOWN)
    assert (run.status, run.out) == (1, "")
    assert run.err == f"msagate: no message {UNKNOWN} in the queue\n"


# Changes without a server.


def test_holdOffline(command: Any, store: QueueStore) -> None:
    """
    Without a server, hold marks each message held in its state file and
    releases the spool lock afterwards.
    """
    run = command("queue", "hold", FIRST, SECOND)
    assert (run.status, run.err) == (0, "")
    assert run.out == f"{FIRST} held\n{SECOND} held\n"
    assert store.read(FIRST).state == ALICE_STATE
    assert store.read(SECOND).state == DeliveryState(held=True)
    store.lock().release()


def test_releaseOffline(command: Any, store: QueueStore) -> None:
    """
    Without a server, release clears the hold and makes the message due
    at once, keeping the rest of its state.
    """
    run = command("queue", "release", FIRST)
    assert (run.status, run.out) == (0, f"{FIRST} released\n")
    expected = replace(ALICE_STATE, held=False, nextAttempt=0)
    assert store.read(FIRST).state == expected


def test_deleteOffline(command: Any, store: QueueStore) -> None:
    """
    Without a server, delete removes the messages; an unknown one is
    reported and makes the exit status 1, without stopping the others.
    """
    run = command("queue", "delete", UNKNOWN, FIRST)
    assert run.status == 1
    assert run.out == f"{FIRST} deleted\n"
    assert run.err == f"msagate: no message {UNKNOWN} in the queue\n"
    assert store.queueIDs() == [SECOND]
    assert not store.exists(FIRST)


def test_flushOneOffline(command: Any, store: QueueStore) -> None:
    """
    Without a server, flush makes the message due at once and says that
    it goes out when msagate starts.
    """
    store.saveState(FIRST, replace(ALICE_STATE, held=False))
    run = command("queue", "flush", FIRST)
    assert run.status == 0
    assert run.out == f"{FIRST} will be tried as soon as msagate starts\n"
    assert store.read(FIRST).state.nextAttempt == 0


def test_flushHeldOffline(command: Any, store: QueueStore) -> None:
    """
    Flushing a held message without a server says that it is held.
    """
    run = command("queue", "flush", FIRST)
    assert run.status == 0
    assert run.out == f"{FIRST} is held; release it to have it tried\n"
    assert store.read(FIRST).state.held


def test_flushAllOffline(command: Any, store: QueueStore) -> None:
    """
    Without a server, flush alone makes every message due at once, except
    held ones, which wait for their release.
    """
    store.saveState(SECOND, DeliveryState(nextAttempt=1800000000.0))
    held = store.read(FIRST).state
    run = command("queue", "flush")
    assert run.status == 0
    assert run.out == "1 message will be tried as soon as msagate starts\n"
    assert store.read(SECOND).state.nextAttempt == 0
    assert store.read(FIRST).state == held


def test_offlineWithStaleSocket(
    command: Any, store: QueueStore, spoolPath: Path
) -> None:
    """
    A socket file left by a killed server does not stop the command from
    acting on the spool.
    """
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(spoolPath / "control"))
    run = command("queue", "hold", SECOND)
    assert (run.status, run.out) == (0, f"{SECOND} held\n")


def test_lockHeldButNoAnswer(command: Any, store: QueueStore) -> None:
    """
    When the spool lock is held but nothing answers on the control socket,
    the command says so, changes nothing and exits with status 1.
    """
    with store.lock():
        run = command("queue", "delete", FIRST)
    assert (run.status, run.out) == (1, "")
    assert f"process {os.getpid()}" in run.err
    assert "does not answer" in run.err
    assert store.exists(FIRST)


# Changes through a running server.


@pytest.fixture
def server(
    runningReactor: Any, spoolPath: Path, store: QueueStore
) -> Iterator[RecordingQueueControl]:
    """
    A server stand-in answering on the spool's control socket and holding
    the spool lock, as a running msagate does.
    """
    standIn = RecordingQueueControl(
        FIRST, "{target}: {command} done by the server"
    )
    assert verifyObject(IQueueControl, standIn)
    path = str(spoolPath / "control")
    port = inReactor(listenControl, globalReactor, path, standIn)
    with store.lock():
        yield standIn
    inReactor(port.stopListening)


def test_requestsGoToServer(
    command: Any, server: RecordingQueueControl, store: QueueStore
) -> None:
    """
    With a server running, each request goes to it and its answer is
    printed; the spool files are left to the server.
    """
    for action in ("hold", "release", "delete", "flush"):
        run = command("queue", action, FIRST)
        assert (run.status, run.err) == (0, "")
        assert run.out == f"{FIRST}: {action} done by the server\n"
    assert server.calls == [
        (action, FIRST) for action in ("hold", "release", "delete", "flush")
    ]
    assert store.read(FIRST).state == ALICE_STATE


def test_flushAllGoesToServer(
    command: Any, server: RecordingQueueControl
) -> None:
    """
    flush alone asks the server to try every message.
    """
    run = command("queue", "flush")
    assert (run.status, run.out) == (0, "all: flush done by the server\n")
    assert server.calls == [("flush", None)]


def test_serverRefuses(command: Any, server: RecordingQueueControl) -> None:
    """
    The server's error answer is printed on standard error and makes the
    exit status 1; the other IDs are still sent.
    """
    run = command("queue", "hold", UNKNOWN, FIRST)
    assert run.status == 1
    assert run.err == f"msagate: no message {UNKNOWN} in the queue\n"
    assert run.out == f"{FIRST}: hold done by the server\n"
    assert server.calls == [("hold", UNKNOWN), ("hold", FIRST)]


def test_serverUnreachable(
    command: Any, store: QueueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    When the control socket cannot be used for another reason than a
    server not running (here a timeout), the command says so, exits with
    status 1 and does not touch the spool itself.
    """

    def timingOut(*arguments: object) -> str:
        raise TimeoutError("timed out")

    monkeypatch.setattr(msagate.cli, "sendRequest", timingOut)
    run = command("queue", "delete", FIRST)
    assert (run.status, run.out) == (1, "")
    assert run.err.startswith("msagate: cannot reach the server on ")
    assert run.err.endswith(": timed out\n")
    assert store.exists(FIRST)


# Usage and configuration.


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["queue"],
        ["queue", "purge"],
        ["queue", "show"],
        ["queue", "hold"],
        ["queue", "hold", "xyz"],
        ["queue", "show", FIRST, SECOND],
        ["queue", "flush", FIRST, SECOND],
    ],
)
def test_usageError(command: Any, arguments: list[str]) -> None:
    """
    A missing or unknown command, a missing, extra or malformed queue ID
    is a usage error, exit status 2.
    """
    run = command(*arguments)
    assert run.status == 2
    assert "usage: msagate" in run.err


def test_help(command: Any) -> None:
    """
    --help prints the usage and exits with status 0.
    """
    run = command("queue", "--help")
    assert run.status == 0
    assert "list" in run.out and "release" in run.out


@pytest.mark.parametrize(
    "text",
    [None, "[server]\nspool = spool\nbogus = 1\n"],
    ids=["missing", "unknownOption"],
)
def test_configurationError(
    tmp_path: Path, capsys: Any, text: str | None
) -> None:
    """
    A configuration that cannot be read or used is reported in one line,
    exit status 2.
    """
    path = tmp_path / "broken.ini"
    if text is not None:
        path.write_text(text)
    assert main(["-c", str(path), "queue", "list"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"msagate: {path}")
    assert captured.err.count("\n") == 1


def test_defaultConfiguration() -> None:
    """
    The command reads the server's default configuration file.
    """
    assert DEFAULT_CONFIG == tap.DEFAULT_CONFIG


def test_entryPoint() -> None:
    """
    The package installs the command as the console script "msagate".
    """
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"].split("\n")
    assert "msagate = msagate.cli:main" in [s.strip() for s in scripts]


def test_runsAsProgram(
    configFile: Path, store: QueueStore, spoolPath: Path
) -> None:
    """
    The module runs as a program, with the output and exit status of
    main: here the listing of the one readable message, and 1 for the
    damaged one.
    """
    (spoolPath / "queue" / (FIRST + ".json")).write_bytes(b"{")
    command = [sys.executable, "-m", "msagate.cli", "-c", str(configFile)]
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    listed = subprocess.run(
        [*command, "queue", "list"], capture_output=True, env=environment
    )
    assert listed.returncode == 1
    assert SECOND.encode() in listed.stdout
    assert listed.stdout.endswith(b"-- 1 kB in 1 message\n")
    assert listed.stderr.startswith(f"msagate: {FIRST}: ".encode())
