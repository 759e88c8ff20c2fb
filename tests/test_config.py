"""
Tests for L{msagate.config}: reading and checking the configuration file.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

import msagate.config
from msagate.address import parseMailbox
from msagate.config import OPTIONS, Config, Listener, loadConfig
from msagate.errors import ConfigError
from msagate.nexthop import Host

MINIMAL = {
    "server": {"hostname": "msa.example.org", "spool": "spool"},
    "listener:submission": {"endpoint": "tcp:587", "tls": "starttls"},
    "tls": {"certificate": "cert.pem", "key": "key.pem"},
    "auth": {"htpasswd": "htpasswd"},
}

# The Config attribute of each option of OPTIONS.


def render(sections: dict[str, dict[str, str]]) -> str:
    """
    Return the INI text of C{sections}.
    """
    lines = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{name} = {value}" for name, value in options.items())
    return "\n".join(lines) + "\n"


def changed(**edits: dict[str, str | None] | None) -> dict:
    """
    Return L{MINIMAL} with sections edited: a section given as None is
    removed, an option given as None is removed, others are set.
    """
    sections = {name: dict(options) for name, options in MINIMAL.items()}
    for key, options in edits.items():
        section = key.replace("__", ":")
        if options is None:
            del sections[section]
            continue
        target = sections.setdefault(section, {})
        for name, value in options.items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = value
    return sections


def write(directory: Path, sections: dict[str, dict[str, str]]) -> str:
    """
    Write C{sections} as msagate.ini in C{directory}; return its path.
    """
    path = directory / "msagate.ini"
    path.write_text(render(sections))
    return str(path)


def loadError(path: str) -> ConfigError:
    """
    Load C{path}, expecting a L{ConfigError}, and check that its text is
    exactly one line naming the file.
    """
    with pytest.raises(ConfigError) as caught:
        loadConfig(path)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(path + ": ")
    return caught.value


def assertWholeFile(error: ConfigError) -> None:
    """
    Assert that C{error} is about the whole file: FILE: problem.
    """
    assert (error.section, error.option) == (None, None)
    assert error.problem
    assert str(error) == f"{error.path}: {error.problem}"


def defaultValue(option: msagate.config.Option) -> object:
    """
    Return the value an option's textual default stands for.
    """
    assert option.default is not None
    if option.kind == "integer":
        return int(option.default)
    if option.kind == "seconds":
        return float(option.default)
    if option.kind == "boolean":
        return {"yes": True, "no": False}[option.default]
    if option.kind == "words":
        return tuple(option.default.split())
    return option.default


def test_attributeTableCoversOptions() -> None:
    """
    Every option of OPTIONS has a Config attribute of its own, so the
    default check below misses none.
    """
    attributes = [option.attribute for option in OPTIONS]
    fields = {field.name for field in dataclasses.fields(Config)}
    assert len(set(attributes)) == len(attributes)
    assert set(attributes) <= fields


def test_minimalFileLoads(tmp_path: Path) -> None:
    """
    A file with only the required options loads, with them resolved.
    """
    path = write(tmp_path, MINIMAL)
    config = loadConfig(path)
    assert config.path == path
    assert config.hostname == "msa.example.org"
    assert config.spool == str(tmp_path / "spool")
    assert config.certificate == str(tmp_path / "cert.pem")
    assert config.key == str(tmp_path / "key.pem")
    assert config.htpasswd == str(tmp_path / "htpasswd")
    assert config.listeners == (Listener("submission", "tcp:587", "starttls"),)


@pytest.mark.parametrize(
    "option",
    [option for option in OPTIONS if option.default],
    ids=lambda option: f"{option.section}.{option.name}",
)
def test_defaults(tmp_path: Path, option: msagate.config.Option) -> None:
    """
    An option left out of the file takes its default from OPTIONS.
    """
    config = loadConfig(write(tmp_path, MINIMAL))
    value = getattr(config, option.attribute)
    assert value == defaultValue(option)
    assert type(value) is type(defaultValue(option))


def test_optionalPathsDefaultEmpty(tmp_path: Path) -> None:
    """
    An optional path left out stays empty rather than naming the
    configuration directory.
    """
    config = loadConfig(write(tmp_path, MINIMAL))
    assert config.senderMap == ""


def test_configIsFrozen(tmp_path: Path) -> None:
    """
    The configuration cannot change once loaded.
    """
    config = loadConfig(write(tmp_path, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hostname = "other.example.org"  # type: ignore[misc]


@pytest.mark.parametrize(
    "edits, section, option",
    [
        ({"bogus": {"x": "1"}}, "bogus", None),
        ({"listener": {"endpoint": "tcp:1"}}, "listener", None),
        ({"server": {"colour": "blue"}}, "server", "colour"),
        ({"tls": {"endpoint": "tcp:1"}}, "tls", "endpoint"),
        ({"listener__submission": {"key": "k"}}, "listener:submission", "key"),
        ({"server": {"spool": None}}, "server", "spool"),
        ({"server": {"spool": " "}}, "server", "spool"),
        ({"tls": {"certificate": None}}, "tls", "certificate"),
        ({"tls": {"key": None}}, "tls", "key"),
        ({"tls": None}, "tls", "certificate"),
        ({"server": {"auth_threads": "many"}}, "server", "auth_threads"),
        ({"server": {"auth_threads": "1.5"}}, "server", "auth_threads"),
        ({"auth": {"failure_delay": "soon"}}, "auth", "failure_delay"),
        ({"auth": {"failure_delay": "-1"}}, "auth", "failure_delay"),
        ({"server": {"spool_threads": "0"}}, "server", "spool_threads"),
        ({"limits": {"recipients": "99"}}, "limits", "recipients"),
        ({"limits": {"line_length": "999"}}, "limits", "line_length"),
        ({"limits": {"message_size": "65535"}}, "limits", "message_size"),
        ({"limits": {"idle_timeout": "0"}}, "limits", "idle_timeout"),
        (
            {"message": {"received_client_address": "maybe"}},
            "message",
            "received_client_address",
        ),
        ({"tls": {"minimum_version": "TLSv1.1"}}, "tls", "minimum_version"),
        ({"tls": {"minimum_version": "tlsv1.2"}}, "tls", "minimum_version"),
        ({"auth": {"checker": "kerberos"}}, "auth", "checker"),
        ({"auth": {"checker": "ldap"}}, "ldap", "servers"),
        ({"senders": {"ldap": "yes"}}, "ldap", "servers"),
        (
            {"senders": {"ldap": "yes"}, "ldap": {"servers": "ldap://x"}},
            "ldap",
            "bind_dn",
        ),
        (
            {"auth": {"checker": "ldap"}, "ldap": {"servers": "http://x"}},
            "ldap",
            "servers",
        ),
        (
            {"auth": {"checker": "ldap"}, "ldap": {"servers": "ldap://x"}},
            "ldap",
            "user_dn",
        ),
        (
            {
                "auth": {"checker": "ldap"},
                "ldap": {"servers": "ldap://x", "bind_dn": "cn=msa"},
            },
            "ldap",
            "bind_password_file",
        ),
        (
            {
                "auth": {"checker": "ldap"},
                "ldap": {
                    "servers": "ldap://x",
                    "bind_dn": "cn=msa",
                    "bind_password_file": "pw",
                },
            },
            "ldap",
            "base_dn",
        ),
        (
            {
                "auth": {"checker": "ldap"},
                "ldap": {
                    "servers": "ldap://x",
                    "user_dn": "uid={login},dc=x",
                    "group_filter": "(member=x)",
                },
            },
            "ldap",
            "group_filter",
        ),
        ({"ldap": {"timeout": "0"}}, "ldap", "timeout"),
        ({"senders": {"default": "all"}}, "senders", "default"),
        ({"server": {"hostname": "localhost"}}, "server", "hostname"),
        ({"server": {"hostname": "msa_1.example"}}, "server", "hostname"),
        ({"server": {"hostname": "msa..example"}}, "server", "hostname"),
        ({"listener__submission": None}, "listener:submission", None),
        (
            {"listener__submission": {"endpoint": None}},
            "listener:submission",
            "endpoint",
        ),
        (
            {"listener__submission": {"tls": None}},
            "listener:submission",
            "tls",
        ),
        (
            {"listener__submission": {"tls": "none"}},
            "listener:submission",
            "tls",
        ),
        ({"auth": {"htpasswd": None}}, "auth", "htpasswd"),
        (
            {"message": {"postmaster": "not an address"}},
            "message",
            "postmaster",
        ),
        ({"message": {"postmaster": "pm@localhost"}}, "message", "postmaster"),
        ({"relay": {"mode": "direct"}}, "relay", "mode"),
        ({"relay": {"mode": "smarthost"}}, "relay", "smarthosts"),
        ({"relay": {"smarthosts": "mail:0"}}, "relay", "smarthosts"),
        ({"relay": {"smarthosts": "[2001:db8::1"}}, "relay", "smarthosts"),
        ({"relay": {"security": "tls"}}, "relay", "security"),
        ({"relay": {"username": "msa"}}, "relay", "username"),
        (
            {
                "relay": {
                    "mode": "smarthost",
                    "smarthosts": "mail",
                    "username": "msa",
                }
            },
            "relay",
            "password_file",
        ),
        (
            {
                "relay": {
                    "mode": "smarthost",
                    "smarthosts": "mail",
                    "username": "msa",
                    "password_file": "pw",
                    "security": "opportunistic",
                }
            },
            "relay",
            "security",
        ),
        ({"relay": {"helo_name": "localhost"}}, "relay", "helo_name"),
        ({"relay": {"retry_minimum": "0"}}, "relay", "retry_minimum"),
        (
            {"relay": {"retry_minimum": "600", "retry_maximum": "300"}},
            "relay",
            "retry_maximum",
        ),
        ({"relay": {"mx_port": "65536"}}, "relay", "mx_port"),
        ({"relay": {"max_connections": "0"}}, "relay", "max_connections"),
        ({"relay": {"dns_servers": "ns.example.org"}}, "relay", "dns_servers"),
        (
            {"message": {"postmaster": "<pm@example.org>"}},
            "message",
            "postmaster",
        ),
    ],
)
def test_errors(
    tmp_path: Path, edits: dict, section: str, option: str | None
) -> None:
    """
    Each problem stops loading with one line, FILE: [section] option:
    problem, naming the section and option at fault.
    """
    error = loadError(write(tmp_path, changed(**edits)))
    assert error.section == section
    assert error.option == option
    assert error.problem
    where = f"[{section}] {option}" if option else f"[{section}]"
    assert str(error) == f"{error.path}: {where}: {error.problem}"


def test_missingFile(tmp_path: Path) -> None:
    """
    A missing file is one line, FILE: problem, saying it cannot be read.
    """
    path = str(tmp_path / "absent.ini")
    error = loadError(path)
    assertWholeFile(error)
    assert "cannot read" in error.problem


@pytest.mark.parametrize(
    "text",
    [
        "hostname = msa.example.org\n",
        "[server]\n[server]\n",
        "[server]\nspool = a\nspool = b\n",
        "[server\n",
    ],
)
def test_unparsableFile(tmp_path: Path, text: str) -> None:
    """
    A file that is not INI syntax is one line, FILE: problem.
    """
    path = tmp_path / "msagate.ini"
    path.write_text(text)
    assertWholeFile(loadError(str(path)))


def test_notUTF8(tmp_path: Path) -> None:
    """
    A file that is not UTF-8 is one line, FILE: problem.
    """
    path = tmp_path / "msagate.ini"
    path.write_bytes(render(MINIMAL).encode() + b"# \xff\n")
    assertWholeFile(loadError(str(path)))


@pytest.mark.parametrize(
    "section, option",
    [("auth", "failure_delay"), ("limits", "idle_timeout")],
)
def test_notANumberRefused(tmp_path: Path, section: str, option: str) -> None:
    """
    A duration of nan is refused like any other text that is not a number
    of seconds (SMTP-11, AUTH-15).
    """
    path = write(tmp_path, changed(**{section: {option: "nan"}}))
    error = loadError(path)
    assert (error.section, error.option) == (section, option)


def test_defaultCheckerNeedsHtpasswd(tmp_path: Path) -> None:
    """
    The default checker is htpasswd, so leaving out both checker and
    htpasswd asks for the htpasswd file.
    """
    path = write(tmp_path, changed(auth={"htpasswd": None, "checker": None}))
    assert loadError(path).option == "htpasswd"


@pytest.mark.parametrize(
    "name, value, attribute, expected",
    [
        ("server", {"auth_threads": "16"}, "authThreads", 16),
        ("auth", {"failure_delay": "0.5"}, "authFailureDelay", 0.5),
        ("auth", {"failure_delay": "0"}, "authFailureDelay", 0.0),
        ("limits", {"recipients": "100"}, "recipients", 100),
        ("limits", {"line_length": "1000"}, "lineLength", 1000),
        ("limits", {"message_size": "65536"}, "messageSize", 65536),
        (
            "message",
            {"received_client_address": "no"},
            "receivedClientAddress",
            False,
        ),
        (
            "message",
            {"received_client_address": "True"},
            "receivedClientAddress",
            True,
        ),
        (
            "tls",
            {"minimum_version": "TLSv1.3"},
            "tlsMinimumVersion",
            "TLSv1.3",
        ),
        ("senders", {"default": "none"}, "senderDefault", "none"),
        ("senders", {"detail_delimiter": "-"}, "detailDelimiter", "-"),
        ("message", {"postmaster": "pm@example.org"}, "postmaster", None),
        ("server", {"hostname": " MSA.Example.ORG "}, "hostname", None),
        (
            "relay",
            {"smarthosts": "a.example.net, [2001:db8::1]:587"},
            "smarthosts",
            (Host("a.example.net", 25), Host("2001:db8::1", 587)),
        ),
        (
            "relay",
            {"dns_servers": "192.0.2.53 [2001:db8::53]:5353"},
            "dnsServers",
            (Host("192.0.2.53", 53), Host("2001:db8::53", 5353)),
        ),
        ("relay", {"max_lifetime": "0"}, "maxLifetime", 0.0),
    ],
)
def test_values(
    tmp_path: Path, name: str, value: dict, attribute: str, expected: object
) -> None:
    """
    A value given in the file, at its minimum or above, is read as its
    kind.
    """
    config = loadConfig(write(tmp_path, changed(**{name: value})))
    if expected is None:
        expected = next(iter(value.values())).strip()
    assert getattr(config, attribute) == expected


@pytest.mark.parametrize(
    "option, value", [("spool", "/var/spool/msagate"), ("spool", "./q/../s")]
)
def test_pathsResolveAgainstTheFile(
    tmp_path: Path, option: str, value: str
) -> None:
    """
    A relative path is taken from the configuration file's directory, an
    absolute one as it is.
    """
    config = loadConfig(write(tmp_path, changed(server={option: value})))
    assert config.spool == os.path.join(str(tmp_path), value)
    assert os.path.isabs(config.spool)


def test_relativeFileName(tmp_path: Path, monkeypatch) -> None:
    """
    Loaded by a relative file name, the paths still resolve to absolute
    ones in the file's directory.
    """
    (tmp_path / "etc").mkdir()
    write(tmp_path / "etc", MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = loadConfig(os.path.join("etc", "msagate.ini"))
    assert config.spool == str(tmp_path / "etc" / "spool")
    assert config.certificate == str(tmp_path / "etc" / "cert.pem")


@pytest.mark.parametrize(
    "hostname, postmaster",
    [
        ("msa.example.org", "postmaster@example.org"),
        ("smtp.mail.example.net", "postmaster@mail.example.net"),
    ],
)
def test_postmasterDefault(
    tmp_path: Path, hostname: str, postmaster: str
) -> None:
    """
    Without a postmaster option, mail for <Postmaster> goes to postmaster
    at the domain of the host name (SUB-19).
    """
    path = write(tmp_path, changed(server={"hostname": hostname}))
    assert loadConfig(path).postmaster == postmaster


def test_postmasterDefaultIsQualified(tmp_path: Path) -> None:
    """
    The default postmaster is a qualified mailbox even when the host name
    has only two labels, as an explicit one must be (SUB-19, SUB-11).
    """
    path = write(tmp_path, changed(server={"hostname": "example.org"}))
    assert parseMailbox(loadConfig(path).postmaster).isQualified


def test_hostnameDefaultsToTheFQDN(tmp_path: Path, monkeypatch) -> None:
    """
    Without a hostname option, the machine's fully qualified name is used.
    """
    monkeypatch.setattr(
        msagate.config.socket, "getfqdn", lambda: "box.example.net"
    )
    path = write(tmp_path, changed(server={"hostname": None}))
    config = loadConfig(path)
    assert config.hostname == "box.example.net"
    assert config.postmaster == "postmaster@example.net"


def test_hostnameDefaultMustBeQualified(tmp_path: Path, monkeypatch) -> None:
    """
    A machine name that is not fully qualified stops start-up with a line
    that asks for the hostname option (SMTP-12).
    """
    monkeypatch.setattr(msagate.config.socket, "getfqdn", lambda: "box")
    path = write(tmp_path, changed(server={"hostname": None}))
    error = loadError(path)
    assert (error.section, error.option) == ("server", "hostname")


def test_listenersKeepNamesAndOrder(tmp_path: Path) -> None:
    """
    Listeners keep the names of their sections and the order of the file.
    """
    sections = changed(listener__submission=None)
    sections["listener:zeta"] = {"endpoint": "tcp:465", "tls": "implicit"}
    sections["listener:alpha"] = {"endpoint": "tcp:587", "tls": "starttls"}
    sections["listener:mid"] = {
        "endpoint": "tcp:2587:interface=127.0.0.1",
        "tls": "starttls",
    }
    config = loadConfig(write(tmp_path, sections))
    assert config.listeners == (
        Listener("zeta", "tcp:465", "implicit"),
        Listener("alpha", "tcp:587", "starttls"),
        Listener("mid", "tcp:2587:interface=127.0.0.1", "starttls"),
    )


@pytest.mark.parametrize("value, expected", [("-", "-"), ("", ""), ("+", "+")])
def test_detailDelimiter(tmp_path: Path, value: str, expected: str) -> None:
    """
    The detail delimiter may be another punctuation character, or empty to
    turn detail matching off.
    """
    path = write(tmp_path, changed(senders={"detail_delimiter": value}))
    assert loadConfig(path).detailDelimiter == expected


@pytest.mark.parametrize("value", ["ab", "a", "@"])
def test_badDetailDelimiter(tmp_path: Path, value: str) -> None:
    """
    A delimiter that cannot separate a detail is a one-line error naming
    the option.
    """
    path = write(tmp_path, changed(senders={"detail_delimiter": value}))
    error = loadError(path)
    assert (error.section, error.option) == ("senders", "detail_delimiter")
