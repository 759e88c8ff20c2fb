# -*- test-case-name: tests.test_replies -*-
"""
Every SMTP reply msagate sends, as values.

A L{Reply} is a basic code (RFC 5321 section 4.2), an enhanced status code
(RFC 3463, RFC 5248) and a text.  The protocol writes replies only from this
catalogue, so that one test can check all of them: the enhanced code's class
matches the first digit, the text is printable ASCII and fits on a line.

Policy code refuses by raising L{Refused}, which carries the reply the client
sees and a separate reason that only the operator's log sees.  Client text
never names a backend, a file or a directory entry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """
    One SMTP reply.

    @ivar code: the three-digit basic reply code.
    @ivar status: the enhanced status code such as C{"5.7.1"}, or C{""}
        for the replies that carry none (the greeting, EHLO/HELO and 3xx).
    @ivar text: the human-readable text, printable ASCII.
    """

    code: int
    status: str
    text: str

    def format(self, *lines: str) -> bytes:
        """
        Render the reply for the wire.

        @param lines: extra lines that follow the text in a multi-line reply
            (the EHLO keywords); each repeats the code and enhanced code, as
            RFC 2034 section 4 asks.
        @return: the reply, each line ending in CRLF.
        """
        texts = (self.text, *lines)
        prefix = f"{self.code}"
        status = f"{self.status} " if self.status else ""
        out = []
        for index, text in enumerate(texts):
            separator = " " if index == len(texts) - 1 else "-"
            out.append(f"{prefix}{separator}{status}{text}\r\n")
        return "".join(out).encode("ascii")

    def fill(self, **fields: object) -> Reply:
        """
        Fill the C{{name}} placeholders of the text.

        @param fields: the values of the placeholders.
        @return: the same code and enhanced code with the filled text.
        """
        return Reply(self.code, self.status, self.text.format(**fields))

    @property
    def isTemporary(self) -> bool:
        """
        Whether the reply is a transient failure (4xx).
        """
        return 400 <= self.code < 500

    @property
    def isFailure(self) -> bool:
        """
        Whether the reply refuses the command (4xx or 5xx).
        """
        return self.code >= 400


class Refused(Exception):
    """
    A command or a message is refused with C{reply}.

    @ivar reply: what the client is told.
    @ivar reason: why, for the operator's log only; it may name files,
        directory entries and addresses the client must not see.
    """

    def __init__(self, reply: Reply, reason: str = "") -> None:
        super().__init__(reply, reason)
        self.reply = reply
        self.reason = reason or reply.text


# Connection and session.
GREETING = Reply(220, "", "{host} ESMTP ready")
CLOSING = Reply(221, "2.0.0", "Bye")
HELP = Reply(
    214,
    "2.0.0",
    "See RFC 6409; commands: EHLO HELO STARTTLS "
    "AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
)
OK = Reply(250, "2.0.0", "OK")
HELO_OK = Reply(250, "", "{host} greets {client}")
VRFY_CANNOT = Reply(252, "2.0.0", "Cannot VRFY user; try RCPT")

IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_AUTH_FAILURES = Reply(
    421, "4.7.0", "Too many failed authentications, closing connection"
)
TOO_MANY_CONNECTIONS = Reply(
    421, "4.7.0", "Too many connections, try again later"
)
PIPELINED_DATA = Reply(
    554, "5.5.0", "Data sent before the 354 reply, closing connection"
)

# Command syntax and sequence.
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
NO_ARGUMENTS = Reply(501, "5.5.4", "This command takes no arguments")
BAD_DOMAIN = Reply(501, "5.5.4", "Invalid domain name or address literal")
SAY_HELLO = Reply(503, "5.5.1", "Send EHLO or HELO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
NEED_MAIL = Reply(503, "5.5.1", "Send MAIL first")
NEED_RCPT = Reply(554, "5.5.1", "No valid recipients")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported parameter")
BAD_PARAMETER = Reply(501, "5.5.4", "Invalid parameter value")
NOT_ASCII = Reply(
    501, "5.5.2", "Non-ASCII input needs SMTPUTF8, which is not offered"
)

# TLS (RFC 3207).
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
TLS_ACTIVE = Reply(503, "5.5.1", "TLS already active")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")

# Authentication (RFC 4954).
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMPORARY = Reply(
    454, "4.7.0", "Temporary authentication failure, try again later"
)
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(
    503, "5.5.1", "AUTH not permitted during a mail transaction"
)
AUTH_UNKNOWN_MECHANISM = Reply(
    504, "5.5.4", "Unrecognized authentication mechanism"
)
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode the response")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
AUTH_LINE_TOO_LONG = Reply(
    500, "5.5.6", "Authentication exchange line too long"
)
AUTH_CHALLENGE = Reply(334, "", "{challenge}")

# The envelope.
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Invalid sender address")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Invalid recipient address")
SENDER_NOT_QUALIFIED = Reply(
    554, "5.1.8", "Sender domain must be fully qualified"
)
RECIPIENT_NOT_QUALIFIED = Reply(
    554, "5.1.2", "Recipient domain must be fully qualified"
)
SENDER_NOT_OWNED = Reply(
    553, "5.7.1", "Sender address not owned by the authenticated user"
)
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds fixed limit")

# The message.
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
QUEUED = Reply(250, "2.0.0", "OK queued as {queueID}")
BARE_LINE_ENDING = Reply(
    550, "5.6.0", "Message contains a bare CR or LF; lines must end in CRLF"
)
DATA_LINE_TOO_LONG = Reply(
    554, "5.6.0", "Message contains a line longer than {limit} octets"
)
HEADER_TOO_LARGE = Reply(552, "5.3.4", "Header section exceeds fixed limit")
BAD_HEADER = Reply(554, "5.6.0", "Message header is invalid: {detail}")
FROM_NOT_OWNED = Reply(
    550, "5.7.1", "From or Sender address not owned by the authenticated user"
)
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many Received fields, mail loop?")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again")
