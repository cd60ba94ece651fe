//! The Kafka layer against a real broker: producer, consumer, offsets, admin.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rust_eda::kafka::group::offsets::offsets_topic_spec;
use rust_eda::kafka::middleware::{dead_letter, replay};
use rust_eda::kafka::produce::partitioner::partition_for_key;
use rust_eda::kafka::{
    Admin, ClusterError, Compression, ConsumerConfig, DeadLetter, Delivery, DeliveryFuture,
    Follower, Message, OffsetReset, OffsetStore, Poison, ProduceError, Producer, ProducerConfig,
    ProducerRecord, TopicOutcome, TopicPartition, TopicSpec, handler_fn, read_topic,
};
use support::{PrivateBroker, RunningConsumer, cluster, connect, create_topic, unique, within};

fn consumer_config(topic: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(unique("g"), [topic]);
    config.offsets_topic = unique("offsets");
    config.fetch_max_wait = Duration::from_millis(100);
    config.commit_interval = Duration::from_millis(200);
    // A fast group, so that tests restarting members do not wait long for timeouts.
    config.session_timeout = Duration::from_secs(3);
    config.heartbeat_interval = Duration::from_millis(300);
    config.rebalance_grace = Duration::from_millis(300);
    config
}

fn keyed(topic: &str, i: usize) -> ProducerRecord {
    ProducerRecord::new(topic)
        .key(format!("key-{}", i % 25))
        .value(format!("value-{i}"))
        .header("seq", i.to_string())
        .header("kind", "test")
}

fn seq(m: &Message) -> usize {
    m.header_str("seq")
        .expect("seq header")
        .parse()
        .expect("seq")
}

