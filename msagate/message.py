# -*- test-case-name: tests.test_message -*-
"""
The header section of a submitted message: parsing, checks and completion.

The protocol keeps a message's header section in memory until the empty
line that ends it, then asks this module two things: whether the header is
acceptable (L{checkHeader}) and which bytes to store in its place
(L{completeHeader}).  The body is streamed to the spool untouched.

Rules implemented here:

  - RFC 5322 section 2.2: fields, folding and unfolding;
  - RFC 5322 section 3.6 and RFC 6409 section 6.3: how many times each
    field may appear, and a From that names its sender;
  - RFC 6409 section 4.2: address domains must be fully qualified, since
    the MSA alters the message (it may add Date and Message-ID);
  - RFC 6409 sections 6.1 and 6.3: the authenticated user must own the
    From and Sender mailboxes;
  - RFC 6409 sections 8.2 and 8.3: a missing Date or Message-ID is added;
  - RFC 5321 section 4.4, RFC 3848 and RFC 8314 section 4.3: the Received
    field with its C{with} and C{tls} clauses;
  - RFC 5321 section 6.3: a message with too many Received fields loops.

The fields the MSA keeps are written back exactly as they arrived, never
re-folded or re-encoded, so that signatures over them (DKIM, S/MIME) still
verify after submission.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import InvalidHeaderDefect
from email.headerregistry import AddressHeader, HeaderRegistry
from email.utils import format_datetime
from functools import lru_cache
from typing import cast

from msagate.address import (
    AddressError,
    Mailbox,
    isDomain,
    isHelloArgument,
    parseMailbox,
)
from msagate.interfaces import IAccount
from msagate.replies import (
    BAD_HEADER,
    FROM_NOT_OWNED,
    TOO_MANY_HOPS,
    Refused,
)

# RFC 5321 section 6.3 suggests this many hops as a loop.
MAX_RECEIVED = 100

# RFC 5322 section 2.1.1: lines SHOULD NOT exceed 78 characters.
FOLD_WIDTH = 78

# RFC 5322 section 3.6: the fields that may appear at most once.
UNIQUE_FIELDS = (
    "Date",
    "From",
    "Sender",
    "To",
    "Cc",
    "Bcc",
    "Subject",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Reply-To",
)

# The address fields relayed as they are.  Bcc is absent: it is dropped.
ADDRESS_FIELDS = (
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
)

# RFC 5321 section 4.4 (Return-Path) and RFC 5321 section 7.2 (Bcc).
_DROPPED_FIELDS = frozenset({"return-path", "bcc"})

# RFC 5322 section 3.6.8: printable US-ASCII except the colon.
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+):")
_FOLD = re.compile(r"\r\n(?=[ \t])")

# An atom with dots (RFC 5322 section 3.2.3): no space, no parenthesis,
# no semicolon, nothing that could end a Received clause early.
_TRACE_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+\Z")

_ADDRESS_PARSER = HeaderRegistry(
    default_class=AddressHeader, use_default_map=False
)


class MessageError(ValueError):
    """
    A header section or one of its fields does not follow RFC 5322.

    Its text is a short reason for the operator's log.
    """


class HeaderSection:
    """
    A message's header fields, each kept as the bytes that arrived.

    @ivar fields: the fields in their order, as pairs of the field name
        (spelled as received) and the raw field: the name, the colon, the
        value and every continuation line, each line ending in CRLF.  A
        header section does not change once made.
    """

    def __init__(self, fields: Iterable[tuple[str, bytes]]) -> None:
        """
        @param fields: the value of L{fields}.
        """
        self.fields = list(fields)
        self._counts = Counter(name.lower() for name, _ in self.fields)

    @classmethod
    def parse(cls, data: bytes) -> HeaderSection:
        """
        Split a header section into its fields (RFC 5322 section 2.2).

        @param data: the header section as received, each line ending in
            CRLF, without the empty line that separates it from the body.
            8-bit bytes are kept as they are.
        @return: the header section.
        @raise MessageError: when a line is neither a field nor a
            continuation line, or a line does not end in CRLF.
        """
        if data and not data.endswith(b"\r\n"):
            raise MessageError("header section does not end with CRLF")
        fields: list[tuple[str, list[bytes]]] = []

        for line in data.split(b"\r\n")[:-1]:
            if b"\r" in line or b"\n" in line:
                raise MessageError("bare CR or LF in the header section")
            if line[:1] in (b" ", b"\t"):
                _continueField(fields, line)
            else:
                fields.append((_fieldName(line), [line]))

        return cls(
            (name, b"".join(line + b"\r\n" for line in lines))
            for name, lines in fields
        )

    def count(self, name: str) -> int:
        """
        @param name: a field name, in any case.
        @return: how many fields have that name.
        """
        return self._counts[name.lower()]

    def values(self, name: str) -> list[str]:
        """
        The unfolded values of the fields called C{name}.

        @param name: a field name, in any case.
        @return: each value with the folding removed (RFC 5322 section
            2.2.3) and the white space around it stripped, decoded as UTF-8
            with undecodable bytes kept as surrogate escapes.
        """
        wanted = name.lower()
        values: list[str] = []
        if not self._counts[wanted]:
            return values
        for found, raw in self.fields:
            if found.lower() == wanted:
                text = raw.decode("utf-8", "surrogateescape")
                value = text.partition(":")[2].removesuffix("\r\n")
                values.append(_FOLD.sub("", value).strip(" \t"))
        return values

    def mailboxes(self, name: str) -> list[Mailbox]:
        """
        The mailboxes of the address-list fields called C{name}, such as
        From or To (RFC 5322 section 3.4).

        Display names, comments and groups are allowed; the members of a
        group are listed, and an empty group adds nothing.

        @param name: a field name, in any case.
        @return: the mailboxes of every such field, in order.
        @raise MessageError: when an address is malformed, or its domain
            is neither a domain name nor an address literal.
        """
        mailboxes = []
        for value in self.values(name):
            mailboxes.extend(_parseAddressList(name, value))
        return mailboxes


def _fieldName(line: bytes) -> str:
    """
    @return: the name of the field that C{line} starts.
    @raise MessageError: when C{line} does not start a field.
    """
    match = _FIELD_NAME.match(line)
    if match is None:
        raise MessageError("header line is neither a field nor folded")
    return match.group(1).decode("ascii")


def _continueField(fields: list[tuple[str, list[bytes]]], line: bytes) -> None:
    """
    Add a continuation line to the last field.

    @raise MessageError: when there is no field to continue.
    """
    if not fields:
        raise MessageError("header section starts with a folded line")
    fields[-1][1].append(line)


# The forms nearly every mail program writes: "local@domain",
# "Display Name <local@domain>" and '"Quoted, Name" <local@domain>', in a
# comma-separated list, with no comments, groups or escapes.  They are
# read here directly; anything else goes to the (much slower) stdlib
# parser.
_ATOM_TEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_PLAIN_ADDRESS = rf"{_ATOM_TEXT}+(?:\.{_ATOM_TEXT}+)*@[A-Za-z0-9.-]+"
_PLAIN_NAME = rf'(?:{_ATOM_TEXT}+(?:[ \t]+{_ATOM_TEXT}+)*|"[^"\\\r\n]*")'
_PLAIN_ITEM = re.compile(
    rf"[ \t]*(?:(?P<bare>{_PLAIN_ADDRESS})"
    rf"|{_PLAIN_NAME}?[ \t]*<(?P<angled>{_PLAIN_ADDRESS})>)[ \t]*"
)


def _plainAddresses(value: str) -> list[str] | None:
    """
    @return: the addresses of a list written in the plain forms, or
        L{None} when the list needs the full parser.
    """
    text, position, addresses = value.replace("\r\n", ""), 0, []
    while True:
        match = _PLAIN_ITEM.match(text, position)
        if match is None:
            return None
        addresses.append(match.group("bare") or match.group("angled"))
        position = match.end()
        if position == len(text):
            return addresses
        if text[position] != ",":
            return None
        position += 1


def _parseAddressList(name: str, value: str) -> list[Mailbox]:
    """
    Parse one address-list field value.

    @raise MessageError: when the value or one of its addresses is
        malformed.
    """
    addresses = _plainAddresses(value)
    if addresses is None:
        addresses = _fullyParsedAddresses(name, value)
    try:
        return [parseMailbox(address) for address in addresses]
    except AddressError as error:
        raise MessageError(f"bad address in {name} field: {error}") from None


def _fullyParsedAddresses(name: str, value: str) -> list[str]:
    """
    @return: the addresses of a list, read by the stdlib parser.
    @raise MessageError: when the list is malformed.
    """
    # The stdlib parser raises assorted exceptions (IndexError,
    # AttributeError, TypeError) on some hostile input instead of
    # recording a defect; any failure means the field is malformed.
    try:
        parsed = _ADDRESS_PARSER(name, value)
        # Its classes derive from default_class, AddressHeader, which
        # typeshed cannot tell from its BaseHeader return type.
        field = cast(AddressHeader, parsed)
        addresses = [address.addr_spec for address in field.addresses]
    except Exception as error:
        raise MessageError(f"unparsable {name} field") from error

    # Obsolete syntax and 8-bit display names are only noted as defects.
    if any(isinstance(d, InvalidHeaderDefect) for d in parsed.defects):
        raise MessageError(f"malformed address list in {name} field")
    return addresses


def splitHeader(buffer: bytes | bytearray, searched: int = 0) -> int | None:
    """
    Find where the header section ends (RFC 5322 section 2.1).

    @param buffer: the start of the message content, CRLF-only.
    @param searched: how many bytes of C{buffer} an earlier call already
        searched in vain, so that a caller who appends to its buffer does
        not search the whole of it again.
    @return: the offset just after the empty line, where the body starts:
        the header section is then C{buffer[:offset - 2]}.  C{2} when the
        content starts with an empty line (an empty header section).
        L{None} when the empty line has not arrived yet.
    """
    if buffer.startswith(b"\r\n"):
        return 2

    # The CRLF CRLF may straddle the end of the part already searched.
    end = buffer.find(b"\r\n\r\n", max(searched - 3, 0))
    return None if end == -1 else end + 4


def checkHeader(
    header: HeaderSection, account: IAccount, maxReceived: int = MAX_RECEIVED
) -> None:
    """
    Check a submitted header section before it is stored (RFC 6409
    section 6.3).

    @param header: the header section as submitted.
    @param account: the authenticated user's account.
    @param maxReceived: how many Received fields mean a mail loop.
    @raise Refused: with L{TOO_MANY_HOPS} for a loop (RFC 5321 section
        6.3); with L{BAD_HEADER} when a field is missing, repeated or
        malformed, or an address domain is not fully qualified; with
        L{FROM_NOT_OWNED} when the user may not use a From or Sender
        mailbox.
    """
    hops = header.count("Received")
    if hops >= maxReceived:
        raise Refused(TOO_MANY_HOPS, f"{hops} Received fields")

    _checkFieldCounts(header)
    found = {name: _checkedMailboxes(header, name) for name in ADDRESS_FIELDS}
    authors, senders = found["From"], found["Sender"]
    _checkAuthors(header, authors, senders)

    # RFC 6409 section 6.1: whoever the message claims is its sender must
    # be someone the user may speak for.
    for mailbox in [*authors, *senders]:
        if not account.maySendAs(mailbox):
            reason = f"user {account.user} may not send as {mailbox}"
            raise Refused(FROM_NOT_OWNED, reason)


def _refuseHeader(detail: str, reason: str = "") -> Refused:
    """
    @param detail: what the client is told is wrong, in a few words.
    @param reason: the operator's reason, when it says more than C{detail}.
    @return: a refusal with L{BAD_HEADER}.
    """
    return Refused(BAD_HEADER.fill(detail=detail), reason)


def _checkFieldCounts(header: HeaderSection) -> None:
    """
    Require one From and at most one of each L{UNIQUE_FIELDS} (RFC 5322
    section 3.6).  A missing Date is added later, not refused.

    @raise Refused: with L{BAD_HEADER}.
    """
    if not header.count("From"):
        raise _refuseHeader("no From field")

    for name in UNIQUE_FIELDS:
        if header.count(name) > 1:
            raise _refuseHeader(f"more than one {name} field")


def _checkedMailboxes(header: HeaderSection, name: str) -> list[Mailbox]:
    """
    Parse the address fields called C{name} and require fully qualified
    domains (RFC 6409 section 4.2).

    @return: their mailboxes.
    @raise Refused: with L{BAD_HEADER}.
    """
    try:
        mailboxes = header.mailboxes(name)
    except MessageError as error:
        raise _refuseHeader(f"malformed {name} field", str(error)) from None

    for mailbox in mailboxes:
        if not mailbox.isQualified:
            reason = f"unqualified address {mailbox} in {name} field"
            raise _refuseHeader(f"unqualified domain in {name} field", reason)
    return mailboxes


def _checkAuthors(
    header: HeaderSection, authors: list[Mailbox], senders: list[Mailbox]
) -> None:
    """
    Require a From naming somebody, and a Sender naming exactly one
    mailbox when there is one or when From names several (RFC 5322
    section 3.6.2).

    @raise Refused: with L{BAD_HEADER}.
    """
    if not authors:
        raise _refuseHeader("From field has no mailbox")

    if header.count("Sender") and len(senders) != 1:
        raise _refuseHeader("Sender field must hold one mailbox")

    if len(authors) > 1 and not senders:
        raise _refuseHeader("several From mailboxes need a Sender field")


@dataclass(frozen=True)
class TraceInfo:
    """
    What the Received field says about how a message arrived (RFC 5321
    section 4.4).

    Every value is checked when the object is made, so that no client
    text with a CR, a LF or a clause separator reaches the header.

    @ivar helo: the client's EHLO argument, already validated.
    @ivar clientAddress: the client's IP address from the connection, or
        L{None} to leave it out of the field.
    @ivar byHost: this server's fully qualified name.
    @ivar protocol: the C{with} keyword such as C{"ESMTPSA"} (RFC 3848).
    @ivar queueID: the message's queue identifier.
    @ivar recipients: the forward paths, without angle brackets.
    @ivar tlsVersion: the TLS version such as C{"TLSv1.3"}, or L{None}.
    @ivar tlsCipher: the IANA name of the TLS cipher suite, or L{None}
        when the session has no TLS or the suite is unknown.
    @ivar clientName: the client's host name as reverse DNS confirmed it,
        or L{None}; it is written only beside the client address.
    """

    helo: str
    clientAddress: str | None
    byHost: str
    protocol: str
    queueID: str
    recipients: Sequence[str]
    tlsVersion: str | None = None
    tlsCipher: str | None = None
    clientName: str | None = None

    def __post_init__(self) -> None:
        """
        @raise ValueError: when a value could not be written safely.
        """
        object.__setattr__(self, "recipients", tuple(self.recipients))
        _require(isHelloArgument(self.helo), "EHLO argument")
        _require(isDomain(self.byHost), "server name")
        name = self.clientName
        _require(name is None or isDomain(name), "client name")

        _require(_TRACE_TOKEN.match(self.protocol), "protocol")
        _require(_TRACE_TOKEN.match(self.queueID), "queue ID")
        for value in (self.tlsVersion, self.tlsCipher):
            _require(value is None or _TRACE_TOKEN.match(value), "TLS name")

        for recipient in self.recipients:
            parseMailbox(recipient)
        if self.clientAddress is not None:
            _addressLiteral(self.clientAddress)


def _require(condition: object, what: str) -> None:
    """
    @raise ValueError: naming C{what}, when C{condition} is false.
    """
    if not condition:
        raise ValueError(f"invalid {what} for a Received field")


def _addressLiteral(address: str) -> str:
    """
    @return: C{address} as an RFC 5321 address literal, such as
        C{[192.0.2.7]} or C{[IPv6:2001:db8::1]}; an IPv4 address mapped
        into IPv6 by a dual-stack socket is written as IPv4.
    @raise ValueError: when C{address} is not an IP address.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        return f"[{ip}]"

    # A zone index (RFC 4007 section 11) is free text that means nothing
    # beyond this host; the packed form leaves it out.
    ip = ip.ipv4_mapped or ipaddress.IPv6Address(ip.packed)
    if isinstance(ip, ipaddress.IPv4Address):
        return f"[{ip}]"
    return f"[IPv6:{ip.compressed}]"


