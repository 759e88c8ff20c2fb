# -*- test-case-name: tests.test_throttle -*-
"""
Failed authentications counted per client address, across sessions.

A password guesser opens a new connection after each session's few tries;
counting by address catches it (RFC 4954 section 9).  Only the address is
ever blocked, never the account, so an attacker cannot lock a user out by
failing on purpose.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IReactorTime

# How many addresses are remembered before the forgotten ones are dropped.
PRUNE_ABOVE = 10000


class AuthThrottle:
    """
    Remembers each client address's failed authentications for a while.

    @ivar limit: failures within the window after which the address may
        not authenticate; 0 turns the throttle off.
    @ivar window: seconds a failure is remembered.
    """

    def __init__(self, clock: IReactorTime, limit: int, window: float):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def failures(self, client: str) -> int:
        """
        @return: the failures of C{client} still remembered.
        """
        recent = self._failures.get(client)
        if recent is None:
            return 0
        horizon = self._clock.seconds() - self.window
        while recent and recent[0] <= horizon:
            recent.popleft()
        if not recent:
            del self._failures[client]
        return len(recent)

    def blocked(self, client: str) -> bool:
        """
        @return: whether C{client} has failed too often to try again now.
        """
        return self.limit > 0 and self.failures(client) >= self.limit

    def failed(self, client: str) -> None:
        """
        Record one failed authentication of C{client}.
        """
        if self.limit > 0:
            if len(self._failures) > PRUNE_ABOVE:
                for known in list(self._failures):
                    self.failures(known)
            recent = self._failures.setdefault(client, deque())
            recent.append(self._clock.seconds())
            if len(recent) > self.limit:
                recent.popleft()
