//! Choosing a request's server: the policies of `balance`, each a table
//! built when the group is, read without a lock on the request path.
//!
//! Every policy skips servers that are down or ejected ([`Servers`]): the
//! next one in turn, the other of the two drawn, the next on the ring.
//! While every server is available (the common case) that costs one
//! relaxed load.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;

use super::health::Servers;

/// Points on the hash ring per unit of weight, at least.
const POINTS_PER_WEIGHT: u64 = 160;
/// Points on the ring at least, whatever the weights (Envoy's minimum is
/// 1024): with few servers, more points per server even out their shares.
const MIN_POINTS: u64 = 4096;
/// The most points a ring holds, whatever the weights (4 MiB of table).
const MAX_POINTS: u64 = 262_144;

/// A group's balancing policy and its tables.
#[derive(Debug)]
pub(super) enum Balancer {
    /// The weighted order, repeated: an earliest-deadline-first schedule,
    /// so a server of weight 3 among servers of weight 1 is spread out, not
    /// taken three times in a row.
    RoundRobin {
        schedule: Box<[u32]>,
        next: AtomicUsize,
    },
    /// Power of two choices on requests in flight per unit of weight.
    LeastRequest,
    /// Weighted random: cumulative weights, searched.
    Random { cumulative: Box<[u64]> },
    /// A hash ring of `(point, server)`, sorted by point.
    ConsistentHash { ring: Box<[(u64, u32)]> },
}

impl Balancer {
    /// The tables for `balance` over servers of `weights` (named by
    /// `addresses`, which place them on the ring).
    pub(super) fn new(balance: Balance, weights: &[u32], addresses: &[&str]) -> Self {
        match balance {
            Balance::RoundRobin => Balancer::RoundRobin {
                schedule: schedule(weights),
                next: AtomicUsize::new(0),
            },
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::Random => Balancer::Random {
                cumulative: weights
                    .iter()
                    .scan(0u64, |sum, w| {
                        *sum += u64::from(*w);
                        Some(*sum)
                    })
                    .collect(),
            },
            Balance::ConsistentHash => Balancer::ConsistentHash {
                ring: ring(weights, addresses),
            },
        }
    }

    /// The server for a request whose hash key is `key` (used by
    /// `consistent_hash` only), or `None` when no server is available.
    pub(super) fn pick(&self, servers: &Servers, key: u64) -> Option<usize> {
        let all = servers.all_available();
        let count = servers.len();
        match self {
            Balancer::RoundRobin { schedule, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                let len = schedule.len();
                let at = |k: usize| schedule[(start.wrapping_add(k)) % len] as usize;
                if all {
                    return Some(at(0));
                }
                let now = servers.now_ms();
                (0..len).map(at).find(|i| servers.available(*i, now))
            }
            Balancer::LeastRequest => {
                if count <= 1 {
                    return servers.first_available(0);
                }
                let a = fastrand::usize(..count);
                let mut b = fastrand::usize(..count - 1);
                if b >= a {
                    b += 1;
                }
                let (better, worse) = if servers.load_below(b, a) {
                    (b, a)
                } else {
                    (a, b)
                };
                if all {
                    return Some(better);
                }
                let now = servers.now_ms();
                [better, worse]
                    .into_iter()
                    .find(|i| servers.available(*i, now))
                    .or_else(|| servers.first_available(better))
            }
            Balancer::Random { cumulative } => {
                let total = cumulative.last().copied().unwrap_or(0);
                if total == 0 {
                    return None;
                }
                let draw = fastrand::u64(..total);
                let chosen = cumulative.partition_point(|sum| *sum <= draw);
                if all {
                    return Some(chosen);
                }
                servers.first_available(chosen)
            }
            Balancer::ConsistentHash { ring } => {
                if ring.is_empty() {
                    return None;
                }
                let start = ring.partition_point(|(point, _)| *point < key);
                let at = |k: usize| ring[(start + k) % ring.len()].1 as usize;
                if all {
                    return Some(at(0));
                }
                // The next point of an available server: only the keys of
                // the servers that are out move, and each to its own next.
                let now = servers.now_ms();
                (0..ring.len()).map(at).find(|i| servers.available(*i, now))
            }
        }
    }
}

