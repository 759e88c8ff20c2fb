#!/usr/bin/env python3
"""
A load generator for mail submission servers (standard library only,
Python 3.11 or later).

Each of N concurrent sessions connects, greets with EHLO, enters TLS
(STARTTLS or TLS from the first byte), authenticates with AUTH PLAIN,
submits M messages of about S octets each and ends with QUIT.  MAIL, RCPT
and DATA go out in one write when the server offers PIPELINING; the
message itself is only sent once the server has answered DATA with 354.

One JSON object is printed on standard output when the run ends;
diagnostics go to standard error.  Times in it:

  - C{latency_ms}: from the moment the end of the data (C{CRLF.CRLF}) has
    been handed to the socket until the server's final reply to it;
  - C{setup_ms}: from the start of the connection until the session is
    ready for MAIL (greeting, EHLO, TLS, EHLO again, AUTH);
  - C{elapsed_s}: the whole run, from the first connection attempt to the
    last session's end; C{msgs_per_s} divides the accepted messages by it;
  - C{started_unix} and C{first_mail_unix}: the wall-clock times (seconds
    since the epoch) of the first connection attempt and of the first
    MAIL command, for measuring how long mail takes to reach a relay's
    next hop.

Percentiles are nearest-rank.  A message the server refuses (a 4xx or 5xx
reply to MAIL, RCPT, DATA or to the end of data) counts in C{refused}; a
session that fails (connection, TLS, AUTH, timeout, dropped connection)
counts in C{errors}, and the messages it had not yet sent count in neither.

With C{--idle}, the sessions stop once they are ready for MAIL and stay
open until the file named by C{--release-file} appears or C{--hold}
seconds pass; C{--ready-file} is written as soon as every session is either
ready or failed.  This is for measuring a server's memory per session.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import resource
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

FILL_LINE = b"The quick brown fox jumps over the lazy dog; " * 2
FILL_LINE = FILL_LINE[:76] + b"\r\n"


class SessionFailed(Exception):
    """
    A session cannot go on; C{str()} of it names the kind of failure.
    """


@dataclass
class Tally:
    """
    What all the sessions of one run observed.

    @ivar latencies: seconds from end of data to final reply, one a
        message accepted.
    @ivar setups: seconds from connect to ready-for-MAIL, one a session
        that got there.
    @ivar refusals: refused messages by stage and reply code.
    @ivar failures: failed sessions by kind of failure.
    @ivar firstMail: the wall-clock time (seconds since the epoch) the
        first MAIL command of the run was written, or L{None} before.
    """

    latencies: list[float] = field(default_factory=list)
    setups: list[float] = field(default_factory=list)
    accepted: int = 0
    refusals: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    pipelined: int = 0
    ready: int = 0
    firstMail: float | None = None


class Connection:
    """
    One SMTP client connection over asyncio streams.

    @ivar extensions: the EHLO keywords of the last greeting, upper case,
        mapped to their parameters.
    """

    def __init__(self, reader, writer) -> None:
        self.reader = reader
        self.writer = writer
        self.extensions: dict[str, str] = {}

    async def reply(self, stage: str) -> tuple[int, list[bytes]]:
        """
        Read one reply, however many lines it has.

        @return: its code and its lines.
        @raise SessionFailed: when the connection ends or the reply cannot
            be parsed.
        """
        lines = []
        while True:
            line = await self.reader.readline()
            if not line.endswith(b"\n"):
                raise SessionFailed(f"{stage}:disconnected")
            lines.append(line)
            if line[3:4] != b"-":
                break
        code = lines[-1][:3]
        if not code.isdigit():
            raise SessionFailed(f"{stage}:garbled")
        return int(code), lines

    async def expect(self, stage: str, wanted: int) -> None:
        """
        Read one reply and fail the session unless it has code C{wanted}.
        """
        code, _ = await self.reply(stage)
        if code != wanted:
            raise SessionFailed(f"{stage}:{code}")

    async def command(self, stage: str, line: bytes, wanted: int) -> None:
        """
        Send C{line} and expect a reply of code C{wanted}.
        """
        self.writer.write(line + b"\r\n")
        await self.expect(stage, wanted)

    async def greet(self, name: bytes) -> None:
        """
        Send EHLO and remember the extensions the server offers.
        """
        self.writer.write(b"EHLO " + name + b"\r\n")
        code, lines = await self.reply("EHLO")
        if code != 250:
            raise SessionFailed(f"EHLO:{code}")
        self.extensions = {}
        for line in lines[1:]:
            keyword, _, parameters = line[4:].strip().partition(b" ")
            self.extensions[keyword.decode("ascii").upper()] = (
                parameters.decode("ascii", "replace")
            )


def clientContext(options) -> ssl.SSLContext:
    """
    @return: the TLS context of every session: verifying against
        C{options.cafile} when one is given, not verifying otherwise.
    """
    if options.cafile:
        return ssl.create_default_context(cafile=options.cafile)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def plainToken(credentials: str) -> bytes:
    """
    @param credentials: C{USER:PASSWORD}.
    @return: the base64 AUTH PLAIN response of RFC 4616, without authzid.
    """
    user, _, password = credentials.partition(":")
    raw = b"\0" + user.encode() + b"\0" + password.encode()
    return base64.b64encode(raw)


async def openSession(options, context, tally: Tally) -> Connection:
    """
    Connect and take the session as far as ready-for-MAIL.

    @raise SessionFailed: on any unexpected reply.
    """
    started = time.perf_counter()
    servername = options.servername or options.host
    implicit = options.tls == "implicit"
    reader, writer = await asyncio.open_connection(
        options.host,
        options.port,
        ssl=context if implicit else None,
        server_hostname=servername if implicit else None,
        limit=1 << 20,
    )
    connection = Connection(reader, writer)
    await connection.expect("greeting", 220)
    await connection.greet(options.ehlo.encode())

    if options.tls == "starttls":
        if "STARTTLS" not in connection.extensions:
            raise SessionFailed("STARTTLS:not-offered")
        await connection.command("STARTTLS", b"STARTTLS", 220)
        await writer.start_tls(context, server_hostname=servername)
        await connection.greet(options.ehlo.encode())

    if options.auth:
        await authenticate(connection, plainToken(options.auth))

    # Let drain() wait until every byte has gone to the socket, so the
    # latency clock starts when the whole message has been handed over.
    writer.transport.set_write_buffer_limits(high=0)
    tally.setups.append(time.perf_counter() - started)
    return connection


async def authenticate(connection: Connection, token: bytes) -> None:
    """
    AUTH PLAIN with an initial response; answer a 334 challenge too, for
    servers that ignore the initial response.
    """
    connection.writer.write(b"AUTH PLAIN " + token + b"\r\n")
    code, _ = await connection.reply("AUTH")
    if code == 334:
        connection.writer.write(token + b"\r\n")
        code, _ = await connection.reply("AUTH")
    if code != 235:
        raise SessionFailed(f"AUTH:{code}")


def messageBody(size: int) -> bytes:
    """
    @return: about C{size} octets of CRLF-terminated lines of 78 octets,
        none starting with a dot.
    """
    count = max(1, size // len(FILL_LINE))
    return FILL_LINE * count


def messageHeader(options, session: int, number: int) -> bytes:
    """
    @return: a header section naming the run's sender, with a Message-ID
        that is unique within the run.
    """
    return (
        f"From: <{options.sender}>\r\n"
        f"To: <{options.recipient}>\r\n"
        f"Subject: load test {session}.{number}\r\n"
        f"Date: {options.date}\r\n"
        f"Message-ID: <{os.getpid()}.{session}.{number}@loadgen.invalid>\r\n"
        "\r\n"
    ).encode()


async def envelope(connection: Connection, options) -> str | None:
    """
    Send MAIL, RCPT and DATA, in one write when the server pipelines.

    @return: L{None} when the server answered DATA with 354, or the stage
        and code of the first refusal otherwise (the transaction is then
        reset).
    """
    commands = (
        ("MAIL", f"MAIL FROM:<{options.sender}>\r\n".encode(), 2),
        ("RCPT", f"RCPT TO:<{options.recipient}>\r\n".encode(), 2),
        ("DATA", b"DATA\r\n", 3),
    )
    refusal = None
    if "PIPELINING" in connection.extensions:
        connection.writer.write(b"".join(line for _, line, _ in commands))
        for stage, _, wanted in commands:
            code, _ = await connection.reply(stage)
            if code // 100 != wanted and refusal is None:
                refusal = f"{stage}:{code}"
        if refusal is not None and code == 354:
            # DATA was accepted although an earlier command was not: send
            # an empty message to get back to a command state.
            connection.writer.write(b".\r\n")
            await connection.reply("end of data")
    else:
        for stage, line, wanted in commands:
            connection.writer.write(line)
            code, _ = await connection.reply(stage)
            if code // 100 != wanted:
                refusal = f"{stage}:{code}"
                break

    if refusal is not None:
        await connection.command("RSET", b"RSET", 250)
    return refusal


async def submitAll(connection, options, session: int, tally: Tally) -> None:
    """
    Submit C{options.messages} messages over one ready session.
    """
    body = messageBody(options.size - len(messageHeader(options, 0, 0)))
    if "PIPELINING" in connection.extensions:
        tally.pipelined += 1
    clock = time.perf_counter

    for number in range(options.messages):
        if tally.firstMail is None:
            tally.firstMail = time.time()
        async with asyncio.timeout(options.timeout):
            refusal = await envelope(connection, options)
            if refusal is not None:
                tally.refusals[refusal] += 1
                continue
            header = messageHeader(options, session, number)
            connection.writer.write(header + body + b".\r\n")
            await connection.writer.drain()
            handed = clock()
            code, _ = await connection.reply("end of data")

        if code // 100 == 2:
            tally.accepted += 1
            tally.latencies.append(clock() - handed)
        else:
            tally.refusals[f"end of data:{code}"] += 1


async def runSession(session: int, options, context, tally, gates) -> None:
    """
    One session from connect to QUIT; failures are counted, never raised.

    @param gates: the L{Gates} shared by every session of the run.
    """
    connection = None
    try:
        async with gates.setup:
            async with asyncio.timeout(options.timeout):
                connection = await openSession(options, context, tally)
        gates.settled(ready=True)
        if options.idle:
            await gates.release.wait()
        else:
            await submitAll(connection, options, session, tally)
        connection.writer.write(b"QUIT\r\n")
        async with asyncio.timeout(5):
            await connection.reply("QUIT")
    except SessionFailed as failure:
        tally.failures[str(failure)] += 1
    except TimeoutError:
        tally.failures["timeout"] += 1
    except (OSError, ssl.SSLError, EOFError) as error:
        tally.failures[f"connection:{type(error).__name__}"] += 1
    finally:
        gates.settled(ready=False)
        if connection is not None:
            connection.writer.close()


class Gates:
    """
    What the sessions of a run wait on together.

    @ivar setup: limits how many sessions are being set up at once, so
        that a burst of connections does not overflow the server's listen
        backlog.
    @ivar allSettled: set once every session is either ready or failed.
    @ivar release: set when idle sessions may end.
    """

    def __init__(self, sessions: int, concurrency: int) -> None:
        self.setup = asyncio.Semaphore(concurrency)
        self.allSettled = asyncio.Event()
        self.release = asyncio.Event()
        self.ready = 0
        self._unsettled = sessions
        self._seen: set[asyncio.Task] = set()

    def settled(self, ready: bool) -> None:
        """
        Note that the calling session is ready or has failed; only its
        first call counts.
        """
        task = asyncio.current_task()
        if task in self._seen:
            return
        self._seen.add(task)
        self.ready += ready
        self._unsettled -= 1
        if self._unsettled == 0:
            self.allSettled.set()


async def waitForRelease(options, gates: Gates) -> None:
    """
    In idle mode: write the ready file once every session has settled, then
    release the sessions when the release file appears or the hold time
    ends.
    """
    await gates.allSettled.wait()
    if options.ready_file:
        with open(options.ready_file + ".tmp", "w") as stream:
            json.dump({"ready": gates.ready}, stream)
        os.replace(options.ready_file + ".tmp", options.ready_file)

    deadline = time.monotonic() + options.hold
    while time.monotonic() < deadline:
        if options.release_file and os.path.exists(options.release_file):
            break
        await asyncio.sleep(0.1)
    gates.release.set()


def percentile(values: list[float], fraction: float) -> float | None:
    """
    @return: the nearest-rank percentile of C{values}, or L{None} when
        there are none.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(fraction * len(ordered))
    return ordered[min(max(rank, 1), len(ordered)) - 1]


