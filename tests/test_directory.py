"""
Tests for L{msagate.directory} and L{msagate.checkers.ldap}: passwords and
sender addresses from LDAP, against a real private slapd (L{tests.slapd})
and, where no server is needed, alone.
"""

from __future__ import annotations

import time

import pytest
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from msagate import directory
from msagate._certs import CertificateAuthority
from msagate.address import parseMailbox
from msagate.checkers.ldap import LDAPChecker
from msagate.directory import (
    LDAPDirectory,
    LDAPSenderSource,
    LDAPSettings,
    senderAddresses,
)
from msagate.errors import TemporaryAuthFailure
from msagate.interfaces import ISenderSource
from msagate.senders import SenderPermissions
from tests.slapd import PASSWORDS, PEOPLE_DN, freePorts

GROUPS = "(&(objectClass=groupOfNames)(member={dn}))"
ALICE_SENDERS = [
    "alice@example.org",
    "alice.smith@example.org",
    "postmaster@example.org",
    "@example.net",
]


def closedURL() -> str:
    """
    @return: an C{ldap://} URL of a loopback port where nothing listens.
    """
    return f"ldap://127.0.0.1:{freePorts(1)[0]}"


def searching(slapd, **changes) -> LDAPDirectory:
    """
    A search-then-bind directory on the test slapd, with StartTLS verified
    against its CA, and C{changes} to the settings.
    """
    settings = dict(
        servers=(slapd.url,),
        caFile=slapd.caFile,
        bindDN=slapd.serviceDN,
        bindPassword=slapd.servicePassword,
        baseDN=slapd.baseDN,
        groupFilter=GROUPS,
    )
    settings.update(changes)
    return LDAPDirectory(LDAPSettings(**settings))


def direct(slapd, **changes) -> LDAPDirectory:
    """
    A direct-bind directory on the test slapd.
    """
    settings = dict(
        servers=(slapd.url,),
        caFile=slapd.caFile,
        userDN="uid={login}," + PEOPLE_DN,
    )
    settings.update(changes)
    return LDAPDirectory(LDAPSettings(**settings))


@pytest.fixture
def ldap(slapd):
    """
    A search-then-bind directory on the test slapd, closed after the test.
    """
    found = searching(slapd)
    yield found
    found.close()


def refusal(call, *args) -> str:
    """
    Call C{call} and return the reason of the L{UnauthorizedLogin} it
    raises.
    """
    with pytest.raises(UnauthorizedLogin) as raised:
        call(*args)
    return str(raised.value)


def password(user: str) -> bytes:
    """
    @return: the test directory's password of C{user}, as bytes.
    """
    return PASSWORDS[user].encode("utf-8")


def check(reactor, checker, user: str, secret: bytes):
    """
    Run one check through the checker's pool.

    @return: the avatar id or the L{Failure}.
    """
    credentials = UsernamePassword(user.encode("utf-8"), secret)
    return reactor.outcomeOf(checker.requestAvatarId(credentials))


# Settings and refusals that need no server.


@pytest.mark.parametrize(
    "changes",
    [
        {"servers": ()},
        {"servers": ("http://127.0.0.1",)},
        {"bindDN": "", "userDN": ""},
        {"poolSize": 0},
    ],
)
def test_unusableSettingsRefused(changes):
    """
    Settings without a server, with a URL that is not LDAP, with neither a
    service account nor a DN template, or with an empty pool are refused
    when the directory is built.
    """
    settings = dict(servers=("ldap://127.0.0.1",), bindDN="cn=x")
    settings.update(changes)

    with pytest.raises(ValueError):
        LDAPDirectory(LDAPSettings(**settings))


@pytest.mark.parametrize(
    "login, secret", [("alice", b""), ("", b"alice-pw"), ("", b"")]
)
@pytest.mark.parametrize("mode", ["search", "direct"])
def test_emptyCredentialsRefusedWithoutAsking(mode, login, secret):
    """
    An empty password or login is refused before any LDAP request: with
    nothing listening, the answer is still UnauthorizedLogin, not a
    temporary failure, so no unauthenticated bind can ever be sent
    (RFC 4513 section 5.1.2; AUTH-11).
    """
    settings = LDAPSettings(
        servers=(closedURL(),),
        bindDN="cn=msagate" if mode == "search" else "",
        bindPassword="service-secret",
        userDN="uid={login},ou=people,dc=example,dc=org",
    )

    reason = refusal(LDAPDirectory(settings).authenticate, login, secret)

    assert reason == directory.EMPTY_CREDENTIALS


