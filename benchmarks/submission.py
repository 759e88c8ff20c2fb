#!/usr/bin/env python3
"""
msagate's submission benchmark: throughput, latency and idle-session
memory of a real C{twistd msagate} process, optionally side by side with
two reference servers (anchors) measured in the same run.

Everything runs on 127.0.0.1 from one temporary directory that is removed
at the end, with every server this script started stopped.  What it does:

  1. writes a configuration for msagate (listeners on ports the kernel
     picks, a self-signed certificate, an htpasswd file with one bcrypt
     user, a sender map, a spool) and starts C{twistd --nodaemon msagate}
     with the Python of the checkout's C{.venv};
  2. with C{--anchors}, starts the Twisted and aiosmtpd anchors of the
     shared benchmark harness (each a stock server that writes every
     message to a file and fsyncs it before replying 250), with the same
     certificate and credentials;
  3. runs each scenario (N sessions x M messages x S octets, STARTTLS and
     AUTH PLAIN) against each server with C{loadgen.py}, in an order that
     rotates from round to round, so that every server sees the same
     machine conditions; the spools are emptied between runs;
  4. restarts each server fresh and holds many idle TLS+AUTH sessions
     open, reading the server's RSS and PSS from /proc before and during;
  5. prints Markdown tables: medians over rounds, and the throughput
     ratios msagate/anchor computed within each round.

Run it from the checkout, e.g. C{.venv/bin/python benchmarks/submission.py
--rounds 3 --anchors --anchor-python /tmp/bench-venv/bin/python}; see
C{benchmarks/README.rst}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
LOADGEN = os.path.join(HERE, "loadgen.py")
VENV_PYTHON = os.path.join(CHECKOUT, ".venv", "bin", "python")
TWISTD = os.path.join(CHECKOUT, ".venv", "bin", "twistd")
SHARED_ANCHORS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "shared",
    "bench",
    "anchors",
)

USER = "bench"
PASSWORD = "benchpass"
SENDER = "sender@bench.test"
RECIPIENT = "rcpt@example.net"
HOSTNAME = "msagate.bench.test"


@dataclass(frozen=True)
class Scenario:
    """
    One load: C{sessions} concurrent sessions, each submitting
    C{messages} messages of about C{size} octets.
    """

    name: str
    sessions: int
    messages: int
    size: int

    def describe(self) -> str:
        """
        @return: the scenario in words, for table rows.
        """
        return (
            f"{self.name}: {self.sessions} x {self.messages}"
            f" x {self.size // 1024} KB"
        )


SCENARIOS = {
    "A": Scenario("A", 1, 200, 2048),
    "B": Scenario("B", 20, 50, 2048),
    "C": Scenario("C", 20, 50, 102400),
}
WARMUP = Scenario("warm-up", 5, 20, 2048)

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

LISTENING = re.compile(rb"listener (\S+) on 127\.0\.0\.1:(\d+)")


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
class Target:
    """
    A server under test: how to start it, where it listens, where it keeps
    messages.

    @ivar name: its name in the tables.
    @ivar directory: its own state directory.
    @ivar port: its STARTTLS+AUTH port, once started.
    @ivar spoolFiles: the directory its accepted messages land in.
    """

    name: str
    directory: str
    process: subprocess.Popen | None = None
    port: int = 0
    spoolFiles: str = ""

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
    """

    certificate: bytes = b""
    key: bytes = b""
    _copier: threading.Thread | None = field(default=None, repr=False)

    def writeConfiguration(self) -> str:
        """
        Write the configuration, certificate, users and sender map.

        @return: the configuration file's path.
        """
        import bcrypt

        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(5))
        files = {
            "msagate.ini": MSAGATE_CONFIG.format(hostname=HOSTNAME).encode(),
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
        environment = dict(os.environ, PYTHONPATH=CHECKOUT)
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

    def logPath(self) -> str:
        """
        @return: where the log of every msagate start is kept.
        """
        return os.path.join(self.directory, "server.log")

    def problems(self) -> list[str]:
        if not os.path.exists(self.logPath()):
            return []
        marks = ("reject", "failed", "cannot", "Traceback", "Unhandled")
        marks += ("refused a connection", "Error")
        with open(self.logPath(), errors="replace") as stream:
            return [
                line.rstrip()
                for line in stream
                if any(mark in line for mark in marks)
            ]


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


def loadgen(target: Target, scenario: Scenario, *extra: str) -> dict:
    """
    Run C{loadgen.py} against C{target}'s STARTTLS+AUTH port.

    @return: its JSON result.
    """
    command = [sys.executable, LOADGEN, "--port", str(target.port)]
    command += ["-n", str(scenario.sessions), "-m", str(scenario.messages)]
    command += ["-s", str(scenario.size), "--tls", "starttls"]
    command += ["--auth", f"{USER}:{PASSWORD}", "--sender", SENDER]
    command += ["--recipient", RECIPIENT, *extra]
    finished = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, timeout=1800
    )
    if not finished.stdout.strip():
        raise RuntimeError(f"loadgen failed: {finished.stderr.decode()}")
    return json.loads(finished.stdout)


