# -*- test-case-name: tests.test_sasl -*-
"""
The SASL mechanisms msagate offers: PLAIN (RFC 4616) and LOGIN.

A mechanism sees the decoded client responses and answers with the next
challenge or with finished credentials.  Base64, the C{*} cancel and line
limits are the protocol's business (RFC 4954 section 4); a mechanism never
sees the wire and never logs.
"""

from __future__ import annotations

import base64
import binascii
import stringprep
import unicodedata

from twisted.cred.credentials import UsernamePassword


class SASLFailure(Exception):
    """
    The client's responses cannot be credentials; the client is told the
    same as for a wrong password (RFC 4954 section 6, AUTH-11).
    """


class SASLCancelled(Exception):
    """
    The client cancelled the exchange with C{*} (RFC 4954 section 4).
    """


class SASLEncodingError(Exception):
    """
    A client response is not strict base64 (RFC 4954 section 4).
    """


class Plain:
    """
    SASL PLAIN: one message, C{authzid NUL authcid NUL password}.

    A non-empty authorisation identity different from the authentication
    identity would mean acting on behalf of someone else; msagate has no
    such permission, so it is refused.
    """

    name = "PLAIN"

    def start(self, initial: bytes | None) -> bytes | UsernamePassword:
        """
        @param initial: the decoded initial response, or L{None} when the
            client sent none.
        @return: the empty challenge, or the credentials.
        @raise SASLFailure: when the response is malformed.
        """
        if initial is None:
            return b""
        return self.respond(initial)

    def respond(self, response: bytes) -> UsernamePassword:
        """
        @return: the credentials in C{response}.
        @raise SASLFailure: when C{response} is malformed.
        """
        parts = response.split(b"\0")
        if len(parts) != 3:
            raise SASLFailure("PLAIN response is not three fields")
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            raise SASLFailure("PLAIN authorisation identity differs")
        return _credentials(authcid, password)


class Login:
    """
    The LOGIN mechanism: a user name prompt, then a password prompt.

    It predates SASL's standards track, but Outlook and many devices
    still offer nothing else.
    """

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: bytes | None = None

    def start(self, initial: bytes | None) -> bytes:
        """
        @param initial: the user name, when the client sent it with AUTH.
        @return: the next prompt.
        """
        if initial is None:
            return b"Username:"
        self._username = initial
        return b"Password:"

    def respond(self, response: bytes) -> bytes | UsernamePassword:
        """
        @return: the password prompt after the user name, then the
            credentials.
        @raise SASLFailure: when a response is malformed.
        """
        if self._username is None:
            self._username = response
            return b"Password:"
        return _credentials(self._username, response)


MECHANISMS = {mechanism.name: mechanism for mechanism in (Plain, Login)}


def _credentials(username: bytes, password: bytes) -> UsernamePassword:
    """
    Refuse what no checker should ever be asked about: an empty name or
    password (an empty password is an anonymous bind to LDAP), or a name
    that SASLprep refuses (control characters among others, which could
    reach headers and logs).  The password is passed on as sent: stored
    hashes were made from the bytes users typed.
    """
    if not password or b"\0" in password:
        raise SASLFailure("empty password, or NUL in it")
    try:
        prepared = saslprep(username.decode("utf-8"))
    except UnicodeDecodeError:
        raise SASLFailure("user name is not UTF-8") from None
    return UsernamePassword(prepared.encode("utf-8"), password)


def saslprep(text: str) -> str:
    """
    Prepare a user name with SASLprep (RFC 4013), as RFC 4954 section 4
    asks of the identities in an AUTH exchange.  Unassigned code points
    are allowed, as in a query (RFC 3454 section 7).

    @return: the prepared name.
    @raise SASLFailure: when the name holds a prohibited character, breaks
        the bidirectional rules, or is empty once prepared.
    """
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c
        for c in text
        if not stringprep.in_table_b1(c)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    if not prepared:
        raise SASLFailure("empty user name")
    if any(_prohibited(c) for c in prepared):
        raise SASLFailure("prohibited character in user name")

    # RFC 3454 section 6: right-to-left text must be wholly so, and start
    # and end with a right-to-left character.
    if any(stringprep.in_table_d1(c) for c in prepared):
        if any(stringprep.in_table_d2(c) for c in prepared) or not (
            stringprep.in_table_d1(prepared[0])
            and stringprep.in_table_d1(prepared[-1])
        ):
            raise SASLFailure("mixed-direction user name")
    return prepared


_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def _prohibited(character: str) -> bool:
    return any(inTable(character) for inTable in _PROHIBITED)


class SASLExchange:
    """
    One AUTH exchange, framed as RFC 4954 section 4 frames it: base64 in
    both directions, C{*} to cancel, C{=} for an empty initial response.

    @ivar name: the mechanism's name.
    """

    def __init__(self, mechanism: Plain | Login) -> None:
        self.name = mechanism.name
        self._mechanism = mechanism

    @classmethod
    def forName(cls, name: str) -> SASLExchange | None:
        """
        @return: an exchange of the mechanism called C{name} (any case), or
            L{None} when msagate does not offer it.
        """
        mechanism = MECHANISMS.get(name.upper())
        return None if mechanism is None else cls(mechanism())

    def start(self, initial: str) -> str | UsernamePassword:
        """
        @param initial: the initial response of the AUTH command, C{""}
            when there is none.
        @return: the next challenge, base64-encoded, or the credentials.
        @raise SASLEncodingError: when C{initial} is not base64.
        @raise SASLFailure: when it cannot be credentials.
        """
        if not initial:
            return _encode(self._mechanism.start(None))
        decoded = b"" if initial == "=" else _decode(initial.encode())
        return _encode(self._mechanism.start(decoded))

    def respond(self, line: bytes) -> str | UsernamePassword:
        """
        @param line: the client's response line.
        @return: the next challenge, base64-encoded, or the credentials.
        @raise SASLCancelled: when the client cancels.
        @raise SASLEncodingError: when C{line} is not base64.
        @raise SASLFailure: when the responses cannot be credentials.
        """
        if line == b"*":
            raise SASLCancelled()
        return _encode(self._mechanism.respond(_decode(line)))


def _encode(outcome: bytes | UsernamePassword) -> str | UsernamePassword:
    if isinstance(outcome, bytes):
        return base64.b64encode(outcome).decode("ascii")
    return outcome


def _decode(text: bytes) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLEncodingError() from None
