"""
Tests for L{msagate.senders}: matching sender entries, the sender map file
and the default rule.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyObject

from msagate._watched import FileFormatError
from msagate.address import Mailbox, parseMailbox
from msagate.errors import TemporaryAuthFailure
from msagate.interfaces import ISenderSource
from msagate.senders import (
    LoginSenderSource,
    SenderMapFile,
    SenderPermissions,
    UnitedSenderSource,
    defaultPermissions,
    parseSenderMap,
)
from msagate.testing import StaticSenderSource, ThreadResults


def resultOf(deferred: Deferred[Any], reactor: ThreadResults) -> Any:
    """
    Run the pool thread's answer and return what C{deferred} fired with,
    raising its failure's exception.
    """
    return reactor.resultOf(deferred)


def writeMap(path: str, text: str, stamp: int) -> None:
    """
    Write a sender map and give it a modification time of its own, so that
    a rewrite is seen however coarse the file system's clock is.
    """
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    os.utime(path, ns=(stamp * 10**9, stamp * 10**9))


def mailbox(text: str) -> Mailbox:
    """
    Parse C{text} as the protocol would parse a sender.
    """
    return parseMailbox(text)


# (entries, delimiter, asked-for sender, permitted?)
PERMITS = [
    # SUB-16: an exact address, and nobody else.
    (["alice@example.org"], "+", "alice@example.org", True),
    (["alice@example.org"], "+", "bob@example.org", False),
    (["alice@example.org"], "+", "alice@example.net", False),
    # SEC-6: domains and local parts ignore case.
    (["alice@example.org"], "+", "Alice@EXAMPLE.Org", True),
    (["ALICE@Example.ORG"], "+", "alice@example.org", True),
    # SEC-6: a domain wildcard covers that domain and not its subdomains.
    (["@example.org"], "+", "anyone@example.org", True),
    (["@example.org"], "+", "anyone@EXAMPLE.ORG", True),
    (["@example.org"], "+", "anyone@mail.example.org", False),
    (["@example.org"], "+", "anyone@badexample.org", False),
    (["@mail.example.org"], "+", "anyone@example.org", False),
    # A detail is ignored, unless the entry has the delimiter itself.
    (["alice@example.org"], "+", "alice+lists@example.org", True),
    (["alice@example.org"], "+", "Alice+Lists@example.org", True),
    (["alice@example.org"], "+", "alice+a+b@example.org", True),
    (["alice@example.org"], "+", "alicex@example.org", False),
    (["alice@example.org"], "+", "+alice@example.org", False),
    (["alice@example.org"], "-", "alice-lists@example.org", True),
    (["alice@example.org"], "-", "alice+lists@example.org", False),
    (["alice+lists@example.org"], "+", "alice+lists@example.org", True),
    (["alice+lists@example.org"], "+", "alice+other@example.org", False),
    (["alice+lists@example.org"], "+", "alice@example.org", False),
    (["alice+lists@example.org"], "+", "alice+lists+x@example.org", False),
    # An empty delimiter matches local parts whole.
    (["alice@example.org"], "", "alice+lists@example.org", False),
    (["alice+lists@example.org"], "", "alice+lists@example.org", True),
    # '*' permits any sender.
    (["*"], "+", "ceo@elsewhere.example", True),
    # IDNA: an entry in U-labels equals the envelope's A-labels.
    (["alice@bücher.example"], "+", "alice@xn--bcher-kva.example", True),
    (["@BÜCHER.example"], "+", "bob@XN--BCHER-KVA.example", True),
    (["@xn--bcher-kva.example"], "+", "bob@xn--bcher-kva.example", True),
    (["@bücher.example"], "+", "bob@bucher.example", False),
    # Quoted local parts compare by their exact text.
    (['"alice smith"@example.org'], "+", '"alice smith"@example.org', True),
    (['"alice smith"@example.org'], "+", '"Alice Smith"@example.org', False),
    (['"alice"@example.org'], "+", "alice@example.org", False),
    (["alice@example.org"], "+", '"alice"@example.org', False),
    (['"a+b"@example.org'], "+", '"a+b"@example.org', True),
    (["a@example.org"], "+", '"a+b"@example.org', False),
    # Address literals compare as text, without case.
    (["alice@[IPv6:2001:db8::1]"], "+", "alice@[ipv6:2001:db8::1]", True),
    # No entries: nothing but the null sender, which is not asked.
    ([], "+", "alice@example.org", False),
]


@pytest.mark.parametrize("entries, delimiter, sender, expected", PERMITS)
def test_permits(
    entries: list[str], delimiter: str, sender: str, expected: bool
) -> None:
    """
    Each entry form permits exactly the senders the matching rules give
    (SUB-16, SEC-6).
    """
    permissions = SenderPermissions.fromEntries(entries, delimiter)

    assert permissions.permits(mailbox(sender)) is expected


def test_permitsUnicodeDomainAsked() -> None:
    """
    A sender whose domain is spelt in U-labels matches the same entries as
    its A-label form (SEC-6).
    """
    permissions = SenderPermissions.fromEntries(["@xn--bcher-kva.example"])

    assert permissions.permits(Mailbox("bob", "Bücher.example"))
    assert not permissions.permits(Mailbox("bob", "b\udcfccher.example"))


def test_detailedEntries() -> None:
    """
    Only entries without the delimiter and without quotes are recorded as
    permitting a detail.
    """
    permissions = SenderPermissions.fromEntries(
        ["alice@example.org", "bob+x@example.org", '"c"@example.org'], "+"
    )

    assert permissions.detailed == {("+", "alice", "example.org")}
    assert (
        SenderPermissions.fromEntries(["a@example.org"], "").detailed == set()
    )


def test_nobody() -> None:
    """
    NOBODY permits no address at all and equals an empty entry list
    (SUB-16).
    """
    nobody = SenderPermissions.NOBODY

    assert not nobody.permits(mailbox("alice@example.org"))
    assert nobody == SenderPermissions.fromEntries([])


@pytest.mark.parametrize(
    "sender", ["alice@example.org", "alice+x@example.org", "bob@example.net"]
)
def test_composition(sender: str) -> None:
    """
    C{a | b} permits what either side permits, each entry keeping its own
    detail rule (SUB-16).
    """
    left = SenderPermissions.fromEntries(["alice@example.org"])
    right = SenderPermissions.fromEntries(["@example.net"], "")
    both = left | right

    assert both.permits(mailbox(sender))
    assert both == right | left
    assert (left | SenderPermissions.NOBODY) == left


def test_compositionKeepsDetailRules() -> None:
    """
    Combining permissions built with different delimiters keeps each
    side's rule for its own entries.
    """
    plus = SenderPermissions.fromEntries(["alice@example.org"], "+")
    minus = SenderPermissions.fromEntries(["bob@example.org"], "-")
    both = plus | minus

    assert both.permits(mailbox("alice+x@example.org"))
    assert not both.permits(mailbox("alice-x@example.org"))
    assert both.permits(mailbox("bob-x@example.org"))
    assert not both.permits(mailbox("bob+x@example.org"))


def test_compositionAnySender() -> None:
    """
    '*' on either side of C{|} permits any sender.
    """
    anyone = SenderPermissions.fromEntries(["*"])

    assert (SenderPermissions.NOBODY | anyone).anySender
    assert (anyone | SenderPermissions.NOBODY).permits(mailbox("x@y.example"))


def test_orWithOtherType() -> None:
    """
    C{|} with something that is not permissions is a TypeError.
    """
    with pytest.raises(TypeError):
        SenderPermissions.NOBODY | {"alice@example.org"}  # noqa: B018


def test_frozen() -> None:
    """
    Permissions cannot be changed once built.
    """
    permissions = SenderPermissions.fromEntries(["alice@example.org"])

    with pytest.raises(AttributeError):
        permissions.anySender = True  # type: ignore[misc]


@pytest.mark.parametrize(
    "entry",
    [
        "alice",
        "@",
        "alice@",
        "@example..org",
        "alice@example.org.",
        "alice@@example.org",
        "al ice@example.org",
        "**",
        "*@example.org",
        "@*.example.org",
        "alice@exa_mple.org",
        '"alice@example.org',
        "ålice@example.org",
        "a" * 65 + "@example.org",
        "alice@[192.0.2.300]",
        "",
    ],
)
def test_fromEntriesMalformed(entry: str) -> None:
    """
    A malformed entry raises ValueError naming that entry.
    """
    with pytest.raises(ValueError) as raised:
        SenderPermissions.fromEntries(["bob@example.org", entry])

    assert repr(entry) in str(raised.value)


@pytest.mark.parametrize("delimiter", ["++", "a", "7", ".", "@", " ", '"'])
def test_fromEntriesBadDelimiter(delimiter: str) -> None:
    """
    A delimiter that is not one punctuation character of atext is refused.
    """
    with pytest.raises(ValueError, match="delimiter"):
        SenderPermissions.fromEntries(["alice@example.org"], delimiter)


LOCAL_PARTS = st.from_regex(
    r"[A-Za-z0-9!#$%&'*/=?^_`{|}~-]{1,20}", fullmatch=True
).filter(lambda local: local != "*")


@given(local=LOCAL_PARTS, upper=st.booleans())
def test_entryPermitsItselfInAnyCase(local: str, upper: bool) -> None:
    """
    Every exact entry permits its own address, whatever the case of the
    asked-for spelling (SEC-6).
    """
    permissions = SenderPermissions.fromEntries([f"{local}@example.org"])
    asked = local.upper() if upper else local.lower()

    assert permissions.permits(Mailbox(asked, "Example.Org"))
    assert permissions.permits(Mailbox(f"{asked}+tag", "example.org"))


# SenderMapFile and its parser.

MAP = """\
# Senders of example.org
alice@example.org: alice@example.org, alice.smith@example.org @example.net