/// The round-robin order: each server as many times as its weight (divided
/// by the weights' greatest common divisor), spread out by earliest
/// deadline first (server `i`'s `k`-th turn is due at `(k - 1/2) / weight`:
/// weights 1 and 3 give `b a b b`).
fn schedule(weights: &[u32]) -> Box<[u32]> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<u64> = weights.iter().map(|w| u64::from(w / divisor)).collect();
    let total: u64 = weights.iter().sum();

    /// Server `index`'s next turn, due at `(turn - 1/2) / weight`.
    #[derive(PartialEq, Eq)]
    struct Due {
        turn: u64,
        weight: u64,
        index: u32,
    }
    impl Ord for Due {
        fn cmp(&self, other: &Self) -> CmpOrdering {
            // Earliest first (the heap is a max-heap), then the lower index.
            ((2 * other.turn - 1) * self.weight)
                .cmp(&((2 * self.turn - 1) * other.weight))
                .then(other.index.cmp(&self.index))
        }
    }
    impl PartialOrd for Due {
        fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
            Some(self.cmp(other))
        }
    }

    let mut heap: BinaryHeap<Due> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(index, weight)| Due {
            turn: 1,
            weight: *weight,
            index: index as u32,
        })
        .collect();
    let mut order = Vec::with_capacity(total as usize);
    while (order.len() as u64) < total {
        let Some(mut due) = heap.pop() else { break };
        order.push(due.index);
        due.turn += 1;
        heap.push(due);
    }
    order.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The hash ring: points in proportion to the weights (`POINTS_PER_WEIGHT`
/// per unit at least, `MIN_POINTS` in all at least, scaled down to
/// `MAX_POINTS` in all at most), each at the hash of `address#k`, so that
/// every gateway with the same servers builds the same ring.
fn ring(weights: &[u32], addresses: &[&str]) -> Box<[(u64, u32)]> {
    let units: u64 = weights.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
    let per_unit = POINTS_PER_WEIGHT.max(MIN_POINTS.div_ceil(units));
    let total = units * per_unit;
    let scale = |w: u32| {
        let points = u64::from(w) * per_unit;
        if total > MAX_POINTS {
            (points * MAX_POINTS / total).max(1)
        } else {
            points
        }
    };
    let mut ring = Vec::new();
    let mut name = String::new();
    for (index, (weight, address)) in weights.iter().zip(addresses).enumerate() {
        for k in 0..scale(*weight) {
            name.clear();
            let _ = write!(name, "{address}#{k}");
            ring.push((hash(name.as_bytes()), index as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

/// The hash of a key or a ring point: XXH3, the same in every process and
/// on every platform (unlike std's `DefaultHasher`), so that gateways in
/// front of the same group send a key to the same server.
pub(super) fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::uri::Authority;

    use super::*;
    use crate::config::OutlierConfig;

    fn servers(weights: &[u32]) -> (Servers, Vec<String>) {
        let addresses: Vec<String> = (0..weights.len())
            .map(|i| format!("10.0.0.{}:80", i + 1))
            .collect();
        let list = addresses
            .iter()
            .zip(weights)
            .map(|(a, w)| (a.parse::<Authority>().expect("authority"), *w))
            .collect();
        let servers = Servers::new(Arc::from("test"), list, OutlierConfig::default(), None);
        (servers, addresses)
    }

    fn build(balance: Balance, weights: &[u32]) -> (Balancer, Servers) {
        let (servers, addresses) = servers(weights);
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        (Balancer::new(balance, weights, &addresses), servers)
    }

    fn counts(balancer: &Balancer, servers: &Servers, picks: u64) -> Vec<u64> {
        let mut counts = vec![0; servers.len()];
        for key in 0..picks {
            let pick = balancer.pick(servers, hash(&key.to_le_bytes()));
            counts[pick.expect("a server")] += 1;
        }
        counts
    }

    #[test]
    fn weights_hold_for_every_policy_over_ten_thousand_requests() {
        let weights = [1, 2, 5];
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::ConsistentHash,
        ] {
            let (balancer, servers) = build(balance, &weights);
            let counts = counts(&balancer, &servers, 10_000);
            for (count, weight) in counts.iter().zip(weights) {
                let expected = 10_000.0 * f64::from(weight) / 8.0;
                let off = (*count as f64 - expected).abs() / expected;
                assert!(
                    off < 0.1,
                    "{balance:?}: {counts:?} against weights {weights:?}"
                );
            }
        }
        // Round-robin is exact over whole turns.
        let (balancer, servers) = build(Balance::RoundRobin, &weights);
        assert_eq!(counts(&balancer, &servers, 800), [100, 200, 500]);
    }

    #[test]
    fn servers_that_are_out_are_skipped_by_every_policy() {
        for balance in [
            Balance::RoundRobin,
            Balance::LeastRequest,
            Balance::Random,
            Balance::ConsistentHash,
        ] {
            let (balancer, servers) = build(balance, &[1, 1, 1]);
            servers.set_up(1, false, 3);
            let counts = counts(&balancer, &servers, 3_000);
            assert_eq!(counts[1], 0, "{balance:?}");
            assert!(counts[0] > 0 && counts[2] > 0, "{balance:?}: {counts:?}");
            servers.set_up(0, false, 3);
            servers.set_up(2, false, 3);
            assert_eq!(balancer.pick(&servers, 7), None, "{balance:?}");
        }
    }

    #[test]
    fn a_server_out_of_the_ring_moves_only_its_own_keys() {
        let (balancer, servers) = build(Balance::ConsistentHash, &[1, 1, 1, 1]);
        let keys: Vec<u64> = (0..10_000u64).map(|k| hash(&k.to_le_bytes())).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| balancer.pick(&servers, *k).expect("a server"))
            .collect();
        // Stable while the servers are.
        for (key, server) in keys.iter().zip(&before) {
            assert_eq!(balancer.pick(&servers, *key), Some(*server));
        }
        servers.set_up(2, false, 3);
        let mut moved = 0;
        for (key, server) in keys.iter().zip(&before) {
            let now = balancer.pick(&servers, *key).expect("a server");
            if *server == 2 {
                assert_ne!(now, 2);
                moved += 1;
            } else {
                assert_eq!(now, *server, "a key of a server still in moved");
            }
        }
        // About a quarter of the keys were on the server taken out.
        assert!((2_000..3_000).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn least_request_prefers_the_less_busy_server() {
        let (balancer, servers) = build(Balance::LeastRequest, &[1, 1]);
        let _busy = servers.enter(0);
        for _ in 0..100 {
            assert_eq!(balancer.pick(&servers, 0), Some(1));
        }
        // Per unit of weight: one in flight on weight 4 is less than one on
        // weight 1.
        let (balancer, servers) = build(Balance::LeastRequest, &[1, 4]);
        let _a = servers.enter(0);
        let _b = servers.enter(1);
        for _ in 0..100 {
            assert_eq!(balancer.pick(&servers, 0), Some(1));
        }
    }

    #[test]
    fn the_schedule_spreads_each_server_by_its_weight() {
        let order = schedule(&[1, 3, 1]);
        assert_eq!(order.len(), 5);
        assert_eq!(order.iter().filter(|i| **i == 1).count(), 3);
        // Weight 3 is spread out: never three times in a row.
        assert!(!order.windows(3).any(|w| w.iter().all(|i| *i == 1)));
        // Common factors are taken out.
        assert_eq!(schedule(&[100, 200]).len(), 3);
        assert_eq!(&*schedule(&[1, 1]), &[0, 1]);
        assert_eq!(&*schedule(&[1, 3]), &[1, 0, 1, 1]);
    }

    #[test]
    fn the_ring_gives_each_server_its_weighted_share_of_points() {
        let ring = ring(&[1, 2], &["a:1", "b:2"]);
        assert_eq!(ring.len(), 3 * 1366);
        assert_eq!(ring.iter().filter(|(_, i)| *i == 1).count(), 2 * 1366);
        assert!(ring.windows(2).all(|w| w[0].0 <= w[1].0));
        // Scaled down past the cap, at least one point each.
        let big = super::ring(&[1000; 4], &["a:1", "b:1", "c:1", "d:1"]);
        assert!(big.len() as u64 <= MAX_POINTS);
    }
}
