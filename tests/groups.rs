//! Consumer groups with real processes: membership, balanced and sticky
//! assignment, handoff on SIGTERM, takeover after SIGKILL, fencing after SIGSTOP,
//! and several inventory instances sharing scarce stock.
//!
//! Group members are child processes: this test binary run again with
//! `EDA_GROUP_CHILD` set, where [`group_member_child`] consumes as a member and
//! prints one `EDA|…` line per handled record.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use rust_eda::domain::{OrderId, OrderItem};
use rust_eda::events::{Envelope, InventoryFailed, InventoryReserved, OrderCreated, topics};
use rust_eda::kafka::group::GroupState;
use rust_eda::kafka::group::protocol::{Key, OffsetValue, OwnerValue};
use rust_eda::kafka::{
    Admin, Cluster, ClusterError, ConsumerConfig, ConsumerError, Message, OffsetError, OffsetStore,
    Producer, ProducerConfig, ProducerRecord, ReadError, TopicPartition, TopicSpec, handler_fn,
    read_topic,
};
use rust_eda::shutdown::ShutdownTrigger;
use serde::{Deserialize, Serialize};
use support::process::{Process, Webhook, configure, local_port, wait_ready};
use support::{PrivateBroker, connect, unique, within};

const SESSION_MS: u64 = 3_000;

/// Each test runs a broker and several member processes; on a small machine they
/// run one at a time, or their timing stops meaning anything.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a child prints for each record it handled.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Handled {
    member: String,
    partition: i32,
    offset: i64,
    at_ms: u128,
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The child's side: consume as member `EDA_CHILD_NAME` until SIGTERM.
#[test]
fn group_member_child() {
    let Ok(name) = std::env::var("EDA_GROUP_CHILD") else {
        return;
    };
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let cluster = connect(&env("EDA_CHILD_BROKERS")).await;
        let mut config = ConsumerConfig::new(env("EDA_CHILD_GROUP"), [env("EDA_CHILD_TOPIC")]);
        config.offsets_topic = env("EDA_CHILD_OFFSETS");
        config.member_id = Some(name.parse().expect("a member id"));
        config.session_timeout = Duration::from_millis(SESSION_MS);
        config.heartbeat_interval = Duration::from_millis(300);
        config.rebalance_grace = Duration::from_millis(500);
        config.commit_interval = Duration::from_millis(500);
        config.fetch_max_wait = Duration::from_millis(100);
        let delay = Duration::from_millis(env("EDA_CHILD_DELAY_MS").parse().unwrap());
        // With an output topic, each record is copied there: in the record's
        // transaction under exactly-once.
        let output = std::env::var("EDA_CHILD_OUTPUT").ok();
        if let Ok(guarantee) = std::env::var("EDA_CHILD_GUARANTEE") {
            config.processing_guarantee = guarantee.parse().expect("a processing guarantee");
        }
        if let Ok(ms) = std::env::var("EDA_CHILD_TRANSACTION_MS") {
            config.transaction_interval = Duration::from_millis(ms.parse().unwrap());
        }
        let producer = Producer::new(cluster.clone(), ProducerConfig::default());
        let handler = handler_fn(move |m: Message| {
            let name = name.clone();
            let output = output.clone();
            let producer = producer.clone();
            async move {
                tokio::time::sleep(delay).await;
                let line = Handled {
                    member: name,
                    partition: m.partition,
                    offset: m.offset,
                    at_ms: now_ms(),
                };
                if let Some(output) = output {
                    let record = ProducerRecord::new(output)
                        .json(&line)
                        .map_err(|e| e.to_string())?;
                    m.send_output(&producer, record).await?;
                }
                // Appended whole lines; the parent tails the file.
                let mut out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(std::env::var("EDA_CHILD_OUT").unwrap())
                    .unwrap();
                // One write per line: concurrent partitions must not interleave.
                let text = format!("{}\n", serde_json::to_string(&line).unwrap());
                out.write_all(text.as_bytes()).unwrap();
                Ok(())
            }
        });
        let consumer = rust_eda::kafka::Consumer::new(cluster.clone(), config)
            .await
            .unwrap();
        let (trigger, shutdown) = ShutdownTrigger::new();
        tokio::spawn(async move {
            let _ = rust_eda::shutdown::signal().await;
            trigger.trigger();
        });
        consumer.run(handler, shutdown).await.unwrap();
    });
}

