# -*- test-case-name: tests.test_tap -*-
"""
C{twistd msagate}: the command-line options and the service they build.

L{buildService} assembles the pieces from a L{Config}: the thread pools,
the credential checker, the realm and its sender source, the spool and one
listening service per listener.  Everything it cannot use stops start-up
with one line naming the file, section and option.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, TypeVar, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.cred.portal import Portal
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorFromThreads,
    IResolver,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.names.client import createResolver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from msagate._watched import FileFormatError
from msagate.checkers.htpasswd import HtpasswdChecker
from msagate.checkers.ldap import LDAPChecker
from msagate.client import ClientSettings
from msagate.config import Config, Listener, loadConfig
from msagate.control import CONTROL, ControlEndpoint, ControlFactory
from msagate.directory import LDAPDirectory, LDAPSenderSource, LDAPSettings
from msagate.errors import ConfigError
from msagate.interfaces import ISenderSource, IServerReactor
from msagate.outbound import NextHopConnector, loadTrustRoot
from msagate.protocol import (
    SessionSettings,
    SubmissionFactory,
    describeAddress,
)
from msagate.queue import QueueStore, SpoolBusy, SpoolLock
from msagate.realm import SubmissionRealm
from msagate.relay import RelayManager, RelaySettings
from msagate.senders import (
    LoginSenderSource,
    SenderMapFile,
    UnitedSenderSource,
)
from msagate.spool import Spool
from msagate.throttle import AuthThrottle
from msagate.tls import TLSSetupError, serverOptions

DEFAULT_CONFIG = "/etc/msagate/msagate.ini"

_R = TypeVar("_R")


class Options(usage.Options):
    """
    The options of C{twistd msagate}.
    """

    synopsis = "[--config FILE]"
    longdesc = (
        "Run the msagate mail submission agent.  Everything but the "
        "configuration file's path is set in that file; see "
        "etc/msagate.ini in the distribution for every option."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "The configuration file."],
    ]


def makeService(options: Options) -> IService:
    """
    Build the service for C{twistd}; a configuration problem ends the
    process with one line on standard error.
    """
    from twisted.internet import reactor

    server: dict[str, Any] = options.parent or {}
    uid: int | None = server.get("uid")
    gid: int | None = server.get("gid")
    owner = None if uid is None else (uid, os.getgid() if gid is None else gid)
    # The global reactor also runs threads, which its static type omits.
    running = cast(IServerReactor, reactor)
    try:
        return buildService(loadConfig(options["config"]), running, owner)
    except ConfigError as error:
        raise SystemExit(f"msagate: {error}") from None


def sessionSettings(config: Config) -> SessionSettings:
    """
    @return: what each submission session needs of C{config}.
    """
    return SessionSettings(
        hostname=config.hostname,
        messageSize=config.messageSize,
        recipients=config.recipients,
        errors=config.errors,
        connections=config.connections,
        clientConnections=config.clientConnections,
        idleTimeout=config.idleTimeout,
        lineLength=config.lineLength,
        headerSize=config.headerSize,
        maxAuthFailures=config.maxAuthFailures,
        authFailureDelay=config.authFailureDelay,
        receivedClientAddress=config.receivedClientAddress,
        maxReceived=config.maxReceived,
        postmaster=config.postmaster,
    )


def relaySettings(config: Config) -> RelaySettings:
    """
    @return: how the relay manager delivers, as C{config} says.
    """
    return RelaySettings(
        hostname=config.hostname,
        mode=config.relayMode,
        smarthosts=config.smarthosts,
        security=config.relaySecurity,
        mxPort=config.mxPort,
        destinationConnections=config.destinationConnections,
        connections=config.relayConnections,
        retryMinimum=config.retryMinimum,
        retryMaximum=config.retryMaximum,
        maxLifetime=config.maxLifetime,
        delayWarning=config.delayWarning,
    )


def clientSettings(config: Config) -> ClientSettings:
    """
    @return: how outbound sessions behave, as C{config} says; the
        password is read from its file here.
    @raise ConfigError: when the password file cannot be used.
    """
    password = ""
    if config.relayUsername:
        password = _readSecret(
            config, "relay", "password_file", config.relayPasswordFile
        )
    return ClientSettings(
        heloName=config.heloName,
        security=config.relaySecurity,
        username=config.relayUsername,
        password=password,
        timeout=config.commandTimeout,
        dataTimeout=config.dataTimeout,
    )


def buildService(
    config: Config,
    reactor: IServerReactor,
    owner: tuple[int, int] | None = None,
) -> MultiService:
    """
    Assemble msagate from C{config}.

    @param owner: the user and group IDs twistd will switch to (C{--uid},
        C{--gid}), who must own the spool.
    @raise ConfigError: when a file named in C{config} cannot be used.
    """
    service = SubmissionService()
    authPool = _poolService("msagate-auth", config.authThreads, service)
    spoolPool = _poolService("msagate-spool", config.spoolThreads, service)

    directory = _directory(config)
    if directory is not None:
        DirectoryService(directory).setServiceParent(service)
    portal = Portal(
        SubmissionRealm(_senderSource(config, authPool, reactor, directory)),
        [_checker(config, authPool, reactor, directory)],
    )
    try:
        tls = serverOptions(
            config.certificate, config.key, config.tlsMinimumVersion
        )
    except TLSSetupError as error:
        problem = str(error)
        raise ConfigError(config.path, "tls", error.option, problem) from None
    connector = NextHopConnector(
        reactor,
        clientSettings(config),
        _trustRoot(config),
        config.connectTimeout,
    )
    resolver = _resolver(config)

    spool = Spool(config.spool, spoolPool, reactor)
    store = QueueStore(config.spool)
    lock = service.spoolLock = _lockSpool(config, spool, store, owner)
    try:
        # FIXME: the relay manager shares the reactor thread with the
        # submission sessions, so under load relaying takes CPU from
        # accepting mail; in a process of its own it could use another core.
        relay = RelayManager(
            relaySettings(config),
            store,
            spool,
            connector,
            spoolPool,
            reactor,
            resolver=resolver,
        )
        relay.setServiceParent(service)
        control = ControlEndpoint(reactor, os.path.join(config.spool, CONTROL))
        StreamServerEndpointService(
            control, ControlFactory(relay, reactor)
        ).setServiceParent(service)
        _addListeners(service, config, reactor, portal, spool, tls)
    except BaseException:
        lock.release()
        raise
    return service


def _lockSpool(
    config: Config,
    spool: Spool,
    store: QueueStore,
    owner: tuple[int, int] | None,
) -> SpoolLock:
    # Only the holder of the lock may clear what a crash left behind.
    try:
        os.makedirs(config.spool, 0o700, exist_ok=True)
        lock = store.lock()
    except SpoolBusy as error:
        problem = f"{error}: is another msagate using it?"
        raise ConfigError(config.path, "server", "spool", problem) from None
    except OSError as error:
        problem = f"cannot lock {error.filename}: {error.strerror}"
        raise ConfigError(config.path, "server", "spool", problem) from None
    try:
        spool.prepare(owner)
    except OSError as error:
        lock.release()
        problem = f"cannot prepare {error.filename}: {error.strerror}"
        raise ConfigError(config.path, "server", "spool", problem) from None
    return lock


def _addListeners(
    service: SubmissionService,
    config: Config,
    reactor: IServerReactor,
    portal: Portal,
    spool: Spool,
    tls: CertificateOptions,
) -> None:
    settings = sessionSettings(config)
    throttle = AuthThrottle(
        reactor, config.clientMaxAuthFailures, config.clientAuthFailureWindow
    )
    for listener in config.listeners:
        implicit = listener.tls == "implicit"
        factory = SubmissionFactory(
            listener.name,
            _listenerSettings(settings, listener),
            portal,
            spool,
            reactor,
            contextFactory=None if implicit else tls,
            implicitTLS=implicit,
            throttle=throttle,
        )
        service.factories.append(factory)
        wrapped = (
            TLSMemoryBIOFactory(tls, False, factory) if implicit else factory
        )
        endpoint = ListeningEndpoint(
            listener.name, _endpoint(config, listener, reactor)
        )
        service.endpoints.append(endpoint)
        listening = StreamServerEndpointService(endpoint, wrapped)
        listening.setServiceParent(service)


class SubmissionService(MultiService):
    """
    msagate as a whole: its pools, its spool and its listeners.

    @ivar factories: the listeners' factories, told when the service stops
        so that open sessions hear 421 rather than a dropped connection.
    @ivar endpoints: the listeners' L{ListeningEndpoint}s.
    """

    def __init__(self) -> None:
        super().__init__()
        self.factories: list[SubmissionFactory] = []
        self.endpoints: list[ListeningEndpoint] = []
        self.spoolLock: SpoolLock | None = None

    def whenListening(self) -> Deferred[dict[str, IAddress]]:
        """
        @return: a L{Deferred} that fires, once every listener listens, with
            a dictionary of each listener's address by its name.
        """
        waiting = [endpoint.whenListening() for endpoint in self.endpoints]
        return gatherResults(waiting).addCallback(
            lambda ports: {
                endpoint.name: port.getHost()
                for endpoint, port in zip(self.endpoints, ports, strict=True)
            }
        )

    def stopService(self) -> Deferred[list[tuple[bool, object]]]:
        for factory in self.factories:
            factory.shutDown()
        stopped: Deferred[list[tuple[bool, object]]] = super().stopService()
        return stopped.addBoth(self._unlock)

    def _unlock(self, result: _R) -> _R:
        if self.spoolLock is not None:
            self.spoolLock.release()
        return result


@implementer(IStreamServerEndpoint)
class ListeningEndpoint:
    """
    A server endpoint that remembers the port it listens on and logs it
    (useful with C{tcp:0}, C{systemd:} and C{haproxy:} endpoints).

    @ivar name: the listener's name.
    @ivar port: the L{IListeningPort}, once listening.
    """

    log = Logger()

    def __init__(self, name: str, endpoint: IStreamServerEndpoint) -> None:
        self.name = name
        self.port: IListeningPort | None = None
        self._endpoint = endpoint
        self._waiting: list[Deferred[IListeningPort]] = []

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            address = port.getHost()
            self.log.info(
                "listener {listener} on {address}",
                listener=self.name,
                address=describeAddress(address),
            )
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(port)
            return port

        return self._endpoint.listen(factory).addCallback(listening)

    def whenListening(self) -> Deferred[IListeningPort]:
        """
        @return: a L{Deferred} that fires with the L{IListeningPort} once
            the endpoint listens.
        """
        if self.port is not None:
            return succeed(self.port)
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiting.append(waiter)
        return waiter


class ThreadPoolService(Service):
    """
    Runs a dedicated thread pool while the service runs, so that blocking
    work never waits behind the reactor's own pool (DNS lookups use that).
    """

    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


def _listenerSettings(
    settings: SessionSettings, listener: Listener
) -> SessionSettings:
    # Behind a PROXY-protocol endpoint every connection comes from the
    # proxy until its header is read, so a per-client limit would count
    # the proxy.
    if listener.endpoint.startswith("haproxy:"):
        return replace(settings, clientConnections=0)
    return settings


def _poolService(name: str, size: int, parent: MultiService) -> ThreadPool:
    pool = ThreadPool(minthreads=1, maxthreads=size, name=name)
    ThreadPoolService(pool).setServiceParent(parent)
    return pool


def ldapSettings(config: Config, bindPassword: str) -> LDAPSettings:
    """
    @return: how to reach and read the directory, as C{config} says.
    """
    return LDAPSettings(
        servers=config.ldapServers,
        startTLS=config.ldapStartTLS,
        caFile=config.ldapCAFile,
        bindDN=config.ldapBindDN,
        bindPassword=bindPassword,
        baseDN=config.ldapBaseDN,
        userFilter=config.ldapUserFilter,
        userDN=config.ldapUserDN,
        userAttribute=config.ldapUserAttribute,
        connectTimeout=config.ldapConnectTimeout,
        timeout=config.ldapTimeout,
        senderAttributes=config.ldapSenderAttributes,
        groupFilter=config.ldapGroupFilter,
        groupBaseDN=config.ldapGroupBaseDN,
        groupDomainAttribute=config.ldapGroupDomainAttribute,
        poolSize=config.ldapConnections,
    )


class DirectoryService(Service):
    """
    Closes the directory's connections when msagate stops.
    """

    def __init__(self, directory: LDAPDirectory) -> None:
        self.directory = directory

    def stopService(self) -> None:
        super().stopService()
        self.directory.close()


def _directory(config: Config) -> LDAPDirectory | None:
    if config.checker != "ldap" and not config.senderLDAP:
        return None
    password = ""
    if config.ldapBindDN:
        password = _readSecret(
            config, "ldap", "bind_password_file", config.ldapBindPasswordFile
        )
    if config.ldapCAFile and not os.access(config.ldapCAFile, os.R_OK):
        problem = f"cannot read {config.ldapCAFile}"
        raise ConfigError(config.path, "ldap", "ca_file", problem)
    return LDAPDirectory(ldapSettings(config, password))


def _checker(
    config: Config,
    pool: ThreadPool,
    reactor: IReactorFromThreads,
    directory: LDAPDirectory | None,
) -> HtpasswdChecker | LDAPChecker:
    if directory is not None and config.checker == "ldap":
        return LDAPChecker(directory, pool, reactor)
    checker = HtpasswdChecker(config.htpasswd, pool, reactor)
    _loadNow(checker, config, "auth", "htpasswd")
    return checker


def _senderSource(
    config: Config,
    pool: ThreadPool,
    reactor: IReactorFromThreads,
    directory: LDAPDirectory | None,
) -> ISenderSource:
    source: ISenderSource
    if not config.senderMap:
        source = LoginSenderSource(
            config.senderDefault, config.detailDelimiter
        )
    else:
        source = SenderMapFile(
            config.senderMap,
            pool,
            reactor,
            default=config.senderDefault,
            detailDelimiter=config.detailDelimiter,
        )
        _loadNow(source, config, "senders", "map")
    if directory is None or not config.senderLDAP:
        return source
    found = LDAPSenderSource(directory, pool, reactor, config.detailDelimiter)
    return UnitedSenderSource([source, found])


def _loadNow(
    source: HtpasswdChecker | SenderMapFile,
    config: Config,
    section: str,
    option: str,
) -> None:
    try:
        source.load()
    except OSError as error:
        problem = f"cannot read {error.filename}: {error.strerror}"
        raise ConfigError(config.path, section, option, problem) from None
    except (FileFormatError, ValueError) as error:
        problem = f"{source.path}: {error}"
        raise ConfigError(config.path, section, option, problem) from None


def _readSecret(config: Config, section: str, option: str, path: str) -> str:
    """
    @return: the first line of the file at C{path}.
    @raise ConfigError: naming C{section} and C{option} when the file
        cannot be read or its first line is empty.
    """
    try:
        with open(path, encoding="utf-8") as file:
            secret = file.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        problem = f"cannot read {path}: {_why(error)}"
        raise ConfigError(config.path, section, option, problem) from None
    if not secret:
        problem = f"{path} holds no password"
        raise ConfigError(config.path, section, option, problem)
    return secret


def _trustRoot(config: Config) -> IOpenSSLTrustRoot | None:
    if not config.relayCAFile:
        return None
    try:
        return loadTrustRoot(config.relayCAFile)
    except (OSError, ValueError) as error:
        problem = f"cannot use {config.relayCAFile}: {_why(error)}"
        raise ConfigError(config.path, "relay", "ca_file", problem) from None


def _resolver(config: Config) -> IResolver | None:
    if not config.dnsServers:
        return None
    servers = [(server.name, server.port) for server in config.dnsServers]
    resolver: IResolver = createResolver(servers=servers)
    return resolver


def _why(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def _endpoint(
    config: Config, listener: Listener, reactor: IServerReactor
) -> IStreamServerEndpoint:
    try:
        endpoint: IStreamServerEndpoint = serverFromString(
            reactor, listener.endpoint
        )
    except Exception as error:
        section = "listener:" + listener.name
        problem = f"{listener.endpoint!r}: {error}"
        raise ConfigError(config.path, section, "endpoint", problem) from None
    return endpoint
