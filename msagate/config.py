# -*- test-case-name: tests.test_config -*-
"""
msagate's configuration: an INI file read once at start-up into frozen
values.

Every option is declared once, in L{OPTIONS}, with its default and its
meaning; C{etc/msagate.ini} mirrors the declarations and a test keeps the
two in step.  Any problem stops start-up with one L{ConfigError} line that
names the file, the section and the option.
"""

from __future__ import annotations

import configparser
import math
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from msagate.address import defaultPostmaster, isDomain, parseMailbox
from msagate.errors import ConfigError
from msagate.nexthop import Host, isIPAddress, parseHosts
from msagate.senders import checkDelimiter

LISTENER_PREFIX = "listener:"
TLS_MODES = ("starttls", "implicit")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
CHECKERS = ("htpasswd", "ldap")
LDAP_SCHEMES = ("ldap://", "ldaps://")
SENDER_DEFAULTS = ("login", "none")
RELAY_MODES = ("mx", "smarthost")
RELAY_SECURITY = ("starttls", "implicit", "opportunistic", "none")

# What an option's text becomes, depending on its kind.
_Value = str | int | float | bool | tuple[Any, ...]
_Number = TypeVar("_Number", int, float)


@dataclass(frozen=True)
class Option:
    """
    One option of the configuration file.

    @ivar section: the section it belongs to.
    @ivar name: its name.
    @ivar attribute: the L{Config} attribute that holds its value.
    @ivar default: its value when absent, as text; L{None} when the
        option is required, C{""} when it is optional and empty.
    @ivar kind: how its text becomes a value: C{"text"}, C{"path"},
        C{"integer"}, C{"seconds"}, C{"boolean"}, C{"choice"},
        C{"words"} (a list separated by spaces or commas), C{"hosts"}
        (next hops, C{host[:port]} each), C{"nameservers"}
        (C{address[:port]} each) or C{"delimiter"} (where an empty value
        means none, not the default).
    @ivar choices: the allowed values of a C{"choice"}.
    """

    section: str
    name: str
    attribute: str
    default: str | None
    kind: str = "text"
    choices: tuple[str, ...] = ()


