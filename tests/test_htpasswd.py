"""
Tests for L{msagate.checkers.htpasswd}: checking passwords against an
Apache htpasswd file.
"""

from __future__ import annotations

import os
import threading

import bcrypt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from passlib import hash as passlibHash
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from msagate._watched import FileFormatError
from msagate.checkers import htpasswd
from msagate.checkers.htpasswd import HtpasswdChecker, parseHtpasswd
from msagate.errors import TemporaryAuthFailure

PASSWORD = "correct horse"


def bcryptHash(password: bytes, prefix: str = "$2b$", cost: int = 4) -> str:
    """
    Hash C{password} with bcrypt, cheaply, under the given variant prefix.
    """
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(cost)).decode()
    return prefix + hashed[4:]


SCHEMES = {
    "bcrypt $2y$": lambda pw: bcryptHash(pw.encode(), "$2y$"),
    "bcrypt $2b$": lambda pw: bcryptHash(pw.encode(), "$2b$"),
    "bcrypt $2a$": lambda pw: bcryptHash(pw.encode(), "$2a$"),
    "apr1": passlibHash.apr_md5_crypt.hash,
    "{SHA}": passlibHash.ldap_sha1.hash,
    "{SSHA}": passlibHash.ldap_salted_sha1.hash,
    "$1$": passlibHash.md5_crypt.hash,
    "$5$": passlibHash.sha256_crypt.hash,
    "$6$": passlibHash.sha512_crypt.hash,
    "$6$rounds=": passlibHash.sha512_crypt.using(rounds=6000).hash,
}


@pytest.fixture
def makeChecker(tmp_path, pool, reactor):
    """
    A function that writes an htpasswd file and returns a checker of it,
    and of the test's pool and reactor stand-in.
    """

    def make(text: str | bytes) -> HtpasswdChecker:
        path = tmp_path / "htpasswd"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return HtpasswdChecker(str(path), pool, reactor)

    return make


def checkPassword(reactor, checker, user, password):
    """
    Run one check through the pool.

    @return: the avatar id, or the L{Failure}.
    """
    credentials = UsernamePassword(
        user.encode() if isinstance(user, str) else user,
        password.encode() if isinstance(password, str) else password,
    )
    return reactor.outcomeOf(checker.requestAvatarId(credentials))


def assertRefused(result) -> None:
    """
    Assert that a check failed with L{UnauthorizedLogin}.
    """
    assert isinstance(result, Failure), result
    assert result.check(UnauthorizedLogin), result


def test_providesICredentialsChecker(makeChecker):
    """
    The checker provides ICredentialsChecker for username and password
    credentials.
    """
    checker = makeChecker("alice:" + bcryptHash(b"pw") + "\n")

    assert verifyObject(ICredentialsChecker, checker)
    assert checker.credentialInterfaces == (htpasswd.IUsernamePassword,)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_rightPasswordAccepted(scheme, makeChecker, reactor):
    """
    Each supported scheme accepts the right password, and the avatar id is
    the user name (AUTH-2).
    """
    checker = makeChecker(f"alice:{SCHEMES[scheme](PASSWORD)}\n")

    assert checkPassword(reactor, checker, "alice", PASSWORD) == "alice"


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_wrongPasswordRefused(scheme, makeChecker, reactor):
    """
    Each supported scheme refuses a wrong password with UnauthorizedLogin
    (AUTH-11).
    """
    checker = makeChecker(f"alice:{SCHEMES[scheme](PASSWORD)}\n")

    assertRefused(checkPassword(reactor, checker, "alice", "wrong"))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_storedHashAsPasswordRefused(scheme, makeChecker, reactor):
    """
    The stored hash itself is never accepted as the password.
    """
    stored = SCHEMES[scheme](PASSWORD)
    checker = makeChecker(f"alice:{stored}\n")

    assertRefused(checkPassword(reactor, checker, "alice", stored))


