"""
Tests for L{msagate.dsn}: delivery status notifications (RFC 3464 in an
RFC 6522 multipart/report), sent to the sender of a message that could
not be delivered (requirement SMTP-36).

Reports are read back with the standard library's email parser, as a mail
program would read them.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import re
from email.message import EmailMessage, Message
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msagate import dsn
from msagate.dsn import (
    FAILED,
    MAX_DIAGNOSTIC,
    MAX_LINE,
    MAX_RETURNED_HEADER,
    RecipientReport,
    buildReport,
)
from msagate.envelope import Envelope
from msagate.message import formatDate

# Thu, 03 Dec 2026 17:10:09 +0000
RECEIVED = 1796317809.0
NOW = RECEIVED + 3 * 3600
UNTIL = RECEIVED + 5 * 86400
HOSTNAME = "msa.example.org"
QUEUE_ID = "18A2B3C4D5E6F7A8B9"

ENVELOPE = Envelope(
    sender="alice@example.org",
    recipients=("bob@example.net", "carol@example.com"),
    user="alice",
    received=RECEIVED,
    client="[192.0.2.7]:50000",
)

HEADERS = (
    b"Received: from client.example ([192.0.2.7])\r\n"
    b"\tby msa.example.org (msagate) with ESMTPSA id 18A2B3C4D5E6F7A8B9;\r\n"
    b"\tThu, 03 Dec 2026 17:10:09 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>, carol@example.com\r\n"
    b"Subject: Lunch\r\n"
    b"\r\n"
)

BOUNCED = RecipientReport(
    recipient="bob@example.net",
    action="failed",
    status="5.1.1",
    diagnostic="550 5.1.1 no such user",
    remoteMTA="mx.example.net",
    lastAttempt=NOW - 60,
)

NO_DOMAIN = RecipientReport(
    recipient="carol@example.com", action="failed", status="5.1.2"
)

DELAYED = RecipientReport(
    recipient="bob@example.net",
    action="delayed",
    status="4.7.1",
    diagnostic="451 4.7.1 greylisted, try again later",
    remoteMTA="mx.example.net",
    lastAttempt=NOW - 60,
    willRetryUntil=UNTIL,
)


def build(
    *reports: RecipientReport,
    headers: bytes = HEADERS,
    envelope: Envelope = ENVELOPE,
) -> tuple[Envelope, bytes]:
    """
    Build a report about C{reports} of the standard message.
    """
    return buildReport(envelope, QUEUE_ID, reports, headers, HOSTNAME, NOW)


def parse(data: bytes) -> EmailMessage:
    """
    Read a report as a mail program would.
    """
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(data: bytes) -> list[Any]:
    """
    Return the three parts of a report.
    """
    return list(parse(data).iter_parts())


def statusGroups(data: bytes) -> list[Message]:
    """
    Return the field groups of a report's delivery-status part: the
    per-message group first, then one per recipient.
    """
    groups = parts(data)[1].get_payload()
    assert isinstance(groups, list)
    return groups


def lines(data: bytes) -> list[bytes]:
    """
    Split data at CRLF; the final CRLF ends the last line.
    """
    assert data.endswith(b"\r\n")
    return data[:-2].split(b"\r\n")


# The report's envelope (SMTP-36).


def test_reportEnvelope() -> None:
    """
    A report goes from the null sender to the sender of the message it is
    about, with a 7-bit body when nothing in it is 8-bit (SMTP-36).
    """
    envelope, data = build(BOUNCED)
    assert envelope.sender == ""
    assert envelope.recipients == ("alice@example.org",)
    assert (envelope.user, envelope.client) == ("", "")
    assert envelope.received == NOW
    assert envelope.body == "7BIT"
    assert envelope.size == len(data)


def test_refusedForNullSender() -> None:
    """
    No report is written about a message from the null sender, which is
    what reports themselves are: a report is never reported on
    (SMTP-36, RFC 5321 section 6.1).
    """
    bounce = Envelope("", ("alice@example.org",), "", RECEIVED)
    with pytest.raises(ValueError, match="null sender"):
        build(BOUNCED, envelope=bounce)


def test_refusedWithoutReports() -> None:
    """
    A report needs at least one recipient to report on.
    """
    with pytest.raises(ValueError, match="nothing to report"):
        build()


def test_refusedForMixedActions() -> None:
    """
    One report is about failures or about delays, never both.
    """
    with pytest.raises(ValueError, match="not both"):
        build(BOUNCED, DELAYED)


@pytest.mark.parametrize(
    "queueID, hostname",
    [
        ("", HOSTNAME),
        ("A B", HOSTNAME),
        (QUEUE_ID, "x_y"),
        (QUEUE_ID, "h\u00f4te.example"),
    ],
)
def test_refusedForBadNames(queueID: str, hostname: str) -> None:
    """
    A queue ID or host name that could not be written safely is refused.
    """
    with pytest.raises(ValueError):
        buildReport(ENVELOPE, queueID, [BOUNCED], HEADERS, hostname, NOW)


def test_refusedForBadSender() -> None:
    """
    A sender that is not a mailbox could not be written in the To field.
    """
    envelope = Envelope("alice@example.org\r\nBcc: x@y.z", (), "", RECEIVED)
    with pytest.raises(ValueError):
        build(BOUNCED, envelope=envelope)


# RecipientReport.


@pytest.mark.parametrize(
    "changes",
    [
        {"action": "relayed"},
        {"action": "Failed"},
        {"status": "550"},
        {"status": "3.1.1"},
        {"status": "5.1.1 "},
        {"willRetryUntil": UNTIL},
        {"recipient": "bob"},
        {"recipient": "bob@example.net\r\nX-Injected: yes"},
    ],
)
def test_recipientReportRefuses(changes: dict[str, Any]) -> None:
    """
    A recipient report with an action or status RFC 3464 does not know,
    a retry time on a failure, or a recipient that is no mailbox is
    refused.
    """
    fields = {
        "recipient": "bob@example.net",
        "action": "failed",
        "status": "5.1.1",
        **changes,
    }
    with pytest.raises(ValueError):
        RecipientReport(**fields)


def test_recipientReportExpiredAsTemporary() -> None:
    """
    A recipient that failed after temporary errors until the message
    expired may carry a 4.x.x status with the failed action.
    """
    report = RecipientReport("bob@example.net", "failed", "4.4.7")
    assert report.status == "4.4.7"


# The MIME structure (RFC 6522).


def test_headerFields() -> None:
    """
    The report's header names the mail system as its author and the
    sender as its recipient, says it was sent automatically (RFC 3834),
    and dates and identifies itself.
    """
    data = build(BOUNCED)[1]
    report = parse(data)
    assert (
        report["From"]
        == "Mail Delivery System <MAILER-DAEMON@msa.example.org>"
    )
    assert b"\r\nTo: <alice@example.org>\r\n" in data
    assert report["To"].addresses[0].addr_spec == "alice@example.org"
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert report["Date"] == formatDate(NOW)
    assert re.fullmatch(
        r"<[0-9a-f]{32}\.\d+@msa\.example\.org>", report["Message-ID"]
    )
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["MIME-Version"] == "1.0"


def test_multipartReport() -> None:
    """
    A report is a multipart/report of type delivery-status with three
    parts: text for people, the delivery status, the original header
    (RFC 6522 section 3).
    """
    report = parse(build(BOUNCED)[1])
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert not report.defects
    types = [part.get_content_type() for part in report.iter_parts()]
    assert types == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert parts(build(BOUNCED)[1])[0].get_content_charset() == "us-ascii"


def test_crlfOnly() -> None:
    """
    Every line of a report ends in CRLF: no bare CR or LF anywhere, even
    when the returned header and the diagnostic hold some.
    """
    reply = "550-5.1.1 no such user\r\n550 5.1.1 really\nnot\rhere"
    report = RecipientReport("bob@example.net", "failed", "5.1.1", reply)
    headers = b"From: a@example.org\nSubject: x\r\rTo: b@example.net\r\n\r\n"
    data = build(report, headers=headers)[1]
    assert data.endswith(b"\r\n")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_distinctBoundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The MIME boundary appears nowhere in the parts it separates: a
    boundary found in the content is drawn again.
    """
    draws = itertools.chain(["0" * 32], itertools.repeat("1" * 32))
    monkeypatch.setattr(dsn.secrets, "token_hex", lambda size: next(draws))
    headers = b"Subject: --=_msagate_" + b"0" * 32 + b"\r\n\r\n"
    report = parse(build(BOUNCED, headers=headers)[1])
    assert report.get_boundary() == "=_msagate_" + "1" * 32
    assert len(list(report.iter_parts())) == 3


