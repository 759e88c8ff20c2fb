"""
A private OpenLDAP server for tests and benchmarks.

L{Slapd} builds everything it needs in a temporary directory (a generated
C{slapd.conf}, an mdb database loaded with C{slapadd}, a TLS certificate
issued by L{msagate._certs.CertificateAuthority}) and runs C{slapd} as a
child process on two free loopback ports: C{ldap://} with StartTLS, and
C{ldaps://}.

The directory under C{dc=example,dc=org}:

  - C{cn=msagate,ou=services}: the service account (L{SERVICE_PASSWORD});
  - C{uid=alice,ou=people}: C{{SSHA}}, mail C{alice@example.org},
    mailAlternateAddress C{alice.smith@example.org} and
    C{postmaster@example.org};
  - C{uid=bob}: C{{CRYPT}} SHA-512, mail C{bob@example.org},
    mailAlternateAddress C{Bob.Alias@Example.ORG};
  - C{uid=carol}: clear text, mail C{carol@example.org} and
    C{carol@example.net};
  - C{uid=dave}: no mail at all;
  - C{uid=erin}: mail C{erin@example.net};
  - C{uid=frank}: a password that is not ASCII, mail C{frank@example.org};
  - C{uid=twin} twice (under C{ou=people} and C{ou=staff}): a login that
    matches two entries;
  - C{uid=nameless}: an C{inetOrgPerson} found by its C{cn} only, for
    settings whose user attribute it lacks;
  - C{cn=send-as-example.net,ou=groups}: C{associatedDomain} example.net,
    member alice; C{cn=mail-users,ou=groups}: alice, bob, carol, erin.

The passwords are in L{PASSWORDS}.  Anonymous clients can read nothing; the
service account and each entry itself can read the entries.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from passlib import hash as passlibHash

from msagate._certs import CertificateAuthority

SLAPD = os.environ.get("SLAPD", "/usr/sbin/slapd")
SLAPADD = os.environ.get("SLAPADD", "/usr/sbin/slapadd")
SCHEMA_DIRECTORY = Path(os.environ.get("SLAPD_SCHEMA_DIR", "/etc/ldap/schema"))
MODULE_DIRECTORY = Path(os.environ.get("SLAPD_MODULE_DIR", "/usr/lib/ldap"))

BASE_DN = "dc=example,dc=org"
PEOPLE_DN = "ou=people," + BASE_DN
SERVICE_DN = "cn=msagate,ou=services," + BASE_DN
SERVICE_PASSWORD = "service-secret"
ADMIN_DN = "cn=admin," + BASE_DN

PASSWORDS = {
    "alice": "alice-pw",
    "bob": "bob-pw",
    "carol": "carol-pw",
    "dave": "dave-pw",
    "erin": "erin-pw",
    "frank": "pässwörd-Ⅸ",
    "twin": "twin-pw",
    "nameless": "nameless-pw",
}

# How long slapd may take to start before the fixture gives up.
START_TIMEOUT = 20.0

# mailAlternateAddress is in no schema that OpenLDAP ships; this is the
# Netscape/389-DS definition with an equality rule added so that filters
# on it work.
MAIL_SCHEMA = """\
attributetype ( 2.16.840.1.113730.3.1.13
    NAME 'mailAlternateAddress'
    DESC 'alias RFC 5321 addresses of this recipient'
    EQUALITY caseIgnoreIA5Match
    SUBSTR caseIgnoreIA5SubstringsMatch
    SYNTAX 1.3.6.1.4.1.1466.115.121.1.26{256} )

objectclass ( 2.16.840.1.113730.3.2.3
    NAME 'mailRecipient'
    DESC 'subset of the Netscape Messaging Server class'
    SUP top AUXILIARY
    MAY ( cn $ mail $ mailAlternateAddress $ uid $ userPassword ) )
"""

CONFIGURATION = """\
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
include {schema}/nis.schema
include {state}/mailrecipient.schema
pidfile {state}/slapd.pid
argsfile {state}/slapd.args
{modules}
loglevel 0
TLSCACertificateFile {state}/ca.pem
TLSCertificateFile {state}/server.pem
TLSCertificateKeyFile {state}/server.key

database mdb
suffix "{base}"
rootdn "{admin}"
rootpw {adminHash}
directory {state}/db
maxsize 33554432
dbnosync
index objectClass eq
index uid,mail,mailAlternateAddress eq
index member eq

access to attrs=userPassword
    by self =xw
    by anonymous auth
    by * none
access to *
    by dn.exact="{service}" read
    by dn.exact="{admin}" manage
    by self read
    by * none
