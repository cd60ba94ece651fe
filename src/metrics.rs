//! Metrics in the Prometheus text format, served at `GET /metrics` by every service.
//!
//! One process-wide registry: the Kafka layer, the HTTP server and the services
//! all record into it without a handle being threaded through every constructor.
//! A series is looked up once (name and labels) and its handle kept where the
//! hot path is, so recording is one atomic operation. Process metrics (RSS, open
//! file descriptors, CPU) are read from `/proc` when the page is rendered.
//!
//! Names follow Prometheus conventions: `_total` for counters, base units
//! (seconds, bytes), and the `eda_` prefix for the project's own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::Mutex;

/// Latency buckets, 1 ms to 10 s, in nanoseconds: an observation is placed by
/// integer comparisons, since the consumer observes every record.
const LATENCY_BUCKETS_NS: [u64; 14] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    7_500_000_000,
    10_000_000_000,
];

/// Label pairs of one series, sorted by name.
type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<Labels, Series>,
}

#[derive(Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// The registry behind [`counter`], [`gauge`], [`histogram`] and [`render`].
#[derive(Default)]
struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    let mut labels: Labels = pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    labels.sort();
    labels
}

impl Registry {
    fn series(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        pairs: &[(&'static str, &str)],
        make: impl FnOnce() -> Series,
    ) -> Series {
        let mut families = self.families.lock();
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        debug_assert!(
            family.kind == kind,
            "metric {name} registered twice as different kinds"
        );
        family
            .series
            .entry(labels(pairs))
            .or_insert_with(make)
            .clone()
    }

    fn remove(&self, name: &'static str, pairs: &[(&'static str, &str)]) {
        if let Some(family) = self.families.lock().get_mut(name) {
            family.series.remove(&labels(pairs));
        }
    }
}

/// A counter that only goes up.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `n`, which may be negative.
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram in seconds.
#[derive(Clone)]
pub struct Histogram(Arc<HistogramInner>);

/// Observations gathered by one task and added to a [`Histogram`] in one step:
/// for loops where an atomic add per observation, on series that several tasks
/// share, would cost more than the work measured.
#[derive(Debug, Default)]
pub struct LocalHistogram {
    buckets: [u64; LATENCY_BUCKETS_NS.len()],
    count: u64,
    sum_nanos: u64,
}

impl LocalHistogram {
    /// Records one observation, to be added to the histogram later.
    pub fn observe(&mut self, elapsed: Duration) {
        self.observe_run(elapsed, 1);
    }

    /// `n` observations that took `total` together, each placed at their mean:
    /// for calls too quick to be worth a clock reading each. The sum stays exact.
    pub fn observe_run(&mut self, total: Duration, n: u32) {
        if n == 0 {
            return;
        }
        let total = nanos(total);
        if let Some(i) = bucket(total / u64::from(n)) {
            self.buckets[i] += u64::from(n);
        }
        self.count += u64::from(n);
        self.sum_nanos = self.sum_nanos.saturating_add(total);
    }

    /// Observations gathered and not yet added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The sum of the observations gathered and not yet added.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos)
    }
}

fn bucket(nanos: u64) -> Option<usize> {
    LATENCY_BUCKETS_NS.iter().position(|&b| nanos <= b)
}

/// Nanoseconds rather than microseconds in the sum: a handler of a few hundred
/// nanoseconds must not add up to nothing. `u64` holds 584 years of them.
fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

