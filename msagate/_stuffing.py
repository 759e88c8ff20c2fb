# -*- test-case-name: tests.test_stuffing -*-
"""
The byte-level writer of an outgoing SMTP DATA section.

A L{DotStuffer} turns a stored message (CRLF line endings) into what goes
on the wire after the 354 reply: every line that starts with a dot gets a
second one (RFC 5321 section 4.5.2), and the data ends with CRLF "." CRLF.

The message is read in chunks, and a line may start anywhere, at a chunk
boundary too.  A dot that starts a line right after a boundary must be
stuffed like any other: one that is not ends the data early at the next
hop, which then reads the rest of the message as commands (SMTP-3, SEC-2).
So the stuffer remembers across chunks whether the next byte starts a line.

As a defence, a dot after any LF is stuffed, also after a LF that no CR
precedes: a receiver that takes a bare LF for a line ending then still sees
no end of data in the middle of a message.
"""

from __future__ import annotations

_LINE_DOT = b"\n."
_STUFFED_LINE_DOT = b"\n.."
_CRLF = b"\r\n"
_DOT = b"."


class DotStuffer:
    """
    Stuff the dots of one message's data, chunk by chunk.

    Chunks are handled whole with C{bytes.replace}; all other bytes pass
    through unchanged, CRLF included.
    """

    def __init__(self) -> None:
        # The message starts at the beginning of a line.
        self._lineStart = True
        self._tail = b""

    def stuff(self, chunk: bytes) -> bytes:
        """
        Stuff the next chunk of the message.

        @param chunk: the next bytes of the message, split anywhere.
        @return: the chunk as it goes on the wire.
        """
        if not chunk:
            return b""
        wire = chunk.replace(_LINE_DOT, _STUFFED_LINE_DOT)
        if self._lineStart and chunk.startswith(_DOT):
            wire = _DOT + wire

        self._lineStart = chunk.endswith(b"\n")
        self._tail = (self._tail + chunk[-2:])[-2:]
        return wire

    def end(self) -> bytes:
        """
        @return: the end-of-data marker.  A last line without its CRLF gets
            one first (RFC 5321 section 4.1.1.4), so that the "." stands on
            a line of its own.
        """
        if self._tail in (b"", _CRLF):
            return _DOT + _CRLF
        return _CRLF + _DOT + _CRLF
