//! The pick order of a pool's servers (`balance`): which server to try first, and which next
//! when a connect fails.
//!
//! The order is a pure function of the policy, a rotation counter, what each server looks like
//! now ([`Slot`]), and the request's affinity key (`balance = "hash"`, SPEC §10).
//!
//! Hashing is rendezvous (highest random weight): every server in rotation gets the weight
//! [`weight`]`(key, server)` and the servers are tried heaviest first. A server's weight for a
//! key depends on nothing but the two, so a key stays on its server while that server is up,
//! a down server's keys go to their next server in that same order (and come back when it
//! returns), and adding or removing one of N servers moves only the keys whose heaviest server
//! it is: about 1/N of them.

use std::sync::atomic::{AtomicUsize, Ordering};

use sha1::{Digest, Sha1};

use crate::config::Balance;

/// One server as the balancer sees it at the moment of the pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// In rotation: neither the passive nor the active verdict says down.
    pub(crate) up: bool,
    /// Open tunnels on it (`least_connections`).
    pub(crate) active: usize,
    /// [`stable_hash`] of the server's configured address (`host:port`), its identity for
    /// rendezvous hashing: not its position, so reordering, adding or removing other servers in
    /// the config leaves its keys where they are.
    pub(crate) id: u64,
}

/// A pool's policy and its rotation counter.
#[derive(Debug)]
pub(crate) struct Balancer {
    policy: Balance,
    next: AtomicUsize,
}

