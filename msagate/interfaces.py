"""
The seams of msagate, as C{zope.interface} declarations.

Read this module to know every point where an implementation can be
swapped:

  - credential checkers are C{twisted.cred} L{ICredentialsChecker}s; they
    verify L{IUsernamePassword} credentials and fail with
    L{UnauthorizedLogin} for bad credentials or with
    L{msagate.errors.TemporaryAuthFailure} when their backend is down;
  - the realm is a C{twisted.cred} L{IRealm} whose avatars provide
    L{IAccount};
  - an L{ISenderSource} tells the realm which senders a user may use;
  - the protocol hands each accepted message to an L{ISpool};
  - the relay manager reaches next hops through an L{IConnector}, and
    answers the administrator's requests as an
    L{msagate.control.IQueueControl};
  - L{IServerReactor} is what msagate needs of a reactor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.interfaces import (
    IReactorFromThreads,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from msagate.address import Mailbox
    from msagate.client import SMTPSession
    from msagate.envelope import Envelope
    from msagate.nexthop import Host
    from msagate.senders import SenderPermissions

__all__ = [
    "IAccount",
    "IConnector",
    "ICredentialsChecker",
    "IRealm",
    "ISenderSource",
    "ISpool",
    "IServerReactor",
    "ISpoolWriter",
    "IUsernamePassword",
    "UnauthorizedLogin",
]


class IAccount(Interface):
    """
    An authenticated user, as the realm hands it to a submission session.
    """

    user: str = Attribute(
        "The canonical user name (a str): what logs and the Received field "
        "show, whatever spelling the client typed at AUTH."
    )

    def maySendAs(address: Mailbox) -> bool:
        """
        Whether this user may use C{address} as the envelope sender or in
        the From: and Sender: header fields.

        @param address: a L{msagate.address.Mailbox}.  The null sender is
            never asked about: every user may use it (RFC 6409 section
            3.2).
        @return: a L{bool}.
        """


class ISenderSource(Interface):
    """
    Where the realm learns which senders a user may use.
    """

    def sendersFor(
        user: str,
    ) -> SenderPermissions | Deferred[SenderPermissions]:
        """
        Look up the sender permissions of C{user}.

        @param user: the canonical user name, as the credential checker
            returned it.
        @return: a L{msagate.senders.SenderPermissions}, or a
            L{twisted.internet.defer.Deferred} firing with one.  A failure
            with L{msagate.errors.TemporaryAuthFailure} makes the login a
            temporary failure.
        """


class ISpool(Interface):
    """
    Durable storage for accepted messages, read by the relay manager.
    """

    def begin(envelope: Envelope) -> ISpoolWriter:
        """
        Start storing one message.

        @param envelope: the L{msagate.envelope.Envelope} of the message.
        @return: an L{ISpoolWriter} for its data.
        @raise OSError: when the spool cannot take the message now; a spool
            may also report that later, from the writer's C{write} or
            C{commit}.
        """


class ISpoolWriter(Interface):
    """
    One message on its way into the spool.
    """

    queueID: str = Attribute("The message's queue identifier (a str).")

    def write(data: bytes) -> None:
        """
        Append C{data} (bytes) to the message.

        @raise OSError: when the data cannot be written.
        """

    def commit() -> Deferred[None]:
        """
        Make the message durable and hand it to the relay manager.

        @return: a L{twisted.internet.defer.Deferred} that fires once the
            message and its envelope are on stable storage (fsync), or
            fails; after a failure nothing of the message is left behind.
        """

    def abort() -> None:
        """
        Throw the message away; nothing of it is left behind.
        """


class IServerReactor(
    IReactorTime, IReactorFromThreads, IReactorTCP, IReactorUNIX
):
    """
    What msagate needs of a reactor: time for timeouts and retries,
    results handed back from its thread pools, TCP connections to next
    hops and the control socket.  The global reactor provides all of it.
    """


class IConnector(Interface):
    """
    Opens SMTP sessions with next hops.
    """

    def connect(host: Host, security: str) -> Deferred[SMTPSession]:
        """
        @param security: the TLS mode of the session (see
            L{msagate.client.ClientSettings.security}).
        @return: a L{Deferred} that fires with a session ready for mail,
            or fails with L{msagate.client.DeliveryError}.
        """