def test_serverDownIsTemporary():
    """
    A server that refuses connections is a temporary failure, never a
    refused login (AUTH-12).
    """
    found = LDAPDirectory(
        LDAPSettings(servers=(closedURL(),), bindDN="cn=x", bindPassword="x")
    )

    with pytest.raises(TemporaryAuthFailure):
        found.authenticate("alice", b"alice-pw")
    with pytest.raises(TemporaryAuthFailure):
        found.senders("alice")


def test_checkerProvidesICredentialsChecker(pool, reactor):
    """
    The checker provides ICredentialsChecker for username and password
    credentials.
    """
    found = LDAPDirectory(LDAPSettings(servers=(closedURL(),), bindDN="x"))
    checker = LDAPChecker(found, pool, reactor)

    assert verifyObject(ICredentialsChecker, checker)
    assert checker.credentialInterfaces == (IUsernamePassword,)


def test_senderSourceProvidesISenderSource(pool, reactor):
    """
    The sender source provides ISenderSource, and refuses a bad detail
    delimiter at once.
    """
    found = LDAPDirectory(LDAPSettings(servers=(closedURL(),), bindDN="x"))

    assert verifyObject(ISenderSource, LDAPSenderSource(found, pool, reactor))
    with pytest.raises(ValueError):
        LDAPSenderSource(found, pool, reactor, detailDelimiter="ab")


def test_checkerRefusesNonUTF8AtOnce(pool, reactor):
    """
    A user name that is not UTF-8 is refused without a thread or a
    request.
    """
    found = LDAPDirectory(LDAPSettings(servers=(closedURL(),), bindDN="x"))
    checker = LDAPChecker(found, pool, reactor)
    credentials = UsernamePassword(b"\xffalice", b"pw")

    outcome = []
    checker.requestAvatarId(credentials).addErrback(outcome.append)

    assert outcome and outcome[0].check(UnauthorizedLogin)


class BrokenDirectory:
    """
    A directory stand-in whose every method raises an unexpected error.
    """

    def authenticate(self, login, secret):
        raise RuntimeError("broken hunter2")

    def senders(self, user):
        raise RuntimeError("broken")


def test_checkerBrokenIsTemporary(pool, reactor, logged):
    """
    An unexpected error while checking is a temporary failure, logged
    with its traceback, and the password is not logged.
    """
    checker = LDAPChecker(BrokenDirectory(), pool, reactor)

    result = check(reactor, checker, "alice", b"hunter2-secret")

    assert isinstance(result, Failure) and result.check(TemporaryAuthFailure)
    assert any(event.get("log_failure") for event in logged)
    assert not any("hunter2-secret" in repr(event) for event in logged)


def test_senderSourceBrokenIsTemporary(pool, reactor):
    """
    An unexpected error while finding senders is a temporary failure.
    """
    source = LDAPSenderSource(BrokenDirectory(), pool, reactor)

    result = reactor.outcomeOf(source.sendersFor("alice"))

    assert isinstance(result, Failure) and result.check(TemporaryAuthFailure)


class FixedDirectory:
    """
    A directory stand-in that answers every user with the same senders.
    """

    def __init__(self, senders):
        self._senders = senders

    def senders(self, user):
        return list(self._senders)


def test_senderSourceSkipsMalformedValues(pool, reactor, logged):
    """
    A directory value that is not an address or C{@domain} is skipped and
    logged; the user keeps the others.
    """
    source = LDAPSenderSource(
        FixedDirectory(["not an address", "alice@example.org"]), pool, reactor
    )

    permissions = reactor.outcomeOf(source.sendersFor("alice"))

    assert permissions == SenderPermissions.fromEntries(["alice@example.org"])
    assert any("not an address" in formatEvent(event) for event in logged), (
        logged
    )


# Against the real slapd: passwords.


