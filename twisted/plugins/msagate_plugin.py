"""
The twistd plugin: C{twistd msagate --config FILE}.
"""

from twisted.application.service import ServiceMaker

msagate = ServiceMaker(
    "msagate",
    "msagate.tap",
    "Mail submission agent (RFC 6409): STARTTLS and implicit TLS, SASL",
    "msagate",
)
