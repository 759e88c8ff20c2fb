"""
Tests for L{msagate.sasl}: the PLAIN and LOGIN mechanisms.
"""

from __future__ import annotations

import pytest
from twisted.cred.credentials import IUsernamePassword, UsernamePassword

from msagate.sasl import MECHANISMS, Login, Plain, SASLFailure, saslprep


def assertCredentials(result: object, username: bytes, password: bytes):
    """
    Assert that C{result} is twisted.cred username and password
    credentials holding C{username} and C{password} as bytes.
    """
    assert isinstance(result, UsernamePassword)
    assert IUsernamePassword.providedBy(result)
    assert result.username == username
    assert result.password == password
    assert isinstance(result.username, bytes)
    assert isinstance(result.password, bytes)


def test_mechanismNames() -> None:
    """
    PLAIN and LOGIN are offered, each under its own name, and nothing
    else (AUTH-18, AUTH-20).
    """
    assert set(MECHANISMS) == {"PLAIN", "LOGIN"}
    for name, mechanism in MECHANISMS.items():
        assert mechanism.name == name
    assert MECHANISMS["PLAIN"] is Plain
    assert MECHANISMS["LOGIN"] is Login


# PLAIN


def test_plainWithoutInitialResponse() -> None:
    """
    PLAIN without an initial response asks with an empty challenge
    (AUTH-3).
    """
    assert Plain().start(None) == b""


def test_plainEmptyInitialResponseIsNotAbsent() -> None:
    """
    An empty initial response is a response, not a request for a
    challenge, and it is refused as malformed (AUTH-3).
    """
    with pytest.raises(SASLFailure):
        Plain().start(b"")


@pytest.mark.parametrize("initial", [True, False])
def test_plainGood(initial: bool) -> None:
    """
    A PLAIN response of empty authzid, user and password gives those
    credentials, as initial response or after the challenge (AUTH-2).
    """
    mechanism = Plain()
    message = b"\0alice\0alice's password"
    if initial:
        result = mechanism.start(message)
    else:
        assert mechanism.start(None) == b""
        result = mechanism.respond(message)
    assertCredentials(result, b"alice", b"alice's password")


def test_plainAuthzidEqualToAuthcid() -> None:
    """
    An authorisation identity equal to the user name is accepted, since it
    asks for nothing more (AUTH-14).
    """
    result = Plain().respond(b"alice\0alice\0pw")
    assertCredentials(result, b"alice", b"pw")


@pytest.mark.parametrize(
    "message", [b"bob\0alice\0pw", b"Alice\0alice\0pw", b"alice \0alice\0pw"]
)
def test_plainAuthzidDifferentRefused(message: bytes) -> None:
    """
    An authorisation identity different from the user name is refused
    (AUTH-14).
    """
    with pytest.raises(SASLFailure):
        Plain().respond(message)


@pytest.mark.parametrize(
    "message",
    [b"alicepw", b"alice\0pw", b"\0alice\0pw\0", b"\0\0alice\0pw", b"\0"],
)
def test_plainWrongFieldCount(message: bytes) -> None:
    """
    A PLAIN message that is not exactly three NUL-separated fields is
    refused.
    """
    with pytest.raises(SASLFailure):
        Plain().respond(message)


def test_plainNULInPasswordRefused() -> None:
    """
    A NUL cannot hide inside a PLAIN password: it makes a fourth field,
    which is refused.
    """
    with pytest.raises(SASLFailure):
        Plain().respond(b"\0alice\0pass\0word")


@pytest.mark.parametrize("message", [b"\0\0pw", b"\0alice\0", b"\0\0"])
def test_plainEmptyFieldsRefused(message: bytes) -> None:
    """
    An empty user name or an empty password is refused before any checker
    sees it, so that no LDAP server is asked for an anonymous bind.
    """
    with pytest.raises(SASLFailure):
        Plain().respond(message)


