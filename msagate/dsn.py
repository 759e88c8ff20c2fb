# -*- test-case-name: tests.test_dsn -*-
"""
Delivery status notifications: the report that tells a message's sender
that some of its recipients will not get it, or not yet.

The relay manager queues the report returned by L{buildReport} like any
other message, with the null reverse path so that a report that cannot be
delivered is never reported on in turn (RFC 5321 section 4.5.5).  For the
same reason a message that itself has the null sender is never reported
on (RFC 5321 section 6.1, RFC 3464 section 2, requirement SMTP-36).

The report is a C{multipart/report} (RFC 6522) of three parts:

  1. a C{text/plain} explanation for the sender;
  2. the C{message/delivery-status} fields of RFC 3464, for programs;
  3. the C{text/rfc822-headers} of the original message, so that the
     sender can tell which message it was without getting its body back.

Text that comes from elsewhere (a next hop's reply, its name) is cut to
printable US-ASCII on a single line before it is written, so that no
reply can add a field or a part to the report.
"""

from __future__ import annotations

import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from msagate.address import isDomain, parseMailbox
from msagate.envelope import Envelope
from msagate.message import formatDate, makeMessageID

FAILED = "failed"
DELAYED = "delayed"

SUBJECTS = {
    FAILED: "Undelivered Mail Returned to Sender",
    DELAYED: "Delayed Mail (still being retried)",
}

# The longest diagnostic and remote host name kept, in characters.
MAX_DIAGNOSTIC = 512
MAX_REMOTE_MTA = 255

# How much of the original header section is returned, in octets.
MAX_RETURNED_HEADER = 65536

# RFC 5322 section 2.1.1: a line holds at most 998 octets besides its
# CRLF, and should hold at most 78 characters.
MAX_LINE = 998
FOLD_WIDTH = 78
TEXT_WIDTH = 72

_CRLF = b"\r\n"
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_QUEUE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")

# RFC 3463 in a few words, for the sender's part of a report about a
# failure that happened here rather than at the next hop.
_STATUS_TEXTS = {
    "4.4.1": "the recipient's mail server did not answer",
    "4.4.2": "the connection to the recipient's mail server was lost",
    "4.4.3": "the recipient's mail server could not be looked up",
    "4.4.4": "no mail server could be found for the recipient",
    "4.4.7": "the message stayed in the queue too long",
    "5.1.2": "the recipient's domain does not exist",
    "5.1.3": "the recipient's address is malformed",
    "5.1.10": "the recipient's domain accepts no mail",
    "5.4.7": "the message stayed in the queue too long",
}
_CLASS_TEXTS = {
    "4": "a temporary problem",
    "5": "a permanent problem",
}


@dataclass(frozen=True)
class RecipientReport:
    """
    What became of one recipient (RFC 3464 section 2.3).

    @ivar recipient: the forward path, without angle brackets.
    @ivar action: L{FAILED} or L{DELAYED} (RFC 3464 section 2.3.3).
    @ivar status: the enhanced status code (RFC 3463) such as C{"5.1.1"},
        C{"4.4.1"} or C{"5.4.7"} for a message that stayed too long.
    @ivar diagnostic: the next hop's reply such as C{"550 5.1.1 no such
        user"}, or C{""} when the failure happened here.
    @ivar remoteMTA: the next hop's host name, or C{""} when none was
        reached.
    @ivar reason: what msagate found, in its own words, when that says
        more than the diagnostic (a connection refused, a certificate
        that does not match, a message that stayed too long), or C{""}.
    @ivar lastAttempt: when delivery was last tried, seconds since the
        epoch, or L{None}.
    @ivar willRetryUntil: for a delay, when delivery will be given up,
        seconds since the epoch, or L{None}.
    """

    recipient: str
    action: str
    status: str
    diagnostic: str = ""
    remoteMTA: str = ""
    reason: str = ""
    lastAttempt: float | None = None
    willRetryUntil: float | None = None

    def __post_init__(self) -> None:
        """
        @raise ValueError: when the action or the status is not one a
            report can carry, the recipient is not a mailbox, or a failure
            names a time to retry until.
        """
        if self.action not in SUBJECTS:
            raise ValueError(f"unknown action {self.action!r}")
        if not _STATUS.match(self.status):
            raise ValueError(f"malformed status {self.status!r}")
        if self.action == FAILED and self.willRetryUntil is not None:
            raise ValueError("a failed recipient is not retried")
        parseMailbox(self.recipient)