@pytest.mark.parametrize("user", ["alice", "bob", "carol", "erin"])
def test_rightPasswordAccepted(ldap, user):
    """
    The right password is accepted, whatever scheme the directory stores
    ({SSHA}, {CRYPT}, clear text), and the user name is the entry's uid
    (AUTH-2).
    """
    assert ldap.authenticate(user, password(user)) == user


def test_wrongPasswordRefused(ldap):
    """
    A wrong password is refused as such (AUTH-11).
    """
    assert (
        refusal(ldap.authenticate, "alice", b"bob-pw")
        == directory.WRONG_PASSWORD
    )


def test_unknownUserRefused(ldap):
    """
    A login that matches no entry is refused as an unknown user
    (AUTH-11).
    """
    assert (
        refusal(ldap.authenticate, "zed", b"alice-pw")
        == directory.UNKNOWN_USER
    )


INJECTIONS = [
    "*",
    "a*",
    "alice)(uid=*",
    "*)(|(uid=*",
    "\\2a",
    "alice\\29",
    "alice\x00",
    "alice)(objectClass=*",
]


@pytest.mark.parametrize("login", INJECTIONS)
def test_filterInjectionFindsNobody(ldap, login):
    """
    Filter metacharacters in a login are escaped (RFC 4515): none of these
    logins authenticates anyone with alice's password.
    """
    with pytest.raises(UnauthorizedLogin):
        ldap.authenticate(login, b"alice-pw")


@pytest.mark.parametrize(
    "login", [*INJECTIONS, "alice,ou=people", "alice+cn=x", "#alice"]
)
def test_dnInjectionBindsNobody(slapd, login):
    """
    DN metacharacters in a login are escaped (RFC 4514) in direct bind
    mode: none of these logins authenticates anyone with alice's password.
    """
    with pytest.raises(UnauthorizedLogin):
        direct(slapd).authenticate(login, b"alice-pw")


def test_severalEntriesRefused(ldap):
    """
    A login matching two entries is refused, even with the right password
    of both: the first one found is never taken.
    """
    assert (
        refusal(ldap.authenticate, "twin", password("twin"))
        == directory.AMBIGUOUS_LOGIN
    )


def test_entryWithoutUserAttributeRefused(slapd):
    """
    An entry that matches but lacks the user attribute cannot log in:
    there would be no canonical name for it.
    """
    found = searching(slapd, userFilter="(cn={login})")

    assert (
        refusal(found.authenticate, "nameless", password("nameless"))
        == directory.NAMELESS_ENTRY
    )


def test_nonASCIIPassword(ldap):
    """
    A password that is not ASCII reaches the directory as its UTF-8 bytes,
    without SASLprep mapping (which would turn U+2168 into "IX").
    """
    assert ldap.authenticate("frank", password("frank")) == "frank"
    with pytest.raises(UnauthorizedLogin):
        ldap.authenticate("frank", "pässwörd-IX".encode())


@pytest.mark.parametrize("login", ["ALICE", "Alice", " alice "])
def test_loginCanonicalised(ldap, login):
    """
    Spellings that the directory's matching rule takes for alice (uid is
    case-insensitive and ignores insignificant spaces) become the one
    user name "alice", never a user of their own.
    """
    assert ldap.authenticate(login, b"alice-pw") == "alice"


def test_serviceAccountRefusedIsTemporary(slapd):
    """
    A service account that cannot bind is a temporary failure, not the
    user's wrong password.
    """
    found = searching(slapd, bindPassword="not-the-secret")

    with pytest.raises(TemporaryAuthFailure):
        found.authenticate("alice", b"alice-pw")


# Against the real slapd: availability and TLS.


@pytest.mark.parametrize("warm", [False, True])
def test_hungServerTimesOut(slapd, warm):
    """
    A server that accepts connections but never answers (SIGSTOP) is a
    temporary failure within a few timeouts, both for a new directory
    and for one whose pooled service connection is already open
    (AUTH-12).
    """
    found = searching(slapd, timeout=1, connectTimeout=1)
    if warm:
        found.authenticate("alice", b"alice-pw")

    slapd.pause()
    try:
        started = time.monotonic()
        with pytest.raises(TemporaryAuthFailure):
            found.authenticate("alice", b"alice-pw")
        elapsed = time.monotonic() - started
    finally:
        slapd.resume()

    assert elapsed < 3, elapsed
    assert found.authenticate("alice", b"alice-pw") == "alice"


