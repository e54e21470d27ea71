//! Role election, Kairos-compatible mode: nodes advertise themselves; once `minimum_nodes`
//! are seen, the node whose id has the largest FNV-32a hash leads and assigns roles: one
//! cluster-init master, `ha_masters` further masters, the rest workers. As in Kairos the
//! leader picks the masters at random (here from the RNG it is given, so simulations
//! replay); nothing stops two leaders with different views from picking two masters, which
//! is the split brain the default mode (a later step) is built to avoid.

use std::collections::BTreeMap;

use bootyard_sim::Rng;
use serde::{Deserialize, Serialize};

/// FNV-1a, 32 bits.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ClusterInit,
    Master,
    Worker,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub leader: String,
    pub roles: BTreeMap<String, Role>,
}

/// FNV-32a of a key's name (the hex of its first 8 bytes, as nodes are named), without
/// allocating: sort keys call it a lot. Elections and the ledger's owner cap rank by it,
/// larger first.
pub fn key_fnv(key: &[u8; 32]) -> u32 {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for (i, b) in key[..8].iter().enumerate() {
        buf[2 * i] = HEX[usize::from(b >> 4)];
        buf[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    fnv32a(&buf)
}

/// A key's place in the ranking elections and the ledger's owner cap use: larger FNV-32a
/// first, then the smaller key. Sorting by this puts the best-ranked first.
pub fn key_rank(key: &[u8; 32]) -> (std::cmp::Reverse<u32>, [u8; 32]) {
    (std::cmp::Reverse(key_fnv(key)), *key)
}

/// The leader among `ids`: largest FNV-32a hash, ties broken by the larger id.
pub fn kairos_leader<'a>(ids: &[&'a str]) -> Option<&'a str> {
    ids.iter()
        .copied()
        .max_by_key(|id| (fnv32a(id.as_bytes()), *id))
}

/// What the leader assigns once `minimum_nodes` are seen; `None` before that.
pub fn kairos_assign(
    ids: &[&str],
    minimum_nodes: usize,
    ha_masters: usize,
    rng: &mut Rng,
) -> Option<Assignment> {
    let mut nodes: Vec<&str> = ids.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() || nodes.len() < minimum_nodes {
        return None;
    }
    let leader = kairos_leader(&nodes)?.to_string();
    let mut pool = nodes.clone();
    let mut roles = BTreeMap::new();
    let take = |rng: &mut Rng, pool: &mut Vec<&str>| -> String {
        pool.swap_remove(rng.below(pool.len() as u64) as usize)
            .to_string()
    };
    roles.insert(take(rng, &mut pool), Role::ClusterInit);
    for _ in 0..ha_masters.min(pool.len()) {
        roles.insert(take(rng, &mut pool), Role::Master);
    }
    for id in pool {
        roles.insert(id.to_string(), Role::Worker);
    }
    Some(Assignment { leader, roles })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv32a_matches_the_reference_vectors() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        assert_eq!(fnv32a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn assigns_once_enough_nodes_are_seen() {
        let ids = ["node-a", "node-b", "node-c", "node-d", "node-e"];
        let mut rng = Rng::seed(1);
        assert_eq!(kairos_assign(&ids[..2], 3, 1, &mut rng), None);
        let a = kairos_assign(&ids, 3, 2, &mut rng).unwrap();
        assert_eq!(Some(a.leader.as_str()), kairos_leader(&ids));
        let count = |r: Role| a.roles.values().filter(|x| **x == r).count();
        assert_eq!(
            (
                count(Role::ClusterInit),
                count(Role::Master),
                count(Role::Worker)
            ),
            (1, 2, 2)
        );
        assert_eq!(a.roles.len(), ids.len());
        // The same seed and view give the same assignment; the input order does not matter.
        let mut shuffled = ids;
        shuffled.reverse();
        assert_eq!(
            kairos_assign(&ids, 3, 2, &mut Rng::seed(9)),
            kairos_assign(&shuffled, 3, 2, &mut Rng::seed(9))
        );
        // More HA masters than nodes: everyone else is a master.
        let small = kairos_assign(&ids[..2], 1, 5, &mut rng).unwrap();
        assert_eq!(
            small.roles.values().filter(|r| **r == Role::Worker).count(),
            0
        );
    }
}
