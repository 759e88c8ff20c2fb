"""
Tests for L{msagate.address}: mailbox values and the envelope grammar.
"""

from __future__ import annotations

import pytest

from msagate.address import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    MAX_PATH,
    AddressError,
    Mailbox,
    decodeXtext,
    isAddressLiteral,
    isDomain,
    isHelloArgument,
    parseMailbox,
    parseParameters,
    parsePath,
    splitPathArgument,
)


def domainOfLength(length: int) -> str:
    """
    Return a valid domain name of exactly C{length} octets, in labels of at
    most 63 octets.
    """
    labels = []
    remaining = length
    while remaining > 0:
        size = min(63, remaining)
        if remaining - size == 1:
            size -= 1
        labels.append("d" * size)
        remaining -= size + 1
    domain = ".".join(labels)
    assert len(domain) == length
    return domain


def test_domainOfLengthHelper() -> None:
    """
    The helper builds domains of the asked length that isDomain accepts.
    """
    for length in (1, 63, 64, 65, 127, 200, 255):
        assert isDomain(domainOfLength(length))


def test_limitsAreTheRFCValues() -> None:
    """
    The length limits are those of RFC 5321 section 4.5.3.1 (SMTP-9).
    """
    assert (MAX_LOCAL_PART, MAX_DOMAIN, MAX_PATH) == (64, 255, 256)


# parsePath


def test_nullPath() -> None:
    """
    The null path <> parses to None, so that it can never be mistaken for
    a mailbox (SUB-7).
    """
    assert parsePath("<>") is None


@pytest.mark.parametrize(
    "path, localPart, domain",
    [
        ("<alice@example.org>", "alice", "example.org"),
        ("<Mixed.Case@Example.ORG>", "Mixed.Case", "Example.ORG"),
        ("<a.b+tag@sub.example.org>", "a.b+tag", "sub.example.org"),
        ("<!#$%&'*+/=?^_`{|}~-@example.org>", "!#$%&'*+/=?^_`{|}~-", None),
        ('<"john doe"@example.org>', '"john doe"', "example.org"),
        ('<"a@b"@example.org>', '"a@b"', "example.org"),
        ('<"quote\\"d"@example.org>', '"quote\\"d"', "example.org"),
        ("<alice@[192.0.2.1]>", "alice", "[192.0.2.1]"),
        ("<alice@[IPv6:2001:db8::1]>", "alice", "[IPv6:2001:db8::1]"),
        ("<alice@[IPv6:::ffff:192.0.2.1]>", "alice", None),
        ("<alice@host-1.example>", "alice", "host-1.example"),
    ],
)
def test_parsePathAccepts(
    path: str, localPart: str, domain: str | None
) -> None:
    """
    A well-formed path parses to its mailbox, keeping the local part's case
    and quoting as sent (SMTP-27, SUB-24).
    """
    mailbox = parsePath(path)
    assert mailbox is not None
    assert mailbox.localPart == localPart
    assert mailbox.domain == (domain or path[1:-1].rpartition("@")[2])
    assert str(mailbox) == path[1:-1]


@pytest.mark.parametrize(
    "path",
    [
        "<@relay.example:alice@example.org>",
        "<@h1.example,@h2.example:alice@example.org>",
        "<@h1.example,@h2.example,@h3.example:alice@example.org>",
    ],
)
def test_sourceRouteStripped(path: str) -> None:
    """
    A source route is accepted and dropped, leaving the final mailbox
    (SMTP-29).
    """
    assert parsePath(path) == Mailbox("alice", "example.org")


@pytest.mark.parametrize(
    "path",
    [
        "<@relay.example alice@example.org>",
        "<@:alice@example.org>",
        "<@h1.example,h2.example:alice@example.org>",
        "<@h1.example,:alice@example.org>",
        "<@h_1.example:alice@example.org>",
        "<@relay.example:>",
    ],
)
def test_malformedSourceRouteRefused(path: str) -> None:
    """
    A source route that is not a list of @domain hops ended by a colon is
    refused (SUB-14).
    """
    with pytest.raises(AddressError):
        parsePath(path)


@pytest.mark.parametrize(
    "path",
    [
        "alice@example.org",
        "<alice@example.org",
        "alice@example.org>",
        "<<alice@example.org>>",
        " <alice@example.org>",
        "<alice@example.org> ",
        "<",
        ">",
        "",
    ],
)
def test_badBracketsRefused(path: str) -> None:
    """
    A path must be exactly one mailbox in one pair of angle brackets
    (SUB-14).
    """
    with pytest.raises(AddressError):
        parsePath(path)


