#!/usr/bin/env python3
"""
Say whether the msagate on C{sys.path} knows the C{[relay]} section.

A configuration without C{[relay]} means submission only for an msagate
that has no relay, but delivery by MX (mail leaving this machine) for one
that has.  The benchmark scripts run this probe before they leave the
section out.  It loads a configuration holding nothing but a C{[relay]}
section: an msagate without a relay refuses it as an unknown section,
before it looks at anything else.

Prints C{known} or C{unknown} and exits 0; exits 2 with the reason on
standard error when msagate cannot be imported at all.
"""

from __future__ import annotations

import os
import sys
import tempfile

PROBE = "[relay]\nmode = smarthost\nsmarthosts = 127.0.0.1:20026\n"


def relayKnown() -> bool:
    """
    @return: whether msagate's configuration parser accepts C{[relay]}.
    @raise ImportError: when msagate's configuration cannot be imported.
    """
    from msagate.config import loadConfig
    from msagate.errors import ConfigError

    with tempfile.TemporaryDirectory(prefix="msagate-probe-") as directory:
        path = os.path.join(directory, "probe.ini")
        with open(path, "w") as stream:
            stream.write(PROBE)
        try:
            loadConfig(path)
        except ConfigError as error:
            return (error.section, error.problem) != (
                "relay",
                "unknown section",
            )
    return True


def main() -> int:
    """
    Print the answer.

    @return: the exit status.
    """
    try:
        known = relayKnown()
    except Exception as error:  # noqa: BLE001 - any import failure
        print(f"cannot load msagate.config: {error!r}", file=sys.stderr)
        return 2
    print("known" if known else "unknown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
