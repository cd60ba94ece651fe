//! The pieces of the idempotent producer against Apache Kafka: the broker hands
//! out a producer id, and a batch that carries it is written once however often
//! it is sent; without it, every send is written again.

mod support;

use std::time::Duration;

use rskafka::chrono::{DateTime, Utc};
use rskafka::client::partition::{BatchProducer, Compression, ProduceBatch};
use rskafka::record::Record;
use rust_eda::kafka::produce::init_producer_id;
use rust_eda::kafka::{Lane, read_topic};
use support::{cluster, create_topic, within};

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
    // Nothing was refused for its sequence and sent again under a new id.
    let metrics = rust_eda::metrics::render();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("eda_producer_id_renewals_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