@pytest.mark.parametrize(
    "stored",
    [
        passlibHash.des_crypt.hash("s3cret"),
        "s3cret",
        "{PLAIN}s3cret",
        "$y$j9T$abcdefghijklmnop$" + "a" * 43,
    ],
    ids=["DES", "plaintext", "{PLAIN}", "yescrypt"],
)
def test_refusedFormatNeverLogsIn(stored, makeChecker, reactor):
    """
    DES crypt, plain text and unknown formats are refused even with the
    right password, and with the stored string as the password.
    """
    checker = makeChecker(f"alice:{stored}\n")

    assertRefused(checkPassword(reactor, checker, "alice", "s3cret"))
    assertRefused(checkPassword(reactor, checker, "alice", stored))


@pytest.mark.parametrize(
    "stored",
    [
        bcryptHash(b"pw", "$2x$"),
        bcryptHash(b"pw", "$2$"),
        passlibHash.apr_md5_crypt.hash("pw")[:12],
        bcryptHash(b"pw")[:30],
    ],
    ids=["$2x$", "$2$", "cut apr1", "cut bcrypt"],
)
def test_malformedHashNeverLogsIn(stored, makeChecker, reactor):
    """
    Faulty bcrypt variants and hashes cut short by a half-written file are
    refused without an error escaping, and reported as unusable.
    """
    checker = makeChecker(f"alice:{stored}\n")
    users = parseHtpasswd(f"alice:{stored}\n".encode())

    assertRefused(checkPassword(reactor, checker, "alice", "pw"))
    assert [entry.user for entry in users.unusable()] == ["alice"]


def test_unusableHashLoggedOncePerLoad(makeChecker, reactor, logged):
    """
    A user whose hash is in a refused format is logged once per load, by
    name and line, and the hash is not logged.
    """
    stored = passlibHash.des_crypt.hash("s3cret")
    checker = makeChecker(f"# users\nbob:{stored}\n")

    checker.load()
    checkPassword(reactor, checker, "bob", "s3cret")
    checkPassword(reactor, checker, "bob", "s3cret")

    texts = [formatEvent(event) for event in logged]
    named = [text for text in texts if "line 2" in text and "bob" in text]
    assert len(named) == 1
    assert not any(stored in text for text in texts)


def test_userNamesAreCaseSensitive(makeChecker, reactor):
    """
    A user name matches only with the same case.
    """
    checker = makeChecker("Alice:" + bcryptHash(b"pw") + "\n")

    assert checkPassword(reactor, checker, "Alice", "pw") == "Alice"
    assertRefused(checkPassword(reactor, checker, "alice", "pw"))
    assertRefused(checkPassword(reactor, checker, "ALICE", "pw"))


def test_nonAsciiUserName(makeChecker, reactor):
    """
    A UTF-8 user name is found and returned as the file writes it.
    """
    checker = makeChecker("jürgen:" + bcryptHash(b"pw") + "\n")

    assert checkPassword(reactor, checker, "jürgen", "pw") == "jürgen"


def test_commentsBlankLinesAndThirdFields(makeChecker, reactor):
    """
    Comments and blank lines are skipped, CRLF endings and surrounding
    white space are ignored, and anything after a second colon is too.
    """
    checker = makeChecker(
        "# staff\r\n\r\n   \n"
        f"alice:{bcryptHash(b'a')}:Alice Liddell\r\n"
        f"  bob:{passlibHash.apr_md5_crypt.hash('b')}::1000:1000  \n"
        "#carol:nothing\n"
    )

    assert checkPassword(reactor, checker, "alice", "a") == "alice"
    assert checkPassword(reactor, checker, "bob", "b") == "bob"
    assertRefused(checkPassword(reactor, checker, "#carol", "nothing"))


def test_firstEntryWins(makeChecker, reactor):
    """
    When a user appears twice, only the first entry counts, as in Apache.
    """
    checker = makeChecker(
        f"alice:{bcryptHash(b'first')}\nalice:{bcryptHash(b'second')}\n"
    )

    assert checkPassword(reactor, checker, "alice", "first") == "alice"
    assertRefused(checkPassword(reactor, checker, "alice", "second"))


def test_firstEntryWinsEvenWhenUnusable(makeChecker, reactor):
    """
    An unusable first entry is not replaced by a later usable one.
    """
    checker = makeChecker(f"alice:plain\nalice:{bcryptHash(b'pw')}\n")

    assertRefused(checkPassword(reactor, checker, "alice", "pw"))


