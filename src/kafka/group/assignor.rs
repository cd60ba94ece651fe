//! Sticky, balanced assignment of partitions to members: a pure function, so every
//! member computes the same result from the same group state.
//!
//! Each member gets `⌊P/M⌋` or `⌈P/M⌉` partitions. The members that get the extra
//! partition are those that own the most already (ties broken by member id), and
//! every member keeps as many of its current partitions as its quota allows. So a
//! join or a leave moves only the partitions that must move, and once ownership
//! matches the assignment, computing it again gives the same assignment.

use std::collections::BTreeMap;

use crate::kafka::topic::TopicPartition;

/// The assignment of `partitions` over `members` (sorted, distinct), given who owns
/// what now (`current`; owners that are not among `members` are ignored).
pub fn assign(
    members: &[&str],
    partitions: &[TopicPartition],
    current: &BTreeMap<TopicPartition, String>,
) -> BTreeMap<TopicPartition, String> {
    let mut target = BTreeMap::new();
    if members.is_empty() || partitions.is_empty() {
        return target;
    }

    let mut owned: BTreeMap<&str, Vec<&TopicPartition>> =
        members.iter().map(|m| (*m, Vec::new())).collect();
    for p in partitions {
        if let Some(list) = current.get(p).and_then(|m| owned.get_mut(m.as_str())) {
            list.push(p);
        }
    }

    let base = partitions.len() / members.len();
    let extra = partitions.len() % members.len();
    let mut by_ownership: Vec<&str> = members.to_vec();
    by_ownership.sort_by(|a, b| owned[b].len().cmp(&owned[a].len()).then(a.cmp(b)));
    let quota: BTreeMap<&str, usize> = by_ownership
        .iter()
        .enumerate()
        .map(|(i, m)| (*m, base + usize::from(i < extra)))
        .collect();

    let mut count: BTreeMap<&str, usize> = members.iter().map(|m| (*m, 0)).collect();
    for (member, list) in &owned {
        for p in list.iter().take(quota[member]) {
            target.insert((*p).clone(), (*member).to_owned());
            *count.get_mut(member).expect("member listed") += 1;
        }
    }

    for p in partitions {
        if target.contains_key(p) {
            continue;
        }
        // The member with the most room left, then the lowest id.
        let member = members
            .iter()
            .filter(|m| count[**m] < quota[**m])
            .max_by(|a, b| {
                (quota[**a] - count[**a])
                    .cmp(&(quota[**b] - count[**b]))
                    .then(b.cmp(a))
            })
            .expect("quotas add up to the partition count");
        target.insert(p.clone(), (*member).to_owned());
        *count.get_mut(member).expect("member listed") += 1;
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(n: i32) -> Vec<TopicPartition> {
        (0..n).map(|p| TopicPartition::new("t", p)).collect()
    }

    fn counts(a: &BTreeMap<TopicPartition, String>) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for m in a.values() {
            *c.entry(m.clone()).or_default() += 1;
        }
        c
    }

    fn moved(
        before: &BTreeMap<TopicPartition, String>,
        after: &BTreeMap<TopicPartition, String>,
    ) -> usize {
        after
            .iter()
            .filter(|(p, m)| before.get(*p) != Some(*m))
            .count()
    }

    #[test]
    fn three_members_get_two_each_of_six() {
        let a = assign(&["a", "b", "c"], &partitions(6), &BTreeMap::new());
        assert_eq!(a.len(), 6);
        assert!(counts(&a).values().all(|&n| n == 2), "{a:?}");
    }

    #[test]
    fn a_join_moves_only_what_it_must() {
        let before = assign(&["a", "b", "c"], &partitions(6), &BTreeMap::new());
        let after = assign(&["a", "b", "c", "d"], &partitions(6), &before);
        let c = counts(&after);
        assert_eq!(c["d"], 1);
        assert!(c.values().all(|&n| n == 1 || n == 2), "{c:?}");
        assert_eq!(
            moved(&before, &after),
            1,
            "only one partition goes to the newcomer"
        );
        // Stable once ownership follows the assignment.
        assert_eq!(assign(&["a", "b", "c", "d"], &partitions(6), &after), after);
    }

    #[test]
    fn a_leave_moves_only_the_leavers_partitions() {
        let before = assign(&["a", "b", "c"], &partitions(6), &BTreeMap::new());
        let after = assign(&["a", "c"], &partitions(6), &before);
        assert!(counts(&after).values().all(|&n| n == 3));
        let movers: Vec<_> = after
            .iter()
            .filter(|(p, m)| before.get(*p) != Some(*m))
            .map(|(p, _)| before[p].clone())
            .collect();
        assert_eq!(movers, vec!["b".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn balanced_for_every_shape() {
        for m in 1..8usize {
            let names: Vec<String> = (0..m).map(|i| format!("m{i}")).collect();
            let members: Vec<&str> = names.iter().map(String::as_str).collect();
            for p in 0..20 {
                let a = assign(&members, &partitions(p), &BTreeMap::new());
                assert_eq!(a.len(), p as usize);
                let c: Vec<usize> = members
                    .iter()
                    .map(|m| a.values().filter(|o| o == m).count())
                    .collect();
                let (lo, hi) = (c.iter().min().unwrap(), c.iter().max().unwrap());
                assert!(hi - lo <= 1, "{m} members, {p} partitions: {c:?}");
            }
        }
    }

    #[test]
    fn owners_outside_the_group_are_ignored() {
        let current: BTreeMap<_, _> = partitions(4)
            .into_iter()
            .map(|p| (p, "gone".to_owned()))
            .collect();
        let a = assign(&["a", "b"], &partitions(4), &current);
        assert!(counts(&a).values().all(|&n| n == 2));
    }
}
