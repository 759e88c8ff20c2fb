"""
Tests for L{msagate._data}: reading the bytes of a DATA section.
"""

from __future__ import annotations

import tracemalloc
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msagate._data import (
    BARE_LINE_ENDING,
    LINE_TOO_LONG,
    TOO_BIG,
    DataReader,
)

Result = tuple[bytes, str | None, int, bytes | None]

NEXT = b"MAIL FROM:<next@example.test>\r\n"


class RecordingSink:
    """
    A sink that keeps every piece of content it is given.

    @ivar pieces: the pieces, in order.
    """

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def __call__(self, content: bytes) -> None:
        """
        Keep C{content}.
        """
        self.pieces.append(content)

    @property
    def content(self) -> bytes:
        """
        All the content received so far.
        """
        return b"".join(self.pieces)


def readChunks(
    chunks: list[bytes], maxSize: int = 10**6, maxLineLength: int = 1000
) -> Result:
    """
    Feed C{chunks} to a new reader until it reports the end of data.

    @return: the content its sink received, its problem, its size, and the
        bytes that followed the terminator or C{None} if data never ended.
    """
    sink = RecordingSink()
    reader = DataReader(sink, maxSize, maxLineLength)
    for index, chunk in enumerate(chunks):
        leftover = reader.feed(chunk)
        if leftover is not None:
            leftover += b"".join(chunks[index + 1 :])
            return sink.content, reader.problem, reader.size, leftover
    return sink.content, reader.problem, reader.size, None


def octets(wire: bytes) -> list[bytes]:
    """
    Cut C{wire} into chunks of one octet.
    """
    return [wire[at : at + 1] for at in range(len(wire))]


def oneLine(text: bytes) -> bytes:
    """
    Drop every CR and LF from C{text}.
    """
    return text.translate(None, b"\r\n")


def splitAt(wire: bytes, cuts: list[int]) -> list[bytes]:
    """
    Cut C{wire} into chunks at the given offsets.
    """
    edges = [0, *sorted(cuts), len(wire)]
    return [wire[start:end] for start, end in pairwise(edges)]


def referenceRead(wire: bytes, maxSize: int, maxLineLength: int) -> Result:
    """
    Read DATA one line and one octet at a time, the slow and obvious way.

    A rule breaks at the first octet that breaks it; on a tie a bare line
    ending wins over a long line, which wins over the size.

    @return: as L{readChunks}, for the whole C{wire} at once.
    """
    kept, problem, size, position = bytearray(), None, 0, 0
    while (lineEnd := wire.find(b"\r\n", position)) >= 0:
        line, position = wire[position:lineEnd], lineEnd + 2
        if line == b".":
            return bytes(kept), problem, size, wire[position:]
        if line.startswith(b"."):
            line = line[1:]
        for index, octet in enumerate(line + b"\r\n"):
            inText = index < len(line)
            if problem is None and inText and octet in b"\r\n":
                problem = BARE_LINE_ENDING
            elif problem is None and inText and index == maxLineLength - 2:
                problem = LINE_TOO_LONG
            elif problem is None and size == maxSize:
                problem = TOO_BIG
            if problem is None:
                kept.append(octet)
            size += 1
    return bytes(kept), problem, size, None


def stuff(body: bytes) -> bytes:
    """
    Dot-stuff C{body} as a client does, and add the terminator.
    """
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def everySplit(wire: bytes) -> list[list[bytes]]:
    """
    Return every way to cut C{wire} into one, two or three chunks.
    """
    ways = [[wire]]
    for first in range(len(wire) + 1):
        for second in range(first, len(wire) + 1):
            ways.append(splitAt(wire, [first, second]))
    return ways


@pytest.mark.parametrize(
    "wire, content, leftover",
    [
        (b".\r\n", b"", b""),
        (b".\r\n" + NEXT, b"", NEXT),
        (b"x\r\n.\r\n", b"x\r\n", b""),
        (b"x\r\n.\r\n" + NEXT, b"x\r\n", NEXT),
        (b"\r\n.\r\nQUIT\r\n", b"\r\n", b"QUIT\r\n"),
        (b"x\r\n.\r\n.\r\n", b"x\r\n", b".\r\n"),
    ],
)
def test_endOfData(wire: bytes, content: bytes, leftover: bytes) -> None:
    """
    CRLF "." CRLF, or "." CRLF as the first line, ends the data, and the
    bytes after it come back untouched (SMTP-1, SMTP-2).
    """
    for chunks in everySplit(wire):
        assert readChunks(chunks) == (content, None, len(content), leftover)


