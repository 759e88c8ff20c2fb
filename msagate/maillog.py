# -*- test-case-name: tests.test_protocol -*-
"""
The operator's mail log: a small, fixed vocabulary of events.

Each function emits one C{twisted.logger} event in the C{msagate.mail}
namespace with fixed field names (C{session}, C{peer}, C{user}, C{stage},
C{code}, C{status}, C{reason}, C{queueID}, C{sender}, C{recipients},
C{size}), so that a log pipeline can rely on them.  Nothing here ever
receives a password or an AUTH exchange.  Client-supplied text is passed
through L{printable} before it reaches a format string.
"""

from __future__ import annotations

from twisted.logger import Logger

from msagate.replies import Reply

log = Logger(namespace="msagate.mail")


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
