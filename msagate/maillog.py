# -*- test-case-name: tests.test_protocol -*-
"""
The operator's mail log: a small, fixed vocabulary of events.

Each function emits one C{twisted.logger} event in the C{msagate.mail}
namespace, its text rendered once here (the mail log has a line or more
for every message, and Twisted's own rendering of a format costs several
times more), with fixed field names (C{session}, C{peer}, C{user}, C{stage},
C{code}, C{status}, C{reason}, C{queueID}, C{sender}, C{recipients},
C{size}), so that a log pipeline can rely on them.  Nothing here ever
receives a password or an AUTH exchange.  Client-supplied text is passed
through L{printable} before it reaches a format string.
"""

from __future__ import annotations

from twisted.logger import Logger

from msagate.replies import Reply


class _MailLogger:
    """
    Emits informational events whose text is rendered with L{str.format}
    at once; the fields stay in the event for observers that want them.
    """

    def __init__(self) -> None:
        self._logger = Logger(namespace="msagate.mail")

    def info(self, format: str, **fields: object) -> None:
        self._logger.info(
            "{log_text}", log_text=format.format(**fields), **fields
        )


log = _MailLogger()


def printable(text: str | bytes, limit: int = 200) -> str:
    """
    Make client-supplied text safe for a log line: control and non-ASCII
    characters are escaped and the text is cut at C{limit} characters.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", "backslashreplace")
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped[:limit] + ("..." if len(escaped) > limit else "")


def connected(session: str, peer: str, listener: str) -> None:
    """
    A client connected.
    """
    log.info(
        "{session}: connect from {peer} on {listener}",
        session=session,
        peer=peer,
        listener=listener,
    )


def tlsStarted(session: str, version: str, cipher: str) -> None:
    """
    A TLS session is up (RFC 8314 section 4: log the version and cipher).
    """
    log.info(
        "{session}: TLS {version} with {cipher}",
        session=session,
        version=version,
        cipher=cipher,
    )


def authenticated(session: str, user: str, mechanism: str) -> None:
    """
    A client authenticated.
    """
    log.info(
        "{session}: authenticated user={user} mechanism={mechanism}",
        session=session,
        user=user,
        mechanism=mechanism,
    )


def authFailed(
    session: str, mechanism: str, reply: Reply, reason: str
) -> None:
    """
    An authentication failed; C{reason} never holds the credentials.
    """
    log.info(
        "{session}: authentication failed mechanism={mechanism} "
        "code={code} status={status} reason={reason}",
        session=session,
        mechanism=mechanism,
        code=reply.code,
        status=reply.status,
        reason=reason,
    )


def rejected(session: str, stage: str, reply: Reply, reason: str) -> None:
    """
    A command or a message was refused.
    """
    log.info(
        "{session}: reject {stage}: {code} {status} reason={reason}",
        session=session,
        stage=stage,
        code=reply.code,
        status=reply.status,
        reason=reason,
    )


def queued(
    session: str,
    queueID: str,
    user: str,
    sender: str,
    recipients: int,
    size: int,
) -> None:
    """
    A message was committed to the spool and the client told 250.
    """
    log.info(
        "{session}: queued {queueID} user={user} from=<{sender}> "
        "recipients={recipients} size={size}",
        session=session,
        queueID=queueID,
        user=user,
        sender=sender,
        recipients=recipients,
        size=size,
    )


def disconnected(
    session: str, peer: str, user: str, commands: dict[str, list[int]]
) -> None:
    """
    The session ended; C{commands} maps each verb to its count of
    successful and of all replies, shown as C{mail=1/2}.
    """
    summary = " ".join(
        f"{verb.lower()}={ok}"
        if ok == total
        else f"{verb.lower()}={ok}/{total}"
        for verb, (ok, total) in commands.items()
    )
    log.info(
        "{session}: disconnect from {peer} user={user} {summary}",
        session=session,
        peer=peer,
        user=user,
        summary=summary,
    )


def relayed(
    queueID: str,
    recipient: str,
    relay: str,
    outcome: str,
    status: str,
    delay: float,
    reply: str,
) -> None:
    """
    A delivery attempt for one recipient ended: C{outcome} is C{sent},
    C{deferred} (tried again later) or C{bounced} (failed for good).
    """
    log.info(
        "{queueID}: to=<{recipient}> relay={relay} delay={delay:.1f} "
        "dsn={status} status={outcome} ({reply})",
        queueID=queueID,
        recipient=recipient,
        relay=relay or "none",
        delay=delay,
        status=status,
        outcome=outcome,
        reply=printable(reply, 400),
    )


def notified(queueID: str, reportID: str, action: str, sender: str) -> None:
    """
    A delivery status notification about message C{queueID} was queued
    as C{reportID} for its sender.
    """
    log.info(
        "{queueID}: sender notification {reportID} to=<{sender}> "
        "action={action}",
        queueID=queueID,
        reportID=reportID,
        sender=sender,
        action=action,
    )


def removed(queueID: str, reason: str) -> None:
    """
    A message left the queue: delivered, bounced, expired or deleted.
    """
    log.info("{queueID}: removed ({reason})", queueID=queueID, reason=reason)
