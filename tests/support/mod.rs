//! Shared by the integration tests: a real broker, unique names, bounded waits.
//!
//! The tests talk to a real Apache Kafka broker over TCP. `scripts/test.sh`
//! starts one and exports its address as `EDA_TEST_BROKERS`; a plain `cargo test`
//! starts (or reuses) the local broker through `scripts/broker.sh`. When no broker
//! can be had, the tests fail and say why; they never skip.

#![allow(dead_code)]

pub mod api;
pub mod auth;
pub mod chaos;
pub mod contract;
pub mod process;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use rust_eda::kafka::{
    Admin, Cluster, ClusterConfig, Consumer, ConsumerConfig, ConsumerError, Handler, Message,
    TopicSpec, handler_fn,
};
use rust_eda::shutdown::ShutdownTrigger;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shared broker's address.
pub fn brokers() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| {
            if let Ok(b) = std::env::var("EDA_TEST_BROKERS") {
                return b;
            }
            let out = Command::new(repo_root().join("scripts/broker.sh"))
                .arg("start")
                .output()
                .expect("cannot run scripts/broker.sh");
            assert!(
                out.status.success(),
                "these tests need a Kafka broker and none could be started.\n\
                 Run them with scripts/test.sh, or set EDA_TEST_BROKERS=host:port.\n\
                 scripts/broker.sh start said:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            format!(
                "127.0.0.1:{}",
                std::env::var("EDA_BROKER_PORT").unwrap_or_else(|_| "9092".into())
            )
        })
        .clone()
}

pub fn cluster_config(brokers: &str) -> ClusterConfig {
    let mut config = ClusterConfig::from_broker_list(brokers);
    config.connect_timeout = Duration::from_secs(20);
    config.request_timeout = Duration::from_secs(10);
    config
}

/// A connection to the shared broker.
pub async fn cluster() -> Cluster {
    connect(&brokers()).await
}

pub async fn connect(brokers: &str) -> Cluster {
    // RUST_LOG=warn (or debug) shows the layer's retries while a test runs.
    let _ = env_logger::builder().is_test(true).try_init();
    match Cluster::connect(cluster_config(brokers)).await {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to the test broker at {brokers}: {e}"),
    }
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Creates a fresh topic with `partitions` partitions on `cluster`'s brokers.
pub async fn create_topic(cluster: &Cluster, partitions: i32) -> String {
    let name = unique("t");
    within(
        30,
        "creating a topic",
        Admin::new(cluster.config().clone()).ensure_topics(&[TopicSpec::new(&name, partitions)]),
    )
    .await
    .expect("create topic");
    name
}

/// `GET http://127.0.0.1:<port><path>`, answered within `timeout`.
pub async fn get_local(
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<rust_eda::http_client::HttpResponse, rust_eda::http_client::HttpError> {
    let url = format!("http://127.0.0.1:{port}{path}")
        .parse()
        .expect("a valid URL");
    rust_eda::http_client::request(http::Method::GET, &url, &[], bytes::Bytes::new(), timeout).await
}

/// The Prometheus page served on `port` (a service's `APP_METRICS_PORT`),
/// checked to be one: `200` in the text format.
pub async fn metrics_page(port: u16) -> String {
    let r = get_local(port, "/metrics", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("GET /metrics on port {port}: {e}"));
    assert_eq!(r.status, 200, "GET /metrics on port {port}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4"))
    );
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Awaits `fut`, failing the test with `what` if it takes longer than `secs` seconds.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s: {what}"),
    }
}

/// A consumer running in the background, forwarding every handled message.
pub struct RunningConsumer {
    pub trigger: ShutdownTrigger,
    pub task: JoinHandle<Result<(), ConsumerError>>,
    pub messages: mpsc::UnboundedReceiver<Message>,
}

