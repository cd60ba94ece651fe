//! Follows topics from their first record on, without committing anything: the way
//! to rebuild in-memory state (a view, a ledger) from the log at every start.
//!
//! [`Follower::start`] reads every partition of the given topics from the earliest
//! record kept and keeps tailing them, passing each record to a callback in offset
//! order per partition. [`Follower::caught_up`] resolves once every partition was
//! read up to the high watermark it had when following began: from then on the
//! state reflects at least everything written before the start.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::time::Duration;

use rskafka::client::partition::OffsetAt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::TopicPartition;
use super::cluster::{Cluster, ClusterError, Lane};
use super::consumer::{AbortOnDrop, ConsumerConfig, Fetcher, Message};
use super::records::FetchedRecord;
use crate::shutdown::ShutdownTrigger;

/// A running follower. Dropping it stops the reading.
#[derive(Debug)]
pub struct Follower {
    ready: watch::Receiver<bool>,
    stop: ShutdownTrigger,
    _tasks: JoinSet<()>,
}

impl Follower {
    /// Starts following `topics`, calling `apply` for every record. Each fetch waits
    /// at most `fetch_max_wait` for new records.
    pub async fn start<F>(
        cluster: &Cluster,
        topics: &[&str],
        fetch_max_wait: std::time::Duration,
        apply: F,
    ) -> Result<Self, ClusterError>
    where
        F: Fn(Message) + Send + Sync + 'static,
    {
        let apply = Arc::new(apply);
        let mut partitions = Vec::new();
        for topic in topics {
            let n = cluster.partition_count(topic).await?;
            for p in 0..n {
                let tp = TopicPartition::new(*topic, p);
                let client = cluster.partition_client(topic, p, Lane::Read).await?;
                let start = cluster
                    .timed("list offsets", client.get_offset(OffsetAt::Earliest))
                    .await?;
                let end = cluster
                    .timed("list offsets", client.get_offset(OffsetAt::Latest))
                    .await?;
                partitions.push((tp, start, end));
            }
        }

        let pending = Arc::new(AtomicUsize::new(
            partitions.iter().filter(|(_, s, e)| s < e).count(),
        ));
        let (ready_tx, ready) = watch::channel(pending.load(Ordering::Acquire) == 0);
        let ready_tx = Arc::new(ready_tx);
        let mut config = ConsumerConfig::new("follower", topics.iter().copied());
        config.fetch_max_wait = fetch_max_wait;

        let (stop, shutdown) = ShutdownTrigger::new();
        let mut tasks = JoinSet::new();
        for (tp, start, end) in partitions {
            let fetcher = Fetcher {
                cluster: cluster.clone(),
                config: config.clone(),
                tp: tp.clone(),
                lag: None,
            };
            let apply = Arc::clone(&apply);
            let pending = Arc::clone(&pending);
            let ready_tx = Arc::clone(&ready_tx);
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let (tx, mut rx) = mpsc::channel(1);
                let _fetch = AbortOnDrop(tokio::spawn(fetcher.run(start, tx, shutdown)));
                let mut behind = start < end;
                let topic: Arc<str> = Arc::from(tp.topic.as_str());
                while let Some(batch) = rx.recv().await {
                    for record in batch {
                        let offset = record.offset;
                        apply(Message::new(Arc::clone(&topic), tp.partition, record));
                        if behind && offset + 1 >= end {
                            behind = false;
                            if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                                ready_tx.send_replace(true);
                            }
                        }
                    }
                }
            });
        }
        Ok(Self {
            ready,
            stop,
            _tasks: tasks,
        })
    }

    /// Stops reading (as dropping does), for a follower that others still hold:
    /// [`caught_up`](Self::caught_up) then resolves for everyone waiting on it.
    pub fn stop(&self) {
        self.stop.trigger();
    }

    /// Whether everything written before the start was applied.
    pub fn is_caught_up(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once everything written before the start was applied.
    pub async fn caught_up(&self) {
        let mut ready = self.ready.clone();
        // The sender lives as long as the tasks; an error means they are gone.
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// The largest fetch while reading a log back.
const READ_BYTES: i32 = 4 * 1024 * 1024;

/// Errors of reading a log to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading {topic:?} failed: {source}")]
    Cluster {
        topic: String,
        #[source]
        source: ClusterError,
    },
    #[error(
        "reading {topic:?}/{partition} made no progress at offset {offset} (high watermark {high_watermark})"
    )]
    Stuck {
        topic: String,
        partition: i32,
        offset: i64,
        high_watermark: i64,
    },
}

impl ReadError {
    /// Whether reading again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Cluster { source, .. } => source.is_retriable(),
            Self::Stuck { .. } => false,
        }
    }
}

/// Every record of every partition of `topic`, up to the high watermarks seen when
/// the read started, in offset order per partition.
pub async fn read_topic(cluster: &Cluster, topic: &str) -> Result<Vec<Message>, ReadError> {
    let partitions = cluster
        .partition_count(topic)
        .await
        .map_err(|source| ReadError::Cluster {
            topic: topic.to_owned(),
            source,
        })?;
    let mut messages = Vec::new();
    let name: Arc<str> = Arc::from(topic);
    for p in 0..partitions {
        for record in read_partition(cluster, topic, p).await?.0 {
            messages.push(Message::new(Arc::clone(&name), p, record));
        }
    }
    Ok(messages)
}

/// One partition from its earliest retained record up to the high watermark seen
/// when the read started; returns the records and that high watermark.
pub async fn read_partition(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
) -> Result<(Vec<FetchedRecord>, i64), ReadError> {
    let read_error = |source| ReadError::Cluster {
        topic: topic.to_owned(),
        source,
    };
    let client = cluster
        .partition_client(topic, partition, Lane::Read)
        .await
        .map_err(read_error)?;
    let mut offset = cluster
        .timed("list offsets", client.get_offset(OffsetAt::Earliest))
        .await
        .map_err(read_error)?;
    let high_watermark = cluster
        .timed("list offsets", client.get_offset(OffsetAt::Latest))
        .await
        .map_err(read_error)?;

    let mut records = Vec::new();
    let mut empty_reads = 0;
    while offset < high_watermark {
        let (fetched, _) = cluster
            .fetch(
                topic,
                partition,
                offset,
                READ_BYTES,
                Duration::from_millis(100),
            )
            .await
            .map_err(read_error)?;
        match fetched.next_offset {
            Some(next) => {
                offset = next;
                empty_reads = 0;
                records.extend(fetched.records);
            }
            // Below the high watermark the broker always returns a whole batch (even
            // one larger than the limit); an empty answer is a leader change, or data
            // not yet replicated, and worth a few more tries.
            None if empty_reads < 3 => {
                empty_reads += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => {
                return Err(ReadError::Stuck {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    high_watermark,
                });
            }
        }
    }
    Ok((records, high_watermark))
}
