#!/usr/bin/env python3
"""Runs one client's producer or consumer measurement for scripts/bench.sh and
prints it as one JSON line, measured the same way for every client:

  bench-peer.py CLIENT produce|consume key=value...

CLIENT is ours, rskafka (both through bench/'s rust-eda-bench), java (Kafka's
own kafka-producer-perf-test and kafka-consumer-perf-test), rdkafka
(librdkafka's rdkafka_performance) or franz-go (bench/franz). Keys: brokers,
topic, records, size, compression, settings (authors|ours), idempotence
(true|false), rate (records/s, producer; 0 for as fast as it goes), group.

Every client reports how many records it moved and over how long: the
producer from its first send to its last acknowledgement, the consumer from
its first record to its last, so that start-up (connecting, joining a group)
is counted apart, as start_ms: the process's wall time not spent moving
records. Paced (rate=R), a producer reports each record's latency from send
to acknowledgement, the first second's records left out as a warm-up. CPU is the whole process's (user + system, from the kernel's
accounting of the finished child), start-up included, for every client alike.
"""
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.environ.get("BENCH_PEERS") or subprocess.run(
    [os.path.join(ROOT, "scripts/bench-peers.sh")], capture_output=True, text=True, check=True).stdout.strip()
BENCH = os.environ.get("BENCH_BIN", os.path.join(ROOT, "target/release/rust-eda-bench"))
OUR_BATCH = 1024 * 1024  # ProducerConfig::default().batch_max_bytes


def fail(message):
    print(f"bench-peer: {message}", file=sys.stderr)
    sys.exit(1)


def settings_of(client, mode, o):
    """The client's own settings for this run, as (flags or properties, text for the report)."""
    ours = o["settings"] == "ours"
    idem = o.get("idempotence", "true")
    if mode == "consume":
        if client == "java":
            props = ["fetch.max.wait.ms=100"] if ours else ["fetch.min.bytes=100000"]
        elif client == "rdkafka":
            props = ["fetch.wait.max.ms=100"] if ours else []
        else:
            props = []
        return props, " ".join(props) or "defaults"
    if client == "java":
        props = ["acks=all", f"compression.type={o['compression']}", f"enable.idempotence={idem}"]
        # Confluent's "optimize producer throughput" tuning (acks stays all here).
        props += [f"linger.ms=5", f"batch.size={OUR_BATCH}"] if ours else ["linger.ms=100", "batch.size=200000"]
    elif client == "rdkafka":
        props = ["acks=all", f"compression.codec={o['compression']}", f"enable.idempotence={idem if ours else 'false'}"]
        # INTRODUCTION.md, "High throughput": linger.ms of 50 ms or more, 100-1000 ms.
        props += [f"linger.ms=5", f"batch.size={OUR_BATCH}"] if ours else ["linger.ms=100"]
    elif client == "franz-go":
        props = ["acks=all", f"idempotence={idem}"]
        props += ["linger=5ms", f"batch={OUR_BATCH}"] if ours else [
            "linger=10ms (default)", "batch=1000000", "buffered records=250 MiB", "3 fetches of 5 MiB"]
    elif client == "rskafka":
        props = ["acks=all", "batches of 1 MiB made by hand" if not int(o.get("rate", "0")) else
                 "BatchProducer linger=5ms batch=1048576", "no idempotence"]
    else:
        props = ["acks=all", "linger=5ms", f"batch={o.get('batch_bytes', OUR_BATCH)}",
                 f"in flight={o.get('in_flight', 5)}", f"idempotence={idem}"]
    return props, " ".join(props)


def command(client, mode, o, latency_file):
    records, size = o["records"], o.get("size", "100")
    props, _ = settings_of(client, mode, o)
    rate = int(o.get("rate", "0"))
    if client in ("ours", "rskafka"):
        args = [BENCH, mode, f"client={client}", f"brokers={o['brokers']}", f"topic={o['topic']}",
                f"records={records}"]
        if mode == "produce":
            args += [f"size={size}", f"compression={o['compression']}", f"rate={rate}",
                     f"idempotence={o.get('idempotence', 'true')}"]
            args += [f"{k}={o[k]}" for k in ("in_flight", "batch_bytes") if k in o]
        return args
    if client == "java":
        if mode == "produce":
            return [os.path.join(ROOT, "scripts/kafka-tool.sh"), "producer-perf-test",
                    "--bootstrap-server", o["brokers"], "--topic", o["topic"], "--num-records", records,
                    "--record-size", size, "--throughput", str(rate or -1),
                    *(["--warmup-records", str(rate)] if rate else []), "--command-property", *props]
        args = [os.path.join(ROOT, "scripts/kafka-tool.sh"), "consumer-perf-test",
                "--bootstrap-server", o["brokers"], "--topic", o["topic"], "--num-records", records,
                "--group", o.get("group", f"bench-java-{os.getpid()}"), "--timeout", "120000"]
        return args + (["--command-property", *props] if props else [])
    if client == "rdkafka":
        exe = os.path.join(PEERS, "rdkafka_performance")
        if mode == "produce":
            # -T 0: no statistics. The tool turns them on at its display interval
            # unless told, and at the end subtracts rd_kafka_outq_len() from the
            # messages it produced; that length counts a statistics event still
            # queued for the application, so a run whose last delivery report
            # meets one reports a message fewer produced than delivered and
            # exits 1 (seen in paced runs, which last longest).
            args = [exe, "-P", "-t", o["topic"], "-b", o["brokers"], "-s", size, "-c", records, "-T", "0"]
            for p in props:
                args += ["-X", p]
            if rate:
                args += ["-r", str(rate), "-l", "-A", latency_file]
            return args
        args = [exe, "-G", o.get("group", f"bench-rd-{os.getpid()}"), "-t", o["topic"], "-b", o["brokers"],
                "-c", records, "-X", "auto.offset.reset=earliest", "-X", "enable.auto.commit=false"]
        for p in props:
            args += ["-X", p]
        return args
    if client == "franz-go":
        args = [os.path.join(PEERS, "franz-bench"), f"-mode={mode}", f"-brokers={o['brokers']}",
                f"-topic={o['topic']}", f"-records={records}", f"-settings={o['settings']}"]
        if mode == "produce":
            args += [f"-size={size}", f"-compression={o['compression']}", f"-rate={rate}",
                     f"-idempotence={o.get('idempotence', 'true')}"]
        return args
    fail(f"no client {client}")


