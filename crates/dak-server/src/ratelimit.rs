//! Rate limits kept in this node's memory, and the network a client is
//! counted under.
//!
//! `Limiter` is GCRA (the generic cell rate algorithm, the token bucket in
//! one number per key): a burst of `burst` requests, then one per
//! `interval`. It bounds the work one device or one network makes this node
//! do (requests, link starts, Argon2 hashes). Limits on attempts at a secret
//! (codes, PINs) and on SMS spending live in the store instead
//! (`Store::take_token` and friends), because they must hold across nodes.
//!
//! Invariants: a check and its count are one step under one lock, so racing
//! requests can never all pass; a refusal counts nothing; the map is swept
//! of full buckets when it grows, so memory is bounded by the keys active
//! within one burst period.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys above which full buckets are swept on the next check.
const SWEEP_AT: usize = 100_000;

pub struct Limiter<K> {
    interval: Duration,
    burst: u32,
    state: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    /// Theoretical arrival time per key: when its bucket will be full again.
    tat: HashMap<K, Instant>,
    /// Size at which the next sweep runs: twice what the last one left, so
    /// that sweeping costs O(1) per check however many keys stay live.
    sweep_at: usize,
}

impl<K: Hash + Eq> Limiter<K> {
    /// `per_hour` requests an hour as a burst of `burst`, then a steady refill.
    pub fn per_hour(per_hour: u32, burst: u32) -> Self {
        Self::new(Duration::from_secs(3600) / per_hour.max(1), burst)
    }

    pub fn per_second(per_sec: u32, burst: u32) -> Self {
        Self::new(Duration::from_secs(1) / per_sec.max(1), burst)
    }

    pub fn new(interval: Duration, burst: u32) -> Self {
        Limiter {
            interval,
            burst,
            state: Mutex::new(Buckets {
                tat: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// Takes one token for `key`; `Err(seconds until one is free)` when none is.
    pub fn check(&self, key: K) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: K, now: Instant) -> Result<(), u64> {
        let Ok(mut buckets) = self.state.lock() else {
            return Err(1); // poisoned: refuse rather than let everything through
        };
        if buckets.tat.len() >= buckets.sweep_at {
            buckets.tat.retain(|_, t| *t > now);
            buckets.sweep_at = (buckets.tat.len() * 2).max(SWEEP_AT);
        }
        let tat = &mut buckets.tat;
        let window = self.interval * self.burst;
        let current = tat.get(&key).copied().unwrap_or(now).max(now);
        let next = current + self.interval;
        if next.duration_since(now) > window {
            let wait = next.duration_since(now) - window;
            return Err(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        tat.insert(key, next);
        Ok(())
    }
}

/// The network an address belongs to, for per-network limits: IPv4 /24 and
/// IPv6 /56 by default, since one subscriber or one attacker's rented block
/// holds a whole prefix (an IPv6 customer is usually given a /56 or /48).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix(IpAddr);

impl IpPrefix {
    pub fn of(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> IpPrefix {
        // An IPv4 address mapped into IPv6 is counted as the IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        IpPrefix(match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(v4_bits.min(32)))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(v6_bits.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        })
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_steady_rate_per_key() {
        let l = Limiter::new(Duration::from_secs(10), 3);
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", t).is_ok());
        }
        assert_eq!(l.check_at("a", t), Err(10));
        assert!(l.check_at("b", t).is_ok(), "keys are independent");
        assert!(l.check_at("a", t + Duration::from_secs(10)).is_ok());
        assert!(l.check_at("a", t + Duration::from_secs(10)).is_err());
        // A refusal counts nothing: the next token is still 10 s away.
        assert!(l.check_at("a", t + Duration::from_secs(20)).is_ok());
    }

    #[test]
    fn zero_burst_refuses_everything() {
        let l = Limiter::new(Duration::from_secs(1), 0);
        assert!(l.check("a").is_err());
    }

    #[test]
    fn prefixes_group_a_network() {
        let p = |s: &str| IpPrefix::of(s.parse().unwrap(), 24, 56);
        assert_eq!(p("203.0.113.7"), p("203.0.113.200"));
        assert_ne!(p("203.0.113.7"), p("203.0.114.7"));
        assert_eq!(p("2001:db8:1:ff::1"), p("2001:db8:1:aa:1234::9"));
        assert_ne!(p("2001:db8:1:ff::1"), p("2001:db8:2:ff::1"));
        assert_eq!(p("::ffff:203.0.113.7"), p("203.0.113.9"));
        assert_eq!(
            IpPrefix::of("10.1.2.3".parse().unwrap(), 0, 0).to_string(),
            "0.0.0.0"
        );
        assert_eq!(
            IpPrefix::of("10.1.2.3".parse().unwrap(), 32, 128).to_string(),
            "10.1.2.3"
        );
    }
}
