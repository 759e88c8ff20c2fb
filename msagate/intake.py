# -*- test-case-name: tests.test_protocol -*-
"""
The path of one message's content from the DATA reader into the spool.

The header section is held in memory (up to a limit) until the empty line
that ends it; then it is checked against the user's permissions, completed
(Received, Message-ID, Date) and written, and the body streams to the spool
behind it.  A refusal found on the way is kept until the end of the data,
since SMTP can only answer then.
"""

from __future__ import annotations

from twisted.logger import Logger

from msagate import replies
from msagate.interfaces import IAccount, ISpoolWriter
from msagate.message import (
    HeaderSection,
    MessageError,
    TraceInfo,
    checkHeader,
    completeHeader,
    splitHeader,
)
from msagate.replies import Refused


class MessageIntake:
    """
    Receives the dot-unstuffed content of one message.

    @ivar refusal: the first reason found to refuse the message, or
        L{None}.
    """

    log = Logger()

    def __init__(
        self,
        writer: ISpoolWriter,
        account: IAccount,
        trace: TraceInfo,
        *,
        now: float,
        hostname: str,
        headerSize: int,
        maxReceived: int,
    ) -> None:
        self.refusal: Refused | None = None
        self._writer = writer
        self._account = account
        self._trace = trace
        self._now = now
        self._hostname = hostname
        self._headerSize = headerSize
        self._maxReceived = maxReceived
        self._header: bytearray | None = bytearray()
        self._searched = 0

    def receive(self, content: bytes) -> None:
        """
        Take the next piece of content, as the DATA reader passes it on.
        """
        if self.refusal is not None:
            return
        if self._header is None:
            self._write(content)
            return

        self._header += content
        end = splitHeader(self._header, self._searched)
        self._searched = len(self._header)
        if end is not None:
            self._headerComplete(end)
        elif len(self._header) > self._headerSize:
            self._refuse(replies.HEADER_TOO_LARGE, "header section too large")

    def finish(self) -> None:
        """
        The content has ended: a message without an empty line is all
        header (RFC 5322 section 3.5 allows a message without a body).
        """
        if self.refusal is None and self._header is not None:
            self._header += b"\r\n"
            self._headerComplete(len(self._header))

    def _headerComplete(self, end: int) -> None:
        data, self._header = bytes(self._header or b""), None
        section, body = data[: end - 2], data[end:]
        try:
            header = HeaderSection.parse(section)
            checkHeader(header, self._account, self._maxReceived)
        except MessageError as error:
            detail = str(error)
            self._refuse(replies.BAD_HEADER.fill(detail=detail), detail)
            return
        except Refused as refusal:
            self.refusal = refusal
            return

        completed = completeHeader(
            header, self._trace, now=self._now, messageIDHost=self._hostname
        )
        self._write(completed)
        self._write(body)

    def _write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
        except OSError as error:
            self.log.error(
                "cannot write to the spool: {error}", error=error.strerror
            )
            self._refuse(replies.LOCAL_ERROR, "spool write failed")

    def _refuse(self, reply: replies.Reply, reason: str) -> None:
        self.refusal = Refused(reply, reason)
