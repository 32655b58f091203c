#!/usr/bin/env python3
"""report.py - the one table of `make bench` (bench/run.sh), in Markdown.

    report.py RESULTS.jsonl NOTES.txt

Reads the benchmarks' one-line JSON results (each tagged with "run"), prints
the machine's facts, one table of figures with ratios and a PASS/MISS mark
against each target of issue 8, and the notes (runs that failed or were
skipped, and why).
"""
import json
import os
import platform
import subprocess
import sys


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:  # a fact we cannot read is left out
        return ""


def machine():
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    disk = sh("df -hT /tmp | awk 'NR==2 {print $1\" \"$2\", \"$3\" total\"}'")
    dev = sh("df /tmp | awk 'NR==2 {print $1}'")
    rot = sh(f"cat /sys/block/$(basename {dev})/queue/rotational 2>/dev/null") if dev else ""
    vers = ", ".join(v for v in [
        "libzmq " + sh("pkg-config --modversion libzmq"),
        "libuv " + sh("pkg-config --modversion libuv"),
        "SQLite " + sh("pkg-config --modversion sqlite3"),
        "rabbitmq-server " + sh("dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null"),
        "librabbitmq " + sh("pkg-config --modversion librabbitmq"),
        "gcc " + sh("gcc -dumpfullversion"),
    ] if not v.endswith(" "))
    return [
        f"- CPU: {os.cpu_count()} × {cpu or platform.processor()}",
        f"- memory: {mem}; kernel {platform.release()}",
        f"- disk under /tmp (stores): {disk}" + (f", rotational={rot}" if rot else ""),
        f"- versions: {vers}",
    ]


def load(path):
    runs = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                r = json.loads(line)
                runs[r["run"]] = r
    return runs


def num(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}{unit}"
    return f"{v:,.0f}{unit}"


def us(v):
    if v is None:
        return "—"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"


def mark(ok):
    if isinstance(ok, str):
        return ok  # a mark of its own, e.g. NOISY
    return "—" if ok is None else ("PASS" if ok else "MISS")


# The ceiling's own tail against its median at the same offered load: on a
# quiet machine its p99 is 1.5-2.5x its p50; beyond this the machine's other
# work made the tail, and a ratio to it says nothing of medroute.
NOISY_CEILING_TAIL = 5.0