# The delivery-status part (RFC 3464 section 2).


def test_perMessageFields() -> None:
    """
    The per-message fields name the reporting server, the queue ID and
    when the message arrived; no Original-Envelope-Id is invented.
    """
    fields = statusGroups(build(BOUNCED)[1])[0]
    assert fields["Reporting-MTA"] == "dns; msa.example.org"
    assert fields["X-Msagate-Queue-ID"] == QUEUE_ID
    assert fields["Arrival-Date"] == formatDate(RECEIVED)
    assert fields["Original-Envelope-Id"] is None


def test_failedRecipientFields() -> None:
    """
    A recipient the next hop refused gets its address, action, status,
    the next hop's name and reply, and the time of the last attempt, but
    no retry time (SMTP-36).
    """
    fields = statusGroups(build(BOUNCED)[1])[1]
    assert fields["Final-Recipient"] == "rfc822; bob@example.net"
    assert fields["Action"] == "failed"
    assert fields["Status"] == "5.1.1"
    assert fields["Remote-MTA"] == "dns; mx.example.net"
    assert fields["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert fields["Last-Attempt-Date"] == formatDate(NOW - 60)
    assert fields["Will-Retry-Until"] is None


def test_localFailureFields() -> None:
    """
    A failure that happened here (no next hop was reached) has neither a
    Remote-MTA nor a Diagnostic-Code.
    """
    fields = statusGroups(build(NO_DOMAIN)[1])[1]
    assert fields["Final-Recipient"] == "rfc822; carol@example.com"
    assert fields["Status"] == "5.1.2"
    for name in ("Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date"):
        assert fields[name] is None


def test_oneGroupPerRecipient() -> None:
    """
    Each recipient reported on gets its own group of fields, in order.
    """
    groups = statusGroups(build(BOUNCED, NO_DOMAIN)[1])
    recipients = [group["Final-Recipient"] for group in groups[1:]]
    assert recipients == [
        "rfc822; bob@example.net",
        "rfc822; carol@example.com",
    ]


def test_delayedReport() -> None:
    """
    A delay warning has its own subject, the delayed action and the time
    until which delivery will be retried (Will-Retry-Until).
    """
    data = build(DELAYED)[1]
    assert parse(data)["Subject"] == "Delayed Mail (still being retried)"
    fields = statusGroups(data)[1]
    assert fields["Action"] == "delayed"
    assert fields["Status"] == "4.7.1"
    assert fields["Will-Retry-Until"] == formatDate(UNTIL)


# Text from the next hop.


def test_diagnosticInjection() -> None:
    """
    A reply holding CR or LF cannot add a field, a group or a part to the
    report: line breaks become spaces.
    """
    reply = "550 5.1.1 no\r\nX-Injected: yes\r\n\r\nFinal-Recipient: x\n--"
    report = RecipientReport("bob@example.net", "failed", "5.1.1", reply)
    data = build(report)[1]
    groups = statusGroups(data)
    assert len(groups) == 2
    assert groups[1]["X-Injected"] is None
    assert groups[1]["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 no X-Injected: yes Final-Recipient: x --"
    )
    assert len(parts(data)) == 3


def test_diagnosticUnprintable() -> None:
    """
    Control characters in a diagnostic become spaces and other non-ASCII
    characters question marks, so that the report stays ASCII.
    """
    reply = "550\t5.1.1 \x00unknown\x7f user \u00e9t\u00e9\x1b[0m"
    report = RecipientReport(
        "bob@example.net", "failed", "5.1.1", reply, "mx\r\n.example.net"
    )
    envelope, data = build(report)
    fields = statusGroups(data)[1]
    assert fields["Diagnostic-Code"] == "smtp; 550 5.1.1 unknown user ?t? [0m"
    assert fields["Remote-MTA"] == "dns; mx .example.net"
    assert envelope.body == "7BIT"


def test_longDiagnosticCutAndFolded() -> None:
    """
    A very long diagnostic is cut to MAX_DIAGNOSTIC characters, marked as
    cut, and folded into lines of at most 78 characters.
    """
    reply = "550 5.7.1 " + " ".join(["blocked"] * 500)
    report = RecipientReport("bob@example.net", "failed", "5.7.1", reply)
    data = build(report)[1]
    value = statusGroups(data)[1]["Diagnostic-Code"]
    assert value.startswith("smtp; 550 5.7.1 blocked blocked")
    assert value.endswith(" ...")
    assert len(value) <= len("smtp; ") + MAX_DIAGNOSTIC

    statusPart = data.split(b"Content-Type: message/delivery-status")[1]
    statusPart = statusPart.split(b"\r\n--=_msagate_")[0]
    assert max(len(line) for line in lines(statusPart + b"\r\n")) <= 78


def test_longWordNotBroken() -> None:
    """
    A diagnostic without spaces cannot be folded; its line still stays
    within the RFC 5322 limit, and the value is kept intact up to the cut.
    """
    reply = "x" * 5000
    report = RecipientReport("bob@example.net", "failed", "5.0.0", reply)
    data = build(report)[1]
    value = statusGroups(data)[1]["Diagnostic-Code"]
    assert value == "smtp; " + "x" * (MAX_DIAGNOSTIC - 4) + " ..."
    assert max(len(line) for line in lines(data)) <= MAX_LINE


# The text part.


def humanText(data: bytes) -> str:
    """
    Return a report's text for people, its lines joined with spaces.
    """
    text = parts(data)[0].get_content()
    return " ".join(text.split())


def test_humanTextFailure() -> None:
    """
    The text for people says delivery was given up and, for each
    recipient, why: the next hop's reply, or what the local status
    means; it names the queue ID.
    """
    text = humanText(build(BOUNCED, NO_DOMAIN)[1])
    assert "could not be delivered" in text
    assert (
        "<bob@example.net>: the mail server mx.example.net answered:"
        " 550 5.1.1 no such user" in text
    )
    assert (
        "<carol@example.com>: the recipient's domain does not exist"
        " (status 5.1.2)." in text
    )
    assert QUEUE_ID in text
    assert "Delivery will be tried" not in text


def test_humanTextDelay() -> None:
    """
    The text of a delay warning says delivery goes on, and for how long
    and until when it will still be tried.
    """
    text = humanText(build(DELAYED)[1])
    assert "has not been delivered yet" in text
    assert (
        "Delivery will be tried for 4 days and 21 hours more, until"
        f" {formatDate(UNTIL)}." in text
    )


@pytest.mark.parametrize(
    "left, words",
    [
        (600, "less than an hour"),
        (3600, "1 hour"),
        (86400, "1 day"),
        (2 * 86400 + 3600, "2 days and 1 hour"),
    ],
)
def test_humanTextDurations(left: float, words: str) -> None:
    """
    How long delivery will still be tried is said in days and hours.
    """
    report = RecipientReport(
        "bob@example.net", "delayed", "4.4.1", willRetryUntil=NOW + left
    )
    assert f"tried for {words} more" in humanText(build(report)[1])


@pytest.mark.parametrize(
    "status, words",
    [
        ("5.1.10", "the recipient's domain accepts no mail (status 5.1.10)."),
        ("5.4.7", "stayed in the queue too long (status 5.4.7)."),
        ("5.9.9", "a permanent problem (status 5.9.9)."),
        ("4.9.9", "a temporary problem (status 4.9.9)."),
    ],
)
def test_humanTextLocalStatus(status: str, words: str) -> None:
    """
    A failure found here is explained by its status, in words.
    """
    report = RecipientReport("bob@example.net", "failed", status)
    assert words in humanText(build(report)[1])


def test_humanTextLineWidth() -> None:
    """
    The text for people is wrapped to short lines.
    """
    text = parts(build(BOUNCED, NO_DOMAIN)[1])[0].get_content()
    assert max(len(line) for line in text.splitlines()) <= 72


# The returned header section.


def returnedHeader(data: bytes) -> bytes:
    """
    Return the raw content of a report's text/rfc822-headers part.
    """
    part = data.split(b"Content-Description: Undelivered message header\r\n")
    return part[1].split(b"\r\n--=_msagate_")[0].removeprefix(b"\r\n")


def test_returnedHeader() -> None:
    """
    The third part holds the original header section byte for byte, and
    nothing of the body.
    """
    data = build(BOUNCED, headers=HEADERS + b"Secret body\r\n")[1]
    assert returnedHeader(data) == HEADERS[:-2]
    assert b"Secret body" not in data
    headerPart = parts(data)[2]
    assert "Subject: Lunch" in headerPart.get_content()


def test_returnedHeaderWithout8Bit() -> None:
    """
    A 7-bit header is returned without a transfer encoding field.
    """
    data = build(BOUNCED)[1]
    assert b"Content-Transfer-Encoding" not in data


def test_eightBitHeader() -> None:
    """
    A header with 8-bit octets is returned as it is, with the 8bit
    transfer encoding on the part and the report, and the report's
    envelope asks for BODY=8BITMIME (RFC 6152).
    """
    headers = b"From: J\xc3\xa9r\xc3\xb4me <jerome@example.org>\r\n\r\n"
    envelope, data = build(BOUNCED, headers=headers)
    assert envelope.body == "8BITMIME"
    assert returnedHeader(data) == headers[:-2]
    report = parse(data)
    assert report["Content-Transfer-Encoding"] == "8bit"
    assert parts(data)[2]["Content-Transfer-Encoding"] == "8bit"
    assert parts(data)[1]["Content-Transfer-Encoding"] is None


def test_returnedHeaderCut() -> None:
    """
    A huge header section is returned only up to MAX_RETURNED_HEADER
    octets, in whole lines, and an overlong line is cut to MAX_LINE.
    """
    field = b"X-Filler: " + b"y" * 60 + b"\r\n"
    huge = b"X-Long: " + b"z" * 5000 + b"\r\n" + field * 5000
    data = build(BOUNCED, headers=huge + b"\r\n")[1]
    returned = returnedHeader(data)
    assert len(returned) <= MAX_RETURNED_HEADER
    assert len(returned) > MAX_RETURNED_HEADER - len(field)
    assert returned.startswith(b"X-Long: " + b"z" * (MAX_LINE - 8) + b"\r\n")
    assert returned.endswith(field)
    assert max(len(line) for line in lines(data)) <= MAX_LINE


def test_emptyHeader() -> None:
    """
    A message without a header section still gets a well-formed report.
    """
    data = build(BOUNCED, headers=b"")[1]
    assert returnedHeader(data) == b""
    assert len(parts(data)) == 3


# Whatever the input.


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    reply=st.text(max_size=2000),
    remote=st.text(max_size=300),
    headers=st.binary(max_size=3000),
    delayed=st.booleans(),
)
def test_alwaysWellFormed(
    reply: str, remote: str, headers: bytes, delayed: bool
) -> None:
    """
    Whatever the next hop answered and whatever the header holds, the
    report has CRLF line endings, lines within the RFC 5322 limit, three
    parts and one field group per recipient, and its body type matches
    its content.
    """
    report = RecipientReport(
        "bob@example.net",
        "delayed" if delayed else "failed",
        "4.4.1" if delayed else "5.1.1",
        diagnostic=reply,
        remoteMTA=remote,
        willRetryUntil=UNTIL if delayed else None,
    )
    other = RecipientReport("carol@example.com", report.action, "5.1.2")
    envelope, data = build(report, other, headers=headers)
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in lines(data)) <= MAX_LINE
    assert len(parts(data)) == 3
    assert len(statusGroups(data)) == 3
    assert envelope.body == ("7BIT" if data.isascii() else "8BITMIME")


def test_humanTextInMsagatesWords() -> None:
    """
    A reason in msagate's own words (a refused connection, a message that
    stayed too long) is what the text for people gives, with the host it
    concerns when no reply came from it; the delivery-status part keeps
    the next hop's reply as the diagnostic.
    """
    unreachable = RecipientReport(
        "bob@example.net",
        FAILED,
        "4.4.1",
        remoteMTA="mx.example.net:25",
        reason="connection refused",
    )
    expired = RecipientReport(
        "carol@example.net",
        FAILED,
        "4.2.0",
        diagnostic="451 4.2.0 try later",
        remoteMTA="mx.example.net:25",
        reason="gave up after 5 days in the queue",
    )
    _, data = build(unreachable, expired)

    text = humanText(data)
    assert "connection refused (at mx.example.net:25) (status 4.4.1)" in text
    assert "gave up after 5 days in the queue (status 4.2.0)" in text
    status = parts(data)[1].as_string()
    assert "Diagnostic-Code: smtp; 451 4.2.0 try later" in status