def measureCell(target: Target, scenario: Scenario) -> dict:
    """
    Run one scenario against one target on an emptied, synced spool.

    @return: the loadgen result with the server's CPU seconds added.
    """
    target.clean()
    os.sync()
    time.sleep(0.5)

    cpuBefore = target.cpuSeconds()
    result = loadgen(target, scenario)
    result["server_cpu_s"] = round(target.cpuSeconds() - cpuBefore, 3)
    result["target"] = target.name
    result["scenario"] = scenario.name
    return result


def roundOrder(cells: list, number: int) -> list:
    """
    @return: C{cells} rotated by C{number} places, and reversed in every
        other round, so that no cell always runs first or after the same
        neighbour.
    """
    shift = number % len(cells)
    order = cells[shift:] + cells[:shift]
    return order[::-1] if number % 2 else order


def runRounds(targets, scenarios, rounds: int, results) -> None:
    """
    Run every (scenario, target) cell once a round, for C{rounds} rounds,
    appending each result to C{results}.
    """
    for target in targets:
        log(f"warm-up {target.name}")
        loadgen(target, WARMUP)

    cells = [
        (scenario, target) for scenario in scenarios for target in targets
    ]
    for number in range(rounds):
        for scenario, target in roundOrder(cells, number):
            result = measureCell(target, scenario)
            result["round"] = number
            results.append(result)
            log(
                f"round {number + 1} {scenario.name} {target.name}: "
                f"{result['msgs_per_s']} msg/s, "
                f"refused {result['refused']}, errors {result['errors']}"
            )
        for target in targets:
            target.clean()


def measureIdle(target: Target, sessions: int, directory: str) -> dict:
    """
    Start C{target} fresh, submit one message to warm it up, then hold
    C{sessions} idle TLS+AUTH sessions and read its memory before, during
    and after.

    @return: the memory readings and the loadgen result.
    """
    target.stop()
    target.start()
    loadgen(target, Scenario("warm", 1, 1, 2048))
    time.sleep(1)
    before = target.memory()

    ready = os.path.join(directory, f"{target.name}.ready")
    release = os.path.join(directory, f"{target.name}.release")
    command = [sys.executable, LOADGEN, "--port", str(target.port), "--idle"]
    command += ["-n", str(sessions), "--auth", f"{USER}:{PASSWORD}"]
    command += ["--ready-file", ready, "--release-file", release]
    command += ["--hold", "600", "--timeout", "120"]
    with tempfile.TemporaryFile() as output:
        holder = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output
        )
        try:
            waitForFile(ready, holder, timeout=600)
            time.sleep(2)
            during = target.memory()
            open(release, "w").close()
            holder.wait(120)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        output.seek(0)
        result = json.loads(output.read() or b"{}")

    time.sleep(1)
    after = target.memory()
    target.stop()
    return {
        "target": target.name,
        "before": before,
        "during": during,
        "after": after,
        "loadgen": result,
    }


def waitForFile(path: str, process: subprocess.Popen, timeout: float):
    """
    Wait until C{path} exists.

    @raise RuntimeError: when C{process} exits first or C{timeout} passes.
    """
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"idle sessions never became ready ({path})")
        time.sleep(0.2)


def spread(values: list[float], digits: int = 0) -> str:
    """
    @return: C{values} as C{median [min-max]}, rounded to C{digits}.
    """
    if not values:
        return "-"
    middle = statistics.median(values)
    return (
        f"{middle:,.{digits}f} [{min(values):,.{digits}f}"
        f"-{max(values):,.{digits}f}]"
    )


def cellValues(results, scenario, target, pick) -> list[float]:
    """
    @return: C{pick(result)} for every round of one cell, in round order.
    """
    chosen = [
        result
        for result in sorted(results, key=lambda result: result["round"])
        if result["scenario"] == scenario and result["target"] == target
    ]
    return [pick(result) for result in chosen if pick(result) is not None]


