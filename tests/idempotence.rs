//! The idempotent producer against Apache Kafka: the broker hands out a
//! producer id, and a batch that carries it is written once however often it
//! is sent; without it, every send is written again. Through a proxy that
//! loses produce answers, the producer's own retries show the same.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rskafka::chrono::{DateTime, Utc};
use rskafka::client::partition::{BatchProducer, Compression, ProduceBatch};
use rskafka::record::Record;
use rust_eda::kafka::produce::init_producer_id;
use rust_eda::kafka::{Lane, read_topic};
use support::{PrivateBroker, cluster, connect, create_topic, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("v{i}").into_bytes()),
            headers: Default::default(),
            timestamp: DateTime::<Utc>::from(std::time::SystemTime::now()),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_a_producer_id_is_written_once_however_often_it_is_sent() {
    let cluster = cluster().await;
    let identity = within(
        30,
        "a producer id",
        init_producer_id(cluster.config(), None, Duration::from_secs(60)),
    )
    .await
    .expect("the broker hands out producer ids");
    assert!(identity.id >= 0, "{identity:?}");
    assert!(identity.epoch >= 0, "{identity:?}");

    let idempotent = create_topic(&cluster, 1).await;
    let client = cluster
        .partition_client(&idempotent, 0, Lane::Write)
        .await
        .unwrap();
    let batch = ProduceBatch::with_producer(
        &idempotent,
        0,
        records(10),
        Compression::NoCompression,
        BatchProducer {
            producer_id: identity.id,
            producer_epoch: identity.epoch,
            base_sequence: 0,
            transactional_id: None,
        },
    );
    // A retry after a lost acknowledgement sends the same batch again.
    let first = within(30, "the first send", client.produce_batch(&batch))
        .await
        .expect("written");
    let again = within(30, "the same batch again", client.produce_batch(&batch))
        .await
        .expect("acknowledged, not written again");
    assert_eq!(
        first, again,
        "the broker answers a duplicate with its offsets"
    );
    let read = within(30, "reading back", read_topic(&cluster, &idempotent))
        .await
        .unwrap();
    assert_eq!(read.len(), 10, "written once");

    // Without a producer id the broker cannot tell: both sends are written.
    let plain = create_topic(&cluster, 1).await;
    let client = cluster
        .partition_client(&plain, 0, Lane::Write)
        .await
        .unwrap();
    let batch = ProduceBatch::new(&plain, 0, records(10), Compression::NoCompression);
    for attempt in ["first", "second"] {
        within(30, attempt, client.produce_batch(&batch))
            .await
            .expect("written");
    }
    let read = within(30, "reading back", read_topic(&cluster, &plain))
        .await
        .unwrap();
    assert_eq!(read.len(), 20, "written twice");
}

/// The producer's batches carry consecutive sequence numbers per partition:
/// were a batch to repeat one, the broker would take it for a duplicate and
/// drop it, and fewer records would be read back than were acknowledged.
#[tokio::test(flavor = "multi_thread")]
async fn the_idempotent_producer_numbers_its_batches_so_that_every_one_is_written() {
    use rust_eda::kafka::{Producer, ProducerConfig, ProducerRecord};
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 3).await;
    let config = ProducerConfig {
        linger: Duration::ZERO,
        ..ProducerConfig::default()
    };
    assert!(config.idempotence, "on by default");
    let producer = Producer::new(cluster.clone(), config);
    let mut sent = 0;
    for round in 0..5 {
        let mut deliveries = Vec::new();
        for i in 0..200 {
            let record = ProducerRecord::new(&topic)
                .key(format!("k{}", i % 7))
                .value(format!("{round}-{i}"));
            deliveries.push(producer.enqueue(record).await.expect("accepted"));
        }
        for d in deliveries {
            within(30, "an acknowledgement", d)
                .await
                .expect("delivered");
            sent += 1;
        }
    }
    producer.close().await;
    let read = within(30, "reading back", read_topic(&cluster, &topic))
        .await
        .unwrap();
    assert_eq!(read.len(), sent);
    // Nothing was refused for its sequence and sent again (under a new id or
    // not): the count is this topic's, as other tests here lose answers.
    let metrics = rust_eda::metrics::render();
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("eda_producer_retries_total") && l.contains(topic.as_str()));
    assert!(retries.is_none_or(|l| l.ends_with(" 0")), "{retries:?}");
}