"""

PERSON = """\
dn: uid={uid},{parent}
objectClass: inetOrgPerson
objectClass: mailRecipient
uid: {uid}
cn: {uid}
sn: {uid}
userPassword: {hash}
"""


def sshaHash(password: str) -> str:
    """
    @return: the C{{SSHA}} hash of C{password}'s UTF-8 bytes.
    """
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def cryptHash(password: str) -> str:
    """
    @return: the C{{CRYPT}} SHA-512-crypt hash of C{password}, which slapd
        verifies with the C library.
    """
    hashed: str = passlibHash.sha512_crypt.using(rounds=5000).hash(password)
    return "{CRYPT}" + hashed


def person(uid: str, hash: str, *lines: str, parent: str = PEOPLE_DN) -> str:
    """
    @return: the LDIF of a user entry, with extra attribute C{lines}.
    """
    entry = PERSON.format(uid=uid, parent=parent, hash=hash)
    return entry + "".join(line + "\n" for line in lines)


def directoryLDIF() -> str:
    """
    @return: the LDIF of the whole test directory.
    """
    pw = PASSWORDS
    entries = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\n"
        "o: Example Org\ndc: example\n",
        *(
            f"dn: ou={unit},{BASE_DN}\nobjectClass: organizationalUnit\n"
            f"ou: {unit}\n"
            for unit in ("people", "staff", "groups", "services")
        ),
        f"dn: {SERVICE_DN}\nobjectClass: applicationProcess\n"
        "objectClass: simpleSecurityObject\ncn: msagate\n"
        f"userPassword: {sshaHash(SERVICE_PASSWORD)}\n",
        person(
            "alice",
            sshaHash(pw["alice"]),
            "mail: alice@example.org",
            "mailAlternateAddress: alice.smith@example.org",
            "mailAlternateAddress: postmaster@example.org",
        ),
        person(
            "bob",
            cryptHash(pw["bob"]),
            "mail: bob@example.org",
            "mailAlternateAddress: Bob.Alias@Example.ORG",
        ),
        person(
            "carol",
            pw["carol"],
            "mail: carol@example.org",
            "mail: carol@example.net",
        ),
        person("dave", sshaHash(pw["dave"])),
        person("erin", sshaHash(pw["erin"]), "mail: erin@example.net"),
        person("frank", sshaHash(pw["frank"]), "mail: frank@example.org"),
        person("twin", sshaHash(pw["twin"])),
        person("twin", sshaHash(pw["twin"]), parent="ou=staff," + BASE_DN),
        f"dn: cn=nameless,{PEOPLE_DN}\nobjectClass: inetOrgPerson\n"
        f"cn: nameless\nsn: nameless\n"
        f"userPassword: {sshaHash(pw['nameless'])}\n",
        group(
            "send-as-example.net",
            ["alice"],
            "objectClass: domainRelatedObject",
            "associatedDomain: example.net",
        ),
        group("mail-users", ["alice", "bob", "carol", "erin"]),
    ]
    return "\n".join(entries)


def group(name: str, members: list[str], *lines: str) -> str:
    """
    @return: the LDIF of a C{groupOfNames} with the given member uids.
    """
    entry = f"dn: cn={name},ou=groups,{BASE_DN}\nobjectClass: groupOfNames\n"
    entry += "".join(line + "\n" for line in lines) + f"cn: {name}\n"
    return entry + "".join(
        f"member: uid={uid},{PEOPLE_DN}\n" for uid in members
    )


def freePorts(count: int) -> list[int]:
    """
    @return: C{count} loopback TCP ports that were free a moment ago.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


class SlapdError(Exception):
    """
    The test slapd cannot be built or started; the message says why.
    """