def throughputTables(results, scenarios, names, rounds) -> list[str]:
    """
    @return: the Markdown lines of the throughput, latency, set-up, CPU
        and ratio tables.
    """
    header = "| scenario | " + " | ".join(names) + " |"
    rule = "|---" * (len(names) + 1) + "|"
    lines = [f"### Accepted messages/s, median [min-max] of {rounds} rounds"]
    lines += ["", header, rule]
    for scenario in scenarios:
        row = [
            spread(cellValues(results, scenario.name, n, rate)) for n in names
        ]
        lines.append(f"| {scenario.describe()} | " + " | ".join(row) + " |")

    lines += ["", "### End of data to reply: median of p50 / p99 (ms)"]
    lines += ["", header, rule]
    for scenario in scenarios:
        row = []
        for name in names:
            p50 = cellValues(results, scenario.name, name, latency("p50"))
            p99 = cellValues(results, scenario.name, name, latency("p99"))
            row.append(f"{median(p50):.1f} / {median(p99):.1f}")
        lines.append(f"| {scenario.name} | " + " | ".join(row) + " |")

    lines += ["", "### Set-up, server CPU, refusals and failures", ""]
    lines += ["Each entry: median set-up p50 (ms) / median server CPU seconds"]
    lines += ["per 1000 messages / refused messages / failed sessions (sums)."]
    lines += ["", header, rule]
    for scenario in scenarios:
        row = [otherFigures(results, scenario.name, n) for n in names]
        lines.append(f"| {scenario.name} | " + " | ".join(row) + " |")

    lines += ratioTable(results, scenarios, names)
    return lines


def rate(result: dict) -> float:
    """
    @return: a result's accepted messages per second.
    """
    return result["msgs_per_s"]


def latency(which: str):
    """
    @return: a function picking latency percentile C{which} of a result.
    """
    return lambda result: result["latency_ms"][which]


def median(values: list[float]) -> float:
    """
    @return: the median of C{values}, or NaN when there are none.
    """
    return statistics.median(values) if values else float("nan")


def otherFigures(results, scenario: str, name: str) -> str:
    """
    @return: set-up time, CPU per 1000 messages, refusals and failures of
        one cell, as one table entry.
    """

    def cpuPerThousand(result):
        accepted = result["accepted"]
        return result["server_cpu_s"] * 1000 / accepted if accepted else None

    setup = cellValues(results, scenario, name, lambda r: r["setup_ms"]["p50"])
    cpu = cellValues(results, scenario, name, cpuPerThousand)
    refused = sum(cellValues(results, scenario, name, lambda r: r["refused"]))
    failed = sum(cellValues(results, scenario, name, lambda r: r["errors"]))
    return f"{median(setup):.0f} / {median(cpu):.2f} / {refused} / {failed}"


def ratioTable(results, scenarios, names) -> list[str]:
    """
    @return: the Markdown lines of the msagate/anchor throughput ratios:
        the median of the per-round ratios, then each round's.
    """
    anchors = names[1:]
    if not anchors:
        return []
    lines = ["", "### Throughput ratio msagate / anchor: median (each round)"]
    lines += ["", "| scenario | " + " | ".join(anchors) + " |"]
    lines.append("|---" * (len(anchors) + 1) + "|")
    for scenario in scenarios:
        ours = cellValues(results, scenario.name, names[0], rate)
        row = []
        for anchor in anchors:
            theirs = cellValues(results, scenario.name, anchor, rate)
            ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b]
            each = ", ".join(f"{ratio:.2f}" for ratio in ratios)
            row.append(f"{median(ratios):.2f} ({each})")
        lines.append(f"| {scenario.name} | " + " | ".join(row) + " |")
    return lines


def idleTable(readings: list[dict], sessions: int) -> list[str]:
    """
    @return: the Markdown lines of the idle-session memory table.
    """
    lines = [f"### Memory with {sessions} idle STARTTLS+AUTH sessions", ""]
    lines.append(
        "| server | ready | RSS before / during / after (MB) "
        "| PSS before / during (MB) | RSS kB/session | PSS kB/session |"
    )
    lines.append("|---|---|---|---|---|---|")
    for reading in readings:
        ready = reading["loadgen"].get("ready_sessions", 0)
        before, during = reading["before"], reading["during"]
        after = reading["after"]

        def perSession(kind, before=before, during=during, ready=ready):
            if before[kind] is None or not ready:
                return "-"
            return f"{(during[kind] - before[kind]) / ready:.1f}"

        def megabytes(value):
            return "-" if value is None else f"{value / 1024:.1f}"

        rss = " / ".join(
            megabytes(m["rss_kb"]) for m in (before, during, after)
        )
        pss = " / ".join(megabytes(m["pss_kb"]) for m in (before, during))
        lines.append(
            f"| {reading['target']} | {ready} | {rss} | {pss} "
            f"| {perSession('rss_kb')} | {perSession('pss_kb')} |"
        )
    return lines


