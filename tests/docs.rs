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

#[path = "support/contract.rs"]
#[allow(dead_code)]
mod contract;

mod asyncapi {
    use super::contract::Contract;
    use rust_eda::domain::{OrderId, OrderItem};
    use rust_eda::events::{self, Envelope, OrderCreated};
    use rust_eda::kafka::ProducerRecord;
    use rust_eda::trace::{self, TraceContext};
    use std::collections::BTreeSet;

    fn order_created() -> OrderCreated {
        OrderCreated {
            order_id: OrderId::new(),
            customer_id: "customer-1".into(),
            items: vec![OrderItem {
                product_id: "product-001".into(),
                quantity: 2,
                price: 9.5,
            }],
            total: 19.0,
            created_at: events::now(),
        }
    }

    /// An `order.created` record as the order service writes it.
    async fn record() -> ProducerRecord {
        trace::scope(TraceContext::root(), async {
            Envelope::new(order_created(), "corr-1")
                .to_record()
                .unwrap()
        })
        .await
    }

    fn check(contract: &Contract, r: &ProducerRecord) -> Result<String, String> {
        contract.check(&r.topic, r.key.as_deref(), &r.headers, r.value.as_deref())
    }

    /// The value with `edit` applied to its JSON.
    fn edited(r: &ProducerRecord, edit: impl FnOnce(&mut serde_json::Value)) -> ProducerRecord {
        let mut json: serde_json::Value =
            serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        edit(&mut json);
        let mut r = r.clone();
        r.value = Some(serde_json::to_vec(&json).unwrap());
        r
    }

    #[test]
    fn every_topic_the_system_creates_has_a_channel_and_no_other() {
        let contract = Contract::load();
        let described: BTreeSet<&str> = contract.topics().collect();
        let created: BTreeSet<String> = events::topic_specs(3, 1)
            .into_iter()
            .map(|s| s.name)
            .collect();
        let created: BTreeSet<&str> = created.iter().map(String::as_str).collect();
        assert_eq!(described, created);
    }

    #[tokio::test]
    async fn a_record_as_the_code_writes_it_passes() {
        let contract = Contract::load();
        assert_eq!(
            check(&contract, &record().await).as_deref(),
            Ok("OrderCreated")
        );
    }

    #[tokio::test]
    async fn a_renamed_field_fails_the_check() {
        let contract = Contract::load();
        let good = record().await;
        let renamed = edited(&good, |j| {
            let v = j["payload"]
                .as_object_mut()
                .unwrap()
                .remove("customer_id")
                .unwrap();
            j["payload"]["customer"] = v;
        });
        let err = check(&contract, &renamed).unwrap_err();
        assert!(
            err.contains("customer_id") && err.contains("customer"),
            "{err}"
        );

        // A field the document does not name fails too, in the envelope or deeper.
        let added = edited(&good, |j| j["payload"]["items"][0]["sku"] = "x".into());
        assert!(check(&contract, &added).unwrap_err().contains("sku"));
        let wrong_type = edited(&good, |j| j["version"] = "1".into());
        assert!(check(&contract, &wrong_type).is_err());
    }

    #[tokio::test]
    async fn a_renamed_or_missing_header_and_a_wrong_key_fail_the_check() {
        let contract = Contract::load();
        let good = record().await;
        let mut renamed = good.clone();
        let v = renamed.headers.remove("ce_type").unwrap();
        renamed.headers.insert("ce-type".into(), v);
        let err = check(&contract, &renamed).unwrap_err();
        assert!(err.contains("ce_type"), "{err}");

        // Written outside a trace, an event lacks its traceparent.
        let untraced = Envelope::new(order_created(), "c").to_record().unwrap();
        assert!(
            check(&contract, &untraced)
                .unwrap_err()
                .contains("traceparent")
        );

        let mut keyed = good.clone();
        keyed.key = Some(b"not-an-order-id".to_vec());
        assert!(check(&contract, &keyed).unwrap_err().contains("key"));

        let mut elsewhere = good;
        elsewhere.topic = "inventory.reserved".into();
        assert!(check(&contract, &elsewhere).is_err());
    }
}

/// The event contract is a valid AsyncAPI 3.0.0 document, as the
/// specification's own JSON Schema says, so AsyncAPI tools read it.
#[test]
fn the_asyncapi_document_is_valid_asyncapi_3() {
    let read = |path: &str| -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    };
    let specification = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&read("tests/fixtures/asyncapi/3.0.0.json"))
        .unwrap();
    let mut document = read("src/services/order/asyncapi.json");
    let errors: Vec<String> = specification
        .iter_errors(&document)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");

    // The check can fail: a misspelt field of a channel.
    let channel = document["channels"]["orderCreated"]
        .as_object_mut()
        .unwrap();
    let address = channel.remove("address").unwrap();
    channel.insert("adress".into(), address);
    assert!(!specification.is_valid(&document));
}