@pytest.mark.parametrize(
    "line, problem",
    [
        ("alice", "no ':'"),
        (":$apr1$salt$hash", "empty"),
        ("alice:", "empty"),
        ("alice::comment", "empty"),
    ],
)
def test_malformedLineIsFormatError(line, problem):
    """
    A line without a colon, user name or hash raises FileFormatError with
    its line number and without its text.
    """
    with pytest.raises(FileFormatError) as raised:
        parseHtpasswd(f"# users\n{line}\n".encode())

    assert raised.value.line == 2
    assert problem in raised.value.problem
    assert "$apr1$" not in str(raised.value)


def test_lineNotUtf8IsFormatError():
    """
    A line that is not UTF-8 raises FileFormatError.
    """
    with pytest.raises(FileFormatError) as raised:
        parseHtpasswd(b"j\xfcrgen:{SHA}x\n")

    assert raised.value.line == 1


@given(
    st.text(min_size=1).filter(
        lambda name: (
            ":" not in name
            and not name.startswith("#")
            and name.encode().strip() == name.encode()
            and "\n" not in name
        )
    )
)
def test_parsedUserNameIsExact(name):
    """
    Any user name a line can hold comes back exactly as written.
    """
    users = parseHtpasswd(f"{name}:{{SHA}}x:extra\n".encode())

    assert list(users.entries) == [name]


def test_dummyHashFollowsFileBcryptCost():
    """
    Unknown users are checked against a bcrypt hash of the cost most of
    the file's users have, so that they take as long (AUTH-11).
    """
    users = parseHtpasswd(
        (
            f"a:{bcryptHash(b'x', cost=4)}\n"
            f"b:{bcryptHash(b'x', cost=6)}\n"
            f"c:{bcryptHash(b'x', cost=6)}\n"
        ).encode()
    )

    assert users.dummyHash.startswith(b"$2b$06$")


def test_dummyHashDefaultsToHtpasswdCost():
    """
    A file without bcrypt users gets a dummy hash of htpasswd's default
    bcrypt cost.
    """
    users = parseHtpasswd(b"a:{SHA}x\n")

    assert users.dummyHash.startswith(b"$2b$05$")


def test_reloadOnInPlaceRewrite(makeChecker, reactor):
    """
    Rewriting the file in place, as htpasswd does, takes effect at the next
    check.
    """
    checker = makeChecker(f"alice:{bcryptHash(b'old')}\n")
    checker.load()

    with open(checker.path, "w") as file:
        file.write(f"alice:{bcryptHash(b'new')}\nbob:{bcryptHash(b'b')}\n")

    assert checkPassword(reactor, checker, "alice", "new") == "alice"
    assert checkPassword(reactor, checker, "bob", "b") == "bob"
    assertRefused(checkPassword(reactor, checker, "alice", "old"))


def test_reloadOnAtomicReplace(makeChecker, reactor, tmp_path):
    """
    A new file renamed over the old one takes effect at the next check.
    """
    checker = makeChecker(f"alice:{bcryptHash(b'old')}\n")
    checker.load()

    replacement = tmp_path / "htpasswd.new"
    replacement.write_text(f"alice:{bcryptHash(b'new')}\n")
    os.replace(replacement, checker.path)

    assert checkPassword(reactor, checker, "alice", "new") == "alice"
    assertRefused(checkPassword(reactor, checker, "alice", "old"))


def test_halfWrittenFileKeepsOldUsers(makeChecker, reactor):
    """
    A new version cut short in the middle of a line leaves the previous
    users in force.
    """
    checker = makeChecker(f"alice:{bcryptHash(b'pw')}\n")
    checker.load()

    with open(checker.path, "w") as file:
        file.write(f"alice:{bcryptHash(b'pw')}\nbo")

    assert checkPassword(reactor, checker, "alice", "pw") == "alice"


def test_deletedFileKeepsOldUsers(makeChecker, reactor):
    """
    A file deleted after it was loaded leaves its users in force.
    """
    checker = makeChecker(f"alice:{bcryptHash(b'pw')}\n")
    checker.load()

    os.unlink(checker.path)

    assert checkPassword(reactor, checker, "alice", "pw") == "alice"


