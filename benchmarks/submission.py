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

With C{--relay} msagate also relays: a sink (Postfix's C{smtp-sink}, or
C{sink.py} where Postfix is not installed) accepts and discards what
msagate delivers to it, and after each run against msagate the script
waits until the sink has counted every accepted message, to report the
time from the first MAIL to the last delivery.  Without C{--relay} the
configuration has no C{[relay]} section, which only an msagate without a
relay can run safely: one with a relay would deliver by MX, so the script
refuses it.

The servers are started and measured by C{servers.py}; the tables come
from C{report.py}.  Run it from the checkout, e.g. C{.venv/bin/python
benchmarks/submission.py --rounds 3 --anchors --anchor-python
/tmp/bench-venv/bin/python}; see C{benchmarks/README.rst}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from report import (
    idleTable,
    problemLines,
    relayTable,
    throughputTables,
)
from servers import (
    HOSTNAME,
    PASSWORD,
    SENDER,
    SMTP_SINK,
    USER,
    VENV_PYTHON,
    AnchorTarget,
    DeliveryWatch,
    MsagateTarget,
    RelaySink,
    Target,
    log,
)

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
LOADGEN = os.path.join(HERE, "loadgen.py")
RELAY_PROBE = os.path.join(HERE, "harness", "relayprobe.py")
SHARED_ANCHORS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "shared",
    "bench",
    "anchors",
)

RECIPIENT = "rcpt@example.net"


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


def measureCell(target: Target, scenario: Scenario, drain: float) -> dict:
    """
    Run one scenario against one target on an emptied, synced spool; when
    the target relays, wait (at most C{drain} seconds) until its sink has
    counted every accepted message.

    @return: the loadgen result with the server's CPU seconds added, and
        the end-to-end figures of L{endToEnd} when the target relays.
    """
    target.clean()
    os.sync()
    time.sleep(0.5)

    watch = DeliveryWatch(target.sink) if target.sink else None
    cpuBefore = target.cpuSeconds()
    result = loadgen(target, scenario)
    result["server_cpu_s"] = round(target.cpuSeconds() - cpuBefore, 3)
    if watch is not None:
        result.update(endToEnd(target, result, watch, cpuBefore, drain))
    result["target"] = target.name
    result["scenario"] = scenario.name
    return result


def endToEnd(
    target: Target,
    result: dict,
    watch: DeliveryWatch,
    cpuBefore: float,
    timeout: float,
) -> dict:
    """
    Wait until the sink has counted every message the run got accepted,
    then stop C{watch}.

    @param result: the run's loadgen result.
    @param watch: the sink's count, watched since before the run.
    @param cpuBefore: the server's CPU seconds before the run.
    @return: C{delivered} (messages the sink counted), C{e2e_s} (seconds
        from the first MAIL to the last delivery) and C{e2e_msgs_per_s},
        C{drain_after_accept_s} (seconds from the end of the run to the
        last delivery) and C{server_cpu_total_s} (relaying included).
    """
    accepted = result["accepted"]
    try:
        count, done = watch.reached(watch.initial + accepted, timeout)
    finally:
        watch.stop()
    delivered = count - watch.initial
    if delivered < accepted:
        log(f"{target.name}: {delivered} of {accepted} delivered in time")

    ended = result["started_unix"] + result["elapsed_s"]
    elapsed = done - (result["first_mail_unix"] or result["started_unix"])
    return {
        "delivered": delivered,
        "e2e_s": round(elapsed, 4),
        "e2e_msgs_per_s": round(delivered / elapsed, 2),
        "drain_after_accept_s": round(done - ended, 4),
        "server_cpu_total_s": round(target.cpuSeconds() - cpuBefore, 3),
    }


def roundOrder(cells: list, number: int) -> list:
    """
    @return: C{cells} rotated by C{number} places, and reversed in every
        other round, so that no cell always runs first or after the same
        neighbour.
    """
    shift = number % len(cells)
    order = cells[shift:] + cells[:shift]
    return order[::-1] if number % 2 else order