/// A group of child processes over one topic.
struct Group {
    broker: PrivateBroker,
    cluster: Cluster,
    topic: String,
    group: String,
    offsets: String,
    /// A folder with one file of handled records per member.
    out: std::path::PathBuf,
    members: Vec<Process>,
}

impl Group {
    async fn new(partitions: i32) -> Self {
        let broker = PrivateBroker::start();
        let cluster = connect(&broker.brokers()).await;
        let topic = unique("orders");
        Admin::new(cluster.config().clone())
            .ensure_topics(&[TopicSpec::new(&topic, partitions)])
            .await
            .unwrap();
        Self {
            broker,
            cluster,
            topic,
            group: unique("g"),
            offsets: unique("offsets"),
            out: {
                let out = std::env::temp_dir().join(unique("eda-group"));
                std::fs::create_dir_all(&out).unwrap();
                out
            },
            members: Vec::new(),
        }
    }

    fn spawn(&mut self, name: &str, delay_ms: u64) {
        self.spawn_with(name, delay_ms, &[]);
    }

    /// A member with more of the child's settings (`EDA_CHILD_OUTPUT`,
    /// `EDA_CHILD_GUARANTEE`).
    fn spawn_with(&mut self, name: &str, delay_ms: u64, env: &[(&str, &str)]) {
        let mut command = Command::new(std::env::current_exe().expect("this test binary"));
        command.envs(env.iter().copied());
        command
            .args([
                "--exact",
                "group_member_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EDA_GROUP_CHILD", name)
            .env("EDA_CHILD_BROKERS", self.broker.brokers())
            .env("EDA_CHILD_GROUP", &self.group)
            .env("EDA_CHILD_TOPIC", &self.topic)
            .env("EDA_CHILD_OFFSETS", &self.offsets)
            .env("EDA_CHILD_DELAY_MS", delay_ms.to_string())
            .env("EDA_CHILD_OUT", self.out.join(format!("{name}.jsonl")))
            .env(
                "RUST_LOG",
                std::env::var("EDA_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            );
        self.members.push(Process::spawn(name, command, &self.out));
    }

    fn member(&self, name: &str) -> &Process {
        self.members
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    fn signal(&mut self, name: &str, signal: &str) {
        self.member(name).signal(signal);
    }

    async fn wait_exit(&mut self, name: &str) {
        let i = self.members.iter().position(|m| m.name == name).unwrap();
        let mut m = self.members.remove(i);
        m.wait_exit(30).await;
    }

    /// The group's state in the coordination log; empty until the first member
    /// created the log (Apache Kafka creates no topic on a read).
    async fn state(&self) -> GroupState {
        let store = OffsetStore::new(
            Producer::new(self.cluster.clone(), ProducerConfig::default()),
            &self.offsets,
        );
        match store.group_state(&self.group).await {
            Ok(state) => state,
            Err(OffsetError::Read(ReadError::Cluster {
                source: ClusterError::UnknownTopic(_),
                ..
            })) => GroupState::new(&self.group),
            Err(e) => panic!("reading the group state: {e}"),
        }
    }

    /// Waits until exactly `members` own every partition, balanced.
    async fn wait_balanced(&self, members: &[&str], partitions: i32) -> BTreeMap<String, Vec<i32>> {
        within(
            60,
            &format!("{members:?} owning {partitions} partitions, balanced"),
            async {
                loop {
                    let state = self.state().await;
                    let mut owned: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                    for p in 0..partitions {
                        let owner = state.owner(&TopicPartition::new(&self.topic, p));
                        if let Some(member) = owner.and_then(|o| o.member.clone()) {
                            owned.entry(member).or_default().push(p);
                        }
                    }
                    let counts: Vec<usize> = members
                        .iter()
                        .map(|m| owned.get(*m).map_or(0, Vec::len))
                        .collect();
                    let total: usize = counts.iter().sum();
                    let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                    if total == partitions as usize && hi - lo <= 1 && *lo > 0 {
                        return owned;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        )
        .await
    }

    /// Produces `n` keyed records; returns their (partition, offset).
    async fn produce(&self, n: usize) -> Vec<(i32, i64)> {
        let producer = Producer::new(self.cluster.clone(), ProducerConfig::default());
        let mut futures = Vec::new();
        for i in 0..n {
            let record = ProducerRecord::new(&self.topic)
                .key(uuid::Uuid::new_v4().to_string())
                .value(i.to_string());
            futures.push(producer.enqueue(record).await.unwrap());
        }
        let mut out = Vec::new();
        for f in futures {
            let d = f.await.unwrap();
            out.push((d.partition, d.offset));
        }
        out
    }

    /// Waits until every one of `records` was handled at least once.
    async fn wait_handled(&self, records: &[(i32, i64)]) {
        let wanted: HashSet<(i32, i64)> = records.iter().copied().collect();
        within(90, &format!("{} records handled", wanted.len()), async {
            loop {
                let seen: HashSet<(i32, i64)> = self
                    .handled()
                    .iter()
                    .map(|h| (h.partition, h.offset))
                    .collect();
                if wanted.is_subset(&seen) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }

    /// Every handling reported so far, in the order each member reported them.
    fn handled(&self) -> Vec<Handled> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&self.out).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "jsonl") {
                continue;
            }
            let text = std::fs::read_to_string(path).unwrap_or_default();
            // A line being written may be incomplete; complete lines end with '\n'.
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                all.push(serde_json::from_str(line.trim_end()).unwrap());
            }
        }
        all.sort_by_key(|h: &Handled| h.at_ms);
        all
    }

    /// How often each record was handled.
    fn handled_counts(&self) -> HashMap<(i32, i64), Vec<Handled>> {
        let mut counts: HashMap<(i32, i64), Vec<Handled>> = HashMap::new();
        for h in self.handled().iter() {
            counts
                .entry((h.partition, h.offset))
                .or_default()
                .push(h.clone());
        }
        counts
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
            if std::thread::panicking() {
                m.dump_log(25);
            }
        }
        let _ = std::fs::remove_dir_all(&self.out);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn members_share_partitions_and_a_newcomer_gets_its_share() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut group = Group::new(6).await;
    for name in ["a", "b", "c"] {
        group.spawn(name, 0);
    }
    let owned = group.wait_balanced(&["a", "b", "c"], 6).await;
    assert!(owned.values().all(|p| p.len() == 2), "{owned:?}");

    let first = group.produce(600).await;
    group.wait_handled(&first).await;

    group.spawn("d", 0);
    let after = group.wait_balanced(&["a", "b", "c", "d"], 6).await;
    assert_eq!(after["d"].len(), 1, "{after:?}");
    // Sticky: the join moved only what it had to.
    let moved: usize = ["a", "b", "c"]
        .iter()
        .map(|m| {
            owned[*m]
                .iter()
                .filter(|p| !after.get(*m).is_some_and(|a| a.contains(p)))
                .count()
        })
        .sum();
    assert_eq!(moved, 1, "before {owned:?}, after {after:?}");

    let second = group.produce(400).await;
    group.wait_handled(&second).await;
    let counts = group.handled_counts();
    let twice: Vec<_> = counts.iter().filter(|(_, h)| h.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "handled twice with graceful handoffs only: {twice:?}"
    );
    // Each record was handled by the member that owned its partition at the time;
    // the newcomer handled only records of its own partition.
    let d_partitions: HashSet<i32> = counts
        .values()
        .flatten()
        .filter(|h| h.member == "d")
        .map(|h| h.partition)
        .collect();
    assert!(
        d_partitions.iter().all(|p| after["d"].contains(p)),
        "{d_partitions:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hands_over_cleanly_and_sigkill_redelivers_only_the_uncommitted_tail() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut group = Group::new(6).await;
    for name in ["a", "b", "c"] {
        group.spawn(name, 2);
    }
    let before = group.wait_balanced(&["a", "b", "c"], 6).await;
    let first = group.produce(300).await;
    group.wait_handled(&first).await;

    // SIGTERM: c commits and hands over; nothing is handled twice.
    group.signal("c", "TERM");
    group.wait_exit("c").await;
    let after_term = group.wait_balanced(&["a", "b"], 6).await;
    for p in &before["c"] {
        assert!(
            !after_term.values().flatten().all(|q| q != p),
            "partition {p} lost"
        );
    }
    let second = group.produce(300).await;
    group.wait_handled(&second).await;
    let twice: Vec<_> = group
        .handled_counts()
        .into_iter()
        .filter(|(_, h)| h.len() > 1)
        .collect();
    assert!(twice.is_empty(), "handled twice after a SIGTERM: {twice:?}");

    // SIGKILL b in the middle of a burst: its partitions move after the session
    // timeout, from its last commit.
    let burst = group.produce(600).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    group.signal("b", "KILL");
    group.wait_exit("b").await;
    let killed_at = now_ms();
    group.wait_balanced(&["a"], 6).await;
    group.wait_handled(&burst).await;

    let state = group.state().await;
    let counts = group.handled_counts();
    eprintln!(
        "after SIGKILL: {} of {} records handled twice (b's uncommitted tail)",
        counts.values().filter(|h| h.len() > 1).count(),
        counts.len()
    );
    for ((partition, offset), handlings) in counts {
        if handlings.len() == 1 {
            continue;
        }
        // Only records b handled and did not commit come again, on b's partitions.
        assert_eq!(handlings.len(), 2, "{partition}@{offset}: {handlings:?}");
        assert_eq!(
            handlings[0].member, "b",
            "{partition}@{offset}: {handlings:?}"
        );
        assert!(handlings[0].at_ms <= killed_at);
        let takeover = state
            .owner(&TopicPartition::new(&group.topic, partition))
            .unwrap();
        assert!(
            offset >= takeover.start,
            "{partition}@{offset} was committed (takeover started at {}), yet handled again",
            takeover.start
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_member_is_fenced_and_neither_processes_nor_commits_moved_partitions() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut group = Group::new(4).await;
    group.spawn("a", 0);
    group.spawn("b", 0);
    let before = group.wait_balanced(&["a", "b"], 4).await;
    let first = group.produce(100).await;
    group.wait_handled(&first).await;

    // Pause a well past its session timeout; b takes a's partitions meanwhile.
    group.signal("a", "STOP");
    let paused_at = now_ms();
    group.wait_balanced(&["b"], 4).await;
    let during = group.produce(200).await;
    group.wait_handled(&during).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    group.signal("a", "CONT");
    tokio::time::sleep(Duration::from_millis(SESSION_MS * 2)).await;

    // Every record produced during the pause was handled exactly once, by b (or
    // by a only after b handed a partition back).
    let counts = group.handled_counts();
    for record in &during {
        let h = &counts[record];
        assert_eq!(h.len(), 1, "{record:?} handled {} times: {h:?}", h.len());
    }

    // a wrote no commit in its old epoch after b had claimed the partition.
    let (records, _) = rust_eda::kafka::fetch::read_partition(&group.cluster, &group.offsets, 0)
        .await
        .unwrap();
    let mut claimed: HashMap<i32, i64> = HashMap::new();
    for r in &records {
        let Some(key) = r.key.as_deref().and_then(Key::decode) else {
            continue;
        };
        let Some(value) = r.value.as_deref() else {
            continue;
        };
        match key {
            Key::Owner {
                partition,
                group: g,
                ..
            } if g == group.group => {
                let owner: OwnerValue = serde_json::from_slice(value).unwrap();
                if owner.is("b") && before["a"].contains(&partition) {
                    claimed.entry(partition).or_insert(owner.epoch);
                }
            }
            Key::Offset {
                partition,
                group: g,
                ..
            } if g == group.group => {
                let commit: OffsetValue = serde_json::from_slice(value).unwrap();
                if let Some(epoch) = claimed.get(&partition) {
                    assert!(
                        !(commit.member.as_deref() == Some("a") && commit.epoch < Some(*epoch)),
                        "a committed {partition} in a stale epoch after b claimed it: {commit:?}"
                    );
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        claimed.len(),
        before["a"].len(),
        "b claimed all of a's partitions"
    );
    // After its pause a rejoins and gets its share back through clean handoffs.
    group.wait_balanced(&["a", "b"], 4).await;
    let _ = paused_at;
}

/// Exactly-once through a pause: a member stopped (SIGSTOP) in the middle of
/// its transactions, past its session timeout, loses its partitions to the
/// other member, whose producers fence its transactional ids. Continued
/// (SIGCONT), it finds its lease gone and its transactions fenced: the
/// output, read committed, holds each input exactly once, and nothing the
/// paused member wrote after it lost its partitions.
#[tokio::test(flavor = "multi_thread")]
async fn a_paused_member_cannot_commit_output_for_partitions_it_lost_under_exactly_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut group = Group::new(4).await;
    let output = unique("copies");
    Admin::new(group.cluster.config().clone())
        .ensure_topics(&[TopicSpec::new(&output, 4)])
        .await
        .unwrap();
    // Slow handlers and long transactions: whenever a is paused, a
    // transaction of it is open with copies in it.
    let env = [
        ("EDA_CHILD_OUTPUT", output.as_str()),
        ("EDA_CHILD_GUARANTEE", "exactly_once"),
        ("EDA_CHILD_TRANSACTION_MS", "1000"),
    ];
    group.spawn_with("a", 20, &env);
    group.spawn_with("b", 20, &env);
    group.wait_balanced(&["a", "b"], 4).await;
    let first = group.produce(400).await;
    // Stopped in the middle of the work, its transactions open.
    within(60, "a at work", async {
        while group.handled().iter().filter(|h| h.member == "a").count() < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    group.signal("a", "STOP");
    let paused_at = now_ms();

    group.wait_balanced(&["b"], 4).await;
    let during = group.produce(100).await;
    group.wait_handled(&first).await;
    group.wait_handled(&during).await;
    group.signal("a", "CONT");
    let continued_at = now_ms();
    // a notices its lease is gone, and later rejoins and gets a share back.
    group.wait_balanced(&["a", "b"], 4).await;

    let inputs: HashSet<(i32, i64)> = first.iter().chain(&during).copied().collect();
    let copies = within(90, "a copy of every input", async {
        loop {
            let copies: Vec<Handled> = read_topic(&group.cluster, &output)
                .await
                .unwrap()
                .iter()
                .map(|m| serde_json::from_slice(m.value.as_deref().unwrap()).unwrap())
                .collect();
            let seen: HashSet<(i32, i64)> =
                copies.iter().map(|h| (h.partition, h.offset)).collect();
            if inputs.is_subset(&seen) {
                return copies;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let mut count: HashMap<(i32, i64), Vec<&Handled>> = HashMap::new();
    for c in &copies {
        count.entry((c.partition, c.offset)).or_default().push(c);
    }
    for input in &inputs {
        let c = &count[input];
        assert_eq!(c.len(), 1, "{input:?} copied {} times: {c:?}", c.len());
    }
    // a's transaction open at the pause was fenced: the inputs it had handled
    // in it were handled again by b, and the copy that counts is b's.
    let handled = group.handled();
    let by_a: HashSet<(i32, i64)> = handled
        .iter()
        .filter(|h| h.member == "a" && h.at_ms < paused_at)
        .map(|h| (h.partition, h.offset))
        .collect();
    let redone: Vec<(i32, i64)> = handled
        .iter()
        .filter(|h| h.member == "b" && h.at_ms > paused_at)
        .map(|h| (h.partition, h.offset))
        .filter(|input| by_a.contains(input))
        .collect();
    assert!(
        !redone.is_empty(),
        "a had no transaction open when it was paused; nothing was fenced"
    );
    for input in &redone {
        assert_eq!(count[input][0].member, "b", "{input:?}: {:?}", count[input]);
    }
    eprintln!(
        "{} inputs a handled in its fenced transaction were done again by b; {} copies a made after it continued are visible",
        redone.len(),
        copies
            .iter()
            .filter(|c| c.member == "a" && c.at_ms >= continued_at)
            .count()
    );
}

/// What a race of inventory instances for scarce stock ended with.
struct Race {
    /// Outcome records per order, as `read_committed` reads them.
    outcomes: HashMap<String, usize>,
    /// Orders with both a reservation and a rejection.
    both: Vec<String>,
    /// Units of the scarce product reserved, counting each order once.
    scarce_reserved: u64,
    /// Records in `inventory.reserved` and in `inventory.failed`.
    reserved_records: usize,
    failed_records: usize,
    brokers: String,
    _broker: PrivateBroker,
}

/// The partitions of `order.created` the inventory service on operations
/// port `port` owns, by its `/metrics`.
async fn owned_partitions(port: u16) -> f64 {
    support::metrics_page(port)
        .await
        .lines()
        .filter_map(|l| {
            l.strip_prefix("eda_consumer_owned_partitions{group=\"inventory-service\"} ")
        })
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// Real inventory-service processes, one group, racing for scarce stock with
/// `guarantee`; one is killed (SIGKILL) once about a third of the 1,000 orders
/// are decided, and started again.
async fn inventory_race(guarantee: &str) -> Race {
    let broker = PrivateBroker::start();
    let dir = std::env::temp_dir().join(unique("eda-inventory"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("stock.json"),
        r#"{"scarce": 150, "plenty": 100000}"#,
    )
    .unwrap();
    // No notification service runs: the webhook is never called.
    let webhook = Webhook::start().await;
    // Three instances on one host: each its own operations port, where it
    // answers /ready and reports the partitions it owns.
    let spawn = |name: &str, port: u16| {
        let mut command = support::service_command("inventory-service");
        configure(&mut command, &broker.brokers(), &dir, webhook.addr, 6);
        command
            .env("APP_METRICS_PORT", port.to_string())
            .env("APP_KAFKA_SESSION_TIMEOUT_MS", SESSION_MS.to_string())
            .env("APP_KAFKA_PROCESSING_GUARANTEE", guarantee)
            .env("APP_LOGGER_LEVEL", "info");
        Process::spawn(name, command, &dir)
    };
    let ports: Vec<u16> = (0..3).map(|_| local_port()).collect();
    let mut instances: Vec<Process> = (0..3)
        .map(|i| spawn(&format!("inv{i}"), ports[i]))
        .collect();
    // Every instance owns partitions before the race, so that the one killed
    // in the middle of it is an owner with work in flight.
    for (i, port) in ports.iter().enumerate() {
        wait_ready(*port, &format!("inv{i}"), 90).await;
    }
    within(60, "every instance owning partitions", async {
        for port in &ports {
            while owned_partitions(*port).await == 0.0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .await;

    let cluster = connect(&broker.brokers()).await;

    // 1,000 orders; about 2,000 units of "scarce" are asked for, 150 exist.
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let mut orders = HashSet::new();
    let mut futures = Vec::new();
    for i in 0..1000u64 {
        let order = OrderCreated {
            order_id: OrderId::new(),
            customer_id: format!("c{i}"),
            items: vec![
                OrderItem {
                    product_id: "scarce".into(),
                    quantity: 1 + i % 3,
                    price: 1.0,
                },
                OrderItem {
                    product_id: "plenty".into(),
                    quantity: 1,
                    price: 1.0,
                },
            ],
            total: 0.0,
            created_at: rust_eda::events::now(),
        };
        orders.insert(order.order_id.to_string());
        futures.push(
            producer
                .enqueue(Envelope::new(order, "race").to_record().unwrap())
                .await
                .unwrap(),
        );
    }
    for f in futures {
        f.await.unwrap();
    }

    /// Outcome records per order, and whether an order has both kinds.
    async fn outcomes(cluster: &Cluster) -> (Vec<InventoryReserved>, Vec<InventoryFailed>) {
        let reserved = read_topic(cluster, topics::INVENTORY_RESERVED)
            .await
            .unwrap()
            .iter()
            .map(|m| Envelope::<InventoryReserved>::decode(m).unwrap().payload)
            .collect();
        let failed = read_topic(cluster, topics::INVENTORY_FAILED)
            .await
            .unwrap()
            .iter()
            .map(|m| Envelope::<InventoryFailed>::decode(m).unwrap().payload)
            .collect();
        (reserved, failed)
    }
    let decided = |(reserved, failed): &(Vec<InventoryReserved>, Vec<InventoryFailed>)| {
        reserved
            .iter()
            .map(|r| r.order_id.to_string())
            .chain(failed.iter().map(|f| f.order_id.to_string()))
            .collect::<HashSet<String>>()
            .len()
    };

    // A crash in the middle of the race: the instance's open transactions
    // stay open until its partitions' next owner fences them.
    within(120, "a third of the orders decided", async {
        while decided(&outcomes(&cluster).await) < 300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    instances[1].kill();
    instances[1] = spawn("inv1-again", ports[1]);
    wait_ready(ports[1], "inv1-again", 90).await;

    let started = Instant::now();
    let (reserved, failed) = within(240, "every order decided", async {
        loop {
            let read = outcomes(&cluster).await;
            if decided(&read) == orders.len() {
                return read;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    eprintln!(
        "{guarantee}: 1,000 orders decided by 3 instances (one killed) in {:?} after a third were",
        started.elapsed()
    );
    // Late outcomes of the killed instance's redelivered tail would show by now.
    tokio::time::sleep(Duration::from_millis(SESSION_MS)).await;
    let (reserved_late, failed_late) = outcomes(&cluster).await;
    assert!(reserved_late.len() >= reserved.len() && failed_late.len() >= failed.len());

    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut scarce_reserved = 0;
    let mut reserved_orders = HashSet::new();
    for r in &reserved_late {
        *outcomes.entry(r.order_id.to_string()).or_default() += 1;
        if reserved_orders.insert(r.order_id) {
            scarce_reserved += r
                .items
                .iter()
                .filter(|i| i.product_id == "scarce")
                .map(|i| i.quantity)
                .sum::<u64>();
        }
    }
    let mut both = Vec::new();
    for f in &failed_late {
        *outcomes.entry(f.order_id.to_string()).or_default() += 1;
        if reserved_orders.contains(&f.order_id) {
            both.push(f.order_id.to_string());
        }
    }
    assert_eq!(outcomes.len(), 1000, "every order has an outcome");
    drop(instances);
    let _ = std::fs::remove_dir_all(dir);
    Race {
        outcomes,
        both,
        scarce_reserved,
        reserved_records: reserved_late.len(),
        failed_records: failed_late.len(),
        brokers: broker.brokers(),
        _broker: broker,
    }
}

fn assert_ledger_consistent(race: &Race) {
    assert!(
        race.scarce_reserved <= 150,
        "oversold: {} of 150 reserved",
        race.scarce_reserved
    );
    assert!(
        race.scarce_reserved >= 148,
        "stock left unsold: only {} of 150 reserved",
        race.scarce_reserved
    );
    assert!(
        race.both.is_empty(),
        "orders both reserved and rejected: {:?}",
        race.both
    );
}

/// Exactly-once: with an instance killed mid-race, the outcome topics, read
/// with `read_committed` by us and by librdkafka, hold exactly one outcome per
/// order, and no product is oversold.
#[tokio::test(flavor = "multi_thread")]
async fn inventory_instances_never_oversell_and_publish_each_outcome_once_under_exactly_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let race = inventory_race("exactly_once").await;
    assert_ledger_consistent(&race);
    let twice: Vec<_> = race.outcomes.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        twice.is_empty(),
        "orders with more than one outcome: {twice:?}"
    );

    // An independent reader agrees: each topic's records, read committed by
    // librdkafka, name as many distinct orders as there are records.
    let mut orders = HashSet::new();
    for (topic, records) in [
        (topics::INVENTORY_RESERVED, race.reserved_records),
        (topics::INVENTORY_FAILED, race.failed_records),
    ] {
        let out = support::Client::Librdkafka
            .run(&[
                "consume",
                &race.brokers,
                topic,
                &records.to_string(),
                "read_committed",
            ])
            .await;
        for line in out.lines() {
            let seen: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let event: serde_json::Value =
                serde_json::from_str(seen["value"].as_str().expect("a value")).expect("an event");
            let order = event["payload"]["order_id"].to_string();
            assert!(
                orders.insert(order.clone()),
                "librdkafka read {order} twice"
            );
        }
    }
    assert_eq!(orders.len(), 1000, "librdkafka, read_committed");
}

/// The same race under at-least-once: what the duplicates would have been.
/// The inventory deduplicates what it sees published, so they are few; the
/// ledger stays consistent either way.
#[tokio::test(flavor = "multi_thread")]
async fn inventory_instances_never_oversell_under_at_least_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let race = inventory_race("at_least_once").await;
    assert_ledger_consistent(&race);
    let duplicates: usize = race.outcomes.values().map(|n| n - 1).sum();
    eprintln!("at_least_once: {duplicates} duplicate outcome records for 1,000 orders");
}

/// Dropped with the handler's future: says whether the call was abandoned.
struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A member cut off from the broker must not finish a record that another
/// member may take over once its session times out: a handler call still
/// waiting when the lease runs out is dropped, whatever the member's main loop
/// is doing.
#[tokio::test(flavor = "multi_thread")]
async fn a_handler_call_still_waiting_when_the_lease_runs_out_is_abandoned() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _serial = ONE_AT_A_TIME.lock().await;
    let broker = PrivateBroker::start();
    let cluster = connect(&broker.brokers()).await;
    let topic = unique("orders");
    Admin::new(cluster.config().clone())
        .ensure_topics(&[TopicSpec::new(&topic, 1)])
        .await
        .unwrap();
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    within(
        30,
        "producing a record",
        producer.send(ProducerRecord::new(&topic).value("stuck")),
    )
    .await
    .unwrap();

    let mut config = ConsumerConfig::new(unique("g"), [topic.clone()]);
    config.offsets_topic = unique("offsets");
    config.session_timeout = Duration::from_millis(SESSION_MS);
    config.heartbeat_interval = Duration::from_millis(300);
    config.rebalance_grace = Duration::from_millis(300);
    config.broker_offsets = false;
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let abandoned = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&abandoned);
    let handler = handler_fn(move |_: Message| {
        let guard = DropFlag(Arc::clone(&flag));
        if let Some(tx) = started_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let consumer = within(
        30,
        "preparing a consumer",
        rust_eda::kafka::Consumer::new(cluster.clone(), config),
    )
    .await
    .expect("consumer");
    let (trigger, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(consumer.run(handler, shutdown));
    within(60, "the handler getting the record", started)
        .await
        .unwrap();
    assert!(!abandoned.load(Ordering::Acquire));

    // No heartbeat reaches the broker from now on: the lease ends within ⅔ of
    // the session timeout after the last one.
    broker.stop();
    within(20, "the waiting handler call being dropped", async {
        while !abandoned.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    trigger.trigger();
    task.abort();
}

/// Liveness is measured in the broker's time: a coordination topic stamped by
/// clients is refused with the command that fixes it, and a record a client
/// stamped half an hour ahead does not make the group's members look dead
/// (brokers refuse client stamps more than an hour ahead by default).
#[tokio::test(flavor = "multi_thread")]
async fn the_group_runs_on_broker_time_whatever_a_client_stamps() {
    use rust_eda::kafka::group::protocol::MemberValue;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let _serial = ONE_AT_A_TIME.lock().await;
    let broker = PrivateBroker::start();
    let cluster = connect(&broker.brokers()).await;
    let admin = Admin::new(cluster.config().clone());
    let topic = unique("orders");
    let client_stamped = unique("offsets");
    within(
        30,
        "creating topics",
        admin.ensure_topics(&[
            TopicSpec::new(&topic, 2),
            TopicSpec::new(&client_stamped, 1)
                .compacted()
                .config("message.timestamp.type", "CreateTime"),
        ]),
    )
    .await
    .unwrap();

    let mut config = ConsumerConfig::new(unique("g"), [topic.clone()]);
    config.session_timeout = Duration::from_millis(SESSION_MS);
    config.heartbeat_interval = Duration::from_millis(300);
    config.rebalance_grace = Duration::from_millis(300);
    config.broker_offsets = false;
    config.offsets_topic = client_stamped.clone();
    let refused = within(
        30,
        "preparing a consumer",
        rust_eda::kafka::Consumer::new(cluster.clone(), config.clone()),
    )
    .await
    .expect_err("a CreateTime coordination topic must be refused");
    assert!(
        matches!(refused, ConsumerError::CreateTimeCoordination { .. })
            && refused.fix() == Some(rust_eda::kafka::Fix::LogAppendTime)
            && rust_eda::config::hint(refused.fix()).contains("kafka-configs.sh"),
        "{refused}"
    );

    // The consumer creates its coordination topic; a client then writes a
    // record stamped half an hour ahead into it before the member joins.
    config.offsets_topic = unique("offsets");
    let consumer = within(
        30,
        "preparing a consumer",
        rust_eda::kafka::Consumer::new(cluster.clone(), config.clone()),
    )
    .await
    .expect("consumer");
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let skewed = MemberValue {
        topics: BTreeMap::new(),
        session_timeout_ms: SESSION_MS as i64,
        leaving: true,
    };
    let ahead = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        + chrono::Duration::minutes(30);
    within(
        30,
        "writing a record stamped half an hour ahead",
        producer.send(
            ProducerRecord::new(&config.offsets_topic)
                .partition(0)
                .key(
                    Key::Member {
                        group: config.group_id.clone(),
                        member: "skewed-clock".into(),
                    }
                    .encode(),
                )
                .value(serde_json::to_vec(&skewed).unwrap())
                .timestamp(ahead),
        ),
    )
    .await
    .unwrap();

    let handled = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&handled);
    let handler = handler_fn(move |_: Message| {
        let count = Arc::clone(&count);
        async move {
            count.fetch_add(1, Ordering::AcqRel);
            Ok(())
        }
    });
    let (trigger, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(consumer.run(handler, shutdown));
    for i in 0..20 {
        within(
            30,
            "producing",
            producer.send(ProducerRecord::new(&topic).key(format!("k{i}"))),
        )
        .await
        .unwrap();
    }
    within(60, "the member handling every record", async {
        while handled.load(Ordering::Acquire) < 20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    trigger.trigger();
    within(30, "the consumer stopping", task)
        .await
        .unwrap()
        .unwrap();
}