OPTIONS = (
    Option("server", "hostname", "hostname", ""),
    Option("server", "spool", "spool", None, "path"),
    Option("server", "auth_threads", "authThreads", "8", "integer"),
    Option("server", "spool_threads", "spoolThreads", "4", "integer"),
    Option("tls", "certificate", "certificate", None, "path"),
    Option("tls", "key", "key", None, "path"),
    Option(
        "tls",
        "minimum_version",
        "tlsMinimumVersion",
        "TLSv1.2",
        "choice",
        TLS_VERSIONS,
    ),
    Option("auth", "checker", "checker", "htpasswd", "choice", CHECKERS),
    Option("auth", "htpasswd", "htpasswd", "", "path"),
    Option("auth", "max_failures", "maxAuthFailures", "3", "integer"),
    Option("auth", "failure_delay", "authFailureDelay", "1", "seconds"),
    Option(
        "auth", "client_max_failures", "clientMaxAuthFailures", "10", "integer"
    ),
    Option(
        "auth",
        "client_failure_window",
        "clientAuthFailureWindow",
        "900",
        "seconds",
    ),
    Option("senders", "map", "senderMap", "", "path"),
    Option(
        "senders",
        "default",
        "senderDefault",
        "login",
        "choice",
        SENDER_DEFAULTS,
    ),
    Option("senders", "detail_delimiter", "detailDelimiter", "+", "delimiter"),
    Option("senders", "ldap", "senderLDAP", "no", "boolean"),
    Option("limits", "message_size", "messageSize", "26214400", "integer"),
    Option("limits", "recipients", "recipients", "100", "integer"),
    Option("limits", "errors", "errors", "20", "integer"),
    Option("limits", "connections", "connections", "1000", "integer"),
    Option(
        "limits", "client_connections", "clientConnections", "50", "integer"
    ),
    Option("limits", "idle_timeout", "idleTimeout", "300", "seconds"),
    Option("limits", "line_length", "lineLength", "1000", "integer"),
    Option("limits", "header_size", "headerSize", "262144", "integer"),
    Option(
        "message",
        "received_client_address",
        "receivedClientAddress",
        "yes",
        "boolean",
    ),
    Option("message", "max_received", "maxReceived", "100", "integer"),
    Option("message", "postmaster", "postmaster", ""),
    Option("relay", "mode", "relayMode", "mx", "choice", RELAY_MODES),
    Option("relay", "smarthosts", "smarthosts", "", "hosts"),
    Option(
        "relay",
        "security",
        "relaySecurity",
        "starttls",
        "choice",
        RELAY_SECURITY,
    ),
    Option("relay", "ca_file", "relayCAFile", "", "path"),
    Option("relay", "username", "relayUsername", ""),
    Option("relay", "password_file", "relayPasswordFile", "", "path"),
    Option("relay", "helo_name", "heloName", ""),
    Option(
        "relay",
        "destination_connections",
        "destinationConnections",
        "20",
        "integer",
    ),
    Option("relay", "max_connections", "relayConnections", "100", "integer"),
    Option("relay", "connect_timeout", "connectTimeout", "30", "seconds"),
    Option("relay", "command_timeout", "commandTimeout", "300", "seconds"),
    Option("relay", "data_timeout", "dataTimeout", "600", "seconds"),
    Option("relay", "retry_minimum", "retryMinimum", "300", "seconds"),
    Option("relay", "retry_maximum", "retryMaximum", "3600", "seconds"),
    Option("relay", "max_lifetime", "maxLifetime", "432000", "seconds"),
    Option("relay", "delay_warning", "delayWarning", "0", "seconds"),
    Option("relay", "mx_port", "mxPort", "25", "integer"),
    Option("relay", "dns_servers", "dnsServers", "", "nameservers"),
    Option("ldap", "servers", "ldapServers", "", "words"),
    Option("ldap", "start_tls", "ldapStartTLS", "yes", "boolean"),
    Option("ldap", "ca_file", "ldapCAFile", "", "path"),
    Option("ldap", "bind_dn", "ldapBindDN", ""),
    Option("ldap", "bind_password_file", "ldapBindPasswordFile", "", "path"),
    Option("ldap", "base_dn", "ldapBaseDN", ""),
    Option(
        "ldap",
        "user_filter",
        "ldapUserFilter",
        "(&(objectClass=inetOrgPerson)(uid={login}))",
    ),
    Option("ldap", "user_dn", "ldapUserDN", ""),
    Option("ldap", "user_attribute", "ldapUserAttribute", "uid"),
    Option("ldap", "connect_timeout", "ldapConnectTimeout", "5", "seconds"),
    Option("ldap", "timeout", "ldapTimeout", "10", "seconds"),
    Option(
        "ldap",
        "sender_attributes",
        "ldapSenderAttributes",
        "mail mailAlternateAddress",
        "words",
    ),
    Option("ldap", "group_filter", "ldapGroupFilter", ""),
    Option("ldap", "group_base_dn", "ldapGroupBaseDN", ""),
    Option(
        "ldap",
        "group_domain_attribute",
        "ldapGroupDomainAttribute",
        "associatedDomain",
    ),
    Option("ldap", "connections", "ldapConnections", "4", "integer"),
)

LISTENER_OPTIONS = (
    Option(LISTENER_PREFIX + "*", "endpoint", "endpoint", None),
    Option(LISTENER_PREFIX + "*", "tls", "tls", None, "choice", TLS_MODES),
)

