# -*- test-case-name: tests.test_tap -*-
"""
C{python -m msagate.demo DIR}: write a configuration to try msagate with.

It holds two htpasswd users with random passwords, a sender map, a
self-signed certificate and a spool, all under DIR, and listens on
unprivileged loopback ports, so C{twistd msagate} runs without root.  An
existing DIR is left alone.
"""

from __future__ import annotations

import os
import secrets
import sys

import bcrypt

from msagate._certs import selfSigned

HOSTNAME = "msa.localhost"
SUBMISSION_PORT = 2587
SUBMISSIONS_PORT = 2465
SMARTHOST_PORT = 2525
USERS = {
    "alice": "alice@example.org, @sales.example.org",
    "bob": "bob@example.org",
}

CONFIG = """\
# msagate demonstration configuration, written by python -m msagate.demo.
# etc/msagate.ini in the distribution documents every option.

[server]
hostname = {hostname}
spool = spool

[listener:submission]
endpoint = tcp:{submission}:interface=127.0.0.1
tls = starttls

[listener:submissions]
endpoint = tcp:{submissions}:interface=127.0.0.1
tls = implicit

[tls]
certificate = cert.pem
key = key.pem

[auth]
checker = htpasswd
htpasswd = htpasswd

[senders]
map = senders

# Accepted mail goes to a smarthost on this machine only, never out to
# the Internet: until something listens on 127.0.0.1:{smarthost} (for
# example Postfix's "smtp-sink 127.0.0.1:{smarthost} 10"), it waits in the
# queue, where "msagate --config msagate.ini queue list" shows it.  Point
# smarthosts at your outgoing mail server to deliver for real.
[relay]
mode = smarthost
smarthosts = 127.0.0.1:{smarthost}
security = none
"""


def writeDemo(directory: str) -> dict[str, str]:
    """
    Write the demonstration files into C{directory}.

    @return: the users' passwords.
    """
    os.makedirs(directory, exist_ok=True)
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    issued = selfSigned([HOSTNAME, "localhost", "127.0.0.1"])

    files = {
        "cert.pem": issued.certificate,
        "key.pem": issued.key,
        "htpasswd": _htpasswd(passwords),
        "senders": "".join(f"{u}: {e}\n" for u, e in USERS.items()).encode(),
        "credentials.txt": _credentials(passwords),
        "msagate.ini": CONFIG.format(
            hostname=HOSTNAME,
            submission=SUBMISSION_PORT,
            submissions=SUBMISSIONS_PORT,
            smarthost=SMARTHOST_PORT,
        ).encode(),
    }
    for name, data in files.items():
        _writePrivate(os.path.join(directory, name), data)
    return passwords


def _htpasswd(passwords: dict[str, str]) -> bytes:
    lines = []
    for user, password in passwords.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(10))
        lines.append(f"{user}:{hashed.decode()}\n")
    return "".join(lines).encode()


def _credentials(passwords: dict[str, str]) -> bytes:
    lines = [f"{user} {password}\n" for user, password in passwords.items()]
    return "".join(lines).encode()


def _writePrivate(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def main(argv: list[str]) -> int:
    """
    Write the demonstration set-up unless it exists, and say how to use it.
    """
    directory = argv[1] if len(argv) > 1 else "run"
    if os.path.exists(os.path.join(directory, "msagate.ini")):
        print(f"{directory}/msagate.ini exists; leaving it alone")
        return 0
    passwords = writeDemo(directory)
    print(f"Wrote a demonstration configuration to {directory}/.")
    print(f"Submission (STARTTLS): 127.0.0.1:{SUBMISSION_PORT}")
    print(f"Submissions (implicit TLS): 127.0.0.1:{SUBMISSIONS_PORT}")
    for user, password in passwords.items():
        print(f"  user {user}, password {password}, may send as {USERS[user]}")
    print(f"(also in {directory}/credentials.txt)")
    print(f"Accepted mail is relayed to 127.0.0.1:{SMARTHOST_PORT} only.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