class Slapd:
    """
    A private slapd, its state in a temporary directory.

    @ivar state: the state directory.
    @ivar port: the C{ldap://} port (StartTLS offered).
    @ivar tlsPort: the C{ldaps://} port.
    @ivar url: C{ldap://127.0.0.1:port}.
    @ivar ldapsURL: C{ldaps://127.0.0.1:tlsPort}.
    @ivar caFile: the PEM file of the CA that issued slapd's certificate.
    @ivar baseDN: the directory's suffix.
    @ivar serviceDN: the service account's DN.
    @ivar servicePassword: the service account's password.
    """

    baseDN = BASE_DN
    serviceDN = SERVICE_DN
    servicePassword = SERVICE_PASSWORD

    def __init__(self) -> None:
        for binary in (SLAPD, SLAPADD):
            if not os.access(binary, os.X_OK):
                raise SlapdError(
                    f"{binary} not found: install OpenLDAP's slapd package "
                    "(make test does) or set SLAPD and SLAPADD"
                )
        self.state = Path(tempfile.mkdtemp(prefix="msagate-slapd-"))
        self.caFile = str(self.state / "ca.pem")
        self._process: subprocess.Popen[bytes] | None = None
        self._output: list[str] = []
        self.port = self.tlsPort = 0

    @property
    def url(self) -> str:
        """
        The C{ldap://} URL, where StartTLS is offered.
        """
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldapsURL(self) -> str:
        """
        The C{ldaps://} URL.
        """
        return f"ldaps://127.0.0.1:{self.tlsPort}"

    @property
    def pid(self) -> int:
        """
        The running slapd's process id.
        """
        assert self._process is not None, "slapd is not running"
        return self._process.pid

    def start(self) -> None:
        """
        Build the directory and start slapd on free ports; return once it
        serves requests.

        @raise SlapdError: when it cannot be built or does not start.
        """
        self._writeFiles()
        self._load()
        # Another process may take a port between picking and binding it.
        for _ in range(5):
            self.port, self.tlsPort = freePorts(2)
            if self._launch():
                return
        raise SlapdError("slapd did not start:\n" + "".join(self._output))

    def restart(self) -> None:
        """
        Stop slapd and start a new process on the same ports and data.
        """
        self._terminate()
        if not self._launch():
            raise SlapdError(
                "slapd did not restart:\n" + "".join(self._output)
            )

    def pause(self) -> None:
        """
        Freeze slapd (SIGSTOP): the kernel still accepts connections, but
        nothing answers, as with a hung server.
        """
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """
        Let a paused slapd run again (SIGCONT).
        """
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        """
        Stop slapd and remove its state directory.
        """
        self._terminate()
        shutil.rmtree(self.state, ignore_errors=True)

    def _writeFiles(self) -> None:
        authority = CertificateAuthority("msagate test slapd CA")
        issued = authority.issue(["localhost", "127.0.0.1"])
        (self.state / "db").mkdir()
        (self.state / "ca.pem").write_bytes(authority.certificate)
        (self.state / "server.pem").write_bytes(issued.certificate)
        (self.state / "server.key").write_bytes(issued.key)
        (self.state / "server.key").chmod(0o600)

        (self.state / "mailrecipient.schema").write_text(MAIL_SCHEMA)
        (self.state / "slapd.conf").write_text(self._configuration())
        (self.state / "data.ldif").write_text(directoryLDIF())

    def _configuration(self) -> str:
        # back_mdb is a module on Debian, built in on some source builds.
        modules = ""
        if (MODULE_DIRECTORY / "back_mdb.so").exists():
            modules = f"modulepath {MODULE_DIRECTORY}\nmoduleload back_mdb"
        return CONFIGURATION.format(
            schema=SCHEMA_DIRECTORY,
            state=self.state,
            modules=modules,
            base=BASE_DN,
            admin=ADMIN_DN,
            adminHash=sshaHash("admin-secret"),
            service=SERVICE_DN,
        )

    def _load(self) -> None:
        loaded = subprocess.run(
            [SLAPADD, "-q", "-f", str(self.state / "slapd.conf")]
            + ["-l", str(self.state / "data.ldif")],
            capture_output=True,
            text=True,
        )
        if loaded.returncode != 0:
            raise SlapdError("slapadd failed:\n" + loaded.stderr)

    def _launch(self) -> bool:
        """
        Start slapd in the foreground and wait until it says it is serving.

        @return: whether it started; when not, its output is in
            C{self._output}.
        """
        urls = (
            f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.tlsPort}/"
        )
        # "-d none" keeps slapd in the foreground and makes it print only
        # its start-up line and its errors.
        self._process = subprocess.Popen(
            [SLAPD, "-h", urls, "-f", str(self.state / "slapd.conf")]
            + ["-d", "none"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._output = output = []
        started = threading.Event()
        threading.Thread(
            target=_readOutput,
            args=(self._process, output, started),
            daemon=True,
        ).start()

        started.wait(START_TIMEOUT)
        if "slapd starting" in "".join(output) and self._listening():
            return True
        self._terminate()
        return False

    def _listening(self) -> bool:
        """
        Wait until both ports accept connections: slapd announces that it
        is starting before it listens.

        @return: whether they did within L{START_TIMEOUT}.
        """
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.port, self.tlsPort):
            while not _accepts(port):
                if time.monotonic() > deadline:
                    return False
                # A bounded retry on a refused connection, nothing else.
                time.sleep(0.01)
        return True

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        # A paused slapd would never act on SIGTERM.
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _readOutput(
    process: subprocess.Popen[bytes],
    output: list[str],
    started: threading.Event,
) -> None:
    """
    Collect slapd's output into C{output} until it exits, and signal
    C{started} when it is serving or has exited.
    """
    assert process.stderr is not None
    for line in process.stderr:
        text = line.decode("utf-8", "replace")
        output.append(text)
        if "slapd starting" in text:
            started.set()
    started.set()


def _accepts(port: int) -> bool:
    """
    @return: whether a connection to the loopback C{port} is accepted.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True
