//! The records of the coordination topic: JSON keys and values, readable in any
//! Kafka tool. The topic is compacted, so only the latest record of each key is
//! guaranteed to stay; everything built from it reads "latest value per key".
//!
//! ```text
//! {"type":"member","group":"g","member":"m1"}                 {"topics":{"orders":6},"session_timeout_ms":10000,"leaving":false}
//! {"type":"owner","group":"g","topic":"orders","partition":3}  {"member":"m1","epoch":4,"start":1200,"by":"m1"}
//! {"type":"offset","group":"g","topic":"orders","partition":3} {"offset":1342,"member":"m1","epoch":4,"committed_at":"…"}
//! ```
//!
//! A record with no value (a tombstone) deletes its key: a member that left, for
//! instance. Keys of unknown types are skipped, so newer record kinds can share the
//! topic with older readers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kafka::topic::TopicPartition;

/// The key of a coordination record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Key {
    /// A member's announcement and heartbeat.
    Member {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// Who owns a partition.
    Owner {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// The committed offset of a partition.
    Offset {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
}

impl Key {
    /// The group the record belongs to.
    pub fn group(&self) -> &str {
        match self {
            Self::Member { group, .. } | Self::Owner { group, .. } | Self::Offset { group, .. } => {
                group
            }
        }
    }

    /// The key's bytes, exactly as serde writes it (a test holds the two
    /// together): compaction matches keys byte for byte. Written out so that it
    /// cannot fail, where serde's encoder returns a `Result`.
    pub fn encode(&self) -> Vec<u8> {
        // A `Value`'s text form cannot fail, and escapes as serde's writer does.
        let q = |s: &str| serde_json::Value::from(s).to_string();
        match self {
            Self::Member { group, member } => format!(
                r#"{{"type":"member","group":{},"member":{}}}"#,
                q(group),
                q(member)
            ),
            Self::Owner {
                group,
                topic,
                partition,
            } => format!(
                r#"{{"type":"owner","group":{},"topic":{},"partition":{partition}}}"#,
                q(group),
                q(topic)
            ),
            Self::Offset {
                group,
                topic,
                partition,
            } => format!(
                r#"{{"type":"offset","group":{},"topic":{},"partition":{partition}}}"#,
                q(group),
                q(topic)
            ),
        }
        .into_bytes()
    }

    /// `None` for records that are not ours (or of a kind this build does not know).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// A member's announcement, rewritten at every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberValue {
    /// The subscribed topics with their partition counts as this member sees them.
    pub topics: BTreeMap<String, i32>,
    /// After this long without a record from it, the member is dead.
    pub session_timeout_ms: i64,
    /// The member is handing its partitions over and takes no new ones.
    #[serde(default)]
    pub leaving: bool,
}

/// Ownership of a partition. `member` is empty when nobody owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerValue {
    /// The owner; `None` when the partition was passed on with no member to
    /// take it (written `""`, as earlier versions wrote it).
    #[serde(with = "no_owner")]
    pub member: Option<String>,
    /// Grows by one at every change of owner; fences commits of former owners.
    pub epoch: i64,
    /// Where this owner starts: the committed offset when ownership changed.
    pub start: i64,
    /// Who wrote the record: the previous owner for a handoff, the new one for a
    /// claim. A claim counts only while the owner it replaces is dead in log
    /// time where the claim lands, not where the claimant decided; absent in
    /// records of older versions, which count as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Offsets of rival owner records of this partition that did not count, set
    /// when the owner writes its record again over them. A reader of a compacted
    /// log may have counted one of them, because the record that counted before
    /// it was cleaned away; this record puts that reader right (see
    /// [`crate::kafka::group::state`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refutes: Vec<i64>,
}

/// `OwnerValue::member` on the wire: a string, empty for no owner.
mod no_owner {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        member: &Option<String>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(member.as_deref().unwrap_or(""))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let member = String::deserialize(d)?;
        Ok((!member.is_empty()).then_some(member))
    }
}

impl OwnerValue {
    /// Whether `id` is the owner.
    pub fn is(&self, id: &str) -> bool {
        self.member.as_deref() == Some(id)
    }

    /// Whether the two name the same ownership, whatever they refute.
    pub fn same_ownership(&self, other: &Self) -> bool {
        self.member == other.member
            && self.epoch == other.epoch
            && self.start == other.start
            && self.by == other.by
    }
}

/// A committed offset: the next offset to consume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetValue {
    /// The next offset to consume.
    pub offset: i64,
    /// The owner that committed it; absent in commits made outside a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The owner's epoch it was committed in; absent outside a group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Written by an operator's reset while the group was stopped: it also
    /// overrides the offsets earlier transactions committed. Absent (false) in
    /// every other commit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// When it was committed (RFC 3339).
    pub committed_at: String,
}

