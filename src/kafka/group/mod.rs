//! Consumer groups without a broker coordinator, built on the compacted
//! coordination topic (`__eda_offsets`, one partition).
//!
//! Every member tails the coordination log and derives the group's state from it
//! ([`GroupState`]): a single-partition topic is a total order, so members that
//! have read the same prefix agree on who is alive, who owns what and what the
//! target assignment is ([`assignor`]). Members write three kinds of records
//! ([`protocol`]): heartbeats (`member`), ownership changes (`owner`) and commits
//! (`offset`).
//!
//! Ownership only changes hands in two ways, both written to the log:
//! - **Handoff**: the owner finishes the record in flight, commits, and writes an
//!   owner record naming the new owner, which starts when it reads that record.
//!   There is never an overlap.
//! - **Claim**: when the owner is dead (no record within its session timeout of
//!   log time) or nobody owns the partition, the target member waits
//!   `rebalance_grace` for the group to settle and then writes an owner record
//!   naming itself, starting from the dead owner's last commit.
//!
//! Fencing keeps a member that was presumed dead, for example after a long
//! pause, from working on partitions that moved. A member holds a local lease:
//! the send time of its last acknowledged heartbeat plus two thirds of the session
//! timeout, on the monotonic clock. It checks the lease before every record and
//! before every commit, and stops all partitions when the lease runs out. Every
//! commit names the owner and its epoch, and a commit from a former owner is
//! ignored when offsets are read back. The full protocol is in
//! `docs/consumer-groups.md`.

pub mod assignor;
pub mod broker_offsets;
mod coordinator;
mod lease;
mod log;
mod member_id;
pub mod offsets;
pub mod operator;
pub(crate) mod planner;
pub mod protocol;
#[cfg(test)]
mod sim;
pub mod state;
#[cfg(test)]
mod txn_sim;

pub(crate) use self::coordinator::{Coordinator, TransactionView};
pub(crate) use self::lease::Lease;
pub use self::member_id::{InvalidMemberId, MemberId};
pub use self::state::GroupState;

use std::time::Duration;

use crate::kafka::fetch::FetchConfig;

/// What a member needs to know of its group: the part of the consumer's
/// settings the protocol reads.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// The group's name; members of one group share its partitions.
    pub group_id: String,
    /// The topics the member subscribes to.
    pub topics: Vec<String>,
    /// The compacted coordination topic.
    pub offsets_topic: String,
    /// A member silent for this long (in log time) is dead.
    pub session_timeout: Duration,
    /// How often a member writes its heartbeat.
    pub heartbeat_interval: Duration,
    /// How the coordination log is tailed.
    pub fetch: FetchConfig,
}

/// The partition of the coordination topic that holds every record.
pub(crate) const LOG_PARTITION: i32 = 0;
