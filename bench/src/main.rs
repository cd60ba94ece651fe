//! One measurement per run, printed as a JSON line for scripts/bench.sh:
//!
//! - `produce client=ours|rskafka brokers=.. topic=.. records=N size=B compression=none|gzip|snappy
//!   [rate=R] [idempotence=false] [in_flight=N] [batch_bytes=B]`: with `rate`, paced,
//!   with each record's latency from send to acknowledgement
//! - `consume client=ours|rskafka brokers=.. topic=.. records=N`
//!
//! The peers (Kafka's Java tools, librdkafka, franz-go) run their own programs;
//! scripts/bench-peer.py runs every client, these two included, and measures
//! them alike.
//! - `http url=http://host:port target=health|order concurrency=C seconds=S`
//! - `pipeline apis=URL[,URL] webhook=PORT rate=R|0 concurrency=C seconds=S [brokers=..]`:
//!   with `brokers`, also where each order's time went, hop by hop, from the
//!   timestamps of the records it caused
//! - `create brokers=.. topic=.. partitions=P`, `delete brokers=.. topics=T[,T]`
//! - `seed-orders brokers=.. count=N`: real `order.created` events, for the view rebuild
//!
//! Each client runs in a process of its own, so that its CPU time is its own.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    if std::env::var_os("BENCH_LOG").is_some() {
        rust_eda::logging::init(
            "bench",
            &rust_eda::config::LoggerConfig {
                level: log::LevelFilter::Debug,
                encoding: rust_eda::config::LogEncoding::Console,
            },
        );
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().cloned() else {
        eprintln!("usage: rust-eda-bench produce|consume|http|pipeline key=value...");
        std::process::exit(64);
    };
    let options: HashMap<String, String> = args[1..]
        .iter()
        .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match command.as_str() {
            "produce" => produce(&options).await,
            "consume" => consume(&options).await,
            "http" => http_load(&options).await,
            "pipeline" => pipeline(&options).await,
            "create" => create(&options).await,
            "delete" => delete(&options).await,
            "seed-orders" => seed_orders(&options).await,
            "delay-proxy" => delay_proxy(&options).await,
            other => Err(format!("unknown command {other}").into()),
        }
    });
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("{command} failed: {e}");
            std::process::exit(1);
        }
    }
}

fn opt<'a>(o: &'a HashMap<String, String>, key: &str) -> Result<&'a str, Error> {
    o.get(key)
        .map(String::as_str)
        .ok_or_else(|| format!("missing {key}=").into())
}

fn num(o: &HashMap<String, String>, key: &str) -> Result<u64, Error> {
    Ok(opt(o, key)?.parse()?)
}

/// CPU seconds (user + system) this process used so far, to the nanosecond:
/// `/proc/self/stat` counts in 10 ms ticks, a tenth of a short run's CPU time.
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0;
    if ok {
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    } else {
        0.0
    }
}

async fn partitions_of(kafka: &rskafka::client::Client, topic: &str) -> Result<i32, Error> {
    Ok(kafka
        .list_topics()
        .await?
        .into_iter()
        .find(|t| t.name == topic)
        .ok_or("no such topic")?
        .partitions
        .len() as i32)
}

/// The end offset of each partition of `topic`, in partition order.
async fn end_offsets(brokers: &str, topic: &str) -> Result<Vec<i64>, Error> {
    use rskafka::client::ClientBuilder;
    use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
    let kafka = ClientBuilder::new(vec![brokers.to_owned()]).build().await?;
    let mut ends = Vec::new();
    for p in 0..partitions_of(&kafka, topic).await? {
        let pc = kafka
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await?;
        ends.push(pc.get_offset(OffsetAt::Latest).await?);
    }
    Ok(ends)
}

fn report(client: &str, records: u64, bytes: u64, started: Instant, cpu_start: f64) -> Value {
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_start;
    json!({
        "client": client,
        "records": records,
        "seconds": seconds,
        "records_per_s": records as f64 / seconds,
        "mb_per_s": bytes as f64 / seconds / 1e6,
        "cpu_s_per_million": cpu / records as f64 * 1e6,
    })
}

