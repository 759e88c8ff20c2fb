"""
Tests that each implementation of a seam in L{msagate.interfaces} provides
its interface, and that the module names the seams it promises.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.cred import checkers, credentials, error, portal
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface
from zope.interface.verify import verifyClass, verifyObject

from msagate import interfaces
from msagate.envelope import Envelope
from msagate.interfaces import ISenderSource, ISpool, ISpoolWriter
from msagate.spool import Spool, SpoolWriter
from msagate.testing import MemorySpool, MemorySpoolWriter, StaticSenderSource

ENVELOPE = Envelope("alice@example.org", ("bob@example.net",), "alice", 0.0)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    """
    A prepared spool whose thread pool is never started: nothing here
    commits.
    """
    result = Spool(str(tmp_path), ThreadPool(1, 1), reactor=None)
    result.prepare()
    yield result


def test_memorySpool() -> None:
    """
    MemorySpool provides ISpool.
    """
    assert verifyClass(ISpool, MemorySpool)
    assert verifyObject(ISpool, MemorySpool())


def test_memorySpoolWriter() -> None:
    """
    The writer MemorySpool.begin returns provides ISpoolWriter, queue ID
    included.
    """
    writer = MemorySpool().begin(ENVELOPE)
    assert isinstance(writer, MemorySpoolWriter)
    assert verifyObject(ISpoolWriter, writer)
    assert isinstance(writer.queueID, str) and writer.queueID


def test_staticSenderSource() -> None:
    """
    StaticSenderSource provides ISenderSource.
    """
    source = StaticSenderSource({"alice": ["alice@example.org"]})
    assert verifyObject(ISenderSource, source)


def test_spool(spool: Spool) -> None:
    """
    The file-system Spool provides ISpool.
    """
    assert verifyClass(ISpool, Spool)
    assert verifyObject(ISpool, spool)


def test_spoolWriter(spool: Spool) -> None:
    """
    The writer Spool.begin returns provides ISpoolWriter, queue ID
    included.
    """
    writer = spool.begin(ENVELOPE)
    try:
        assert isinstance(writer, SpoolWriter)
        assert verifyObject(ISpoolWriter, writer)
        assert isinstance(writer.queueID, str) and writer.queueID
    finally:
        writer.abort()


@pytest.mark.parametrize(
    "name, original",
    [
        ("ICredentialsChecker", checkers.ICredentialsChecker),
        ("IUsernamePassword", credentials.IUsernamePassword),
        ("IRealm", portal.IRealm),
        ("UnauthorizedLogin", error.UnauthorizedLogin),
    ],
)
def test_credReExports(name: str, original: object) -> None:
    """
    The twisted.cred names in __all__ are Twisted's own objects, not
    copies.
    """
    assert name in interfaces.__all__
    assert getattr(interfaces, name) is original


@pytest.mark.parametrize("name", sorted(interfaces.__all__))
def test_allNamesExist(name: str) -> None:
    """
    Every name in __all__ exists in the module.
    """
    assert hasattr(interfaces, name)


@pytest.mark.parametrize(
    "name", ["IAccount", "ISenderSource", "ISpool", "ISpoolWriter"]
)
def test_ownInterfaces(name: str) -> None:
    """
    msagate's own seams are zope interfaces named in __all__.
    """
    assert name in interfaces.__all__
    declared = getattr(interfaces, name)
    assert issubclass(declared, Interface)
    assert declared.__module__ == "msagate.interfaces"
