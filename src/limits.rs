//! Connection admission (SPEC §3, §6 "h2 limits", §2 `[limits]`): every open client connection
//! counts, a tunnel included, until its [`ConnPermit`] is dropped; RFC 8441 tunnel streams are
//! admitted the same way as connections. Clients are keyed by [`client_key`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::error::Reject;

/// Counts open client connections, in total and per client key, and meters new ones per key.
#[derive(Debug, Default)]
pub(crate) struct ConnLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    rate: Mutex<RateBuckets>,
}

/// Proof that a connection was admitted; dropping it frees the slot. Shared (in an `Arc`) by a
/// connection and the tunnels it opens, so the slot lives as long as any of them.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    key: IpAddr,
}

/// The address per-client limits count under: an IPv4 address (also IPv4-mapped IPv6) as is,
/// an IPv6 address by its /64 prefix, since one subscriber is usually given a whole /64 and
/// could otherwise pick a fresh address for every connection.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

impl ConnLimiter {
    /// Admits a connection (or an h2 tunnel stream) from `ip` at `now`. Every call takes a token
    /// from the key's rate bucket, refused calls included (SPEC §3); then the first limit
    /// exceeded answers: `max_connections` (503), `max_connections_per_ip` (429),
    /// `connection_rate_per_ip` (429). Limits are passed per call so a reload applies to the
    /// next connection.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &Limits,
        now: Instant,
    ) -> Result<ConnPermit, Reject> {
        let key = client_key(ip);
        let within_rate = limits.connection_rate_per_ip.is_none_or(|rate| {
            self.rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(key, rate, now)
        });
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Reject::TooManyConnections);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(key).or_insert(0);
        let refusal = if limits
            .max_connections_per_ip
            .is_some_and(|max| *count >= max)
        {
            Some(Reject::TooManyConnectionsPerIp)
        } else if !within_rate {
            Some(Reject::ConnectionRateExceeded)
        } else {
            None
        };
        if let Some(reject) = refusal {
            if *count == 0 {
                per_ip.remove(&key);
            }
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(reject);
        }
        *count += 1;
        Ok(ConnPermit {
            limiter: Arc::clone(self),
            key,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_ip.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.key);
            }
        }
        drop(per_ip);
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One token bucket per client key (rate r per second, burst r). A bucket untouched for a
/// second is full again, which is what a missing entry means, so such entries are swept once the
/// map has grown: memory follows the number of recently active clients.
#[derive(Debug, Default)]
struct RateBuckets {
    buckets: HashMap<IpAddr, Bucket>,
    /// Map size at which the next sweep runs; doubles past what a sweep could not free.
    sweep_at: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The map size below which no sweep runs.
const SWEEP_FLOOR: usize = 1024;

/// How long an untouched bucket takes to refill completely (burst = one second of rate).
const REFILL: Duration = Duration::from_secs(1);

impl RateBuckets {
    /// Takes a token from `key`'s bucket; false when it is empty (the call still counts).
    fn take(&mut self, key: IpAddr, rate: u32, now: Instant) -> bool {
        if self.buckets.len() >= self.sweep_at.max(SWEEP_FLOOR) {
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < REFILL);
            self.sweep_at = 2 * self.buckets.len();
        }
        let burst = f64::from(rate);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * burst;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            // An empty bucket stays empty while the client keeps trying (refused calls take
            // their token too), so a flood never gets through.
            bucket.tokens -= 1.0;
            bucket.tokens = bucket.tokens.max(-burst);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: Option<usize>, rate: Option<u32>) -> Limits {
        let mut l = crate::config::Limits::defaults_for_tests();
        l.max_connections = total;
        l.max_connections_per_ip = per_ip;
        l.connection_rate_per_ip = rate;
        l
    }

    #[test]
    fn limits_total_and_per_ip_and_frees_on_drop() {
        let l = Arc::new(ConnLimiter::default());
        let now = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let one_each = limits(3, Some(1), None);
        let p1 = l.admit(a, &one_each, now).unwrap();
        assert_eq!(
            l.admit(a, &one_each, now).unwrap_err(),
            Reject::TooManyConnectionsPerIp
        );
        let p2 = l.admit(b, &one_each, now).unwrap();
        let p3 = l
            .admit("127.0.0.3".parse().unwrap(), &limits(3, None, None), now)
            .unwrap();
        assert_eq!(
            l.admit(b, &limits(3, None, None), now).unwrap_err(),
            Reject::TooManyConnections
        );
        assert_eq!(l.total.load(Ordering::Acquire), 3);
        drop((p1, p2, p3));
        assert_eq!(l.total.load(Ordering::Acquire), 0);
        assert!(l.per_ip.lock().unwrap().is_empty());
        let _again = l.admit(a, &one_each, now).unwrap();
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let rows = [
            ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::"),
            ("2001:db8:1:2:ffff::1", "2001:db8:1:2::"),
            ("::ffff:192.0.2.7", "192.0.2.7"),
            ("192.0.2.7", "192.0.2.7"),
            ("::1", "::"),
        ];
        for (ip, key) in rows {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(client_key(ip), key.parse::<IpAddr>().unwrap(), "{ip}");
        }
        let l = Arc::new(ConnLimiter::default());
        let now = Instant::now();
        let one = limits(10, Some(1), None);
        let _p = l.admit("2001:db8::1".parse().unwrap(), &one, now).unwrap();
        assert_eq!(
            l.admit("2001:db8::2".parse().unwrap(), &one, now)
                .unwrap_err(),
            Reject::TooManyConnectionsPerIp
        );
        l.admit("2001:db8:0:1::1".parse().unwrap(), &one, now)
            .unwrap();
    }

    #[test]
    fn rate_is_a_token_bucket_that_counts_refusals() {
        let l = Arc::new(ConnLimiter::default());
        let t0 = Instant::now();
        let rate = limits(100, None, Some(2));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // Burst of 2, then refused; permits may be dropped at once, the rate still applies.
        assert!(l.admit(ip, &rate, t0).is_ok());
        assert!(l.admit(ip, &rate, t0).is_ok());
        assert_eq!(
            l.admit(ip, &rate, t0).unwrap_err(),
            Reject::ConnectionRateExceeded
        );
        // Another address has its own bucket.
        assert!(l.admit("10.0.0.2".parse().unwrap(), &rate, t0).is_ok());
        // Half a second refills one token, but the refused attempt above went into debt.
        let later = t0 + Duration::from_millis(500);
        assert!(l.admit(ip, &rate, later).is_err());
        // A quiet second and a half later the bucket is full again.
        let quiet = later + Duration::from_millis(1500);
        assert!(l.admit(ip, &rate, quiet).is_ok());
        assert!(l.admit(ip, &rate, quiet).is_ok());
        assert!(l.admit(ip, &rate, quiet).is_err());
        assert_eq!(l.total.load(Ordering::Acquire), 0, "permits were dropped");
    }

    #[test]
    fn idle_buckets_are_swept() {
        let mut buckets = RateBuckets::default();
        let t0 = Instant::now();
        for i in 0..SWEEP_FLOOR as u32 {
            assert!(buckets.take(IpAddr::from(i.to_be_bytes()), 5, t0));
        }
        let later = t0 + REFILL;
        assert!(buckets.take("10.9.9.9".parse().unwrap(), 5, later));
        assert_eq!(buckets.buckets.len(), 1);
    }
}
