"""
Tests for the sample files in C{etc/}: each loads with the code that reads
it in production, and the sample configuration documents every option.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.python.failure import Failure

from msagate.address import parseMailbox
from msagate.checkers.htpasswd import HtpasswdChecker
from msagate.config import (
    LISTENER_OPTIONS,
    LISTENER_PREFIX,
    OPTIONS,
    loadConfig,
)
from msagate.senders import parseSenderMap

ETC = Path(__file__).resolve().parent.parent / "etc"
SAMPLE_CONFIG = ETC / "msagate.ini"
SAMPLE_HTPASSWD = ETC / "htpasswd"
SAMPLE_SENDERS = ETC / "senders"

_SECTION = re.compile(r"\[(?P<name>[^\]]+)\]\Z")
_SETTING = re.compile(
    r"(?P<comment># )?(?P<name>[a-z_]+) =(?: (?P<value>.*))?\Z"
)
_EXAMPLE = re.compile(r"# .*Example: (?P<name>[a-z_]+) = (?P<value>\S+)\Z")


def _linesBySection(path: Path) -> list[tuple[str, str]]:
    """
    @return: (section, line) for each line of a sample configuration
        that is not a section header.
    """
    found = []
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        header = _SECTION.match(line)
        if header:
            section = header.group("name")
        else:
            found.append((section, line))
    return found


def _settings(path: Path) -> list[tuple[str, str, str, bool]]:
    """
    Read the option lines of a sample configuration, set or commented out.

    @return: (section, option, value, commented) for each line that sets
        an option or shows one as C{# option = value}.
    """
    found = []
    for section, line in _linesBySection(path):
        setting = _SETTING.match(line)
        if setting:
            value = setting.group("value") or ""
            commented = setting.group("comment") is not None
            found.append((section, setting.group("name"), value, commented))
    return found


def _examples(path: Path) -> list[tuple[str, str, str]]:
    """
    @return: (section, option, value) for each C{Example:} in the comments
        of a sample configuration.
    """
    found = []
    for section, line in _linesBySection(path):
        example = _EXAMPLE.match(line)
        if example:
            found.append((section, example.group("name"), example["value"]))
    return found


def test_sampleConfigurationLoads():
    """
    The sample configuration loads as it is, with both kinds of listener.
    """
    config = loadConfig(str(SAMPLE_CONFIG))

    modes = {listener.tls for listener in config.listeners}
    assert modes == {"starttls", "implicit"}
    assert config.spool == "/var/spool/msagate"


@pytest.mark.parametrize(
    "option", OPTIONS, ids=[f"{o.section}.{o.name}" for o in OPTIONS]
)
def test_sampleConfigurationShowsEveryOption(option):
    """
    Every option appears in its section: a required one set, any other
    commented out with its default.
    """
    lines = [
        (value, commented)
        for section, name, value, commented in _settings(SAMPLE_CONFIG)
        if (section, name) == (option.section, option.name)
    ]

    if option.default is None:
        assert any(value and not commented for value, commented in lines)
    else:
        assert (option.default, True) in lines


def test_sampleConfigurationShowsListenerOptions():
    """
    Every listener section of the sample sets each listener option.
    """
    settings = _settings(SAMPLE_CONFIG)
    sections = {s for s, _, _, _ in settings if s.startswith(LISTENER_PREFIX)}

    assert sections
    for section in sections:
        names = {n for s, n, _, c in settings if s == section and not c}
        assert names == {option.name for option in LISTENER_OPTIONS}


def test_sampleConfigurationNamesOnlyKnownOptions():
    """
    No line of the sample, set or commented out, names an option that its
    section does not have.
    """
    known = {(option.section, option.name) for option in OPTIONS}
    listenerNames = {option.name for option in LISTENER_OPTIONS}

    for section, name, _, _ in _settings(SAMPLE_CONFIG):
        if section.startswith(LISTENER_PREFIX):
            assert name in listenerNames
        else:
            assert (section, name) in known


@pytest.mark.parametrize(
    "section, name, value",
    _examples(SAMPLE_CONFIG),
    ids=[f"{s}.{n}" for s, n, _ in _examples(SAMPLE_CONFIG)],
)
def test_sampleConfigurationExamplesLoad(tmp_path, section, name, value):
    """
    Each example value the sample's comments give is accepted and changes
    the configuration.
    """
    text = SAMPLE_CONFIG.read_text(encoding="utf-8")
    header = f"[{section}]\n"
    changed = text.replace(header, f"{header}{name} = {value}\n", 1)
    path = tmp_path / "msagate.ini"
    path.write_text(changed, encoding="utf-8")

    config = loadConfig(str(path))

    sample = loadConfig(str(SAMPLE_CONFIG))
    assert replace(config, path=sample.path) != sample


def test_sampleSenderMapParses():
    """
    The sample sender map parses, and its first user may use what its
    comment promises.
    """
    senders = parseSenderMap(SAMPLE_SENDERS.read_bytes())
    alice = senders["alice@example.org"]

    for allowed in ("Alice+lists@Example.ORG", "ann@sales.example.org"):
        assert alice.permits(parseMailbox(allowed))
    for refused in ("bob@example.org", "ann@eu.sales.example.org"):
        assert not alice.permits(parseMailbox(refused))


@pytest.fixture
def sampleChecker(pool, reactor) -> HtpasswdChecker:
    """
    A checker of the sample htpasswd file, loaded.
    """
    checker = HtpasswdChecker(str(SAMPLE_HTPASSWD), pool, reactor)
    checker.load()
    return checker


def test_sampleHtpasswdLoads(sampleChecker):
    """
    The sample htpasswd file loads as the checker loads it at start-up.
    """
    assert sampleChecker.path == str(SAMPLE_HTPASSWD)


def test_sampleHtpasswdPasswordVerifies(sampleChecker, reactor):
    """
    The example user logs in with the password its comment gives, and not
    with another.
    """
    text = SAMPLE_HTPASSWD.read_text(encoding="utf-8")
    found = re.search(r'Example user (\S+), password "([^"]+)"', text)
    assert found, "the sample no longer documents its example password"
    user, password = found.group(1).encode(), found.group(2).encode()
    checker = sampleChecker

    right = UsernamePassword(user, password)
    assert reactor.outcomeOf(checker.requestAvatarId(right)) == user.decode()
    wrong = UsernamePassword(user, password + b"!")
    failure = reactor.outcomeOf(checker.requestAvatarId(wrong))
    assert isinstance(failure, Failure) and failure.check(UnauthorizedLogin)