def formatDate(now: float) -> str:
    """
    @param now: seconds since the epoch.
    @return: an RFC 5322 date-time in UTC with a numeric zone and a
        four-digit year, such as C{Thu, 03 Dec 2026 17:10:09 +0000}.
    """
    return _formatSecond(int(now))


@lru_cache(maxsize=4)
def _formatSecond(second: int) -> str:
    # Every message of the same second shares one formatted value.
    return format_datetime(datetime.fromtimestamp(second, UTC))


def makeMessageID(host: str, now: float) -> str:
    """
    Make a new, globally unique message identifier (RFC 5322 section
    3.6.4, RFC 6409 section 8.3).

    @param host: this server's fully qualified name.
    @param now: seconds since the epoch.
    @return: C{<random.timestamp@host>}, the random part holding 128 bits
        in hexadecimal.
    @raise ValueError: when C{host} is not a domain name.
    """
    _require(isDomain(host), "Message-ID host")
    return f"<{secrets.token_hex(16)}.{int(now)}@{host}>"


def receivedField(trace: TraceInfo, now: float) -> bytes:
    """
    Write the Received field for a message (RFC 5321 section 4.4).

    Each clause starts a line of its own, folded with CRLF and a TAB; a
    clause longer than L{FOLD_WIDTH} is split between its words, and a
    single word longer than that stays whole.

    @param trace: how the message arrived.
    @param now: seconds since the epoch.
    @return: the field, ending in CRLF.
    """
    origin = ["Received:", f"from {trace.helo}", *_tcpInfo(trace)]
    by = [f"by {trace.byHost}", "(msagate)", f"with {trace.protocol}"]
    clauses = [origin, [*by, f"id {trace.queueID}"]]

    # RFC 5321 section 7.2: naming one of several recipients would
    # reveal the Bcc recipients to the others.
    if len(trace.recipients) == 1:
        clauses.append([f"for <{trace.recipients[0]}>"])
    if trace.tlsCipher is not None:
        version = [f"({trace.tlsVersion})"] if trace.tlsVersion else []
        clauses.append([f"tls {trace.tlsCipher}", *version])

    clauses[-1][-1] += ";"
    clauses.append([formatDate(now)])
    return _fold(clauses)