bob:bob@example.org,,bob@example.com   # Bob's addresses
  carol : carol@example.org\t"carol jones"@example.org
a#b@example.org: a#b@example.org
dave:
"""


def test_parseSenderMap() -> None:
    """
    Comments, blank lines, commas and white space separate lines and
    entries as documented; a '#' inside an address is kept (SUB-16).
    """
    senders = parseSenderMap(MAP.encode("utf-8"))

    assert set(senders) == {
        "alice@example.org",
        "bob",
        "carol",
        "a#b@example.org",
        "dave",
    }
    assert senders["alice@example.org"] == SenderPermissions.fromEntries(
        ["alice@example.org", "alice.smith@example.org", "@example.net"]
    )
    assert senders["bob"] == SenderPermissions.fromEntries(
        ["bob@example.org", "bob@example.com"]
    )

    assert senders["carol"].permits(mailbox('"carol jones"@example.org'))
    assert senders["a#b@example.org"].permits(mailbox("a#b@example.org"))
    assert senders["dave"] == SenderPermissions.NOBODY


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("alice: a@example.org\nalice: b@example.org\n", 2, "line 1"),
        ("alice: a@example.org\n\n# x\nAlice: a@x.org\nalice: b@x.org", 5, ""),
        ("alice a@example.org\n", 1, "colon"),
        (": a@example.org\n", 1, "user name"),
        ("al ice: a@example.org\n", 1, "user name"),
        ("ok: a@example.org\nbad: nobody\n", 2, "'nobody'"),
        ('bad: "a b@example.org\n', 1, "quoted"),
        ("ok: a@example.org\nbad: a@\xe9.org\n", 2, "not UTF-8"),
    ],
)
def test_parseSenderMapErrors(text: str, line: int, problem: str) -> None:
    """
    A line the parser cannot use is a FileFormatError naming its number;
    a user listed twice is one of them.
    """
    data = text.encode("latin-1")

    with pytest.raises(FileFormatError) as raised:
        parseSenderMap(data)

    assert raised.value.line == line
    assert problem in raised.value.problem


def test_parseSenderMapDelimiter() -> None:
    """
    The map's delimiter applies to every entry it lists.
    """
    senders = parseSenderMap(b"alice: alice@example.org\n", "-")

    assert senders["alice"].permits(mailbox("alice-x@example.org"))
    assert not senders["alice"].permits(mailbox("alice+x@example.org"))


@pytest.mark.parametrize(
    "user, default, sender, expected",
    [
        ("alice@example.org", "login", "alice@example.org", True),
        ("alice@example.org", "login", "ALICE@example.org", True),
        ("alice@example.org", "login", "alice+x@example.org", True),
        ("alice@example.org", "login", "bob@example.org", False),
        ("alice@example.org", "none", "alice@example.org", False),
        ("alice", "login", "alice@example.org", False),
        ("@example.org", "login", "alice@example.org", False),
        ("*", "login", "alice@example.org", False),
        ("al ice@example.org", "login", "al@example.org", False),
    ],
)
def test_defaultPermissions(
    user: str, default: str, sender: str, expected: bool
) -> None:
    """
    The default rule lets a login that is an address send as itself and
    never turns a login into a wildcard (SUB-16, SEC-6).
    """
    permissions = defaultPermissions(user, default)

    assert permissions.permits(mailbox(sender)) is expected


def test_sendersForListedUser(
    tmp_path: Any, pool: ThreadPool, reactor: ThreadResults
) -> None:
    """
    A listed user gets exactly the entries of their line, which replace
    the login default (SUB-16).
    """
    path = str(tmp_path / "senders")
    writeMap(path, "alice@example.org: @example.net\n", 1)
    source = SenderMapFile(path, pool, reactor)

    permissions = resultOf(source.sendersFor("alice@example.org"), reactor)

    assert permissions.permits(mailbox("x@example.net"))
    assert not permissions.permits(mailbox("alice@example.org"))


@pytest.mark.parametrize(
    "default, user, expected",
    [
        ("login", "bob@example.org", True),
        ("none", "bob@example.org", False),
        ("login", "bob", False),
        ("login", "Bob@example.org", True),
    ],
)
def test_sendersForUnlistedUser(
    tmp_path: Any,
    pool: ThreadPool,
    reactor: ThreadResults,
    default: str,
    user: str,
    expected: bool,
) -> None:
    """
    A user with no line gets the default rule: their login when it is an
    address, or nothing but the null sender (SUB-7, SUB-16).
    """
    path = str(tmp_path / "senders")
    writeMap(path, "alice@example.org: alice@example.org\n", 1)
    source = SenderMapFile(path, pool, reactor, default=default)

    permissions = resultOf(source.sendersFor(user), reactor)

    assert permissions.permits(mailbox("bob@example.org")) is expected


def test_userNamesCompareExactly(
    tmp_path: Any, pool: ThreadPool, reactor: ThreadResults
) -> None:
    """
    A user name differing only in case is not the listed user.
    """
    path = str(tmp_path / "senders")
    writeMap(path, "alice: @example.net\n", 1)
    source = SenderMapFile(path, pool, reactor)

    permissions = resultOf(source.sendersFor("Alice"), reactor)

    assert permissions == SenderPermissions.NOBODY


def test_reloadOnChange(
    tmp_path: Any, pool: ThreadPool, reactor: ThreadResults
) -> None:
    """
    A rewritten map is in force from the next lookup on.
    """
    path = str(tmp_path / "senders")
    writeMap(path, "alice: alice@example.org\n", 1)
    source = SenderMapFile(path, pool, reactor)
    source.load()

    writeMap(path, "alice: alice@example.net\n", 2)
    permissions = resultOf(source.sendersFor("alice"), reactor)

    assert permissions.permits(mailbox("alice@example.net"))
    assert not permissions.permits(mailbox("alice@example.org"))


def test_badFileKeepsOldMap(
    tmp_path: Any, pool: ThreadPool, reactor: ThreadResults
) -> None:
    """
    A new file that does not parse leaves the previous map in force and
    is logged with its line number.
    """
    path = str(tmp_path / "senders")
    writeMap(path, "alice: alice@example.org\n", 1)
    source = SenderMapFile(path, pool, reactor)
    source.load()

    writeMap(path, "alice: alice@example.net\nalice: x@example.net\n", 2)
    with capturedLogs() as events:
        permissions = resultOf(source.sendersFor("alice"), reactor)

    assert permissions.permits(mailbox("alice@example.org"))
    assert [event.get("line") for event in events] == [2]


def test_unreadableNeverLoaded(
    tmp_path: Any, pool: ThreadPool, reactor: ThreadResults
) -> None:
    """
    A map that has never been read and cannot be makes the lookup a
    TemporaryAuthFailure.
    """
    source = SenderMapFile(str(tmp_path / "missing"), pool, reactor)

    with pytest.raises(TemporaryAuthFailure, match="missing"):
        resultOf(source.sendersFor("alice"), reactor)


def test_malformedNeverLoaded(
    tmp_path: Any, pool: ThreadPool, reactor: ThreadResults
) -> None:
    """
    A map that has never parsed makes the lookup a TemporaryAuthFailure
    naming the line.
    """
    path = str(tmp_path / "senders")
    writeMap(path, "alice: nobody\n", 1)
    source = SenderMapFile(path, pool, reactor)

    with pytest.raises(TemporaryAuthFailure, match="line 1"):
        resultOf(source.sendersFor("alice"), reactor)


def test_load(tmp_path: Any, pool: ThreadPool, reactor: ThreadResults) -> None:
    """
    load() raises OSError for a missing file and FileFormatError for a
    malformed one, so that start-up stops clearly.
    """
    path = str(tmp_path / "senders")
    source = SenderMapFile(path, pool, reactor)
    with pytest.raises(OSError):
        source.load()

    writeMap(path, "alice\n", 1)
    with pytest.raises(FileFormatError):
        source.load()


@pytest.mark.parametrize("default", ["", "login ", "all", "None"])
def test_badDefault(
    default: str, pool: ThreadPool, reactor: ThreadResults
) -> None:
    """
    Only 'login' and 'none' are default rules.
    """
    with pytest.raises(ValueError, match="default"):
        SenderMapFile("senders", pool, reactor, default=default)
    with pytest.raises(ValueError, match="default"):
        LoginSenderSource(default=default)


def test_badDelimiterForSources(
    pool: ThreadPool, reactor: ThreadResults
) -> None:
    """
    The sources refuse a bad delimiter when they are built, not at the
    first login.
    """
    with pytest.raises(ValueError, match="delimiter"):
        SenderMapFile("senders", pool, reactor, detailDelimiter="ab")
    with pytest.raises(ValueError, match="delimiter"):
        LoginSenderSource(detailDelimiter="ab")


@pytest.mark.parametrize(
    "default, sender, expected",
    [
        ("login", "alice@example.org", True),
        ("login", "alice-x@example.org", True),
        ("login", "bob@example.org", False),
        ("none", "alice@example.org", False),
    ],
)
def test_loginSenderSource(default: str, sender: str, expected: bool) -> None:
    """
    Without a map the default rule alone decides (SUB-16).
    """
    source = LoginSenderSource(default, detailDelimiter="-")

    permissions = source.sendersFor("alice@example.org")

    outcome: list[SenderPermissions] = []
    permissions.addCallback(outcome.append)
    assert outcome[0].permits(mailbox(sender)) is expected


def test_interfaces(pool: ThreadPool, reactor: ThreadResults) -> None:
    """
    Both sources provide ISenderSource.
    """
    assert verifyObject(ISenderSource, LoginSenderSource())
    assert verifyObject(ISenderSource, SenderMapFile("senders", pool, reactor))


class _Unavailable:
    """
    A sender source whose backend is down.
    """

    def sendersFor(self, user: str) -> Deferred[SenderPermissions]:
        failed: Deferred[SenderPermissions] = Deferred()
        failed.errback(TemporaryAuthFailure("directory down"))
        return failed


def test_unitedSources() -> None:
    """
    United sources permit what any of them permits: the map's entries and
    the directory's together; one that cannot answer fails the whole with
    its own temporary failure.
    """
    united = UnitedSenderSource(
        [
            StaticSenderSource({"alice": ["alice@example.org"]}),
            LoginSenderSource("login"),
            StaticSenderSource({"alice": ["@example.net"]}),
        ]
    )
    assert verifyObject(ISenderSource, united)
    found: list[Any] = []
    united.sendersFor("alice").addBoth(found.append)
    [permissions] = found
    for allowed in ("alice@example.org", "anyone@example.net"):
        assert permissions.permits(parseMailbox(allowed))
    assert not permissions.permits(parseMailbox("bob@example.org"))

    broken = UnitedSenderSource([LoginSenderSource("login"), _Unavailable()])
    broken.sendersFor("alice").addBoth(found.append)
    assert found[-1].check(TemporaryAuthFailure)