def median_run(runs, name, key, listed):
    """<name>_<a|b|c> -> <name>: the run with the median <key>, with <key> of
    every run, in the order they ran, under <listed> (for the table)."""
    reps = [runs[f"{name}_{t}"] for t in "abc"
            if f"{name}_{t}" in runs and runs[f"{name}_{t}"].get(key)]
    if reps:
        # of two (a run failed: the table says "of 2 runs"), the lower
        mid = sorted(reps, key=lambda r: r[key])[(len(reps) - 1) // 2]
        runs[name] = dict(mid, of_runs=len(reps), **{listed: [r[key] for r in reps]})


def median_runs(runs):
    """Throughput: the median msg/s of three runs of the ceiling, of medroute
    FULL and of RabbitMQ; latency: the run with the median Ack p99 at each load."""
    for name in ("ceiling", "medroute_full", "rabbitmq"):
        median_run(runs, name, "msgs_per_s", "rates")
    for who in ("ceiling", "medroute"):
        for pct in (20, 50):
            median_run(runs, f"{who}_lat{pct}", "ack_p99_us", "p99s")


def main():
    runs = load(sys.argv[1])
    median_runs(runs)
    notes = open(sys.argv[2]).read().strip().splitlines() if len(sys.argv) > 2 else []
    g = lambda run, k: runs.get(run, {}).get(k)
    rows = []

    def row(figure, value, ratio="", target="", ok=None):
        rows.append((figure, value, ratio, target, mark(ok) if target else ""))

    def cpu_row(run):
        """CPU per message of the daemon's threads and of the benchmark's clients."""
        cpu, own = g(run, "daemon_cpu_us_per_msg"), g(run, "clients_cpu_us_per_msg")
        rate = g(run, "msgs_per_s")
        if not cpu:
            return
        parts = sorted(((v, k) for k, v in cpu.items() if k != "total" and v >= 0.1), reverse=True)
        busy = ""
        if own and rate:
            busy = f"; with the clients' {own['total']:.1f} µs: " \
                   f"{(cpu['total'] + own['total']) * rate / 1e6 / 2:.0%} of the 2 cores"
        row("  medrouted CPU per message, by thread",
            f"{cpu['total']:.1f} µs", " · ".join(f"{k} {v:.1f}" for v, k in parts) + busy)

    ceil = g("ceiling", "msgs_per_s")
    full = g("medroute_full", "msgs_per_s")
    norm = g("medroute_normal", "msgs_per_s")
    rmq = g("rabbitmq", "msgs_per_s")

    def of_runs(run):
        """' (median of 3 runs: a / b / c)' when the run is a median."""
        r = runs.get(run, {})
        if r.get("of_runs", 1) < 2:
            return ""
        return f" (median of {r['of_runs']} runs: " \
               + " / ".join(num(v) for v in r["rates"]) + ")"

    row(f"ceiling: ZeroMQ ROUTER forwarder, {g('ceiling', 'senders')} senders → 1 receiver, "
        f"{g('ceiling', 'payload')} B, window {g('ceiling', 'window')}" + of_runs("ceiling"),
        num(ceil, " msg/s"))
    row("medroute durable (synchronous=FULL), end-to-end (delivery ack committed)"
        + of_runs("medroute_full"),
        num(full, " msg/s"), f"{full / ceil:.1%} of ceiling" if full and ceil else "",
        "≥ 20 % of ceiling", full / ceil >= 0.20 if full and ceil else None)
    row("  of which Acks (stored) during that run", num(g("medroute_full", "acked_per_s"), " msg/s"))
    cpu_row("medroute_full")
    row("medroute synchronous=NORMAL, end-to-end", num(norm, " msg/s"),
        f"{norm / ceil:.1%} of ceiling" if norm and ceil else "")
    row("  of which Acks (stored) during that run", num(g("medroute_normal", "acked_per_s"), " msg/s"))
    if rmq:
        row("RabbitMQ durable queue, persistent, confirms, manual acks" + of_runs("rabbitmq"),
            num(rmq, " msg/s"),
            f"medroute FULL / RabbitMQ = {full / rmq:.2f}×" if full else "",
            "≥ 5× RabbitMQ", full / rmq >= 5 if full else None)
    else:
        row("RabbitMQ durable queue, persistent, confirms, manual acks", "not measured",
            "see notes", "≥ 5× RabbitMQ", None)
    for pct in (20, 50):
        m, k = runs.get(f"medroute_lat{pct}"), runs.get(f"ceiling_lat{pct}")
        if not m:
            continue
        row(f"latency at {pct} % load ({num(m['offered_per_s'], ' msg/s')} offered, "
            f"{num(m['msgs_per_s'], ' msg/s')} done): medroute send→Ack p50 / p99 / p99.9"
            f" (median of {m.get('of_runs', 1)} runs)",
            f"{us(m['ack_p50_us'])} / {us(m['ack_p99_us'])} / {us(m['ack_p999_us'])}",
            "Ack p99 of each run: " + " / ".join(us(v) for v in m.get("p99s", []))
            + ("; ceiling: " + " / ".join(us(v) for v in k.get("p99s", [])) if k else ""))
        row("  medroute send→delivered p50 / p99 / p99.9",
            f"{us(m['dlv_p50_us'])} / {us(m['dlv_p99_us'])} / {us(m['dlv_p999_us'])}")
        if m.get("store_put_n"):
            row("  of the Ack's time, inside medrouted (its status, the same window; "
                "estimates exact to its buckets): store queue wait / commit / submit to Ack-ready, "
                "p50 · p99",
                " / ".join(f"{us(m[f'store_{k}_p50_us'])} · {us(m[f'store_{k}_p99_us'])}"
                           for k in ("wait", "commit", "put")),
                f"{num(m['store_commit_n'])} commits for {num(m['store_put_n'])} messages")
        cpu_row(f"medroute_lat{pct}")
        if k:
            row(f"  ceiling send→echo-ack (round trip) p50 / p99 / p99.9, same offered rate"
                f" (median of {k.get('of_runs', 1)} runs)",
                f"{us(k['ack_p50_us'])} / {us(k['ack_p99_us'])} / {us(k['ack_p999_us'])}")
            row("  ceiling send→delivered p50 / p99 / p99.9",
                f"{us(k['dlv_p50_us'])} / {us(k['dlv_p99_us'])} / {us(k['dlv_p999_us'])}")
            r = m["ack_p99_us"] / k["ack_p99_us"] if k["ack_p99_us"] else None
            rd = m["dlv_p99_us"] / k["dlv_p99_us"] if k["dlv_p99_us"] else None
            tail = k["ack_p99_us"] / k["ack_p50_us"] if k["ack_p50_us"] else None
            noisy = tail is not None and tail > NOISY_CEILING_TAIL
            row("  ratio medroute / ceiling, p99: Ack / delivered",
                f"{r:.1f}× / {rd:.1f}×" if r and rd else "—",
                f"NOISY: the ceiling's p99 is {tail:.0f}× its p50 (quiet: under"
                f" {NOISY_CEILING_TAIL:.0f}×); the ratio does not measure medroute" if noisy else "",
                "Ack p99 ≤ 10× ceiling" if pct == 50 else "",
                "NOISY" if (pct == 50 and noisy) else ((r <= 10) if (pct == 50 and r) else None))
    b = runs.get("backlog")
    if b:
        row(f"backlog: accept {num(b['count'])} referrals for an offline facility",
            f"{b['fill_s']:.1f} s ({num(b['fill_per_s'], ' msg/s')})"
            + ("" if b["fill_complete"] else f", INCOMPLETE: {num(b['accepted'])} accepted"))
        row("  daemon RSS while queued (VmRSS / VmHWM since start)",
            f"{b['rss_queued_kb'] / 1024:.1f} MB / {b['hwm_queued_kb'] / 1024:.1f} MB",
            f"store {b['store_bytes'] / 1e6:.0f} MB on disk",
            "≤ 150 MB", b["hwm_queued_kb"] / 1024 <= 150 and b["fill_complete"])
        row("  restart to ready (status answers, all pending), after a SIGTERM stop of "
            f"{b['stop_s']:.2f} s", f"{b['ready_s']:.2f} s" if b["ready_s"] >= 0 else "never",
            f"RSS then {b['rss_ready_kb'] / 1024:.1f} MB", "≤ 3 s",
            0 <= b["ready_s"] <= 3 and b["fill_complete"])
        row("  drain when the facility connects",
            f"{num(b['drain_per_s'], ' msg/s')}"
            + ("" if b["drain_complete"] else f" ({num(b['drained'])} in {b['drain_s']:.0f} s, "
               "bounded; not all)"),
            f"RSS peak {b['rss_drain_peak_kb'] / 1024:.1f} MB")
    o = runs.get("outbox")
    if o:
        done = o["acked_s"] > 0 and o["received_s"] > 0
        row(f"burst: {num(o['count'])} referrals in the outboxes of {o['senders']} townships"
            " that reconnect at once",
            (f"all Acks in {o['acked_s']:.1f} s, all delivered in {o['received_s']:.1f} s"
             f" ({num(o['per_s'], ' msg/s')})") if done
            else f"INCOMPLETE: {num(o['acked'])} acked, {num(o['received'])} delivered",
            f"daemon RSS peak {o['rss_peak_kb'] / 1024:.1f} MB; intake paused"
            f" {num(o.get('intake_paused'))} times; {num(o.get('duplicates'))} resends;"
            f" CPU per message: daemon {o.get('daemon_cpu_us_per_msg', {}).get('total', 0):.1f} µs,"
            f" clients {o.get('clients_cpu_us_per_msg', {}).get('total', 0):.1f} µs")

    print("## medroute benchmark (`make bench`)\n")
    print("\n".join(machine()))
    for when in ("before", "after"):
        f = runs.get(f"fsync_{when}")
        if f:
            print(f"- disk {when} the runs: 64 KB write + fdatasync, {f['fdatasync_n']:,} in"
                  f" {f['secs']:.0f} s: p50 {us(f['fdatasync_p50_us'])}, p99"
                  f" {us(f['fdatasync_p99_us'])}, p99.9 {us(f['fdatasync_p999_us'])},"
                  f" max {us(f['fdatasync_max_us'])}")
    print()
    print("| figure | value | ratio / context | target | mark |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    missing = [n for n in ("ceiling", "medroute_full", "medroute_normal", "medroute_lat20",
                           "medroute_lat50", "ceiling_lat20", "ceiling_lat50", "backlog",
                           "outbox", "rabbitmq") if n not in runs]
    if missing or notes:
        print("\nNotes:")
        for n in notes:
            print(f"- {n}")
        if missing:
            print(f"- no result for: {', '.join(missing)}")
    bad = [n for n, r in runs.items() if not r.get("ok", True)]
    if bad:
        print(f"- runs reporting ok=false: {', '.join(bad)}")


if __name__ == "__main__":
    main()