# The bounds of numeric options, by section and name; 0 is the minimum of
# any other.
_MINIMUMS: dict[tuple[str, str], float] = {
    ("server", "auth_threads"): 1,
    ("server", "spool_threads"): 1,
    ("auth", "max_failures"): 1,
    ("limits", "message_size"): 65536,
    ("limits", "recipients"): 100,
    ("limits", "errors"): 1,
    ("limits", "idle_timeout"): 1,
    ("limits", "line_length"): 1000,
    ("limits", "header_size"): 1000,
    ("message", "max_received"): 1,
    ("relay", "destination_connections"): 1,
    ("relay", "max_connections"): 1,
    ("relay", "connect_timeout"): 1,
    ("relay", "command_timeout"): 1,
    ("relay", "data_timeout"): 1,
    ("relay", "retry_minimum"): 1,
    ("relay", "retry_maximum"): 1,
    ("relay", "mx_port"): 1,
    ("ldap", "connect_timeout"): 0.1,
    ("ldap", "timeout"): 0.1,
    ("ldap", "connections"): 1,
}
_MAXIMUMS: dict[tuple[str, str], float] = {("relay", "mx_port"): 65535}


@dataclass(frozen=True)
class Listener:
    """
    A listening socket.

    @ivar name: the part of the section name after C{listener:}.
    @ivar endpoint: a Twisted server endpoint string (C{tcp:587},
        C{systemd:domain=INET:name=submission}, C{haproxy:tcp:587}...).
    @ivar tls: C{"starttls"} (the client starts TLS with STARTTLS, RFC
        3207) or C{"implicit"} (TLS from the first byte, RFC 8314).
    """

    name: str
    endpoint: str
    tls: str


@dataclass(frozen=True)
class Config:
    """
    The whole configuration; see C{etc/msagate.ini} for each option.
    """

    path: str
    hostname: str
    spool: str
    authThreads: int
    spoolThreads: int
    listeners: tuple[Listener, ...]
    certificate: str
    key: str
    tlsMinimumVersion: str
    checker: str
    htpasswd: str
    maxAuthFailures: int
    authFailureDelay: float
    clientMaxAuthFailures: int
    clientAuthFailureWindow: float
    senderMap: str
    senderDefault: str
    detailDelimiter: str
    messageSize: int
    recipients: int
    errors: int
    connections: int
    clientConnections: int
    idleTimeout: float
    lineLength: int
    headerSize: int
    receivedClientAddress: bool
    maxReceived: int
    postmaster: str
    relayMode: str
    smarthosts: tuple[Host, ...]
    relaySecurity: str
    relayCAFile: str
    relayUsername: str
    relayPasswordFile: str
    heloName: str
    destinationConnections: int
    relayConnections: int
    connectTimeout: float
    commandTimeout: float
    dataTimeout: float
    retryMinimum: float
    retryMaximum: float
    maxLifetime: float
    delayWarning: float
    mxPort: int
    dnsServers: tuple[Host, ...]
    senderLDAP: bool
    ldapServers: tuple[str, ...]
    ldapStartTLS: bool
    ldapCAFile: str
    ldapBindDN: str
    ldapBindPasswordFile: str
    ldapBaseDN: str
    ldapUserFilter: str
    ldapUserDN: str
    ldapUserAttribute: str
    ldapConnectTimeout: float
    ldapTimeout: float
    ldapSenderAttributes: tuple[str, ...]
    ldapGroupFilter: str
    ldapGroupBaseDN: str
    ldapGroupDomainAttribute: str
    ldapConnections: int