def test_failover(slapd, logged):
    """
    When the first server is down the next one answers, and the one that
    worked is asked first from then on.
    """
    found = searching(slapd, servers=(closedURL(), slapd.url))

    assert found.authenticate("alice", b"alice-pw") == "alice"
    failures = len(logged)
    assert failures >= 1
    assert found.authenticate("bob", b"bob-pw") == "bob"
    assert len(logged) == failures


def test_reconnectAfterRestart(slapd):
    """
    A pooled service connection that the server dropped when it restarted
    is replaced, without a failed login.
    """
    found = searching(slapd)
    assert found.authenticate("alice", b"alice-pw") == "alice"

    slapd.restart()

    assert found.authenticate("alice", b"alice-pw") == "alice"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_ldapsVerified(slapd, host):
    """
    ldaps:// works with the server's certificate verified against the
    configured CA, by IP address or by name.
    """
    url = slapd.ldapsURL.replace("127.0.0.1", host)

    assert searching(slapd, servers=(url,)).authenticate(
        "alice", b"alice-pw"
    ) == ("alice")


@pytest.mark.parametrize("scheme", ["starttls", "ldaps"])
@pytest.mark.parametrize("trusted", ["other CA", "system CAs"])
def test_untrustedCertificateIsTemporary(slapd, tmp_path, scheme, trusted):
    """
    A certificate that the configured CAs do not vouch for fails the
    connection, with StartTLS and with ldaps://: a temporary failure, not
    a login.  Verification is on even with the system's CAs.
    """
    caFile = ""
    if trusted == "other CA":
        caFile = str(tmp_path / "other.pem")
        (tmp_path / "other.pem").write_bytes(
            CertificateAuthority().certificate
        )
    url = slapd.url if scheme == "starttls" else slapd.ldapsURL

    found = searching(slapd, servers=(url,), caFile=caFile)

    with pytest.raises(TemporaryAuthFailure):
        found.authenticate("alice", b"alice-pw")


def test_cleartextWhenStartTLSOff(slapd):
    """
    With StartTLS turned off, an ldap:// URL is used without TLS, so no CA
    is needed.
    """
    found = searching(slapd, startTLS=False, caFile="")

    assert found.authenticate("alice", b"alice-pw") == "alice"


# Against the real slapd: direct bind.


def test_directBind(slapd):
    """
    Direct bind mode needs no service account: the right password gives
    the entry's uid, a wrong one or an unknown user is refused.
    """
    found = direct(slapd)

    assert found.authenticate("ALICE", b"alice-pw") == "alice"
    assert found.authenticate("frank", password("frank")) == "frank"
    with pytest.raises(UnauthorizedLogin):
        found.authenticate("alice", b"wrong")
    with pytest.raises(UnauthorizedLogin):
        found.authenticate("zed", b"alice-pw")


def test_directBindSendersFromLastLogin(slapd):
    """
    Without a service account, a user's senders are what the entry held at
    their last login, and nothing before any.
    """
    found = direct(slapd)
    assert found.senders("carol") == []

    found.authenticate("carol", b"carol-pw")

    assert found.senders("carol") == ["carol@example.org", "carol@example.net"]


# Against the real slapd: senders.


def test_sendersFromAttributesAndGroups(ldap):
    """
    A user's senders are the values of the sender attributes, then @domain
    for each domain of the user's groups.
    """
    assert ldap.senders("alice") == ALICE_SENDERS
    assert ldap.senders("carol") == ["carol@example.org", "carol@example.net"]
    assert ldap.senders("dave") == []
    assert ldap.senders("nobody") == []


def test_sendersWithoutGroups(slapd):
    """
    Without a group filter, only the sender attributes count.
    """
    assert (
        searching(slapd, groupFilter="").senders("alice")
        == (ALICE_SENDERS[:-1])
    )


def test_sendersFilterEscaped(ldap):
    """
    A user name with filter metacharacters finds nobody's senders.
    """
    assert ldap.senders("*") == []
    assert ldap.senders("alice)(uid=*") == []


