"""
The servers that C{submission.py} runs: msagate, the anchors of the shared
harness and the relay sink, each started on 127.0.0.1, measured from /proc
and stopped.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
SINK = os.path.join(HERE, "sink.py")
SMTP_SINK = shutil.which(
    "smtp-sink", path=os.environ.get("PATH", os.defpath) + ":/usr/sbin"
)
VENV_PYTHON = os.path.join(CHECKOUT, ".venv", "bin", "python")
TWISTD = os.path.join(CHECKOUT, ".venv", "bin", "twistd")

USER = "bench"
PASSWORD = "benchpass"
SENDER = "sender@bench.test"
HOSTNAME = "msagate.bench.test"

MSAGATE_CONFIG = """\
[server]
hostname = {hostname}
spool = spool

[tls]
certificate = cert.pem
key = key.pem

[listener:submission]
endpoint = tcp:0:interface=127.0.0.1
tls = starttls

[listener:submissions]
endpoint = tcp:0:interface=127.0.0.1
tls = implicit

[auth]
checker = htpasswd
htpasswd = htpasswd

[senders]
map = senders

[limits]
connections = 0
client_connections = 0
"""

RELAY_SECTION = """
[relay]
mode = smarthost
smarthosts = 127.0.0.1:{port}
security = none
"""

LISTENING = re.compile(rb"listener (\S+) on 127\.0\.0\.1:(\d+)")
SINK_COUNTER = re.compile(rb"mesg=(\d+)")
# Log lines worth showing: "failed 0" is how a removed message that was
# delivered to every recipient is logged, not a failure.
PROBLEM = re.compile(
    r"reject|failed(?! 0\))|cannot|Traceback|Unhandled|refused a connection"
    r"|Error|status=(?:deferred|bounced)"
)


def log(text: str) -> None:
    """
    Print a progress line on standard error.
    """
    print(time.strftime("%H:%M:%S"), text, file=sys.stderr, flush=True)


def freePort() -> int:
    """
    @return: a TCP port of 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def waitForPort(port: int, process: subprocess.Popen, timeout=30.0) -> None:
    """
    Wait until C{port} accepts connections.

    @raise RuntimeError: when C{process} exits or C{timeout} seconds pass.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def processTimes(pid: int) -> float:
    """
    @return: the CPU seconds (user and system) process C{pid} has used.
    """
    with open(f"/proc/{pid}/stat", "rb") as stream:
        fields = stream.read().rpartition(b")")[2].split()
    # Fields 14 and 15 of proc(5), counted from the state field here.
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def processMemory(pid: int) -> dict[str, int | None]:
    """
    @return: the resident (C{rss_kb}) and proportional (C{pss_kb}, L{None}
        when the kernel does not say) memory of process C{pid}, in kB.
    """
    found: dict[str, int | None] = {"rss_kb": None, "pss_kb": None}
    with open(f"/proc/{pid}/smaps_rollup") as stream:
        for line in stream:
            name, _, value = line.partition(":")
            if name in ("Rss", "Pss"):
                found[name.lower() + "_kb"] = int(value.split()[0])
    return found


@dataclass
class RelaySink:
    """
    The smarthost of C{--relay} runs: Postfix's C{smtp-sink} or C{sink.py},
    either of which accepts and discards every message and writes a
    running count (C{mesg=N}) to its standard output, kept in a file.

    @ivar directory: where its counter and error output go.
    @ivar program: C{"smtp-sink"} or C{"sink.py"}.
    @ivar port: where it listens on 127.0.0.1, once started.
    """

    directory: str
    program: str
    port: int = 0
    process: subprocess.Popen | None = None

    def start(self) -> None:
        """
        Start the sink and wait until it listens.
        """
        self.port = freePort()
        os.makedirs(self.directory, exist_ok=True)
        errors = os.path.join(self.directory, "sink.err")
        with open(self.counterPath(), "wb") as out, open(errors, "wb") as err:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        waitForPort(self.port, self.process)

    def command(self) -> list[str]:
        """
        @return: the command line that starts the sink on C{port}.
        """
        if self.program == "sink.py":
            return [sys.executable, SINK, "--port", str(self.port)]
        # smtp-sink will not run as root without a user to switch to; -c
        # writes the counters; 1000 is the listen backlog.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return [SMTP_SINK, *user, "-c", f"127.0.0.1:{self.port}", "1000"]

    def counterPath(self) -> str:
        """
        @return: the file that holds the sink's running count.
        """
        return os.path.join(self.directory, "counter.out")

    def count(self) -> int:
        """
        @return: the messages the sink has accepted since it started.
        """
        with open(self.counterPath(), "rb") as stream:
            stream.seek(max(0, os.fstat(stream.fileno()).st_size - 256))
            found = SINK_COUNTER.findall(stream.read())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        """
        Stop the sink.
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(10)