def percentiles(values):
    values = sorted(values)
    if not values:
        return {}
    at = lambda p: values[int(p / 100 * (len(values) - 1))]
    return {"p50_ms": at(50), "p99_ms": at(99), "max_ms": values[-1]}


def parse(client, mode, o, out, latency_file):
    """records and seconds moving them (and latencies), from the tool's own output."""
    if client in ("ours", "rskafka", "franz-go"):
        return json.loads(out.strip().splitlines()[-1])
    if client == "java" and mode == "produce":
        m = re.search(r"(\d+) records sent, ([\d.]+) records/sec .*?([\d.]+) ms avg latency, ([\d.]+) ms max latency, "
                      r"(\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th", out)
        if not m:
            fail(f"no summary in kafka-producer-perf-test's output:\n{out[-2000:]}")
        n, rps = int(m[1]), float(m[2])
        return {"records": n, "seconds": n / rps, "p50_ms": float(m[5]), "p99_ms": float(m[7]),
                "max_ms": float(m[4])}
    if client == "java":
        lines = [l for l in out.splitlines() if l.count(",") >= 9 and not l.startswith("start.time")]
        if not lines:
            fail(f"no result in kafka-consumer-perf-test's output:\n{out[-2000:]}")
        f = [x.strip() for x in lines[-1].split(",")]
        n, fetch_ms = int(f[4]), float(f[7])
        return {"records": n, "seconds": fetch_ms / 1e3, "rebalance_ms": float(f[6])}
    if mode == "produce":
        m = re.findall(r"% (\d+) messages produced \((\d+) bytes\), (\d+) delivered \(offset -?\d+, (\d+) failed\) "
                       r"in (\d+)ms", out)
        if not m:
            fail(f"no summary in rdkafka_performance's output:\n{out[-2000:]}")
        produced, _, delivered, failed, ms = map(int, m[-1])
        if failed or delivered != produced:
            fail(f"rdkafka_performance delivered {delivered} of {produced} ({failed} failed)")
        result = {"records": delivered, "seconds": ms / 1e3}
        if latency_file and os.path.exists(latency_file):
            with open(latency_file) as f:
                # In delivery order; the first second's records are the warm-up.
                rate = int(o.get("rate", "0"))
                result.update(percentiles([int(l) / 1e3 for l in f if l.strip()][rate:]))
        return result
    m = re.findall(r"% (\d+) messages \((\d+) bytes\) consumed in (\d+)ms", out)
    if not m:
        fail(f"no summary in rdkafka_performance's output:\n{out[-2000:]}")
    n, _, ms = map(int, m[-1])
    return {"records": n, "seconds": ms / 1e3}


def main():
    if len(sys.argv) < 3:
        fail(__doc__)
    client, mode = sys.argv[1], sys.argv[2]
    o = dict(a.split("=", 1) for a in sys.argv[3:])
    o.setdefault("settings", "ours")
    o.setdefault("compression", "none")
    latency_file = tempfile.mktemp(prefix="bench-latency-") if client == "rdkafka" and mode == "produce" else None
    args = command(client, mode, o, latency_file)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        run = subprocess.run(args, capture_output=True, text=True, timeout=float(o.get("timeout", "600")))
    except subprocess.TimeoutExpired:
        fail(f"{client} {mode} did not finish in time: {' '.join(args)}")
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        fail(f"{client} {mode} exited with {run.returncode}: {' '.join(args)}\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    result = parse(client, mode, o, run.stdout, latency_file)
    if latency_file and os.path.exists(latency_file):
        os.unlink(latency_file)
    records, seconds = result["records"], result["seconds"]
    if records < int(o["records"]):
        fail(f"{client} {mode} moved {records} of {o['records']} records")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    size = int(o.get("size", "100"))
    _, text = settings_of(client, mode, o)
    print(json.dumps({
        "client": client,
        "settings": o["settings"],
        "config": text,
        "records": records,
        "seconds": seconds,
        "records_per_s": records / seconds,
        "mb_per_s": records * size / seconds / 1e6,
        "cpu_s_per_million": cpu / records * 1e6,
        "start_ms": max(0.0, (wall - seconds) * 1e3),
        "wall_s": wall,
        **{k: result[k] for k in ("p50_ms", "p99_ms", "max_ms") if k in result and int(o.get("rate", "0"))},
        **({"rebalance_ms": result["rebalance_ms"]} if "rebalance_ms" in result else {}),
    }))


if __name__ == "__main__":
    main()
