# -*- test-case-name: tests.test_realm -*-
"""
The C{twisted.cred} realm of submission: who a logged-in user is and which
senders they may use.

The realm asks its L{ISenderSource} once per login and keeps the answer in
the account for the whole session, so that a session never waits on a file
or a directory between MAIL commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import Interface, implementer

from msagate.address import Mailbox
from msagate.interfaces import IAccount, ISenderSource
from msagate.senders import SenderPermissions


@implementer(IAccount)
@dataclass(frozen=True)
class Account:
    """
    An authenticated user and the senders they may use.

    @ivar user: the canonical user name.
    @ivar permissions: the user's L{SenderPermissions}, looked up at login.
    """

    user: str
    permissions: SenderPermissions

    def maySendAs(self, mailbox: Mailbox | None) -> bool:
        """
        Whether this user may use C{mailbox} as a sender.

        @param mailbox: the sender, or L{None} for the null sender, which
            every user may use (RFC 6409 section 3.2, SUB-7).
        @return: L{True} when the user's permissions allow it.
        """
        if mailbox is None:
            return True
        return self.permissions.permits(mailbox)


# What IRealm.requestAvatar gives: (interface, avatar, logout).
_Avatar = tuple[type[Interface], object, Callable[[], None]]


@implementer(IRealm)
class SubmissionRealm:
    """
    Hands out L{Account} avatars for the L{IAccount} interface.

    @ivar senderSource: where each user's sender permissions come from.
    """

    def __init__(self, senderSource: ISenderSource) -> None:
        """
        @param senderSource: an L{ISenderSource}.
        """
        self.senderSource = senderSource

    # IRealm types avatar IDs as bytes; msagate's checkers give str, which
    # the portal passes through untouched.
    def requestAvatar(  # type: ignore[override]
        self,
        avatarId: bytes | str,
        mind: object,
        *interfaces: type[Interface],
    ) -> Deferred[_Avatar]:
        """
        Build the account of a user whose credentials were checked.

        @param avatarId: the canonical user name from the checker; bytes
            are decoded as UTF-8.
        @param mind: unused.
        @param interfaces: the interfaces the caller can use.
        @return: a L{Deferred} firing with C{(IAccount, account, logout)},
            or failing with L{msagate.errors.TemporaryAuthFailure} when the
            sender source cannot answer now.
        @raise NotImplementedError: when L{IAccount} is not among
            C{interfaces}.
        @raise UnicodeDecodeError: when C{avatarId} is bytes that are not
            UTF-8.
        """
        if IAccount not in interfaces:
            raise NotImplementedError("the realm offers only IAccount")
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8")

        # maybeDeferred waits on a Deferred result, but its overloads
        # cannot say so of a function that may return either.
        found: Deferred[SenderPermissions]
        found = maybeDeferred(  # type: ignore[call-overload]
            self.senderSource.sendersFor, avatarId
        )
        return found.addCallback(
            lambda permissions: (
                IAccount,
                Account(avatarId, permissions),
                _logout,
            )
        )


def _logout() -> None:
    # An account holds nothing that needs releasing.
    pass