class DeliveryWatch:
    """
    Reads a sink's count every 10 ms in a thread and notes when it
    changes, so that the moment the sink reached a total is known even
    when nobody was asking at that moment.

    @ivar initial: the sink's count when the watch began.
    """

    def __init__(self, sink: RelaySink) -> None:
        self._sink = sink
        self.initial = sink.count()
        self._changes = [(time.time(), self.initial)]
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stopped.wait(0.01):
            count = self._sink.count()
            if count != self._changes[-1][1]:
                self._changes.append((time.time(), count))

    def reached(self, total: int, timeout: float) -> tuple[int, float]:
        """
        Wait, for at most C{timeout} seconds, until the sink has counted
        C{total} messages.

        @return: the first count of at least C{total} and the wall-clock
            time it was read; on timeout, the last count and now.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for moment, count in list(self._changes):
                if count >= total:
                    return count, moment
            time.sleep(0.01)
        return self._changes[-1][1], time.time()

    def stop(self) -> None:
        """
        Stop reading the count.
        """
        self._stopped.set()
        self._thread.join()


@dataclass
class Target:
    """
    A server under test: how to start it, where it listens, where it keeps
    messages.

    @ivar name: its name in the tables.
    @ivar directory: its own state directory.
    @ivar port: its STARTTLS+AUTH port, once started.
    @ivar spoolFiles: the directory its accepted messages land in.
    @ivar sink: the sink it relays to, or L{None} when it keeps what it
        accepts.
    """

    name: str
    directory: str
    process: subprocess.Popen | None = None
    port: int = 0
    spoolFiles: str = ""
    sink: RelaySink | None = None

    def start(self) -> None:
        """
        Start the server and wait until it listens.
        """
        raise NotImplementedError()

    def stop(self) -> None:
        """
        Stop the server: SIGTERM, then SIGKILL after ten seconds.
        """
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def clean(self) -> None:
        """
        Remove the messages the server has accepted so far.
        """
        if os.path.isdir(self.spoolFiles):
            for name in os.listdir(self.spoolFiles):
                os.unlink(os.path.join(self.spoolFiles, name))

    def cpuSeconds(self) -> float:
        """
        @return: the CPU seconds the server process has used.
        """
        return processTimes(self.process.pid)

    def memory(self) -> dict[str, int | None]:
        """
        @return: the server process's RSS and PSS in kB.
        """
        return processMemory(self.process.pid)

    def problems(self) -> list[str]:
        """
        @return: log lines that report a failure, rejection or traceback.
        """
        return []


@dataclass
class MsagateTarget(Target):
    """
    msagate as C{twistd --nodaemon msagate}, configured in C{directory}.

    Its log goes to a pipe that a thread copies into C{server.log}, so
    that the listening ports can be read from it at start-up.

    @ivar source: the msagate source tree it runs.
    """

    certificate: bytes = b""
    key: bytes = b""
    source: str = CHECKOUT
    _copier: threading.Thread | None = field(default=None, repr=False)

    def writeConfiguration(self) -> str:
        """
        Write the configuration, certificate, users and sender map.

        @return: the configuration file's path.
        """
        import bcrypt

        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5))
        configuration = MSAGATE_CONFIG.format(hostname=HOSTNAME)
        if self.sink is not None:
            configuration += RELAY_SECTION.format(port=self.sink.port)
        files = {
            "msagate.ini": configuration.encode(),
            "cert.pem": self.certificate,
            "key.pem": self.key,
            "htpasswd": USER.encode() + b":" + hashed + b"\n",
            "senders": f"{USER}: {SENDER}\n".encode(),
        }
        os.makedirs(self.directory, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(self.directory, name), "wb") as stream:
                stream.write(data)
        self.spoolFiles = os.path.join(self.directory, "spool", "queue")
        return os.path.join(self.directory, "msagate.ini")

    def start(self) -> None:
        configuration = self.writeConfiguration()
        command = [VENV_PYTHON, TWISTD, "--nodaemon", "--pidfile="]
        command += ["msagate", "--config", configuration]
        environment = dict(os.environ, PYTHONPATH=self.source)
        self.process = subprocess.Popen(
            command,
            cwd=self.directory,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        ports, early = self.readPorts(self.process, timeout=60.0)
        self.port = ports["submission"]
        self._copier = threading.Thread(
            target=self.copyLog, args=(early,), daemon=True
        )
        self._copier.start()

    def readPorts(self, process, timeout: float) -> tuple[dict, bytes]:
        """
        Read the log until both listeners have said where they listen.

        @return: the ports by listener name, and the log read so far.
        @raise RuntimeError: when msagate exits or says nothing in time.
        """
        output = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(deadline - time.monotonic()):
                    break
                chunk = os.read(process.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
                ports = {
                    name.decode(): int(port)
                    for name, port in LISTENING.findall(output)
                }
                if {"submission", "submissions"} <= ports.keys():
                    return ports, output
        text = output.decode(errors="replace")
        raise RuntimeError(f"msagate did not start:\n{text[-3000:]}")

    def copyLog(self, early: bytes) -> None:
        """
        Copy msagate's log from its pipe into C{server.log} until it ends.
        """
        descriptor = self.process.stdout.fileno()
        with open(self.logPath(), "ab") as stream:
            stream.write(early)
            while chunk := os.read(descriptor, 65536):
                stream.write(chunk)

    def stop(self) -> None:
        process = self.process
        super().stop()
        if self._copier is not None:
            self._copier.join(10)
            self._copier = None
        if process is not None:
            process.stdout.close()

    def clean(self) -> None:
        """
        Without a relay, remove the messages accepted so far.  With one,
        the queue is the relay's: a message still in it (one the sink has
        not counted in time) is only reported, never removed under the
        relay.
        """
        if self.sink is None:
            super().clean()
        elif os.path.isdir(self.spoolFiles):
            names = os.listdir(self.spoolFiles)
            left = sum(name.endswith(".json") for name in names)
            if left:
                log(f"{self.name}: {left} messages still queued")

    def logPath(self) -> str:
        """
        @return: where the log of every msagate start is kept.
        """
        return os.path.join(self.directory, "server.log")

    def problems(self) -> list[str]:
        if not os.path.exists(self.logPath()):
            return []
        with open(self.logPath(), errors="replace") as stream:
            return [line.rstrip() for line in stream if PROBLEM.search(line)]


@dataclass
class AnchorTarget(Target):
    """
    One of the Python anchors of the shared harness, started the way its
    C{.sh} script starts it, with only the STARTTLS+AUTH listener.

    @ivar script: the anchor's C{.py} file.
    @ivar python: a Python with Twisted, pyOpenSSL and aiosmtpd.
    @ivar certificateFile: the certificate's PEM file.
    @ivar keyFile: the key's PEM file.
    """

    script: str = ""
    python: str = ""
    certificateFile: str = ""
    keyFile: str = ""

    def start(self) -> None:
        self.spoolFiles = os.path.join(self.directory, "spool")
        os.makedirs(self.spoolFiles, exist_ok=True)
        self.port = freePort()
        command = [self.python, self.script, "--sub", str(self.port)]
        command += ["--spool", self.spoolFiles, "--user", USER]
        command += ["--password", PASSWORD, "--cert", self.certificateFile]
        command += ["--key", self.keyFile]
        with open(os.path.join(self.directory, "server.log"), "ab") as out:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        waitForPort(self.port, self.process)
