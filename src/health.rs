//! Why this process is not ready, as its parts report it.
//!
//! A long-running task that can wedge without failing (a consumer whose
//! partition makes no progress, a reader that stopped) holds a [`Condition`]
//! and sets it with a reason while something is wrong. `/ready` answers `503`
//! with every reason set, so an orchestrator or an operator sees what is stuck
//! instead of a process that looks healthy and does nothing. Like the metrics,
//! the registry is process-wide, so no handle is threaded through constructors.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

static PROBLEMS: LazyLock<Mutex<BTreeMap<u64, (String, String)>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One part's readiness: clear, or a reason it is not ready. Dropping it clears it.
#[derive(Debug)]
pub struct Condition {
    id: u64,
    name: String,
    /// Whether a reason is set: asking costs a load, not the registry's lock,
    /// so a handler can ask before every record.
    set: AtomicBool,
}

impl Condition {
    /// A clear condition reported under `name` (such as `consumer inventory-service`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            set: AtomicBool::new(false),
        }
    }

    /// Reports `reason`, or clears the condition with `None`.
    pub fn set(&self, reason: Option<String>) {
        let mut problems = PROBLEMS.lock();
        self.set.store(reason.is_some(), Ordering::Release);
        match reason {
            Some(reason) => {
                problems.insert(self.id, (self.name.clone(), reason));
            }
            None => {
                problems.remove(&self.id);
            }
        }
    }
}

impl Condition {
    /// The reason set now, if any.
    pub fn reason(&self) -> Option<String> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        PROBLEMS
            .lock()
            .get(&self.id)
            .map(|(_, reason)| reason.clone())
    }
}

impl Drop for Condition {
    fn drop(&mut self) {
        PROBLEMS.lock().remove(&self.id);
    }
}

/// Every reason set now, as `name: reason`, in the order the conditions were made.
pub fn problems() -> Vec<String> {
    PROBLEMS
        .lock()
        .values()
        .map(|(name, reason)| format!("{name}: {reason}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_reports_until_cleared_or_dropped() {
        let a = Condition::new("test-health-a");
        let b = Condition::new("test-health-b");
        a.set(Some("partition t/3 makes no progress".into()));
        b.set(Some("stuck".into()));
        let ours = |p: Vec<String>| {
            p.into_iter()
                .filter(|p| p.starts_with("test-health-"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ours(problems()),
            [
                "test-health-a: partition t/3 makes no progress",
                "test-health-b: stuck"
            ]
        );
        assert_eq!(b.reason().as_deref(), Some("stuck"));
        a.set(None);
        assert_eq!(a.reason(), None);
        assert_eq!(ours(problems()), ["test-health-b: stuck"]);
        drop(b);
        assert!(ours(problems()).is_empty());
    }
}