impl RunningConsumer {
    pub async fn start(cluster: &Cluster, config: ConsumerConfig) -> Self {
        let (tx, messages) = mpsc::unbounded_channel();
        let handler = handler_fn(move |m: Message| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(m);
                Ok(())
            }
        });
        let (trigger, task) = Self::spawn(cluster, config, handler).await;
        Self {
            trigger,
            task,
            messages,
        }
    }

    pub async fn spawn<H: Handler>(
        cluster: &Cluster,
        config: ConsumerConfig,
        handler: H,
    ) -> (ShutdownTrigger, JoinHandle<Result<(), ConsumerError>>) {
        let consumer = within(
            30,
            "preparing a consumer",
            Consumer::new(cluster.clone(), config),
        )
        .await
        .expect("consumer");
        let (trigger, shutdown) = ShutdownTrigger::new();
        let task = tokio::spawn(consumer.run(handler, shutdown));
        (trigger, task)
    }

    /// The next `n` messages.
    pub async fn take(&mut self, n: usize, secs: u64) -> Vec<Message> {
        let mut out = Vec::with_capacity(n);
        within(secs, &format!("receiving {n} messages"), async {
            while out.len() < n {
                match self.messages.recv().await {
                    Some(m) => out.push(m),
                    None => panic!("consumer stopped after {} of {n} messages", out.len()),
                }
            }
        })
        .await;
        out
    }

    /// Messages that arrive within `wait`, expecting none.
    pub async fn drain_for(&mut self, wait: Duration) -> Vec<Message> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(wait, async {
            while let Some(m) = self.messages.recv().await {
                out.push(m);
            }
        })
        .await;
        out
    }

    /// Graceful stop: finish, commit, return.
    pub async fn stop(self) {
        self.trigger.trigger();
        within(30, "consumer shutdown", self.task)
            .await
            .expect("consumer task")
            .expect("consumer result");
    }

    /// Abrupt stop, as a crash would: no final commit.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A broker of the test's own, on a free port with a fresh data folder, for tests
/// that restart or stop it. Stopped and removed on drop.
pub struct PrivateBroker {
    pub port: u16,
    pub data: PathBuf,
    /// `EDA_BROKER_TLS`, `EDA_BROKER_AUTH` and `EDA_BROKER_NODES` for every
    /// command.
    secured: Vec<(&'static str, String)>,
}

/// A SASL user: name, password, and `scram256`, `scram512` or `plain`.
pub type User<'a> = (&'a str, &'a str, &'a str);

impl PrivateBroker {
    pub fn start() -> Self {
        Self::start_secured(false, &[])
    }

