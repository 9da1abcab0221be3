//! Connection admission (SPEC §3 last row, §2 `[limits]`): every open client connection counts,
//! a tunnel included, until its [`ConnPermit`] is dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::Reject;

/// Counts open client connections, in total and per client address.
#[derive(Debug, Default)]
pub(crate) struct ConnLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Proof that a connection was admitted; dropping it frees the slot. Shared (in an `Arc`) by a
/// connection and the tunnels it opens, so the slot lives as long as any of them.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    ip: IpAddr,
}

impl ConnLimiter {
    /// Admits a connection from `ip` unless that would exceed `max_total` (503) or `max_per_ip`
    /// (429). Limits are passed per call so a reload applies to the next connection.
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: Option<usize>,
    ) -> Result<ConnPermit, Reject> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Reject::TooManyConnections);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if max_per_ip.is_some_and(|max| *count >= max) {
            if *count == 0 {
                per_ip.remove(&ip);
            }
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Reject::TooManyConnectionsPerIp);
        }
        *count += 1;
        Ok(ConnPermit {
            limiter: Arc::clone(self),
            ip,
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
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_total_and_per_ip_and_frees_on_drop() {
        let l = Arc::new(ConnLimiter::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = l.admit(a, 3, Some(1)).unwrap();
        assert_eq!(
            l.admit(a, 3, Some(1)).unwrap_err(),
            Reject::TooManyConnectionsPerIp
        );
        let p2 = l.admit(b, 3, Some(1)).unwrap();
        let p3 = l.admit("127.0.0.3".parse().unwrap(), 3, None).unwrap();
        assert_eq!(l.admit(b, 3, None).unwrap_err(), Reject::TooManyConnections);
        assert_eq!(l.total.load(Ordering::Acquire), 3);
        drop((p1, p2, p3));
        assert_eq!(l.total.load(Ordering::Acquire), 0);
        assert!(l.per_ip.lock().unwrap().is_empty());
        let _again = l.admit(a, 3, Some(1)).unwrap();
    }
}