def test_bcryptPasswordCutAt72Bytes(makeChecker, reactor):
    """
    A password over 72 bytes verifies against a bcrypt hash of its first 72
    bytes, as Apache's bcrypt does, instead of raising.
    """
    password = b"p" * 72 + b"tail beyond the limit"
    checker = makeChecker(f"alice:{bcryptHash(password[:72], '$2y$')}\n")

    assert checkPassword(reactor, checker, "alice", password) == "alice"
    assertRefused(checkPassword(reactor, checker, "alice", b"p" * 71))


def test_bcryptValueErrorIsRefusal(makeChecker, reactor, monkeypatch):
    """
    A ValueError from bcrypt is a refusal, not an error.
    """
    checker = makeChecker(f"alice:{bcryptHash(b'pw')}\n")

    def refuse(password: bytes, hashed: bytes) -> bool:
        raise ValueError("invalid salt")

    monkeypatch.setattr(htpasswd.bcrypt, "checkpw", refuse)

    assertRefused(checkPassword(reactor, checker, "alice", "pw"))


def test_passwordBytesPassedUnchanged(makeChecker, reactor):
    """
    The password is verified as the bytes the client sent: UTF-8 bytes
    match a hash of the same bytes and Latin-1 bytes do not.
    """
    stored = passlibHash.apr_md5_crypt.hash("pässword".encode())
    checker = makeChecker(f"alice:{stored}\n")

    accepted = checkPassword(reactor, checker, "alice", "pässword".encode())
    latin1 = checkPassword(
        reactor, checker, "alice", "pässword".encode("latin-1")
    )

    assert accepted == "alice"
    assertRefused(latin1)


def test_unknownUserAndWrongPasswordFailAlike(makeChecker, reactor):
    """
    An unknown user and a wrong password both fail with the same
    UnauthorizedLogin (AUTH-11).
    """
    checker = makeChecker(f"alice:{bcryptHash(b'pw')}\n")

    unknown = checkPassword(reactor, checker, "mallory", "pw")
    wrong = checkPassword(reactor, checker, "alice", "nope")

    assertRefused(unknown)
    assertRefused(wrong)
    assert type(unknown.value) is type(wrong.value)
    assert str(unknown.value) == str(wrong.value)


def test_unknownUserCostsABcryptCheck(makeChecker, reactor, monkeypatch):
    """
    An unknown user is verified against the dummy bcrypt hash before being
    refused, so that it costs as much as a known one (AUTH-11).
    """
    checker = makeChecker(f"alice:{bcryptHash(b'pw', cost=5)}\n")
    checked = []
    realCheck = bcrypt.checkpw

    def recordingCheck(password: bytes, hashed: bytes) -> bool:
        checked.append(hashed)
        return realCheck(password, hashed)

    monkeypatch.setattr(htpasswd.bcrypt, "checkpw", recordingCheck)

    assertRefused(checkPassword(reactor, checker, "mallory", "pw"))
    assert len(checked) == 1
    assert checked[0].startswith(b"$2b$05$")


def test_unusableUserCostsABcryptCheck(makeChecker, reactor, monkeypatch):
    """
    A user with an unusable hash is verified against the dummy bcrypt hash
    too, so that unusable entries cannot be told apart (AUTH-11).
    """
    checker = makeChecker("alice:plain\n")
    checked = []
    monkeypatch.setattr(
        htpasswd.bcrypt, "checkpw", lambda p, h: checked.append(h) or False
    )

    assertRefused(checkPassword(reactor, checker, "alice", "plain"))
    assert len(checked) == 1


@pytest.mark.parametrize(
    "username",
    [b"", b"al\xffce", b"alice\n", b"al:ice", b"alice\x00", b"a\xc2\x85"],
    ids=["empty", "not UTF-8", "LF", "colon", "NUL", "C1 control"],
)
def test_malformedUserNameRefusedAtOnce(username, makeChecker):
    """
    An empty or undecodable user name, or one with a control character or
    a colon, is refused without touching the file (AUTH-13).
    """
    checker = makeChecker("al:ice\n")
    credentials = UsernamePassword(username, b"pw")

    assertRefused(resultNow(checker.requestAvatarId(credentials)))