/// A TCP proxy that holds every chunk of bytes `delay_ms` in each direction
/// before passing it on, so the broker behind it answers a round trip later,
/// as across a data centre or to a managed cluster; chunks still stream
/// back to back, so throughput is not capped. Runs until killed.
async fn delay_proxy(o: &HashMap<String, String>) -> Result<Value, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listen: u16 = num(o, "listen")?.try_into()?;
    let target: u16 = num(o, "target")?.try_into()?;
    let delay = Duration::from_millis(num(o, "delay_ms")?);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await?;
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let writer = tokio::spawn(async move {
            while let Some((at, chunk)) = rx.recv().await {
                tokio::time::sleep_until((at + delay).into()).await;
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = vec![0; 256 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                break;
            }
        }
        drop(tx);
        let _ = writer.await;
    }
    loop {
        let (client, _) = listener.accept().await?;
        // One refused connection to the broker (restarting, say) drops that
        // client alone; the proxy goes on serving the next.
        let broker = match tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
            Ok(broker) => broker,
            Err(e) => {
                eprintln!("delay-proxy: cannot reach the broker on port {target}: {e}");
                continue;
            }
        };
        client.set_nodelay(true)?;
        broker.set_nodelay(true)?;
        let (client_read, client_write) = client.into_split();
        let (broker_read, broker_write) = broker.into_split();
        tokio::spawn(pipe(client_read, broker_write, delay));
        tokio::spawn(pipe(broker_read, client_write, delay));
    }
}

/// Paces records at `rate` per second (0: as fast as they go) and keeps the
/// latency, from send to acknowledgement, of every `SAMPLE`th record: timing
/// each in a task of its own cost ours more CPU than the producer itself (the
/// peers' tools time theirs in a callback they make anyway). The first
/// second's records are a warm-up, left out of the percentiles for every client
/// alike: they wait for the first connections and metadata.
struct Pace {
    rate: u64,
    started: tokio::time::Instant,
    latencies: Arc<Mutex<Vec<(u64, f64)>>>,
    sent: AtomicU64,
    sampled: AtomicU64,
}

const SAMPLE: u64 = 8;

