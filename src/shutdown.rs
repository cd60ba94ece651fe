//! Cooperative shutdown, passed down explicitly to every long-running task.
//!
//! A [`ShutdownTrigger`] is held by whoever decides the process should stop (the
//! binary's signal handler, a test); every task receives a cloned [`Shutdown`] and
//! checks it between units of work, so that stopping never interrupts a record in
//! the middle of being handled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Fires the shutdown signal for every [`Shutdown`] created from it.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
    fired: Arc<AtomicBool>,
}

/// Listens for the shutdown signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// The same signal for [`Shutdown::is_shutdown`], which consumers ask before
    /// every record: a plain load, where reading the channel takes its lock, a
    /// line every partition's task would otherwise write to.
    fired: Arc<AtomicBool>,
}

impl ShutdownTrigger {
    /// A trigger that has not fired, and the first listener of it.
    pub fn new() -> (Self, Shutdown) {
        let (tx, rx) = watch::channel(false);
        let fired = Arc::new(AtomicBool::new(false));
        let shutdown = Shutdown {
            rx,
            fired: Arc::clone(&fired),
        };
        (Self { tx, fired }, shutdown)
    }

    /// A new listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
            fired: Arc::clone(&self.fired),
        }
    }

    /// Signals every listener. Idempotent.
    pub fn trigger(&self) {
        self.fired.store(true, Ordering::Release);
        self.tx.send_replace(true);
    }
}

impl Shutdown {
    /// A listener that never fires, for callers that stop by dropping.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keeping the sender alive would leak; a closed channel with `false` never fires.
        drop(tx);
        Self {
            rx,
            fired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether shutdown was requested.
    pub fn is_shutdown(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Resolves once shutdown is requested; pending forever if it never is.
    pub async fn recv(&mut self) {
        if self.rx.wait_for(|stop| *stop).await.is_err() {
            // The trigger is gone without firing: nobody can ask us to stop any more.
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, the signals a service manager or a
/// container runtime sends to stop a process gracefully.
pub async fn signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_listener_sees_the_trigger() {
        let (trigger, mut a) = ShutdownTrigger::new();
        let mut b = trigger.subscribe();
        assert!(!a.is_shutdown());
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(1), a.recv())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(1), b.recv())
            .await
            .unwrap();
        assert!(b.is_shutdown());
    }

    #[tokio::test]
    async fn never_does_not_fire() {
        let mut s = Shutdown::never();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), s.recv())
                .await
                .is_err()
        );
    }
}