struct HistogramInner {
    buckets: [AtomicU64; LATENCY_BUCKETS_NS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self(Arc::new(HistogramInner {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }))
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        // Buckets are stored non-cumulatively and summed when rendered.
        let nanos = nanos(elapsed);
        if let Some(i) = bucket(nanos) {
            self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Adds what `local` gathered, and empties it.
    pub fn add(&self, local: &mut LocalHistogram) {
        if local.count == 0 {
            return;
        }
        for (shared, n) in self.0.buckets.iter().zip(&local.buckets) {
            if *n > 0 {
                shared.fetch_add(*n, Ordering::Relaxed);
            }
        }
        self.0.count.fetch_add(local.count, Ordering::Relaxed);
        self.0
            .sum_nanos
            .fetch_add(local.sum_nanos, Ordering::Relaxed);
        *local = LocalHistogram::default();
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

/// Counts a background task that ended when it should not have (a panic) and
/// was started again: `eda_task_restarts_total{task}`.
pub fn task_restarted(task: &str) {
    counter(
        "eda_task_restarts_total",
        "Background tasks (heartbeats, producer workers, the copy of offsets to the broker) that ended unexpectedly and were started again.",
        &[("task", task)],
    )
    .inc();
}

/// The counter `name` with `labels`, created at zero on first use.
pub fn counter(name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Counter {
    match REGISTRY.series(name, help, Kind::Counter, labels, || {
        Series::Counter(Counter::default())
    }) {
        Series::Counter(c) => c,
        _ => Counter::default(),
    }
}

/// The gauge `name` with `labels`, created at zero on first use.
pub fn gauge(name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
    match REGISTRY.series(name, help, Kind::Gauge, labels, || {
        Series::Gauge(Gauge::default())
    }) {
        Series::Gauge(g) => g,
        _ => Gauge::default(),
    }
}

/// The latency histogram `name` with `labels`.
pub fn histogram(
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &str)],
) -> Histogram {
    match REGISTRY.series(name, help, Kind::Histogram, labels, || {
        Series::Histogram(Histogram::default())
    }) {
        Series::Histogram(h) => h,
        _ => Histogram::default(),
    }
}

/// Drops one series, e.g. the lag of a partition this member no longer owns, so a
/// stale value does not linger on the page.
pub fn remove(name: &'static str, labels: &[(&'static str, &str)]) {
    REGISTRY.remove(name, labels);
}

/// The whole registry, plus process metrics, in the Prometheus text format 0.0.4.
pub fn render() -> String {
    let mut out = String::with_capacity(8 * 1024);
    process_metrics(&mut out);
    let families = REGISTRY.families.lock();
    for (name, family) in families.iter() {
        if family.series.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {}", family.kind.name());
        for (labels, series) in &family.series {
            match series {
                Series::Counter(c) => {
                    let _ = writeln!(out, "{name}{} {}", format_labels(labels, None), c.get());
                }
                Series::Gauge(g) => {
                    let _ = writeln!(out, "{name}{} {}", format_labels(labels, None), g.get());
                }
                Series::Histogram(h) => render_histogram(&mut out, name, labels, h),
            }
        }
    }
    out
}

fn render_histogram(out: &mut String, name: &str, labels: &Labels, h: &Histogram) {
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_NS.iter().enumerate() {
        cumulative += h.0.buckets[i].load(Ordering::Relaxed);
        let le = (*bound as f64 / 1e9).to_string();
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            format_labels(labels, Some(&le))
        );
    }
    let count = h.0.count.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "{name}_bucket{} {count}",
        format_labels(labels, Some("+Inf"))
    );
    let sum = h.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{} {sum}", format_labels(labels, None));
    let _ = writeln!(out, "{name}_count{} {count}", format_labels(labels, None));
}

fn format_labels(labels: &Labels, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus' standard process metrics, from `/proc` (Linux; absent elsewhere).
fn process_metrics(out: &mut String) {
    // Linux reports RSS in pages; every platform these binaries target uses 4 KiB
    // pages except some aarch64 kernels (16 or 64 KiB), hence the page size query.
    let page = *PAGE_SIZE;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
        && let Some(pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u64>().ok())
    {
        let _ = writeln!(
            out,
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
            pages * page
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# HELP process_open_fds Number of open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {}",
            fds.count()
        );
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(cpu) = cpu_seconds(&stat)
    {
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {}",
        *START_TIME
    );
}

static START_TIME: LazyLock<u64> = LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
});

/// Records the start time; called once at startup so it is not the first scrape's.
pub fn init() {
    LazyLock::force(&START_TIME);
    LazyLock::force(&PAGE_SIZE);
}

/// Read once: smaps is long, and the page size does not change while running.
static PAGE_SIZE: LazyLock<u64> = LazyLock::new(page_size);

