# -*- test-case-name: tests.test_cli -*-
"""
The C{msagate} command: queue administration for operators.

C{msagate queue list} and C{msagate queue show} read the spool files
directly; that is safe while the server runs, since every file is
replaced atomically.  The commands that change the queue (C{flush},
C{hold}, C{release}, C{delete}) ask the running server over its control
socket (see L{msagate.control}), because the server is the only writer of
delivery state.  When no server runs, the command takes the spool lock and
changes the files itself.

Exit status: 0 on success, 1 when something failed, 2 for a usage or
configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from msagate.config import loadConfig
from msagate.control import (
    CONTROL,
    ControlError,
    ServerNotRunning,
    sendRequest,
)
from msagate.errors import ConfigError
from msagate.queue import (
    DELIVERED,
    FAILED,
    QueueEntry,
    QueueStore,
    RecipientState,
    SpoolBusy,
    isQueueID,
)

# The same default as the server's (msagate.tap), which this command does
# not import: it must work without the server's start-up machinery.
DEFAULT_CONFIG = "/etc/msagate/msagate.ini"
USAGE_ERROR = 2
FAILURE = 1

# The columns of the queue listing: queue ID and hold mark, size, arrival.
_ID_WIDTH = 19
_SIZE_WIDTH = 8
_DATE_WIDTH = 19
_INDENT = " " * (_ID_WIDTH + 1 + _SIZE_WIDTH + 1 + _DATE_WIDTH + 2)

# C0 and C1 controls but TAB, escaped before anything from a message or a
# remote server reaches the operator's terminal.
_CONTROLS = {
    code: f"\\x{code:02x}"
    for code in (*range(0x20), *range(0x7F, 0xA0))
    if code != 0x09
}


def main(argv: list[str] | None = None) -> int:
    """
    Run the C{msagate} command.

    @param argv: the arguments, without the program name; L{None} for
        those of the process.
    @return: the exit status.
    """
    parser = _parser()
    try:
        arguments = parser.parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else USAGE_ERROR
    try:
        config = loadConfig(arguments.config)
    except ConfigError as error:
        _complain(str(error))
        return USAGE_ERROR
    run: Callable[[str, argparse.Namespace], int] = arguments.run
    return run(config.spool, arguments)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msagate",
        description="Administer the queue of the msagate submission agent.",
    )
    parser.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the configuration file (default: {DEFAULT_CONFIG})",
    )
    areas = parser.add_subparsers(dest="area", required=True)
    queue = areas.add_parser("queue", help="list and manage queued mail")
    _queueCommands(queue.add_subparsers(dest="action", required=True))
    return parser


def _queueCommands(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    listing = actions.add_parser("list", help="list the queued messages")
    listing.set_defaults(run=listQueue)
    show = actions.add_parser("show", help="show one message")
    show.add_argument("queueID", type=_queueID, metavar="ID")
    show.set_defaults(run=showMessage)
    flush = actions.add_parser("flush", help="try one message, or all, now")
    flush.add_argument("queueIDs", type=_queueID, nargs="?", metavar="ID")
    flush.set_defaults(run=manageQueue)
    for name, text in (
        ("hold", "keep messages from being tried until released"),
        ("release", "release held messages"),
        ("delete", "remove messages without delivering them"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("queueIDs", type=_queueID, nargs="+", metavar="ID")
        action.set_defaults(run=manageQueue)


def _queueID(text: str) -> str:
    queueID = text.upper()
    if not isQueueID(queueID):
        raise argparse.ArgumentTypeError(f"not a queue ID: {text!r}")
    return queueID


def listQueue(spool: str, arguments: argparse.Namespace) -> int:
    """
    Print the queue, oldest message first, in the manner of C{mailq}.

    @return: the exit status.
    """
    store = QueueStore(spool)
    try:
        queueIDs = store.queueIDs()
    except OSError as error:
        _complain(f"cannot read {store.queuePath}: {error.strerror}")
        return FAILURE
    entries, status = _readEntries(store, queueIDs)
    if entries:
        print(_listingHeading())
    for entry in entries:
        print("\n".join(_listingBlock(entry)) + "\n")
    total = sum(entry.size for entry in entries)
    print(_listingSummary(total, len(entries)))
    return status


def _readEntries(
    store: QueueStore, queueIDs: list[str]
) -> tuple[list[QueueEntry], int]:
    entries, status = [], 0
    for queueID in queueIDs:
        try:
            entries.append(store.read(queueID))
        except KeyError:
            # Delivered or deleted since the listing began.
            continue
        except (ValueError, OSError) as error:
            _complain(f"{queueID}: cannot read: {error}")
            status = FAILURE
    return entries, status


def _listingHeading() -> str:
    return (
        f"{'-Queue ID-':<{_ID_WIDTH}} {'--Size--':>{_SIZE_WIDTH}} "
        f"{'---Arrival Time----':<{_DATE_WIDTH}}  -Sender/Recipient-------"
    )


def _listingBlock(entry: QueueEntry) -> list[str]:
    envelope, state = entry.envelope, entry.state
    mark = "!" if state.held else ""
    arrival = time.strftime(
        "%a %b %d %H:%M:%S", time.localtime(entry.envelope.received)
    )
    lines = [
        f"{entry.queueID + mark:<{_ID_WIDTH}} {entry.size:>{_SIZE_WIDTH}} "
        f"{arrival:<{_DATE_WIDTH}}  {_sender(envelope.sender)}"
    ]
    for recipient in envelope.recipients:
        recipientState = state.recipient(recipient)
        if recipientState.status == DELIVERED:
            continue
        lines.append(_INDENT + _safe(recipient))
        reply = _safe(recipientState.reply)
        if recipientState.status == FAILED:
            lines.append(f"{_INDENT}  (failed: {reply or 'no reason'})")
        elif reply:
            lines.append(f"{_INDENT}  ({reply})")
    return lines


def _listingSummary(total: int, count: int) -> str:
    if count == 0:
        return "Mail queue is empty"
    kilobytes = (total + 1023) // 1024
    messages = "message" if count == 1 else "messages"
    return f"-- {kilobytes} kB in {count} {messages}"


def showMessage(spool: str, arguments: argparse.Namespace) -> int:
    """
    Print one message's envelope, delivery state and header section.

    @return: the exit status.
    """
    store = QueueStore(spool)
    queueID: str = arguments.queueID
    try:
        entry = store.read(queueID)
        headers = store.headers(queueID)
    except KeyError:
        _complain(f"no message {queueID} in the queue")
        return FAILURE
    except (ValueError, OSError) as error:
        _complain(f"{queueID}: cannot read: {error}")
        return FAILURE
    print("\n".join(_description(entry)))
    print()
    print("\n".join(_headerLines(headers)))
    return 0


def _description(entry: QueueEntry) -> list[str]:
    fields = _fields(entry)
    lines = [f"{name + ':':<15}{value}" for name, value in fields]
    lines.append("Recipients:")
    for recipient in entry.envelope.recipients:
        lines += _recipientLines(recipient, entry.state.recipient(recipient))
    return lines


def _fields(entry: QueueEntry) -> list[tuple[str, str]]:
    envelope, state = entry.envelope, entry.state
    fields = [
        ("Queue ID", entry.queueID),
        ("Held", "yes" if state.held else "no"),
        ("Sender", _sender(envelope.sender)),
        ("User", _safe(envelope.user)),
        ("Client", _safe(envelope.client) or "unknown"),
        ("Arrival", _date(envelope.received)),
        ("Size", f"{entry.size} octets"),
        ("Body", _safe(envelope.body)),
    ]
    if envelope.extra:
        parameters = (f"{k}={v}" for k, v in sorted(envelope.extra.items()))
        fields.append(("Parameters", _safe(" ".join(parameters))))
    fields += [
        ("Attempts", _attempts(state.attempts, state.lastAttempt)),
        ("Next attempt", _nextAttempt(state.nextAttempt, state.held)),
        ("Delay warning", "sent" if state.warned else "not sent"),
    ]
    return fields


def _recipientLines(recipient: str, state: RecipientState) -> list[str]:
    lines = [f"  {_safe(recipient)}: {state.status}"]
    if state.reply:
        origin = f" (from {_safe(state.remote)})" if state.remote else ""
        lines.append(f"    {_safe(state.reply)}{origin}")
    return lines


def _attempts(attempts: int, last: float | None) -> str:
    if last is None:
        return str(attempts)
    return f"{attempts}, the last at {_date(last)}"


def _nextAttempt(when: float, held: bool) -> str:
    if held:
        return "none while held"
    if when == 0:
        return "as soon as possible"
    return _date(when)


def _headerLines(headers: bytes) -> list[str]:
    text = headers.decode("utf-8", "backslashreplace")
    lines = text.split("\r\n")
    # The empty line that ends the section, and the line end before it.
    while lines and lines[-1] == "":
        lines.pop()
    return [_safe(line) for line in lines]


def manageQueue(spool: str, arguments: argparse.Namespace) -> int:
    """
    Flush, hold, release or delete messages: through the running server,
    or directly in the spool when none runs.

    @return: the exit status.
    """
    targets = arguments.queueIDs
    if not isinstance(targets, list):
        targets = [targets]
    action: str = arguments.action
    socketPath = os.path.join(spool, CONTROL)
    status = 0
    for index, target in enumerate(targets):
        try:
            status = max(status, _ask(socketPath, action, target))
        except ServerNotRunning:
            offline = _manageOffline(spool, action, targets[index:])
            return max(status, offline)
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
            _complain(f"cannot reach the server on {socketPath}: {reason}")
            return FAILURE
    return status


def _ask(socketPath: str, action: str, target: str | None) -> int:
    try:
        text = sendRequest(socketPath, action, target)
    except ControlError as error:
        _complain(_safe(str(error)))
        return FAILURE
    print(_safe(text))
    return 0


def _manageOffline(spool: str, action: str, targets: list[str | None]) -> int:
    store = QueueStore(spool)
    try:
        lock = store.lock()
    except SpoolBusy as busy:
        _complain(
            f"{busy}, which does not answer on "
            f"{os.path.join(spool, CONTROL)}; is msagate stuck?"
        )
        return FAILURE
    except OSError as error:
        _complain(f"cannot lock the spool {spool}: {error.strerror}")
        return FAILURE
    with lock:
        statuses = [_actOffline(store, action, t) for t in targets]
    return max(statuses)


def _actOffline(store: QueueStore, action: str, target: str | None) -> int:
    try:
        text = _OFFLINE_ACTIONS[action](store, target)
    except KeyError:
        _complain(f"no message {target} in the queue")
        return FAILURE
    except (ValueError, OSError) as error:
        _complain(f"{target or 'the queue'}: {error}")
        return FAILURE
    print(text)
    return 0


def _flushOffline(store: QueueStore, queueID: str | None) -> str:
    if queueID is None:
        return _flushAllOffline(store)
    entry = store.read(queueID)
    if entry.state.held:
        return f"{queueID} is held; release it to have it tried"
    store.saveState(queueID, replace(entry.state, nextAttempt=0))
    return f"{queueID} will be tried as soon as msagate starts"


def _flushAllOffline(store: QueueStore) -> str:
    # Held messages wait for their release, as with a running server.
    count = 0
    for entry in store.entries():
        if entry.state.held:
            continue
        store.saveState(entry.queueID, replace(entry.state, nextAttempt=0))
        count += 1
    messages = "message" if count == 1 else "messages"
    return f"{count} {messages} will be tried as soon as msagate starts"


def _holdOffline(store: QueueStore, queueID: str | None) -> str:
    assert queueID is not None
    entry = store.read(queueID)
    store.saveState(queueID, replace(entry.state, held=True))
    return f"{queueID} held"


def _releaseOffline(store: QueueStore, queueID: str | None) -> str:
    assert queueID is not None
    entry = store.read(queueID)
    state = replace(entry.state, held=False, nextAttempt=0)
    store.saveState(queueID, state)
    return f"{queueID} released"


def _deleteOffline(store: QueueStore, queueID: str | None) -> str:
    assert queueID is not None
    if not store.exists(queueID):
        raise KeyError(queueID)
    store.remove(queueID)
    return f"{queueID} deleted"


_OFFLINE_ACTIONS: dict[str, Callable[[QueueStore, str | None], str]] = {
    "flush": _flushOffline,
    "hold": _holdOffline,
    "release": _releaseOffline,
    "delete": _deleteOffline,
}


def _sender(sender: str) -> str:
    return _safe(sender) if sender else "<>"


def _date(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(when))


def _safe(text: str) -> str:
    return text.translate(_CONTROLS)


def _complain(text: str) -> None:
    print(f"msagate: {text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