impl Pace {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            started: tokio::time::Instant::now(),
            latencies: Arc::default(),
            sent: AtomicU64::new(0),
            sampled: AtomicU64::new(0),
        }
    }

    /// Waits until record `i` is due.
    async fn due(&self, i: u64) {
        if let Some(nanos) = (i * 1_000_000_000).checked_div(self.rate) {
            let at = self.started + Duration::from_nanos(nanos);
            if at > tokio::time::Instant::now() {
                tokio::time::sleep_until(at).await;
            }
        }
    }

    /// Waits for a sampled record's `delivery` in a task of its own when pacing
    /// (so that its latency is taken when it completes), or hands it back to be
    /// awaited in turn.
    fn track<F, T, E>(&self, delivery: F) -> Option<F>
    where
        F: std::future::Future<Output = Result<T, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let i = self.sent.fetch_add(1, Ordering::Relaxed);
        if self.rate == 0 || !i.is_multiple_of(SAMPLE) {
            return Some(delivery);
        }
        self.sampled.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let latencies = Arc::clone(&self.latencies);
        tokio::spawn(async move {
            match delivery.await {
                Ok(_) => latencies
                    .lock()
                    .push((i, sent.elapsed().as_secs_f64() * 1e3)),
                Err(e) => {
                    eprintln!("a paced record failed: {e}");
                    std::process::exit(1);
                }
            }
        });
        None
    }

    /// Waits until every sampled record is acknowledged, then adds p50, p99 and max.
    async fn finish(&self, result: &mut Value) -> Result<(), Error> {
        if self.rate == 0 {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while (self.latencies.lock().len() as u64) < self.sampled.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                return Err("paced records were not all acknowledged within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut l: Vec<f64> = std::mem::take(&mut *self.latencies.lock())
            .into_iter()
            .filter(|&(i, _)| i >= self.rate)
            .map(|(_, ms)| ms)
            .collect();
        l.sort_by(f64::total_cmp);
        result["p50_ms"] = json!(percentile(&l, 0.5));
        result["p99_ms"] = json!(percentile(&l, 0.99));
        result["max_ms"] = json!(l.last().copied().unwrap_or(0.0));
        Ok(())
    }
}

/// Records without keys, as the peers' own benchmark tools write them, each
/// client spreading them over the partitions in its own way: ours sticks to a
/// partition for a batch's worth of bytes, raw rskafka is handed whole batches
/// in turn.
async fn produce(o: &HashMap<String, String>) -> Result<Value, Error> {
    let client = opt(o, "client")?;
    let brokers = opt(o, "brokers")?;
    let topic = opt(o, "topic")?;
    let records = num(o, "records")?;
    let size = num(o, "size")? as usize;
    let compression = opt(o, "compression")?;
    let rate = o.get("rate").map_or(Ok(0), |r| r.parse())?;
    // Idempotent by default, as the Java client is; `idempotence=false` for
    // like with like against raw rskafka.
    let idempotence = o.get("idempotence").is_none_or(|v| v == "true");
    let value = vec![b'x'; size];
    let bytes = records * size as u64;
    let cpu = cpu_seconds();
    let started;
    let mut latency = json!({});
    match client {
        "ours" => {
            use rust_eda::kafka::{
                Cluster, ClusterConfig, Compression, Producer, ProducerConfig, ProducerRecord,
            };
            let cluster = Cluster::connect(ClusterConfig::from_broker_list(brokers)).await?;
            let producer = Producer::new(
                cluster,
                ProducerConfig {
                    linger: Duration::from_millis(5),
                    batch_max_bytes: o
                        .get("batch_bytes")
                        .and_then(|b| b.parse().ok())
                        .unwrap_or(ProducerConfig::default().batch_max_bytes),
                    compression: compression.parse::<Compression>().map_err(|_| {
                        format!("our producer does not write {compression} batches")
                    })?,
                    idempotence,
                    // `in_flight=1` measures what sending several requests
                    // per partition at once buys.
                    max_in_flight: o
                        .get("in_flight")
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(ProducerConfig::default().max_in_flight),
                    ..ProducerConfig::default()
                },
            );
            // The clock starts at the first send, as the peers' tools start theirs.
            started = Instant::now();
            let pace = Pace::new(rate);
            let mut pending = VecDeque::new();
            for i in 0..records {
                pace.due(i).await;
                let record = ProducerRecord::new(topic).value(value.clone());
                let delivery = producer.enqueue(record).await?;
                if let Some(d) = pace.track(delivery) {
                    pending.push_back(d);
                }
                // Keep the futures bounded; the producer's buffer bounds the data.
                while pending.len() > 200_000 {
                    pending.pop_front().expect("pending").await?;
                }
            }
            for delivery in pending {
                delivery.await?;
            }
            pace.finish(&mut latency).await?;
            producer.close().await;
        }
        "rskafka" => {
            use rskafka::client::ClientBuilder;
            use rskafka::client::partition::{Compression, UnknownTopicHandling};
            use rskafka::record::Record;
            let compression = match compression {
                "none" => Compression::NoCompression,
                "gzip" => Compression::Gzip,
                "snappy" => Compression::Snappy,
                other => return Err(format!("raw rskafka is built without {other} here").into()),
            };
            let kafka = ClientBuilder::new(vec![brokers.to_owned()]).build().await?;
            let partitions = partitions_of(&kafka, topic).await?;
            let mut clients = Vec::new();
            for p in 0..partitions {
                clients.push(Arc::new(
                    kafka
                        .partition_client(topic, p, UnknownTopicHandling::Retry)
                        .await?,
                ));
            }
            let record = |value: &[u8]| Record {
                key: None,
                value: Some(value.to_vec()),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::<rskafka::chrono::Utc>::from(
                    std::time::SystemTime::now(),
                ),
            };
            started = Instant::now();
            let pace = Pace::new(rate);
            if rate == 0 {
                // Hand-made batches of up to 1 MiB, handed to the partitions in
                // turn, one request in flight per partition.
                let per_batch = (1024 * 1024 / (size + 64)).max(1) as u64;
                let mut tasks = tokio::task::JoinSet::new();
                for (p, pc) in clients.into_iter().enumerate() {
                    let value = value.clone();
                    tasks.spawn(async move {
                        let mut first = p as u64 * per_batch;
                        while first < records {
                            let n = per_batch.min(records - first);
                            let batch = (0..n).map(|_| record(&value)).collect();
                            pc.produce(batch, compression).await?;
                            first += per_batch * partitions as u64;
                        }
                        Ok::<_, Error>(())
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    r??;
                }
            } else {
                // Paced, records go one at a time through rskafka's own
                // BatchProducer per partition, lingering 5 ms as ours does.
                use rskafka::client::producer::{
                    BatchProducerBuilder, aggregator::RecordAggregator,
                };
                let producers: Vec<_> = clients
                    .into_iter()
                    .map(|pc| {
                        Arc::new(
                            BatchProducerBuilder::new(pc)
                                .with_linger(Duration::from_millis(5))
                                .with_compression(compression)
                                .build(RecordAggregator::new(1024 * 1024)),
                        )
                    })
                    .collect();
                let mut pending = VecDeque::new();
                for i in 0..records {
                    pace.due(i).await;
                    let producer = Arc::clone(&producers[(i % producers.len() as u64) as usize]);
                    let r = record(&value);
                    // rskafka's `produce` adds the record to its batch only
                    // when first polled: each one has to run at once.
                    if let Some(d) = pace.track(async move { producer.produce(r).await }) {
                        pending.push_back(tokio::spawn(d));
                    }
                    while pending.len() > 200_000 {
                        pending.pop_front().expect("pending").await??;
                    }
                }
                for delivery in pending {
                    delivery.await??;
                }
                pace.finish(&mut latency).await?;
            }
        }
        other => return Err(format!("unknown client {other}").into()),
    }
    let mut result = report(client, records, bytes, started, cpu);
    if let (Value::Object(result), Value::Object(latency)) = (&mut result, latency) {
        result.extend(latency);
    }
    Ok(result)
}

/// What a consumer saw, counted per partition in slots of their own: every client
/// counts each record and its bytes as it is handed over, and the count must not
/// be what is measured (one shared counter is a cache line all threads fight for).
struct Seen {
    slots: Vec<Slot>,
    /// When the first record arrived: what a client spends before it reads
    /// (connecting, and for ours joining its group) is reported apart.
    first: OnceLock<Instant>,
}

#[repr(align(128))]
#[derive(Default)]
struct Slot {
    records: AtomicU64,
    bytes: AtomicU64,
}

impl Seen {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            slots: (0..64).map(|_| Slot::default()).collect(),
            first: OnceLock::new(),
        })
    }

    fn add(&self, partition: i32, bytes: usize) {
        if self.first.get().is_none() {
            let _ = self.first.set(Instant::now());
        }
        let slot = &self.slots[partition.unsigned_abs() as usize % self.slots.len()];
        slot.records.fetch_add(1, Ordering::Relaxed);
        slot.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn records(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.records.load(Ordering::Relaxed))
            .sum()
    }

    fn bytes(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.bytes.load(Ordering::Relaxed))
            .sum()
    }
}

