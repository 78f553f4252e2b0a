//! Response rate limiting per source prefix (IPv4 /24, IPv6 /56, as BIND groups them).
//!
//! A token bucket per prefix in a fixed-size, 2-way set-associative table: memory stays
//! bounded however many sources a flood spoofs. The set is chosen by a hash seeded at
//! random, so a flood cannot aim at a victim's set; a new prefix takes the free or the
//! least recently used way, so one other prefix landing in a busy set does not reset a
//! limited prefix's bucket. Over the limit, every `SLIP`th response goes out truncated
//! (TC=1) so that a real client behind a spoofed prefix can still get its answer over
//! TCP; the others are dropped.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// 2^SET_BITS sets of `WAYS` buckets each.
const SET_BITS: u32 = 11;
const WAYS: usize = 2;
const SLIP: u32 = 2;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Answer truncated, so the client retries over TCP.
    Slip,
    Drop,
}

/// The time since the limiter was made, as its buckets count it: the monotonic clock,
/// or one a test moves by hand.
pub type Clock = Box<dyn Fn() -> Duration + Send + Sync>;

pub struct RateLimiter {
    limit: u32,
    rate: f64,
    clock: Clock,
    seed: u64,
    sets: Vec<Mutex<[Bucket; WAYS]>>,
}

#[derive(Default, Clone, Copy)]
struct Bucket {
    prefix: u64,
    tokens: f64,
    /// The clock's seconds at the last refill.
    at: f64,
    over: u32,
    used: bool,
}

impl RateLimiter {
    /// `rate` responses per second per prefix, with a burst of one second's worth.
    pub fn new(rate: u32) -> RateLimiter {
        let mut seed = [0u8; 8];
        // Without randomness the table still limits; only its layout becomes guessable.
        let _ = getrandom::fill(&mut seed);
        let epoch = Instant::now();
        Self::with_clock(
            rate,
            u64::from_ne_bytes(seed),
            Box::new(move || epoch.elapsed()),
        )
    }

    pub(in crate::dns) fn with_clock(rate: u32, seed: u64, clock: Clock) -> RateLimiter {
        RateLimiter {
            limit: rate,
            rate: f64::from(rate),
            clock,
            seed,
            sets: (0..1 << SET_BITS)
                .map(|_| Mutex::new([Bucket::default(); WAYS]))
                .collect(),
        }
    }

    fn set_of(&self, prefix: u64) -> usize {
        // Multiplicative hashing of the seeded prefix; the top bits pick the set.
        ((prefix ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SET_BITS)) as usize
    }

    /// The configured responses per second.
    pub fn rate(&self) -> u32 {
        self.limit
    }

    pub fn check(&self, src: IpAddr) -> Verdict {
        let prefix = prefix_of(src);
        let now = (self.clock)().as_secs_f64();
        let mut set = self.sets[self.set_of(prefix)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let way = match set.iter().position(|b| b.used && b.prefix == prefix) {
            Some(way) => way,
            None => {
                // The free way, else the one used least recently.
                let way = (0..WAYS)
                    .min_by(|&x, &y| {
                        let age = |b: &Bucket| if b.used { b.at } else { f64::NEG_INFINITY };
                        age(&set[x]).total_cmp(&age(&set[y]))
                    })
                    .unwrap_or(0);
                set[way] = Bucket {
                    prefix,
                    tokens: self.rate,
                    at: now,
                    over: 0,
                    used: true,
                };
                way
            }
        };
        let b = &mut set[way];
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
pub(in crate::dns) mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A clock that stands still until the test moves it (by milliseconds).
    pub(in crate::dns) fn manual_clock() -> (Clock, Arc<AtomicU64>) {
        let millis = Arc::new(AtomicU64::new(0));
        let read = millis.clone();
        let clock = Box::new(move || Duration::from_millis(read.load(Ordering::Relaxed)));
        (clock, millis)
    }

    fn stopped(rate: u32, seed: u64) -> RateLimiter {
        RateLimiter::with_clock(rate, seed, manual_clock().0)
    }

    #[test]
    fn limits_a_prefix_and_leaves_others_alone() {
        let rrl = stopped(5, 0);
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

    #[test]
    fn a_colliding_prefix_does_not_reset_a_limited_one() {
        let rrl = stopped(5, 0x1234_5678);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let set = rrl.set_of(prefix_of(a));
        let b = (0u32..)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0001 + (i << 8))))
            .find(|ip| rrl.set_of(prefix_of(*ip)) == set)
            .expect("a prefix in the same set");
        for _ in 0..20 {
            rrl.check(a);
        }
        assert_eq!(rrl.check(b), Verdict::Answer, "the other way is free");
        assert_ne!(
            rrl.check(a),
            Verdict::Answer,
            "still limited after the collision"
        );
    }

    #[test]
    fn the_seed_moves_prefixes_between_sets() {
        let a = prefix_of("192.0.2.1".parse().unwrap());
        let sets: std::collections::HashSet<usize> = (0..16)
            .map(|seed| stopped(1, seed * 0x0101_0101_0101).set_of(a))
            .collect();
        assert!(sets.len() > 1);
    }

    #[test]
    fn a_limited_prefix_gets_answers_again_at_the_rate() {
        let (clock, millis) = manual_clock();
        let rrl = RateLimiter::with_clock(10, 0, clock);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let answered = |n| (0..n).filter(|_| rrl.check(a) == Verdict::Answer).count();
        assert_eq!(answered(30), 10, "the burst: one second's worth");
        millis.store(300, Ordering::Relaxed);
        assert_eq!(answered(30), 3, "0.3 s at 10 per second");
        millis.store(60_000, Ordering::Relaxed);
        assert_eq!(answered(30), 10, "refilled up to the burst, never past it");
    }
}