@pytest.mark.parametrize(
    "user", [b"al\rice", b"al\nice", b"al\tice", b"\x1balice", b"alice\x7f"]
)
def test_plainControlCharacterInUserRefused(user: bytes) -> None:
    """
    A user name with a control character is refused, so that it can reach
    neither headers nor logs (AUTH-13, HDR-8).
    """
    with pytest.raises(SASLFailure):
        Plain().respond(b"\0" + user + b"\0pw")


def test_plainPasswordMayHoldAnyOtherOctet() -> None:
    """
    A password may hold spaces, control characters other than NUL and
    non-ASCII octets; only the checker judges it.
    """
    password = b" \t\x01\xc3\xa9\x7f"
    assertCredentials(
        Plain().respond(b"\0alice\0" + password), b"alice", password
    )


def test_plainKeepsUserNameCase() -> None:
    """
    The user name reaches the checker exactly as the client sent it.
    """
    assertCredentials(Plain().respond(b"\0Alice\0pw"), b"Alice", b"pw")


# LOGIN


def test_loginPrompts() -> None:
    """
    LOGIN without an initial response prompts for the user name, then for
    the password, then gives the credentials.
    """
    mechanism = Login()
    assert mechanism.start(None) == b"Username:"
    assert mechanism.respond(b"alice") == b"Password:"
    assertCredentials(mechanism.respond(b"pw"), b"alice", b"pw")


def test_loginInitialResponseIsTheUserName() -> None:
    """
    An initial response to LOGIN is the user name, so the first prompt is
    for the password (AUTH-3).
    """
    mechanism = Login()
    assert mechanism.start(b"alice") == b"Password:"
    assertCredentials(mechanism.respond(b"pw"), b"alice", b"pw")


def test_loginSessionsAreIndependent() -> None:
    """
    Each LOGIN exchange has its own state: a user name given to one is not
    used by another.
    """
    first, second = Login(), Login()
    first.start(b"alice")
    assert second.start(None) == b"Username:"
    assert second.respond(b"bob") == b"Password:"
    assertCredentials(second.respond(b"pw"), b"bob", b"pw")


@pytest.mark.parametrize(
    "user, password",
    [
        (b"", b"pw"),
        (b"alice", b""),
        (b"al\nice", b"pw"),
        (b"al\0ice", b"pw"),
        (b"alice", b"p\0w"),
    ],
)
def test_loginRefusesBadFields(user: bytes, password: bytes) -> None:
    """
    LOGIN refuses an empty user name or password, a control character in
    the user name and a NUL in the password (AUTH-13).
    """
    mechanism = Login()
    mechanism.start(None)
    mechanism.respond(user)
    with pytest.raises(SASLFailure):
        mechanism.respond(password)


@pytest.mark.parametrize(
    "given, prepared",
    [
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        ("a\u00a0b", "a b"),
        ("alice@example.org", "alice@example.org"),
    ],
)
def test_saslprepMaps(given: str, prepared: str) -> None:
    """
    SASLprep maps soft hyphens to nothing, compatibility characters to
    their plain forms and non-ASCII spaces to a space (AUTH-13; the cases
    of RFC 4013 section 3).
    """
    assert saslprep(given) == prepared


@pytest.mark.parametrize(
    "given", ["\u0007", "a\u0000b", "\u00ad", "\u0627\u0031", "\ue000"]
)
def test_saslprepRefuses(given: str) -> None:
    """
    A prohibited character, a name empty once prepared and broken
    right-to-left text are refused (AUTH-13).
    """
    with pytest.raises(SASLFailure):
        saslprep(given)


def test_plainPreparesUserName() -> None:
    """
    PLAIN hands the checker the prepared user name and the password as
    sent (AUTH-13).
    """
    response = "\0I\u00adX\0p\u00e4ss".encode()
    credentials = Plain().respond(response)
    assert credentials.username == b"IX"
    assert credentials.password == "p\u00e4ss".encode()