def milliseconds(seconds: float | None) -> float | None:
    """
    @return: C{seconds} in milliseconds, rounded to microseconds.
    """
    return None if seconds is None else round(seconds * 1000, 3)


async def run(options) -> dict:
    """
    Run every session and summarise what they saw.

    @return: the result object that is printed as JSON.
    """
    context = clientContext(options) if options.tls != "none" else None
    tally = Tally()
    gates = Gates(options.sessions, options.setup_concurrency)
    cpuBefore = os.times()
    startedAt = time.time()
    started = time.perf_counter()

    sessions = [
        runSession(number, options, context, tally, gates)
        for number in range(options.sessions)
    ]
    if options.idle:
        sessions.append(waitForRelease(options, gates))
    await asyncio.gather(*sessions)

    elapsed = time.perf_counter() - started
    cpuAfter = os.times()
    cpu = cpuAfter.user + cpuAfter.system - cpuBefore.user - cpuBefore.system
    firstMail = tally.firstMail
    return {
        "host": options.host,
        "port": options.port,
        "tls": options.tls,
        "sessions": options.sessions,
        "messages_per_session": 0 if options.idle else options.messages,
        "size": options.size,
        "idle": options.idle,
        "ready_sessions": gates.ready,
        "pipelining_sessions": tally.pipelined,
        "accepted": tally.accepted,
        "refused": sum(tally.refusals.values()),
        "errors": sum(tally.failures.values()),
        "refusals": dict(tally.refusals),
        "failures": dict(tally.failures),
        "elapsed_s": round(elapsed, 4),
        "msgs_per_s": round(tally.accepted / elapsed, 2),
        "latency_ms": {
            "p50": milliseconds(percentile(tally.latencies, 0.5)),
            "p99": milliseconds(percentile(tally.latencies, 0.99)),
            "max": milliseconds(max(tally.latencies, default=None)),
        },
        "setup_ms": {"p50": milliseconds(percentile(tally.setups, 0.5))},
        "client_cpu_s": round(cpu, 3),
        "started_unix": round(startedAt, 4),
        "first_mail_unix": None if firstMail is None else round(firstMail, 4),
    }


