"""
msagate: a message submission agent (RFC 6409) built on Twisted.

Mail clients authenticate on the submission (STARTTLS) or submissions
(implicit TLS) port and submit mail; msagate checks that they may send as
the addresses they use, completes the message as RFC 6409 asks, and writes
it durably to its spool for the relay manager.  See C{docs/flow.rst} for the
path one message takes through the modules.
"""

__version__ = "0.1.0"
