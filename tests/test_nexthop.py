"""
Tests for L{msagate.nexthop}: smarthost lists and MX resolution (RFC 5321
section 5.1, requirement SMTP-40).

The unit tests ask a resolver that answers from a table; the loopback
tests ask a real DNS server, Twisted's own, over UDP on 127.0.0.1.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from conftest import inReactor
from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IResolver
from twisted.names import client, dns, server
from twisted.names.authority import FileAuthority
from twisted.names.common import ResolverBase
from twisted.names.error import (
    AuthoritativeDomainError,
    DNSNameError,
    DNSQueryRefusedError,
    DNSQueryTimeoutError,
    DNSServerError,
    ResolverError,
)
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from msagate.nexthop import (
    LOOKUP_TIMEOUT,
    Host,
    NextHopError,
    mailHosts,
    parseHosts,
)


def mx(preference: int, exchange: str, owner: str = "example.net") -> Any:
    """
    An MX record of C{owner} naming C{exchange}, as an answer holds it.
    """
    record = dns.Record_MX(preference, exchange.encode("ascii"))
    return dns.RRHeader(owner.encode("ascii"), dns.MX, payload=record)


def cname(owner: str, target: str) -> Any:
    """
    A CNAME record from C{owner} to C{target}, as an answer holds it.
    """
    record = dns.Record_CNAME(target.encode("ascii"))
    return dns.RRHeader(owner.encode("ascii"), dns.CNAME, payload=record)


class TableResolver(ResolverBase):
    """
    A resolver that answers every query from one prepared result.

    @ivar result: the answer section to give, or an exception to fail
        with.
    @ivar queries: the C{(name, type, timeout)} of each query asked.
    """

    def __init__(self, result: list[Any] | Exception) -> None:
        super().__init__()
        self.result = result
        self.queries: list[tuple[bytes, int, object]] = []

    def _lookup(
        self, name: bytes, cls: int, type: int, timeout: object
    ) -> Deferred[tuple[list[Any], list[Any], list[Any]]]:
        self.queries.append((name, type, timeout))
        if isinstance(self.result, Exception):
            return fail(self.result)
        return succeed((self.result, [], []))


def keepOrder(hosts: list[Host]) -> None:
    """
    A shuffle that leaves the hosts as they are.
    """


def reverse(hosts: list[Host]) -> None:
    """
    A shuffle that reverses the hosts, so that the test can tell it ran.
    """
    hosts.reverse()


def resultOf(deferred: Deferred[Any]) -> Any:
    """
    Return what an already fired L{Deferred} holds: a result or a
    L{Failure}.
    """
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def hopErrorOf(deferred: Deferred[Any]) -> NextHopError:
    """
    Return the L{NextHopError} an already failed L{Deferred} holds.
    """
    outcome = resultOf(deferred)
    assert isinstance(outcome, Failure)
    assert isinstance(outcome.value, NextHopError)
    return outcome.value


def lookup(
    result: list[Any] | Exception, shuffle: Any = keepOrder
) -> Deferred[list[Host]]:
    """
    Look up the hosts of example.net on port 25 from a table resolver
    giving C{result}.
    """
    return mailHosts(TableResolver(result), "example.net", 25, shuffle)


# Host and NextHopError.


def test_tableResolverIsAResolver() -> None:
    """
    The test resolver provides the whole of L{IResolver}, as the real ones
    do.
    """
    assert verifyObject(IResolver, TableResolver([]))


@pytest.mark.parametrize(
    "host, text",
    [
        (Host("mail.example.net", 587), "mail.example.net:587"),
        (Host("192.0.2.1", 25), "192.0.2.1:25"),
        (Host("2001:db8::1", 25), "[2001:db8::1]:25"),
    ],
)
def test_hostText(host: Host, text: str) -> None:
    """
    A host reads as C{name:port}, with an IPv6 address in brackets.
    """
    assert str(host) == text


@pytest.mark.parametrize(
    "name, port",
    [("mail.example.net", 0), ("mail.example.net", 65536), ("", 25)],
)
def test_hostRefusesNonsense(name: str, port: int) -> None:
    """
    A host needs a name and a port one can connect to.
    """
    with pytest.raises(ValueError):
        Host(name, port)


def test_nextHopError() -> None:
    """
    A L{NextHopError} carries its reason, status and permanence, and
    reads as the status and the reason.
    """
    error = NextHopError("no such domain: example.net", "5.1.2", True)
    assert (error.reason, error.status, error.permanent) == (
        "no such domain: example.net",
        "5.1.2",
        True,
    )
    assert str(error) == "5.1.2 no such domain: example.net"


@pytest.mark.parametrize(
    "status, permanent", [("4.4.3", True), ("5.1.2", False)]
)
def test_nextHopErrorStatusAgrees(status: str, permanent: bool) -> None:
    """
    A permanent error has a 5.x.x status and a temporary one a 4.x.x, so
    that the report and the retry decision cannot disagree.
    """
    with pytest.raises(ValueError):
        NextHopError("reason", status, permanent)


# parseHosts.


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("mail.example.net", [Host("mail.example.net", 25)]),
        ("mail.example.net:587", [Host("mail.example.net", 587)]),
        ("mail.example.net.", [Host("mail.example.net", 25)]),
        ("[192.0.2.1]:25", [Host("192.0.2.1", 25)]),
        ("[192.0.2.1]", [Host("192.0.2.1", 25)]),
        ("192.0.2.1", [Host("192.0.2.1", 25)]),
        ("192.0.2.1:2525", [Host("192.0.2.1", 2525)]),
        ("[2001:db8::1]:587", [Host("2001:db8::1", 587)]),
        ("[2001:DB8:0::1]", [Host("2001:db8::1", 25)]),
        ("[IPv6:2001:db8::1]:587", [Host("2001:db8::1", 587)]),
        ("[mail.example.net]:587", [Host("mail.example.net", 587)]),
        ("localhost", [Host("localhost", 25)]),
        (
            " a.example.net, b.example.net:2525\t[192.0.2.1] ,,"
            "c.example.net\n",
            [
                Host("a.example.net", 25),
                Host("b.example.net", 2525),
                Host("192.0.2.1", 25),
                Host("c.example.net", 25),
            ],
        ),
    ],
)
def test_parseHosts(text: str, hosts: list[Host]) -> None:
    """
    Names, IPv4 addresses and bracketed addresses, with or without a
    port, separated by commas and white space, are read in order; a host
    without a port gets the default one.
    """
    assert parseHosts(text, 25) == hosts


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no host given"),
        (" ,\t, ", "no host given"),
        ("mail.example.net:0", "bad port in host 'mail.example.net:0'"),
        ("mail.example.net:65536", "bad port"),
        ("mail.example.net:smtp", "bad port"),
        ("mail.example.net:", "bad port"),
        ("mail.example.net:²", "bad port"),
        ("mail.example.net:25:25", "malformed host 'mail.example.net:25:25'"),
        ("2001:db8::1", "write an IPv6 address in brackets"),
        ("[2001:db8::1]:x", "bad port"),
        ("bad_name.example.net", "bad host name in host 'bad_name"),
        ("-mail.example.net", "bad host name"),
        ("mail..example.net", "bad host name"),
        ("999.1.1.1", "bad host name"),
        ("192.0.2", "bad host name"),
        ("[fe80::1%eth0]", "bad host name"),
        ("[192.0.2.1", "malformed host '[192.0.2.1'"),
        ("[192.0.2.1]x", "malformed host"),
        ("[]", "bad host name"),
        (":25", "malformed host"),
        ("mäil.example.net", "bad host name"),
    ],
)
def test_parseHostsRefuses(text: str, message: str) -> None:
    """
    Anything but a list of hosts is refused with a message that names the
    entry at fault.
    """
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        parseHosts(text, 25)


def test_parseHostsRefusesBadDefaultPort() -> None:
    """
    The default port must be one a connection can use.
    """
    with pytest.raises(ValueError):
        parseHosts("mail.example.net", 0)


# mailHosts: MX answers.


def test_mailHostsByPreference() -> None:
    """
    The MX hosts come most preferred first, whatever the order of the
    answer, each on the port asked for (SMTP-40).
    """
    answers = [
        mx(30, "last.example.net"),
        mx(10, "first.example.net"),
        mx(20, "second.example.net."),
    ]
    hosts = resultOf(lookup(answers))
    assert hosts == [
        Host("first.example.net", 25),
        Host("second.example.net", 25),
        Host("last.example.net", 25),
    ]


def test_mailHostsShufflesEachPreference() -> None:
    """
    The hosts of each preference are shuffled among themselves, never
    with those of another preference (SMTP-40).
    """
    answers = [
        mx(20, "c.example.net"),
        mx(10, "a.example.net"),
        mx(10, "b.example.net"),
        mx(20, "d.example.net"),
        mx(30, "e.example.net"),
    ]
    hosts = resultOf(lookup(answers, reverse))
    names = [host.name for host in hosts]
    assert names == [
        "b.example.net",
        "a.example.net",
        "d.example.net",
        "c.example.net",
        "e.example.net",
    ]


def test_mailHostsRandomOrder() -> None:
    """
    With a (seeded) random shuffle, both orders of two equally preferred
    hosts occur, and the less preferred host always comes last.
    """
    shuffle = random.Random(5321).shuffle
    answers = [mx(10, "a.example.net"), mx(10, "b.example.net")]
    answers.append(mx(20, "z.example.net"))
    seen = set()
    for _ in range(20):
        names = [host.name for host in resultOf(lookup(answers, shuffle))]
        assert names[2] == "z.example.net"
        seen.add(tuple(names[:2]))
    assert seen == {
        ("a.example.net", "b.example.net"),
        ("b.example.net", "a.example.net"),
    }


def test_mailHostsQuery() -> None:
    """
    The resolver is asked for the MX records of the domain itself, with
    the module's timeouts.
    """
    resolver = TableResolver([mx(10, "mx.example.net")])
    resultOf(mailHosts(resolver, "example.net", 25, keepOrder))
    assert resolver.queries == [(b"example.net", dns.MX, LOOKUP_TIMEOUT)]


def test_mailHostsPort() -> None:
    """
    Every host gets the port asked for.
    """
    resolver = TableResolver(
        [mx(10, "a.example.net"), mx(20, "b.example.net")]
    )
    hosts = resultOf(mailHosts(resolver, "example.net", 2525, keepOrder))
    assert [host.port for host in hosts] == [2525, 2525]


def test_mailHostsImplicitMX() -> None:
    """
    A domain that exists but has no MX record is its own mail host
    (RFC 5321 section 5.1, SMTP-40).
    """
    assert resultOf(lookup([])) == [Host("example.net", 25)]


def test_mailHostsFollowedCNAME() -> None:
    """
    When the domain is an alias, the MX records of the name it points to,
    which the resolver adds to the answer, are used.
    """
    answers = [
        cname("example.net", "real.example.org"),
        mx(10, "mx.example.org", owner="real.example.org"),
    ]
    assert resultOf(lookup(answers)) == [Host("mx.example.org", 25)]


def test_mailHostsCNAMEWithoutMX() -> None:
    """
    An alias whose target has no MX record falls back to the implicit MX;
    the connection then resolves the alias.
    """
    answers = [cname("example.net", "real.example.org")]
    assert resultOf(lookup(answers)) == [Host("example.net", 25)]


def test_mailHostsIPAddressTarget() -> None:
    """
    An MX record naming an IP address instead of a host name is tolerated.
    """
    answers = [mx(10, "192.0.2.25"), mx(20, "mx.example.net")]
    assert resultOf(lookup(answers)) == [
        Host("192.0.2.25", 25),
        Host("mx.example.net", 25),
    ]


def test_mailHostsSkipsBadTargets() -> None:
    """
    MX records naming something that is neither a host name nor an IP
    address are skipped.
    """
    odd = dns.RRHeader(b"example.net", dns.MX, payload=dns.Record_MX(5, b"x"))
    odd.payload.name.name = b"m\xe4il.example.net"
    answers = [odd, mx(10, "bad_host.example.net"), mx(20, "mx.example.net")]
    assert resultOf(lookup(answers)) == [Host("mx.example.net", 25)]


def test_mailHostsNoUsableTarget() -> None:
    """
    MX records that name no usable host are a temporary failure: the
    domain's DNS is broken, and may be mended.
    """
    error = hopErrorOf(lookup([mx(10, "bad_host.example.net")]))
    assert (error.status, error.permanent) == ("4.4.3", False)
    assert "no usable host" in error.reason


def test_mailHostsListsEachHostOnce() -> None:
    """
    A host named by several MX records is tried once, at its best
    preference.
    """
    answers = [
        mx(20, "a.example.net"),
        mx(10, "a.example.net"),
        mx(15, "b.example.net"),
    ]
    assert resultOf(lookup(answers)) == [
        Host("a.example.net", 25),
        Host("b.example.net", 25),
    ]


# mailHosts: refusals and failures.


@pytest.mark.parametrize("preference", [0, 10])
def test_mailHostsNullMX(preference: int) -> None:
    """
    A null MX (one MX record naming the root, RFC 7505) is a permanent
    failure with status 5.1.10.
    """
    error = hopErrorOf(lookup([mx(preference, "")]))
    assert (error.status, error.permanent) == ("5.1.10", True)
    assert error.reason == "domain accepts no mail (null MX)"


def test_mailHostsNullMXAmongOthers() -> None:
    """
    A null MX beside real MX records (which RFC 7505 section 3 forbids)
    names no host; the real ones are used.
    """
    answers = [mx(0, ""), mx(10, "mx.example.net")]
    assert resultOf(lookup(answers)) == [Host("mx.example.net", 25)]


@pytest.mark.parametrize(
    "error", [DNSNameError("NXDOMAIN"), AuthoritativeDomainError("absent")]
)
def test_mailHostsNoSuchDomain(error: Exception) -> None:
    """
    A domain that does not exist (NXDOMAIN) is a permanent failure with
    status 5.1.2 (SMTP-40).
    """
    hopError = hopErrorOf(lookup(error))
    assert (hopError.status, hopError.permanent) == ("5.1.2", True)
    assert hopError.reason == "no such domain: example.net"


@pytest.mark.parametrize(
    "error",
    [
        DNSServerError("SERVFAIL"),
        DNSQueryRefusedError("REFUSED"),
        DNSQueryTimeoutError(7),
        ResolverError("no servers"),
        OSError("No domain name servers available"),
    ],
)
def test_mailHostsLookupFailure(error: Exception) -> None:
    """
    A server failure, a timeout or any other DNS problem is a temporary
    failure with status 4.4.3: it says nothing about the domain (SMTP-40).
    """
    hopError = hopErrorOf(lookup(error))
    assert (hopError.status, hopError.permanent) == ("4.4.3", False)
    assert hopError.reason.startswith("MX lookup for example.net failed (")
    assert type(error).__name__ in hopError.reason


def test_mailHostsBugIsNotADNSProblem() -> None:
    """
    An error that no lookup problem explains is passed on as it is, so
    that it is logged as the bug it is.
    """
    outcome = resultOf(lookup(ZeroDivisionError()))
    assert isinstance(outcome, Failure)
    assert outcome.check(ZeroDivisionError)


# mailHosts: address literals and malformed domains.


@pytest.mark.parametrize(
    "domain, name",
    [
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:db8::1]", "2001:db8::1"),
        ("[ipv6:2001:DB8:0::1]", "2001:db8::1"),
    ],
)
def test_mailHostsAddressLiteral(domain: str, name: str) -> None:
    """
    An address literal names its host without asking the DNS.
    """
    resolver = TableResolver(AssertionError("the DNS was asked"))
    hosts = resultOf(mailHosts(resolver, domain, 25, keepOrder))
    assert hosts == [Host(name, 25)]
    assert resolver.queries == []


@pytest.mark.parametrize(
    "domain",
    [
        "[300.1.1.1]",
        "[2001:db8::1]",
        "[IPv6:fe80::1%eth0]",
        "bad_domain.net",
        "",
    ],
)
def test_mailHostsMalformedDomain(domain: str) -> None:
    """
    A domain that is neither a domain name nor an address literal is a
    permanent failure with status 5.1.3, and the DNS is not asked.
    """
    resolver = TableResolver(AssertionError("the DNS was asked"))
    error = hopErrorOf(mailHosts(resolver, domain, 25, keepOrder))
    assert (error.status, error.permanent) == ("5.1.3", True)
    assert resolver.queries == []


# A real DNS server on the loopback interface.


class MemoryAuthority(FileAuthority):
    """
    An authoritative zone whose records are given in memory rather than
    read from a file.
    """

    def loadFile(self, records: list[tuple[bytes, Any]]) -> None:
        """
        Take the zone's records; the first is its SOA.
        """
        self.soa = records[0]
        self.records = {}
        for name, record in records:
            self.records.setdefault(name.lower(), []).append(record)


ZONE = [
    (
        b"example.test",
        dns.Record_SOA(
            mname=b"ns.example.test",
            rname=b"hostmaster.example.test",
            serial=1,
            refresh=3600,
            retry=600,
            expire=86400,
            minimum=60,
        ),
    ),
    (b"example.test", dns.Record_MX(20, b"backup.example.test")),
    (b"example.test", dns.Record_MX(10, b"mx1.example.test")),
    (b"example.test", dns.Record_MX(10, b"mx2.example.test")),
    (b"mx1.example.test", dns.Record_A("192.0.2.1")),
    (b"nomail.example.test", dns.Record_MX(0, b"")),
    (b"plain.example.test", dns.Record_A("192.0.2.5")),
]


@pytest.fixture
def dnsServer(runningReactor: Any) -> Any:
    """
    A DNS server for example.test listening on a free UDP port of
    127.0.0.1, and a resolver that asks it.
    """

    def start() -> tuple[Any, client.Resolver]:
        factory = server.DNSServerFactory(authorities=[MemoryAuthority(ZONE)])
        protocol = dns.DNSDatagramProtocol(factory)
        port = globalReactor.listenUDP(0, protocol, interface="127.0.0.1")
        address = ("127.0.0.1", port.getHost().port)
        return port, client.Resolver(servers=[address], reactor=globalReactor)

    port, resolver = inReactor(start)
    yield resolver
    inReactor(port.stopListening)


def test_dnsMailHosts(dnsServer: Any) -> None:
    """
    A real DNS answer over UDP gives the MX hosts by preference (SMTP-40).
    """
    hosts = inReactor(mailHosts, dnsServer, "example.test", 25, reverse)
    assert hosts == [
        Host("mx2.example.test", 25),
        Host("mx1.example.test", 25),
        Host("backup.example.test", 25),
    ]


def test_dnsImplicitMX(dnsServer: Any) -> None:
    """
    A name with an address and no MX record is its own mail host.
    """
    hosts = inReactor(mailHosts, dnsServer, "plain.example.test", 587)
    assert hosts == [Host("plain.example.test", 587)]


def test_dnsNullMX(dnsServer: Any) -> None:
    """
    A null MX sent over the wire is recognised: permanent, 5.1.10.
    """
    with pytest.raises(NextHopError) as caught:
        inReactor(mailHosts, dnsServer, "nomail.example.test", 25)
    assert (caught.value.status, caught.value.permanent) == ("5.1.10", True)


def test_dnsNoSuchDomain(dnsServer: Any) -> None:
    """
    NXDOMAIN from a real server is a permanent failure, 5.1.2 (SMTP-40).
    """
    with pytest.raises(NextHopError) as caught:
        inReactor(mailHosts, dnsServer, "missing.example.test", 25)
    assert (caught.value.status, caught.value.permanent) == ("5.1.2", True)