def runRounds(targets, scenarios, rounds: int, results, drain) -> None:
    """
    Run every (scenario, target) cell once a round, for C{rounds} rounds,
    appending each result to C{results}.

    @param drain: the longest wait, in seconds, for a relaying target's
        sink to count a run's messages.
    """
    for target in targets:
        log(f"warm-up {target.name}")
        measureCell(target, WARMUP, drain)

    cells = [
        (scenario, target) for scenario in scenarios for target in targets
    ]
    for number in range(rounds):
        for scenario, target in roundOrder(cells, number):
            result = measureCell(target, scenario, drain)
            result["round"] = number
            results.append(result)
            endToEndRate = result.get("e2e_msgs_per_s")
            log(
                f"round {number + 1} {scenario.name} {target.name}: "
                f"{result['msgs_per_s']} msg/s, "
                f"refused {result['refused']}, errors {result['errors']}"
                + (
                    f", end to end {endToEndRate} msg/s"
                    if endToEndRate
                    else ""
                )
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
    add(
        "--relay",
        action="store_true",
        help="msagate relays to a local sink; time the whole way",
    )
    add(
        "--sink",
        choices=("auto", "smtp-sink", "sink.py"),
        default="auto",
        help="the sink for --relay (auto: smtp-sink when installed)",
    )
    add("--drain-timeout", type=float, default=120.0, help="seconds")
    add("--source", default=CHECKOUT, help="the msagate tree to run")
    add("--results", help="also write every raw result to this JSONL file")
    add("--keep", help="copy the state directory (logs, configs) here")
    options = parser.parse_args(argv)
    if options.anchors and not options.anchor_python:
        parser.error("--anchors needs --anchor-python (see README.rst)")
    if options.sink == "auto":
        options.sink = "smtp-sink" if SMTP_SINK else "sink.py"
    if options.sink == "smtp-sink" and not SMTP_SINK:
        parser.error("--sink smtp-sink: smtp-sink is not installed")
    options.source = os.path.abspath(options.source)
    return options


def relayKnown(source: str) -> bool:
    """
    @return: whether the msagate in C{source} knows the C{[relay]} section,
        as C{harness/relayprobe.py} finds in msagate's own Python.
    @raise RuntimeError: when the probe cannot load msagate.
    """
    probe = subprocess.run(
        [VENV_PYTHON, RELAY_PROBE],
        env=dict(os.environ, PYTHONPATH=source),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        raise RuntimeError(probe.stderr.strip())
    return probe.stdout.strip() == "known"


def makeTargets(options, root: str, sink: RelaySink | None) -> list[Target]:
    """
    @param sink: the sink msagate relays to, or L{None}.
    @return: msagate first, then the anchors asked for, none started.
    """
    from msagate._certs import selfSigned

    issued = selfSigned([HOSTNAME, "localhost", "127.0.0.1"])
    targets: list[Target] = [
        MsagateTarget(
            "msagate",
            os.path.join(root, "msagate"),
            sink=sink,
            certificate=issued.certificate,
            key=issued.key,
            source=options.source,
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
        drain = options.drain_timeout
        runRounds(targets, scenarios, options.rounds, results, drain)

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
    lines += relayTable(results, scenarios, names[0])
    if readings:
        lines += ["", *idleTable(readings, options.idle_sessions)]
    return lines + problemLines(names[0], targets[0].problems())


def main(argv=None) -> int:
    """
    Run the benchmark and print its report.
    """
    options = parseOptions(argv)
    if not options.relay and relayKnown(options.source):
        sys.exit(
            "This msagate has a relay: without a [relay] section it would"
            " deliver by MX, off this machine.  Run with --relay."
        )
    sys.path.insert(0, options.source)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard)
    )

    root = tempfile.mkdtemp(prefix="msagate-bench-")
    sink = None
    if options.relay:
        sink = RelaySink(os.path.join(root, "sink"), options.sink)
    targets = makeTargets(options, root, sink)
    try:
        if sink is not None:
            sink.start()
            log(
                f"started {sink.program} pid {sink.process.pid} on {sink.port}"
            )
        lines = benchmark(options, root, targets)
    finally:
        for target in targets:
            target.stop()
        if sink is not None:
            sink.stop()
        if options.keep:
            shutil.copytree(root, options.keep, dirs_exist_ok=True)
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