def _tcpInfo(trace: TraceInfo) -> list[str]:
    """
    @return: the comment after the client's EHLO name (RFC 5321 section
        4.4, C{TCP-info}), as a list of one word, or an empty list when
        the client's address is hidden.
    """
    if trace.clientAddress is None:
        return []

    literal = _addressLiteral(trace.clientAddress)
    if trace.clientName is None:
        return [f"({literal})"]
    return [f"({trace.clientName} {literal})"]


def _fold(clauses: list[list[str]]) -> bytes:
    """
    Lay out the words of a generated field (RFC 5322 section 2.2.3).

    @param clauses: the words of each clause; each clause starts a line,
        and a word that would take the line past L{FOLD_WIDTH} starts the
        next one.
    @return: the lines joined, continuation lines starting with a TAB.
    """
    lines: list[str] = []
    for clause in clauses:
        first = len(lines)
        for word in clause:
            if len(lines) > first and len(lines[-1]) + len(word) < FOLD_WIDTH:
                lines[-1] += " " + word
            else:
                lines.append(("\t" if lines else "") + word)

    return "".join(line + "\r\n" for line in lines).encode("ascii")


def completeHeader(
    header: HeaderSection, trace: TraceInfo, *, now: float, messageIDHost: str
) -> bytes:
    """
    Write the header section to store for a checked message.

    A new Received field comes first (RFC 5321 section 4.4).  The
    submitted fields follow in their order, byte for byte, except
    Return-Path (RFC 5321 section 4.4) and Bcc (RFC 5321 section 7.2),
    which are dropped.  A Message-ID (RFC 6409 section 8.3) and a Date
    (section 8.2) are added only when missing, and nothing else is
    changed.

    The added Message-ID and Date go after the submitted fields rather
    than before them.  The top of the header belongs to the trace fields,
    which RFC 5322 section 3.6 asks to keep in blocks at the start of the
    message: a Date placed there would come between our Received field
    and the trace fields the message already has.  Either way the
    submitted fields keep their bytes and their order, which is what a
    DKIM signature over them needs.

    @param header: the header section as submitted.
    @param trace: how the message arrived.
    @param now: seconds since the epoch, for the Received and Date fields.
    @param messageIDHost: the fully qualified name to end a new
        Message-ID with.
    @return: the header section, ending with the empty line that
        separates it from the body.
    @raise ValueError: when C{messageIDHost} is not a domain name.
    """
    _require(isDomain(messageIDHost), "Message-ID host")
    parts = [receivedField(trace, now)]
    parts.extend(
        raw
        for name, raw in header.fields
        if name.lower() not in _DROPPED_FIELDS
    )

    if not header.count("Message-ID"):
        messageID = makeMessageID(messageIDHost, now)
        parts.append(f"Message-ID: {messageID}\r\n".encode("ascii"))
    if not header.count("Date"):
        parts.append(f"Date: {formatDate(now)}\r\n".encode("ascii"))

    parts.append(b"\r\n")
    return b"".join(parts)
