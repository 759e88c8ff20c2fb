# -*- test-case-name: tests.test_senders -*-
"""
Which envelope senders an authenticated user may use.

A user's permissions are a set of entries, each one of:

  - an exact address, C{alice@example.org};
  - a domain wildcard, C{@example.org}: any mailbox of that domain, not of
    its subdomains;
  - C{*}: any sender at all.

Matching follows what Postfix, OpenSMTPD, maddy and LDAP's
C{caseIgnoreIA5Match} all do rather than the letter of RFC 5321 section
2.4: local parts compare without regard to case.  Domains compare without
regard to case too, as A-labels, so an entry may spell an internationalised
domain either way.  A quoted local part is compared by its exact text, case
included.  A detail after the delimiter (C{alice+lists}) is ignored unless
the entry itself contains the delimiter, which is OpenSMTPD's rule.

The null sender is never looked up here: every user may use it (RFC 6409
section 3.2), and the protocol does not ask.

A sender map file gives each user a line of entries; see L{SenderMapFile}.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import ClassVar

from twisted.internet.defer import (
    Deferred,
    FirstError,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from msagate._watched import FileFormatError, WatchedFile
from msagate.address import (
    AddressError,
    Mailbox,
    isAddressLiteral,
    isDomain,
    parseMailbox,
)
from msagate.errors import TemporaryAuthFailure
from msagate.interfaces import ISenderSource

# The rules for a user that no map lists (see defaultPermissions).
DEFAULTS = ("login", "none")

# Characters that may separate a local part from its detail: atext that is
# neither a letter nor a digit, since those fold with the local part's case.
_DELIMITERS = "!#$%&'*+-/=?^_`{|}~"

# One entry of a map line: quoted strings may hold commas and spaces.
_TOKEN = re.compile(
    r'(?P<entry>(?:"(?:[^"\\]|\\.)*"|[^\s,"])+)|[\s,]+|(?P<stray>.)'
)


@dataclass(frozen=True)
class SenderPermissions:
    """
    The senders one user may use, already normalised for matching.

    Build it with L{fromEntries}; combine two with C{|}, which permits what
    either permits.

    @ivar addresses: the exact addresses, as (local part, domain) pairs;
        the local part is lower-cased unless quoted, the domain is a
        lower-case A-label.
    @ivar detailed: the exact addresses that also permit a detail, as
        (delimiter, local part, domain) triples.
    @ivar domains: the domains any of whose mailboxes is permitted.
    @ivar anySender: whether every sender is permitted.
    @cvar NOBODY: the permissions that permit no address.
    """

    addresses: frozenset[tuple[str, str]] = frozenset()
    detailed: frozenset[tuple[str, str, str]] = frozenset()
    domains: frozenset[str] = frozenset()
    anySender: bool = False

    NOBODY: ClassVar[SenderPermissions]

    @classmethod
    def fromEntries(
        cls, entries: Iterable[str], detailDelimiter: str = "+"
    ) -> SenderPermissions:
        """
        Build permissions from entries as an operator writes them.

        @param entries: exact addresses, C{@domain} wildcards or C{*}.
        @param detailDelimiter: the character that starts a detail in a
            local part, or C{""} to match local parts whole.
        @return: the permissions.
        @raise ValueError: when the delimiter is not a single punctuation
            character of C{atext}, or an entry is malformed; the message
            names the entry.
        """
        checkDelimiter(detailDelimiter)
        entries = list(entries)
        anySender = "*" in entries
        domains = frozenset(
            _entryDomain(entry, entry[1:])
            for entry in entries
            if entry.startswith("@")
        )

        addresses = frozenset(
            _entryAddress(entry)
            for entry in entries
            if entry != "*" and not entry.startswith("@")
        )
        detailed = frozenset(
            (detailDelimiter, local, domain)
            for local, domain in addresses
            if _takesDetail(local, detailDelimiter)
        )
        return cls(addresses, detailed, domains, anySender)

    def __or__(self, other: object) -> SenderPermissions:
        """
        @return: the permissions that permit what either side permits, each
            entry keeping the detail rule it was built with.
        """
        if not isinstance(other, SenderPermissions):
            return NotImplemented
        return SenderPermissions(
            self.addresses | other.addresses,
            self.detailed | other.detailed,
            self.domains | other.domains,
            self.anySender or other.anySender,
        )

    def permits(self, mailbox: Mailbox) -> bool:
        """
        Whether the user may use C{mailbox} as a sender.

        @param mailbox: a sender from the envelope or a header field; never
            the null sender.
        @return: L{True} when an entry matches it.
        """
        domain = _askedDomain(mailbox.domain)
        local = _localKey(mailbox.localPart)
        if self.anySender or domain in self.domains:
            return True

        if (local, domain) in self.addresses:
            return True

        return any(
            entryDomain == domain
            and _withoutDetail(local, delimiter) == entryLocal
            for delimiter, entryLocal, entryDomain in self.detailed
        )


SenderPermissions.NOBODY = SenderPermissions()


@implementer(ISenderSource)
class LoginSenderSource:
    """
    Sender permissions without a map: the default rule alone.

    @ivar default: C{"login"} to let a user whose login name is an address
        send as that address, C{"none"} to allow only the null sender.
    @ivar detailDelimiter: the detail delimiter applied to the login.
    """

    def __init__(
        self, default: str = "login", detailDelimiter: str = "+"
    ) -> None:
        """
        @raise ValueError: for an unknown C{default} or a bad delimiter.
        """
        _checkDefault(default)
        checkDelimiter(detailDelimiter)
        self.default = default
        self.detailDelimiter = detailDelimiter

    def sendersFor(self, user: str) -> Deferred[SenderPermissions]:
        """
        @param user: the canonical user name.
        @return: a L{Deferred} that has already fired with the user's
            permissions.
        """
        return succeed(
            defaultPermissions(user, self.default, self.detailDelimiter)
        )


@implementer(ISenderSource)
class SenderMapFile:
    """
    Sender permissions read from a file that is reloaded when it changes.

    The file holds one line per user::

        # user: entries, separated by commas and/or white space
        alice@example.org: alice@example.org, alice.smith@example.org
        bob: bob@example.org @example.net

    Blank lines are ignored, and so is everything from a C{#} that starts
    an entry or the line to the end of the line (a C{#} inside an address
    is part of it).  User names compare exactly and may not hold white
    space or a colon.  A user listed twice makes the file unusable.  A
    user's line replaces the default rule: list the login address too if
    the user should keep it.  A line with no entries allows only the null
    sender.

    @ivar path: the file's path.
    @ivar default: the rule for users with no line, as for
        L{LoginSenderSource}.
    @ivar detailDelimiter: the detail delimiter for every entry.
    """

    def __init__(
        self,
        path: str,
        pool: ThreadPool,
        reactor: IReactorFromThreads,
        default: str = "login",
        detailDelimiter: str = "+",
    ) -> None:
        """
        @param path: the sender map file.
        @param pool: the started thread pool that reads it.
        @param reactor: the reactor that receives the results.
        @param default: C{"login"} or C{"none"}.
        @param detailDelimiter: a punctuation character, or C{""}.
        @raise ValueError: for an unknown C{default} or a bad delimiter.
        """
        _checkDefault(default)
        checkDelimiter(detailDelimiter)
        self.path = path
        self.default = default
        self.detailDelimiter = detailDelimiter

        self._pool = pool
        self._reactor = reactor
        self._watched = WatchedFile(path, self._parse)

    def load(self) -> None:
        """
        Read the file now, so that start-up fails on a file it cannot use.

        @raise OSError: when the file cannot be read.
        @raise FileFormatError: when it does not parse.
        """
        self._watched.load()

    def sendersFor(self, user: str) -> Deferred[SenderPermissions]:
        """
        Look up C{user}'s permissions, reloading the file if it changed.

        @param user: the canonical user name.
        @return: a L{Deferred} firing with the permissions, or failing with
            L{TemporaryAuthFailure} when the file has never been read and
            cannot be now.
        """
        return deferToThreadPool(self._reactor, self._pool, self._lookUp, user)

    def _lookUp(self, user: str) -> SenderPermissions:
        try:
            senders = self._watched.current()
        except (OSError, FileFormatError) as error:
            raise TemporaryAuthFailure(
                f"sender map {self.path} cannot be used: {error}"
            ) from error

        found = senders.get(user)
        if found is None:
            return defaultPermissions(user, self.default, self.detailDelimiter)
        return found

    def _parse(self, data: bytes) -> Mapping[str, SenderPermissions]:
        return parseSenderMap(data, self.detailDelimiter)


@implementer(ISenderSource)
class UnitedSenderSource:
    """
    The senders of several sources together: a user may use what any of
    them permits (the map and the directory, say).  When one cannot
    answer, the whole answer fails.
    """

    def __init__(self, sources: Sequence[ISenderSource]) -> None:
        self.sources = tuple(sources)

    def sendersFor(self, user: str) -> Deferred[SenderPermissions]:
        """
        @param user: the canonical user name.
        @return: a L{Deferred} firing with the union of every source's
            permissions.
        """
        asked = [
            maybeDeferred(source.sendersFor, user) for source in self.sources
        ]
        united = gatherResults(asked, consumeErrors=True)
        united.addErrback(_firstFailure)
        return united.addCallback(lambda found: reduce(operator.or_, found))


def _firstFailure(failure: Failure) -> Failure:
    # gatherResults wraps the failure of the source that could not answer.
    if isinstance(failure.value, FirstError):
        return failure.value.subFailure
    return failure


def parseSenderMap(
    data: bytes, detailDelimiter: str = "+"
) -> dict[str, SenderPermissions]:
    """
    Parse the contents of a sender map file (see L{SenderMapFile}).

    @param data: the file's contents, UTF-8.
    @param detailDelimiter: the detail delimiter for every entry.
    @return: each listed user's permissions.
    @raise FileFormatError: naming the first line that cannot be used.
    """
    senders: dict[str, SenderPermissions] = {}
    firstLines: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        parsed = _parseLine(number, raw, detailDelimiter)
        if parsed is None:
            continue

        user, permissions = parsed
        if user in senders:
            raise FileFormatError(
                number,
                f"user {user!r} is listed again "
                f"(first on line {firstLines[user]})",
            )
        senders[user], firstLines[user] = permissions, number
    return senders


def defaultPermissions(
    user: str, default: str, detailDelimiter: str = "+"
) -> SenderPermissions:
    """
    The permissions of a user that no map lists.

    @param user: the canonical user name.
    @param default: C{"login"} to permit the login name when it is an
        address (and, like any exact entry, its details); C{"none"} to
        permit nothing but the null sender.
    @param detailDelimiter: the detail delimiter.
    @return: the permissions.
    """
    if default == "none" or user.startswith("@") or user == "*":
        return SenderPermissions.NOBODY

    try:
        return SenderPermissions.fromEntries([user], detailDelimiter)
    except ValueError:
        return SenderPermissions.NOBODY


def _parseLine(
    number: int, raw: bytes, detailDelimiter: str
) -> tuple[str, SenderPermissions] | None:
    try:
        line = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise FileFormatError(number, "not UTF-8") from None
    if not line or line.startswith("#"):
        return None

    user, colon, rest = line.partition(":")
    user = user.strip()
    if not colon:
        raise FileFormatError(number, "no colon after the user name")
    if not user or any(c.isspace() for c in user):
        raise FileFormatError(number, "malformed user name")

    try:
        entries = _splitEntries(rest)
        return user, SenderPermissions.fromEntries(entries, detailDelimiter)
    except ValueError as error:
        raise FileFormatError(number, str(error)) from None


def _splitEntries(text: str) -> list[str]:
    entries = []
    for match in _TOKEN.finditer(text):
        entry = match.group("entry")
        if match.group("stray"):
            raise ValueError("unterminated quoted string")
        if entry and entry.startswith("#"):
            break
        if entry:
            entries.append(entry)
    return entries


def _checkDefault(default: str) -> None:
    if default not in DEFAULTS:
        raise ValueError(f"unknown default {default!r}: use login or none")


def checkDelimiter(delimiter: str) -> None:
    """
    @raise ValueError: unless C{delimiter} is empty or one punctuation
        character that may appear in a local part.
    """
    if len(delimiter) > 1 or (delimiter and delimiter not in _DELIMITERS):
        raise ValueError(
            f"detail delimiter {delimiter!r} is not one punctuation "
            f"character of {_DELIMITERS}"
        )


def _entryAddress(entry: str) -> tuple[str, str]:
    local, at, domain = entry.rpartition("@")
    if not at or not local:
        raise ValueError(f"malformed sender entry {entry!r}")
    if local == "*":
        # A valid mailbox, but surely meant as a wildcard.
        raise ValueError(f"write @domain, not {entry!r}, for a whole domain")

    domain = _entryDomain(entry, domain)
    try:
        mailbox = parseMailbox(f"{local}@{domain}")
    except AddressError as error:
        problem = f"malformed sender entry {entry!r}: {error}"
        raise ValueError(problem) from None
    return _localKey(mailbox.localPart), domain


def _entryDomain(entry: str, domain: str) -> str:
    if isAddressLiteral(domain):
        return domain.lower()

    try:
        aLabels = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        aLabels = ""
    if not isDomain(aLabels):
        raise ValueError(f"malformed domain in sender entry {entry!r}")
    return aLabels


def _askedDomain(domain: str) -> str:
    # Envelope domains are ASCII; a U-label from elsewhere gets the same
    # A-label form as the entries.
    if domain.isascii():
        return domain.lower()
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return ""


def _localKey(local: str) -> str:
    return local if local.startswith('"') else local.lower()


def _takesDetail(local: str, delimiter: str) -> bool:
    quoted = local.startswith('"')
    return bool(delimiter) and not quoted and delimiter not in local


def _withoutDetail(local: str, delimiter: str) -> str:
    if local.startswith('"'):
        return local
    return local.partition(delimiter)[0]