SMUGGLED = [
    (b"x\n.\n", b"x"),
    (b"x\n.\r\n", b"x"),
    (b"x\r\n.\n", b"x\r\n"),
    (b"x\r.\r", b"x"),
    (b"x\r.\n", b"x"),
    (b"x\r.\r\n", b"x"),
    (b"x\r\n.\r", b"x\r\n"),
    (b"x\r\n.\rx", b"x\r\n"),
    (b"\n.\r\n", b""),
    (b".\n", b""),
    (b".\r", b""),
    (b"\r.\r\n", b""),
]


@pytest.mark.parametrize("smuggled, before", SMUGGLED)
def test_smuggledEndsDoNotEndData(smuggled: bytes, before: bytes) -> None:
    """
    A "." line reached by or ended with a bare CR or LF never ends the
    data: the commands after it stay in the message, which has a bare line
    ending, and only the real terminator ends it (SMTP-1, SEC-1).
    """
    wire = smuggled + NEXT + b"\r\n.\r\n" + NEXT
    for chunks in [[wire], octets(wire), splitAt(wire, [3])]:
        content, problem, _, leftover = readChunks(chunks)

        assert (content, problem, leftover) == (before, BARE_LINE_ENDING, NEXT)


@pytest.mark.parametrize("smuggled, before", SMUGGLED)
def test_smuggledEndsWaitForMore(smuggled: bytes, before: bytes) -> None:
    """
    Fed a smuggled end of data and the commands after it in one piece, the
    reader still waits for the real terminator (SMTP-1, SEC-1).
    """
    sink = RecordingSink()
    reader = DataReader(sink, 10**6, 1000)

    assert reader.feed(smuggled + NEXT) is None
    assert reader.problem == BARE_LINE_ENDING
    assert sink.content == before


