#!/usr/bin/env python3
"""Turns scripts/bench.sh's measurements (JSON lines) into bench/results.md and
bench/results.json, with each target checked."""
import datetime
import json
import sys

src, md_path, json_path, machine, broker, rustc, small, large, mode = sys.argv[1:10]
rows = [json.loads(line) for line in open(src) if line.strip()]


def section(name):
    return [r for r in rows if r["section"] == name]


def ok(cond):
    return "met" if cond else "**missed**"


out = []
w = out.append
w("# Benchmark results\n")
b = (section("broker") or [{}])[0]
w(f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC ({mode} run) on {machine}; "
  f"{rustc}. Broker: {broker}, one node, heap {b.get('heap', '?')}, data in {b.get('data', '?')}. "
  f"Records: {int(small):,} × 100 B and {int(large):,} × 1 KiB, without keys (as the peers' own tools "
  "write them), over 6 partitions, acks=all. "
  "The machine is shared and noisy: compare the clients with each other in one run (ratios), "
  "not with other runs.\n")
if b.get("settings"):
    w("The broker's settings (the rest are Apache Kafka's defaults): `" + "`, `".join(
        x for x in b["settings"] if "listener" not in x and "quorum" not in x and "node.id" not in x) + "`.\n")

failed = section("failed")
if failed:
    w("## Failed measurements\n")
    w("Each of these exited non-zero; the run went on without it, and its rows are missing below.\n")
    for r in failed:
        what = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("section", "of", "status", "command", "tail"))
        w(f"- **{r['of']}** ({what}): exit {r['status']}: `{r['command']}`\n\n  ```text\n" +
          "\n".join("  " + line for line in r["tail"]) + "\n  ```\n")

NAMES = {"ours": "ours", "rskafka": "raw rskafka", "java": "Java (kafka-*-perf-test)",
         "rdkafka": "librdkafka (rdkafka_performance)", "franz-go": "franz-go"}
PEERS = ("rskafka", "java", "rdkafka", "franz-go")


