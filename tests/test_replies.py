"""
Tests for L{msagate.replies}: the catalogue of every reply msagate sends.
"""

from __future__ import annotations

import re
import string

import pytest

from msagate import replies
from msagate.replies import Refused, Reply

CATALOGUE = {
    name: value
    for name, value in vars(replies).items()
    if isinstance(value, Reply)
}

# Replies that RFC 2034 section 3 leaves without an enhanced code besides
# the 3xx ones: the greeting and the EHLO/HELO reply.
UNCODED = {"GREETING", "HELO_OK"}

# Worst-case values for the placeholders: a 255-octet domain chosen by the
# client, a long host name of our own, and the longest other values.
LONG_DOMAIN = ".".join(["d" * 63] * 4)
PLACEHOLDERS = {
    "host": "msa." + "h" * 60 + ".example.org",
    "client": LONG_DOMAIN,
    "challenge": "VXNlcm5hbWU6",
    "queueID": "F" * 18,
    "limit": 2**63,
    "detail": "several From mailboxes need a Sender field",
}

STATUS = re.compile(r"[245]\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\Z")


def filled(reply: Reply) -> Reply:
    """
    Return C{reply} with every placeholder filled with its worst case.
    """
    return reply.fill(**PLACEHOLDERS)


def test_catalogueIsFound() -> None:
    """
    The catalogue scan finds the replies, so the checks below check
    something.
    """
    assert len(CATALOGUE) > 40
    assert CATALOGUE["OK"] is replies.OK
    assert UNCODED <= set(CATALOGUE)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_codeRange(name: str) -> None:
    """
    Every basic code is three digits from 2xx to 5xx (SMTP-32).
    """
    code = CATALOGUE[name].code
    assert isinstance(code, int)
    assert 200 <= code <= 599


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_enhancedCodePresence(name: str) -> None:
    """
    3xx replies, the greeting and the EHLO/HELO reply carry no enhanced
    code; every other reply carries one (EXT-1).
    """
    reply = CATALOGUE[name]
    if reply.code // 100 == 3 or name in UNCODED:
        assert reply.status == ""
    else:
        assert reply.status != ""


@pytest.mark.parametrize(
    "name", sorted(name for name in CATALOGUE if CATALOGUE[name].status)
)
def test_enhancedCodeSyntax(name: str) -> None:
    """
    Enhanced codes are class.subject.detail without leading zeros or
    spaces, and the class is the first digit of the basic code (EXT-1,
    EXT-2).
    """
    reply = CATALOGUE[name]
    assert STATUS.match(reply.status), reply.status
    assert reply.status[0] == str(reply.code)[0]


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_textIsPrintableASCII(name: str) -> None:
    """
    Reply text is printable ASCII, before and after its placeholders are
    filled (EXT-13, HDR-8).
    """
    printable = set(string.printable) - set("\t\n\r\x0b\x0c")
    for text in (CATALOGUE[name].text, filled(CATALOGUE[name]).text):
        assert text
        assert set(text) <= printable, text


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_lineFitsIn512Octets(name: str) -> None:
    """
    Each formatted reply line, placeholders filled with their longest
    values, fits in 512 octets with its CRLF (RFC 5321 section 4.5.3.1.5).
    """
    line = filled(CATALOGUE[name]).format()
    assert line.endswith(b"\r\n")
    assert line.count(b"\r\n") == 1
    assert len(line) <= 512


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_placeholdersAllFilled(name: str) -> None:
    """
    Filling the placeholders leaves no brace behind and keeps the codes.
    """
    reply = CATALOGUE[name]
    result = filled(reply)
    assert "{" not in result.text and "}" not in result.text
    assert (result.code, result.status) == (reply.code, reply.status)


def test_formatSingleLine() -> None:
    """
    A single-line reply is code, space, enhanced code, text and CRLF
    (EXT-1).
    """
    assert (
        Reply(250, "2.1.0", "Sender OK").format() == b"250 2.1.0 Sender OK\r\n"
    )


def test_formatSingleLineWithoutStatus() -> None:
    """
    A reply without an enhanced code is code, space, text and CRLF.
    """
    assert Reply(354, "", "Go ahead").format() == b"354 Go ahead\r\n"


def test_formatMultiLine() -> None:
    """
    In a multi-line reply every line repeats the code and the enhanced
    code, with '-' after the code on all lines but the last (SMTP-32,
    EXT-1).
    """
    reply = Reply(250, "2.0.0", "first")
    assert reply.format("second", "third") == (
        b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n"
    )


def test_formatMultiLineWithoutStatus() -> None:
    """
    The EHLO reply, which has no enhanced code, lists its keywords with
    '-' on all lines but the last (SMTP-32).
    """
    reply = replies.HELO_OK.fill(host="msa.example.org", client="c.example")
    assert reply.format("PIPELINING", "8BITMIME") == (
        b"250-msa.example.org greets c.example\r\n"
        b"250-PIPELINING\r\n"
        b"250 8BITMIME\r\n"
    )


def test_formatRefusesNonASCII() -> None:
    """
    A reply cannot be put on the wire with non-ASCII text (EXT-13).
    """
    with pytest.raises(UnicodeEncodeError):
        Reply(250, "2.0.0", "caf\xe9").format()


def test_fill() -> None:
    """
    Filling a placeholder gives a reply with the same codes and the text
    completed.
    """
    reply = replies.QUEUED.fill(queueID="0123456789ABCDEF01")
    assert reply == Reply(250, "2.0.0", "OK queued as 0123456789ABCDEF01")
    assert replies.QUEUED.text == "OK queued as {queueID}"


def test_fillMissingField() -> None:
    """
    Filling a reply without one of its placeholders is an error, not a
    reply with braces in it.
    """
    with pytest.raises(KeyError):
        replies.QUEUED.fill(host="msa.example.org")


@pytest.mark.parametrize(
    "code, temporary, failure",
    [
        (220, False, False),
        (250, False, False),
        (354, False, False),
        (421, True, True),
        (451, True, True),
        (499, True, True),
        (500, False, True),
        (554, False, True),
    ],
)
def test_classification(code: int, temporary: bool, failure: bool) -> None:
    """
    4xx replies are temporary failures, 5xx permanent ones, and 2xx and
    3xx are not failures.
    """
    reply = Reply(code, "", "x")
    assert reply.isTemporary is temporary
    assert reply.isFailure is failure


def test_refusedCarriesReplyAndReason() -> None:
    """
    Refused carries the client's reply and the operator's reason apart.
    """
    error = Refused(replies.SENDER_NOT_OWNED, "alice may not send as bob")
    assert error.reply is replies.SENDER_NOT_OWNED
    assert error.reason == "alice may not send as bob"


def test_refusedReasonDefaultsToText() -> None:
    """
    Without a reason, Refused logs the reply's own text.
    """
    error = Refused(replies.BAD_SYNTAX)
    assert error.reason == replies.BAD_SYNTAX.text
    assert isinstance(error, Exception)


def test_replyIsFrozen() -> None:
    """
    Replies are immutable, so that no session can change the catalogue.
    """
    with pytest.raises(AttributeError):
        replies.OK.code = 550  # type: ignore[misc]