@pytest.mark.parametrize(
    "path",
    [
        "<a@@b.example>",
        '<"x@y.example>',
        "<alice>",
        "<@example.org>",
        "<alice@>",
        "<.alice@example.org>",
        "<alice.@example.org>",
        "<al..ice@example.org>",
        "<al ice@example.org>",
        "<al(ice@example.org>",
        '<"unterminated@example.org>',
        '<"a"b@example.org>',
    ],
)
def test_malformedMailboxRefused(path: str) -> None:
    """
    Detectably illegal address syntax is refused (SUB-14).
    """
    with pytest.raises(AddressError):
        parsePath(path)


def test_localPartOf64Accepted() -> None:
    """
    A local part of 64 octets is accepted (SMTP-9).
    """
    mailbox = parsePath("<" + "l" * 64 + "@example.org>")
    assert mailbox is not None
    assert mailbox.localPart == "l" * 64


def test_quotedLocalPartOf64Accepted() -> None:
    """
    A quoted local part of 64 octets, quotes included, is accepted (SMTP-9).
    """
    localPart = '"' + "q" * 62 + '"'
    assert parsePath(f"<{localPart}@example.org>") == Mailbox(
        localPart, "example.org"
    )


@pytest.mark.parametrize("localPart", ["l" * 65, '"' + "q" * 63 + '"'])
def test_localPartOf65Refused(localPart: str) -> None:
    """
    A local part of 65 octets is refused (SMTP-9).
    """
    with pytest.raises(AddressError):
        parsePath(f"<{localPart}@example.org>")


def test_domainOf255Accepted() -> None:
    """
    A domain of 255 octets is a valid mailbox domain (SMTP-9).
    """
    domain = domainOfLength(255)
    assert parseMailbox("a@" + domain) == Mailbox("a", domain)


def test_domainOf256Refused() -> None:
    """
    A domain of 256 octets is refused (SMTP-9).
    """
    assert not isDomain(domainOfLength(256))
    with pytest.raises(AddressError):
        parseMailbox("a@" + domainOfLength(256))


def test_pathOf256Accepted() -> None:
    """
    A path of 256 octets, brackets included, is accepted (SMTP-9).
    """
    path = "<" + "l" * 64 + "@" + domainOfLength(256 - 67) + ">"
    assert len(path) == 256
    assert parsePath(path) is not None


def test_pathOf257Refused() -> None:
    """
    A path of 257 octets, brackets included, is refused (SMTP-9).
    """
    path = "<" + "l" * 64 + "@" + domainOfLength(257 - 67) + ">"
    assert len(path) == 257
    with pytest.raises(AddressError):
        parsePath(path)


def test_pathLimitCountsTheSourceRoute() -> None:
    """
    The 256-octet path limit covers a source route too, before it is
    dropped (SMTP-9).
    """
    route = "@" + domainOfLength(240) + ":"
    with pytest.raises(AddressError):
        parsePath("<" + route + "alice@example.org>")


@pytest.mark.parametrize(
    "label, ok",
    [
        ("d" * 63, True),
        ("d" * 64, False),
        ("a-b", True),
        ("-ab", False),
        ("ab-", False),
        ("a_b", False),
        ("9ab", True),
    ],
)
def test_domainLabels(label: str, ok: bool) -> None:
    """
    Domain labels are 1 to 63 letters, digits and inner hyphens; an
    underscore is refused (SMTP-26).
    """
    assert isDomain(label + ".example") is ok
    if not ok:
        with pytest.raises(AddressError):
            parsePath(f"<a@{label}.example>")


@pytest.mark.parametrize(
    "path",
    [
        "<a@b_c.example>",
        "<a@example..org>",
        "<a@.example.org>",
        "<a@example.org.>",
        "<a@exa mple.org>",
    ],
)
def test_malformedDomainRefused(path: str) -> None:
    """
    An underscore, an empty label or a space in the domain is refused
    (SMTP-26).
    """
    with pytest.raises(AddressError):
        parsePath(path)


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\r", "\x7f"])
@pytest.mark.parametrize(
    "template",
    ["<a{}b@example.org>", "<ab@exa{}mple.org>", '<"a{}b"@example.org>'],
)
def test_controlCharactersRefused(template: str, char: str) -> None:
    """
    A control character or NUL anywhere in a path is refused (SMTP-26).
    """
    with pytest.raises(AddressError):
        parsePath(template.format(char))


