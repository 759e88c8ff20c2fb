"""
Tests of the outgoing dot-stuffing (RFC 5321 section 4.5.2; SMTP-3,
SEC-2): whatever the message and however it is cut into chunks, the next
hop reads back exactly the message, and the data never ends early.
"""

from __future__ import annotations

import io
import itertools
import re
from dataclasses import replace

import pytest
from conftest import inReactor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sink import deliver, plainEndpoint, startSink, unstuff

from msagate._stuffing import DotStuffer
from msagate.client import ClientSettings, OutboundMessage

CRLF = b"\r\n"
# Timeouts short enough that a broken test fails rather than hangs.
SETTINGS = ClientSettings(
    heloName="msa.example.org", security="none", timeout=10, dataTimeout=10
)

# Lines a message may hold, among them those the stuffing is about.
_text = st.binary(max_size=60).map(
    lambda b: b.replace(b"\r", b"r").replace(b"\n", b"n")
)
_line = st.one_of(
    st.just(b"."),
    st.just(b""),
    st.integers(1, 4).flatmap(
        lambda n: _text.map(lambda text: b"." * n + text)
    ),
    _text,
    st.integers(1000, 4000).map(lambda n: b"x" * n),
)
_bodies = st.tuples(st.lists(_line, max_size=30), _text).map(
    lambda parts: b"".join(line + CRLF for line in parts[0]) + parts[1]
)


def expected(body: bytes) -> bytes:
    """
    @return: what the next hop should read for C{body}: the body, with
        CRLF added when its last line lacks one.
    """
    if body == b"" or body.endswith(CRLF):
        return body
    return body + CRLF


def wireFor(body: bytes, cuts: list[int]) -> bytes:
    """
    @return: the wire form of C{body} stuffed in the chunks that C{cuts}
        (offsets) delimit, end marker included.
    """
    stuffer = DotStuffer()
    edges = [0, *sorted(cuts), len(body)]
    chunks = [body[a:b] for a, b in itertools.pairwise(edges)]
    return b"".join(map(stuffer.stuff, chunks)) + stuffer.end()


@st.composite
def chunked(draw, bodies=_bodies):
    """
    A body and offsets to cut it at: anywhere, between CR and LF, right
    before a dot, or everywhere (1-octet chunks, for the shorter bodies).
    """
    body = draw(bodies)
    if len(body) < 3000 and draw(st.integers(0, 9)) == 0:
        return body, list(range(1, len(body)))
    awkward = [m.end() for m in re.finditer(rb"\r", body)]
    awkward += [m.start() for m in re.finditer(rb"\.", body)]
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=20))
    if awkward:
        cuts += draw(st.lists(st.sampled_from(awkward), max_size=20))
    return body, cuts


