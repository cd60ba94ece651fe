//! One measurement per run, printed as a JSON line for scripts/bench.sh:
//!
//! - `produce client=ours|rskafka|rdkafka brokers=.. topic=.. records=N size=B compression=none|snappy`
//! - `consume client=ours|rskafka|rdkafka brokers=.. topic=.. records=N`
//! - `http url=http://host:port target=health|order concurrency=C seconds=S`
//! - `pipeline apis=URL[,URL] webhook=PORT rate=R|0 concurrency=C seconds=S [brokers=..]`:
//!   with `brokers`, also where each order's time went, hop by hop, from the
//!   timestamps of the records it caused
//! - `create brokers=.. topic=.. partitions=P`
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

fn key(i: u64) -> String {
    format!("key-{}", i % 10_000)
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
        let broker = tokio::net::TcpStream::connect(("127.0.0.1", target)).await?;
        client.set_nodelay(true)?;
        broker.set_nodelay(true)?;
        let (client_read, client_write) = client.into_split();
        let (broker_read, broker_write) = broker.into_split();
        tokio::spawn(pipe(client_read, broker_write, delay));
        tokio::spawn(pipe(broker_read, client_write, delay));
    }
}

async fn produce(o: &HashMap<String, String>) -> Result<Value, Error> {
    let client = opt(o, "client")?;
    let brokers = opt(o, "brokers")?;
    let topic = opt(o, "topic")?;
    let records = num(o, "records")?;
    let size = num(o, "size")? as usize;
    let snappy = opt(o, "compression")? == "snappy";
    // Idempotent by default, as the Java client is; `idempotence=false` for
    // both ours and librdkafka, like for like with raw rskafka.
    let idempotence = o.get("idempotence").is_none_or(|v| v == "true");
    let value = vec![b'x'; size];
    let bytes = records * (size as u64 + 9);
    let cpu = cpu_seconds();
    let started = Instant::now();
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
                    compression: if snappy {
                        Compression::Snappy
                    } else {
                        Compression::None
                    },
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
            let mut pending = VecDeque::new();
            for i in 0..records {
                let record = ProducerRecord::new(topic).key(key(i)).value(value.clone());
                pending.push_back(producer.enqueue(record).await?);
                // Keep the futures bounded; the producer's buffer bounds the data.
                while pending.len() > 200_000 {
                    pending.pop_front().expect("pending").await?;
                }
            }
            for delivery in pending {
                delivery.await?;
            }
            producer.close().await;
        }
        "rskafka" => {
            use rskafka::client::ClientBuilder;
            use rskafka::client::partition::{Compression, UnknownTopicHandling};
            use rskafka::record::Record;
            let kafka = ClientBuilder::new(vec![brokers.to_owned()]).build().await?;
            let partitions = partitions_of(&kafka, topic).await?;
            // Hand-made batches: records split by the same partitioner, sent in
            // batches of up to 1 MiB, one request in flight per partition.
            let per_batch = (1024 * 1024 / (size + 64)).max(1);
            let mut by_partition: Vec<Vec<Record>> = vec![Vec::new(); partitions as usize];
            let now = rskafka::chrono::DateTime::<rskafka::chrono::Utc>::from(
                std::time::SystemTime::now(),
            );
            for i in 0..records {
                let k = key(i);
                let p = rust_eda::kafka::produce::partitioner::partition_for_key(k.as_bytes(), partitions);
                by_partition[p as usize].push(Record {
                    key: Some(k.into_bytes()),
                    value: Some(value.clone()),
                    headers: Default::default(),
                    timestamp: now,
                });
            }
            let compression = if snappy {
                Compression::Snappy
            } else {
                Compression::NoCompression
            };
            let mut tasks = tokio::task::JoinSet::new();
            for (p, mut list) in by_partition.into_iter().enumerate() {
                let pc = kafka
                    .partition_client(topic, p as i32, UnknownTopicHandling::Retry)
                    .await?;
                tasks.spawn(async move {
                    while !list.is_empty() {
                        let rest = list.split_off(list.len().min(per_batch));
                        let batch = std::mem::replace(&mut list, rest);
                        pc.produce(batch, compression).await?;
                    }
                    Ok::<_, Error>(())
                });
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
        }
        "rdkafka" => {
            use rdkafka::ClientConfig;
            use rdkafka::error::{KafkaError, RDKafkaErrorCode};
            use rdkafka::producer::{FutureProducer, FutureRecord};
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("enable.idempotence", idempotence.to_string())
                .set("compression.type", if snappy { "snappy" } else { "none" })
                .create()?;
            let mut pending = VecDeque::new();
            for i in 0..records {
                let k = key(i);
                loop {
                    let record = FutureRecord::to(topic).key(&k).payload(&value);
                    match producer.send_result(record) {
                        Ok(f) => {
                            pending.push_back(f);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            let f: rdkafka::producer::DeliveryFuture = pending
                                .pop_front()
                                .ok_or("queue full with nothing pending")?;
                            f.await?.map_err(|(e, _)| e)?;
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                }
            }
            for f in pending {
                f.await?.map_err(|(e, _)| e)?;
            }
        }
        other => return Err(format!("unknown client {other}").into()),
    }
    Ok(report(client, records, bytes, started, cpu))
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
        "rdkafka" => {
            use rdkafka::consumer::{BaseConsumer, Consumer};
            use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", format!("bench-rd-{}", std::process::id()))
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "100")
                .create()?;
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let partitions = metadata.topics()[0].partitions().len() as i32;
            let mut list = TopicPartitionList::new();
            for p in 0..partitions {
                list.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
            consumer.assign(&list)?;
            let seen = Arc::clone(&seen);
            tokio::task::spawn_blocking(move || {
                let mut n = 0;
                while n < records {
                    if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                        let m = m?;
                        seen.add(m.partition(), m.payload().map_or(0, <[u8]>::len));
                        n += 1;
                    }
                }
                Ok::<_, Error>(())
            })
            .await??;
        }
        other => return Err(format!("unknown client {other}").into()),
    }
    let n = seen.records();
    let mut result = report(client, n, seen.bytes() + n * 9, started, cpu);
    if let Some(first) = seen.first.get() {
        result["first_record_ms"] = json!(first.duration_since(started).as_secs_f64() * 1e3);
    }
    Ok(result)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn order_body(i: u64) -> Bytes {
    Bytes::from(
        json!({"customer_id": format!("c-{}", i % 100), "items": [
            {"product_id": format!("product-{:03}", i % 5 + 1), "quantity": 1, "price": 9.99}
        ]})
        .to_string(),
    )
}

async fn post_order(url: &rust_eda::http_client::HttpUrl, i: u64) -> Result<String, Error> {
    let r = rust_eda::http_client::request(
        http::Method::POST,
        url,
        &[("content-type", "application/json")],
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