# Through the thread pool.


def test_checkerThroughPool(slapd, ldap, pool, reactor, logged):
    """
    The checker runs the directory in the pool: the canonical name for the
    right password, UnauthorizedLogin for a wrong one, each outcome logged
    for the operator and no password in any event.
    """
    checker = LDAPChecker(ldap, pool, reactor)

    assert check(reactor, checker, "ALICE", b"alice-pw") == "alice"
    wrong = check(reactor, checker, "alice", b"hunter2-wrong")

    assert isinstance(wrong, Failure) and wrong.check(UnauthorizedLogin)
    texts = [formatEvent(event) for event in logged]
    assert any("accepted as alice" in text for text in texts), texts
    assert any(directory.WRONG_PASSWORD in text for text in texts), texts
    for secret in ("alice-pw", "hunter2-wrong", slapd.servicePassword):
        assert not any(secret in repr(event) for event in logged), secret


def test_checkerEmptyPasswordRefusedAtOnce(ldap, pool, reactor):
    """
    The checker refuses an empty password without a thread or a request:
    its Deferred has already fired.
    """
    checker = LDAPChecker(ldap, pool, reactor)

    outcome = []
    checker.requestAvatarId(UsernamePassword(b"alice", b"")).addErrback(
        outcome.append
    )

    assert outcome and outcome[0].check(UnauthorizedLogin)


def test_checkerServerDownIsTemporary(pool, reactor, logged):
    """
    Through the checker, a directory that is down is a temporary failure,
    and the log says so.
    """
    found = LDAPDirectory(
        LDAPSettings(servers=(closedURL(),), bindDN="cn=x", bindPassword="x")
    )
    checker = LDAPChecker(found, pool, reactor)

    result = check(reactor, checker, "alice", b"alice-pw")

    assert isinstance(result, Failure) and result.check(TemporaryAuthFailure)
    assert any("temporary failure" in formatEvent(event) for event in logged)


def test_senderSourceThroughPool(ldap, pool, reactor):
    """
    The sender source turns the directory's senders into permissions:
    alice may use her addresses, her aliases with a detail, and any
    address of her group's domain, but not bob's address.
    """
    source = LDAPSenderSource(ldap, pool, reactor)

    permissions = reactor.outcomeOf(source.sendersFor("alice"))

    for address in [
        "alice@example.org",
        "Alice.Smith+lists@example.org",
        "anyone@example.net",
    ]:
        assert permissions.permits(parseMailbox(address)), address
    assert not permissions.permits(parseMailbox("bob@example.org"))


def test_senderSourceDownIsTemporary(pool, reactor):
    """
    A directory that cannot answer makes the sender lookup a temporary
    failure.
    """
    found = LDAPDirectory(
        LDAPSettings(servers=(closedURL(),), bindDN="cn=x", bindPassword="x")
    )
    source = LDAPSenderSource(found, pool, reactor)

    result = reactor.outcomeOf(source.sendersFor("alice"))

    assert isinstance(result, Failure) and result.check(TemporaryAuthFailure)


def test_closeReleasesConnections(slapd):
    """
    After close, the pooled service connection is unbound and its slot
    is empty again.
    """
    found = searching(slapd)
    found.authenticate("alice", b"alice-pw")
    assert any(slot is not None for slot in found._slots.queue)

    found.close()

    assert found._slots.qsize() == found.settings.poolSize
    assert all(slot is None for slot in found._slots.queue)


@pytest.mark.parametrize(
    "values, addresses",
    [
        (["alice@example.org"], ["alice@example.org"]),
        (
            ["SMTP:alice@example.org", "smtp:a.smith@example.org"],
            ["alice@example.org", "a.smith@example.org"],
        ),
        (["X500:/o=Example/cn=alice", "SIP:alice@example.org"], []),
        (["*", "@example.org", "*@example.org", "alice"], []),
    ],
)
def test_senderAddresses(values: list[str], addresses: list[str]) -> None:
    """
    Only whole addresses of a user's entry count, Active Directory's
    C{smtp:} prefix removed; a wildcard there grants nothing, so that a
    stray value in the directory cannot let one user send as anyone.
    """
    assert senderAddresses(values) == addresses
