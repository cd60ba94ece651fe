//! Our Kafka layer next to the clients people run beside it, on Apache Kafka:
//! Apache Kafka's Java client (run as a source file from the broker's jars) and
//! librdkafka (confluent-kafka from PyPI, in a venv `scripts/interop-tools.sh`
//! makes). Records cross both ways with every codec and land on the partitions
//! Java's murmur2 partitioner picks, and transactions another client aborted
//! never reach our handlers while committed ones all do.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rust_eda::kafka::produce::partitioner::partition_for_key;
use rust_eda::kafka::{
    Compression, ConsumerConfig, Message, Producer, ProducerConfig, ProducerRecord,
};
use serde::Deserialize;
use support::{Client, RunningConsumer, brokers, cluster, create_topic, unique, within};

const PARTITIONS: i32 = 6;
const COUNT: usize = 60;

/// One record as the other clients print it.
#[derive(Debug, Deserialize)]
struct Seen {
    partition: i32,
    key: Option<String>,
    value: Option<String>,
}

fn consumer_config(topic: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(unique("g"), [topic]);
    config.offsets_topic = unique("offsets");
    config.fetch_max_wait = Duration::from_millis(100);
    config
}

fn text(bytes: &Option<bytes::Bytes>) -> String {
    String::from_utf8(bytes.clone().unwrap_or_default().to_vec()).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread")]
async fn records_of_java_and_librdkafka_in_every_codec_reach_us_on_their_murmur2_partitions() {
    let cluster = cluster().await;
    for client in [Client::Java, Client::Librdkafka] {
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let topic = create_topic(&cluster, PARTITIONS).await;
            client
                .run(&["produce", &brokers(), &topic, codec, &COUNT.to_string()])
                .await;
            let mut consumer = RunningConsumer::start(&cluster, consumer_config(&topic)).await;
            let messages: Vec<Message> = consumer.take(COUNT, 60).await;
            consumer.stop().await;
            let mut values: Vec<String> = Vec::new();
            for m in &messages {
                let key = text(&m.key);
                assert_eq!(
                    m.partition,
                    partition_for_key(key.as_bytes(), PARTITIONS),
                    "{client:?}/{codec}: {key} is not on the partition murmur2 picks"
                );
                assert_eq!(
                    m.header_str("origin"),
                    Some(match client {
                        Client::Java => "java",
                        Client::Librdkafka => "librdkafka",
                    })
                );
                values.push(text(&m.value));
            }
            values.sort_by_key(|v| v["value-".len()..].parse::<usize>().unwrap());
            let expected: Vec<String> = (0..COUNT).map(|i| format!("value-{i}")).collect();
            assert_eq!(values, expected, "{client:?}/{codec}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn java_and_librdkafka_read_what_we_write_where_they_would_have_put_it() {
    let cluster = cluster().await;
    for compression in [Compression::None, Compression::Gzip, Compression::Snappy] {
        let topic = create_topic(&cluster, PARTITIONS).await;
        let producer = Producer::new(
            cluster.clone(),
            ProducerConfig {
                compression,
                ..ProducerConfig::default()
            },
        );
        for i in 0..COUNT {
            let record = ProducerRecord::new(&topic)
                .key(format!("order-{i}"))
                .value(format!("{{\"n\":{i}}}"));
            within(30, "producing", producer.send(record))
                .await
                .expect("delivered");
        }
        producer.close().await;
        for client in [Client::Java, Client::Librdkafka] {
            let out = client
                .run(&["consume", &brokers(), &topic, &COUNT.to_string()])
                .await;
            let seen: Vec<Seen> = out
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect();
            assert_eq!(seen.len(), COUNT, "{client:?}/{compression:?}");
            let by_key: BTreeMap<String, (i32, String)> = seen
                .into_iter()
                .map(|s| (s.key.unwrap(), (s.partition, s.value.unwrap())))
                .collect();
            for i in 0..COUNT {
                let key = format!("order-{i}");
                assert_eq!(
                    by_key.get(&key),
                    Some(&(
                        partition_for_key(key.as_bytes(), PARTITIONS),
                        format!("{{\"n\":{i}}}")
                    )),
                    "{client:?}/{compression:?}: {key}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transactions_another_client_aborted_never_reach_us_and_committed_ones_all_do() {
    let cluster = cluster().await;
    for (client, codec) in [
        (Client::Java, "lz4"),
        (Client::Librdkafka, "zstd"),
        (Client::Java, "none"),
    ] {
        let topic = create_topic(&cluster, 3).await;
        client
            .run(&[
                "transactions",
                &brokers(),
                &topic,
                codec,
                &COUNT.to_string(),
            ])
            .await;
        // A record after the transactions: our consumer must step over the
        // markers to reach it.
        let producer = Producer::new(cluster.clone(), ProducerConfig::default());
        within(
            30,
            "producing",
            producer.send(ProducerRecord::new(&topic).key("key-0").value("after")),
        )
        .await
        .expect("delivered");
        producer.close().await;

        let mut consumer = RunningConsumer::start(&cluster, consumer_config(&topic)).await;
        let messages = consumer.take(COUNT + 1, 60).await;
        let late = consumer.drain_for(Duration::from_secs(2)).await;
        consumer.stop().await;
        let values: Vec<String> = messages
            .iter()
            .chain(&late)
            .map(|m| text(&m.value))
            .collect();
        assert!(
            values.iter().all(|v| !v.starts_with("aborted")),
            "{client:?}/{codec}: aborted records were handed over: {values:?}"
        );
        let mut committed: Vec<&String> = values
            .iter()
            .filter(|v| v.starts_with("committed"))
            .collect();
        committed.sort_by_key(|v| v["committed-".len()..].parse::<usize>().unwrap());
        assert_eq!(committed.len(), COUNT, "{client:?}/{codec}: {values:?}");
        assert_eq!(values.iter().filter(|v| *v == "after").count(), 1);
        assert_eq!(values.len(), COUNT + 1, "{client:?}/{codec}");
    }
}

/// Per partition, (current offset, lag) as `kafka-consumer-groups --describe` shows them.
async fn described(group: &str) -> BTreeMap<i32, (i64, i64)> {
    support::consumer_groups_describe(&brokers(), group)
        .await
        .into_iter()
        .map(|((_, partition), shown)| (partition, shown))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_consumer_groups_describe_shows_our_groups_offsets_and_lag() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, 3).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let produce = |range: std::ops::Range<usize>| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            for i in range {
                let record = ProducerRecord::new(&topic).key(format!("k{i}"));
                within(30, "producing", producer.send(record))
                    .await
                    .expect("delivered");
            }
        }
    };
    produce(0..30).await;
    let mut config = consumer_config(&topic);
    config.commit_interval = Duration::from_millis(200);
    let group = config.group_id.clone();
    let mut consumer = RunningConsumer::start(&cluster, config).await;
    consumer.take(30, 60).await;
    within(
        60,
        "kafka-consumer-groups showing every record consumed",
        async {
            loop {
                let shown = described(&group).await;
                let offsets: i64 = shown.values().map(|(offset, _)| offset).sum();
                if shown.len() == 3 && offsets == 30 && shown.values().all(|(_, lag)| *lag == 0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        },
    )
    .await;
    consumer.stop().await;

    // Records nobody consumes yet show as lag.
    produce(30..40).await;
    let shown = described(&group).await;
    assert_eq!(
        shown.values().map(|(_, lag)| lag).sum::<i64>(),
        10,
        "{shown:?}"
    );
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_group_state_survives_kafkas_log_cleaner() {
    use rust_eda::kafka::group::GroupState;
    use rust_eda::kafka::group::offsets::offsets_topic_spec;
    use rust_eda::kafka::{Admin, TopicPartition, read_topic};

    let cluster = cluster().await;
    let topic = create_topic(&cluster, 3).await;
    // A coordination topic the cleaner works on at once: small segments, any
    // dirty share, no compaction lag.
    let offsets = unique("offsets");
    within(
        30,
        "creating the coordination topic",
        Admin::new(cluster.config().clone()).ensure_topics(&[offsets_topic_spec(&offsets)
            .config("segment.ms", "300")
            .config("min.cleanable.dirty.ratio", "0.01")
            .config("min.compaction.lag.ms", "0")
            .config("delete.retention.ms", "100")]),
    )
    .await
    .expect("topic");
    let mut config = consumer_config(&topic);
    config.offsets_topic = offsets.clone();
    config.commit_interval = Duration::from_millis(100);
    config.session_timeout = Duration::from_secs(3);
    config.heartbeat_interval = Duration::from_millis(100);
    config.rebalance_grace = Duration::from_millis(300);
    config.broker_offsets = false;
    let group = config.group_id.clone();

    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let mut consumer = RunningConsumer::start(&cluster, config.clone()).await;
    for i in 0..100 {
        let record = ProducerRecord::new(&topic).key(format!("k{i}"));
        within(30, "producing", producer.send(record))
            .await
            .expect("delivered");
        if i % 10 == 9 {
            consumer.take(10, 60).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    consumer.stop().await;

    let state_of = |messages: &[Message]| {
        let mut state = GroupState::new(&group);
        for m in messages {
            state.apply(
                m.offset,
                m.key.as_deref(),
                m.value.as_deref(),
                Some(m.timestamp.timestamp_millis()),
            );
        }
        state
    };
    let before = within(
        30,
        "reading the coordination log",
        read_topic(&cluster, &offsets),
    )
    .await
    .expect("read");
    let state = state_of(&before);
    let committed = state.committed_offsets();
    assert_eq!(committed.values().sum::<i64>(), 100, "{committed:?}");
    let owners: Vec<_> = (0..3)
        .map(|p| state.owner(&TopicPartition::new(&topic, p)).cloned())
        .collect();

    // A record now and then rolls the active segment, which the cleaner never touches.
    let after = within(
        120,
        "Kafka's log cleaner compacting the coordination log",
        async {
            loop {
                let roll = ProducerRecord::new(&offsets)
                    .partition(0)
                    .key(r#"{"type":"other","group":"roll"}"#)
                    .value("{}");
                producer.send(roll).await.expect("delivered");
                let now = read_topic(&cluster, &offsets).await.expect("read");
                let ours = now
                    .iter()
                    .filter(|m| m.offset < before.len() as i64)
                    .count();
                if ours < before.len() / 2 {
                    break now;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        },
    )
    .await;
    let compacted = state_of(&after);
    assert_eq!(compacted.committed_offsets(), committed);
    for p in 0..3 {
        assert_eq!(
            compacted.owner(&TopicPartition::new(&topic, p)),
            owners[p as usize].as_ref()
        );
    }

    // A member that joins now reads the compacted log and resumes where the
    // group stopped: only new records reach it.
    let mut newcomer = RunningConsumer::start(&cluster, config).await;
    for i in 100..110 {
        let record = ProducerRecord::new(&topic).key(format!("k{i}"));
        within(30, "producing", producer.send(record))
            .await
            .expect("delivered");
    }
    let messages = newcomer.take(10, 60).await;
    let again = newcomer.drain_for(Duration::from_secs(2)).await;
    assert!(again.is_empty(), "records handled twice: {again:?}");
    let mut keys: Vec<String> = messages.iter().map(|m| text(&m.key)).collect();
    keys.sort();
    let mut expected: Vec<String> = (100..110).map(|i| format!("k{i}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
    newcomer.stop().await;
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_append_time_topic_gives_the_brokers_time_not_the_producers() {
    use rust_eda::kafka::{Admin, TopicSpec};
    let cluster = cluster().await;
    let topic = unique("append-time");
    within(
        30,
        "creating a LogAppendTime topic",
        Admin::new(cluster.config().clone()).ensure_topics(&[
            TopicSpec::new(&topic, 1).config("message.timestamp.type", "LogAppendTime")
        ]),
    )
    .await
    .expect("topic");
    let now = || chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now());
    let stamped = now() - chrono::Duration::hours(6);
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let before = now();
    within(
        30,
        "producing",
        producer.send(
            ProducerRecord::new(&topic)
                .key("k")
                .value("v")
                .timestamp(stamped),
        ),
    )
    .await
    .expect("delivered");
    let after = now();
    producer.close().await;
    let mut consumer = RunningConsumer::start(&cluster, consumer_config(&topic)).await;
    let message = consumer.take(1, 60).await.remove(0);
    consumer.stop().await;
    // The broker's clock is this machine's: its append time lies within the send.
    let slack = chrono::Duration::seconds(1);
    assert!(
        message.timestamp >= before - slack && message.timestamp <= after + slack,
        "{} is not the broker's time between {before} and {after} (the producer said {stamped})",
        message.timestamp
    );
}