    /// A broker that speaks TLS only (`tls`) and, when `users` is not empty,
    /// requires SASL. The users are created while it runs open (SCRAM users with
    /// Kafka's `kafka-configs`), and it is then restarted with authentication on.
    pub fn start_secured(tls: bool, users: &[User<'_>]) -> Self {
        let port = free_port();
        let data = std::env::temp_dir().join(unique("eda-broker"));
        let mut broker = Self {
            port,
            data,
            secured: Vec::new(),
        };
        if !users.is_empty() {
            broker.script("start");
            for (name, password, mechanism) in users {
                broker.run(&["user", name, password, mechanism]);
            }
            broker.script("stop");
            broker.secured.push(("EDA_BROKER_AUTH", "1".to_owned()));
        }
        if tls {
            broker.secured.push(("EDA_BROKER_TLS", "1".to_owned()));
        }
        broker.script("start");
        broker
    }

    /// A broker whose metadata names `advertised` as its address, where a
    /// proxy of the test's listens in front of it.
    pub fn start_advertising(advertised: u16) -> Self {
        let broker = Self {
            port: free_port(),
            data: std::env::temp_dir().join(unique("eda-broker")),
            secured: vec![("EDA_BROKER_ADVERTISED_PORT", advertised.to_string())],
        };
        broker.script("start");
        broker
    }

    /// A cluster of three nodes (`EDA_BROKER_NODES=3`: topics at replication
    /// factor 3 and `min.insync.replicas=2`), node N answering clients on
    /// `port + 3(N-1)`. With `isolated`, each node runs in a network namespace
    /// of its own (`EDA_BROKER_NETNS=1`), so that one can be cut off.
    pub fn start_cluster(isolated: bool) -> Self {
        let mut secured = vec![("EDA_BROKER_NODES", "3".to_owned())];
        if isolated {
            secured.push(("EDA_BROKER_NETNS", "1".to_owned()));
        }
        let broker = Self {
            port: free_ports(3 * 3),
            data: std::env::temp_dir().join(unique("eda-cluster")),
            secured,
        };
        broker.script("start");
        broker
    }

    /// Whether this machine lets a test put broker nodes in network namespaces
    /// of their own (root, iproute2, and the right to make namespaces and
    /// bridges); if not, why.
    pub fn network_namespaces() -> Result<(), String> {
        let name = unique("eda-probe");
        let bridge = format!("ebp{}", &name[name.len() - 8..]);
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("the ip command (iproute2) cannot run: {e}"))
                .and_then(|out| {
                    if out.status.success() {
                        Ok(())
                    } else {
                        Err(format!(
                            "`ip {}` failed: {}",
                            args.join(" "),
                            String::from_utf8_lossy(&out.stderr).trim()
                        ))
                    }
                })
        };
        let made = ip(&["netns", "add", &name])
            .and_then(|()| ip(&["link", "add", &bridge, "type", "bridge"]));
        let _ = ip(&["link", "del", &bridge]);
        let _ = ip(&["netns", "del", &name]);
        made
    }

    /// How many nodes it has.
    pub fn nodes(&self) -> u16 {
        self.secured
            .iter()
            .find(|(k, _)| *k == "EDA_BROKER_NODES")
            .map_or(1, |(_, v)| v.parse().expect("a node count"))
    }

    /// One node of a cluster: `verb` is `kill-node`, `stop-node`, `start-node`,
    /// `restart-node`, `pause-node` or `resume-node` (`scripts/broker.sh`).
    pub fn node(&self, verb: &str, n: u16) {
        self.run(&[verb, &n.to_string()]);
    }

    /// The CA that signed a TLS broker's certificate.
    pub fn ca(&self) -> PathBuf {
        self.data.join("tls/ca.pem")
    }

    pub fn brokers(&self) -> String {
        if self.nodes() == 1 {
            return format!("127.0.0.1:{}", self.port);
        }
        // The nodes' addresses are the script's to choose (namespaces).
        let out = self.command(&["brokers"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    pub fn restart(&self) {
        self.script("restart");
    }

    /// Freezes the broker process (SIGSTOP): connections stay open and requests
    /// go unanswered, as with a long GC pause or a stalled disk.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.data.join("broker.pid")).expect("broker.pid");
        let status = Command::new("kill")
            .args([signal, pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    fn script(&self, command: &str) {
        self.run(&[command]);
    }

    fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(repo_root().join("scripts/broker.sh"))
            .args(args)
            .env("EDA_BROKER_PORT", self.port.to_string())
            .env("EDA_BROKER_DATA", &self.data)
            .env("EDA_BROKER_STORAGE", "sqlite")
            .envs(self.secured.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("cannot run scripts/broker.sh")
    }

    fn run(&self, args: &[&str]) {
        let out = self.command(args);
        assert!(
            out.status.success(),
            "scripts/broker.sh {} failed for the test's own broker on port {}:\n{}",
            args[0],
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/broker.sh"))
            .arg("stop")
            .env("EDA_BROKER_PORT", self.port.to_string())
            .env("EDA_BROKER_DATA", &self.data)
            .envs(self.secured.iter().map(|(k, v)| (*k, v.as_str())))
            .output();
        if std::env::var_os("EDA_CHAOS_KEEP_LOGS").is_some() {
            eprintln!("broker data and logs kept in {}", self.data.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

/// A port for a broker whose next ones are free too (each node's controller and
/// internal listeners, three ports a node, `EDA_BROKER_NODES` nodes).
fn free_port() -> u16 {
    let nodes: u16 = std::env::var("EDA_BROKER_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    free_ports(3 * nodes)
}

/// The first of `span` free ports in a row, for a broker or a service. They lie
/// below Linux's ephemeral range (32768 and up), where the local ends of
/// outgoing connections, and the ports the kernel hands out for port 0, would
/// otherwise take them at random; and no two calls in this process hand out
/// the same port, so a service that is being restarted keeps its port from the
/// other tests running at the same time.
pub fn free_ports(span: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Apart for each call of this process; where they start differs by process.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 400) as u16 * 30;
    for _ in 0..1_000 {
        let step = NEXT.fetch_add(span, Ordering::Relaxed);
        let port = 20_000 + (base + step) % 12_000;
        let free =
            (port..port + span).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no {span} free ports in a row between 20000 and 32000 for the test");
}

/// The command that runs `service`: the binaries cargo built for this test, or
/// those in `EDA_E2E_BIN_DIR` (e.g. `dist/aarch64-unknown-linux-musl`), run through
/// `EDA_E2E_RUNNER` when set (e.g. `qemu-aarch64-static`).
pub fn service_command(service: &str) -> Command {
    let binary = match std::env::var("EDA_E2E_BIN_DIR") {
        Ok(dir) => {
            let path = repo_root().join(dir).join(service);
            assert!(
                path.is_file(),
                "{} is missing: build it first (scripts/build-static.sh)",
                path.display()
            );
            path
        }
        Err(_) => PathBuf::from(match service {
            "order-service" => env!("CARGO_BIN_EXE_order-service"),
            "inventory-service" => env!("CARGO_BIN_EXE_inventory-service"),
            "notification-service" => env!("CARGO_BIN_EXE_notification-service"),
            other => panic!("unknown service {other}"),
        }),
    };
    match std::env::var("EDA_E2E_RUNNER") {
        Ok(runner) => {
            let mut c = Command::new(runner);
            c.arg(binary);
            c
        }
        Err(_) => Command::new(binary),
    }
}

/// Runs Kafka's own `scripts/kafka-tool.sh TOOL …` against `brokers`; its output.
pub async fn kafka_tool(brokers: &str, args: &[&str]) -> String {
    let mut command = Command::new(repo_root().join("scripts/kafka-tool.sh"));
    command.args(args).env("BOOTSTRAP", brokers);
    let what = format!("kafka-tool.sh {}", args.join(" "));
    let out = within(
        120,
        &what,
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("join")
    .expect("cannot run scripts/kafka-tool.sh");
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Per topic and partition, the committed offset and the lag of `group` as
/// Kafka's `kafka-consumer-groups --describe` shows them (`-1` for none).
pub async fn consumer_groups_describe(
    brokers: &str,
    group: &str,
) -> std::collections::BTreeMap<(String, i32), (i64, i64)> {
    let out = kafka_tool(
        brokers,
        &["consumer-groups", "--describe", "--group", group],
    )
    .await;
    out.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() >= 6 && cols[0] == group).then(|| {
                let number = |i: usize| cols[i].parse::<i64>().unwrap_or(-1);
                (
                    (cols[1].to_owned(), cols[2].parse().unwrap_or(-1)),
                    (number(3), number(5)),
                )
            })
        })
        .collect()
}

/// The other clients of tests/interop.rs and tests/e2e.rs, each a command
/// taking `produce|transactions|send|consume …` (tests/interop/).
#[derive(Debug, Clone, Copy)]
pub enum Client {
    Java,
    Librdkafka,
}

impl Client {
    fn command(self) -> Command {
        match self {
            Self::Java => {
                let mut c = Command::new("java");
                c.arg("-cp")
                    .arg(format!("{}/*", kafka_libs()))
                    .arg(format!(
                        "-Dlog4j2.configurationFile={}",
                        repo_root()
                            .join("configs/kafka/log4j2.properties")
                            .display()
                    ))
                    .arg(repo_root().join("tests/interop/JavaClient.java"));
                c
            }
            Self::Librdkafka => {
                let mut c = Command::new(librdkafka_python());
                c.arg(repo_root().join("tests/interop/librdkafka_client.py"));
                c
            }
        }
    }

    /// Runs the client to its end; its standard output.
    pub async fn run(self, args: &[&str]) -> String {
        let mut command = self.command();
        command.args(args);
        let out = within(
            180,
            &format!("{self:?} {}", args.join(" ")),
            tokio::task::spawn_blocking(move || command.output()),
        )
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("cannot run the {self:?} client: {e}"));
        assert!(
            out.status.success(),
            "the {self:?} client failed ({args:?}):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
}

/// The jars of the Apache Kafka release the broker runs (`scripts/broker.sh path`).
fn kafka_libs() -> &'static str {
    static LIBS: OnceLock<String> = OnceLock::new();
    LIBS.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/broker.sh"))
            .arg("path")
            .env("EDA_BROKER_KIND", "kafka")
            .output()
            .expect("cannot run scripts/broker.sh");
        assert!(
            out.status.success(),
            "the Java client needs Apache Kafka's jars; scripts/broker.sh path said:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}

/// The venv's python with confluent-kafka, installed on first use.
fn librdkafka_python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/interop-tools.sh"))
            .output()
            .expect("cannot run scripts/interop-tools.sh");
        assert!(
            out.status.success(),
            "librdkafka (confluent-kafka) could not be installed; scripts/interop-tools.sh said:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
}
