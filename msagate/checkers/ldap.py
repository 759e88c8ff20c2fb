# -*- test-case-name: tests.test_directory -*-
"""
Check user names and passwords against an LDAP directory.

The checking itself is L{msagate.directory.LDAPDirectory}'s; this module
runs it in a thread pool, since every LDAP request blocks, and logs one
line per outcome for the operator: accepted (with the canonical name),
or why not.  The password never reaches the log.
"""

from __future__ import annotations

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

from msagate.directory import EMPTY_CREDENTIALS, LDAPDirectory
from msagate.errors import TemporaryAuthFailure

__all__ = ["LDAPChecker"]


@implementer(ICredentialsChecker)
class LDAPChecker:
    """
    A credentials checker for the users of an LDAP directory.

    @ivar directory: the L{LDAPDirectory} that checks passwords.
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(
        self,
        directory: LDAPDirectory,
        pool: ThreadPool,
        reactor: IReactorFromThreads,
    ) -> None:
        """
        @param directory: the directory.
        @param pool: the started thread pool that asks the directory.
        @param reactor: the reactor that receives the results from the pool.
        """
        self.directory = directory
        self._pool = pool
        self._reactor = reactor

    # ICredentialsChecker types avatar IDs as bytes; msagate's are str,
    # which the portal hands to the realm untouched.
    def requestAvatarId(  # type: ignore[override]
        self, credentials: IUsernamePassword
    ) -> Deferred[str]:
        """
        Check a user name and password.

        @param credentials: the user name (UTF-8, SASLprep already applied)
            and the password, both bytes as SASL delivers them.
        @return: a L{Deferred} firing with the canonical user name from the
            directory, or failing with L{UnauthorizedLogin} for bad
            credentials or a user name that is not UTF-8, or with
            L{TemporaryAuthFailure} when the directory cannot answer.
        """
        try:
            login = credentials.username.decode("utf-8")
        except UnicodeDecodeError:
            return self._refuse(None, "user name is not UTF-8")
        if not login or not credentials.password:
            return self._refuse(login, EMPTY_CREDENTIALS)

        checking = deferToThreadPool(
            self._reactor,
            self._pool,
            self.directory.authenticate,
            login,
            credentials.password,
        )
        checking.addCallback(self._accepted, login)
        return checking.addErrback(self._failed, login)

    def _refuse(self, login: str | None, reason: str) -> Deferred[str]:
        self._logOutcome(login, reason)
        return fail(UnauthorizedLogin(reason))

    def _accepted(self, user: str, login: str) -> str:
        self._logOutcome(login, f"accepted as {user}")
        return user

    def _failed(self, failure: Failure, login: str) -> Failure:
        if failure.check(UnauthorizedLogin):
            self._logOutcome(login, str(failure.value))
            return failure
        if failure.check(TemporaryAuthFailure):
            self._logOutcome(login, f"temporary failure: {failure.value}")
            return failure

        self.log.failure("LDAP check of {login} broke", failure, login=login)
        self._logOutcome(login, "temporary failure")
        return Failure(TemporaryAuthFailure("LDAP check broke"))

    def _logOutcome(self, login: str | None, outcome: str) -> None:
        self.log.debug(
            "LDAP check of {login}: {outcome}", login=login, outcome=outcome
        )