def buildReport(
    envelope: Envelope,
    queueID: str,
    reports: Sequence[RecipientReport],
    headers: bytes,
    hostname: str,
    now: float,
) -> tuple[Envelope, bytes]:
    """
    Write a delivery status notification to a message's sender (RFC 3464,
    requirement SMTP-36).

    @param envelope: the envelope of the message reported on.
    @param queueID: that message's queue identifier.
    @param reports: what became of the recipients reported on, all with
        the same action.
    @param headers: the message's header section, lines ending in CRLF;
        it is read up to its first empty line, and only its first
        L{MAX_RETURNED_HEADER} octets are returned.
    @param hostname: this server's fully qualified name.
    @param now: seconds since the epoch.
    @return: the report's own envelope (from the null sender to
        C{envelope.sender}) and its data, every line ending in CRLF and
        none longer than L{MAX_LINE} octets besides it.
    @raise ValueError: when C{envelope} has the null sender, C{reports}
        is empty or mixes actions, or C{queueID} or C{hostname} is
        malformed.
    """
    _checkRequest(envelope, queueID, reports, hostname)
    returned = _returnedHeader(headers)
    # Only the returned header may hold 8-bit octets: the report's own
    # text is ASCII.
    eightBit = not returned.isascii()
    parts = [
        _humanPart(envelope, queueID, reports, hostname, now),
        _statusPart(envelope, queueID, reports, hostname),
        _headerPart(returned, eightBit),
    ]

    boundary = _boundary(parts)
    head = _topHeader(envelope.sender, reports[0].action, hostname, now)
    head += _mimeFields(boundary, eightBit)
    data = _lines(head) + _multipartBody(parts, boundary)
    report = Envelope(
        sender="",
        recipients=(envelope.sender,),
        user="",
        received=now,
        body="8BITMIME" if eightBit else "7BIT",
        size=len(data),
    )
    return report, data


def _checkRequest(
    envelope: Envelope,
    queueID: str,
    reports: Sequence[RecipientReport],
    hostname: str,
) -> None:
    """
    @raise ValueError: when no report may or can be written.
    """
    # RFC 5321 section 6.1: a notification about a message with the null
    # sender could loop between two servers for ever.
    if not envelope.sender:
        raise ValueError("no report about a message from the null sender")
    parseMailbox(envelope.sender)

    if not reports:
        raise ValueError("nothing to report")
    if len({report.action for report in reports}) > 1:
        raise ValueError("a report is about failures or delays, not both")
    if not _QUEUE_ID.match(queueID):
        raise ValueError(f"malformed queue ID {queueID!r}")
    if not isDomain(hostname):
        raise ValueError(f"malformed host name {hostname!r}")


def _topHeader(
    sender: str, action: str, hostname: str, now: float
) -> list[str]:
    """
    @return: the report's header fields but those about MIME.
    """
    return [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        f"Subject: {SUBJECTS[action]}",
        f"Date: {formatDate(now)}",
        f"Message-ID: {makeMessageID(hostname, now)}",
        # RFC 3834 section 5: tells responders not to answer the report.
        "Auto-Submitted: auto-replied",
    ]


def _mimeFields(boundary: str, eightBit: bool) -> list[str]:
    """
    @return: the MIME fields of the report (RFC 6522 section 3), the empty
        line that ends the header section, and the MIME preamble.
    """
    fields = [
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
    ]
    # RFC 2045 section 6.4: a multipart entity's encoding says whether any
    # of its parts holds 8-bit octets.
    if eightBit:
        fields.append("Content-Transfer-Encoding: 8bit")
    preamble = "This is a delivery status notification in MIME format."
    return [*fields, "", preamble]


