//! The pick order of a pool's servers (`balance`): which server to try first, and which next
//! when a connect fails.
//!
//! The order is a pure function of the policy, a rotation counter, what each server looks like
//! now ([`Slot`]), and a request-derived key. Today's policies ignore the key; it is there so
//! that hash affinity (`balance = "hash"`) picks by request without reshaping the callers.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;

/// One server as the balancer sees it at the moment of the pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// In rotation: neither the passive nor the active verdict says down.
    pub(crate) up: bool,
    /// Open tunnels on it (`least_connections`).
    pub(crate) active: usize,
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

    /// Indices of `slots` in the order to try them for one request, servers that are down left
    /// out; empty when every server is down. Every call advances the rotation.
    pub(crate) fn pick(&self, slots: &[Slot], key: Option<u64>) -> Vec<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        order(self.policy, start, slots, key)
    }
}

/// The pick order for rotation position `start`.
///
/// - round robin: the servers from `start` on, wrapping around;
/// - least connections: the same rotation, stably sorted by open tunnels, so equally loaded
///   servers still take turns.
fn order(policy: Balance, start: usize, slots: &[Slot], _key: Option<u64>) -> Vec<usize> {
    let n = slots.len();
    let mut order: Vec<usize> = (0..n)
        .map(|i| (start.wrapping_add(i)) % n)
        .filter(|&i| slots[i].up)
        .collect();
    match policy {
        Balance::RoundRobin => {}
        Balance::LeastConnections => order.sort_by_key(|&i| slots[i].active),
    }
    order
}

// Row tables are tuples on purpose: one line per rule.
#[cfg(test)]
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;

    const fn up(active: usize) -> Slot {
        Slot { up: true, active }
    }
    const DOWN: Slot = Slot {
        up: false,
        active: 0,
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
            // Today's policies ignore the key.
            ("rr_key_ignored", Rr, 1, &[up(0), up(0), up(0)], Some(7), &[1, 2, 0]),
            ("lc_key_ignored", Lc, 0, &[up(1), up(0)], Some(7), &[1, 0]),
        ];
        for (name, policy, start, slots, key, want) in rows {
            assert_eq!(order(*policy, *start, slots, *key), *want, "{name}");
        }
    }

    #[test]
    fn every_pick_advances_the_rotation() {
        let b = Balancer::new(Balance::RoundRobin);
        let slots = [up(0), up(0), up(0)];
        let firsts: Vec<usize> = (0..4).map(|_| b.pick(&slots, None)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0]);
    }
}
