#!/usr/bin/env python3
"""
A minimal SMTP sink (standard library only, Python 3.11 or later): it
accepts every message and throws it away, and counts.

It stands in for Postfix's C{smtp-sink} as the smarthost of the end-to-end
benchmark when Postfix is not installed.  It speaks just enough ESMTP for
a relay client: EHLO (offering PIPELINING and 8BITMIME), HELO, MAIL,
RCPT, DATA, RSET, NOOP and QUIT; anything else is answered 502.  Replies
go out in order as commands arrive, which is all PIPELINING asks of a
server (RFC 2920 section 3.1).

After each message it prints C{mesg=N} on a line of its own, N being the
number of messages accepted so far, and flushes: the same counter
C{smtp-sink -c} writes, so both are read the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


class Counter:
    """
    The messages accepted so far, printed after each one.

    @ivar messages: how many.
    """

    def __init__(self) -> None:
        self.messages = 0

    def accepted(self) -> None:
        """
        Count one more message and print the new total.
        """
        self.messages += 1
        sys.stdout.write(f"mesg={self.messages}\n")
        sys.stdout.flush()


REPLIES = {
    b"HELO": b"250 sink\r\n",
    b"EHLO": b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
    b"MAIL": b"250 2.1.0 ok\r\n",
    b"RCPT": b"250 2.1.5 ok\r\n",
    b"RSET": b"250 2.0.0 ok\r\n",
    b"NOOP": b"250 2.0.0 ok\r\n",
}


async def readData(reader: asyncio.StreamReader) -> bool:
    """
    Read a message up to its end: the line holding a single dot, that is
    C{CRLF.CRLF}, or C{.CRLF} alone for an empty message (RFC 5321 section
    4.1.1.4).  Whole blocks are searched, not one line at a time, so that
    large messages cost the sink little.

    @return: whether the message ended properly (not with the connection).
    """
    # The message starts at the beginning of a line.
    recent = b"\r\n"
    try:
        while recent != b"\r\n.\r\n":
            try:
                chunk = await reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as overrun:
                chunk = await reader.readexactly(overrun.consumed)
            recent = (recent + chunk)[-5:]
    except asyncio.IncompleteReadError:
        return False
    return True


async def serve(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    counter: Counter,
) -> None:
    """
    Serve one SMTP session until QUIT or the end of the connection.
    """
    writer.write(b"220 sink ESMTP\r\n")
    try:
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                break
            if verb != b"DATA":
                writer.write(REPLIES.get(verb, b"502 5.5.1 unknown\r\n"))
                continue
            writer.write(b"354 go ahead\r\n")
            if not await readData(reader):
                break
            counter.accepted()
            writer.write(b"250 2.0.0 discarded\r\n")
            await writer.drain()
        await writer.drain()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def run(port: int) -> None:
    """
    Serve on 127.0.0.1:C{port} until killed.
    """
    counter = Counter()
    server = await asyncio.start_server(
        lambda reader, writer: serve(reader, writer, counter),
        "127.0.0.1",
        port,
        limit=1 << 20,
        backlog=1024,
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """
    Parse the port and serve.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args(argv)
    try:
        asyncio.run(run(options.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