def _humanPart(
    envelope: Envelope,
    queueID: str,
    reports: Sequence[RecipientReport],
    hostname: str,
    now: float,
) -> bytes:
    """
    @return: the first part: an explanation for the sender.
    """
    received = formatDate(envelope.received)
    paragraphs = [
        _wrapped(f"This is the mail system at {hostname}."),
        _wrapped(_summary(reports[0].action)),
        *(_recipientText(report, now) for report in reports),
        _wrapped(
            f"The message was received on {received}, queue ID {queueID}."
            "  Its header section follows this report."
        ),
    ]

    text = "\n\n".join(paragraphs)
    head = ["Content-Type: text/plain; charset=us-ascii"]
    head.append("Content-Description: Notification")
    return _lines(head) + _CRLF + _lines(text.split("\n"))


def _summary(action: str) -> str:
    """
    @return: what the report says has happened, in one paragraph.
    """
    if action == FAILED:
        return (
            "Your message could not be delivered to the recipients below,"
            " and delivery to them has been given up.  Each recipient is"
            " followed by the reason."
        )
    return (
        "Your message has not been delivered yet to the recipients below."
        "  Nothing needs to be done: delivery is being tried again, and"
        " you will be told if it is given up."
    )


def _recipientText(report: RecipientReport, now: float) -> str:
    """
    @return: one recipient's paragraph of the explanation, with how long
        delivery will still be tried, when it will.
    """
    reason = f"<{report.recipient}>: {_reasonText(report)}"
    text = _wrapped(reason, rest="  ")
    if report.willRetryUntil is None:
        return text

    left = _duration(report.willRetryUntil - now)
    until = formatDate(report.willRetryUntil)
    retry = f"Delivery will be tried for {left} more, until {until}."
    return text + "\n" + _wrapped(retry, "  ", "  ")


def _reasonText(report: RecipientReport) -> str:
    """
    @return: why a recipient has not received the message, as a sentence.
    """
    diagnostic = _printable(report.diagnostic, MAX_DIAGNOSTIC)
    remote = _printable(report.remoteMTA, MAX_REMOTE_MTA)
    ownWords = _printable(report.reason, MAX_DIAGNOSTIC)
    if ownWords:
        where = f" (at {remote})" if remote and not diagnostic else ""
        return f"{ownWords}{where} (status {report.status})."
    if diagnostic:
        server = f"the mail server {remote}" if remote else "the next server"
        return f"{server} answered: {diagnostic}"

    reason = _STATUS_TEXTS.get(report.status)
    if reason is None:
        reason = _CLASS_TEXTS.get(report.status[0], "an unknown problem")
    return f"{reason} (status {report.status})."


def _duration(seconds: float) -> str:
    """
    @return: a rounded duration in words, such as C{"4 days and 1 hour"}.
    """
    hours = round(seconds / 3600)
    if hours < 1:
        return "less than an hour"
    days, hours = divmod(hours, 24)
    words = [_count(days, "day"), _count(hours, "hour")]
    return " and ".join(word for word in words if word)


def _count(number: int, unit: str) -> str:
    """
    @return: C{"1 day"}, C{"3 days"}, or C{""} for none.
    """
    if number == 0:
        return ""
    return f"{number} {unit}" if number == 1 else f"{number} {unit}s"


def _wrapped(paragraph: str, first: str = "", rest: str = "") -> str:
    """
    @param first: what the first line starts with.
    @param rest: what the other lines start with.
    @return: C{paragraph} broken into lines of L{TEXT_WIDTH} characters.
    """
    return textwrap.fill(
        paragraph,
        TEXT_WIDTH,
        initial_indent=first,
        subsequent_indent=rest,
        break_on_hyphens=False,
    )


def _statusPart(
    envelope: Envelope,
    queueID: str,
    reports: Sequence[RecipientReport],
    hostname: str,
) -> bytes:
    """
    @return: the second part: the delivery status fields (RFC 3464
        section 2), the per-message group then one group per recipient,
        groups separated by an empty line.
    """
    # RFC 3464 section 2.2.2 would carry an Original-Envelope-Id here, but
    # only when the submitter gave one (ENVID), which msagate does not
    # offer; the queue ID is an extension field instead.
    groups = [
        [
            _field("Reporting-MTA", f"dns; {hostname}"),
            _field("X-Msagate-Queue-ID", queueID),
            _field("Arrival-Date", formatDate(envelope.received)),
        ]
    ]
    groups.extend(_recipientFields(report) for report in reports)

    body = b"\r\n".join(b"".join(group) for group in groups)
    return _lines(["Content-Type: message/delivery-status"]) + _CRLF + body


