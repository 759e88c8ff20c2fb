# -*- test-case-name: tests.test_protocol -*-
"""
One message's content on its way from the DATA command into the spool.

The bytes after the 354 reply go through the L{DataReader} (end of data,
dot-unstuffing, line and size limits, bare CR and LF).  The header section
is held in memory, up to a limit, until the empty line that ends it; then
it is checked against the user's permissions, completed (Received,
Message-ID, Date) and written, and the body streams to the spool behind it.
A refusal found on the way waits for the end of the data, since SMTP can
only answer then, and nothing of a refused message is kept.
"""

from __future__ import annotations

from typing import NoReturn

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from msagate import replies
from msagate._data import BARE_LINE_ENDING, LINE_TOO_LONG, TOO_BIG, DataReader
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


class IncomingMessage:
    """
    The content of one message, from the 354 reply to the final reply.

    @ivar queueID: the queue ID the spool gave the message.
    @ivar size: the octets stored so far, header fields added included.
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
        maxSize: int,
        lineLength: int,
        headerSize: int,
        maxReceived: int,
    ) -> None:
        self.queueID = writer.queueID
        self.size = 0
        self.refusal: Refused | None = None
        self._writer = writer
        self._reader = DataReader(self._receive, maxSize, lineLength)
        self._account = account
        self._trace = trace
        self._now = now
        self._hostname = hostname
        self._lineLength = lineLength
        self._headerSize = headerSize
        self._maxReceived = maxReceived
        self._header: bytearray | None = bytearray()
        self._searched = 0

    def feed(self, data: bytes) -> bytes | None:
        """
        Take the next bytes from the client.

        @return: L{None} until the end of data; then the bytes that
            followed it, which are the client's next commands.
        """
        return self._reader.feed(data)

    def finish(self) -> defer.Deferred[None]:
        """
        The data has ended: refuse the message, or commit it to the spool.

        @return: a L{defer.Deferred} that fires once the message is
            durable, or fails with L{Refused}.
        """
        self._endHeader()
        refusal = self._readerRefusal() or self.refusal
        if refusal is not None:
            self._writer.abort()
            return defer.fail(refusal)
        return self._writer.commit().addErrback(self._commitFailed)

    def abort(self) -> None:
        """
        The session ended before the data did; nothing is kept.
        """
        self._writer.abort()

    def _receive(self, content: bytes) -> None:
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

    def _endHeader(self) -> None:
        # A message without an empty line is all header (RFC 5322 section
        # 3.5 allows a message without a body).
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
                "{queueID}: cannot write to the spool: {error}",
                queueID=self.queueID,
                error=error.strerror,
            )
            self._refuse(replies.LOCAL_ERROR, "spool write failed")
        else:
            self.size += len(data)

    def _refuse(self, reply: replies.Reply, reason: str) -> None:
        self.refusal = Refused(reply, reason)

    def _readerRefusal(self) -> Refused | None:
        problem = self._reader.problem
        if problem == BARE_LINE_ENDING:
            return Refused(replies.BARE_LINE_ENDING, "bare CR or LF in data")
        if problem == LINE_TOO_LONG:
            reply = replies.DATA_LINE_TOO_LONG.fill(limit=self._lineLength)
            return Refused(reply, "over-long line in data")
        if problem == TOO_BIG:
            size = self._reader.size
            return Refused(replies.SIZE_EXCEEDED, f"{size} octets of data")
        return None

    def _commitFailed(self, failure: Failure) -> NoReturn:
        self.log.failure(
            "{queueID}: cannot commit to the spool",
            failure,
            queueID=self.queueID,
        )
        raise Refused(replies.LOCAL_ERROR, "spool commit failed")