/// A value as the tests write it; the coordinator writes through
/// `ProducerRecord::json`, which reports a value it cannot encode.
#[cfg(test)]
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("protocol values encode")
}

/// The transactional id of the producer that processes `tp` for `group`:
/// `<group>-txn/<topic>/<partition>`. A topic name cannot hold `/`, so the
/// id read from its end gives back the partition, the topic and the group:
/// two pairs of group and input partition never share an id, whatever their
/// names hold. (The first ids, `<group>-<topic>-<partition>`, could: group
/// `a-b` with topic `c` and group `a` with topic `b-c`.) Every id starts with
/// `<group>-`, so one prefixed ACL covers them and the first ones.
pub fn transactional_id(group: &str, tp: &TopicPartition) -> String {
    format!("{group}-txn/{}/{}", tp.topic, tp.partition)
}

/// The id that versions before [`transactional_id`] used for `tp`, fenced
/// on taking the partition while `fence_legacy_transactional_ids`
/// is on, so that a member still running one of them during a rolling
/// upgrade cannot commit after the new owner starts.
pub fn legacy_transactional_id(group: &str, tp: &TopicPartition) -> String {
    format!("{group}-{}-{}", tp.topic, tp.partition)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names that ran together in the first ids stay apart.
    #[test]
    fn transactional_ids_of_different_partitions_differ() {
        let tp = |t: &str, p| TopicPartition::new(t, p);
        let pairs = [
            ("a-b", tp("c", 0)),
            ("a", tp("b-c", 0)),
            ("a-b-c", tp("d", 1)),
            ("a", tp("b-c-d", 1)),
            ("a-txn/b", tp("c", 0)),
            ("a", tp("c", 10)),
            ("a-1", tp("c", 0)),
        ];
        assert_eq!(
            legacy_transactional_id(pairs[0].0, &pairs[0].1),
            legacy_transactional_id(pairs[1].0, &pairs[1].1),
            "the first ids collided"
        );
        let ids: std::collections::HashSet<String> = pairs
            .iter()
            .map(|(g, tp)| transactional_id(g, tp))
            .collect();
        assert_eq!(ids.len(), pairs.len(), "{ids:?}");
        assert_eq!(
            transactional_id("inventory-service", &tp("order.created", 2)),
            "inventory-service-txn/order.created/2"
        );
    }

    #[test]
    fn no_owner_is_written_and_read_as_earlier_versions_did() {
        let passed = OwnerValue {
            member: None,
            epoch: 3,
            start: 7,
            by: Some("a".into()),
            refutes: Vec::new(),
        };
        let json = serde_json::to_string(&passed).unwrap();
        assert!(json.starts_with(r#"{"member":"","epoch":3"#), "{json}");
        let read: OwnerValue =
            serde_json::from_str(r#"{"member":"","epoch":3,"start":7,"by":"a"}"#).unwrap();
        assert_eq!(read, passed);
        let owned: OwnerValue =
            serde_json::from_str(r#"{"member":"b","epoch":1,"start":0}"#).unwrap();
        assert!(owned.is("b"));
    }

    #[test]
    fn written_keys_are_the_bytes_serde_writes() {
        let odd = "g \"quoted\" \\ back\n\u{1} é 🦀";
        for key in [
            Key::Member {
                group: odd.into(),
                member: "m-1".into(),
            },
            Key::Owner {
                group: "g".into(),
                topic: odd.into(),
                partition: -1,
            },
            Key::Offset {
                group: String::new(),
                topic: "orders".into(),
                partition: i32::MAX,
            },
        ] {
            assert_eq!(
                String::from_utf8(key.encode()).unwrap(),
                serde_json::to_string(&key).unwrap()
            );
            assert_eq!(Key::decode(&key.encode()), Some(key));
        }
    }

    #[test]
    fn keys_are_stable_json() {
        let key = Key::Offset {
            group: "g".into(),
            topic: "order.created".into(),
            partition: 3,
        };
        assert_eq!(
            String::from_utf8(key.encode()).unwrap(),
            r#"{"type":"offset","group":"g","topic":"order.created","partition":3}"#
        );
        assert_eq!(Key::decode(&key.encode()), Some(key));
        assert_eq!(Key::decode(br#"{"type":"lease","group":"g"}"#), None);
    }

    #[test]
    fn commits_without_an_owner_still_read() {
        let v: OffsetValue =
            serde_json::from_str(r#"{"offset":5,"committed_at":"2026-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(
            (v.offset, v.member.clone(), v.epoch, v.reset),
            (5, None, None, false)
        );
        let written = serde_json::to_string(&v).unwrap();
        assert!(!written.contains("reset"), "{written}");
    }
}
