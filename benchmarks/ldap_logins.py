"""
Logins per second through msagate's LDAP checker.

Starts a private slapd (the test suite's L{tests.slapd}, on free loopback
ports), then checks alice's password over and over through an
L{msagate.checkers.ldap.LDAPChecker} in search-then-bind mode, with a
thread pool of N threads and N logins in flight at a time.  Each login is
a search on a pooled service connection and a bind on a new connection.

Usage, from the checkout::

    .venv/bin/python benchmarks/ldap_logins.py [--threads 8]
        [--logins 2000] [--tls starttls|ldaps|none]

It needs /usr/sbin/slapd and slapadd (Debian: the slapd package).  It
prints one JSON object (C{logins}, C{threads}, C{tls}, C{elapsed_s},
C{logins_per_s}, C{latency_ms} with p50 and p99, C{failures}), then a line
for people.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.cred.credentials import UsernamePassword  # noqa: E402
from twisted.internet import defer  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from msagate.checkers.ldap import LDAPChecker  # noqa: E402
from msagate.directory import LDAPDirectory, LDAPSettings  # noqa: E402
from msagate.testing import ThreadResults  # noqa: E402
from tests.slapd import Slapd  # noqa: E402


def parseArguments(argv: list[str]) -> argparse.Namespace:
    """
    @return: the command line's options.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--logins", type=int, default=2000)
    parser.add_argument(
        "--tls", choices=["starttls", "ldaps", "none"], default="starttls"
    )
    return parser.parse_args(argv)


def settingsFor(slapd: Slapd, tls: str, threads: int) -> LDAPSettings:
    """
    @return: search-then-bind settings for C{slapd} with the TLS mode.
    """
    return LDAPSettings(
        servers=(slapd.ldapsURL if tls == "ldaps" else slapd.url,),
        startTLS=tls == "starttls",
        caFile=slapd.caFile,
        bindDN=slapd.serviceDN,
        bindPassword=slapd.servicePassword,
        baseDN=slapd.baseDN,
        poolSize=threads,
    )


def run(checker: LDAPChecker, results: ThreadResults, options) -> dict:
    """
    Run the logins, C{options.threads} in flight at a time.

    @return: the measurements.
    """
    latencies: list[float] = []
    failures = 0
    remaining = options.logins
    inFlight: dict[defer.Deferred, float] = {}
    credentials = UsernamePassword(b"alice", b"alice-pw")
    started = time.perf_counter()

    while remaining or inFlight:
        while remaining and len(inFlight) < options.threads:
            remaining -= 1
            inFlight[checker.requestAvatarId(credentials)] = (
                time.perf_counter()
            )
        results.runOne(timeout=30)
        for done in [d for d in inFlight if d.called]:
            latencies.append(time.perf_counter() - inFlight.pop(done))
            done.addErrback(lambda _: None)
            failures += done.result != "alice"

    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "logins": options.logins,
        "threads": options.threads,
        "tls": options.tls,
        "elapsed_s": round(elapsed, 3),
        "logins_per_s": round(options.logins / elapsed, 1),
        "latency_ms": {
            "p50": round(1000 * latencies[len(latencies) // 2], 2),
            "p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2),
        },
        "failures": failures,
    }


def main(argv: list[str]) -> None:
    """
    Start slapd, measure, print, stop.
    """
    options = parseArguments(argv)
    slapd = Slapd()
    slapd.start()
    pool = ThreadPool(options.threads, options.threads, "ldap-bench")
    pool.start()
    directory = LDAPDirectory(settingsFor(slapd, options.tls, options.threads))
    try:
        results = ThreadResults()
        report = run(LDAPChecker(directory, pool, results), results, options)
    finally:
        directory.close()
        pool.stop()
        slapd.stop()

    print(json.dumps(report))
    print(
        f"{report['logins_per_s']} logins/s with {options.threads} threads "
        f"({options.tls}); p50 {report['latency_ms']['p50']} ms, "
        f"p99 {report['latency_ms']['p99']} ms, "
        f"{report['failures']} failures"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
