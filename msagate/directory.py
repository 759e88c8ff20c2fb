# -*- test-case-name: tests.test_directory -*-
"""
Users and the senders they may use, from an LDAP directory (ldap3).

Two ways to check a password are offered:

  - I{search then bind}, when a service account is configured: the
    service account searches for the one entry that matches the login, and
    a connection of its own binds as that entry with the password;
  - I{direct bind}, without a service account: a connection binds as the
    DN built from a template, then reads its own entry.

The user name msagate keeps is never the login as typed but the value of
the entry's user attribute: with OpenLDAP's C{uid}, C{ALICE} finds alice's
entry and becomes C{alice}.  Nothing is stripped from a login: the protocol
has already applied SASLprep, and a login with spaces around it is sent
escaped, so whether it finds an entry is for the directory's matching rule
to decide (OpenLDAP ignores insignificant spaces in C{uid}, so C{" alice "}
becomes C{alice} too).

An empty login or password is refused before any LDAP request: a simple
bind with a DN and no password is an I{unauthenticated bind} that some
servers answer with success (RFC 4513 section 5.1.2).  Every login is
escaped before it goes into a filter (RFC 4515) or a DN (RFC 4514), and a
login matching more than one entry is refused.

A directory that cannot answer (refused connection, a timeout, a service
account that cannot bind, a failed search) raises L{TemporaryAuthFailure},
never L{UnauthorizedLogin}: the client is told to try again later (RFC
4954 section 6).  The servers are tried in the configured order, starting
with the last one that worked.

Every method of L{LDAPDirectory} blocks, and is meant for a thread pool.
The service account's connections are pooled, each used by one thread at a
time; a password is always checked on a new connection of its own, since a
bind changes who a connection is.
"""

from __future__ import annotations