def median_run(runs):
    """The run with the median records/s, with the range over all runs."""
    runs = sorted(runs, key=lambda r: r["records_per_s"])
    median = dict(runs[len(runs) // 2])
    median["runs"] = len(runs)
    median["range"] = (runs[0]["records_per_s"], runs[-1]["records_per_s"])
    return median


def spread(r):
    lo, hi = r["range"]
    return f" ({lo / 1e6:.2f}–{hi / 1e6:.2f} M)" if r["runs"] > 1 else ""


def label(r):
    name = NAMES.get(r["client"], r["client"])
    if r["client"] == "ours" and r.get("idempotence") == "false":
        name += ", idempotence off"
    return name


def groups(kind, key_fields):
    by = {}
    for r in section(kind):
        key = tuple(r.get(f) for f in key_fields)
        who = (r["client"], r.get("settings"), r.get("idempotence", ""))
        by.setdefault(key, {}).setdefault(who, []).append(r)
    return {k: {who: (median_run(rs) if "records_per_s" in rs[0] else rs[0]) for who, rs in v.items()}
            for k, v in by.items()}


def settings_lines(kind):
    seen = {}
    for r in section(kind):
        if "config" in r:
            seen.setdefault((label(r), r.get("settings")), r["config"])
    return seen


targets = []
for kind in ("producer", "consumer"):
    w(f"## {kind.capitalize()}\n")
    if kind == "producer":
        w("Each client wrote the same number of records to a topic of its own, the clients taking turns; "
          "the row is its median run. Records/s count from the first send to the last acknowledgement; "
          "CPU is the whole process's, start-up included (for the Java tool that is the JVM's start and "
          "its JIT). \"authors\" is the peer's own throughput tuning, \"ours\" the settings our producer "
          "uses (linger 5 ms, 1 MiB batches, idempotent).\n")
    else:
        w("Every client read the same topic (written by Kafka's own producer at its authors' settings), "
          "the clients taking turns; the row is its median run. Records/s count from the first record to "
          "the last; start-up (connecting, and for group members joining the group) is the next column: "
          "the process's wall time not spent reading.\n")
    w("| size | compression | client | settings | records/s | MB/s | CPU s per million | vs ours | runs |"
      + (" start-up ms |" if kind == "consumer" else ""))
    w("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if kind == "consumer" else ""))
    for (size, comp), by in groups(kind, ("size", "compression")).items():
        ours = by.get(("ours", "ours", "true" if kind == "producer" else ""))
        ours = ours if ours and "records_per_s" in ours else None
        for who, r in by.items():
            if "skipped" in r:
                w(f"| {size} B | {comp} | {label(r)} | {r['settings']} | – | – | – | – | {r['skipped']} |")
                continue
            vs = f"{r['records_per_s'] / ours['records_per_s']:.2f}×" if ours else "–"
            w(f"| {size} B | {comp} | {label(r)} | {r['settings']} | {r['records_per_s']:,.0f} | "
              f"{r['mb_per_s']:.1f} | {r['cpu_s_per_million']:.2f} | {vs} | {r['runs']}{spread(r)} |"
              + (f" {r['start_ms']:.0f} |" if kind == "consumer" else ""))
        peers = [r for who, r in by.items() if who[0] in PEERS and "records_per_s" in r]
        if ours and peers:
            fastest = max(peers, key=lambda r: r["records_per_s"])
            frugal = min(peers, key=lambda r: r["cpu_s_per_million"])
            targets.append((f"{kind} {size} B {comp}: ours ≥ every peer in records/s",
                            f"{ours['records_per_s']:,.0f} vs {fastest['records_per_s']:,.0f} "
                            f"({label(fastest)}, {fastest['settings']}): "
                            f"{ours['records_per_s'] / fastest['records_per_s']:.2f}×",
                            ours["records_per_s"] >= fastest["records_per_s"]))
            targets.append((f"{kind} {size} B {comp}: ours ≤ every peer in CPU per record",
                            f"{ours['cpu_s_per_million']:.2f} vs {frugal['cpu_s_per_million']:.2f} s "
                            f"({label(frugal)}, {frugal['settings']})",
                            ours["cpu_s_per_million"] <= frugal["cpu_s_per_million"]))
    w("\nSettings of each client:\n")
    for (name, settings), config in settings_lines(kind).items():
        w(f"- {name}, {settings}: `{config}`")
    w("")

lat = groups("latency", ("rate",))
for (rate,), by in lat.items():
    w(f"## Producer latency at {rate:,} records/s (100 B, none)\n")
    w("Half the slowest producer's records/s at our settings. Each client paced its records at that "
      "rate; latency is per record, from the send call to its acknowledgement, the first second's "
      "records left out as a warm-up (they wait for connections and metadata). The Java tool reports "
      "whole milliseconds.\n")
    w("| client | settings | records/s | p50 ms | p99 ms | max ms | CPU s per million | runs |")
    w("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    med = {}
    for who, r in by.items():
        runs = sorted([x for x in section("latency") if (x["client"], x.get("settings"), x.get("idempotence", "")) == who],
                      key=lambda x: x["p99_ms"])
        m = dict(runs[len(runs) // 2])
        m["runs"] = len(runs)
        med[who] = m
        w(f"| {label(m)} | {m['settings']} | {m['records_per_s']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
          f"{m['max_ms']:.1f} | {m['cpu_s_per_million']:.2f} | {m['runs']} |")
    ours = med.get(("ours", "ours", "true"))
    peers = [r for who, r in med.items() if who[0] in PEERS]
    if ours and peers:
        best = min(peers, key=lambda r: r["p99_ms"])
        targets.append(("producer p99 at half load ≤ the best peer's",
                        f"{ours['p99_ms']:.2f} vs {best['p99_ms']:.2f} ms ({label(best)}, {best['settings']})",
                        ours["p99_ms"] <= best["p99_ms"]))
    w("")

slow = section("slow_link")
if slow:
    w("## Producers across a slower link (100 B, none, 5 ms each way)\n")
    w("The same records through a proxy in front of the broker that holds every chunk of bytes 5 ms "
      "in each direction, as a cluster in another zone or a managed service would; the broker names the "
      "proxy in its metadata, so every connection goes through it. Every client at our settings, "
      "idempotent; ours also with one request in flight per partition and with 16 KiB batches (Java's "
      "default batch.size). The row is the median run.\n")
    w("| client | batch bytes | in flight per partition | records/s | CPU s per million | vs ours (1 MiB, 5) | runs |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    by = {}
    for r in slow:
        by.setdefault((r["client"], r.get("batch_bytes"), r.get("in_flight")), []).append(r)
    med = {k: median_run(v) for k, v in by.items()}
    base = med.get(("ours", "1048576", "5"))
    for (client, batch, in_flight), r in med.items():
        ratio = f"{r['records_per_s'] / base['records_per_s']:.2f}×" if base else ""
        batch = {"1048576": "1 MiB", "16384": "16 KiB", "-": "1 MiB (ours)"}.get(batch, batch)
        shown = "client's own (≤ 5)" if in_flight == "-" else in_flight
        w(f"| {NAMES.get(client, client)} | {batch} | {shown} | {r['records_per_s']:,.0f} | "
          f"{r['cpu_s_per_million']:.2f} | {ratio} | {r['runs']} |")
    w("")

w("## Pipeline (POST → inventory → notification → webhook)\n")
w("| inventory instances | processing | load | offered/s | accepted/s | orders/s through | p50 ms | p99 ms | max ms | errors |")
w("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in section("pipeline"):
    offered = "max" if r["offered_rate"] == 0 else r["offered_rate"]
    guarantee = r.get("guarantee", "at_least_once")
    if not r["notified"]:
        w(f"| {r['instances']} | {guarantee} | {r['phase']} | {offered} | {r['accepted_per_s']:.0f} | – | – | – | – | "
          f"{r['errors']} (no order through within the drain time: the backlog of the run before) |")
        continue
    w(f"| {r['instances']} | {guarantee} | {r['phase']} | {offered} | {r['accepted_per_s']:.0f} | {r['orders_per_s']:.0f} | "
      f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['errors']} |")
w("\nSaturation is a closed loop: 64 clients, each sending its next order once the last one reached "
  "the webhook, so the pipeline sets the pace and no backlog builds up. Half load is an open loop at "
  "half the saturation rate. Latency is from sending the POST to the webhook call.")
hops = [r for r in section("pipeline") if r.get("hops")]
if hops:
    names = [("post_to_created", "POST → order.created sent"),
             ("created_to_ledger", "→ ledger request sent"),
             ("ledger_to_outcome", "→ outcome sent"),
             ("outcome_to_webhook", "→ webhook called")]
    w("\nWhere an order's time goes, hop by hop (p50 / p99 ms), from the timestamps the services "
      "give the records they send (whole milliseconds, so a hop of under 1 ms can show as negative). The second hop holds the order service's produce, the "
      "inventory's fetch and its queue; the third, the ledger's produce; the last, the outcome's "
      "produce, the notification's fetch and the webhook call.\n")
    w("| inventory instances | processing | load | " + " | ".join(n for _, n in names) + " |")
    w("| ---: | --- | --- |" + " ---: |" * len(names))
    for r in hops:
        cells = [f"{r['hops'][k]['p50_ms']:.1f} / {r['hops'][k]['p99_ms']:.1f}" for k, _ in names]
        w(f"| {r['instances']} | {r.get('guarantee', 'at_least_once')} | {r['phase']} | " + " | ".join(cells) + " |")
cpu = section("cpu")
if cpu:
    w("\nCPU during each saturation run (exactly-once), in cores (the machine has " + machine.split(",")[0] +
      ") and in CPU milliseconds per order through; every inventory instance counted under inventory:\n")
    procs = ["order", "inventory", "notification", "broker"]
    w("| inventory instances | orders through | " + " | ".join(f"{p} cores" for p in procs) + " | all cores | "
      + " | ".join(f"{p} ms/order" for p in procs) + " |")
    w("| ---: | ---: |" + " ---: |" * (2 * len(procs) + 1))
    per_order = {}
    for n in sorted({r.get("instances", 1) for r in cpu}):
        run = [r for r in section("pipeline") if r["instances"] == n and r["phase"] == "saturation"
               and r.get("guarantee", "exactly_once") == "exactly_once"]
        orders = run[-1]["notified"] if run else 0
        cores = {p: 0.0 for p in procs}
        seconds = {p: 0.0 for p in procs}
        for r in cpu:
            if r.get("instances", 1) == n:
                p = r["process"].split("-")[0]
                cores[p] += r["ticks"] / r["hz"] / (r["wall_ms"] / 1000)
                seconds[p] += r["ticks"] / r["hz"]
        per_order[n] = {p: seconds[p] * 1e3 / orders if orders else float("nan") for p in procs}
        w(f"| {n} | {orders:,} | " + " | ".join(f"{cores[p]:.2f}" for p in procs) +
          f" | {sum(cores.values()):.2f} | " + " | ".join(f"{per_order[n][p]:.2f}" for p in procs) + " |")
    if len(per_order) > 1:
        for p in ("order", "inventory", "notification"):
            values = [v[p] for v in per_order.values()]
            ratio = max(values) / min(values) if min(values) > 0 else float("inf")
            targets.append((f"{p}-service CPU per order flat (within 20%) from 1 to {max(per_order)} inventories",
                            " / ".join(f"{v:.2f}" for v in values) + f" ms: max/min {ratio:.2f}",
                            ratio <= 1.2))
half = [r for r in section("pipeline") if r["phase"] == "half"
        and r.get("guarantee", "exactly_once") == "exactly_once"]
if half:
    h = half[-1]
    measured = f"{h['p99_ms']:.1f} ms" if h["notified"] else "no order came through in time"
    targets.append(("pipeline p99 < 20 ms at half of saturation (exactly-once)", measured,
                    h["notified"] > 0 and h["p99_ms"] < 20))
w("")

w("## HTTP (32 clients, one order-service)\n")
w("| route | requests/s | p50 ms | p99 ms | errors |")
w("| --- | ---: | ---: | ---: | ---: |")
for r in section("http"):
    route = "GET /health" if r["target"] == "health" else "POST /api/v1/orders"
    w(f"| {route} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |")
w("")

w("## Footprint\n")
w("| service | start to /ready | RSS idle | RSS under load |")
w("| --- | ---: | ---: | ---: |")
idle = {r["service"]: r["kib"] for r in section("rss_idle")}
load = {r["service"]: r["kib"] for r in section("rss_load")}
start = {r["service"]: r["ready_ms"] for r in section("start")}
for s in ("order", "inventory", "notification"):
    w(f"| {s}-service | {start.get(s, 0)} ms | {idle.get(s, 0) / 1024:.1f} MiB | {load.get(s, 0) / 1024:.1f} MiB |")
    if s in idle:
        targets.append((f"{s}-service idle RSS < 15 MiB", f"{idle[s] / 1024:.1f} MiB", idle[s] < 15 * 1024))
in_view = section("orders_in_view")
for r in section("rebuild"):
    n = in_view[-1]["orders"] if in_view else 0
    w(f"\nThe order view rebuilt from {n:,} orders: order-service ready after {r['ready_ms']} ms.")
w("\n| binary | built in | size |")
w("| --- | --- | ---: |")
for r in section("size"):
    w(f"| {r['binary']} | {r['where']} | {r['bytes'] / 1048576:.1f} MiB |")
    if r["where"].startswith("dist/"):
        targets.append((f"{r['binary']} ({r['where'][5:]}) < 10 MiB", f"{r['bytes'] / 1048576:.1f} MiB",
                        r["bytes"] < 10 * 1048576))
w("")

w("## Targets\n")
w("| target | measured | |")
w("| --- | --- | --- |")
for what, value, met in targets:
    w(f"| {what} | {value} | {ok(met)} |")
w("")

open(md_path, "w").write("\n".join(out))
json.dump({"machine": machine, "broker": broker, "rustc": rustc, "mode": mode, "results": rows,
           "targets": [{"target": t, "measured": v, "met": m} for t, v, m in targets]},
          open(json_path, "w"), indent=2)
