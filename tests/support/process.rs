//! The process harness of the end-to-end, group and chaos tests: service
//! processes with a log file each, killed with the test; waiting for `/ready`;
//! free local ports; and the webhook receiver the notification service calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use warp::Filter;

use super::within;

/// The three services.
pub const SERVICES: [&str; 3] = ["order-service", "inventory-service", "notification-service"];

/// A free port on 127.0.0.1 for a service to listen on, its own for the whole
/// test: a port 0 listener would move when the service restarts.
pub fn local_port() -> u16 {
    super::free_ports(1)
}

/// The settings every test gives a service besides its own: the broker, the
/// folder it runs in (with `stock.json`), the webhook, JSON logs, a fast
/// group, so that a killed member's partitions move within seconds, and the
/// test credentials of the order API.
pub fn configure(
    command: &mut Command,
    brokers: &str,
    dir: &Path,
    webhook: SocketAddr,
    partitions: u32,
) {
    command
        .current_dir(dir)
        .env("APP_KAFKA_BROKERS", brokers)
        .env("APP_SERVER_HOST", "127.0.0.1")
        .env("APP_KAFKA_TOPIC_PARTITIONS", partitions.to_string())
        .env("APP_INVENTORY_STOCK_FILE", dir.join("stock.json"))
        .env(
            "APP_NOTIFICATION_WEBHOOK_URL",
            format!("http://{webhook}/hooks/orders"),
        )
        .env("APP_LOGGER_ENCODING", "json")
        .env("APP_KAFKA_SESSION_TIMEOUT_MS", "3000")
        .env("APP_KAFKA_HEARTBEAT_INTERVAL_MS", "300")
        .env("APP_KAFKA_REBALANCE_GRACE_MS", "300")
        // nisshi holds fetches for the whole wait (docs/brokers.md).
        .env("APP_KAFKA_FETCH_MAX_WAIT_MS", "50")
        // Tests run side by side: no fixed metrics port (a test sets its own).
        .env("APP_METRICS_PORT", "0")
        .envs(super::auth::env());
}

/// A child process of the test, its output appended to `<dir>/<name>.log`;
/// killed when dropped.
pub struct Process {
    pub name: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    /// Starts `command` as `name`, logging to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("a second handle on the log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            name: name.to_owned(),
            log,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (such as `TERM` or `STOP`).
    pub fn signal(&self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Waits up to `secs` for it to exit by itself.
    pub async fn wait_exit(&mut self, secs: u64) {
        let name = self.name.clone();
        let child = self.child.as_mut().expect("running");
        within(secs, &format!("{name} exiting"), async {
            while child.try_wait().expect("try_wait").is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        self.child = None;
    }

    /// Prints the last `n` lines of its log to stderr, as a failing test's
    /// evidence.
    pub fn dump_log(&self, n: usize) {
        dump_log(&self.log, &self.name, n);
    }
}

/// Prints the last `n` lines of the log at `path` to stderr, headed by `name`.
pub fn dump_log(path: &Path, name: &str, n: usize) {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(n).collect();
    eprintln!("--- last lines of {name} ---");
    for line in tail.into_iter().rev() {
        eprintln!("{line}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits up to `secs` until `http://127.0.0.1:<port>/ready` answers 200;
/// returns how long that took.
pub async fn wait_ready(port: u16, what: &str, secs: u64) -> Duration {
    let started = Instant::now();
    within(secs, &format!("{what} becoming ready"), async {
        loop {
            let ready = super::get_local(port, "/ready", Duration::from_secs(2)).await;
            if ready.is_ok_and(|r| r.status == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    started.elapsed()
}

/// The notification webhook's other end: counts calls per `Idempotency-Key`,
/// with the order each names. Stops with the test.
pub struct Webhook {
    pub addr: SocketAddr,
    calls: Arc<Mutex<HashMap<String, (String, usize)>>>,
    /// When each order was first notified.
    first: Arc<Mutex<HashMap<String, Instant>>>,
    /// The `traceparent` of each order's last call.
    traces: Arc<Mutex<HashMap<String, String>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Webhook {
    pub async fn start() -> Self {
        let calls: Arc<Mutex<HashMap<String, (String, usize)>>> = Arc::default();
        let first: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let traces: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let route = {
            let (calls, first, traces) =
                (Arc::clone(&calls), Arc::clone(&first), Arc::clone(&traces));
            warp::post()
                .and(warp::header::<String>("idempotency-key"))
                .and(warp::header::optional::<String>("traceparent"))
                .and(warp::body::json::<Value>())
                .map(
                    move |key: String, traceparent: Option<String>, body: Value| {
                        let order = body["order_id"].as_str().unwrap_or_default().to_owned();
                        if let Some(t) = traceparent {
                            traces.lock().insert(order.clone(), t);
                        }
                        first
                            .lock()
                            .entry(order.clone())
                            .or_insert_with(Instant::now);
                        calls.lock().entry(key).or_insert((order, 0)).1 += 1;
                        warp::reply()
                    },
                )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port for the webhook");
        let addr = listener.local_addr().expect("its address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = stopped.await;
                })
                .run(),
        );
        Self {
            addr,
            calls,
            first,
            traces,
            _stop: stop,
        }
    }

    /// How many calls came per `Idempotency-Key`.
    pub fn counts(&self) -> HashMap<String, usize> {
        self.calls
            .lock()
            .iter()
            .map(|(key, (_, n))| (key.clone(), *n))
            .collect()
    }

    /// When each order was first notified, by order id.
    pub fn notified_at(&self) -> HashMap<String, Instant> {
        self.first.lock().clone()
    }

    /// The `traceparent` the last call about `order` carried.
    pub fn traceparent(&self, order: &str) -> Option<String> {
        self.traces.lock().get(order).cloned()
    }

    /// Per `Idempotency-Key`: the order it named, and how many calls came.
    pub fn calls(&self) -> HashMap<String, (String, usize)> {
        self.calls.lock().clone()
    }
}