@pytest.mark.parametrize(
    "path",
    ["<\xfc@example.org>", "<a@b\xfccher.example>", '<"\xe9"@example.org>'],
)
def test_nonASCIIRefused(path: str) -> None:
    """
    Non-ASCII in a path is refused, since SMTPUTF8 is not offered (EXT-11,
    SMTP-26).
    """
    with pytest.raises(AddressError):
        parsePath(path)


@pytest.mark.parametrize(
    "literal",
    [
        "[192.0.2.1]",
        "[255.255.255.255]",
        "[IPv6:2001:db8::1]",
        "[IPv6:::1]",
        "[ipv6:::1]",
        "[IPv6:2001:db8:0:0:0:0:0:1]",
        "[IPv6:::ffff:192.0.2.1]",
    ],
)
def test_addressLiteralAccepted(literal: str) -> None:
    """
    IPv4 and IPv6 address literals are accepted as mailbox domains
    (SMTP-15).
    """
    assert isAddressLiteral(literal)
    assert parsePath(f"<a@{literal}>") == Mailbox("a", literal)


@pytest.mark.parametrize(
    "literal",
    [
        "[]",
        "[192.0.2]",
        "[192.0.2.256]",
        "[192.0.2.01]",
        "[ 192.0.2.1]",
        "[192.0.2.1",
        "192.0.2.1]",
        "[2001:db8::1]",
        "[IPv6:2001:db8::g]",
        "[IPv6:192.0.2.1]",
        "[IPv4:192.0.2.1]",
        "[example.org]",
    ],
)
def test_badAddressLiteralRefused(literal: str) -> None:
    """
    A malformed address literal is refused (SUB-14).
    """
    assert not isAddressLiteral(literal)
    with pytest.raises(AddressError):
        parsePath(f"<a@{literal}>")


@pytest.mark.parametrize(
    "literal",
    ["[IPv6:fe80::1%eth0]", "[IPv6:::1%a b]", "[IPv6:::1%a\x00b]"],
)
def test_addressLiteralWithZoneRefused(literal: str) -> None:
    """
    An IPv6 literal with a zone ID is refused: RFC 5321 section 4.1.3 has
    none, and the zone may hold spaces and control characters (SMTP-15,
    SMTP-26).
    """
    assert not isAddressLiteral(literal)


# Mailbox


@pytest.mark.parametrize(
    "domain, qualified",
    [
        ("example.org", True),
        ("a.b.example.org", True),
        ("localhost", False),
        ("sales", False),
        ("[192.0.2.1]", True),
        ("[IPv6:::1]", True),
    ],
)
def test_isQualified(domain: str, qualified: bool) -> None:
    """
    A mailbox is qualified when its domain is an address literal or has at
    least two labels (SUB-11).
    """
    assert Mailbox("a", domain).isQualified is qualified


def test_mailboxIsFrozen() -> None:
    """
    A mailbox is an immutable value that compares by its parts.
    """
    mailbox = Mailbox("a", "example.org")
    assert mailbox == Mailbox("a", "example.org")
    assert mailbox != Mailbox("A", "example.org")
    with pytest.raises(AttributeError):
        mailbox.localPart = "b"  # type: ignore[misc]


# isHelloArgument


@pytest.mark.parametrize(
    "argument, ok",
    [
        ("client.example.org", True),
        ("client", True),
        ("[192.0.2.7]", True),
        ("[IPv6:2001:db8::7]", True),
        ("", False),
        ("a b", False),
        ("a\nb", False),
        ("evil\nX-Injected: yes", False),
        ("bad_name.example", False),
        ("[192.0.2.300]", False),
        ("client.example.org.", False),
        ("<client.example.org>", False),
        ("\xfc.example", False),
        (domainOfLength(255), True),
        (domainOfLength(256), False),
    ],
)
def test_isHelloArgument(argument: str, ok: bool) -> None:
    """
    EHLO and HELO take a domain name or an address literal, nothing else
    (SMTP-15, HDR-8).
    """
    assert isHelloArgument(argument) is ok


# splitPathArgument