impl Balancer {
    pub(crate) fn new(policy: Balance) -> Self {
        Balancer {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    /// The policy this balancer picks by.
    pub(crate) fn policy(&self) -> &Balance {
        &self.policy
    }

    /// Indices of `slots` in the order to try them for one request, servers that are down left
    /// out; empty when every server is down. Every pick by rotation advances it; a hashed pick
    /// does not, so keyless requests of a hash pool still take turns evenly.
    pub(crate) fn pick(&self, slots: &[Slot], key: Option<u64>) -> Vec<usize> {
        let hashed = matches!(self.policy, Balance::Hash(_)) && key.is_some();
        let start = if hashed {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        order(&self.policy, start, slots, key)
    }
}

/// The pick order for rotation position `start`.
///
/// - round robin: the servers from `start` on, wrapping around;
/// - least connections: the same rotation, stably sorted by open tunnels, so equally loaded
///   servers still take turns;
/// - hash with a key: heaviest [`weight`] first (ties, which need a 64-bit collision, by
///   position); without a key, round robin.
fn order(policy: &Balance, start: usize, slots: &[Slot], key: Option<u64>) -> Vec<usize> {
    let n = slots.len();
    let mut order: Vec<usize> = (0..n)
        .map(|i| (start.wrapping_add(i)) % n)
        .filter(|&i| slots[i].up)
        .collect();
    match (policy, key) {
        (Balance::RoundRobin, _) | (Balance::Hash(_), None) => {}
        (Balance::LeastConnections, _) => order.sort_by_key(|&i| slots[i].active),
        (Balance::Hash(_), Some(key)) => {
            order.sort_by_key(|&i| (std::cmp::Reverse(weight(key, slots[i].id)), i));
        }
    }
    order
}

/// The rendezvous weight of server `id` for `key`.
fn weight(key: u64, id: u64) -> u64 {
    let mut input = [0u8; 16];
    input[..8].copy_from_slice(&key.to_be_bytes());
    input[8..].copy_from_slice(&id.to_be_bytes());
    stable_hash(&input)
}

/// A 64-bit hash that is the same in every process, build and version: the first 8 bytes of
/// SHA-1, big-endian. Two gateway replicas, or one before and after a restart, must send a key
/// to the same server, which rules out std's randomly seeded `RandomState`; SHA-1 (already used
/// for `Sec-WebSocket-Accept`) is fixed by FIPS 180-4 and spreads any input evenly. Nothing
/// here relies on it being hard to invert: a client can pick its own key anyway.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let digest = Sha1::digest(bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

// Row tables are tuples on purpose: one line per rule.
#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    const fn up(active: usize) -> Slot {
        Slot {
            up: true,
            active,
            id: 0,
        }
    }
    const DOWN: Slot = Slot {
        up: false,
        active: 0,
        id: 0,
    };

    #[test]
    fn pick_order_rows() {
        use Balance::{LeastConnections as Lc, RoundRobin as Rr};
        // (name, policy, start, slots, key, order)
        #[rustfmt::skip]
        let rows: &[(&str, Balance, usize, &[Slot], Option<u64>, &[usize])] = &[
            ("rr_first", Rr, 0, &[up(0), up(0), up(0)], None, &[0, 1, 2]),
            ("rr_rotates", Rr, 1, &[up(0), up(0), up(0)], None, &[1, 2, 0]),
            ("rr_wraps", Rr, 5, &[up(0), up(0), up(0)], None, &[2, 0, 1]),
            ("rr_ignores_load", Rr, 0, &[up(9), up(0)], None, &[0, 1]),
            ("rr_skips_down", Rr, 0, &[DOWN, up(0), up(0)], None, &[1, 2]),
            ("rr_all_down", Rr, 0, &[DOWN, DOWN], None, &[]),
            ("rr_no_servers", Rr, 3, &[], None, &[]),
            ("rr_counter_wraps", Rr, usize::MAX, &[up(0), up(0)], None, &[1, 0]),
            ("lc_idle_first", Lc, 0, &[up(2), up(1), up(0)], None, &[2, 1, 0]),
            ("lc_ties_rotate", Lc, 1, &[up(1), up(1), up(0)], None, &[2, 1, 0]),
            ("lc_ties_rotate_next", Lc, 2, &[up(1), up(1), up(0)], None, &[2, 0, 1]),
            ("lc_skips_down", Lc, 0, &[DOWN, up(3), up(1)], None, &[2, 1]),
            // Only hashing looks at the key.
            ("rr_key_ignored", Rr, 1, &[up(0), up(0), up(0)], Some(7), &[1, 2, 0]),
            ("lc_key_ignored", Lc, 0, &[up(1), up(0)], Some(7), &[1, 0]),
        ];
        for (name, policy, start, slots, key, want) in rows {
            assert_eq!(order(policy, *start, slots, *key), *want, "{name}");
        }
    }

    fn hash() -> Balance {
        Balance::Hash(crate::config::HashKey::ClientIp)
    }

    /// Slots for the servers at these addresses, all up.
    fn servers(addrs: &[&str]) -> Vec<Slot> {
        addrs
            .iter()
            .map(|a| Slot {
                id: stable_hash(a.as_bytes()),
                ..up(0)
            })
            .collect()
    }

    /// The address each of 10,000 keys goes to first.
    fn first_choices(addrs: &[&str], slots: &[Slot]) -> Vec<String> {
        (0..10_000)
            .map(|k| {
                let key = stable_hash(format!("room-{k}").as_bytes());
                addrs[order(&hash(), 0, slots, Some(key))[0]].to_owned()
            })
            .collect()
    }

    const THREE: [&str; 3] = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"];

    #[test]
    fn the_hash_is_fixed_across_processes_and_versions() {
        // Replicas and restarts must agree: a change here moves every key of every deployment.
        assert_eq!(stable_hash(b""), 0xda39_a3ee_5e6b_4b0d);
        assert_eq!(weight(1, 2), 0x869b_3bad_fbf1_d6b7);
        assert_eq!(stable_hash(b"room-1"), stable_hash(b"room-1"));
        assert_ne!(stable_hash(b"room-1"), stable_hash(b"room-2"));
    }

    #[test]
    fn hashing_spreads_10000_keys_evenly_over_3_servers() {
        let firsts = first_choices(&THREE, &servers(&THREE));
        for addr in THREE {
            let n = firsts.iter().filter(|a| *a == addr).count();
            // 3333 expected; the standard deviation is 47.
            assert!((3_000..=3_667).contains(&n), "{addr}: {n} of 10000 keys");
        }
    }

    #[test]
    fn adding_a_fourth_server_moves_about_a_quarter_only_to_it() {
        let before = first_choices(&THREE, &servers(&THREE));
        // Listed first, so every old server changes position: positions must not matter.
        let four = ["10.0.0.4:8080", THREE[0], THREE[1], THREE[2]];
        let after = first_choices(&four, &servers(&four));
        let moved: Vec<usize> = (0..before.len())
            .filter(|&k| before[k] != after[k])
            .collect();
        assert!(
            (2_200..=2_800).contains(&moved.len()),
            "{} of 10000 moved",
            moved.len()
        );
        assert!(
            moved.iter().all(|&k| after[k] == four[0]),
            "a key moved between old servers"
        );
    }

    #[test]
    fn removing_one_of_four_moves_only_its_keys() {
        let four = ["10.0.0.4:8080", THREE[0], THREE[1], THREE[2]];
        let before = first_choices(&four, &servers(&four));
        let after = first_choices(&THREE, &servers(&THREE));
        for k in 0..before.len() {
            if before[k] != four[0] {
                assert_eq!(
                    before[k], after[k],
                    "key {k} moved off a server that stayed"
                );
            }
        }
        assert!(after.iter().all(|a| a != four[0]));
    }

    #[test]
    fn a_down_servers_keys_go_to_their_next_in_hash_order_and_come_back() {
        let mut slots = servers(&THREE);
        let before: Vec<Vec<usize>> = (0..1_000u64)
            .map(|k| order(&hash(), 0, &slots, Some(stable_hash(&k.to_be_bytes()))))
            .collect();
        slots[1].up = false;
        for (k, full) in (0..1_000u64).zip(&before) {
            let key = Some(stable_hash(&k.to_be_bytes()));
            let down = order(&hash(), 0, &slots, key);
            // The same order with the down server left out: its keys take their second choice,
            // every other key stays, and connect failover walks the same order.
            let want: Vec<usize> = full.iter().copied().filter(|&i| i != 1).collect();
            assert_eq!(down, want, "key {k}");
        }
        slots[1].up = true;
        for (k, full) in (0..1_000u64).zip(&before) {
            let key = Some(stable_hash(&k.to_be_bytes()));
            assert_eq!(
                &order(&hash(), 0, &slots, key),
                full,
                "key {k} did not come back"
            );
        }
    }

    #[test]
    fn a_hash_pool_without_a_key_takes_turns() {
        let b = Balancer::new(hash());
        let slots = servers(&THREE);
        let keyed = Some(stable_hash(b"room"));
        let mut firsts = Vec::new();
        for _ in 0..3 {
            firsts.push(b.pick(&slots, None)[0]);
            // Keyed picks in between neither move the rotation nor leave their server.
            assert_eq!(b.pick(&slots, keyed), b.pick(&slots, keyed));
        }
        firsts.sort_unstable();
        assert_eq!(firsts, [0, 1, 2]);
    }

    #[test]
    fn every_pick_advances_the_rotation() {
        let b = Balancer::new(Balance::RoundRobin);
        let slots = [up(0), up(0), up(0)];
        let firsts: Vec<usize> = (0..4).map(|_| b.pick(&slots, None)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0]);
    }
}
