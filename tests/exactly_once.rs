//! Exactly-once processing in one process, on Apache Kafka: a handler that
//! copies each input record to an output topic, failing now and then after
//! it wrote its copy, or stopped abruptly mid-stream and replaced. Read back
//! with `read_committed` (ours and librdkafka), the output holds each input
//! exactly once; under at-least-once the same handler leaves duplicates.
//! Crashes and pauses of real processes are in `groups.rs`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rust_eda::kafka::produce::{TransactionConfig, TransactionalProducer};
use rust_eda::kafka::{
    Admin, Cluster, ConsumerConfig, DeadLetter, Message, ProcessingGuarantee, Producer,
    ProducerConfig, ProducerRecord, TopicSpec, handler_fn, read_topic,
};
use support::{Client, RunningConsumer, brokers, cluster, create_topic, unique, within};

const PARTITIONS: i32 = 3;
const COUNT: usize = 300;

fn config(input: &str, guarantee: ProcessingGuarantee) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(unique("g"), [input]);
    config.offsets_topic = unique("offsets");
    config.fetch_max_wait = Duration::from_millis(100);
    config.session_timeout = Duration::from_secs(3);
    config.heartbeat_interval = Duration::from_millis(300);
    config.rebalance_grace = Duration::from_millis(300);
    config.retry_backoff.initial = Duration::from_millis(10);
    config.retry_backoff.max = Duration::from_millis(50);
    config.processing_guarantee = guarantee;
    config
}

async fn produce_inputs(cluster: &Cluster, topic: &str) {
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..COUNT {
        let record = ProducerRecord::new(topic)
            .key(format!("key-{i}"))
            .value(format!("input-{i}"));
        deliveries.push(producer.enqueue(record).await.expect("accepted"));
    }
    for d in deliveries {
        within(30, "an input", d).await.expect("written");
    }
    producer.close().await;
}

/// How often each input appears in the output, as `read_committed` sees it.
async fn copies(cluster: &Cluster, output: &str) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for m in within(60, "reading the output", read_topic(cluster, output))
        .await
        .expect("read")
    {
        let value = String::from_utf8_lossy(m.value.as_deref().unwrap_or_default()).into_owned();
        *copies.entry(value).or_insert(0) += 1;
    }
    copies
}

/// Waits until the output holds a copy of every input.
async fn wait_for_every_copy(cluster: &Cluster, output: &str) -> BTreeMap<String, usize> {
    wait_for_copies(cluster, output, COUNT).await
}