async fn consume(o: &HashMap<String, String>) -> Result<Value, Error> {
    let client = opt(o, "client")?;
    let brokers = opt(o, "brokers")?;
    let topic = opt(o, "topic")?.to_owned();
    let records = num(o, "records")?;
    let seen = Seen::new();
    // Where each partition ends, looked up before the clock starts: the harness's
    // way to know when our consumer, which runs until stopped, has read everything.
    let ends = if client == "ours" {
        end_offsets(brokers, &topic).await?
    } else {
        Vec::new()
    };
    let cpu = cpu_seconds();
    let started = Instant::now();
    match client {
        "ours" => {
            use rust_eda::kafka::{
                Cluster, ClusterConfig, Consumer, ConsumerConfig, Handler, HandlerError, Message,
            };
            use rust_eda::shutdown::ShutdownTrigger;
            let cluster = Cluster::connect(ClusterConfig::from_broker_list(brokers)).await?;
            let mut config =
                ConsumerConfig::new(format!("bench-{}", std::process::id()), [topic.clone()]);
            config.fetch_max_wait = Duration::from_millis(100);
            // A lone member: nobody to wait for (Java: group.initial.rebalance.delay.ms=0).
            config.rebalance_grace = Duration::ZERO;
            config.broker_offsets = false;
            let consumer = Consumer::new(cluster, config).await?;
            let (trigger, shutdown) = ShutdownTrigger::new();
            // A `Handler` over `&Message`, as the services write theirs: `handler_fn`
            // would hand the closure a copy of every record. The consumer runs until
            // stopped: the handler that sees the last record of the last partition
            // to finish stops it.
            struct Count {
                seen: Arc<Seen>,
                ends: Vec<i64>,
                finished: AtomicU64,
                trigger: Mutex<Option<ShutdownTrigger>>,
            }
            impl Handler for Count {
                async fn handle(&self, m: &Message) -> Result<(), HandlerError> {
                    self.seen
                        .add(m.partition, m.value.as_ref().map_or(0, |v| v.len()));
                    let end = self.ends.get(m.partition as usize).copied();
                    if end == Some(m.offset + 1)
                        && self.finished.fetch_add(1, Ordering::Relaxed) + 1
                            == self.ends.iter().filter(|&&e| e > 0).count() as u64
                        && let Some(t) = self.trigger.lock().take()
                    {
                        t.trigger();
                    }
                    Ok(())
                }
            }
            let handler = Count {
                seen: Arc::clone(&seen),
                ends: ends.clone(),
                finished: AtomicU64::new(0),
                trigger: Mutex::new(Some(trigger)),
            };
            consumer.run(handler, shutdown).await?;
        }
        "rskafka" => {
            use rskafka::client::ClientBuilder;
            use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
            let kafka = ClientBuilder::new(vec![brokers.to_owned()]).build().await?;
            let partitions = partitions_of(&kafka, &topic).await?;
            let mut tasks = tokio::task::JoinSet::new();
            for p in 0..partitions {
                let pc = kafka
                    .partition_client(&topic, p, UnknownTopicHandling::Retry)
                    .await?;
                let seen = Arc::clone(&seen);
                tasks.spawn(async move {
                    let mut offset = pc.get_offset(OffsetAt::Earliest).await?;
                    let end = pc.get_offset(OffsetAt::Latest).await?;
                    while offset < end {
                        let (batch, _) = pc.fetch_records(offset, 1..1024 * 1024, 100).await?;
                        for r in &batch {
                            seen.add(p, r.record.value.as_ref().map_or(0, Vec::len));
                        }
                        if let Some(last) = batch.last() {
                            offset = last.offset + 1;
                        }
                    }
                    Ok::<_, Error>(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
        }
        other => return Err(format!("unknown client {other}").into()),
    }
    let n = seen.records();
    let first = *seen.first.get().ok_or("no record was read")?;
    if n < records {
        return Err(format!("read {n} of {records} records").into());
    }
    // Records/s from the first record to the last: what comes before (connecting,
    // and for ours joining its group) is reported apart, as for every client.
    let mut result = report(client, n, seen.bytes(), first, cpu);
    result["first_record_ms"] = json!(first.duration_since(started).as_secs_f64() * 1e3);
    Ok(result)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The bearer token for the order API, from `EDA_BENCH_TOKEN` (scripts/bench.sh
/// mints one); without it, the API must run with `APP_AUTH_MODE=off`.
fn bench_token() -> Option<&'static str> {
    static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| std::env::var("EDA_BENCH_TOKEN").ok().filter(|t| !t.is_empty()))
        .as_deref()
}

fn order_body(i: u64) -> Bytes {
    let items = json!([
        {"product_id": format!("product-{:03}", i % 5 + 1), "quantity": 1, "price": 9.99}
    ]);
    // With a token the customer is the token's; without, one of a hundred.
    let body = match bench_token() {
        Some(_) => json!({"items": items}),
        None => json!({"customer_id": format!("c-{}", i % 100), "items": items}),
    };
    Bytes::from(body.to_string())
}

async fn post_order(url: &rust_eda::http_client::HttpUrl, i: u64) -> Result<String, Error> {
    let authorization = bench_token().map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &authorization {
        headers.push(("authorization", a));
    }
    let r = rust_eda::http_client::request(
        http::Method::POST,
        url,
        &headers,
        order_body(i),
        Duration::from_secs(30),
    )
    .await?;
    if r.status != 201 {
        return Err(format!("POST answered {}", r.status).into());
    }
    Ok(r.json()["order_id"].as_str().unwrap_or_default().to_owned())
}

/// Closed-loop load on one route: `concurrency` clients for `seconds`.
async fn http_load(o: &HashMap<String, String>) -> Result<Value, Error> {
    let base = opt(o, "url")?.trim_end_matches('/').to_owned();
    let target = opt(o, "target")?.to_owned();
    let concurrency = num(o, "concurrency")?;
    let seconds = num(o, "seconds")?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..concurrency {
        let (latencies, errors, base, target) = (
            Arc::clone(&latencies),
            Arc::clone(&errors),
            base.clone(),
            target.clone(),
        );
        tasks.spawn(async move {
            let health: rust_eda::http_client::HttpUrl = format!("{base}/health").parse().unwrap();
            let orders: rust_eda::http_client::HttpUrl =
                format!("{base}/api/v1/orders").parse().unwrap();
            let mut i = c * 1_000_000;
            while Instant::now() < deadline {
                i += 1;
                let t = Instant::now();
                let ok = if target == "order" {
                    post_order(&orders, i).await.is_ok()
                } else {
                    rust_eda::http_client::request(
                        http::Method::GET,
                        &health,
                        &[],
                        Bytes::new(),
                        Duration::from_secs(10),
                    )
                    .await
                    .is_ok_and(|r| r.status == 200)
                };
                if ok {
                    latencies.lock().push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let mut l = latencies.lock().clone();
    l.sort_by(f64::total_cmp);
    Ok(json!({
        "target": target,
        "requests": l.len(),
        "requests_per_s": l.len() as f64 / elapsed,
        "p50_ms": percentile(&l, 0.5),
        "p99_ms": percentile(&l, 0.99),
        "errors": errors.load(Ordering::Relaxed),
    }))
}

/// Orders through all three services: POSTs at `rate` per second (0: as fast as
/// `concurrency` clients go) for `seconds`, and the time from each POST to its
/// webhook call, which the notification service makes last.
async fn pipeline(o: &HashMap<String, String>) -> Result<Value, Error> {
    use warp::Filter;
    let apis: Vec<rust_eda::http_client::HttpUrl> = opt(o, "apis")?
        .split(',')
        .map(|u| format!("{}/api/v1/orders", u.trim_end_matches('/')).parse())
        .collect::<Result<_, _>>()?;
    let webhook_port = num(o, "webhook")? as u16;
    let rate = num(o, "rate")?;
    let concurrency = num(o, "concurrency")?.max(1);
    let seconds = num(o, "seconds")?;

    // The webhook receiver: when each order's outcome arrived, and who waits for it.
    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
    let route = {
        let outcomes = Arc::clone(&outcomes);
        warp::post()
            .and(warp::body::json::<Value>())
            .map(move |body: Value| {
                if let Some(id) = body["order_id"].as_str() {
                    outcomes.lock().arrive(id);
                }
                warp::reply()
            })
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", webhook_port)).await?;
    tokio::spawn(warp::serve(route).incoming(listener).run());
    let trail = match o.get("brokers") {
        Some(brokers) => Some(Trail::start(brokers).await?),
        None => None,
    };

    let posted: Arc<Mutex<HashMap<String, (Instant, f64)>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    // rate=0 is saturation: a closed loop in which each client sends its next
    // order only when the last one came out at the webhook, so the pipeline
    // runs at its own pace and no backlog builds up behind the API.
    let clients = if rate == 0 {
        concurrency
    } else {
        (rate / 10).clamp(4, 256)
    };
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    for _ in 0..clients {
        let (posted, errors, next, apis, outcomes) = (
            Arc::clone(&posted),
            Arc::clone(&errors),
            Arc::clone(&next),
            apis.clone(),
            Arc::clone(&outcomes),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                // Open loop at a fixed rate: order i is due at i × interval.
                let due = interval.map(|d| started + d * i as u32);
                if let Some(due) = due {
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                } else if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let wall = epoch_ms();
                match post_order(&apis[i as usize % apis.len()], i).await {
                    Ok(id) => {
                        posted.lock().insert(id.clone(), (t, wall));
                        if interval.is_none() {
                            let done = outcomes.lock().wait(id);
                            if tokio::time::timeout(Duration::from_secs(30), done)
                                .await
                                .is_err()
                            {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let load_seconds = started.elapsed().as_secs_f64();
    let accepted = posted.lock().len();
    // Let the pipeline drain (at most a minute).
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    while outcomes.lock().arrived.len() < accepted && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posted = posted.lock().clone();
    let arrived = outcomes.lock().arrived.clone();
    let mut latencies: Vec<f64> = posted
        .iter()
        .filter_map(|(id, (t, _))| {
            arrived
                .get(id)
                .map(|(a, _)| a.duration_since(*t).as_secs_f64() * 1e3)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let last = arrived.values().map(|(a, _)| *a).max().unwrap_or(started);
    let hops = match trail {
        Some(trail) => trail.hops(&posted, &arrived).await?,
        None => Value::Null,
    };
    let through = arrived.len() as f64 / last.duration_since(started).as_secs_f64().max(1e-3);
    Ok(json!({
        "offered_rate": rate,
        "accepted": accepted,
        "accepted_per_s": accepted as f64 / load_seconds,
        "notified": latencies.len(),
        "orders_per_s": through,
        "p50_ms": percentile(&latencies, 0.5),
        "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or(0.0),
        "errors": errors.load(Ordering::Relaxed),
        "hops": hops,
    }))
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The topics an order passes through: where each holds its order id, and the
/// stage of the order's trail that its record marks.
const TRAIL: [(&str, &str, usize); 4] = [
    ("order.created", "/payload/order_id", 1),
    ("inventory.ledger", "/order_id", 2),
    ("inventory.reserved", "/payload/order_id", 3),
    ("inventory.failed", "/payload/order_id", 3),
];

/// Where the pipeline's topics ended when the load began: the records after
/// that are this run's, and their timestamps (set by the producing service when
/// it sends) split each order's latency into hops. Read with our consumer's
/// decoder, `read_committed`: the outcome topics hold transaction markers,
/// which rskafka 0.6.0's own decoder cannot read.
struct Trail {
    cluster: rust_eda::kafka::Cluster,
    /// Each partition of the trail's topics, with where it ended.
    start: HashMap<(&'static str, i32), i64>,
}

impl Trail {
    async fn start(brokers: &str) -> Result<Self, Error> {
        use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
        let kafka = rskafka::client::ClientBuilder::new(vec![brokers.to_owned()])
            .build()
            .await?;
        let mut start = HashMap::new();
        for (topic, _, _) in TRAIL {
            for p in 0..partitions_of(&kafka, topic).await? {
                let pc = kafka
                    .partition_client(topic, p, UnknownTopicHandling::Retry)
                    .await?;
                start.insert((topic, p), pc.get_offset(OffsetAt::Latest).await?);
            }
        }
        let cluster = rust_eda::kafka::Cluster::connect(
            rust_eda::kafka::ClusterConfig::from_broker_list(brokers),
        )
        .await?;
        Ok(Self { cluster, start })
    }

    /// p50 and p99 of each hop: POST → `order.created` sent → ledger request
    /// sent → outcome sent → webhook called.
    async fn hops(
        &self,
        posted: &HashMap<String, (Instant, f64)>,
        arrived: &HashMap<String, (Instant, f64)>,
    ) -> Result<Value, Error> {
        // order id → epoch ms at each stage
        let mut stages: HashMap<String, [f64; 5]> = HashMap::new();
        for (id, (_, wall)) in posted {
            stages.entry(id.clone()).or_insert([f64::NAN; 5])[0] = *wall;
        }
        for (id, (_, wall)) in arrived {
            if let Some(s) = stages.get_mut(id) {
                s[4] = *wall;
            }
        }
        for (topic, pointer, stage) in TRAIL {
            for m in rust_eda::kafka::read_topic(&self.cluster, topic).await? {
                if m.offset < self.start.get(&(topic, m.partition)).copied().unwrap_or(0) {
                    continue;
                }
                let id = m
                    .value
                    .as_deref()
                    .and_then(|v| serde_json::from_slice::<Value>(v).ok())
                    .and_then(|v| {
                        v.pointer(pointer)
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    });
                if let Some(s) = id.and_then(|id| stages.get_mut(&id))
                    && s[stage].is_nan()
                {
                    s[stage] = m.timestamp.timestamp_micros() as f64 / 1e3;
                }
            }
        }
        let names = [
            "post_to_created",
            "created_to_ledger",
            "ledger_to_outcome",
            "outcome_to_webhook",
        ];
        let mut out = serde_json::Map::new();
        for (i, name) in names.iter().enumerate() {
            let mut d: Vec<f64> = stages
                .values()
                .map(|s| s[i + 1] - s[i])
                .filter(|d| d.is_finite())
                .collect();
            d.sort_by(f64::total_cmp);
            out.insert(
                (*name).to_owned(),
                json!({"p50_ms": percentile(&d, 0.5), "p99_ms": percentile(&d, 0.99)}),
            );
        }
        Ok(Value::Object(out))
    }
}

/// Outcomes seen at the webhook, and clients waiting for theirs.
#[derive(Default)]
struct Outcomes {
    arrived: HashMap<String, (Instant, f64)>,
    waiting: HashMap<String, tokio::sync::oneshot::Sender<()>>,
}

impl Outcomes {
    fn arrive(&mut self, id: &str) {
        self.arrived
            .entry(id.to_owned())
            .or_insert_with(|| (Instant::now(), epoch_ms()));
        if let Some(waiter) = self.waiting.remove(id) {
            let _ = waiter.send(());
        }
    }

    /// Resolves when `id` arrived (at once if it already has).
    fn wait(&mut self, id: String) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.arrived.contains_key(&id) {
            let _ = tx.send(());
        } else {
            self.waiting.insert(id, tx);
        }
        rx
    }
}

/// Deletes topics (comma-separated), so that a long run's data does not pile up
/// on the broker's disk, which may be memory.
async fn delete(o: &HashMap<String, String>) -> Result<Value, Error> {
    let kafka = rskafka::client::ClientBuilder::new(vec![opt(o, "brokers")?.to_owned()])
        .build()
        .await?;
    let controller = kafka.controller_client()?;
    let topics: Vec<&str> = opt(o, "topics")?
        .split(',')
        .filter(|t| !t.is_empty())
        .collect();
    for topic in &topics {
        controller.delete_topic(*topic, 30_000).await?;
    }
    Ok(json!({"deleted": topics}))
}

async fn create(o: &HashMap<String, String>) -> Result<Value, Error> {
    use rust_eda::kafka::{Admin, ClusterConfig, TopicSpec};
    let topic = opt(o, "topic")?;
    Admin::new(ClusterConfig::from_broker_list(opt(o, "brokers")?))
        .ensure_topics(&[TopicSpec::new(topic, num(o, "partitions")? as i32)])
        .await?;
    Ok(json!({"created": topic}))
}

async fn seed_orders(o: &HashMap<String, String>) -> Result<Value, Error> {
    use rust_eda::domain::{OrderId, OrderItem};
    use rust_eda::events::{Envelope, OrderCreated, now};
    use rust_eda::kafka::{Cluster, ClusterConfig, Producer, ProducerConfig};
    let count = num(o, "count")?;
    let cluster = Cluster::connect(ClusterConfig::from_broker_list(opt(o, "brokers")?)).await?;
    let producer = Producer::new(cluster, ProducerConfig::default());
    let mut pending = VecDeque::new();
    for i in 0..count {
        let items = vec![OrderItem {
            product_id: format!("product-{:03}", i % 5 + 1),
            quantity: 1,
            price: 9.99,
        }];
        let event = Envelope::new(
            OrderCreated {
                order_id: OrderId::new(),
                customer_id: format!("c-{}", i % 100),
                total: rust_eda::domain::total(&items),
                items,
                created_at: now(),
            },
            format!("seed-{i}"),
        );
        pending.push_back(producer.enqueue(event.to_record()?).await?);
        while pending.len() > 50_000 {
            pending.pop_front().expect("pending").await?;
        }
    }
    for d in pending {
        d.await?;
    }
    producer.close().await;
    Ok(json!({"seeded": count}))
}
