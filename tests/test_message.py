# -*- test-case-name: tests.test_message -*-
"""
Tests for L{msagate.message}: the header section of a submitted message.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zope.interface import implementer
from zope.interface.verify import verifyObject

from msagate import message
from msagate.address import Mailbox
from msagate.interfaces import IAccount
from msagate.message import (
    FOLD_WIDTH,
    UNIQUE_FIELDS,
    HeaderSection,
    MessageError,
    TraceInfo,
    checkHeader,
    completeHeader,
    makeMessageID,
    receivedField,
    splitHeader,
)
from msagate.replies import (
    BAD_HEADER,
    FROM_NOT_OWNED,
    TOO_MANY_HOPS,
    Refused,
)

# Thu, 03 Dec 2026 17:10:09 +0000
NOW = 1796317809.0

TRACE = TraceInfo(
    helo="client.example",
    clientAddress="192.0.2.7",
    byHost="msa.example.org",
    protocol="ESMTPSA",
    queueID="1A2B3C4D",
    recipients=["bob@example.net"],
    tlsVersion="TLSv1.3",
    tlsCipher="TLS_AES_256_GCM_SHA384",
)

DATE_LINE = re.compile(
    r"\t(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"\d\d:\d\d:\d\d [+-]\d{4}\Z"
)
MESSAGE_ID = re.compile(r"<[0-9a-f]{32}\.\d+@msa\.example\.org>\Z")


@implementer(IAccount)
class PermittedAccount:
    """
    An account that may send as a fixed set of addresses.
    """

    def __init__(self, user: str, *addresses: str) -> None:
        """
        @param user: the user name.
        @param addresses: the addresses the user may send as.
        """
        self.user = user
        self.permitted = {address.lower() for address in addresses}

    def maySendAs(self, mailbox: Mailbox) -> bool:
        """
        @return: whether C{mailbox} is one of the permitted addresses.
        """
        return str(mailbox).lower() in self.permitted


ALICE = PermittedAccount("alice", "alice@example.org", "team@example.org")


def makeHeader(*lines: str | bytes) -> bytes:
    """
    @return: the header section made of C{lines}, each ending in CRLF.
    """
    encoded = (
        line.encode("utf-8") if isinstance(line, str) else line
        for line in lines
    )
    return b"".join(line + b"\r\n" for line in encoded)


def parseLines(*lines: str | bytes) -> HeaderSection:
    """
    @return: the parsed header section made of C{lines}.
    """
    return HeaderSection.parse(makeHeader(*lines))


def refusal(header: HeaderSection, **kwargs: object) -> Refused:
    """
    @return: the refusal that L{checkHeader} raises for Alice.
    """
    with pytest.raises(Refused) as caught:
        checkHeader(header, ALICE, **kwargs)
    return caught.value


def receivedLines(trace: TraceInfo = TRACE) -> list[str]:
    """
    @return: the lines of the Received field for C{trace}, without CRLF.
    """
    return receivedField(trace, NOW).decode("ascii").split("\r\n")[:-1]


def complete(header: HeaderSection, trace: TraceInfo = TRACE) -> bytes:
    """
    @return: the completed header section, as stored.
    """
    return completeHeader(
        header, trace, now=NOW, messageIDHost="msa.example.org"
    )


def test_testAccountProvidesIAccount() -> None:
    """
    The account used by these tests provides L{IAccount}.
    """
    assert verifyObject(IAccount, ALICE)


# splitHeader


def test_splitHeaderFindsTheEmptyLine() -> None:
    """
    The offset returned is where the body starts, just after CRLF CRLF.
    """
    header = b"From: alice@example.org\r\nSubject: hi\r\n\r\n"

    assert splitHeader(header + b"body\r\n") == len(header)


def test_splitHeaderAcrossAppends() -> None:
    """
    A header section arriving in several pieces, with its empty line split
    between two of them, is found once its last byte has arrived.
    """
    chunks = [b"From: alice@example.org\r", b"\nSubject: hi\r\n", b"\r"]
    buffer, results = b"", []
    for chunk in [*chunks, b"\nbody\r\n"]:
        searched, buffer = len(buffer), buffer + chunk
        results.append(splitHeader(buffer, searched))

    assert results == [None, None, None, len(b"".join(chunks)) + 1]


def test_splitHeaderWithoutBody() -> None:
    """
    Content that never has an empty line is all header: no offset is
    found, and the whole content parses as the header section.
    """
    content = makeHeader("From: alice@example.org", "Subject: hi")

    assert splitHeader(content) is None
    assert HeaderSection.parse(content).count("subject") == 1


def test_splitHeaderEndingTheContent() -> None:
    """
    A header section followed by an empty line and no body gives the
    length of the content.
    """
    content = b"From: alice@example.org\r\n\r\n"

    assert splitHeader(content) == len(content)


@pytest.mark.parametrize("content", [b"\r\n", b"\r\nbody\r\n"])
def test_splitHeaderEmptyHeaderSection(content: bytes) -> None:
    """
    Content starting with an empty line has an empty header section, and
    its body starts at offset 2.
    """
    assert splitHeader(content) == 2
    assert HeaderSection.parse(content[:0]).fields == []


@pytest.mark.parametrize("content", [b"", b"\r", b"From: a@b.example\r\n\r"])
def test_splitHeaderNotYet(content: bytes) -> None:
    """
    Until the empty line is complete, no offset is found.
    """
    assert splitHeader(content) is None


@given(
    st.binary().map(lambda data: data.replace(b"\x00", b"\r\n")),
    st.lists(st.integers(min_value=0, max_value=200)),
)
def test_splitHeaderIncrementalMatchesWhole(
    content: bytes, cuts: list[int]
) -> None:
    """
    Searching piece by piece with C{searched} finds the same offset as
    searching the whole content at once.
    """
    whole = splitHeader(content)
    found, searched = None, 0
    for end in [*sorted(cuts), len(content)]:
        found = splitHeader(content[:end], searched)
        if found is not None:
            break
        searched = min(end, len(content))

    assert found == whole


# HeaderSection.parse


def test_parseKeepsRawFields() -> None:
    """
    Each field keeps its exact bytes, continuation lines and 8-bit bytes
    included (SUB-25).
    """
    data = (
        b"From: J\xc3\xb6rg <joerg@example.org>\r\n"
        b"Subject: a long\r\n\tfolded  subject\r\n"
        b"X-Latin1: caf\xe9\r\n"
    )

    assert HeaderSection.parse(data).fields == [
        ("From", b"From: J\xc3\xb6rg <joerg@example.org>\r\n"),
        ("Subject", b"Subject: a long\r\n\tfolded  subject\r\n"),
        ("X-Latin1", b"X-Latin1: caf\xe9\r\n"),
    ]


_NAMES = st.text("abcXYZ019-", min_size=1, max_size=20).map(str.encode)
_TEXT = st.binary(max_size=40).map(
    lambda text: text.replace(b"\r", b"").replace(b"\n", b"")
)
_FOLDED = st.builds(bytes.__add__, st.sampled_from([b" ", b"\t"]), _TEXT)
_FIELD_LINES = st.tuples(
    _NAMES, st.lists(_TEXT, max_size=3), st.lists(_FOLDED, max_size=3)
)


@given(st.lists(_FIELD_LINES, max_size=8))
def test_parseLosesNoByte(
    fields: list[tuple[bytes, list[bytes], list[bytes]]],
) -> None:
    """
    The raw fields joined are the header section as received (SUB-25).
    """
    lines = [
        line
        for name, value, folds in fields
        for line in [name + b":" + b"".join(value), *folds]
    ]
    data = makeHeader(*lines)
    parsed = HeaderSection.parse(data)

    assert b"".join(raw for _, raw in parsed.fields) == data
    assert [name for name, _ in parsed.fields] == [
        name.decode("ascii") for name, _, _ in fields
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"no colon here\r\n",
        b"From : alice@example.org\r\n",
        b" folded first\r\nFrom: alice@example.org\r\n",
        b": no name\r\n",
        b"From: alice@example.org",
        b"From: alice@example.org\nSubject: bare LF\r\n",
        b"From: alice@example.org\r\n\r\nSubject: after the empty line\r\n",
    ],
)
def test_parseRefusesMalformedLines(data: bytes) -> None:
    """
    A line that is neither a field nor a continuation, or that does not
    end in CRLF, makes the header section malformed (SUB-20).
    """
    with pytest.raises(MessageError):
        HeaderSection.parse(data)


def test_countIgnoresCase() -> None:
    """
    Field names compare without regard to case.
    """
    header = parseLines("Received: a", "RECEIVED: b", "received: c", "X: d")

    assert (header.count("Received"), header.count("x")) == (3, 1)


def test_valuesAreUnfolded() -> None:
    """
    Values lose their folding CRLFs and the white space around them, and
    keep the white space inside.
    """
    header = parseLines("Subject:  one", " two", "\tthree  ", "subject: four")

    assert header.values("SUBJECT") == ["one two\tthree", "four"]


def test_valuesKeepUndecodableBytes() -> None:
    """
    UTF-8 is decoded, and other 8-bit bytes survive as surrogate escapes.
    """
    header = parseLines(b"X-A: caf\xc3\xa9", b"X-B: caf\xe9")

    assert header.values("X-A") + header.values("X-B") == [
        "caf\u00e9",
        "caf\udce9",
    ]


# HeaderSection.mailboxes


def test_mailboxesOfEveryFieldAndGroup() -> None:
    """
    Display names, comments and group members are read from every field
    of that name, in order.
    """
    header = parseLines(
        'To: Bob <bob@example.net>, "Carol, C." <carol@example.net>',
        "Cc: dan@example.net (Dan)",
        "cc: Team: erin@example.net, frank@[192.0.2.1];",
    )

    assert header.mailboxes("To") == [
        Mailbox("bob", "example.net"),
        Mailbox("carol", "example.net"),
    ]
    assert header.mailboxes("Cc") == [
        Mailbox("dan", "example.net"),
        Mailbox("erin", "example.net"),
        Mailbox("frank", "[192.0.2.1]"),
    ]


def test_mailboxesOfEmptyGroup() -> None:
    """
    An empty group names no mailbox.
    """
    header = parseLines("To: undisclosed-recipients:;")

    assert header.mailboxes("To") == []


def test_mailboxesKeepQuotedLocalParts() -> None:
    """
    A local part that needs quoting keeps its quotes, as an envelope
    mailbox spells it.
    """
    header = parseLines('From: "alice smith"@example.org')

    assert header.mailboxes("From") == [
        Mailbox('"alice smith"', "example.org")
    ]


@pytest.mark.parametrize(
    "value",
    [
        "<<bad>>",
        "alice",
        "alice@example.org <eve@evil.example>",
        "alice@example.org junk",
        "alice@bad_domain.example",
        "j\u00f6rg@example.org",
        "IPv6:<",
        "a@@example.org",
    ],
)
def test_mailboxesRefuseMalformedAddresses(value: str) -> None:
    """
    Malformed addresses, non-ASCII local parts, domains that are neither
    names nor literals, and input that trips the stdlib parser raise
    L{MessageError} (SUB-13).
    """
    header = parseLines(f"From: {value}")

    with pytest.raises(MessageError):
        header.mailboxes("From")


# checkHeader


def test_checkAcceptsOwnedFrom() -> None:
    """
    A message from one of the user's own addresses passes (SUB-18).
    """
    header = parseLines(
        "From: Alice <ALICE@Example.ORG>",
        "To: bob@example.net",
        "Subject: hello",
    )

    checkHeader(header, ALICE)


def test_checkRefusesMissingFrom() -> None:
    """
    A message without From is refused, not repaired (SUB-20, HDR-10).
    """
    header = parseLines("To: bob@example.net", "Subject: hello")

    assert refusal(header).reply == BAD_HEADER.fill(detail="no From field")


@pytest.mark.parametrize("name", UNIQUE_FIELDS)
def test_checkRefusesRepeatedFields(name: str) -> None:
    """
    Each field that may appear once is refused when it appears twice,
    whatever the case of its name (HDR-10, SUB-20).
    """
    header = parseLines(
        "From: alice@example.org",
        f"{name}: alice@example.org",
        f"{name.upper()}: alice@example.org",
    )
    detail = f"more than one {name} field"

    assert refusal(header).reply == BAD_HEADER.fill(detail=detail)


def test_checkAcceptsEachFieldOnce() -> None:
    """
    One of each single-occurrence field, and repeated Received, Comments
    and Keywords, pass (HDR-10).
    """
    header = parseLines(
        *(f"{name}: alice@example.org" for name in UNIQUE_FIELDS),
        "Received: from a.example by b.example; Thu, 3 Dec 2026 17:10:09 +0",
        "Received: from c.example by a.example; Thu, 3 Dec 2026 17:10:08 +0",
        "Comments: one",
        "Comments: two",
        "Keywords: three",
        "Keywords: four",
    )

    checkHeader(header, ALICE)


def test_checkRefusesMalformedFrom() -> None:
    """
    A From that does not parse is refused (SUB-13).
    """
    header = parseLines("From: <<bad>>")
    detail = "malformed From field"

    assert refusal(header).reply == BAD_HEADER.fill(detail=detail)


@pytest.mark.parametrize("name", ["From", "Sender", "To", "Cc", "Reply-To"])
def test_checkRefusesUnqualifiedDomains(name: str) -> None:
    """
    An address with an unqualified domain is refused, in From, Sender and
    every other address field the message keeps (SUB-13); the operator's
    reason names the address.
    """
    lines = {"From": "From: alice@example.org", name: f"{name}: alice@host"}
    header = parseLines(*lines.values())
    detail = f"unqualified domain in {name} field"

    refused = refusal(header)

    assert refused.reply == BAD_HEADER.fill(detail=detail)
    assert "alice@host" in refused.reason


def test_checkIgnoresBccAddresses() -> None:
    """
    Bcc is dropped before relaying, so its addresses are not checked
    (HDR-13).
    """
    header = parseLines("From: alice@example.org", "Bcc: carol@host")

    checkHeader(header, ALICE)


def test_checkAcceptsAddressLiteral() -> None:
    """
    An address literal is a fully qualified domain (SUB-13).
    """
    owner = PermittedAccount("alice", "alice@[192.0.2.1]")
    header = parseLines("From: alice@[192.0.2.1]")

    checkHeader(header, owner)


def test_checkRefusesSeveralFromWithoutSender() -> None:
    """
    A From with several mailboxes and no Sender is refused (HDR-11).
    """
    header = parseLines("From: alice@example.org, team@example.org")
    detail = "several From mailboxes need a Sender field"

    assert refusal(header).reply == BAD_HEADER.fill(detail=detail)


def test_checkAcceptsSeveralFromWithSender() -> None:
    """
    A From with several owned mailboxes passes when an owned Sender names
    who sent it (HDR-11).
    """
    header = parseLines(
        "From: alice@example.org, team@example.org",
        "Sender: alice@example.org",
    )

    checkHeader(header, ALICE)


@pytest.mark.parametrize(
    "value", ["alice@example.org, team@example.org", "Nobody:;"]
)
def test_checkRefusesSenderWithoutOneMailbox(value: str) -> None:
    """
    A Sender must name exactly one mailbox (HDR-11).
    """
    header = parseLines("From: alice@example.org", f"Sender: {value}")
    detail = "Sender field must hold one mailbox"

    assert refusal(header).reply == BAD_HEADER.fill(detail=detail)


def test_checkRefusesFromWithoutMailbox() -> None:
    """
    A From holding only an empty group names nobody (SUB-20).
    """
    header = parseLines("From: Nobody:;")
    detail = "From field has no mailbox"

    assert refusal(header).reply == BAD_HEADER.fill(detail=detail)


def test_checkRefusesForeignFrom() -> None:
    """
    A From the user may not use is refused, and the operator's reason
    names the address and the user (SUB-18, SEC-6).
    """
    header = parseLines("From: The CEO <ceo@example.org>")

    refused = refusal(header)

    assert refused.reply == FROM_NOT_OWNED
    assert "ceo@example.org" in refused.reason
    assert "alice" in refused.reason


def test_checkRefusesOneForeignFromAmongSeveral() -> None:
    """
    Every From mailbox must be the user's, not only the first (SEC-6).
    """
    header = parseLines(
        "From: alice@example.org, ceo@example.org",
        "Sender: alice@example.org",
    )

    assert refusal(header).reply == FROM_NOT_OWNED


def test_checkRefusesForeignSender() -> None:
    """
    A Sender the user may not use is refused (SUB-18, SEC-6).
    """
    header = parseLines("From: alice@example.org", "Sender: ceo@example.org")

    refused = refusal(header)

    assert refused.reply == FROM_NOT_OWNED
    assert "ceo@example.org" in refused.reason


def test_checkAccepts99Received() -> None:
    """
    A message that has crossed 99 hops still passes (SMTP-37).
    """
    received = ["Received: from a.example by b.example; x"] * 99
    header = parseLines("From: alice@example.org", *received)

    checkHeader(header, ALICE)


def test_checkRefuses100Received() -> None:
    """
    A message with 100 Received fields is refused as a loop (SMTP-37).
    """
    received = ["Received: from a.example by b.example; x"] * 100
    header = parseLines("From: alice@example.org", *received)

    assert refusal(header).reply == TOO_MANY_HOPS


def test_checkUsesGivenHopLimit() -> None:
    """
    The loop limit can be set: at the limit the message is refused, one
    below it passes (SMTP-37).
    """
    received = ["Received: from a.example by b.example; x"] * 5
    header = parseLines("From: alice@example.org", *received)

    assert refusal(header, maxReceived=5).reply == TOO_MANY_HOPS
    checkHeader(header, ALICE, maxReceived=6)


# The Received field


def test_receivedExample() -> None:
    """
    With every clause known, the Received field has the from, by, with,
    id, for and tls clauses on folded lines, then the date (HDR-1..5).
    """
    trace = replace(TRACE, clientName="client.example")

    assert receivedField(trace, NOW) == (
        b"Received: from client.example (client.example [192.0.2.7])\r\n"
        b"\tby msa.example.org (msagate) with ESMTPSA id 1A2B3C4D\r\n"
        b"\tfor <bob@example.net>\r\n"
        b"\ttls TLS_AES_256_GCM_SHA384 (TLSv1.3);\r\n"
        b"\tThu, 03 Dec 2026 17:10:09 +0000\r\n"
    )


def test_receivedClauses() -> None:
    """
    Each clause holds the validated value it is built from: the EHLO name
    and client address literal, our name, the protocol and queue ID, the
    single recipient, the cipher and the date (HDR-2..6).
    """
    lines = receivedLines()

    assert re.fullmatch(
        r"Received: from client\.example \(\[192\.0\.2\.7\]\)", lines[0]
    )
    assert re.fullmatch(
        r"\tby msa\.example\.org \(msagate\) with ESMTPSA id 1A2B3C4D",
        lines[1],
    )
    assert re.fullmatch(r"\tfor <bob@example\.net>", lines[2])
    assert re.fullmatch(
        r"\ttls TLS_AES_256_GCM_SHA384 \(TLSv1\.3\);", lines[3]
    )
    assert DATE_LINE.match(lines[4])
    assert len(lines) == 5


@pytest.mark.parametrize(
    "address, literal",
    [
        ("2001:DB8:0:0::1", "[IPv6:2001:db8::1]"),
        ("::ffff:192.0.2.7", "[192.0.2.7]"),
        ("fe80::1%eth0", "[IPv6:fe80::1]"),
    ],
)
def test_receivedAddressLiterals(address: str, literal: str) -> None:
    """
    IPv6 addresses are written as C{IPv6:} literals, IPv4-mapped ones as
    IPv4, and a zone index is left out (HDR-2).
    """
    lines = receivedLines(replace(TRACE, clientAddress=address))

    assert lines[0] == f"Received: from client.example ({literal})"


def test_receivedHiddenClientAddress() -> None:
    """
    Without a client address, the from clause is the EHLO name alone.
    """
    trace = replace(TRACE, clientAddress=None, clientName="client.example")

    assert receivedLines(trace)[0] == "Received: from client.example"


@pytest.mark.parametrize(
    "recipients", [[], ["bob@example.net", "carol@example.net"]]
)
def test_receivedForOnlyOneRecipient(recipients: list[str]) -> None:
    """
    The for clause appears only for a single recipient, so that several
    recipients do not learn of each other (HDR-5).
    """
    trace = replace(TRACE, recipients=recipients)

    assert not any("for <" in line for line in receivedLines(trace))
    assert "\tfor <bob@example.net>" in receivedLines()


def test_receivedWithoutTLS() -> None:
    """
    Without a known cipher there is no tls clause, and the semicolon
    follows the last clause there is (HDR-4).
    """
    trace = replace(TRACE, tlsVersion=None, tlsCipher=None, protocol="ESMTPA")
    lines = receivedLines(trace)

    assert not any("tls" in line for line in lines)
    assert lines[2] == "\tfor <bob@example.net>;"


def test_receivedCipherWithoutVersion() -> None:
    """
    A cipher without a known version is written alone (HDR-4).
    """
    trace = replace(TRACE, tlsVersion=None)

    assert receivedLines(trace)[3] == "\ttls TLS_AES_256_GCM_SHA384;"


def test_receivedFoldsLongClauses() -> None:
    """
    Long values push words onto continuation lines, each starting with a
    TAB and at most 78 characters long (HDR-9).
    """
    trace = replace(
        TRACE,
        helo="a-rather-long-client-name.branch-office.example.com",
        byHost="submission-server-number-one.mail.example.org",
        queueID="0123456789ABCDEF0123456789ABCDEF",
        recipients=["a-long-recipient-name@department.example.net"],
    )
    lines = receivedLines(trace)

    assert all(len(line) <= FOLD_WIDTH for line in lines)
    assert all(line.startswith("\t") for line in lines[1:])
    assert len(lines) > 5


def test_receivedKeepsLongWordsWhole() -> None:
    """
    A word longer than 78 characters stays on one line, which still fits
    the 998-character limit (HDR-9).
    """
    helo = ".".join(["a" * 60] * 4)
    lines = receivedLines(replace(TRACE, helo=helo))

    assert lines[0] == "Received:"
    assert lines[1] == f"\tfrom {helo}"
    assert all(len(line) <= 998 for line in lines)


@pytest.mark.parametrize(
    "field, value",
    [
        ("helo", "client.example\r\nX-Evil: 1"),
        ("clientAddress", "192.0.2.7\r\nX-Evil: 1"),
        ("byHost", "msa.example.org\nX-Evil: 1"),
        ("protocol", "ESMTPSA\r\nX-Evil: 1"),
        ("queueID", "1A2B\rX-Evil: 1"),
        ("queueID", "1A2B; Thu"),
        ("recipients", ["bob@example.net>\r\nX-Evil: 1"]),
        ("tlsVersion", "TLSv1.3)\r\nX-Evil: 1"),
        ("tlsCipher", "TLS_AES_256_GCM_SHA384\nX-Evil: 1"),
        ("clientName", "client.example\r\n"),
    ],
)
def test_traceRefusesUnsafeValues(field: str, value: object) -> None:
    """
    A trace value with a CR, a LF or a clause separator is refused before
    it can reach the header (HDR-8).
    """
    with pytest.raises(ValueError):
        replace(TRACE, **{field: value})


def test_receivedDropsZoneText() -> None:
    """
    The free text of an IPv6 zone index never reaches the header (HDR-8).
    """
    trace = replace(TRACE, clientAddress="fe80::1%eth0\r\nX-Evil: 1")

    assert b"X-Evil" not in receivedField(trace, NOW)


# completeHeader


SIGNED = (
    b"Received: from webmail.example.org by msa.example.org;\r\n"
    b"\tThu, 03 Dec 2026 17:10:00 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=s1;\r\n"
    b"\th=from:subject; bh=AAAA; b=BBBB\r\n"
    b"From: J\xc3\xb6rg   <alice@example.org>\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"  and a  folded\ttail \r\n"
    b"X-Raw: caf\xe9\r\n"
    b"Date: Thu, 3 Dec 2026 18:10:00 +0100\r\n"
    b"Message-ID: <original@example.org>\r\n"
)


def test_completeKeepsFieldsByteForByte() -> None:
    """
    The submitted fields follow the new Received field unchanged and in
    their order, folded and 8-bit ones included, and the empty line ends
    the section (HDR-1, SUB-25).
    """
    completed = complete(HeaderSection.parse(SIGNED))

    assert completed == receivedField(TRACE, NOW) + SIGNED + b"\r\n"


def test_completeAddsOneReceivedOnTop() -> None:
    """
    Exactly one Received field is added, above the existing ones (HDR-1).
    """
    completed = HeaderSection.parse(complete(HeaderSection.parse(SIGNED))[:-2])

    assert completed.count("Received") == 2
    assert completed.values("Received")[0].startswith("from client.example")


def test_completeDropsReturnPathAndBcc() -> None:
    """
    Return-Path and Bcc, in any case and folded, are left out, and
    nothing else is (HDR-7, HDR-13).
    """
    header = parseLines(
        "Return-Path: <alice@example.org>",
        "From: alice@example.org",
        "BCC: carol@example.net,",
        " dan@example.net",
        "Subject: hi",
        "bcc: erin@example.net",
    )
    completed = HeaderSection.parse(complete(header)[:-2])

    assert [name for name, _ in completed.fields] == [
        "Received",
        "From",
        "Subject",
        "Message-ID",
        "Date",
    ]


def test_completeAddsMessageIDWhenMissing() -> None:
    """
    A message without Message-ID gets one at the end of the header, and
    two such messages get different ones (SUB-22, HDR-12).
    """
    header = parseLines("From: alice@example.org", "Date: x")
    first, second = complete(header), complete(header)

    ending = re.compile(rb"Date: x\r\nMessage-ID: (<[^>]+>)\r\n\r\n\Z")
    firstID = ending.search(first).group(1).decode("ascii")
    secondID = ending.search(second).group(1).decode("ascii")

    assert MESSAGE_ID.match(firstID) and firstID != secondID


def test_completeAddsDateWhenMissing() -> None:
    """
    A message without Date gets one, from the given time with a numeric
    zone and a four-digit year, at the end of the header (SUB-21, HDR-6).
    """
    header = parseLines("From: alice@example.org", "Message-ID: <m@x.example>")

    assert complete(header).endswith(
        b"Message-ID: <m@x.example>\r\n"
        b"Date: Thu, 03 Dec 2026 17:10:09 +0000\r\n\r\n"
    )


def test_completeAddsNothingWhenPresent() -> None:
    """
    A Message-ID and a Date, spelled in any case, are kept and not added
    again; nothing else is added (SUB-25).
    """
    data = makeHeader("DATE: x", "From: alice@example.org", "message-id: <m>")
    completed = complete(HeaderSection.parse(data))

    assert completed == receivedField(TRACE, NOW) + data + b"\r\n"


def test_completeRefusesUnsafeMessageIDHost() -> None:
    """
    The Message-ID host must be a domain name, so no CR or LF can reach
    the header (HDR-8).
    """
    header = parseLines("From: alice@example.org")

    with pytest.raises(ValueError):
        completeHeader(
            header, TRACE, now=NOW, messageIDHost="msa.example\r\nX: 1"
        )


def test_completedHeaderIsWellFormed() -> None:
    """
    The completed section parses again, every line ends in CRLF, and its
    end is where the body starts (HDR-9).
    """
    completed = complete(parseLines("From: alice@example.org", "Subject: x"))

    assert splitHeader(completed) == len(completed)
    assert len(HeaderSection.parse(completed[:-2]).fields) == 5
    assert b"\r" not in completed.replace(b"\r\n", b"")
    assert b"\n" not in completed.replace(b"\r\n", b"")


def test_messageIDsAreDistinct() -> None:
    """
    A thousand generated Message-IDs are all different and all have the
    form <random.timestamp@host> (HDR-12).
    """
    identifiers = {makeMessageID("msa.example.org", NOW) for _ in range(1000)}

    assert len(identifiers) == 1000
    assert all(MESSAGE_ID.match(identifier) for identifier in identifiers)


def test_messageIDRefusesBadHost() -> None:
    """
    A Message-ID is never built around a host that is not a domain name
    (HDR-8).
    """
    with pytest.raises(ValueError):
        makeMessageID("msa.example.org>\r\nX-Evil: 1", NOW)


_ATOMS = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789!#$%&'*+/=?^_`{|}~-",
    min_size=1,
    max_size=8,
)
_PLAIN_MAILBOXES = st.builds(
    lambda local, labels: f"{local}@{'.'.join(labels)}",
    st.lists(_ATOMS, min_size=1, max_size=3).map(".".join),
    st.lists(
        st.text(alphabet="abcdefxyz0123", min_size=1, max_size=6),
        min_size=2,
        max_size=3,
    ),
)
_PLAIN_ITEMS = st.one_of(
    _PLAIN_MAILBOXES,
    st.builds(
        lambda name, address: f"{name} <{address}>",
        st.lists(_ATOMS, min_size=1, max_size=3).map(" ".join),
        _PLAIN_MAILBOXES,
    ),
    st.builds(
        lambda name, address: f'"{name}" <{address}>',
        st.text(alphabet="abc XYZ.,;:@<>()[]", max_size=10),
        _PLAIN_MAILBOXES,
    ),
)


@given(
    st.lists(_PLAIN_ITEMS, min_size=1, max_size=4),
    st.sampled_from([", ", ",", " ,\t"]),
)
def test_plainFormsReadLikeTheFullParser(items, separator):
    """
    The quick reading of plain address lists finds exactly the mailboxes
    the standard library's parser finds (SUB-13, SEC-6).
    """
    value = separator.join(items)
    quick = message._plainAddresses(value)
    assert quick is not None
    full = message._ADDRESS_PARSER("To", value)
    assert quick == [address.addr_spec for address in full.addresses]
