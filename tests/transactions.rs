//! The transactional producer on Apache Kafka, read back by three readers:
//! ours, librdkafka with `read_committed`, and the Java client with
//! `read_uncommitted`, which shows that the aborted records were written to
//! the log and only the transaction markers keep them from the others.

mod support;

use std::collections::BTreeMap;

use rust_eda::kafka::{
    Cluster, ProducerRecord, TransactionConfig, TransactionError, TransactionalProducer,
    read_topic, settled,
};
use serde::Deserialize;
use support::{Client, brokers, cluster, create_topic, unique, within};

const PARTITIONS: i32 = 3;
const COUNT: usize = 30;

#[derive(Debug, Deserialize)]
struct Seen {
    value: Option<String>,
}

/// The values another client reads from `topic`, `count` of them.
async fn values_read_by(client: Client, topic: &str, count: usize, isolation: &str) -> Vec<String> {
    client
        .run(&["consume", &brokers(), topic, &count.to_string(), isolation])
        .await
        .lines()
        .map(|l| {
            serde_json::from_str::<Seen>(l)
                .expect("a JSON line")
                .value
                .unwrap_or_default()
        })
        .collect()
}

/// How many values of each kind (the part before `-`).
fn kinds(values: &[String]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for v in values {
        let kind = v.split('-').next().unwrap_or_default().to_owned();
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

async fn send_all(producer: &TransactionalProducer, topic: &str, kind: &str) {
    let mut deliveries = Vec::new();
    for i in 0..COUNT {
        let record = ProducerRecord::new(topic)
            .key(format!("key-{i}"))
            .value(format!("{kind}-{i}"));
        deliveries.push(
            within(30, "sending in a transaction", producer.send(record))
                .await
                .expect("accepted"),
        );
    }
    for delivery in deliveries {
        within(30, "a delivery", delivery).await.expect("written");
    }
}

/// A transactional producer with a transactional id of its own.
async fn new_producer(cluster: &Cluster) -> TransactionalProducer {
    within(
        60,
        "a transactional producer",
        TransactionalProducer::new(cluster.clone(), TransactionConfig::new(unique("txn"))),
    )
    .await
    .expect("a producer id from the transaction coordinator")
}

#[tokio::test(flavor = "multi_thread")]
async fn aborted_transactions_stay_invisible_to_committed_readers_and_committed_ones_arrive_whole()
{
    let cluster = cluster().await;
    let topic = create_topic(&cluster, PARTITIONS).await;
    let producer = new_producer(&cluster).await;

    for (kind, commit) in [("first", true), ("aborted", false), ("second", true)] {
        producer.begin().await.expect("begin");
        send_all(&producer, &topic, kind).await;
        if commit {
            within(30, "commit", producer.commit())
                .await
                .expect("committed");
        } else {
            within(30, "abort", producer.abort())
                .await
                .expect("aborted");
        }
    }
    // An empty transaction commits without asking the coordinator.
    producer.begin().await.expect("begin");
    producer.commit().await.expect("an empty commit");
    assert!(matches!(
        producer.commit().await,
        Err(TransactionError::NotOpen)
    ));
    producer.close().await;

    within(30, "the last commit's markers", settled(&cluster, &topic))
        .await
        .expect("settled");
    let ours: Vec<String> = within(60, "reading back", read_topic(&cluster, &topic))
        .await
        .expect("read")
        .iter()
        .map(|m| String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    let want = BTreeMap::from([("first".to_owned(), COUNT), ("second".to_owned(), COUNT)]);
    assert_eq!(kinds(&ours), want, "our reader: {ours:?}");

    let librdkafka = values_read_by(Client::Librdkafka, &topic, 2 * COUNT, "read_committed").await;
    assert_eq!(kinds(&librdkafka), want, "librdkafka, read_committed");

    // The aborted records are in the log: a reader that ignores the markers
    // gets them.
    let uncommitted = values_read_by(Client::Java, &topic, 3 * COUNT, "read_uncommitted").await;
    assert_eq!(
        kinds(&uncommitted).get("aborted"),
        Some(&COUNT),
        "the Java client, read_uncommitted: {uncommitted:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_producer_with_the_same_transactional_id_fences_the_old_one() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, PARTITIONS).await;
    let id = unique("txn");
    let new = || TransactionalProducer::new(cluster.clone(), TransactionConfig::new(id.clone()));

    let zombie = within(60, "the first producer", new())
        .await
        .expect("producer");
    zombie.begin().await.expect("begin");
    send_all(&zombie, &topic, "zombie").await;

    // Its successor's InitProducerId aborts the open transaction and fences it.
    let successor = within(60, "the second producer", new())
        .await
        .expect("producer");
    let commit = within(30, "the zombie's commit", zombie.commit()).await;
    assert!(
        matches!(&commit, Err(e) if e.is_fenced()),
        "the zombie's commit must be fenced: {commit:?}"
    );
    let again = zombie.begin().await;
    assert!(matches!(&again, Err(e) if e.is_fenced()), "{again:?}");

    successor.begin().await.expect("begin");
    send_all(&successor, &topic, "successor").await;
    within(30, "commit", successor.commit())
        .await
        .expect("committed");
    successor.close().await;
    zombie.close().await;

    within(30, "the commit's markers", settled(&cluster, &topic))
        .await
        .expect("settled");
    let values: Vec<String> = within(60, "reading back", read_topic(&cluster, &topic))
        .await
        .expect("read")
        .iter()
        .map(|m| String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(
        kinds(&values),
        BTreeMap::from([("successor".to_owned(), COUNT)]),
        "{values:?}"
    );
    let librdkafka = values_read_by(Client::Librdkafka, &topic, COUNT, "read_committed").await;
    assert_eq!(
        kinds(&librdkafka),
        BTreeMap::from([("successor".to_owned(), COUNT)])
    );
}

/// `commit` returns once the coordinator has decided the commit; it writes the
/// markers that make the records visible after that. Reading right after a
/// commit found one partition short in about a quarter of the rounds on this
/// broker; waiting until the partitions are `settled` must find every record.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_waits_until_settled_sees_the_whole_commit_it_follows() {
    let cluster = cluster().await;
    let topic = create_topic(&cluster, PARTITIONS).await;
    let producer = new_producer(&cluster).await;
    for round in 1..=40 {
        producer.begin().await.expect("begin");
        send_all(&producer, &topic, "round").await;
        within(30, "commit", producer.commit())
            .await
            .expect("committed");
        within(30, "the commit's markers", settled(&cluster, &topic))
            .await
            .expect("settled");
        let read = within(60, "reading back", read_topic(&cluster, &topic))
            .await
            .expect("read");
        assert_eq!(read.len(), round * COUNT, "round {round}");
    }
    producer.close().await;
}