class TestDotStuffer:
    @settings(max_examples=200, deadline=None)
    @given(chunked())
    def test_roundTrip(self, case):
        """
        However a message of CRLF lines is chunked, the strict reader of
        the sink reads back exactly the message, and the end of data comes
        at the very end of the wire, nowhere before it.
        """
        body, cuts = case
        wire = wireFor(body, cuts)
        message, rest = unstuff(wire)
        assert message == expected(body)
        assert rest == b""

    @settings(max_examples=200, deadline=None)
    @given(chunked(st.binary(max_size=300)))
    def test_bareLineEndings(self, case):
        """
        Bytes with bare LFs and CRs: a receiver that also takes a bare LF
        for the end of a line reads back the message too, so it sees no
        early end of data either.
        """
        body, cuts = case
        lines = wireFor(body, cuts).split(b"\n")
        content, marker = lines[:-2], lines[-2:]
        assert marker == [b".\r", b""]
        assert not {b".", b".\r"} & set(content)

        unstuffed = [
            line[1:] if line[:1] == b"." else line for line in content
        ]
        read = b"".join(line + b"\n" for line in unstuffed)
        assert read == expected(body)

    def test_boundaryDotLine(self):
        """
        A "." line that starts exactly where a chunk starts is stuffed:
        Twisted's own client sends it bare (D1 of the audit).
        """
        stuffer = DotStuffer()
        first = stuffer.stuff(b"Hello\r\n")
        second = stuffer.stuff(b".\r\nMAIL FROM:<ceo@example.test>\r\n")
        assert (
            first + second
            == b"Hello\r\n..\r\nMAIL FROM:<ceo@example.test>\r\n"
        )
        assert stuffer.end() == b".\r\n"

    def test_splitBetweenLFAndDot(self):
        """
        A chunk that ends in a bare LF makes a leading dot of the next one
        stuffed too.
        """
        stuffer = DotStuffer()
        assert stuffer.stuff(b"a\n") + stuffer.stuff(b".b") == b"a\n..b"

    def test_noDotAfterCRAlone(self):
        """
        A chunk ending in CR does not start a line: a dot after it is left
        alone, and a dot after the LF that follows is stuffed.
        """
        stuffer = DotStuffer()
        wire = stuffer.stuff(b"a\r") + stuffer.stuff(b".")
        assert wire == b"a\r."
        assert stuffer.stuff(b"\n.") == b"\n.."

    def test_firstLine(self):
        """
        The message's first line is stuffed like any other.
        """
        assert DotStuffer().stuff(b".hidden\r\n") == b"..hidden\r\n"

    @pytest.mark.parametrize(
        ("chunks", "marker"),
        [
            ([], b".\r\n"),
            ([b""], b".\r\n"),
            ([b"a\r\n"], b".\r\n"),
            ([b"a\r", b"\n"], b".\r\n"),
            ([b"a"], b"\r\n.\r\n"),
            ([b"a\r"], b"\r\n.\r\n"),
            ([b"a\n"], b"\r\n.\r\n"),
            ([b"\r\n", b"x"], b"\r\n.\r\n"),
        ],
    )
    def test_end(self, chunks, marker):
        """
        The end marker adds a CRLF only where the last line lacks one,
        also when the CRLF was cut across two chunks.
        """
        stuffer = DotStuffer()
        for chunk in chunks:
            stuffer.stuff(chunk)
        assert stuffer.end() == marker

    def test_unchangedBytes(self):
        """
        Lines without a leading dot pass through byte for byte, 8-bit
        octets and inner dots included.
        """
        body = b"caf\xc3\xa9 . .\r\nx.y\r\n\r\n"
        assert DotStuffer().stuff(body) == body

    @pytest.mark.parametrize("chunkSize", [16384, 8192, 4096, 65536])
    @pytest.mark.parametrize("k", [1, 2, 3, 4])
    def test_boundaryOffsets(self, k, chunkSize):
        """
        SMTP-3, SEC-2: a "." line starting at every offset around
        16384*k, followed by what would be a smuggled transaction, is
        stuffed, chunked like a spool file read in blocks.
        """
        smuggled = (
            b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<v@example.test>\r\n"
        )
        for offset in range(16384 * k - 6, 16384 * k + 6):
            body = b"x" * (offset - 2) + CRLF + b".\r\n" + smuggled
            cuts = list(range(chunkSize, len(body), chunkSize))
            assert body.index(b"\r\n.\r\n") + 2 == offset
            assert unstuff(wireFor(body, cuts)) == (body, b"")


@pytest.fixture(scope="module")
def sink(runningReactor):
    """
    One sink for every example of the loopback property test.
    """
    running = inReactor(startSink)
    yield running
    inReactor(running.stop)


class TestLoopback:
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(body=_bodies, chunkSize=st.integers(1, 7))
    def test_throughClient(self, sink, body, chunkSize):
        """
        Random bodies sent by the real client over 127.0.0.1, read from the
        file a few octets at a time, reach the real sink byte-identical,
        with no bare LF followed by a dot.
        """
        before = len(sink.messages)
        message = OutboundMessage(
            sender="alice@example.org",
            recipients=("bob@example.net",),
            data=io.BytesIO(body),
            size=len(body),
        )
        clientSettings = replace(SETTINGS, chunkSize=chunkSize)
        [outcomes] = inReactor(
            deliver, plainEndpoint(sink), [message], clientSettings
        )
        # The sink runs in the reactor thread too: it has recorded the
        # message before the client hears 250, so there is nothing to wait
        # for (and a failing example does not wait while being shrunk).
        received = sink.messages[before]

        assert [o.response.code for o in outcomes] == [250]
        assert received.data == expected(body)
        assert not received.bareLFDot

    def test_boundaryOffsets(self, sink):
        """
        SMTP-3: messages whose "." lines sit at and around a 16 KiB
        read-block boundary arrive whole at the sink, and nothing in them
        is taken for a command (one session, no extra message).
        """
        smuggled = (
            b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<v@example.test>\r\n"
        )
        bodies = [
            b"x" * (offset - 2) + b"\r\n.\r\n" + smuggled
            for offset in range(16384 - 3, 16384 + 3)
        ]
        messages = [
            OutboundMessage(
                "alice@example.org",
                ("bob@example.net",),
                io.BytesIO(body),
                len(body),
            )
            for body in bodies
        ]
        before = len(sink.messages)
        clientSettings = replace(SETTINGS, chunkSize=16384)
        inReactor(deliver, plainEndpoint(sink), messages, clientSettings)

        received = sink.waitForMessages(before + len(bodies))[before:]
        assert [r.data for r in received] == bodies
        assert len(sink.messages) == before + len(bodies)
        assert not any(
            line.startswith(b"MAIL FROM:<ceo") for line in sink.commands
        )
