# -*- test-case-name: tests.test_data -*-
"""
The byte-level reader of an SMTP DATA section.

After its 354 reply the server hands every byte it receives to a
L{DataReader} until the reader reports the end of data.  The reader removes
the dot-stuffing (RFC 5321 section 4.5.2) and passes the message on as it
will be stored, checking three rules on the way: lines end in CRLF only, a
line fits in the line limit and the message fits in the size limit.

A broken rule never ends the data early.  Data ends only at CRLF "." CRLF,
so neither a bare line ending nor an over-long line can make the server
take the rest of a message body for commands (the SMTP smuggling attacks).
The reader keeps counting to the true end, and the caller refuses the
message only then.

Chunks are handled whole with the C loops of C{bytes} methods.  Across a
chunk boundary the reader keeps at most four bytes, the start of what may
be the terminator, so its memory does not depend on the input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import repeat

BARE_LINE_ENDING = "bare-line-ending"
LINE_TOO_LONG = "line-too-long"
TOO_BIG = "too-big"

_CRLF = b"\r\n"
_STUFFED = b"\r\n."
_TERMINATOR = b"\r\n.\r\n"

# The beginnings of the terminator that a chunk may end with, longest
# first; such a tail waits for the next chunk to decide what it is.
_PARTIAL_TERMINATORS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")

_BARE_LINE_ENDING = re.compile(rb"\r(?!\n)|(?<!\r)\n")

# When two rules break at the same octet, the first of these is reported.
_RANK = {BARE_LINE_ENDING: 0, LINE_TOO_LONG: 1, TOO_BIG: 2}


class DataReader:
    """
    Read the bytes of a DATA section up to its terminating "." line.

    @ivar size: the octets of message content seen so far, after removing
        the dot-stuffing; it keeps counting after a problem is found.
    @ivar problem: C{None}, or the first rule the message breaks:
        L{BARE_LINE_ENDING}, L{LINE_TOO_LONG} or L{TOO_BIG}.  A rule breaks
        at one octet of the content; when several rules break in one
        message, the one breaking earliest is kept.
    """

    def __init__(
        self, sink: Callable[[bytes], None], maxSize: int, maxLineLength: int
    ) -> None:
        """
        @param sink: called with successive pieces of the message content,
            dot-unstuffed, each line ending in CRLF.  Once a problem is
            found it is called no more; it has by then received the content
            up to the octet that broke the rule.
        @param maxSize: the largest number of content octets accepted.
        @param maxLineLength: the longest line accepted, counting its CRLF
            as RFC 5321 section 4.5.3.1.6 does; 1000 accepts the 998 text
            octets that RFC 5322 section 2.1.1 allows.
        @raise ValueError: when C{maxLineLength} leaves no room for one
            octet of text, or C{maxSize} is negative.
        """
        if maxLineLength < len(_CRLF) + 1 or maxSize < 0:
            raise ValueError("the limits must admit some content")

        self.size = 0
        self.problem: str | None = None
        self._sink = sink
        self._maxSize = maxSize
        self._maxLine = maxLineLength - len(_CRLF)

        # The message starts at the beginning of a line: a CRLF that is not
        # content stands before it, so that "." CRLF there ends the data
        # and a leading dot is removed like any other.
        self._carry = _CRLF
        self._started = False
        self._lineLength = 0
        self._finished = False

    def feed(self, data: bytes) -> bytes | None:
        """
        Read the next bytes received from the client.

        @param data: the bytes, split anywhere.
        @return: C{None} while the data has not ended; once the terminator
            has been read, the bytes of C{data} that follow it (C{b""} if
            none), which are the client's next commands.
        @raise RuntimeError: when called again after the end of data.
        """
        if self._finished:
            raise RuntimeError("DATA has already ended")

        # A chunk with no line starting with a dot holds neither the
        # terminator nor any stuffing: in most mail one search settles both.
        buffer = self._carry + data if self._carry else data
        stuffed = buffer.find(_STUFFED)
        end = buffer.find(_TERMINATOR, stuffed) if stuffed >= 0 else -1
        if end >= 0:
            self._read(buffer[: end + len(_CRLF)], True)
            self._finished = True
            return buffer[end + len(_TERMINATOR) :]

        held = _partialTerminatorLength(buffer)
        self._carry = buffer[len(buffer) - held :]
        self._read(buffer[: len(buffer) - held], stuffed >= 0)
        return None

    def _read(self, wire: bytes, stuffed: bool) -> None:
        """
        Take in a stretch of the wire that holds no part of the terminator.

        @param wire: the stretch; it never ends in a CR that a LF may
            follow, nor in a CRLF that a dot may follow.
        @param stuffed: whether a line of it may start with a dot.
        """
        content = _CRLF.join(wire.split(_STUFFED)) if stuffed else wire
        if not self._started and wire:
            content = content[len(_CRLF) :]
            self._started = True

        if self.problem is None:
            self._check(content)
        self.size += len(content)

    def _check(self, content: bytes) -> None:
        """
        Pass content on, or find the first rule it breaks.

        @param content: the next dot-unstuffed content.
        """
        lastBreak = content.rfind(_CRLF)
        if lastBreak < 0:
            endLength = self._lineLength + len(content)
        else:
            endLength = len(content) - lastBreak - len(_CRLF)

        found = self._firstProblem(content)
        if found is None:
            self._lineLength = endLength
            if content:
                self._sink(content)
            return

        offset, self.problem = found
        if offset > 0:
            self._sink(content[:offset])

    def _firstProblem(self, content: bytes) -> tuple[int, str] | None:
        """
        Find the rule that the content breaks first.

        @param content: the next dot-unstuffed content.
        @return: C{None} if it breaks no rule, or the offset in C{content}
            of the octet that breaks one and the rule's name.
        """
        found = []
        bare = _bareLineEnding(content)
        if bare >= 0:
            found.append((bare, BARE_LINE_ENDING))

        overLong = self._overLongLine(content)
        if overLong >= 0:
            found.append((overLong, LINE_TOO_LONG))

        if self.size + len(content) > self._maxSize:
            found.append((self._maxSize - self.size, TOO_BIG))
        return min(found, key=_rankOrder, default=None)

    def _overLongLine(self, content: bytes) -> int:
        """
        Find the first octet past the line limit.

        @param content: the next dot-unstuffed content.
        @return: the octet's offset in C{content}, or -1.
        """
        if self._lineLength + len(content) <= self._maxLine:
            return -1
        if not self._mayHoldLongLine(content):
            return -1

        lengths = list(map(len, content.split(_CRLF)))
        lengths[0] += self._lineLength
        if max(lengths) <= self._maxLine:
            return -1

        # At most once a message, so a loop in Python costs nothing.
        index = next(i for i, n in enumerate(lengths) if n > self._maxLine)
        start = sum(lengths[:index]) + len(_CRLF) * index - self._lineLength
        return start + self._maxLine

    def _mayHoldLongLine(self, content: bytes) -> bool:
        """
        Tell quickly whether content may hold a line over the limit.

        A bare LF can hide a long line that follows it from this test, but
        then the bare LF is the first problem anyway.

        @param content: the next dot-unstuffed content.
        @return: C{False} if it holds none, or none that breaks the limit
            before a bare line ending.
        """
        firstBreak = content.find(_CRLF)
        if firstBreak < 0 or self._lineLength + firstBreak > self._maxLine:
            return True

        # Cut the rest into blocks a little over half the limit: a line over
        # the limit spans a whole block, which then holds no LF.
        block = (self._maxLine + 2) // 2
        starts = range(firstBreak, len(content) - block + 1, block)
        ends = range(firstBreak + block, len(content) + 1, block)
        return -1 in map(content.find, repeat(b"\n"), starts, ends)


def _partialTerminatorLength(buffer: bytes) -> int:
    """
    Measure the tail of a buffer that may be the start of the terminator.

    @param buffer: bytes read so far and not yet taken in.
    @return: the length of the longest such tail, 0 to 4.
    """
    for partial in _PARTIAL_TERMINATORS:
        if buffer.endswith(partial):
            return len(partial)
    return 0


def _bareLineEnding(content: bytes) -> int:
    """
    Find the first CR or LF that is not part of a CRLF.

    @param content: dot-unstuffed content, which does not end in a CR that
        is followed by a LF.
    @return: the offset of that octet, or -1.
    """
    pairs = content.count(_CRLF)
    if content.count(b"\r") == pairs == content.count(b"\n"):
        return -1

    match = _BARE_LINE_ENDING.search(content)
    return -1 if match is None else match.start()


def _rankOrder(found: tuple[int, str]) -> tuple[int, int]:
    offset, problem = found
    return (offset, _RANK[problem])