/// A TCP proxy in front of the broker that loses the answers to the first
/// `drops` produce requests and swaps the order of the first `swaps` pairs of
/// produce requests. It reads each request's API key and correlation id as it
/// passes. When the answer to a produce request comes back, it closes the
/// connection instead of passing it on: the broker has written the batch, the
/// client hears nothing and sends it again. A swapped request is held until
/// the next produce request has gone (or 50 ms passed): the broker sees the
/// later batch first.
struct LosingProxy {
    port: u16,
    target: Arc<parking_lot::Mutex<Option<u16>>>,
    faults: Arc<Faults>,
    _task: tokio::task::JoinHandle<()>,
}

/// What the proxy is to do, and what it did.
#[derive(Default)]
struct Faults {
    drops_left: AtomicUsize,
    swaps_left: AtomicUsize,
    dropped: AtomicUsize,
    swapped: AtomicUsize,
    /// The most produce requests seen on their way at once on one connection.
    most_in_flight: AtomicUsize,
}

impl Faults {
    fn take(budget: &AtomicUsize) -> bool {
        budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl LosingProxy {
    async fn start(drops: usize, swaps: usize) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(parking_lot::Mutex::new(None::<u16>));
        let faults = Arc::new(Faults {
            drops_left: AtomicUsize::new(drops),
            swaps_left: AtomicUsize::new(swaps),
            ..Faults::default()
        });
        let task = {
            let faults = Arc::clone(&faults);
            let target = Arc::clone(&target);
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let Some(broker_port) = *target.lock() else {
                        continue;
                    };
                    let faults = Arc::clone(&faults);
                    tokio::spawn(async move {
                        let Ok(broker) =
                            tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                        else {
                            return;
                        };
                        relay(client, broker, faults).await;
                    });
                }
            })
        };
        Self {
            port,
            target,
            faults,
            _task: task,
        }
    }

    /// Points the proxy at the broker listening on `port`: the broker must
    /// know the proxy's port first, to name it in its metadata.
    fn forward_to(&self, port: u16) {
        *self.target.lock() = Some(port);
    }
}

const PRODUCE: i16 = 0;

/// Reads one length-prefixed Kafka frame.
async fn frame(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let len = stream.read_i32().await.ok()?;
    let mut body = vec![0; usize::try_from(len).ok()?];
    stream.read_exact(&mut body).await.ok()?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend(body);
    Some(out)
}