async fn produce_all(producer: &Producer, records: Vec<ProducerRecord>) -> Vec<Delivery> {
    let mut futures = Vec::new();
    for r in records {
        futures.push(producer.enqueue(r).await.expect("enqueue"));
    }
    let mut out = Vec::new();
    for f in futures {
        out.push(within(60, "delivery", f).await.expect("delivered"));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_keeps_keys_headers_order_and_java_partitioning() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 4).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());

    let records: Vec<_> = (0..200).map(|i| keyed(&topic, i)).collect();
    let deliveries = produce_all(&producer, records).await;
    for (i, d) in deliveries.iter().enumerate() {
        let key = format!("key-{}", i % 25);
        assert_eq!(
            d.partition,
            partition_for_key(key.as_bytes(), 4),
            "record {i} is not where the Java client would put key {key}"
        );
    }
    let used: HashSet<i32> = deliveries.iter().map(|d| d.partition).collect();
    assert!(
        used.len() > 1,
        "25 keys over 4 partitions used only {used:?}"
    );

    let mut consumer = RunningConsumer::start(&cluster, consumer_config(&topic)).await;
    let messages = consumer.take(200, 60).await;
    consumer.stop().await;

    let mut last_seq_per_key: HashMap<Vec<u8>, usize> = HashMap::new();
    for m in &messages {
        let i = seq(m);
        let key = format!("key-{}", i % 25);
        assert_eq!(m.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(m.value.as_deref(), Some(format!("value-{i}").as_bytes()));
        assert_eq!(m.header_str("kind"), Some("test"));
        assert_eq!(
            (m.partition, m.offset),
            (deliveries[i].partition, deliveries[i].offset),
            "record {i} read back from another place than acknowledged"
        );
        if let Some(prev) = last_seq_per_key.insert(key.into_bytes(), i) {
            assert!(prev < i, "records of one key out of order: {prev} then {i}");
        }
    }
    let seen: HashSet<usize> = messages.iter().map(seq).collect();
    assert_eq!(seen.len(), 200, "every record exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn record_timestamps_and_keyless_spread() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 3).await;
    let producer = Producer::new(
        cluster.clone(),
        ProducerConfig {
            sticky_switch_bytes: 256,
            ..ProducerConfig::default()
        },
    );
    let ts = rust_eda::kafka::produce::ProducerRecord::new(&topic)
        .value("stamped")
        .timestamp(chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap());
    let stamped = producer.send(ts).await.expect("send");

    let keyless: Vec<_> = (0..60)
        .map(|i| ProducerRecord::new(&topic).value(format!("{i:0>40}")))
        .collect();
    let deliveries = produce_all(&producer, keyless).await;
    let used: HashSet<i32> = deliveries.iter().map(|d| d.partition).collect();
    assert_eq!(
        used.len(),
        3,
        "keyless records should reach every partition"
    );

    let mut consumer = RunningConsumer::start(&cluster, consumer_config(&topic)).await;
    let messages = consumer.take(61, 60).await;
    consumer.stop().await;
    let m = messages
        .iter()
        .find(|m| (m.partition, m.offset) == (stamped.partition, stamped.offset))
        .expect("stamped record");
    assert_eq!(m.timestamp.timestamp_millis(), 1_700_000_000_123);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_codec_round_trips() {
    let cluster = cluster().await;
    for compression in [Compression::None, Compression::Gzip, Compression::Snappy] {
        let topic = create_topic(&cluster, 2).await;
        let producer = Producer::new(
            cluster.clone(),
            ProducerConfig {
                compression,
                ..ProducerConfig::default()
            },
        );
        // Repetitive values, so that a codec that silently did nothing would still
        // round-trip but a broken one would not.
        let records: Vec<_> = (0..300)
            .map(|i| {
                ProducerRecord::new(&topic)
                    .key(format!("k{i}"))
                    .value(format!("{i}-").repeat(50))
                    .header("seq", i.to_string())
            })
            .collect();
        produce_all(&producer, records).await;
        producer.close().await;

        let mut consumer = RunningConsumer::start(&cluster, consumer_config(&topic)).await;
        let messages = consumer.take(300, 60).await;
        consumer.stop().await;
        for m in &messages {
            let i = seq(m);
            assert_eq!(
                m.value.as_deref(),
                Some(format!("{i}-").repeat(50).as_bytes()),
                "{compression:?}"
            );
        }
        assert_eq!(
            messages.iter().map(seq).collect::<HashSet<_>>().len(),
            300,
            "{compression:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_restart_resumes_after_the_last_commit() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 3).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let config = consumer_config(&topic);

    // 1. Consume 100 records and stop gracefully: everything is committed.
    produce_all(&producer, (0..100).map(|i| keyed(&topic, i)).collect()).await;
    let mut first = RunningConsumer::start(&cluster, config.clone()).await;
    let got = first.take(100, 60).await;
    assert_eq!(got.iter().map(seq).collect::<HashSet<_>>().len(), 100);
    first.stop().await;

    // 2. A restarted consumer sees only what was produced since: no redelivery.
    produce_all(&producer, (100..150).map(|i| keyed(&topic, i)).collect()).await;
    let mut second = RunningConsumer::start(&cluster, config.clone()).await;
    let got = second.take(50, 60).await;
    let seqs: HashSet<usize> = got.iter().map(seq).collect();
    assert_eq!(seqs, (100..150).collect());
    let extra = second.drain_for(Duration::from_millis(800)).await;
    assert!(
        extra.is_empty(),
        "redelivered after a graceful stop: {extra:?}"
    );
    second.stop().await;

    // 3. A consumer that never commits and then crashes...
    produce_all(&producer, (150..200).map(|i| keyed(&topic, i)).collect()).await;
    let mut lazy = config.clone();
    lazy.commit_interval = Duration::from_secs(3600);
    let mut crashing = RunningConsumer::start(&cluster, lazy).await;
    let got = crashing.take(50, 60).await;
    assert_eq!(
        got.iter().map(seq).collect::<HashSet<_>>(),
        (150..200).collect()
    );
    crashing.kill().await;

    // ...is followed by one that gets exactly the uncommitted tail again.
    let mut after_crash = RunningConsumer::start(&cluster, config).await;
    let got = after_crash.take(50, 60).await;
    assert_eq!(
        got.iter().map(seq).collect::<HashSet<_>>(),
        (150..200).collect()
    );
    let extra = after_crash.drain_for(Duration::from_millis(800)).await;
    assert!(
        extra.is_empty(),
        "redelivered beyond the uncommitted tail: {extra:?}"
    );
    after_crash.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_record_is_retried_and_never_skipped() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 1).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    produce_all(&producer, (0..10).map(|i| keyed(&topic, i)).collect()).await;

    let attempts = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = {
        let attempts = Arc::clone(&attempts);
        handler_fn(move |m: Message| {
            let attempts = Arc::clone(&attempts);
            let tx = tx.clone();
            async move {
                // Record 4 fails twice before it succeeds.
                if seq(&m) == 4 && attempts.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err("downstream unavailable".into());
                }
                let _ = tx.send(seq(&m));
                Ok(())
            }
        })
    };
    let mut config = consumer_config(&topic);
    config.retry_backoff.initial = Duration::from_millis(20);
    let (trigger, task) = RunningConsumer::spawn(&cluster, config, handler).await;
    let mut order = Vec::new();
    within(30, "ten records", async {
        while order.len() < 10 {
            order.push(rx.recv().await.expect("handler alive"));
        }
    })
    .await;
    trigger.trigger();
    within(30, "shutdown", task).await.unwrap().unwrap();
    assert_eq!(
        order,
        (0..10).collect::<Vec<_>>(),
        "order kept across retries"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn latest_reset_skips_old_records_and_is_remembered() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 2).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    produce_all(&producer, (0..20).map(|i| keyed(&topic, i)).collect()).await;

    let mut config = consumer_config(&topic);
    config.auto_offset_reset = OffsetReset::Latest;
    let mut consumer = RunningConsumer::start(&cluster, config.clone()).await;
    // Wait until the reset position is committed, i.e. the consumer is in place.
    let store = OffsetStore::new(producer.clone(), config.offsets_topic.clone());
    within(30, "the reset position being committed", async {
        while store.load(&config.group_id).await.expect("load").len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    produce_all(&producer, (20..30).map(|i| keyed(&topic, i)).collect()).await;
    let got = consumer.take(10, 30).await;
    assert_eq!(
        got.iter().map(seq).collect::<HashSet<_>>(),
        (20..30).collect()
    );
    consumer.stop().await;

    let committed = store.load(&config.group_id).await.expect("load");
    let total: i64 = committed.values().sum();
    assert_eq!(total, 30, "committed offsets {committed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_topic_is_created_compacted_and_admin_is_idempotent() {
    let cluster = cluster().await;
    let admin = Admin::new(cluster.config().clone());
    let name = unique("compacted");
    let spec = TopicSpec::new(&name, 1).compacted();
    let first = within(
        30,
        "create",
        admin.ensure_topics(std::slice::from_ref(&spec)),
    )
    .await
    .expect("create");
    assert_eq!(first, vec![(name.clone(), TopicOutcome::Created)]);
    let again = within(30, "create again", admin.ensure_topics(&[spec]))
        .await
        .expect("idempotent");
    assert_eq!(
        again,
        vec![(name.clone(), TopicOutcome::Existed { partitions: 1 })]
    );
    let configs = within(30, "describe", admin.topic_configs(&name))
        .await
        .expect("describe");
    assert_eq!(
        configs.get("cleanup.policy").map(String::as_str),
        Some("compact"),
        "{configs:?}"
    );

    // A consumer creates its offsets topic the same way.
    let topic = create_topic(&cluster, 1).await;
    let config = consumer_config(&topic);
    let consumer = RunningConsumer::start(&cluster, config.clone()).await;
    consumer.stop().await;
    let counts = admin
        .partition_counts(&[config.offsets_topic.as_str()])
        .await
        .expect("metadata");
    assert_eq!(counts, vec![Some(1)]);
    let configs = admin
        .topic_configs(&config.offsets_topic)
        .await
        .expect("describe");
    assert_eq!(
        configs.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commits_keep_only_the_latest_offset_per_partition() {
    let cluster = cluster().await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let offsets_topic = unique("offsets");
    Admin::new(cluster.config().clone())
        .ensure_topics(&[rust_eda::kafka::group::offsets::offsets_topic_spec(
            &offsets_topic,
        )])
        .await
        .expect("offsets topic");
    let store = OffsetStore::new(producer, offsets_topic);
    let a = TopicPartition::new("orders", 0);
    let b = TopicPartition::new("orders", 1);
    store
        .commit("g1", &[(a.clone(), 5), (b.clone(), 7)])
        .await
        .unwrap();
    store.commit("g1", &[(a.clone(), 9)]).await.unwrap();
    store.commit("g2", &[(a.clone(), 100)]).await.unwrap();
    let g1 = store.load("g1").await.unwrap();
    assert_eq!(g1, HashMap::from([(a.clone(), 9), (b, 7)]));
    assert_eq!(store.load("g2").await.unwrap(), HashMap::from([(a, 100)]));
    assert!(store.load("nobody").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_topics_and_partitions_are_clear_errors() {
    let cluster = cluster().await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let missing = unique("missing");
    let err = producer
        .send(ProducerRecord::new(&missing).value("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProduceError::Cluster(e) if matches!(**e, ClusterError::UnknownTopic(_))),
        "{err:?}"
    );
    assert_eq!(err.fix(), Some(rust_eda::kafka::Fix::CreateTopics));
    assert!(
        rust_eda::config::hint(err.fix()).contains("scripts/create-topics.sh"),
        "{err}"
    );

    let topic = create_topic(&cluster, 2).await;
    let err = producer
        .send(ProducerRecord::new(&topic).partition(5).value("x"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("partition 5 does not exist"),
        "{err}"
    );

    let err = producer
        .send(ProducerRecord::new(&topic).value(vec![0u8; 2 * 1024 * 1024]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProduceError::RecordTooLarge { .. }),
        "{err:?}"
    );

    let err = rust_eda::kafka::Consumer::new(cluster.clone(), consumer_config(&missing))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn close_delivers_everything_accepted() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 3).await;
    let producer = Producer::new(
        cluster.clone(),
        ProducerConfig {
            linger: Duration::from_millis(50),
            ..ProducerConfig::default()
        },
    );
    let mut futures = Vec::new();
    for i in 0..1000 {
        futures.push(producer.enqueue(keyed(&topic, i)).await.expect("enqueue"));
    }
    within(60, "close", producer.close()).await;
    for f in futures {
        // Already resolved: close returns only after every batch was answered.
        let d = tokio::time::timeout(Duration::from_millis(100), f)
            .await
            .expect("resolved by close")
            .expect("delivered");
        assert!(d.offset >= 0);
    }
    let err = producer.send(keyed(&topic, 0)).await.unwrap_err();
    assert!(matches!(err, ProduceError::Closed), "{err:?}");
}

/// A producer whose linger outlasts any test, with `n` records enqueued: only a
/// flush, a close or a drop sends them.
async fn lingering(n: usize) -> (Producer, Vec<DeliveryFuture>) {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 2).await;
    let producer = Producer::new(
        cluster,
        ProducerConfig {
            linger: Duration::from_secs(600),
            ..ProducerConfig::default()
        },
    );
    let mut futures = Vec::new();
    for i in 0..n {
        futures.push(producer.enqueue(keyed(&topic, i)).await.unwrap());
    }
    (producer, futures)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_producer_still_delivers_what_it_accepted() {
    let (producer, futures) = lingering(20).await;
    drop(producer);
    for f in futures {
        within(30, "delivery after the drop", f)
            .await
            .expect("delivered");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flush_waits_for_earlier_records_only() {
    let (producer, futures) = lingering(50).await;
    within(30, "flush", producer.flush()).await;
    for f in futures {
        tokio::time::timeout(Duration::from_millis(100), f)
            .await
            .expect("flushed")
            .expect("delivered");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_loses_no_acknowledged_record() {
    let broker = PrivateBroker::start();
    let cluster = connect(&broker.brokers()).await;
    let topic = create_topic(&cluster, 3).await;
    let producer = Producer::new(
        cluster.clone(),
        ProducerConfig {
            delivery_timeout: Duration::from_secs(60),
            ..ProducerConfig::default()
        },
    );

    // Produce steadily while the broker goes down and comes back.
    // It sends until told to stop, one second after the broker is back.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sender = {
        let producer = producer.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut futures = Vec::new();
            for i in 0.. {
                futures.push((
                    i,
                    std::time::Instant::now(),
                    producer.enqueue(keyed(&topic, i)).await,
                ));
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if stop_rx.try_recv().is_ok() {
                        break;
                    }
                }
            }
            let mut results = Vec::new();
            for (i, at, f) in futures {
                let r = match f {
                    Ok(f) => f.await,
                    Err(e) => Err(e),
                };
                results.push((i, at, r));
            }
            results
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let restart_began = std::time::Instant::now();
    tokio::task::spawn_blocking({
        let data = broker.data.clone();
        let port = broker.port;
        move || {
            let out = std::process::Command::new(support::repo_root().join("scripts/broker.sh"))
                .arg("restart")
                .env("EDA_BROKER_PORT", port.to_string())
                .env("EDA_BROKER_DATA", data)
                .output()
                .expect("broker.sh");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    })
    .await
    .expect("restart");
    let restart_ended = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _ = stop_tx.send(());
    let results = within(120, "producing through the restart", sender)
        .await
        .expect("sender");
    let before = results
        .iter()
        .filter(|(_, at, _)| *at < restart_began)
        .count();
    let after = results
        .iter()
        .filter(|(_, at, _)| *at > restart_ended)
        .count();
    assert!(
        before > 0 && after > 0,
        "the restart must fall inside the produce run ({before} records before, {after} after)"
    );
    eprintln!(
        "{} records: {before} sent before the restart, {after} after it; the restart took {:?}",
        results.len(),
        restart_ended - restart_began
    );
    let results: Vec<_> = results.into_iter().map(|(i, _, r)| (i, r)).collect();

    let acked: BTreeMap<usize, Delivery> = results
        .iter()
        .filter_map(|(i, r)| r.as_ref().ok().map(|d| (*i, *d)))
        .collect();
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "with a 60 s delivery timeout every record should survive a restart: {:?}",
        failed.first()
    );

    // Read everything back from the restarted broker.
    let reader = connect(&broker.brokers()).await;
    let mut consumer = RunningConsumer::start(&reader, consumer_config(&topic)).await;
    let mut found: HashMap<(i32, i64), usize> = HashMap::new();
    within(90, "reading back every acknowledged record", async {
        while !acked
            .iter()
            .all(|(i, d)| found.get(&(d.partition, d.offset)) == Some(i))
        {
            let m = consumer.messages.recv().await.expect("consumer alive");
            found.insert((m.partition, m.offset), seq(&m));
        }
    })
    .await;
    consumer.stop().await;
    drop(broker);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_broker_gives_a_bounded_delivery_error() {
    let broker = PrivateBroker::start();
    let cluster = connect(&broker.brokers()).await;
    let topic = create_topic(&cluster, 1).await;
    let producer = Producer::new(
        cluster.clone(),
        ProducerConfig {
            delivery_timeout: Duration::from_secs(3),
            ..ProducerConfig::default()
        },
    );
    producer.send(keyed(&topic, 0)).await.expect("broker up");
    broker.stop();
    let started = std::time::Instant::now();
    let err = within(30, "a bounded failure", producer.send(keyed(&topic, 1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProduceError::DeliveryTimeout { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("not acknowledged within"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// A bootstrap broker that takes TCP connections and never answers (a paused
/// process) is passed over within a fraction of the request timeout, both by
/// rskafka's connection search and by ours (admin requests, producer ids): the
/// next broker is tried beside it after a quarter of a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_bootstrap_broker_does_not_hold_the_others() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    let brokers = format!("{silent_addr},{}", support::brokers());
    // Each attempt may wait 10 s for the silent one; five rounds in 6 s each
    // leave no room for a search that tries the brokers one after another.
    for round in 0..5 {
        let cluster = within(6, &format!("round {round}: connect"), connect(&brokers)).await;
        within(
            6,
            &format!("round {round}: an admin request"),
            create_topic(&cluster, 1),
        )
        .await;
    }
}

/// Commits are copied to the broker's own group offsets, where Kafka UI and
/// `kafka-consumer-groups.sh` read them.
#[tokio::test(flavor = "multi_thread")]
async fn commits_show_in_the_brokers_group_offsets() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 2).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let records: Vec<_> = (0..40).map(|i| keyed(&topic, i)).collect();
    let deliveries = produce_all(&producer, records).await;
    let mut expected: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    for d in &deliveries {
        let next = expected
            .entry(TopicPartition::new(&topic, d.partition))
            .or_default();
        *next = (*next).max(d.offset + 1);
    }

    let config = consumer_config(&topic);
    let group = config.group_id.clone();
    let mut consumer = RunningConsumer::start(&cluster, config).await;
    consumer.take(40, 60).await;
    consumer.stop().await;

    let seen = within(30, "the broker's group offsets catching up", async {
        loop {
            let offsets = rust_eda::kafka::group::broker_offsets::read(cluster.config(), &group)
                .await
                .expect("OffsetFetch");
            if offsets == expected {
                return offsets;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_records_are_parked_with_headers_then_replayed_once() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 1).await;
    let dlq = dead_letter::topic_for(&topic);
    Admin::new(cluster.config().clone())
        .ensure_topics(&[TopicSpec::new(&dlq, 1)])
        .await
        .expect("dead-letter topic");
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    produce_all(&producer, (0..8).map(|i| keyed(&topic, i)).collect()).await;

    // Record 2 is poison; record 5 fails every time (a webhook that stays down),
    // until `fixed` is set.
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attempts_of_5 = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = {
        let (fixed, attempts_of_5) = (Arc::clone(&fixed), Arc::clone(&attempts_of_5));
        handler_fn(move |m: Message| {
            let (fixed, attempts_of_5, tx) =
                (Arc::clone(&fixed), Arc::clone(&attempts_of_5), tx.clone());
            async move {
                if !fixed.load(Ordering::SeqCst) {
                    if seq(&m) == 2 {
                        return Err(Poison::new("not an event").into());
                    }
                    if seq(&m) == 5 {
                        attempts_of_5.fetch_add(1, Ordering::SeqCst);
                        return Err("webhook down".into());
                    }
                }
                let _ = tx.send((
                    seq(&m),
                    m.header_str(replay::REPLAYED_FROM).map(str::to_owned),
                ));
                Ok(())
            }
        })
    };
    let handler = DeadLetter::new(handler, producer.clone()).max_attempts(3);
    let mut config = consumer_config(&topic);
    config.retry_backoff.initial = Duration::from_millis(20);
    let (trigger, task) = RunningConsumer::spawn(&cluster, config, handler).await;
    let mut handled = Vec::new();
    within(30, "the six good records", async {
        while handled.len() < 6 {
            handled.push(rx.recv().await.expect("handler alive").0);
        }
    })
    .await;
    assert_eq!(
        handled,
        [0, 1, 3, 4, 6, 7],
        "the partition moved on, in order"
    );
    assert_eq!(attempts_of_5.load(Ordering::SeqCst), 3, "bounded retries");

    let parked = within(
        30,
        "reading the dead-letter topic",
        read_topic(&cluster, &dlq),
    )
    .await
    .expect("read");
    assert_eq!(parked.len(), 2);
    for (m, (n, attempts, error)) in parked
        .iter()
        .zip([(2, "1", "not an event"), (5, "3", "webhook down")])
    {
        assert_eq!(seq(m), n);
        assert_eq!(m.key.as_deref(), Some(format!("key-{n}").as_bytes()));
        assert_eq!(m.value.as_deref(), Some(format!("value-{n}").as_bytes()));
        assert_eq!(m.header_str("kind"), Some("test"), "own headers kept");
        assert_eq!(
            m.header_str(dead_letter::headers::TOPIC),
            Some(topic.as_str())
        );
        assert_eq!(m.header_str(dead_letter::headers::PARTITION), Some("0"));
        assert_eq!(
            m.header_str(dead_letter::headers::OFFSET),
            Some(n.to_string().as_str())
        );
        assert_eq!(m.header_str(dead_letter::headers::ATTEMPTS), Some(attempts));
        assert!(
            m.header_str(dead_letter::headers::ERROR)
                .unwrap()
                .contains(error)
        );
        assert!(m.header_str(dead_letter::headers::PARKED_AT).is_some());
    }

    // The cause is fixed: a replay puts both back, once, and they are handled.
    fixed.store(true, Ordering::SeqCst);
    let offsets = OffsetStore::new(producer.clone(), unique("offsets"));
    Admin::new(cluster.config().clone())
        .ensure_topics(&[offsets_topic_spec(offsets.topic())])
        .await
        .expect("offsets topic");
    let replay_all = |dry_run| {
        replay::replay(
            &producer,
            &offsets,
            replay::Replay {
                dlq_topic: &dlq,
                to: None,
                dry_run,
                targets: None,
            },
        )
    };
    let dry = replay_all(true).await.expect("dry run");
    assert_eq!(dry.replayed, BTreeMap::from([(topic.clone(), 2)]));
    // A record bound for a topic the replay may not write stops it before
    // anything is copied.
    let foreign = replay::replay(
        &producer,
        &offsets,
        replay::Replay {
            dlq_topic: &dlq,
            to: None,
            dry_run: false,
            targets: Some(&["order.created"]),
        },
    )
    .await
    .expect_err("a foreign target");
    assert!(
        matches!(&foreign, replay::ReplayError::ForeignTarget { target, .. } if *target == topic),
        "{foreign}"
    );
    let report = replay_all(false).await.expect("replay");
    assert_eq!(report.total(), 2);
    let mut replayed = Vec::new();
    within(30, "the replayed records", async {
        while replayed.len() < 2 {
            replayed.push(rx.recv().await.expect("handler alive"));
        }
    })
    .await;
    assert_eq!(
        replayed,
        [
            (2, Some(format!("{dlq}/0@0"))),
            (5, Some(format!("{dlq}/0@1")))
        ]
    );
    let again = replay_all(false).await.expect("replay again");
    assert_eq!(
        (again.total(), again.already_replayed),
        (0, 2),
        "nothing twice"
    );
    trigger.trigger();
    within(30, "shutdown", task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_produce_is_not_held_behind_a_waiting_fetch_of_the_same_partition() {
    // A broker answers one connection's requests in order. If the producer shared
    // the follower's connection, this send would wait out the 10 s fetch.
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 1).await;
    let follower = Follower::start(&cluster, &[&topic], Duration::from_secs(10), |_| {})
        .await
        .expect("follower");
    // Let the follower's first fetch reach the broker and start waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let delivery = within(
        3,
        "a send beside a waiting fetch",
        producer.send(keyed(&topic, 1)),
    )
    .await
    .expect("delivered");
    assert_eq!(delivery.partition, 0);
    follower.stop();
}

/// `describe-group` and `reset-offsets` on a group of our consumers: what it
/// owns and committed, and moving it while it is stopped, but not before.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_describes_a_group_and_resets_it_once_it_is_stopped() {
    use rust_eda::kafka::group::operator::{self, GroupCommandError, ResetTo};
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 2).await;
    let config = consumer_config(&topic);
    let (group, offsets) = (config.group_id.clone(), config.offsets_topic.clone());
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let batch = |name: &'static str| {
        (0..10)
            .map(|i| {
                ProducerRecord::new(&topic)
                    .partition(i % 2)
                    .value(format!("{name}-{i}"))
            })
            .collect::<Vec<_>>()
    };
    produce_all(&producer, batch("first")).await;
    let describe = || operator::describe(&cluster, &offsets, &group, now_ms());
    let reset = |to, execute| {
        operator::reset_offsets(&cluster, &offsets, &group, &[], to, execute, now_ms())
    };

    let mut consumer = RunningConsumer::start(&cluster, config.clone()).await;
    consumer.take(10, 30).await;
    let running = within(30, "the commits described", async {
        loop {
            let d = describe().await.unwrap();
            if d.partitions.iter().all(|p| p.committed == Some(5)) && d.partitions.len() == 2 {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(running.members.len(), 1, "{running:?}");
    let member = &running.members[0];
    assert_eq!(
        (member.state, member.partitions),
        ("active", 2),
        "{running:?}"
    );
    for p in &running.partitions {
        assert_eq!(p.owner.as_ref(), Some(&member.member));
        assert_eq!((p.log_end, p.lag), (Some(5), Some(0)), "{p:?}");
    }
    let refused = reset(ResetTo::Earliest, true).await.unwrap_err();
    assert!(
        matches!(&refused, GroupCommandError::Active { members, .. } if members.len() == 1 && members[0] == member.member),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("stop every instance"),
        "{refused}"
    );
    consumer.stop().await;

    // A point in time between two batches.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mark = rskafka::chrono::DateTime::from_timestamp_millis(now_ms()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    produce_all(&producer, batch("second")).await;

    // A dry run changes nothing.
    let plan = reset(ResetTo::Earliest, false).await.unwrap();
    assert_eq!(
        plan.iter().map(|p| (p.from, p.to)).collect::<Vec<_>>(),
        [(Some(5), 0); 2]
    );
    assert!(
        describe()
            .await
            .unwrap()
            .partitions
            .iter()
            .all(|p| p.committed == Some(5))
    );

    // To the time: the group reads the second batch only.
    let plan = reset(ResetTo::Timestamp(mark), true).await.unwrap();
    assert!(plan.iter().all(|p| p.to == 5), "{plan:?}");
    let stopped = describe().await.unwrap();
    assert!(
        stopped.members.is_empty(),
        "a member that left is gone: {stopped:?}"
    );
    assert_eq!(stopped.total_lag(), 10, "{stopped:?}");
    let mut consumer = RunningConsumer::start(&cluster, config.clone()).await;
    let values = |ms: Vec<Message>| -> BTreeSet<String> {
        ms.iter()
            .map(|m| String::from_utf8_lossy(m.value.as_deref().unwrap()).into_owned())
            .collect()
    };
    let second = values(consumer.take(10, 30).await);
    assert!(
        second.iter().all(|v| v.starts_with("second-")),
        "{second:?}"
    );
    assert!(consumer.drain_for(Duration::from_secs(1)).await.is_empty());
    consumer.stop().await;

    // To the earliest: everything again.
    reset(ResetTo::Earliest, true).await.unwrap();
    let mut consumer = RunningConsumer::start(&cluster, config.clone()).await;
    assert_eq!(values(consumer.take(20, 30).await).len(), 20);
    consumer.stop().await;

    // To the latest: nothing left to read.
    let plan = reset(ResetTo::Latest, true).await.unwrap();
    assert!(plan.iter().all(|p| p.to == 10), "{plan:?}");
    assert_eq!(describe().await.unwrap().total_lag(), 0);
}

fn now_ms() -> i64 {
    rust_eda::clock::now_millis()
}