def test_emptyPasswordRefusedAtOnce(makeChecker):
    """
    An empty password is refused without looking the user up.
    """
    checker = makeChecker(f"alice:{bcryptHash(b'')}\n")
    credentials = UsernamePassword(b"alice", b"")

    assertRefused(resultNow(checker.requestAvatarId(credentials)))


def resultNow(deferred):
    """
    @return: the result of a L{Deferred} that has already fired.
    """
    results = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_missingFileIsTemporaryFailure(tmp_path, pool, reactor):
    """
    A file that was never loaded and cannot be read is a temporary
    failure, not a refusal (AUTH-12).
    """
    path = str(tmp_path / "missing")
    checker = HtpasswdChecker(path, pool, reactor)

    result = checkPassword(reactor, checker, "alice", "pw")

    assert isinstance(result, Failure)
    assert result.check(TemporaryAuthFailure)


def test_unparseableFileIsTemporaryFailure(makeChecker, reactor):
    """
    A file that was never loaded and does not parse is a temporary
    failure (AUTH-12).
    """
    checker = makeChecker("alice\n")

    result = checkPassword(reactor, checker, "alice", "pw")

    assert isinstance(result, Failure)
    assert result.check(TemporaryAuthFailure)


def test_loadRaisesForUnusableFile(makeChecker, tmp_path, pool, reactor):
    """
    load() raises OSError for a missing file and FileFormatError for one
    that does not parse, so that start-up can stop.
    """
    missing = HtpasswdChecker(str(tmp_path / "none"), pool, reactor)
    malformed = makeChecker("alice\n")

    with pytest.raises(OSError):
        missing.load()
    with pytest.raises(FileFormatError):
        malformed.load()


def test_unexpectedErrorIsTemporaryFailure(
    makeChecker, reactor, monkeypatch, logged
):
    """
    An unexpected exception during the check becomes a temporary failure
    and is logged with its traceback, without the password.
    """
    checker = makeChecker(f"alice:{bcryptHash(b'pw')}\n")

    def broken(entry, password):
        raise RuntimeError("something broke")

    monkeypatch.setattr(htpasswd, "_verify", broken)
    result = checkPassword(reactor, checker, "alice", "hunter2-secret")

    assert result.check(TemporaryAuthFailure)
    assert any(event.get("log_failure") for event in logged)
    assert not any("hunter2-secret" in repr(event) for event in logged)


def test_checksRunInThePool(tmp_path, pool, reactor, monkeypatch):
    """
    Reading the file and verifying the password both happen in a pool
    thread, never on the calling thread.
    """
    path = tmp_path / "htpasswd"
    path.write_text(f"alice:{bcryptHash(b'pw')}\n")
    checker = HtpasswdChecker(str(path), pool, reactor)
    threads = {}

    def recordThread(name, function):
        def recording(*args):
            threads[name] = threading.get_ident()
            return function(*args)

        monkeypatch.setattr(htpasswd, name, recording)

    recordThread("parseHtpasswd", htpasswd.parseHtpasswd)
    recordThread("_verify", htpasswd._verify)

    assert checkPassword(reactor, checker, "alice", "pw") == "alice"
    assert set(threads) == {"parseHtpasswd", "_verify"}
    assert threading.get_ident() not in threads.values()


def test_resultWaitsForThePool(makeChecker, reactor):
    """
    requestAvatarId returns before the check has run, and the result
    arrives through the reactor.
    """
    checker = makeChecker(f"alice:{bcryptHash(b'pw')}\n")

    deferred = checker.requestAvatarId(UsernamePassword(b"alice", b"pw"))

    assert not deferred.called
    assert reactor.outcomeOf(deferred) == "alice"


def test_oneDebugEventPerCheck(makeChecker, reactor, logged):
    """
    Each check logs one event naming the user and the outcome, and never
    the password.
    """
    checker = makeChecker(f"alice:{bcryptHash(b'pw')}\n")

    checkPassword(reactor, checker, "alice", "hunter2-secret")
    checkPassword(reactor, checker, "alice", "pw")

    checks = [event for event in logged if "outcome" in event]
    assert [(e["user"], e["outcome"]) for e in checks] == [
        ("alice", "wrong password"),
        ("alice", "accepted"),
    ]
    assert not any("hunter2-secret" in repr(event) for event in logged)
