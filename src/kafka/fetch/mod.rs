//! Reading partitions. The `Fetcher` task fetches one partition from
//! an offset into a channel, retrying with backoff and resetting an offset the
//! broker no longer keeps; the consumer, the [`Follower`] and the group's log tail
//! all read through it, and hand records on as [`Message`]s. [`read_partition`]
//! and [`read_topic`] read a log to its end once, and the [`LogCursor`] lets a
//! process apply its own records as soon as the log before them is read.

mod fetcher;
pub mod follower;
pub mod log_cursor;
mod message;
mod read;

pub use self::fetcher::{FetchConfig, OffsetReset};
pub(crate) use self::fetcher::{Fetcher, Progress, Stalls, reset_offset};
pub use self::follower::Follower;
pub use self::log_cursor::{LogCursor, Read};
pub use self::message::Message;
pub use self::read::{ReadError, read_partition, read_topic, settled};
pub(crate) use self::read::{high_watermark, offset_at, partition_count, read_partition_with};
