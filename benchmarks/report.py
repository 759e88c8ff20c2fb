"""
The Markdown report of C{submission.py}: medians over rounds, ratios
within rounds, idle memory, end-to-end relay timing and the problem lines
of msagate's log.

The tables are built from the raw results: one dict per run of the load
generator, with the server's figures added, as C{submission.py --results}
writes them.
"""

from __future__ import annotations

import statistics


def spread(values: list[float], digits: int = 0) -> str:
    """
    @return: C{values} as C{median [min-max]}, rounded to C{digits}.
    """
    if not values:
        return "-"
    middle = statistics.median(values)
    return (
        f"{middle:,.{digits}f} [{min(values):,.{digits}f}"
        f"-{max(values):,.{digits}f}]"
    )


def cellValues(results, scenario, target, pick) -> list[float]:
    """
    @return: C{pick(result)} for every round of one cell, in round order.
    """
    chosen = [
        result
        for result in sorted(results, key=lambda result: result["round"])
        if result["scenario"] == scenario and result["target"] == target
    ]
    return [pick(result) for result in chosen if pick(result) is not None]


def throughputTables(results, scenarios, names, rounds) -> list[str]:
    """
    @return: the Markdown lines of the throughput, latency, set-up, CPU
        and ratio tables.
    """
    header = "| scenario | " + " | ".join(names) + " |"
    rule = "|---" * (len(names) + 1) + "|"
    lines = [f"### Accepted messages/s, median [min-max] of {rounds} rounds"]
    lines += ["", header, rule]
    for scenario in scenarios:
        row = [
            spread(cellValues(results, scenario.name, n, rate)) for n in names
        ]
        lines.append(f"| {scenario.describe()} | " + " | ".join(row) + " |")

    lines += ["", "### End of data to reply: median of p50 / p99 (ms)"]
    lines += ["", header, rule]
    for scenario in scenarios:
        row = []
        for name in names:
            p50 = cellValues(results, scenario.name, name, latency("p50"))
            p99 = cellValues(results, scenario.name, name, latency("p99"))
            row.append(f"{median(p50):.1f} / {median(p99):.1f}")
        lines.append(f"| {scenario.name} | " + " | ".join(row) + " |")

    lines += ["", "### Set-up, server CPU, refusals and failures", ""]
    lines += ["Each entry: median set-up p50 (ms) / median server CPU seconds"]
    lines += ["per 1000 messages / refused messages / failed sessions (sums)."]
    lines += ["", header, rule]
    for scenario in scenarios:
        row = [otherFigures(results, scenario.name, n) for n in names]
        lines.append(f"| {scenario.name} | " + " | ".join(row) + " |")

    lines += ratioTable(results, scenarios, names)
    return lines


def rate(result: dict) -> float:
    """
    @return: a result's accepted messages per second.
    """
    return result["msgs_per_s"]


def latency(which: str):
    """
    @return: a function picking latency percentile C{which} of a result.
    """
    return lambda result: result["latency_ms"][which]


def median(values: list[float]) -> float:
    """
    @return: the median of C{values}, or NaN when there are none.
    """
    return statistics.median(values) if values else float("nan")


def otherFigures(results, scenario: str, name: str) -> str:
    """
    @return: set-up time, CPU per 1000 messages, refusals and failures of
        one cell, as one table entry.
    """

    def cpuPerThousand(result):
        accepted = result["accepted"]
        return result["server_cpu_s"] * 1000 / accepted if accepted else None

    setup = cellValues(results, scenario, name, lambda r: r["setup_ms"]["p50"])
    cpu = cellValues(results, scenario, name, cpuPerThousand)
    refused = sum(cellValues(results, scenario, name, lambda r: r["refused"]))
    failed = sum(cellValues(results, scenario, name, lambda r: r["errors"]))
    return f"{median(setup):.0f} / {median(cpu):.2f} / {refused} / {failed}"


