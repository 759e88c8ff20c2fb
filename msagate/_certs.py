# -*- test-case-name: tests.test_tap -*-
"""
Certificates for the demonstration set-up and for tests: a self-signed
server certificate, or a small certificate authority that issues one.

Production servers use certificates from their organisation's CA or from
ACME; nothing here is meant for them.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class Issued:
    """
    A certificate and its private key, both PEM-encoded.
    """

    certificate: bytes
    key: bytes


class CertificateAuthority:
    """
    A throw-away certificate authority.

    @ivar certificate: its own certificate, PEM-encoded: what clients trust.
    """

    def __init__(self, name: str = "msagate test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = _builder(self._name, self._name, self._key.public_key())
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        self._certificate = builder.sign(self._key, hashes.SHA256())
        self.certificate = self._certificate.public_bytes(
            serialization.Encoding.PEM
        )

    def issue(self, hostnames: list[str]) -> Issued:
        """
        Issue a server certificate for C{hostnames} (DNS names or IP
        addresses).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]
        )
        builder = _serverBuilder(subject, self._name, key, hostnames)
        certificate = builder.sign(self._key, hashes.SHA256())
        return Issued(_pem(certificate), _keyPEM(key))


def selfSigned(hostnames: list[str]) -> Issued:
    """
    @return: a self-signed server certificate for C{hostnames}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    builder = _serverBuilder(name, name, key, hostnames)
    return Issued(_pem(builder.sign(key, hashes.SHA256())), _keyPEM(key))


def _serverBuilder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    hostnames: list[str],
) -> x509.CertificateBuilder:
    names = [_generalName(hostname) for hostname in hostnames]
    builder = _builder(subject, issuer, key.public_key())
    builder = builder.add_extension(
        x509.SubjectAlternativeName(names), critical=False
    )
    return builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        critical=False,
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, publicKey: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _generalName(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