def loadConfig(path: str) -> Config:
    """
    Read and check the configuration file at C{path}.

    @raise ConfigError: when the file cannot be read or an option is
        missing, unknown or invalid.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except (OSError, UnicodeDecodeError, configparser.Error) as error:
        raise ConfigError(path, None, None, _describe(error)) from None

    reader = _Reader(path, parser)
    reader.rejectUnknown()
    # Config's fields take the values by name, each of its option's type.
    values: dict[str, Any] = {
        option.attribute: reader.get(option) for option in OPTIONS
    }
    values["listeners"] = tuple(reader.listeners())

    hostname = values["hostname"] = values["hostname"] or socket.getfqdn()
    if not isDomain(hostname) or "." not in hostname:
        problem = f"{hostname!r} is not a fully qualified domain name"
        raise ConfigError(path, "server", "hostname", problem)
    if values["checker"] == "htpasswd" and not values["htpasswd"]:
        problem = "required when checker = htpasswd"
        raise ConfigError(path, "auth", "htpasswd", problem)
    reader.checkLDAP(values)
    values["postmaster"] = reader.postmaster(values["postmaster"], hostname)
    values["heloName"] = values["heloName"] or hostname
    reader.checkRelay(values)
    return Config(path=path, **values)


class _Reader:
    """
    Turns the parsed sections into values, or into L{ConfigError}s.
    """

    def __init__(self, path: str, parser: configparser.ConfigParser) -> None:
        self.path = path
        self.parser = parser
        self.base = os.path.dirname(os.path.abspath(path))

    def fail(self, section: str, option: str | None, problem: str) -> NoReturn:
        raise ConfigError(self.path, section, option, problem)

    def rejectUnknown(self) -> None:
        known: dict[str, set[str]] = {}
        for option in OPTIONS:
            known.setdefault(option.section, set()).add(option.name)
        listenerNames = {option.name for option in LISTENER_OPTIONS}
        for section in self.parser.sections():
            if section.startswith(LISTENER_PREFIX):
                names = listenerNames
            elif section in known:
                names = known[section]
            else:
                self.fail(section, None, "unknown section")
            for name in self.parser[section]:
                if name not in names:
                    self.fail(section, name, "unknown option")

    def get(self, option: Option, section: str | None = None) -> _Value:
        section = section or option.section
        text = self.parser.get(section, option.name, fallback=None)
        if option.kind == "delimiter" and text is not None:
            return self._delimiter(text.strip(), section, option)
        if text is None or not text.strip():
            if option.default is None:
                self.fail(section, option.name, "required but not set")
            text = option.default
        convert: Callable[[str, str, Option], _Value]
        convert = getattr(self, "_" + option.kind)
        return convert(text.strip(), section, option)

    def listeners(self) -> Iterator[Listener]:
        sections = [
            section
            for section in self.parser.sections()
            if section.startswith(LISTENER_PREFIX)
        ]
        if not sections:
            self.fail("listener:submission", None, "no listener configured")
        for section in sections:
            # Both options are text.
            endpoint, tls = (
                str(self.get(option, section)) for option in LISTENER_OPTIONS
            )
            yield Listener(section[len(LISTENER_PREFIX) :], endpoint, tls)

    def postmaster(self, text: str, hostname: str) -> str:
        if not text:
            return defaultPostmaster(hostname)
        try:
            mailbox = parseMailbox(text)
        except ValueError as error:
            self.fail("message", "postmaster", str(error))
        if not mailbox.isQualified:
            self.fail("message", "postmaster", "domain is not qualified")
        return text

    def checkLDAP(self, values: dict[str, Any]) -> None:
        if values["checker"] != "ldap" and not values["senderLDAP"]:
            return
        if not values["ldapServers"]:
            problem = "required when checker = ldap or [senders] ldap = yes"
            self.fail("ldap", "servers", problem)
        for url in values["ldapServers"]:
            if not url.lower().startswith(LDAP_SCHEMES):
                problem = f"{url!r} is not an ldap:// or ldaps:// URL"
                self.fail("ldap", "servers", problem)
        if values["senderLDAP"] and values["checker"] != "ldap":
            # Without logins through the directory, only a service account
            # can read the entries of users.
            if not values["ldapBindDN"]:
                problem = "required for [senders] ldap without checker = ldap"
                self.fail("ldap", "bind_dn", problem)
        if values["ldapBindDN"]:
            # Search, then bind as the entry found.
            if not values["ldapBindPasswordFile"]:
                self.fail(
                    "ldap", "bind_password_file", "required with bind_dn"
                )
            if not values["ldapBaseDN"]:
                self.fail("ldap", "base_dn", "required with bind_dn")
            if "{login}" not in values["ldapUserFilter"]:
                self.fail("ldap", "user_filter", "must contain {login}")
        elif "{login}" not in values["ldapUserDN"]:
            problem = "must contain {login} when bind_dn is empty"
            self.fail("ldap", "user_dn", problem)
        group = values["ldapGroupFilter"]
        if group and "{dn}" not in group:
            self.fail("ldap", "group_filter", "must contain {dn}")
        if not values["ldapUserAttribute"]:
            self.fail("ldap", "user_attribute", "required")

    def checkRelay(self, values: dict[str, Any]) -> None:
        if values["relayMode"] == "smarthost" and not values["smarthosts"]:
            self.fail("relay", "smarthosts", "required when mode = smarthost")
        if not isDomain(values["heloName"]) or "." not in values["heloName"]:
            problem = f"{values['heloName']!r} is not a fully qualified name"
            self.fail("relay", "helo_name", problem)
        if values["relayUsername"]:
            # Smarthost credentials are never offered to mail exchangers.
            if values["relayMode"] != "smarthost":
                problem = "only for mode = smarthost"
                self.fail("relay", "username", problem)
            if not values["relayPasswordFile"]:
                problem = "required when username is set"
                self.fail("relay", "password_file", problem)
            # RFC 4954 section 14: credentials only over verified TLS.
            if values["relaySecurity"] not in ("starttls", "implicit"):
                problem = "must be starttls or implicit when username is set"
                self.fail("relay", "security", problem)
        if values["retryMaximum"] < values["retryMinimum"]:
            self.fail("relay", "retry_maximum", "less than retry_minimum")

    def _text(self, text: str, section: str, option: Option) -> str:
        return text

    def _words(
        self, text: str, section: str, option: Option
    ) -> tuple[str, ...]:
        return tuple(text.replace(",", " ").split())

    def _hosts(
        self, text: str, section: str, option: Option
    ) -> tuple[Host, ...]:
        if not text:
            return ()
        try:
            return tuple(parseHosts(text, defaultPort=25))
        except ValueError as error:
            self.fail(section, option.name, str(error))

    def _nameservers(
        self, text: str, section: str, option: Option
    ) -> tuple[Host, ...]:
        if not text:
            return ()
        try:
            servers = tuple(parseHosts(text, defaultPort=53))
        except ValueError as error:
            self.fail(section, option.name, str(error))
        for server in servers:
            if not isIPAddress(server.name):
                problem = f"{server.name!r} is not an IP address"
                self.fail(section, option.name, problem)
        return servers

    def _path(self, text: str, section: str, option: Option) -> str:
        return os.path.join(self.base, text) if text else ""

    def _integer(self, text: str, section: str, option: Option) -> int:
        return self._number(text, section, option, int)

    def _seconds(self, text: str, section: str, option: Option) -> float:
        return self._number(text, section, option, float)

    def _number(
        self,
        text: str,
        section: str,
        option: Option,
        kind: Callable[[str], _Number],
    ) -> _Number:
        value: _Number | None
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            self.fail(section, option.name, f"{text!r} is not a number")
        minimum = _MINIMUMS.get((section, option.name), 0)
        if value < minimum:
            self.fail(section, option.name, f"must be at least {minimum}")
        maximum = _MAXIMUMS.get((section, option.name))
        if maximum is not None and value > maximum:
            self.fail(section, option.name, f"must be at most {maximum}")
        return value

    def _boolean(self, text: str, section: str, option: Option) -> bool:
        states = configparser.ConfigParser.BOOLEAN_STATES
        if text.lower() not in states:
            self.fail(section, option.name, f"{text!r} is not yes or no")
        return states[text.lower()]

    def _delimiter(self, text: str, section: str, option: Option) -> str:
        try:
            checkDelimiter(text)
        except ValueError as error:
            self.fail(section, option.name, str(error))
        return text

    def _choice(self, text: str, section: str, option: Option) -> str:
        if text not in option.choices:
            allowed = ", ".join(option.choices)
            self.fail(section, option.name, f"must be one of {allowed}")
        return text


def _describe(error: Exception) -> str:
    if isinstance(error, OSError):
        return f"cannot read: {error.strerror}"
    return str(error).splitlines()[0]