def ratioTable(results, scenarios, names) -> list[str]:
    """
    @return: the Markdown lines of the msagate/anchor throughput ratios:
        the median of the per-round ratios, then each round's.
    """
    anchors = names[1:]
    if not anchors:
        return []
    lines = ["", "### Throughput ratio msagate / anchor: median (each round)"]
    lines += ["", "| scenario | " + " | ".join(anchors) + " |"]
    lines.append("|---" * (len(anchors) + 1) + "|")
    for scenario in scenarios:
        ours = cellValues(results, scenario.name, names[0], rate)
        row = []
        for anchor in anchors:
            theirs = cellValues(results, scenario.name, anchor, rate)
            ratios = [a / b for a, b in zip(ours, theirs, strict=True) if b]
            each = ", ".join(f"{ratio:.2f}" for ratio in ratios)
            row.append(f"{median(ratios):.2f} ({each})")
        lines.append(f"| {scenario.name} | " + " | ".join(row) + " |")
    return lines


def idleTable(readings: list[dict], sessions: int) -> list[str]:
    """
    @return: the Markdown lines of the idle-session memory table.
    """
    lines = [f"### Memory with {sessions} idle STARTTLS+AUTH sessions", ""]
    lines.append(
        "| server | ready | RSS before / during / after (MB) "
        "| PSS before / during (MB) | RSS kB/session | PSS kB/session |"
    )
    lines.append("|---|---|---|---|---|---|")
    for reading in readings:
        ready = reading["loadgen"].get("ready_sessions", 0)
        before, during = reading["before"], reading["during"]
        after = reading["after"]

        def perSession(kind, before=before, during=during, ready=ready):
            if before[kind] is None or not ready:
                return "-"
            return f"{(during[kind] - before[kind]) / ready:.1f}"

        def megabytes(value):
            return "-" if value is None else f"{value / 1024:.1f}"

        rss = " / ".join(
            megabytes(m["rss_kb"]) for m in (before, during, after)
        )
        pss = " / ".join(megabytes(m["pss_kb"]) for m in (before, during))
        lines.append(
            f"| {reading['target']} | {ready} | {rss} | {pss} "
            f"| {perSession('rss_kb')} | {perSession('pss_kb')} |"
        )
    return lines


def relayTable(results, scenarios, name: str) -> list[str]:
    """
    @return: the Markdown lines of the end-to-end table of server C{name},
        from its runs that relayed to the sink; none when there are none.
    """
    relayed = [result for result in results if "e2e_s" in result]
    if not relayed:
        return []
    lines = ["", "### End to end: relayed to the sink, median [min-max]", ""]
    lines += [
        "From the first MAIL until the sink had counted every accepted",
        "message; after the last 250: how much longer that took; CPU:",
        "server seconds per 1000 messages, relaying included.",
        "",
        "| scenario | accepted msg/s | end-to-end msg/s | first MAIL to"
        " last delivery (s) | after the last 250 (s) | CPU | delivered"
        " / accepted |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario in scenarios:
        lines.append(relayRow(relayed, scenario, name))
    return lines


def relayRow(results, scenario, name: str) -> str:
    """
    @return: one scenario's row of the end-to-end table.
    """

    def pick(field: str):
        return cellValues(results, scenario.name, name, lambda r: r[field])

    def cpuPerThousand(result):
        accepted = result["accepted"]
        cpu = result["server_cpu_total_s"]
        return cpu * 1000 / accepted if accepted else None

    cpu = cellValues(results, scenario.name, name, cpuPerThousand)
    delivered = sum(pick("delivered"))
    accepted = sum(pick("accepted"))
    return (
        f"| {scenario.describe()} | {spread(pick('msgs_per_s'))}"
        f" | {spread(pick('e2e_msgs_per_s'))} | {spread(pick('e2e_s'), 2)}"
        f" | {spread(pick('drain_after_accept_s'), 2)}"
        f" | {median(cpu):.2f} | {delivered} / {accepted} |"
    )


def problemLines(name: str, found: list[str], limit: int = 12) -> list[str]:
    """
    @param found: the lines of server C{name}'s log that report a failure,
        a rejection or a traceback.
    @return: Markdown lines saying how many there are and quoting the
        first C{limit}.
    """
    lines = ["", f"### {name} log: {len(found)} problem lines"]
    if found:
        lines += ["", "```", *found[:limit], "```"]
    return lines
