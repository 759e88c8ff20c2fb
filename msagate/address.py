# -*- test-case-name: tests.test_address -*-
"""
Mailbox values and the envelope grammar of RFC 5321 section 4.1.2.

msagate does not offer SMTPUTF8, so every address is ASCII.  Parsing is
strict where leniency would let two programs read the same line
differently: no space after the colon of C{FROM:} and C{TO:}, no control
characters, no underscore in domain labels, and the lengths of section
4.5.3.1.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# RFC 5321 section 4.5.3.1.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_QTEXT = r"[\x20\x21\x23-\x5b\x5d-\x7e]"
_QUOTED_STRING = re.compile(rf'"(?:{_QTEXT}|\\[\x20-\x7e])*"\Z')
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_ESMTP_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")


class AddressError(ValueError):
    """
    An address or an envelope argument does not follow RFC 5321.

    Its text says what is wrong, for the operator's log.
    """


@dataclass(frozen=True)
class Mailbox:
    """
    An envelope mailbox, spelled as the client sent it.

    The local part keeps its case and its quoting (RFC 5321 section 2.4);
    comparisons that should ignore case do so explicitly.

    @ivar localPart: the local part, quoted form included.
    @ivar domain: a domain name or an address literal in brackets.
    """

    localPart: str
    domain: str

    def __str__(self) -> str:
        return f"{self.localPart}@{self.domain}"

    @property
    def isQualified(self) -> bool:
        """
        Whether the domain is fully qualified (RFC 6409 section 4.2): an
        address literal, or a name of at least two labels.
        """
        return self.domain.startswith("[") or "." in self.domain


def isDomain(text: str) -> bool:
    """
    @return: whether C{text} is a syntactically valid domain name (letters,
        digits and hyphens, labels of 1 to 63 octets, at most 255 octets).
    """
    if not text or len(text) > MAX_DOMAIN:
        return False
    return all(_LABEL.match(label) for label in text.split("."))


def isAddressLiteral(text: str) -> bool:
    """
    @return: whether C{text} is an RFC 5321 address literal such as
        C{[192.0.2.1]} or C{[IPv6:2001:db8::1]}.
    """
    if not (text.startswith("[") and text.endswith("]")):
        return False
    inner = text[1:-1]
    if "%" in inner:
        # ipaddress accepts IPv6 zone identifiers, which are free text.
        return False
    try:
        if inner[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def isHelloArgument(text: str) -> bool:
    """
    @return: whether C{text} may follow EHLO or HELO: a domain name or an
        address literal (RFC 5321 section 4.1.1.1).
    """
    return isDomain(text) or isAddressLiteral(text)


def defaultPostmaster(hostname: str) -> str:
    """
    @return: the postmaster address of the domain a server named
        C{hostname} serves: msa.example.org serves example.org, and
        example.org serves itself.
    """
    labels = hostname.split(".")
    domain = ".".join(labels[1:] if len(labels) > 2 else labels)
    return "postmaster@" + domain


def parseMailbox(text: str) -> Mailbox:
    """
    Parse C{local-part@domain}.

    @raise AddressError: when the mailbox is malformed or too long.
    """
    if not text.isascii():
        raise AddressError("non-ASCII address without SMTPUTF8")
    local, at, domain = text.rpartition("@")
    if not at:
        raise AddressError("address has no domain")
    if not (_DOT_STRING.match(local) or _QUOTED_STRING.match(local)):
        raise AddressError("malformed local part")
    if len(local) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    if not (isDomain(domain) or isAddressLiteral(domain)):
        raise AddressError("malformed domain")
    return Mailbox(local, domain)


def parsePath(text: str) -> Mailbox | None:
    """
    Parse a reverse or forward path such as C{<alice@example.org>}.

    A source route (C{<@relay.example:alice@example.org>}) is accepted and
    dropped, as RFC 5321 appendix C asks.

    @return: the mailbox, or L{None} for the null path C{<>}.
    @raise AddressError: when the path is malformed or too long.
    """
    if len(text) > MAX_PATH:
        raise AddressError("path longer than 256 octets")
    if not (text.startswith("<") and text.endswith(">")):
        raise AddressError("path is not enclosed in angle brackets")
    inner = text[1:-1]
    if not inner:
        return None
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        hops = route.split(",")
        if not colon or not all(
            hop.startswith("@") and isDomain(hop[1:]) for hop in hops
        ):
            raise AddressError("malformed source route")
    return parseMailbox(inner)


def splitPathArgument(argument: str, keyword: str) -> tuple[str, str]:
    """
    Split the argument of MAIL or RCPT into its path and its parameters.

    @param argument: what follows the verb, such as
        C{FROM:<a@example.org> SIZE=100}.
    @param keyword: C{"FROM"} or C{"TO"}.
    @return: the path in angle brackets and the parameter text.
    @raise AddressError: when the keyword or the brackets are missing, or
        a space follows the colon (RFC 5321 section 3.3).
    """
    prefix = keyword + ":"
    if argument[: len(prefix)].upper() != prefix:
        raise AddressError(f"argument does not start with {prefix}")
    rest = argument[len(prefix) :]
    if not rest.startswith("<"):
        raise AddressError(f"no path in angle brackets after {prefix}")
    path, closing, parameters = _splitAtClosingBracket(rest)
    if not closing:
        raise AddressError("unterminated path")
    if parameters and not parameters.startswith(" "):
        raise AddressError("no space between the path and its parameters")
    return path, parameters.strip(" ")


def _splitAtClosingBracket(text: str) -> tuple[str, str, str]:
    """
    Find the C{>} that closes the path, skipping quoted strings.

    @return: the path including both brackets, C{">"} or C{""} when there
        is no closing bracket, and the text after it.
    """
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return text[: index + 1], ">", text[index + 1 :]
    return text, "", ""


def parseParameters(text: str) -> dict[str, str | None]:
    """
    Parse ESMTP parameters (RFC 5321 section 4.1.2, C{esmtp-param}).

    @return: a mapping from the upper-cased keyword to its value, or
        L{None} for a keyword without a value.
    @raise AddressError: on malformed syntax or a repeated keyword.
    """
    parameters: dict[str, str | None] = {}
    for item in text.split(" ") if text else ():
        keyword, equals, value = item.partition("=")
        if not _ESMTP_KEYWORD.match(keyword):
            raise AddressError(f"malformed parameter {item!r}")
        if equals and not _ESMTP_VALUE.match(value):
            raise AddressError(f"malformed value of {keyword}")
        if keyword.upper() in parameters:
            raise AddressError(f"repeated parameter {keyword}")
        parameters[keyword.upper()] = value if equals else None
    return parameters


def decodeXtext(text: str) -> str:
    """
    Decode RFC 3461 section 4 xtext, as the AUTH= parameter carries it.

    @raise AddressError: when a C{+} is not followed by two upper-case hex
        digits, or a character outside xtext appears.
    """
    if any(c in "=" or not "\x21" <= c <= "\x7e" for c in text):
        raise AddressError("malformed xtext")
    if text.count("+") != len(_XTEXT_HEX.findall(text)):
        raise AddressError("malformed xtext")
    return _XTEXT_HEX.sub(lambda match: chr(int(match.group(1), 16)), text)