@pytest.mark.parametrize(
    "wire, content",
    [
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...x\r\n.\r\n", b"..x\r\n"),
        (b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n"),
        (b"a.b\r\n x.\r\n.\r\n", b"a.b\r\n x.\r\n"),
        (
            b"Subject: x\r\n\r\nbody\r\n..dot\r\n.\r\n",
            b"Subject: x\r\n\r\nbody\r\n.dot\r\n",
        ),
    ],
)
def test_dotUnstuffing(wire: bytes, content: bytes) -> None:
    """
    A line starting with a dot loses that dot, wherever the chunks are cut,
    including right after the CRLF before it (SMTP-2).
    """
    for chunks in everySplit(wire):
        assert readChunks(chunks) == (content, None, len(content), b"")


@pytest.mark.parametrize(
    "line, problem",
    [
        (b"y" * 998, None),
        (b"." + b"y" * 998, None),
        (b"y" * 999, LINE_TOO_LONG),
    ],
)
def test_lineLimit(line: bytes, problem: str | None) -> None:
    """
    A line of 1000 octets with its CRLF is accepted, one of 1001 is not,
    counted after unstuffing and whether it comes whole or octet by octet
    (SMTP-6, SMTP-7).
    """
    wire = b"a\r\n" + line + b"\r\nb\r\n.\r\n"
    for chunks in [[wire], octets(wire)]:
        assert readChunks(chunks)[1] == problem


def test_longLineAnywhere() -> None:
    """
    A line one octet over the limit is found at every offset within a
    chunk, not only where it starts a chunk (SMTP-7).
    """
    for shift in range(1100):
        prefix = b"a\r\n" + b"b" * shift + b"\r\n"
        wire = prefix + b"y" * 999 + b"\r\n.\r\n"

        problem = readChunks([wire])[1]

        assert problem == LINE_TOO_LONG, shift


@pytest.mark.parametrize("chunkSize", [1, 7, 16384, 10**6])
def test_longLineStaysInData(chunkSize: int) -> None:
    """
    After a 20000-octet line, lines that look like commands are content: the
    reader returns only at the real terminator, with the line too long
    (SMTP-7).
    """
    wire = b"z" * 20000 + b"\r\nRSET\r\nMAIL FROM:<x@y>\r\n.\r\n" + NEXT
    chunks = splitAt(wire, list(range(chunkSize, len(wire), chunkSize)))

    content, problem, size, leftover = readChunks(chunks)

    assert (content, problem, leftover) == (b"z" * 998, LINE_TOO_LONG, NEXT)
    assert size == len(wire) - len(NEXT) - 3


@pytest.mark.parametrize(
    "maxSize, problem, content",
    [
        (24, None, b"abcdefghij\r\nklmnopqrst\r\n"),
        (23, TOO_BIG, b"abcdefghij\r\nklmnopqrst\r"),
        (5, TOO_BIG, b"abcde"),
    ],
)
def test_sizeLimit(maxSize: int, problem: str | None, content: bytes) -> None:
    """
    A message of exactly the size limit is accepted; a larger one is read
    to its end and flagged, with the size counted in full (EXT-8).
    """
    wire = b"abcdefghij\r\n.klmnopqrst\r\n.\r\n" + NEXT

    for chunks in [[wire], octets(wire)]:
        assert readChunks(chunks, maxSize) == (content, problem, 24, NEXT)


def test_firstProblemWins() -> None:
    """
    When a message breaks several rules, the rule broken first in the
    message is the one reported (SEC-1, SMTP-7, EXT-8).
    """
    bareFirst = b"a\nb" + b"c" * 20 + b"\r\n.\r\n"
    longFirst = b"c" * 20 + b"a\nb\r\n.\r\n"

    assert readChunks([bareFirst], 1000, 10)[1] == BARE_LINE_ENDING
    assert readChunks([longFirst], 1000, 10)[1] == LINE_TOO_LONG
    assert readChunks([longFirst], 5, 10)[1] == TOO_BIG


def test_boundedMemory() -> None:
    """
    50 MB without a line ending keep the reader's memory within a couple of
    chunks, and the terminator still ends the data (SMTP-7).
    """
    chunk = b"w" * 65536
    reader = DataReader(lambda content: None, 10**6, 1000)

    tracemalloc.start()
    try:
        for _ in range(800):
            assert reader.feed(chunk) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 4 * len(chunk)
    assert reader.feed(b"\r\n.\r\n") == b""
    assert (reader.problem, reader.size) == (LINE_TOO_LONG, 800 * 65536 + 2)


def test_feedAfterEnd() -> None:
    """
    A reader that has seen the end of data refuses more bytes, as those
    belong to the command stream.
    """
    reader = DataReader(lambda content: None, 100, 100)
    reader.feed(b".\r\n")

    with pytest.raises(RuntimeError):
        reader.feed(b"QUIT\r\n")


@pytest.mark.parametrize("maxSize, maxLineLength", [(100, 2), (-1, 100)])
def test_impossibleLimits(maxSize: int, maxLineLength: int) -> None:
    """
    Limits that leave no room for a line of text or for an empty message
    are refused.
    """
    with pytest.raises(ValueError):
        DataReader(lambda content: None, maxSize, maxLineLength)


LINES = st.one_of(
    st.binary(max_size=40).map(oneLine),
    st.sampled_from([b"", b".", b"..", b".\x00", b"\xff.\xfe"]),
    st.binary(max_size=20).map(lambda text: b"." + oneLine(text)),
    st.integers(980, 998).map(lambda length: b"\xe9" * length),
)


@given(
    lines=st.lists(LINES, max_size=30),
    after=st.binary(max_size=30),
    data=st.data(),
)
def test_clientMessagesRoundTrip(
    lines: list[bytes], after: bytes, data: st.DataObject
) -> None:
    """
    Any message of CRLF lines, dot-stuffed by a client and cut anywhere,
    reaches the sink unchanged, and the bytes after the terminator come
    back as they were (SMTP-1, SMTP-2, SMTP-6).
    """
    body = b"".join(line + b"\r\n" for line in lines)
    wire = stuff(body) + after
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))

    assert readChunks(splitAt(wire, cuts)) == (body, None, len(body), after)


PIECES = st.sampled_from(
    [b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"a", b"\xff", b"q" * 9]
)


@given(
    body=st.lists(PIECES, max_size=40).map(b"".join),
    after=st.binary(max_size=10),
    maxSize=st.integers(0, 120),
    maxLineLength=st.integers(3, 20),
    data=st.data(),
)
def test_anyBytesAgreeWithReference(
    body: bytes,
    after: bytes,
    maxSize: int,
    maxLineLength: int,
    data: st.DataObject,
) -> None:
    """
    For any bytes, bare line endings included, the content, problem, size
    and leftover do not depend on the chunking and match a line-by-line
    reading (SMTP-1, SMTP-7, SEC-1, EXT-8).
    """
    wire = body + b"\r\n.\r\n" + after
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    expected = referenceRead(wire, maxSize, maxLineLength)

    chunks = splitAt(wire, cuts)
    assert readChunks([wire], maxSize, maxLineLength) == expected
    assert readChunks(chunks, maxSize, maxLineLength) == expected
