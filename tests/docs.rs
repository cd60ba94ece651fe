//! The documents say what the code does: the defaults `docs/kafka-layer.md`
//! lists are the Kafka layer's own, read from its builders. (The services'
//! variables are generated into `docs/configuration.md` and checked by a unit
//! test of `config`.) No broker needed.

use std::path::Path;
use std::time::Duration;

use rust_eda::kafka::{ClusterConfig, ConsumerConfig, OffsetReset, ProducerConfig};

/// A duration as the document writes it: `5 ms`, `30 s`, `5 min`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{} s", ms / 1_000)
    } else {
        format!("{ms} ms")
    }
}

/// A size as the document writes it: `1 MiB`.
fn size(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

#[test]
fn the_kafka_layer_document_lists_its_defaults() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/kafka-layer.md"))
            .expect("docs/kafka-layer.md");
    let row = |setting: &str| -> String {
        let start = format!("| `{setting}` |");
        doc.lines()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("docs/kafka-layer.md has no row for `{setting}`"))
            .to_owned()
    };
    let producer = ProducerConfig::default();
    let consumer = ConsumerConfig::new("g", ["t"]);
    let cluster = ClusterConfig::new(vec!["localhost:9092".to_owned()]);
    let expected = [
        ("linger", duration(producer.linger)),
        ("batch_max_bytes", size(producer.batch_max_bytes as u64)),
        ("buffer_memory", size(producer.buffer_memory as u64)),
        (
            "idempotence",
            if producer.idempotence { "on" } else { "off" }.to_owned(),
        ),
        ("max_in_flight", producer.max_in_flight.to_string()),
        ("delivery_timeout", duration(producer.delivery_timeout)),
        ("request_timeout", duration(cluster.request_timeout)),
        ("metadata_max_age", duration(cluster.metadata_max_age)),
        ("commit_interval", duration(consumer.commit_interval)),
        (
            "fetch_max_bytes",
            size(u64::try_from(consumer.fetch_max_bytes).expect("a positive limit")),
        ),
        ("fetch_max_wait", duration(consumer.fetch_max_wait)),
        (
            "auto_offset_reset",
            match consumer.auto_offset_reset {
                OffsetReset::Earliest => "earliest".to_owned(),
                OffsetReset::Latest => "latest".to_owned(),
            },
        ),
        (
            "processing_guarantee",
            consumer.processing_guarantee.to_string(),
        ),
        (
            "transaction_interval",
            duration(consumer.transaction_interval),
        ),
        (
            "transaction_max_records",
            consumer.transaction_max_records.to_string(),
        ),
        (
            "transaction_timeout",
            duration(consumer.transaction_timeout),
        ),
    ];
    for (setting, value) in expected {
        let row = row(setting);
        let default = row.split('|').nth(2).unwrap_or_default().trim();
        assert!(
            default.starts_with(&value),
            "docs/kafka-layer.md says `{setting}` defaults to {default:?}; the code says {value}"
        );
    }
    for (setting, value) in [
        ("session_timeout", consumer.session_timeout),
        ("heartbeat_interval", consumer.heartbeat_interval),
        ("rebalance_grace", consumer.rebalance_grace),
    ] {
        let said = format!("`{setting}` ({})", duration(value));
        assert!(
            doc.contains(&said),
            "docs/kafka-layer.md does not say {said}"
        );
    }
}