fn page_size() -> u64 {
    // The kernel tells the page size in the auxiliary vector; /proc/self/smaps'
    // KernelPageSize line says the same without unsafe code.
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4096, |kb| kb * 1024)
}

/// utime + stime (fields 14 and 15) in clock ticks; Linux fixes `USER_HZ` at 100.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces; fields resume after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_render_in_the_text_format() {
        let c = counter(
            "eda_test_things_total",
            "Things.",
            &[("topic", "a\"b"), ("kind", "x")],
        );
        c.add(3);
        // The same name and labels in another order is the same series.
        counter(
            "eda_test_things_total",
            "Things.",
            &[("kind", "x"), ("topic", "a\"b")],
        )
        .inc();
        let h = histogram("eda_test_latency_seconds", "Latency.", &[("route", "/r")]);
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let page = render();
        assert!(
            page.contains("# TYPE eda_test_things_total counter"),
            "{page}"
        );
        assert!(
            page.contains("eda_test_things_total{kind=\"x\",topic=\"a\\\"b\"} 4"),
            "{page}"
        );
        assert!(
            page.contains("eda_test_latency_seconds_bucket{route=\"/r\",le=\"0.005\"} 1"),
            "{page}"
        );
        assert!(
            page.contains("eda_test_latency_seconds_bucket{route=\"/r\",le=\"+Inf\"} 2"),
            "{page}"
        );
        assert!(page.contains("eda_test_latency_seconds_count{route=\"/r\"} 2"));
        assert!(page.contains("eda_test_latency_seconds_sum{route=\"/r\"} 60.003\n"));
        let bounds: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("eda_test_latency_seconds_bucket"))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            bounds,
            [
                "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
                "2.5", "5", "7.5", "10", "+Inf"
            ]
        );

        // Fast handlers add up: 1,000 × 300 ns is 0.3 ms, not nothing.
        let fast = histogram("eda_test_fast_seconds", "Fast.", &[]);
        for _ in 0..1000 {
            fast.observe(Duration::from_nanos(300));
        }
        assert!(render().contains("eda_test_fast_seconds_sum 0.0003\n"));
        assert!(page.contains("process_resident_memory_bytes "), "{page}");
        assert!(page.contains("process_open_fds "), "{page}");

        let g = gauge("eda_test_lag", "Lag.", &[("partition", "0")]);
        g.set(7);
        assert!(render().contains("eda_test_lag{partition=\"0\"} 7"));
        remove("eda_test_lag", &[("partition", "0")]);
        assert!(!render().contains("eda_test_lag{"));
    }

    #[test]
    fn a_local_histogram_adds_up_to_the_same_as_observing_each() {
        let samples = [1, 3, 3, 40, 900, 60_000].map(Duration::from_millis);
        let each = Histogram::default();
        let batched = Histogram::default();
        let mut local = LocalHistogram::default();
        for d in samples {
            each.observe(d);
            local.observe(d);
        }
        batched.add(&mut local);
        let counts = |h: &Histogram| {
            (
                h.0.buckets.each_ref().map(|b| b.load(Ordering::Relaxed)),
                h.count(),
                h.0.sum_nanos.load(Ordering::Relaxed),
            )
        };
        assert_eq!(counts(&each), counts(&batched));
        assert_eq!(local.count, 0, "adding empties the local histogram");
        batched.add(&mut local);
        assert_eq!(batched.count(), 6);
    }

    #[test]
    fn a_run_is_placed_at_its_mean_with_an_exact_sum() {
        let h = Histogram::default();
        let mut local = LocalHistogram::default();
        // 4 calls in 12 ms: each counted in the 5 ms bucket, as 3 ms calls would be.
        local.observe_run(Duration::from_millis(12), 4);
        local.observe_run(Duration::from_secs(1), 0);
        let mut each = LocalHistogram::default();
        for _ in 0..4 {
            each.observe(Duration::from_millis(3));
        }
        assert_eq!(local.buckets, each.buckets);
        assert_eq!((local.count, local.sum_nanos), (4, 12_000_000));
        h.add(&mut local);
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "42 (a b) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
    }
}