def parseOptions(argv: list[str] | None = None) -> argparse.Namespace:
    """
    @return: the command-line options.
    """
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, required=True)
    add("-n", "--sessions", type=int, default=1)
    add("-m", "--messages", type=int, default=10, help="per session")
    add("-s", "--size", type=int, default=2048, help="octets a message")
    add("--tls", choices=("starttls", "implicit", "none"), default="starttls")
    add("--cafile", help="verify the server against these CA certificates")
    add("--servername", help="name to send and verify (default: --host)")
    add("--auth", default="", help="USER:PASSWORD for AUTH PLAIN")
    add("--sender", default="sender@bench.test")
    add("--recipient", default="rcpt@example.net")
    add("--ehlo", default="loadgen.bench.test")
    add("--timeout", type=float, default=60.0, help="seconds a step")
    add("--setup-concurrency", type=int, default=50)
    add("--idle", action="store_true", help="hold sessions, send nothing")
    add("--ready-file", help="idle: written once all sessions are settled")
    add("--release-file", help="idle: sessions end when this file exists")
    add("--hold", type=float, default=300.0, help="idle: longest hold")
    options = parser.parse_args(argv)
    options.date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    return options


def raiseFileLimit(wanted: int) -> None:
    """
    Raise the soft limit of open files towards C{wanted}, as far as the
    hard limit lets it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        ceiling = wanted if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(wanted, ceiling), hard)
        )


def main(argv: list[str] | None = None) -> int:
    """
    Run the load and print its JSON summary.

    @return: the exit status: 0 when no session failed and no message was
        refused, 1 otherwise.
    """
    options = parseOptions(argv)
    raiseFileLimit(options.sessions + 64)
    result = asyncio.run(run(options))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["errors"] == 0 and result["refused"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
