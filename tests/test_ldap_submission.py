"""
Submission authenticated by the directory, end to end: msagate running in
the test reactor, its users and their senders in the test session's real
slapd, a client on the loopback listener with STARTTLS and AUTH.
"""

from __future__ import annotations

import smtplib
import ssl

import pytest
from conftest import RunningServer, setRelay
from slapd import PASSWORDS, PEOPLE_DN

WAIT = 30


def ldapConfiguration(serverFiles, slapd, extra: str = "") -> None:
    """
    Turn the test configuration over to the directory: LDAP checks the
    passwords and adds senders to the map's.
    """
    text = serverFiles.read_text()
    text = text.replace("[auth]\n", "[auth]\nchecker = ldap\n", 1)
    text = text.replace("[senders]\n", "[senders]\nldap = yes\n", 1)
    serverFiles.write_text(text)
    (serverFiles.parent / "ldap-password").write_text(
        slapd.servicePassword + "\n"
    )
    setRelay(
        serverFiles,
        "mode = smarthost\nsmarthosts = 127.0.0.1:9\nsecurity = none\n"
        "[ldap]\n"
        f"servers = {slapd.url}\n"
        f"ca_file = {slapd.caFile}\n"
        f"bind_dn = {slapd.serviceDN}\n"
        "bind_password_file = ldap-password\n"
        f"base_dn = {PEOPLE_DN}\n"
        "group_filter = (&(objectClass=groupOfNames)(member={dn}))\n"
        f"group_base_dn = ou=groups,{slapd.baseDN}\n" + extra,
    )


@pytest.fixture
def ldapServer(runningReactor, serverFiles, slapd):
    """
    msagate whose users are the directory's.
    """
    ldapConfiguration(serverFiles, slapd)
    server = RunningServer(serverFiles)
    yield server
    server.stop()


def session(server: RunningServer) -> smtplib.SMTP:
    client = smtplib.SMTP(
        "127.0.0.1", server.ports["submission"], timeout=WAIT
    )
    client.starttls(context=ssl.create_default_context(cafile=server.caFile))
    return client


def test_submissionAuthenticatedByTheDirectory(ldapServer, logged):
    """
    A user of the directory logs in with the directory's password, in any
    case of the login, and sends as an address of her entry and of a
    domain her group grants; the log names the canonical user.
    """
    with session(ldapServer) as client:
        client.login("ALICE", PASSWORDS["alice"])
        for sender in ("alice.smith@example.org", "someone@example.net"):
            client.sendmail(
                sender,
                ["bob@example.net"],
                f"From: {sender}\r\nSubject: t\r\n\r\nbody\r\n".encode(),
            )

    assert len(ldapServer.queued()) == 2
    users = {e["user"] for e in logged if "mechanism" in e and "user" in e}
    assert users == {"alice"}


def test_wrongPasswordRefused(ldapServer):
    """
    A wrong directory password is 535 5.7.8 (AUTH-11), and a sender the
    directory does not grant is refused after a good login.
    """
    with session(ldapServer) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("alice", "not " + PASSWORDS["alice"])
        assert refused.value.smtp_code == 535
    with session(ldapServer) as client:
        client.login("erin", PASSWORDS["erin"])
        code, _ = client.mail("alice@example.org")
        assert code == 553


def test_directoryDownIsTemporary(runningReactor, serverFiles, slapd):
    """
    With no directory server reachable, AUTH is answered 454 4.7.0 (try
    again later), never 535 (AUTH-12).
    """
    ldapConfiguration(serverFiles, slapd)
    text = serverFiles.read_text().replace(
        f"servers = {slapd.url}", "servers = ldap://127.0.0.1:9"
    )
    serverFiles.write_text(text)
    server = RunningServer(serverFiles)
    try:
        with session(server) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.login("alice", PASSWORDS["alice"])
            assert refused.value.smtp_code == 454
    finally:
        server.stop()