def _recipientFields(report: RecipientReport) -> list[bytes]:
    """
    @return: the fields of one recipient (RFC 3464 section 2.3).
    """
    fields = [
        _field("Final-Recipient", f"rfc822; {report.recipient}"),
        _field("Action", report.action),
        _field("Status", report.status),
    ]
    remote = _printable(report.remoteMTA, MAX_REMOTE_MTA)
    if remote:
        fields.append(_field("Remote-MTA", f"dns; {remote}"))
    diagnostic = _printable(report.diagnostic, MAX_DIAGNOSTIC)
    if diagnostic:
        fields.append(_field("Diagnostic-Code", f"smtp; {diagnostic}"))

    dates = [
        ("Last-Attempt-Date", report.lastAttempt),
        ("Will-Retry-Until", report.willRetryUntil),
    ]
    for name, when in dates:
        if when is not None:
            fields.append(_field(name, formatDate(when)))
    return fields


def _returnedHeader(headers: bytes) -> bytes:
    """
    @return: the original header section as it is returned: cut at its
        first empty line and after L{MAX_RETURNED_HEADER} octets, each
        line cut to L{MAX_LINE} octets and ending in CRLF.
    """
    kept: list[bytes] = []
    size = 0
    for line in _LINE_BREAK.split(headers):
        size += min(len(line), MAX_LINE) + len(_CRLF)
        if not line or size > MAX_RETURNED_HEADER:
            break
        kept.append(line[:MAX_LINE] + _CRLF)
    return b"".join(kept)


def _headerPart(returned: bytes, eightBit: bool) -> bytes:
    """
    @param returned: the header section to return.
    @param eightBit: whether it holds 8-bit octets.
    @return: the third part, the original message's header section.
    """
    head = ["Content-Type: text/rfc822-headers"]
    if eightBit:
        head.append("Content-Transfer-Encoding: 8bit")
    head.append("Content-Description: Undelivered message header")
    return _lines(head) + _CRLF + returned


def _printable(text: str, limit: int) -> str:
    """
    Make outside text safe to write on one line.

    @return: C{text} with every control character (CR and LF included)
        turned into a space, every other non-ASCII character into C{?},
        runs of spaces into one, and cut to C{limit} characters.
    """
    cleaned = "".join(
        char if " " <= char <= "~" else "?" if char > "\x7f" else " "
        for char in text
    )
    words = " ".join(cleaned.split())
    if len(words) > limit:
        words = words[: limit - 4].rstrip() + " ..."
    return words


def _field(name: str, value: str) -> bytes:
    """
    @return: a field, folded before spaces to fit in L{FOLD_WIDTH}
        characters where the words allow it; unfolding (RFC 5322 section
        2.2.3) gives the value back exactly.
    """
    words = f"{name}: {value}".split(" ")
    lines = [words[0]]
    for word in words[1:]:
        # A line of white space alone may not continue a field.
        fits = len(lines[-1]) + 1 + len(word) <= FOLD_WIDTH
        if fits or not lines[-1].strip():
            lines[-1] += " " + word
        else:
            lines.append(" " + word)
    return _lines(lines)


def _lines(lines: Sequence[str]) -> bytes:
    """
    @return: C{lines} in ASCII, each ending in CRLF.
    """
    return "".join(line + "\r\n" for line in lines).encode("ascii")


def _boundary(parts: Sequence[bytes]) -> str:
    """
    @return: a MIME boundary found in none of C{parts} (RFC 2046 section
        5.1.1).
    """
    while True:
        boundary = f"=_msagate_{secrets.token_hex(16)}"
        if not any(boundary.encode("ascii") in part for part in parts):
            return boundary


def _multipartBody(parts: Sequence[bytes], boundary: str) -> bytes:
    """
    @return: C{parts} between boundary lines; each part's last CRLF is
        kept, since the one before a boundary belongs to the boundary
        (RFC 2046 section 5.1.1).
    """
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    closing = f"\r\n--{boundary}--\r\n".encode("ascii")
    return delimiter + delimiter.join(parts) + closing
