# -*- test-case-name: tests.test_htpasswd -*-
"""
Check user names and passwords against an Apache htpasswd file.

The file is read in Apache's format: one C{user:hash} entry a line, where
anything after a second colon is ignored (nginx and Dovecot put comments or
account data there), blank lines and lines starting with C{#} are skipped,
and the first entry of a user wins.  User names are case-sensitive.

These hash formats are accepted:

  - bcrypt (C{$2y$}, C{$2b$}, C{$2a$}; C{htpasswd -B}): the password is cut
    to 72 bytes first, as Apache's C implementation does;
  - Apache MD5 (C{$apr1$}; C{htpasswd -m}, its default) and MD5-crypt
    (C{$1$});
  - SHA-256-crypt and SHA-512-crypt (C{$5$}, C{$6$}, with or without
    C{rounds=}; C{htpasswd -2}/C{-5});
  - C{{SHA}} (C{htpasswd -s}) and C{{SSHA}}.

DES crypt (C{htpasswd -d}) is refused on purpose: it ignores everything
past the eighth character of a password, so an entry for C{s3cret12} would
also let in C{s3cret12-and-anything}.  Plain-text entries are refused
too, so that a stored hash can never be used as a password.  A user whose
entry is in a refused or unknown format can never log in; each load names
such users in the log.

Reading the file and verifying a password run in a thread pool, never on
the reactor: bcrypt of cost 12 takes about a quarter of a second.  The
SHA-crypt schemes are verified in pure Python, which holds the interpreter
lock in slices of a few milliseconds, so bcrypt is the format to prefer.

An unknown user costs a bcrypt verification too, at the cost most of the
file's bcrypt entries use, so that a client cannot tell from the time taken
whether a user exists (RFC 4954 section 6).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import bcrypt
from passlib.context import CryptContext
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from msagate._watched import FileFormatError, WatchedFile
from msagate.errors import TemporaryAuthFailure

__all__ = [
    "HtpasswdChecker",
    "HtpasswdEntry",
    "HtpasswdUsers",
    "parseHtpasswd",
]

# des_crypt and plaintext are left out on purpose: see the module docstring.
_CONTEXT = CryptContext(
    schemes=[
        "bcrypt",
        "apr_md5_crypt",
        "md5_crypt",
        "sha256_crypt",
        "sha512_crypt",
        "ldap_sha1",
        "ldap_salted_sha1",
    ]
)

# libpass also recognises $2$ and crypt_blowfish's faulty $2x$.
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")

# The bcrypt implementations of Apache and libxcrypt ignore what follows.
_BCRYPT_MAX_PASSWORD = 72

# htpasswd -B writes cost 5 unless told otherwise, and no more than 17.
_DEFAULT_BCRYPT_COST = 5
_MAX_DUMMY_BCRYPT_COST = 17

_ACCEPTED = "accepted"
_UNKNOWN_USER = "unknown user"
_UNUSABLE_HASH = "hash in an unsupported format"
_WRONG_PASSWORD = "wrong password"


@dataclass(frozen=True)
class HtpasswdEntry:
    """
    One user's line of an htpasswd file.

    @ivar user: the user name exactly as the file writes it.
    @ivar hash: the password hash.
    @ivar scheme: the libpass name of the hash's scheme, or L{None} when
        the hash is in a format this checker refuses or is malformed.
    @ivar line: the 1-based number of the line.
    """

    user: str
    hash: str
    scheme: str | None
    line: int


@dataclass(frozen=True)
class HtpasswdUsers:
    """
    The parsed contents of an htpasswd file.

    @ivar entries: each user's entry, by user name.
    @ivar dummyHash: a bcrypt hash of no user's password, of the cost most
        of the file's bcrypt entries use, to check unknown users against.
    """

    entries: Mapping[str, HtpasswdEntry]
    dummyHash: bytes

    def unusable(self) -> list[HtpasswdEntry]:
        """
        @return: the entries whose users can never log in, because their
            hash is in a refused or unknown format.
        """
        return [
            entry for entry in self.entries.values() if entry.scheme is None
        ]


def parseHtpasswd(data: bytes) -> HtpasswdUsers:
    """
    Read the contents of an htpasswd file.

    @param data: the file's contents.
    @return: its users.
    @raise FileFormatError: for a line that is not UTF-8, has no colon, or
        has an empty user name or hash.
    """
    entries: dict[str, HtpasswdEntry] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        entry = _parseLine(number, raw)
        if entry is not None:
            entries.setdefault(entry.user, entry)

    return HtpasswdUsers(entries, _dummyHash(_commonBcryptCost(entries)))


def _parseLine(number: int, raw: bytes) -> HtpasswdEntry | None:
    # Apache strips white space around a line before looking at it.
    try:
        line = raw.strip().decode("utf-8")
    except UnicodeDecodeError:
        raise FileFormatError(number, "not UTF-8") from None
    if not line or line.startswith("#"):
        return None

    user, colon, rest = line.partition(":")
    hash = rest.partition(":")[0]
    if not colon:
        raise FileFormatError(number, "no ':' after the user name")
    if not user or not hash:
        raise FileFormatError(number, "empty user name or password hash")

    return HtpasswdEntry(user, hash, _schemeOf(hash), number)


def _schemeOf(hash: str) -> str | None:
    scheme = _CONTEXT.identify(hash, required=False)
    if scheme is None:
        return None
    if scheme == "bcrypt" and not hash.startswith(_BCRYPT_PREFIXES):
        return None

    # A line cut short while htpasswd rewrites the file leaves a salt
    # without a checksum, which libpass reads as a settings string.
    try:
        parsed = _CONTEXT.handler(scheme).from_string(hash)
    except ValueError:
        return None
    return scheme if parsed.checksum else None


def _commonBcryptCost(entries: Mapping[str, HtpasswdEntry]) -> int:
    costs = Counter(
        int(entry.hash[4:6])
        for entry in entries.values()
        if entry.scheme == "bcrypt"
    )
    if not costs:
        return _DEFAULT_BCRYPT_COST
    return min(costs.most_common(1)[0][0], _MAX_DUMMY_BCRYPT_COST)


@cache
def _dummyHash(cost: int) -> bytes:
    return bcrypt.hashpw(b"no user has this password", bcrypt.gensalt(cost))


def _verifyBcrypt(password: bytes, hash: bytes) -> bool:
    try:
        return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hash)
    except ValueError:
        return False


def _verify(entry: HtpasswdEntry, password: bytes) -> bool:
    """
    Check C{password} against a usable entry's hash.
    """
    if entry.scheme == "bcrypt":
        return _verifyBcrypt(password, entry.hash.encode("ascii"))

    # libpass refuses passwords over 4096 bytes with a ValueError.
    try:
        verified: bool = _CONTEXT.handler(entry.scheme).verify(
            password, entry.hash
        )
    except ValueError:
        return False
    return verified


def _decodeUserName(username: bytes) -> str | None:
    """
    @return: C{username} as text, or L{None} when it is not UTF-8, is
        empty, or holds a colon or a control character, none of which an
        htpasswd user name can have.
    """
    try:
        user = username.decode("utf-8")
    except UnicodeDecodeError:
        return None

    if not user or ":" in user:
        return None
    if any(unicodedata.category(char) == "Cc" for char in user):
        return None
    return user


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """
    A credentials checker for the users of an htpasswd file.

    The file is read again whenever its inode, size or modification time
    changes.  A new version that does not parse leaves the previous users in
    force; operators who script changes should write a new file and rename
    it over the old one rather than rewrite it in place.

    @ivar path: the htpasswd file's path.
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(
        self, path: str, pool: ThreadPool, reactor: IReactorFromThreads
    ) -> None:
        """
        @param path: the htpasswd file.
        @param pool: the started thread pool that reads the file and
            verifies passwords.
        @param reactor: the reactor that receives the results from the pool.
        """
        self.path = path
        self._file = WatchedFile(path, self._parse)
        self._pool = pool
        self._reactor = reactor

    def load(self) -> None:
        """
        Read the file now, so that start-up can stop on a file that cannot
        be used.

        @raise OSError: when the file cannot be read.
        @raise FileFormatError: when it does not parse.
        """
        self._file.load()

    # ICredentialsChecker types avatar IDs as bytes; msagate's are str,
    # which the portal hands to the realm untouched.
    def requestAvatarId(  # type: ignore[override]
        self, credentials: IUsernamePassword
    ) -> Deferred[str]:
        """
        Check a user name and password.

        @param credentials: the user name and password, both bytes as SASL
            delivers them.
        @return: a L{Deferred} firing with the user name as the file writes
            it, or failing with L{UnauthorizedLogin} for an unknown user, a
            wrong password or a malformed user name, or with
            L{TemporaryAuthFailure} when the file has never been read and
            cannot be now, or the check broke.
        """
        user = _decodeUserName(credentials.username)
        if user is None or not credentials.password:
            return self._refuseAtOnce(user)

        checking = deferToThreadPool(
            self._reactor, self._pool, self._check, user, credentials.password
        )
        checking.addCallback(self._concluded, user)
        checking.addErrback(self._failed, user)
        return checking

    def _refuseAtOnce(self, user: str | None) -> Deferred[str]:
        outcome = "malformed user name" if user is None else "empty password"
        self._logOutcome(user, outcome)
        return fail(UnauthorizedLogin())

    def _check(self, user: str, password: bytes) -> str:
        """
        Look the user up and verify the password, in a pool thread.

        @return: the outcome: L{_ACCEPTED}, L{_UNKNOWN_USER},
            L{_UNUSABLE_HASH} or L{_WRONG_PASSWORD}.
        @raise TemporaryAuthFailure: when the file has never been read and
            cannot be now.
        """
        try:
            users = self._file.current()
        except (OSError, FileFormatError) as error:
            raise TemporaryAuthFailure(f"{self.path}: {error}") from None

        # A user who cannot be checked costs the same as a wrong password.
        entry = users.entries.get(user)
        if entry is None or entry.scheme is None:
            _verifyBcrypt(password, users.dummyHash)
            return _UNKNOWN_USER if entry is None else _UNUSABLE_HASH

        return _ACCEPTED if _verify(entry, password) else _WRONG_PASSWORD

    def _concluded(self, outcome: str, user: str) -> str:
        self._logOutcome(user, outcome)
        if outcome != _ACCEPTED:
            raise UnauthorizedLogin()
        return user

    def _failed(self, failure: Failure, user: str) -> Failure:
        if failure.check(UnauthorizedLogin):
            return failure
        if failure.check(TemporaryAuthFailure):
            self._logOutcome(user, f"temporary failure: {failure.value}")
            return failure

        self.log.failure(
            "Checking {user} against {path} broke",
            failure,
            user=user,
            path=self.path,
        )
        self._logOutcome(user, "temporary failure")
        return Failure(TemporaryAuthFailure(f"{self.path}: check broke"))

    def _logOutcome(self, user: str | None, outcome: str) -> None:
        self.log.debug(
            "htpasswd check of {user}: {outcome}", user=user, outcome=outcome
        )

    def _parse(self, data: bytes) -> HtpasswdUsers:
        """
        Parse the file, and name the users who can never log in.
        """
        users = parseHtpasswd(data)
        for entry in users.unusable():
            self.log.warn(
                "{path}: line {line}: the hash of {user} is in a format "
                "that is refused or unknown; {user} cannot log in",
                path=self.path,
                line=entry.line,
                user=entry.user,
            )
        return users
