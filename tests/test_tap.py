"""
The twistd plugin end to end: a real C{twistd msagate} process, its
start-up errors, its listeners and its shutdown.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys

import pytest
from conftest import USERS, setRelay
from twisted.internet import reactor

from msagate._certs import CertificateAuthority, selfSigned
from msagate.config import loadConfig
from msagate.demo import writeDemo
from msagate.errors import ConfigError
from msagate.tap import buildService
from msagate.tls import TLSSetupError, serverOptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [
    sys.executable,
    "-c",
    "from twisted.scripts.twistd import run; run()",
]
LISTENING = re.compile(rb"listener (\w+) on 127\.0\.0\.1:(\d+)")
TIMEOUT = 60


def twistd(*arguments: str, cwd=None) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(
        [*TWISTD, *arguments],
        cwd=cwd or ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def waitForListeners(process: subprocess.Popen, count: int) -> dict:
    """
    Read the server's log until C{count} listeners said where they listen.
    """
    ports: dict[str, int] = {}
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    output = b""
    while len(ports) < count:
        if not selector.select(TIMEOUT):
            raise AssertionError(f"no listener after {TIMEOUT}s: {output!r}")
        # Read the pipe itself: a buffered readline could hold lines that
        # select() then never reports.
        data = os.read(process.stdout.fileno(), 65536)
        if not data:
            raise AssertionError(f"twistd exited: {output!r}")
        output += data
        for name, port in LISTENING.findall(output):
            ports[name.decode()] = int(port)
    return ports


def test_pluginListed():
    """
    C{twistd --help} lists the msagate plugin.
    """
    process = twistd("--help")
    out, _ = process.communicate(timeout=TIMEOUT)
    assert re.search(rb"^\s+msagate\s+Mail submission agent", out, re.M)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "cannot read: No such file or directory"),
        ("[server]\nspool = s\n[bogus]\n", "[bogus]: unknown section"),
        (
            "[server]\nspool = s\nthreads = 2\n",
            "[server] threads: unknown option",
        ),
        ("[server]\nspool = s\n", "[tls] certificate: required but not set"),
    ],
)
def test_configurationErrorIsOneLine(tmp_path, content, expected):
    """
    A bad configuration stops start-up with one line on standard error
    naming the file, the section and the option.
    """
    path = tmp_path / "msagate.ini"
    if content is not None:
        path.write_text(content)
    process = twistd("--nodaemon", "msagate", "--config", str(path))
    out, err = process.communicate(timeout=TIMEOUT)

    assert process.returncode != 0
    assert err.decode().splitlines() == [f"msagate: {path}: {expected}"]


def test_unusableFilesStopStartUp(serverFiles):
    """
    A key that does not match its certificate, a spool that cannot be
    made and an unreadable htpasswd file are configuration errors naming
    their option.
    """
    other = selfSigned(["other.example"])
    issuedKey = (serverFiles.parent / "key.pem").read_bytes()
    (serverFiles.parent / "key.pem").write_bytes(other.key)
    process = twistd("--nodaemon", "msagate", "--config", str(serverFiles))
    _, err = process.communicate(timeout=TIMEOUT)
    assert err.decode().startswith(f"msagate: {serverFiles}: [tls] key: ")

    (serverFiles.parent / "key.pem").write_bytes(issuedKey)
    shutil.rmtree(serverFiles.parent / "spool", ignore_errors=True)
    (serverFiles.parent / "spool").write_text("not a directory")
    process = twistd("--nodaemon", "msagate", "--config", str(serverFiles))
    _, err = process.communicate(timeout=TIMEOUT)
    assert err.decode().startswith(f"msagate: {serverFiles}: [server] spool")
    assert process.returncode != 0

    (serverFiles.parent / "htpasswd").unlink()
    process = twistd("--nodaemon", "msagate", "--config", str(serverFiles))
    _, err = process.communicate(timeout=TIMEOUT)
    assert err.decode().startswith(f"msagate: {serverFiles}: [auth] htpasswd")


def test_submitThroughTwistd(serverFiles):
    """
    A real twistd process accepts a message over STARTTLS with AUTH, spools
    it, and on SIGTERM tells an open session 421 4.3.2 and exits (SMTP-35,
    SMTP-39).
    """
    process = twistd(
        "--nodaemon", "--pidfile=", "msagate", "--config", str(serverFiles)
    )
    try:
        ports = waitForListeners(process, 2)
        context = ssl.create_default_context(
            cafile=str(serverFiles.parent / "ca.pem")
        )
        client = smtplib.SMTP(
            "127.0.0.1", ports["submission"], timeout=TIMEOUT
        )
        client.starttls(context=context)
        client.login("alice", USERS["alice"].decode())
        client.sendmail(
            "alice@example.org",
            ["bob@example.net"],
            b"From: alice@example.org\r\nSubject: t\r\n\r\nbody\r\n",
        )
        process.send_signal(signal.SIGTERM)
        assert client.getreply() == (421, b"4.3.2 Service shutting down")
        process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()

    queue = serverFiles.parent / "spool" / "queue"
    assert len(list(queue.glob("*.json"))) == 1
    [data] = [path.read_bytes() for path in queue.glob("*.eml")]
    assert data.startswith(b"Received: from ")
    assert process.returncode in (0, -signal.SIGTERM)


def test_demoConfiguration(tmp_path):
    """
    The demonstration set-up that C{make run} writes loads as a valid
    configuration with a usable certificate, and relays to loopback only.
    """
    passwords = writeDemo(str(tmp_path))
    config = loadConfig(str(tmp_path / "msagate.ini"))
    assert set(passwords) == {"alice", "bob"}
    assert [listener.tls for listener in config.listeners] == [
        "starttls",
        "implicit",
    ]
    serverOptions(config.certificate, config.key)
    assert oct(os.stat(tmp_path / "key.pem").st_mode & 0o777) == "0o600"
    assert config.relayMode == "smarthost"
    assert [host.name for host in config.smarthosts] == ["127.0.0.1"]


def test_certificateChain(tmp_path):
    """
    A certificate file may hold the chain after the server certificate.
    """
    authority = CertificateAuthority()
    issued = authority.issue(["msa.example.org"])
    (tmp_path / "chain.pem").write_bytes(
        issued.certificate + authority.certificate
    )
    (tmp_path / "key.pem").write_bytes(issued.key)
    serverOptions(str(tmp_path / "chain.pem"), str(tmp_path / "key.pem"))
    with pytest.raises(TLSSetupError) as caught:
        serverOptions(str(tmp_path / "key.pem"), str(tmp_path / "key.pem"))
    assert caught.value.option == "certificate"


def test_haproxyListenerCountsNoClients(serverFiles):
    """
    Behind a PROXY-protocol endpoint every connection first comes from the
    proxy, so the per-client connection limit is off there.
    """
    text = serverFiles.read_text().replace(
        "endpoint = tcp:0:interface=127.0.0.1\ntls = implicit",
        "endpoint = haproxy:tcp:0:interface=127.0.0.1\ntls = implicit",
    )
    serverFiles.write_text(text)
    service = buildService(loadConfig(str(serverFiles)), reactor)
    plain, proxied = service.factories
    assert plain.settings.clientConnections == 50
    assert proxied.settings.clientConnections == 0


def test_spoolOwner(serverFiles, monkeypatch):
    """
    With twistd's --uid and --gid the spool directories are given to that
    user, who runs msagate after start-up.
    """
    changes = []
    monkeypatch.setattr(os, "chown", lambda *a: changes.append(a))
    buildService(loadConfig(str(serverFiles)), reactor, owner=(1234, 5678))
    spool = str(serverFiles.parent / "spool")
    assert sorted(path for path, *_ in changes) == [
        spool + "/",
        spool + "/incoming",
        spool + "/queue",
    ]
    assert {tuple(owner) for _, *owner in changes} == {(1234, 5678)}


def test_spoolInUse(serverFiles):
    """
    A second msagate on the same spool does not start: the first holds
    the spool lock, which it releases when it stops.
    """
    config = loadConfig(str(serverFiles))
    first = buildService(config, reactor)
    try:
        with pytest.raises(ConfigError) as raised:
            buildService(config, reactor)
        assert (raised.value.section, raised.value.option) == (
            "server",
            "spool",
        )
        assert f"process {os.getpid()}" in raised.value.problem
    finally:
        first.spoolLock.release()
    buildService(config, reactor).spoolLock.release()


@pytest.mark.parametrize(
    "relay, option, problem",
    [
        (
            "username = msa\npassword_file = missing\n",
            "password_file",
            "No such file or directory",
        ),
        ("username = msa\npassword_file = empty\n", "password_file", "no"),
        ("ca_file = missing.pem\n", "ca_file", "No such file or directory"),
        ("ca_file = empty\n", "ca_file", "no PEM certificate"),
    ],
)
def test_unusableRelayFiles(serverFiles, relay, option, problem):
    """
    A password file or CA file that cannot be used stops start-up with
    the option named.
    """
    (serverFiles.parent / "empty").write_text("")
    setRelay(serverFiles, "mode = smarthost\nsmarthosts = mail\n" + relay)
    config = loadConfig(str(serverFiles))

    with pytest.raises(ConfigError) as raised:
        buildService(config, reactor)
    assert (raised.value.section, raised.value.option) == ("relay", option)
    assert problem in raised.value.problem


@pytest.mark.parametrize(
    "ldap, option, problem",
    [
        (
            "bind_password_file = missing\n",
            "bind_password_file",
            "cannot read",
        ),
        ("bind_password_file = empty\n", "bind_password_file", "no password"),
        (
            "bind_password_file = secret\nca_file = missing.pem\n",
            "ca_file",
            "cannot read",
        ),
    ],
)
def test_unusableDirectoryFiles(serverFiles, ldap, option, problem):
    """
    The directory's password file and CA file are checked at start-up:
    one that cannot be used stops it with the option named.
    """
    (serverFiles.parent / "empty").write_text("")
    (serverFiles.parent / "secret").write_text("service password\n")
    text = serverFiles.read_text()
    serverFiles.write_text(
        text.replace("[auth]\n", "[auth]\nchecker = ldap\n")
    )
    with serverFiles.open("a") as file:
        file.write(
            "[ldap]\nservers = ldap://127.0.0.1:9\n"
            "bind_dn = cn=msagate,dc=example,dc=org\n"
            "base_dn = dc=example,dc=org\n" + ldap
        )
    config = loadConfig(str(serverFiles))

    with pytest.raises(ConfigError) as raised:
        buildService(config, reactor)
    assert (raised.value.section, raised.value.option) == ("ldap", option)
    assert problem in raised.value.problem