import math
import queue
import socket
import ssl
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ldap3 import (  # type: ignore[import-untyped]
    BASE,
    NONE,
    SAFE_SYNC,
    SUBTREE,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import (  # type: ignore[import-untyped]
    LDAPCommunicationError,
    LDAPException,
    LDAPSocketReceiveError,
)
from ldap3.utils.conv import (  # type: ignore[import-untyped]
    escape_filter_chars,
)
from ldap3.utils.dn import escape_rdn  # type: ignore[import-untyped]
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from msagate.errors import TemporaryAuthFailure
from msagate.interfaces import ISenderSource
from msagate.senders import SenderPermissions, checkDelimiter

# The reasons of an UnauthorizedLogin, for the operator's log.
EMPTY_CREDENTIALS = "empty login or password"
UNKNOWN_USER = "unknown user"
WRONG_PASSWORD = "wrong password"
AMBIGUOUS_LOGIN = "login matches several entries"
NAMELESS_ENTRY = "entry has no user attribute"
INVALID_DN = "login makes no valid DN"

# Bind results that refuse the credentials rather than report a server
# problem, and why: invalidDNSyntax, inappropriateAuthentication,
# invalidCredentials (in direct bind mode, for an unknown user too) and
# unwillingToPerform (an unauthenticated bind, RFC 4513 section 5.1.2).
_REFUSING_BINDS = {
    34: INVALID_DN,
    48: WRONG_PASSWORD,
    49: WRONG_PASSWORD,
    53: WRONG_PASSWORD,
}

# Search results that still carry usable entries, or none: success,
# sizeLimitExceeded (two matches when one was wanted) and noSuchObject (a
# base the account cannot see).
_USABLE_SEARCHES = frozenset({0, 4, 32})


@dataclass(frozen=True)
class LDAPSettings:
    """
    How to reach the directory and where users and groups are.

    @ivar servers: LDAP URLs, C{ldap://host[:port]} or
        C{ldaps://host[:port]}, tried in order.
    @ivar startTLS: whether to use StartTLS on C{ldap://} URLs.
    @ivar caFile: the PEM file of the CAs that verify the server's
        certificate, or C{""} for the system's CAs.  Certificates are always
        verified when TLS is used.
    @ivar bindDN: the service account's DN, or C{""} for direct bind.
    @ivar bindPassword: the service account's password.
    @ivar baseDN: where users are searched.
    @ivar userFilter: the filter that finds a user; C{{login}} stands for
        the login, escaped (RFC 4515).
    @ivar userDN: the template of a user's DN in direct bind mode;
        C{{login}} stands for the login, escaped (RFC 4514).
    @ivar userAttribute: the attribute whose first value is the canonical
        user name.
    @ivar connectTimeout: seconds to wait for a TCP connection.
    @ivar timeout: seconds to wait for each answer.
    @ivar senderAttributes: the attributes that hold the addresses a user
        may send as.
    @ivar groupFilter: the filter that finds a user's groups, C{{dn}}
        standing for the user's DN, escaped; C{""} for no groups.
    @ivar groupBaseDN: where groups are searched; C{""} for L{baseDN}.
    @ivar groupDomainAttribute: the attribute of a group whose values are
        domains its members may send from.
    @ivar poolSize: how many service connections the threads share.
    """

    servers: tuple[str, ...]
    startTLS: bool = True
    caFile: str = ""
    bindDN: str = ""
    bindPassword: str = ""
    baseDN: str = ""
    userFilter: str = "(&(objectClass=inetOrgPerson)(uid={login}))"
    userDN: str = ""
    userAttribute: str = "uid"
    connectTimeout: float = 5
    timeout: float = 10
    senderAttributes: tuple[str, ...] = ("mail", "mailAlternateAddress")
    groupFilter: str = ""
    groupBaseDN: str = ""
    groupDomainAttribute: str = "associatedDomain"
    poolSize: int = 4


@dataclass(frozen=True)
class _Entry:
    """
    One entry found, with its attributes keyed by lower-case name.
    """

    dn: str
    attributes: dict[str, list[str]]

    def values(self, names: Iterable[str]) -> list[str]:
        """
        @return: every value of the attributes C{names}, in order.
        """
        return [
            value
            for name in names
            for value in self.attributes.get(name.lower(), [])
        ]


class _ServerFailure(Exception):
    """
    A server answered an operation with an error of its own.
    """


class _CredentialsRefused(Exception):
    """
    A server refused a bind's DN and password; the message says why.
    """


class LDAPDirectory:
    """
    Checks passwords and finds sender addresses in an LDAP directory.

    @ivar settings: the L{LDAPSettings}.
    """

    log = Logger()

    def __init__(self, settings: LDAPSettings) -> None:
        """
        @param settings: where the directory is and how to read it.
        @raise ValueError: for a URL that is not C{ldap://} or C{ldaps://},
            no URL at all, neither a service account nor a DN template, or
            a pool of no connection.
        """
        _checkSettings(settings)
        self.settings = settings
        tls = Tls(
            validate=ssl.CERT_REQUIRED, ca_certs_file=settings.caFile or None
        )
        self._servers = [
            Server(
                url,
                tls=tls,
                get_info=NONE,
                connect_timeout=settings.connectTimeout,
            )
            for url in settings.servers
        ]
        self._preferred = 0

        self._slots: queue.LifoQueue[Any] = queue.LifoQueue()
        for _ in range(settings.poolSize):
            self._slots.put(None)
        self._closed = False
        self._cached: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def authenticate(self, login: str, password: bytes) -> str:
        """
        Check a login and password; blocks.

        @param login: the login as the client sent it, after SASLprep.
        @param password: the password's bytes, sent to the directory as
            they are.
        @return: the canonical user name: the first value of the entry's
            user attribute.
        @raise UnauthorizedLogin: for an empty login or password, an
            unknown user, a wrong password, a login matching several
            entries or an entry without the user attribute; its message
            says which.
        @raise TemporaryAuthFailure: when the directory cannot answer.
        """
        if not login or not password:
            raise UnauthorizedLogin(EMPTY_CREDENTIALS)
        if self.settings.bindDN:
            return self._searchThenBind(login, password)
        return self._directBind(login, password)

    def senders(self, user: str) -> list[str]:
        """
        Find what a user may send as; blocks.

        @param user: the canonical user name from L{authenticate}.
        @return: the values of the user's sender attributes, then C{@}
            followed by each domain of the user's groups; C{[]} for an
            unknown user.  Without a service account, what the user's last
            login read, or C{[]} before any.
        @raise TemporaryAuthFailure: when the directory cannot answer.
        """
        if not self.settings.bindDN:
            with self._lock:
                return list(self._cached.get(user, []))

        filter = f"({self.settings.userAttribute}={escape_filter_chars(user)})"
        attributes = self.settings.senderAttributes
        entries = self._serviceSearch(self.settings.baseDN, filter, attributes)
        if len(entries) != 1:
            return []
        entry = entries[0]
        own = senderAddresses(entry.values(attributes))
        return own + self._groupDomains(entry.dn, None)

    def close(self) -> None:
        """
        Close the pooled service connections.  Those in use are closed
        when their search ends.
        """
        self._closed = True
        idle = []
        while True:
            try:
                idle.append(self._slots.get_nowait())
            except queue.Empty:
                break
        for connection in idle:
            _unbind(connection)
            self._slots.put(None)

    def _searchThenBind(self, login: str, password: bytes) -> str:
        filter = self.settings.userFilter.replace(
            "{login}", escape_filter_chars(login)
        )
        attribute = self.settings.userAttribute
        entries = self._serviceSearch(
            self.settings.baseDN, filter, [attribute], sizeLimit=2
        )
        user = _canonicalName(_onlyEntry(entries), attribute)

        _unbind(self._bound(entries[0].dn, password))
        return user

    def _directBind(self, login: str, password: bytes) -> str:
        dn = self.settings.userDN.replace("{login}", escape_rdn(login))
        attributes = [self.settings.userAttribute]
        attributes += self.settings.senderAttributes
        connection = self._bound(dn, password)
        try:
            entries = _search(connection, dn, "(objectClass=*)", attributes, 0)
            user = _canonicalName(_onlyEntry(entries), attributes[0])
            senders = senderAddresses(
                entries[0].values(self.settings.senderAttributes)
            )
            senders += self._groupDomains(entries[0].dn, connection)
        except LDAPCommunicationError as error:
            raise TemporaryAuthFailure(f"reading {dn}: {error}") from None
        finally:
            _unbind(connection)

        with self._lock:
            self._cached[user] = senders
        return user

    def _groupDomains(self, dn: str, connection: Any) -> list[str]:
        """
        @param connection: the connection to search with, or L{None} for a
            pooled service connection.
        @return: C{@domain} for each domain of the groups of C{dn}.
        """
        if not self.settings.groupFilter:
            return []
        filter = self.settings.groupFilter.replace(
            "{dn}", escape_filter_chars(dn)
        )
        base = self.settings.groupBaseDN or self.settings.baseDN
        attributes = [self.settings.groupDomainAttribute]
        if connection is None:
            groups = self._serviceSearch(base, filter, attributes)
        else:
            groups = _search(connection, base, filter, attributes, 0)
        return ["@" + domain for domain in _values(groups, attributes)]

    def _serviceSearch(
        self,
        base: str,
        filter: str,
        attributes: Sequence[str],
        sizeLimit: int = 0,
    ) -> list[_Entry]:
        """
        Search with a pooled service connection.

        A connection that fails is replaced by a new one.  A server that
        let a request time out is not asked again for this search, so that
        a hung server costs one timeout, not two.

        @raise TemporaryAuthFailure: when no server answers.
        """
        connection = self._take()
        hung: set[int] = set()
        try:
            for _ in range(len(self._servers) + 1):
                if connection is None:
                    connection = self._serviceConnection(hung)
                try:
                    return _search(
                        connection, base, filter, attributes, sizeLimit
                    )
                except LDAPCommunicationError as error:
                    index = self._failed(connection.server, error)
                    if isinstance(error, LDAPSocketReceiveError):
                        hung.add(index)
                    _unbind(connection)
                    connection = None
            raise TemporaryAuthFailure(f"no LDAP server could search {base}")
        except BaseException:
            _unbind(connection)
            connection = None
            raise
        finally:
            self._putBack(connection)

    def _take(self) -> Any:
        """
        @return: an idle service connection, or L{None} for a free slot.
        @raise TemporaryAuthFailure: when every slot stays busy for longer
            than the timeout.
        """
        try:
            return self._slots.get(timeout=self.settings.timeout)
        except queue.Empty:
            raise TemporaryAuthFailure(
                "every LDAP service connection is busy"
            ) from None

    def _putBack(self, connection: Any) -> None:
        if self._closed:
            _unbind(connection)
            connection = None
        self._slots.put(connection)

    def _serviceConnection(self, skipped: set[int]) -> Any:
        """
        @param skipped: the indexes of the servers not to try.
        @return: a new connection bound as the service account.
        @raise TemporaryAuthFailure: when no server answers, or the server
            refuses the service account.
        """
        try:
            return self._bound(
                self.settings.bindDN,
                self.settings.bindPassword.encode(),
                skipped,
            )
        except UnauthorizedLogin:
            raise TemporaryAuthFailure(
                f"the LDAP service account {self.settings.bindDN} "
                "cannot bind: wrong DN or password"
            ) from None

    def _bound(
        self, dn: str, password: bytes, skipped: set[int] | None = None
    ) -> Any:
        """
        Open a new connection and bind it, trying each server in turn.

        @param skipped: the indexes of the servers not to try.
        @return: the bound connection.
        @raise UnauthorizedLogin: when a server refuses C{dn} and
            C{password}.
        @raise TemporaryAuthFailure: when no server answers.
        """
        # Never ask for a bind that the server may take as anonymous.
        if not dn or not password:
            raise UnauthorizedLogin(EMPTY_CREDENTIALS)

        for index in self._inOrder():
            if skipped and index in skipped:
                continue
            server = self._servers[index]
            try:
                return self._bindTo(server, dn, password)
            except (LDAPException, OSError, _ServerFailure) as error:
                self._failed(server, error)
            except _CredentialsRefused as refused:
                raise UnauthorizedLogin(str(refused)) from None
        raise TemporaryAuthFailure(
            "no LDAP server answered: " + ", ".join(self.settings.servers)
        )

    def _bindTo(self, server: Any, dn: str, password: bytes) -> Any:
        """
        @raise _CredentialsRefused: when the server refuses the bind.
        @raise _ServerFailure: when it fails the bind for another reason.
        """
        connection = Connection(
            server,
            user=dn,
            password=password,
            client_strategy=SAFE_SYNC,
            # ldap3 packs this into a socket option, which takes an int.
            receive_timeout=math.ceil(self.settings.timeout),
            raise_exceptions=False,
            read_only=True,
            auto_referrals=False,
        )
        try:
            self._open(connection)
            status, result, _, _ = connection.bind()
        except BaseException:
            _unbind(connection)
            raise

        if not status:
            _unbind(connection)
            if result["result"] in _REFUSING_BINDS:
                raise _CredentialsRefused(_REFUSING_BINDS[result["result"]])
            raise _ServerFailure(f"bind: {result['description']}")
        return connection

    def _open(self, connection: Any) -> None:
        connection.open()
        # Without TCP_NODELAY, a new TLS connection stalls about 40 ms on
        # Nagle's algorithm and delayed acknowledgements.
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.socket.settimeout(self.settings.timeout)
        if self.settings.startTLS and not connection.server.ssl:
            status = connection.start_tls()
            if not _succeeded(status):
                raise _ServerFailure("StartTLS refused")

    def _inOrder(self) -> list[int]:
        """
        @return: the indexes of the servers, starting with the last one
            that worked.
        """
        count = len(self._servers)
        return [(self._preferred + step) % count for step in range(count)]

    def _failed(self, server: Any, error: Exception) -> int:
        """
        Log that C{server} failed, and make the next connection try the
        one after it first.

        @return: the server's index.
        """
        index = next(
            index for index, each in enumerate(self._servers) if each is server
        )
        if self._preferred == index:
            self._preferred = (index + 1) % len(self._servers)
        self.log.warn(
            "LDAP server {url} failed: {error}",
            url=self.settings.servers[index],
            error=error,
        )
        return index


@implementer(ISenderSource)
class LDAPSenderSource:
    """
    The senders of each user, from an L{LDAPDirectory}.

    A value that is not a well-formed address or C{@domain} is skipped and
    logged, so that one bad alias does not lock its user out.

    @ivar directory: the L{LDAPDirectory}.
    @ivar detailDelimiter: the detail delimiter of the permissions.
    """

    log = Logger()

    def __init__(
        self,
        directory: LDAPDirectory,
        pool: ThreadPool,
        reactor: IReactorFromThreads,
        detailDelimiter: str = "+",
    ) -> None:
        """
        @param directory: where the senders are.
        @param pool: the started thread pool that asks the directory.
        @param reactor: the reactor that receives the results from the pool.
        @param detailDelimiter: see L{SenderPermissions.fromEntries}.
        @raise ValueError: for a bad delimiter.
        """
        checkDelimiter(detailDelimiter)
        self.directory = directory
        self.detailDelimiter = detailDelimiter
        self._pool = pool
        self._reactor = reactor

    def sendersFor(self, user: str) -> Deferred[SenderPermissions]:
        """
        @param user: the canonical user name.
        @return: a L{Deferred} firing with the user's permissions, or
            failing with L{TemporaryAuthFailure} when the directory cannot
            answer.
        """
        asking = deferToThreadPool(
            self._reactor, self._pool, self.directory.senders, user
        )
        found = asking.addCallback(self._permissions, user)
        return found.addErrback(self._failed, user)

    def _permissions(self, entries: list[str], user: str) -> SenderPermissions:
        usable = []
        for entry in entries:
            try:
                SenderPermissions.fromEntries([entry], self.detailDelimiter)
            except ValueError as error:
                self.log.warn(
                    "LDAP sender of {user} skipped: {error}",
                    user=user,
                    error=error,
                )
            else:
                usable.append(entry)
        return SenderPermissions.fromEntries(usable, self.detailDelimiter)

    def _failed(self, failure: Failure, user: str) -> Failure:
        if failure.check(TemporaryAuthFailure):
            self.log.warn(
                "LDAP senders of {user}: temporary failure: {reason}",
                user=user,
                reason=failure.value,
            )
            return failure
        self.log.failure("LDAP senders of {user} broke", failure, user=user)
        return Failure(TemporaryAuthFailure(f"LDAP senders of {user} broke"))


def senderAddresses(values: Iterable[str]) -> list[str]:
    """
    The addresses among the values of a user's sender attributes.

    An Active Directory C{proxyAddresses} value C{smtp:address} (or
    C{SMTP:address}, the primary one) counts as its address; values with
    other prefixes (C{X500:}, C{SIP:}...) name no mail address.  A value
    must name one address: a wildcard (C{*} or C{@domain}) in a user's own
    entry grants nothing, since only groups grant whole domains.
    """
    found = []
    for value in values:
        prefix, colon, rest = value.partition(":")
        if colon and "@" not in prefix:
            if prefix.lower() != "smtp":
                continue
            value = rest
        local, at, _ = value.rpartition("@")
        if at and local and local != "*":
            found.append(value)
    return found


def _checkSettings(settings: LDAPSettings) -> None:
    if not settings.servers:
        raise ValueError("no LDAP server")
    for url in settings.servers:
        if not url.lower().startswith(("ldap://", "ldaps://")):
            raise ValueError(f"{url!r} is not an ldap:// or ldaps:// URL")
    if not settings.bindDN and "{login}" not in settings.userDN:
        raise ValueError("neither a service account nor a user DN template")
    if settings.poolSize < 1:
        raise ValueError("the LDAP pool needs at least one connection")


def _search(
    connection: Any,
    base: str,
    filter: str,
    attributes: Sequence[str],
    sizeLimit: int,
) -> list[_Entry]:
    """
    Search on C{connection}: the whole subtree of C{base}, or C{base} alone
    for the match-all filter used to read one entry.

    @raise LDAPCommunicationError: when the connection fails.
    @raise TemporaryAuthFailure: when the server fails the search.
    """
    scope = BASE if filter == "(objectClass=*)" else SUBTREE
    _, result, response, _ = connection.search(
        base,
        filter,
        search_scope=scope,
        attributes=list(attributes),
        size_limit=sizeLimit,
    )
    if result["result"] not in _USABLE_SEARCHES:
        raise TemporaryAuthFailure(
            f"LDAP search under {base} failed: {result['description']}"
        )
    return [
        _Entry(str(found["dn"]), _decoded(found["raw_attributes"]))
        for found in response or []
        if found["type"] == "searchResEntry"
    ]


def _decoded(raw: dict[str, list[bytes]]) -> dict[str, list[str]]:
    return {
        name.lower(): [value.decode("utf-8", "replace") for value in values]
        for name, values in raw.items()
    }


def _values(entries: list[_Entry], names: Sequence[str]) -> list[str]:
    return [value for entry in entries for value in entry.values(names)]


def _onlyEntry(entries: list[_Entry]) -> _Entry:
    """
    @raise UnauthorizedLogin: unless there is exactly one entry.
    """
    if not entries:
        raise UnauthorizedLogin(UNKNOWN_USER)
    if len(entries) > 1:
        raise UnauthorizedLogin(AMBIGUOUS_LOGIN)
    return entries[0]


def _canonicalName(entry: _Entry, attribute: str) -> str:
    """
    @raise UnauthorizedLogin: when the entry lacks the attribute.
    """
    names = entry.values([attribute])
    if not names or not names[0]:
        raise UnauthorizedLogin(NAMELESS_ENTRY)
    return names[0]


def _succeeded(outcome: Any) -> bool:
    # SAFE_SYNC operations return (status, result, response, request).
    if isinstance(outcome, tuple):
        return bool(outcome[0])
    return bool(outcome)


def _unbind(connection: Any) -> None:
    if connection is None:
        return
    try:
        connection.unbind()
    except (LDAPException, OSError):
        pass