async fn relay(client: tokio::net::TcpStream, broker: tokio::net::TcpStream, faults: Arc<Faults>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    // Correlation id → API key of the requests on their way.
    let keys: Arc<parking_lot::Mutex<HashMap<i32, i16>>> = Arc::default();
    // Frames are read by a task of their own, so that waiting for the next
    // one can be cut short without losing half a frame.
    let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(f) = frame(&mut client_read).await {
            if frames_tx.send(f).is_err() {
                return;
            }
        }
    });
    let requests = {
        let keys = Arc::clone(&keys);
        let faults = Arc::clone(&faults);
        async move {
            let mut held: Option<Vec<u8>> = None;
            loop {
                let next = if held.is_some() {
                    match tokio::time::timeout(Duration::from_millis(50), frames.recv()).await {
                        Ok(next) => next,
                        // Nothing came after it: it goes alone.
                        Err(_) => {
                            if let Some(f) = held.take()
                                && broker_write.write_all(&f).await.is_err()
                            {
                                return;
                            }
                            continue;
                        }
                    }
                } else {
                    frames.recv().await
                };
                let Some(f) = next else { return };
                let key = i16::from_be_bytes([f[4], f[5]]);
                let correlation = i32::from_be_bytes([f[8], f[9], f[10], f[11]]);
                let produce_in_flight = {
                    let mut keys = keys.lock();
                    keys.insert(correlation, key);
                    keys.values().filter(|&&k| k == PRODUCE).count()
                };
                faults
                    .most_in_flight
                    .fetch_max(produce_in_flight, Ordering::AcqRel);
                if key == PRODUCE && held.is_none() && Faults::take(&faults.swaps_left) {
                    held = Some(f);
                    continue;
                }
                if broker_write.write_all(&f).await.is_err() {
                    return;
                }
                if key == PRODUCE
                    && let Some(h) = held.take()
                {
                    faults.swapped.fetch_add(1, Ordering::AcqRel);
                    if broker_write.write_all(&h).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let answers = async move {
        while let Some(f) = frame(&mut broker_read).await {
            let correlation = i32::from_be_bytes([f[4], f[5], f[6], f[7]]);
            let key = keys.lock().remove(&correlation);
            if key == Some(PRODUCE) && Faults::take(&faults.drops_left) {
                faults.dropped.fetch_add(1, Ordering::AcqRel);
                // Lost with the connection: the client must send it again.
                return;
            }
            if client_write.write_all(&f).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = requests => {}
        () = answers => {}
    }
    reader.abort();
}

/// What went through the losing proxy: the values read back, in offset
/// order, and the most produce requests on their way at once.
struct ThroughTheProxy {
    topic: String,
    values: Vec<String>,
    most_in_flight: usize,
    /// Pairs of produce requests the broker saw in swapped order.
    swapped: usize,
}

/// Produces `count` records with `config` through a proxy that loses the
/// answers to the first `drops` produce requests: one at a time (each send
/// awaited), or all enqueued at once and then awaited.
async fn through_a_losing_proxy(
    config: rust_eda::kafka::ProducerConfig,
    count: usize,
    drops: usize,
    swaps: usize,
    all_at_once: bool,
) -> ThroughTheProxy {
    use rust_eda::kafka::{Producer, ProducerRecord};
    let proxy = LosingProxy::start(drops, swaps).await;
    let broker = PrivateBroker::start_advertising(proxy.port);
    proxy.forward_to(broker.port);
    let brokers = format!("127.0.0.1:{}", proxy.port);
    let cluster = connect(&brokers).await;
    let topic = create_topic(&cluster, 1).await;
    let producer = Producer::new(cluster.clone(), config);
    let mut deliveries = Vec::new();
    for i in 0..count {
        let record = ProducerRecord::new(&topic).value(format!("record-{i}"));
        let delivery = producer.enqueue(record).await.expect("accepted");
        if all_at_once {
            deliveries.push(delivery);
        } else {
            within(60, "a delivery through the proxy", delivery)
                .await
                .expect("delivered after retries");
        }
    }
    for delivery in deliveries {
        within(60, "a delivery through the proxy", delivery)
            .await
            .expect("delivered after retries");
    }
    producer.close().await;
    assert_eq!(
        proxy.faults.dropped.load(Ordering::Acquire),
        drops,
        "the proxy lost as many answers as it was told to"
    );
    let values = within(30, "reading back", read_topic(&cluster, &topic))
        .await
        .unwrap()
        .iter()
        .map(|m| String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    drop(broker);
    ThroughTheProxy {
        topic,
        values,
        most_in_flight: proxy.faults.most_in_flight.load(Ordering::Acquire),
        swapped: proxy.faults.swapped.load(Ordering::Acquire),
    }
}

fn one_at_a_time(idempotence: bool) -> rust_eda::kafka::ProducerConfig {
    rust_eda::kafka::ProducerConfig {
        linger: Duration::ZERO,
        idempotence,
        ..rust_eda::kafka::ProducerConfig::default()
    }
}

/// With idempotence, a batch sent again after its answer was lost is not
/// written again: the topic, read back by offset, holds each record once, in
/// order. Without it, each lost answer leaves a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn lost_produce_answers_leave_no_duplicate_with_idempotence_and_duplicates_without() {
    const COUNT: usize = 20;
    const DROPS: usize = 5;
    let want: Vec<String> = (0..COUNT).map(|i| format!("record-{i}")).collect();

    let idempotent = through_a_losing_proxy(one_at_a_time(true), COUNT, DROPS, 0, false)
        .await
        .values;
    assert_eq!(idempotent, want, "each record once, in order");

    let plain = through_a_losing_proxy(one_at_a_time(false), COUNT, DROPS, 0, false)
        .await
        .values;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &plain {
        *counts.entry(v.as_str()).or_default() += 1;
    }
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!("without idempotence: {duplicates} duplicates from {DROPS} lost answers");
    assert_eq!(duplicates, DROPS, "{plain:?}");
}

/// Up to five batches on their way at once. When the proxy loses an answer
/// it closes the connection, so every batch on its way then has an unknown
/// fate and goes again; when it swaps two produce requests, the broker
/// refuses the later batch as out of order and the producer sends it again
/// after the earlier one. Each record is still in the topic once, in the
/// order it was enqueued.
#[tokio::test(flavor = "multi_thread")]
async fn batches_in_flight_together_are_written_once_and_in_order_through_lost_and_swapped_requests()
 {
    const COUNT: usize = 3_000;
    const DROPS: usize = 8;
    const SWAPS: usize = 20;
    let want: Vec<String> = (0..COUNT).map(|i| format!("record-{i}")).collect();
    let config = rust_eda::kafka::ProducerConfig {
        // Small batches, so that many are on their way at once.
        batch_max_bytes: 256,
        ..rust_eda::kafka::ProducerConfig::default()
    };
    assert_eq!(config.max_in_flight, 5, "five on their way by default");
    let through = through_a_losing_proxy(config, COUNT, DROPS, SWAPS, true).await;
    let retries: f64 = rust_eda::metrics::render()
        .lines()
        .filter(|l| {
            l.starts_with("eda_producer_retries_total") && l.contains(through.topic.as_str())
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "up to {} produce requests on their way at once; {} pairs swapped, {retries} batches sent again by the producer",
        through.most_in_flight, through.swapped
    );
    assert!(
        (2..=5).contains(&through.most_in_flight),
        "between 2 and 5 requests on their way at once, not {}",
        through.most_in_flight
    );
    assert!(through.swapped > 0, "the proxy swapped no requests");
    assert!(retries > 0.0, "no batch was refused and sent again");
    assert_eq!(through.values.len(), COUNT, "nothing lost or written twice");
    assert_eq!(through.values, want, "each record once, in order");
}

/// The broker goes away for longer than a delivery timeout: records fail in
/// time (first for want of an answer, then for want of a producer id), and
/// once the broker is back the same producer takes a new id and delivers
/// again. A worker that stopped after a batch found no id would leave every
/// later record waiting for ever.
#[tokio::test(flavor = "multi_thread")]
async fn the_producer_goes_on_after_the_broker_was_away_past_its_delivery_timeout() {
    use rust_eda::kafka::{Producer, ProducerConfig, ProducerRecord};
    let broker = PrivateBroker::start();
    let cluster = connect(&broker.brokers()).await;
    let topic = create_topic(&cluster, 1).await;
    let producer = Producer::new(
        cluster.clone(),
        ProducerConfig {
            linger: Duration::ZERO,
            delivery_timeout: Duration::from_secs(1),
            ..ProducerConfig::default()
        },
    );
    let record = |i: usize| ProducerRecord::new(&topic).value(format!("record-{i}"));
    within(30, "a delivery", producer.send(record(0)))
        .await
        .expect("delivered");

    broker.stop();
    let mut failures = Vec::new();
    for i in 1..=4 {
        let outcome = within(
            10,
            "an answer while the broker is away",
            producer.send(record(i)),
        )
        .await;
        failures.push(
            outcome
                .expect_err("nothing is delivered without a broker")
                .to_string(),
        );
    }
    eprintln!("while the broker was away: {failures:#?}");
    assert!(
        failures.iter().any(|f| f.contains("producer id")),
        "some record waited for a producer id: {failures:?}"
    );

    broker.restart();
    let mut delivered = None;
    for i in 5..60 {
        match within(
            10,
            "an answer after the broker came back",
            producer.send(record(i)),
        )
        .await
        {
            Ok(delivery) => {
                delivered = Some(delivery);
                break;
            }
            Err(e) => eprintln!("not yet: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        delivered.is_some(),
        "nothing was delivered after the broker came back"
    );
    producer.close().await;
}
