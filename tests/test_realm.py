"""
Tests for L{msagate.realm}: the accounts handed to submission sessions.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from msagate.address import parseMailbox
from msagate.errors import TemporaryAuthFailure
from msagate.interfaces import IAccount, ISenderSource
from msagate.realm import Account, SubmissionRealm
from msagate.senders import LoginSenderSource, SenderPermissions

ALICE = SenderPermissions.fromEntries(["alice@example.org", "@example.net"])


@implementer(ISenderSource)
class RecordingSource:
    """
    A sender source that answers with whatever the test gives it and
    records who was asked about.
    """

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def sendersFor(self, user: str) -> Any:
        self.asked.append(user)
        return self.answer


class IOther(Interface):
    """
    An interface the realm does not offer.
    """


def outcomeOf(deferred: Deferred[Any]) -> Any:
    """
    Return what an already fired C{deferred} fired with.
    """
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert len(outcome) == 1
    return outcome[0]


def test_accountProvidesIAccount() -> None:
    """
    Account provides IAccount.
    """
    assert verifyObject(IAccount, Account("alice", ALICE))


def test_realmProvidesIRealm() -> None:
    """
    SubmissionRealm provides IRealm.
    """
    assert verifyObject(IRealm, SubmissionRealm(LoginSenderSource()))


@pytest.mark.parametrize(
    "sender, expected",
    [
        ("alice@example.org", True),
        ("alice+x@example.org", True),
        ("anyone@example.net", True),
        ("bob@example.org", False),
        ("alice@sub.example.net", False),
    ],
)
def test_maySendAs(sender: str, expected: bool) -> None:
    """
    An account allows exactly the senders of its permissions (SUB-16,
    SEC-6).
    """
    account = Account("alice", ALICE)

    assert account.maySendAs(parseMailbox(sender)) is expected


def test_maySendAsNullSender() -> None:
    """
    Every account may use the null sender, even one permitted nothing
    else (SUB-7).
    """
    account = Account("nobody", SenderPermissions.NOBODY)

    assert account.maySendAs(None)


def test_requestAvatar() -> None:
    """
    The realm answers IAccount with an account of the user's permissions
    and a logout callable.
    """
    source = RecordingSource(ALICE)
    realm = SubmissionRealm(source)

    interface, account, logout = outcomeOf(
        realm.requestAvatar("alice", None, IOther, IAccount)
    )

    assert interface is IAccount
    assert account == Account("alice", ALICE)
    assert logout() is None
    assert source.asked == ["alice"]


def test_requestAvatarBytes() -> None:
    """
    A bytes avatar ID is decoded as UTF-8 before the lookup.
    """
    source = RecordingSource(ALICE)
    realm = SubmissionRealm(source)

    _, account, _ = outcomeOf(
        realm.requestAvatar("jösé".encode(), None, IAccount)
    )

    assert account.user == "jösé"
    assert source.asked == ["jösé"]


def test_requestAvatarDeferredSource() -> None:
    """
    The account is handed out only once the source's Deferred fires.
    """
    pending: Deferred[SenderPermissions] = Deferred()
    realm = SubmissionRealm(RecordingSource(pending))
    outcome: list[Any] = []

    realm.requestAvatar("alice", None, IAccount).addBoth(outcome.append)
    assert outcome == []

    pending.callback(ALICE)
    assert outcome[0][1] == Account("alice", ALICE)


def test_requestAvatarWrongInterface() -> None:
    """
    A request without IAccount is refused, without a lookup.
    """
    source = RecordingSource(ALICE)
    realm = SubmissionRealm(source)

    with pytest.raises(NotImplementedError):
        realm.requestAvatar("alice", None, IOther)
    assert source.asked == []


def test_requestAvatarTemporaryFailure() -> None:
    """
    A TemporaryAuthFailure from the source is the Deferred's failure.
    """
    error = TemporaryAuthFailure("sender map unreadable")
    realm = SubmissionRealm(RecordingSource(fail(error)))

    outcome = outcomeOf(realm.requestAvatar("alice", None, IAccount))

    assert isinstance(outcome, Failure)
    assert outcome.value is error


def test_requestAvatarSourceRaises() -> None:
    """
    A source that raises instead of returning a failed Deferred still
    makes the Deferred fail.
    """
    source = RecordingSource(None)
    source.sendersFor = lambda user: 1 / 0  # type: ignore[method-assign]
    realm = SubmissionRealm(source)

    outcome = outcomeOf(realm.requestAvatar("alice", None, IAccount))

    assert outcome.check(ZeroDivisionError)


def test_lookedUpOncePerLogin() -> None:
    """
    The permissions are looked up once at login; later sender checks use
    what the account holds (SUB-16).
    """
    source = RecordingSource(succeed(ALICE))
    realm = SubmissionRealm(source)

    _, account, _ = outcomeOf(realm.requestAvatar("alice", None, IAccount))
    account.maySendAs(parseMailbox("alice@example.org"))
    account.maySendAs(parseMailbox("bob@example.org"))

    assert source.asked == ["alice"]


def test_portalLogin() -> None:
    """
    Through a Portal, a checker's bytes user name becomes an account
    whose login address is its default sender (SUB-16).
    """
    checker = InMemoryUsernamePasswordDatabaseDontUse()
    checker.addUser(b"alice@example.org", b"secret")
    portal = Portal(SubmissionRealm(LoginSenderSource()), [checker])

    credentials = UsernamePassword(b"alice@example.org", b"secret")
    _, account, _ = outcomeOf(portal.login(credentials, None, IAccount))

    assert account.user == "alice@example.org"
    assert account.maySendAs(parseMailbox("alice@example.org"))
    assert not account.maySendAs(parseMailbox("bob@example.org"))