@pytest.mark.parametrize(
    "argument, keyword, path, parameters",
    [
        ("FROM:<a@example.org>", "FROM", "<a@example.org>", ""),
        ("from:<a@example.org>", "FROM", "<a@example.org>", ""),
        ("FrOm:<a@example.org>", "FROM", "<a@example.org>", ""),
        ("to:<a@example.org>", "TO", "<a@example.org>", ""),
        ("FROM:<>", "FROM", "<>", ""),
        ("FROM:<a@example.org> SIZE=10", "FROM", "<a@example.org>", "SIZE=10"),
        ("FROM:<a@x.example> A=1 B", "FROM", "<a@x.example>", "A=1 B"),
        ("FROM:<a@x.example>  SIZE=1 ", "FROM", "<a@x.example>", "SIZE=1"),
        ('TO:<"a>b"@x.example>', "TO", '<"a>b"@x.example>', ""),
        ('TO:<"a>b"@x.example> X=1', "TO", '<"a>b"@x.example>', "X=1"),
        ('TO:<"a\\">"@x.example>', "TO", '<"a\\">"@x.example>', ""),
    ],
)
def test_splitPathArgument(
    argument: str, keyword: str, path: str, parameters: str
) -> None:
    """
    MAIL and RCPT arguments split into the bracketed path and the
    parameter text; the keyword is case-insensitive and a > inside a
    quoted local part does not end the path (SMTP-27).
    """
    assert splitPathArgument(argument, keyword) == (path, parameters)


@pytest.mark.parametrize(
    "argument, keyword",
    [
        ("FROM: <a@example.org>", "FROM"),
        ("FROM :<a@example.org>", "FROM"),
        ("FROM<a@example.org>", "FROM"),
        ("TO:<a@example.org>", "FROM"),
        ("FROMX:<a@example.org>", "FROM"),
        ("FROM:a@example.org", "FROM"),
        ("FROM:", "FROM"),
        ("", "FROM"),
        ("FROM:<a@example.org", "FROM"),
        ('TO:<"a>@example.org>', "TO"),
        ("FROM:<a@example.org>SIZE=10", "FROM"),
        ('TO:<"a"@x.example>X=1', "TO"),
    ],
)
def test_splitPathArgumentRefuses(argument: str, keyword: str) -> None:
    """
    A missing or wrong keyword, a space after the colon, an unterminated
    path or no space before the parameters is refused (SMTP-28, SUB-14).
    """
    with pytest.raises(AddressError):
        splitPathArgument(argument, keyword)


# parseParameters


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", {}),
        ("SIZE=100", {"SIZE": "100"}),
        ("size=100", {"SIZE": "100"}),
        ("SIZE=1 BODY=8BITMIME", {"SIZE": "1", "BODY": "8BITMIME"}),
        ("SMTPUTF8", {"SMTPUTF8": None}),
        ("X-FOO=bar BODY=7BIT", {"X-FOO": "bar", "BODY": "7BIT"}),
        ("AUTH=<>", {"AUTH": "<>"}),
        ("AUTH=a+2Bb@example.org", {"AUTH": "a+2Bb@example.org"}),
    ],
)
def test_parseParameters(text: str, expected: dict[str, str | None]) -> None:
    """
    ESMTP parameters map upper-cased keywords to their values, or to None
    for a keyword without a value (SMTP-25).
    """
    assert parseParameters(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "SIZE=1 SIZE=2",
        "SIZE=1 size=2",
        "BODY BODY",
        "=1",
        "-X=1",
        "X_Y=1",
        "S\xcfZE=1",
        "SIZE=",
        "AUTH=a=b",
        "SIZE=1\x00",
        "SIZE=\xe9",
        "A=1  B=2",
    ],
)
def test_parseParametersRefuses(text: str) -> None:
    """
    A repeated keyword, a malformed keyword or a malformed value is refused
    (EXT-7, EXT-17).
    """
    with pytest.raises(AddressError):
        parseParameters(text)


# decodeXtext


@pytest.mark.parametrize(
    "text, decoded",
    [
        ("alice@example.org", "alice@example.org"),
        ("alice+2Bx@example.org", "alice+x@example.org"),
        ("+3D", "="),
        ("+2B2B", "+2B"),
        ("<>", "<>"),
        ("", ""),
    ],
)
def test_decodeXtext(text: str, decoded: str) -> None:
    """
    Xtext decodes each +XX to the character with that hex code (AUTH-16).
    """
    assert decodeXtext(text) == decoded


@pytest.mark.parametrize(
    "text",
    ["a+2b", "a=b", "+", "a+2", "a+ZZ", "++2B", "a b", "a\x00b", "\xe9"],
)
def test_decodeXtextRefuses(text: str) -> None:
    """
    Malformed xtext (lower-case hex, '=', a short or bad escape, a space,
    a control or non-ASCII character) is refused (AUTH-16).
    """
    with pytest.raises(AddressError):
        decodeXtext(text)
