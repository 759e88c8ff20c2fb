# -*- test-case-name: tests.test_delivery -*-
"""
Connections to next hops: the endpoint and the TLS settings of each
outbound session, from the relay's configuration.

A smarthost is reached with a verified certificate (RFC 7817 section 3:
PKIX validation and a check of the name given in the configuration, by
C{service_identity}); a mail exchanger with opportunistic TLS, which
encrypts without checking, since nothing in an MX lookup says which name
the exchanger's certificate should bear.
"""

from __future__ import annotations

import re
from dataclasses import replace

from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from zope.interface import implementer

from msagate.client import ClientSettings, SMTPSession, connectSession
from msagate.interfaces import IConnector, IServerReactor
from msagate.nexthop import Host

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S
)


@implementer(IConnector)
class NextHopConnector:
    """
    Opens SMTP sessions with next hops.
    """

    def __init__(
        self,
        reactor: IServerReactor,
        settings: ClientSettings,
        trustRoot: IOpenSSLTrustRoot | None,
        connectTimeout: float,
    ) -> None:
        """
        @param settings: what every session shares; its C{security} and
            C{tlsCreator} are set for each connection.
        @param trustRoot: the authorities that vouch for smarthosts'
            certificates; L{None} for the system's.
        @param connectTimeout: seconds to wait for a connection.
        """
        self._reactor = reactor
        self._settings = settings
        self._trustRoot = trustRoot
        self._connectTimeout = connectTimeout

    def connect(self, host: Host, security: str) -> Deferred[SMTPSession]:
        """
        Connect to C{host} and prepare a session for mail.

        @param security: C{"starttls"} and C{"implicit"} verify the
            certificate against C{host}'s name; C{"opportunistic"} does
            not; C{"none"} has no TLS.
        """
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor,
            host.name,
            host.port,
            timeout=self._connectTimeout,
        )
        if security == "implicit":
            endpoint = wrapClientTLS(self._verified(host.name), endpoint)
        creator = {
            "starttls": self._verified,
            "opportunistic": _unverified,
        }.get(security)
        settings = replace(
            self._settings, security=security, tlsCreator=creator
        )
        return connectSession(endpoint, host.name, settings, self._reactor)

    def _verified(self, name: str) -> IOpenSSLClientConnectionCreator:
        return optionsForClientTLS(name, trustRoot=self._trustRoot)


def _unverified(name: str) -> IOpenSSLClientConnectionCreator:
    # CertificateOptions verifies nothing unless asked to; the
    # transport adapts it to a connection creator.
    options: IOpenSSLClientConnectionCreator = CertificateOptions()
    return options


def loadTrustRoot(path: str) -> IOpenSSLTrustRoot:
    """
    Read the certificate authorities of a PEM file.

    @raise OSError: when the file cannot be read.
    @raise ValueError: when it holds no certificate that can be used.
    """
    with open(path, "rb") as file:
        found = _PEM_CERTIFICATE.findall(file.read())
    if not found:
        raise ValueError("no PEM certificate in it")
    try:
        certificates = [Certificate.loadPEM(pem) for pem in found]
    except Exception as error:
        raise ValueError(f"bad certificate: {error}") from None
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)
    return root
