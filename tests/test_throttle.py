"""
Tests for L{msagate.throttle}: failed authentications per client address.
"""

from twisted.internet.task import Clock

from msagate.throttle import AuthThrottle


def test_blockedAtLimit():
    """
    An address is blocked once it reaches the limit, not before (SEC-5,
    AUTH-15).
    """
    throttle = AuthThrottle(Clock(), limit=3, window=60)
    for _ in range(2):
        throttle.failed("192.0.2.7")
    assert not throttle.blocked("192.0.2.7")
    throttle.failed("192.0.2.7")
    assert throttle.blocked("192.0.2.7")


def test_otherAddressesUnaffected():
    """
    One address's failures never block another, so an attacker cannot
    lock a user out (SEC-5).
    """
    throttle = AuthThrottle(Clock(), limit=1, window=60)
    throttle.failed("192.0.2.7")
    assert not throttle.blocked("198.51.100.1")


def test_failuresAreForgotten():
    """
    Failures older than the window no longer count.
    """
    clock = Clock()
    throttle = AuthThrottle(clock, limit=2, window=60)
    throttle.failed("192.0.2.7")
    clock.advance(30)
    throttle.failed("192.0.2.7")
    assert throttle.blocked("192.0.2.7")
    clock.advance(30)
    assert throttle.failures("192.0.2.7") == 1
    assert not throttle.blocked("192.0.2.7")
    clock.advance(30)
    assert throttle.failures("192.0.2.7") == 0


def test_off():
    """
    A limit of 0 turns the throttle off and remembers nothing.
    """
    throttle = AuthThrottle(Clock(), limit=0, window=60)
    for _ in range(100):
        throttle.failed("192.0.2.7")
    assert not throttle.blocked("192.0.2.7")
    assert throttle.failures("192.0.2.7") == 0


def test_memoryBounded(monkeypatch):
    """
    Addresses whose failures were forgotten are dropped, so a spray from
    many addresses does not grow memory without bound.
    """
    monkeypatch.setattr("msagate.throttle.PRUNE_ABOVE", 10)
    clock = Clock()
    throttle = AuthThrottle(clock, limit=5, window=60)
    for n in range(11):
        throttle.failed(f"192.0.2.{n}")
    clock.advance(61)
    throttle.failed("198.51.100.1")
    assert list(throttle._failures) == ["198.51.100.1"]
