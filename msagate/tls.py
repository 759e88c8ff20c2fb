# -*- test-case-name: tests.test_tap -*-
"""
The server's TLS settings, shared by STARTTLS and implicit TLS listeners.

TLS 1.2 is the oldest version offered (RFC 8314 section 4.1); Twisted's
default cipher list keeps to AEAD suites with forward secrecy.  No client
certificate is asked for (RFC 8314 section 4.2).
"""

from __future__ import annotations

import re

from OpenSSL import SSL, crypto
from twisted.internet import ssl

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)

VERSIONS = {
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


class TLSSetupError(ValueError):
    """
    The certificate or the key cannot be used.

    @ivar option: C{"certificate"} or C{"key"}, whichever is at fault.
    """

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(problem)
        self.option = option


def serverOptions(
    certificatePath: str, keyPath: str, minimumVersion: str = "TLSv1.2"
) -> ssl.CertificateOptions:
    """
    Load a certificate chain and its key.

    @param certificatePath: a PEM file: the server certificate first, then
        any intermediate certificates.
    @param keyPath: a PEM file holding the certificate's private key.
    @param minimumVersion: C{"TLSv1.2"} or C{"TLSv1.3"}.
    @return: options for L{twisted.internet.interfaces.ITLSTransport}.
    @raise TLSSetupError: when a file is unreadable, malformed, or the key
        does not belong to the certificate.
    """
    blocks = _PEM_CERTIFICATE.findall(_read(certificatePath, "certificate"))
    try:
        chain = [ssl.Certificate.loadPEM(block) for block in blocks]
    except (crypto.Error, ValueError) as error:
        problem = f"not a PEM certificate ({error})"
        raise TLSSetupError("certificate", problem) from None
    if not chain:
        raise TLSSetupError("certificate", "no PEM certificate in the file")
    try:
        key = ssl.KeyPair.load(_read(keyPath, "key"), crypto.FILETYPE_PEM)
    except (crypto.Error, ValueError) as error:
        problem = f"not a PEM private key ({error})"
        raise TLSSetupError("key", problem) from None

    options = ssl.CertificateOptions(
        privateKey=key.original,
        certificate=chain[0].original,
        extraCertChain=[certificate.original for certificate in chain[1:]],
        raiseMinimumTo=VERSIONS[minimumVersion],
    )
    try:
        options.getContext()
    except SSL.Error as error:
        problem = f"does not match the certificate ({error})"
        raise TLSSetupError("key", problem) from None
    return options


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise TLSSetupError(option, f"cannot read: {error.strerror}") from None