/// Waits until the output holds copies of at least `n` inputs.
async fn wait_for_copies(cluster: &Cluster, output: &str, n: usize) -> BTreeMap<String, usize> {
    within(120, "the inputs' copies, read_committed", async {
        loop {
            let copies = copies(cluster, output).await;
            if copies.len() >= n {
                return copies;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

/// Copies each input to `output`; every `fail_every`th input fails its first
/// attempt after its copy was sent.
fn copier(
    producer: Producer,
    output: String,
    fail_every: usize,
    calls: Arc<AtomicUsize>,
) -> impl rust_eda::kafka::Handler {
    handler_fn(move |m: Message| {
        let producer = producer.clone();
        let output = output.clone();
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            let value = m.value.clone().unwrap_or_default();
            let record = ProducerRecord::new(&output)
                .key(m.key.clone().unwrap_or_default().to_vec())
                .value(value.to_vec());
            m.send_output(&producer, record).await?;
            let n: usize = String::from_utf8_lossy(&value)
                .trim_start_matches("input-")
                .parse()
                .unwrap_or(0);
            if fail_every > 0 && n.is_multiple_of(fail_every) && m.attempt == 1 {
                return Err(format!("input {n} fails once, after its copy was sent").into());
            }
            Ok(())
        }
    })
}

async fn run_with_failures(guarantee: ProcessingGuarantee) -> (BTreeMap<String, usize>, String) {
    let cluster = cluster().await;
    let input = create_topic(&cluster, PARTITIONS).await;
    let output = create_topic(&cluster, PARTITIONS).await;
    produce_inputs(&cluster, &input).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = copier(producer.clone(), output.clone(), 7, Arc::clone(&calls));
    let (trigger, task) =
        RunningConsumer::spawn(&cluster, config(&input, guarantee), handler).await;
    let copies = wait_for_every_copy(&cluster, &output).await;
    trigger.trigger();
    within(30, "the consumer stops", task)
        .await
        .expect("task")
        .expect("consumer");
    producer.close().await;
    eprintln!(
        "{guarantee}: {} handler calls for {COUNT} inputs",
        calls.load(Ordering::Relaxed)
    );
    (copies, output)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_handler_call_leaves_no_copy_behind_under_exactly_once() {
    let (copies, output) = run_with_failures(ProcessingGuarantee::ExactlyOnce).await;
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "inputs copied more than once: {twice:?}");
    assert_eq!(copies.len(), COUNT);

    // An independent reader agrees.
    let seen = Client::Librdkafka
        .run(&[
            "consume",
            &brokers(),
            &output,
            &COUNT.to_string(),
            "read_committed",
        ])
        .await;
    assert_eq!(seen.lines().count(), COUNT, "librdkafka, read_committed");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_failures_under_at_least_once_leave_duplicates() {
    let (copies, _) = run_with_failures(ProcessingGuarantee::AtLeastOnce).await;
    let twice = copies.values().filter(|n| **n > 1).count();
    eprintln!("at-least-once: {twice} of {COUNT} inputs copied twice");
    // Every 7th input failed once after its copy was sent.
    assert_eq!(twice, COUNT.div_ceil(7), "{copies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_stopped_abruptly_mid_stream_leaves_no_duplicate_under_exactly_once() {
    let cluster = cluster().await;
    let input = create_topic(&cluster, PARTITIONS).await;
    let output = create_topic(&cluster, PARTITIONS).await;
    produce_inputs(&cluster, &input).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let config = config(&input, ProcessingGuarantee::ExactlyOnce);

    // A slow first member, stopped like a crash (no commit, no handoff, its
    // transactions left open) once it copied about a third.
    let calls = Arc::new(AtomicUsize::new(0));
    let slow = {
        let inner = copier(producer.clone(), output.clone(), 0, Arc::clone(&calls));
        let inner = Arc::new(inner);
        handler_fn(move |m: Message| {
            let inner = Arc::clone(&inner);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                rust_eda::kafka::Handler::handle(&*inner, &m).await
            }
        })
    };
    let (_, first) = RunningConsumer::spawn(&cluster, config.clone(), slow).await;
    within(60, "a third copied", async {
        while calls.load(Ordering::Relaxed) < COUNT / 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    first.abort();
    let _ = first.await;

    // Its successor fences its transactions and resumes from its last commit.
    let handler = copier(
        producer.clone(),
        output.clone(),
        0,
        Arc::new(AtomicUsize::new(0)),
    );
    let (trigger, second) = RunningConsumer::spawn(&cluster, config, handler).await;
    let copies = wait_for_every_copy(&cluster, &output).await;
    trigger.trigger();
    within(30, "the consumer stops", second)
        .await
        .expect("task")
        .expect("consumer");
    producer.close().await;
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "inputs copied more than once: {twice:?}");
}

/// `count` records `input-0`… on partition 0 of `topic`.
async fn produce_few(cluster: &Cluster, topic: &str, count: usize) {
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    for i in 0..count {
        let record = ProducerRecord::new(topic)
            .key(format!("key-{i}"))
            .value(format!("input-{i}"))
            .partition(0);
        within(30, "an input", producer.send(record))
            .await
            .expect("written");
    }
    producer.close().await;
}

/// A handler that never returns would outlast its transaction: the
/// coordinator would abort it, the partition start again, and the record be
/// offered as its first attempt for ever. Each call is cut off at the
/// transaction's deadline and counts as an attempt, so the record is parked
/// after its budget, without a call past it, and the records after it go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_hangs_is_parked_after_its_attempts_under_exactly_once() {
    let cluster = cluster().await;
    let input = create_topic(&cluster, 1).await;
    let output = create_topic(&cluster, 1).await;
    Admin::new(cluster.config().clone())
        .ensure_topics(&[TopicSpec::new(format!("{input}.dlq"), 1)])
        .await
        .expect("dead-letter topic");
    produce_few(&cluster, &input, 3).await;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let hung = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (producer, output, hung) = (producer.clone(), output.clone(), Arc::clone(&hung));
        handler_fn(move |m: Message| {
            let (producer, output, hung) = (producer.clone(), output.clone(), Arc::clone(&hung));
            async move {
                let record = ProducerRecord::new(&output)
                    .value(m.value.clone().unwrap_or_default().to_vec());
                m.send_output(&producer, record).await?;
                if m.value.as_deref() == Some(b"input-1") {
                    hung.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                Ok(())
            }
        })
    };
    let handler = DeadLetter::new(inner, producer.clone()).max_attempts(2);
    let mut config = config(&input, ProcessingGuarantee::ExactlyOnce);
    config.transaction_timeout = Duration::from_secs(2);
    let (trigger, task) = RunningConsumer::spawn(&cluster, config, handler).await;

    let parked = within(60, "the hanging record parked", async {
        loop {
            let parked = read_topic(&cluster, &format!("{input}.dlq"))
                .await
                .expect("read");
            if !parked.is_empty() {
                return parked;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].value.as_deref(), Some(&b"input-1"[..]));
    assert_eq!(parked[0].header_str("dlq.attempts"), Some("2"));
    let error = parked[0].header_str("dlq.error").unwrap_or_default();
    assert!(error.contains("did not finish in time"), "{error}");
    let copies = wait_for_copies(&cluster, &output, 2).await;
    assert_eq!(
        copies,
        BTreeMap::from([("input-0".to_owned(), 1), ("input-2".to_owned(), 1)]),
        "the hung calls' output was aborted with their transactions"
    );
    assert_eq!(
        hung.load(Ordering::SeqCst),
        2,
        "called for its two attempts only"
    );
    trigger.trigger();
    within(30, "the consumer stops", task)
        .await
        .expect("task")
        .expect("consumer");
    producer.close().await;
}

/// During a rolling upgrade a member of an earlier version, which named its
/// transactions `<group>-<topic>-<partition>`, may still hold one open. The
/// new owner fences that id too: the old transaction is aborted, its holder
/// cannot commit, and `read_committed` readers are not held back by it.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_of_an_earlier_version_is_fenced_by_the_new_owner() {
    let cluster = cluster().await;
    let input = create_topic(&cluster, 1).await;
    let output = create_topic(&cluster, 1).await;
    produce_few(&cluster, &input, 3).await;
    let config = config(&input, ProcessingGuarantee::ExactlyOnce);

    let mut legacy = TransactionConfig::new(format!("{}-{input}-0", config.group_id));
    // Longer than every wait below: only a fence ends it in time.
    legacy.transaction_timeout = Duration::from_secs(600);
    let old = TransactionalProducer::new(cluster.clone(), legacy)
        .await
        .expect("the old member's producer");
    old.begin().await.expect("begin");
    let sent = old
        .send(ProducerRecord::new(&output).value("from the old member"))
        .await
        .expect("sent");
    within(30, "the old member's record", sent)
        .await
        .expect("written");

    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let handler = copier(
        producer.clone(),
        output.clone(),
        0,
        Arc::new(AtomicUsize::new(0)),
    );
    let (trigger, task) = RunningConsumer::spawn(&cluster, config, handler).await;
    let copies = wait_for_copies(&cluster, &output, 3).await;
    assert!(
        !copies.contains_key("from the old member"),
        "the old transaction was committed: {copies:?}"
    );
    assert!(
        old.commit().await.is_err(),
        "the old member could still commit"
    );
    trigger.trigger();
    within(30, "the consumer stops", task)
        .await
        .expect("task")
        .expect("consumer");
    producer.close().await;
}