def problemLines(target: Target, limit: int = 12) -> list[str]:
    """
    @return: Markdown lines summarising the failure lines of a target's
        log, with the first few quoted.
    """
    found = target.problems()
    lines = ["", f"### {target.name} log: {len(found)} problem lines"]
    if found:
        lines += ["", "```", *found[:limit], "```"]
    return lines


def parseOptions(argv=None) -> argparse.Namespace:
    """
    @return: the command-line options.
    """
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--rounds", type=int, default=3)
    add("--scenarios", default="B,C", help="comma-separated, of A, B, C")
    add("--anchors", action="store_true", help="also run the anchors")
    add(
        "--anchor-python",
        default=os.environ.get("MSAGATE_BENCH_PYTHON", ""),
        help="a Python with twisted, pyopenssl and aiosmtpd",
    )
    add("--anchor-dir", default=SHARED_ANCHORS)
    add("--idle-sessions", type=int, default=1000, help="0 to skip")
    add("--results", help="also write every raw result to this JSONL file")
    add("--keep", help="copy the state directory (logs, configs) here")
    options = parser.parse_args(argv)
    if options.anchors and not options.anchor_python:
        parser.error("--anchors needs --anchor-python (see README.rst)")
    return options


def makeTargets(options, root: str) -> list[Target]:
    """
    @return: msagate first, then the anchors asked for, none started.
    """
    from msagate._certs import selfSigned

    issued = selfSigned([HOSTNAME, "localhost", "127.0.0.1"])
    targets: list[Target] = [
        MsagateTarget(
            "msagate",
            os.path.join(root, "msagate"),
            certificate=issued.certificate,
            key=issued.key,
        )
    ]
    if not options.anchors:
        return targets

    certificateFile = os.path.join(root, "cert.pem")
    keyFile = os.path.join(root, "key.pem")
    for path, data in (
        (certificateFile, issued.certificate),
        (keyFile, issued.key),
    ):
        with open(path, "wb") as stream:
            stream.write(data)
    for name in ("twisted-fsync", "aiosmtpd-fsync"):
        script = name.replace("-", "_") + ".py"
        targets.append(
            AnchorTarget(
                name,
                os.path.join(root, name),
                script=os.path.join(options.anchor_dir, script),
                python=options.anchor_python,
                certificateFile=certificateFile,
                keyFile=keyFile,
            )
        )
    return targets


def benchmark(options, root: str, targets: list[Target]) -> list[str]:
    """
    Run the rounds and the idle measurement.

    @return: the report's Markdown lines.
    """
    scenarios = [SCENARIOS[name] for name in options.scenarios.split(",")]
    results: list[dict] = []
    for target in targets:
        target.start()
        log(f"started {target.name} pid {target.process.pid} on {target.port}")
    if options.rounds:
        runRounds(targets, scenarios, options.rounds, results)

    readings = []
    for target in targets if options.idle_sessions else []:
        log(f"idle sessions: {target.name}")
        readings.append(measureIdle(target, options.idle_sessions, root))
    if options.results:
        with open(options.results, "w") as stream:
            for record in results + readings:
                stream.write(json.dumps(record) + "\n")

    names = [target.name for target in targets]
    lines = []
    if results:
        lines += throughputTables(results, scenarios, names, options.rounds)
    if readings:
        lines += ["", *idleTable(readings, options.idle_sessions)]
    return lines + problemLines(targets[0])


def main(argv=None) -> int:
    """
    Run the benchmark and print its report.
    """
    options = parseOptions(argv)
    sys.path.insert(0, CHECKOUT)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard)
    )

    root = tempfile.mkdtemp(prefix="msagate-bench-")
    targets = makeTargets(options, root)
    try:
        lines = benchmark(options, root, targets)
    finally:
        for target in targets:
            target.stop()
        if options.keep:
            shutil.copytree(root, options.keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
