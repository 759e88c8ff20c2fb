# -*- test-case-name: tests.test_nexthop -*-
"""
Where the relay manager connects to: configured smarthosts, or the mail
exchangers of a recipient's domain (RFC 5321 section 5.1).

This module only names hosts.  Turning a name into addresses is left to
the connection (C{HostnameEndpoint} resolves A and AAAA records and tries
the addresses as they come), so that a host with both IPv4 and IPv6
addresses is reached by whichever works.

Every failure to find a host is a L{NextHopError} that says whether it is
permanent: a domain that does not exist or publishes a null MX (RFC 7505)
will not accept the message however often it is tried, while a DNS server
that fails or does not answer may do better later (SMTP-40).
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import CannotListenError, ConnectError
from twisted.internet.interfaces import IResolver
from twisted.names import dns
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSNameError,
    DNSQueryTimeoutError,
    DomainError,
    ResolverError,
)
from twisted.python.failure import Failure

from msagate.address import isAddressLiteral, isDomain

# Seconds after which an unanswered MX query is sent again; the lookup
# fails when the last one runs out (a minute in all).
LOOKUP_TIMEOUT = (1, 3, 11, 45)

# RFC 3463 / RFC 7505 section 4.2 enhanced status codes.
NO_SUCH_DOMAIN = "5.1.2"
BAD_DOMAIN_SYNTAX = "5.1.3"
NULL_MX = "5.1.10"
LOOKUP_FAILED = "4.4.3"

# "name", "name:port", "[literal]" or "[literal]:port".
_HOST_SPEC = re.compile(
    r"(?:\[(?P<bracketed>[^\[\]]*)\]|(?P<bare>[^:\[\]]+))(?::(?P<port>.*))?\Z"
)
_SEPARATORS = re.compile(r"[\s,]+")

# The errors of a lookup that may succeed when tried again: an error
# answer other than NXDOMAIN, no answer, or no way to ask.
_TEMPORARY_ERRORS = (
    DomainError,
    DNSQueryTimeoutError,
    DeferredTimeoutError,
    ResolverError,
    CannotListenError,
    ConnectError,
    OSError,
)


@dataclass(frozen=True)
class Host:
    """
    A host to connect to.

    @ivar name: a host name, or an IP address without brackets.
    @ivar port: the TCP port, 1 to 65535.
    """

    name: str
    port: int

    def __post_init__(self) -> None:
        """
        @raise ValueError: when the name is empty or the port out of range.
        """
        if not self.name:
            raise ValueError("a host needs a name")
        _checkPort(self.port)

    def __str__(self) -> str:
        """
        @return: C{name:port}, or C{[address]:port} for an IPv6 address.
        """
        if ":" in self.name:
            return f"[{self.name}]:{self.port}"
        return f"{self.name}:{self.port}"


class NextHopError(Exception):
    """
    No host could be found to deliver to.

    @ivar reason: what went wrong, for the operator's log and the
        delivery status notification.
    @ivar status: the enhanced status code (RFC 3463) to report.
    @ivar permanent: whether trying again later is pointless.
    """

    def __init__(self, reason: str, status: str, permanent: bool) -> None:
        """
        @param reason: the value of L{reason}.
        @param status: the value of L{status}; its class must agree with
            C{permanent}: C{5} when permanent, C{4} when not.
        @param permanent: the value of L{permanent}.
        @raise ValueError: when the status class and C{permanent}
            disagree.
        """
        if status[:2] != ("5." if permanent else "4."):
            raise ValueError(f"status {status} contradicts permanent")
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.permanent = permanent

    def __str__(self) -> str:
        """
        @return: the status followed by the reason.
        """
        return f"{self.status} {self.reason}"


def _checkPort(port: int) -> None:
    """
    @raise ValueError: when C{port} is not a TCP port one can connect to.
    """
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not between 1 and 65535")


def parseHosts(text: str, defaultPort: int) -> list[Host]:
    """
    Parse a list of smarthosts from the configuration.

    Each host is a name (C{mail.example.net}), an IPv4 address
    (C{192.0.2.1}) or an address in brackets (C{[192.0.2.1]},
    C{[2001:db8::1]}, C{[IPv6:2001:db8::1]}), optionally followed by a
    colon and a port.  Hosts are separated by commas, white space or both.
    A name in brackets (C{[mail.example.net]:587}, as other mail servers
    write a host that is not looked up as MX) means the name itself:
    smarthosts never are.

    @param text: the configured value.
    @param defaultPort: the port of the hosts that name none.
    @return: the hosts, in the order given.
    @raise ValueError: naming the offending entry, when the list is empty
        or an entry is malformed.
    """
    _checkPort(defaultPort)
    entries = [entry for entry in _SEPARATORS.split(text) if entry]
    if not entries:
        raise ValueError("no host given")
    return [_parseHost(entry, defaultPort) for entry in entries]


def _parseHost(entry: str, defaultPort: int) -> Host:
    """
    @return: the host an entry of a smarthost list names.
    @raise ValueError: when the entry is malformed.
    """
    if not entry.startswith("[") and entry.count(":") > 1:
        raise ValueError(
            f"malformed host {entry!r}: write an IPv6 address in brackets,"
            " as in [2001:db8::1]:587"
        )
    match = _HOST_SPEC.match(entry)
    if match is None:
        raise ValueError(f"malformed host {entry!r}")

    port = _parsePort(entry, match.group("port"), defaultPort)
    bracketed = match.group("bracketed")
    if bracketed is not None:
        return Host(_bracketedName(entry, bracketed), port)
    return Host(_hostName(entry, match.group("bare")), port)


def _parsePort(entry: str, text: str | None, defaultPort: int) -> int:
    """
    @return: the port an entry names, or C{defaultPort} when it names none.
    @raise ValueError: when the port is not a number from 1 to 65535.
    """
    if text is None:
        return defaultPort
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) < 65536:
        raise ValueError(f"bad port in host {entry!r}")
    return int(text)


def _bracketedName(entry: str, inner: str) -> str:
    """
    @return: the address or name written in brackets in an entry.
    @raise ValueError: when it is neither.
    """
    if inner[:5].lower() == "ipv6:" and isAddressLiteral(f"[{inner}]"):
        return str(ipaddress.IPv6Address(inner[5:]))
    if isIPAddress(inner):
        return str(ipaddress.ip_address(inner))
    return _hostName(entry, inner)


def _hostName(entry: str, name: str) -> str:
    """
    @return: C{name} without a final dot, when it is a host name or an
        IPv4 address.
    @raise ValueError: when it is neither.
    """
    name = name.removesuffix(".")
    if isIPAddress(name) or (isDomain(name) and not _looksNumeric(name)):
        return name
    raise ValueError(f"bad host name in host {entry!r}")


def isIPAddress(text: str) -> bool:
    """
    @return: whether C{text} is an IPv4 or IPv6 address, without a zone
        index (RFC 4007 section 11: it means nothing beyond one host).
    """
    if "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _looksNumeric(name: str) -> bool:
    """
    @return: whether C{name} ends in an all-digit label: no top-level
        domain does, so such a name is a mistyped IPv4 address.
    """
    return name.rpartition(".")[2].isdigit()


def mailHosts(
    resolver: IResolver,
    domain: str,
    port: int,
    shuffle: Callable[[list[Host]], None] = random.shuffle,
) -> Deferred[list[Host]]:
    """
    Find the hosts that accept mail for a domain (RFC 5321 section 5.1).

    The domain's MX records are used by preference, the most preferred
    first; hosts of equal preference come in random order, so that the
    load spreads over them (SMTP-40).  A domain without MX records is its
    own mail host (the implicit MX).  An address literal names its host
    without any lookup.  A CNAME is followed by the resolver, whose answer
    then holds the MX records of the name it points to.

    FIXME: the hosts are not compared with this server's own names, so a
    domain that lists this server as one of its MX hosts would have mail
    for it sent back here; RFC 5321 section 5.1 asks to drop this server
    and every less preferred host from the list.

    @param resolver: the DNS resolver to ask for MX records.
    @param domain: the domain of a recipient: a domain name, or an address
        literal such as C{[192.0.2.1]} or C{[IPv6:2001:db8::1]}.
    @param port: the port to connect to on every host.
    @param shuffle: puts a list of hosts in random order, in place.
    @return: a L{Deferred} firing with the hosts to try in order, never
        empty, or failing with a L{NextHopError}: permanent with status
        C{5.1.2} when the domain does not exist (NXDOMAIN), C{5.1.10} when
        it publishes a null MX (RFC 7505), C{5.1.3} when C{domain} is not
        a domain; temporary with C{4.4.3} when the lookup fails otherwise.
    """
    if domain.startswith("["):
        return _literalHost(domain, port)
    if not isDomain(domain):
        reason = f"{domain!r} is not a domain name"
        return fail(NextHopError(reason, BAD_DOMAIN_SYNTAX, True))

    lookup = resolver.lookupMailExchange(domain, LOOKUP_TIMEOUT)
    return lookup.addCallbacks(
        lambda result: _orderedHosts(domain, port, shuffle, result[0]),
        lambda failure: _lookupFailed(domain, failure),
    )


def _literalHost(domain: str, port: int) -> Deferred[list[Host]]:
    """
    @return: a L{Deferred} firing with the one host an address literal
        names, or failing with a permanent L{NextHopError} when C{domain}
        is not an address literal.
    """
    if not isAddressLiteral(domain):
        reason = f"{domain!r} is not an address literal"
        return fail(NextHopError(reason, BAD_DOMAIN_SYNTAX, True))

    inner = domain[1:-1]
    address = inner[5:] if inner[:5].lower() == "ipv6:" else inner
    return succeed([Host(str(ipaddress.ip_address(address)), port)])


def _orderedHosts(
    domain: str,
    port: int,
    shuffle: Callable[[list[Host]], None],
    answers: object,
) -> list[Host]:
    """
    Order the MX hosts of an answer.

    @param answers: the answer section; the interface declares it as a
        record, but resolvers give a list of them.
    @return: the hosts, most preferred first.
    @raise NextHopError: for a null MX, or MX records naming no usable
        host.
    """
    records = [
        cast(dns.Record_MX, record.payload)
        for record in cast("Sequence[dns.RRHeader]", answers)
        if record.type == dns.MX
    ]
    if not records:
        return [Host(domain, port)]

    exchanges = [(record.preference, _exchange(record)) for record in records]
    # RFC 7505 section 3: an exchange of "." means there is no mail host.
    if all(name == "" for _, name in exchanges):
        raise NextHopError("domain accepts no mail (null MX)", NULL_MX, True)

    byPreference: dict[int, list[Host]] = {}
    for preference, name in sorted(exchanges, key=lambda pair: pair[0]):
        if name:
            byPreference.setdefault(preference, []).append(Host(name, port))
    return _shuffledInOrder(domain, byPreference, shuffle)


def _exchange(record: dns.Record_MX) -> str | None:
    """
    @return: the host an MX record names without a final dot, C{""} for
        the root (a null MX), or L{None} when it is neither a host name
        nor an IP address.
    """
    try:
        name = record.name.name.decode("ascii").removesuffix(".")
    except UnicodeDecodeError:
        return None
    if name == "" or isDomain(name) or isIPAddress(name):
        return name
    return None


def _shuffledInOrder(
    domain: str,
    byPreference: dict[int, list[Host]],
    shuffle: Callable[[list[Host]], None],
) -> list[Host]:
    """
    @param byPreference: the hosts of each preference, in increasing order
        of preference value.
    @return: each preference's hosts shuffled, the groups in order, each
        host listed once.
    @raise NextHopError: temporary, when there is no host at all.
    """
    hosts: list[Host] = []
    for group in byPreference.values():
        shuffle(group)
        hosts.extend(group)

    if not hosts:
        reason = f"no usable host in the MX records of {domain}"
        raise NextHopError(reason, LOOKUP_FAILED, False)
    return list(dict.fromkeys(hosts))


def _lookupFailed(domain: str, failure: Failure) -> Failure:
    """
    Classify a failed MX lookup.

    @return: a failure with a L{NextHopError}, or C{failure} itself when
        it is not a lookup error (a bug is not hidden as a DNS problem).
    """
    # SMTP-40: NXDOMAIN is permanent; a server that fails to answer says
    # nothing about the domain.
    if failure.check(DNSNameError, AuthoritativeDomainError):
        reason = f"no such domain: {domain}"
        return Failure(NextHopError(reason, NO_SUCH_DOMAIN, True))

    if failure.check(*_TEMPORARY_ERRORS):
        kind = type(failure.value).__name__
        reason = f"MX lookup for {domain} failed ({kind})"
        return Failure(NextHopError(reason, LOOKUP_FAILED, False))
    return failure
