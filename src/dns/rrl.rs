//! Response rate limiting per source prefix (IPv4 /24, IPv6 /56, as BIND groups them).
//!
//! A token bucket per prefix in a fixed-size table: memory stays bounded however many
//! sources a flood spoofs; a prefix that lands on a slot held by another takes it over
//! with a full bucket, which errs on the side of answering. Over the limit, every
//! `SLIP`th response goes out truncated (TC=1) so that a real client behind a spoofed
//! prefix can still get its answer over TCP; the others are dropped.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

const SLOTS: usize = 4096;
const SLIP: u32 = 2;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Answer truncated, so the client retries over TCP.
    Slip,
    Drop,
}

pub struct RateLimiter {
    limit: u32,
    rate: f64,
    epoch: Instant,
    slots: Vec<Mutex<Bucket>>,
}

#[derive(Default, Clone, Copy)]
struct Bucket {
    prefix: u64,
    tokens: f64,
    /// Seconds since `epoch` of the last refill.
    at: f64,
    over: u32,
    used: bool,
}

impl RateLimiter {
    /// `rate` responses per second per prefix, with a burst of one second's worth.
    pub fn new(rate: u32) -> RateLimiter {
        RateLimiter {
            limit: rate,
            rate: f64::from(rate),
            epoch: Instant::now(),
            slots: (0..SLOTS).map(|_| Mutex::new(Bucket::default())).collect(),
        }
    }

    /// The configured responses per second.
    pub fn rate(&self) -> u32 {
        self.limit
    }

    pub fn check(&self, src: IpAddr) -> Verdict {
        let prefix = prefix_of(src);
        let now = self.epoch.elapsed().as_secs_f64();
        // Multiplicative hashing spreads neighbouring prefixes over the table.
        let slot = (prefix.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize % SLOTS;
        let mut b = self.slots[slot].lock().unwrap_or_else(|p| p.into_inner());
        if b.prefix != prefix || !b.used {
            *b = Bucket {
                prefix,
                tokens: self.rate,
                at: now,
                over: 0,
                used: true,
            };
        }
        b.tokens = (b.tokens + (now - b.at) * self.rate).min(self.rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.over = 0;
            return Verdict::Answer;
        }
        b.over = b.over.wrapping_add(1);
        if b.over.is_multiple_of(SLIP) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

fn prefix_of(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4) >> 8) | 1 << 63,
        IpAddr::V6(v6) => (u128::from(v6) >> 72) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_a_prefix_and_leaves_others_alone() {
        let rrl = RateLimiter::new(5);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let same_24: IpAddr = "192.0.2.200".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..20).map(|_| rrl.check(a)).collect();
        assert_eq!(verdicts[..5], [Verdict::Answer; 5]);
        assert!(verdicts[5..].contains(&Verdict::Slip));
        assert!(verdicts[5..].contains(&Verdict::Drop));
        assert!(!verdicts[5..].contains(&Verdict::Answer));
        assert_ne!(
            rrl.check(same_24),
            Verdict::Answer,
            "same /24 shares the bucket"
        );
        assert_eq!(rrl.check(other), Verdict::Answer);
    }

    #[test]
    fn ipv6_is_grouped_by_56() {
        let a: IpAddr = "2001:db8:0:ff00::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:ffff::2".parse().unwrap();
        let c: IpAddr = "2001:db8:0:100::1".parse().unwrap();
        assert_eq!(prefix_of(a), prefix_of(b));
        assert_ne!(prefix_of(a), prefix_of(c));
    }
}
