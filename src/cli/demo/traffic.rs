//! The demo's traffic: who sends a request, and when. Deterministic for a
//! seed, so the same schedule can be walked twice.

use std::time::Duration;

use statevault::Secret;

/// A small deterministic generator (xorshift64*): the demo needs skew, not
/// cryptography, and the same seed gives the same traffic.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index in 0..n skewed toward 0: a few hot users and queries.
    pub fn skewed(&mut self, n: usize) -> usize {
        ((self.unit().powi(3) * n as f64) as usize).min(n - 1)
    }
}

/// One of the demo's users, with the session token it holds (if logged in).
pub struct User {
    pub id: String,
    pub device: String,
    pub ip: String,
    pub token: Option<Secret>,
}

impl User {
    /// The demo's `i`th user: `demo-user-…`, its device and address.
    pub fn new(i: u32) -> User {
        User {
            id: format!("demo-user-{i:05}"),
            device: format!("device-{i}"),
            ip: format!("198.51.100.{}", i % 250),
            token: None,
        }
    }
}

/// When each request comes and from which user: a generator of its own,
/// so the schedule can be walked once to learn how long it lasts and then
/// again, the same, to drive the requests.
#[derive(Clone)]
pub struct Schedule {
    rng: Rng,
    users: usize,
    left: u64,
    user: usize,
    burst_left: u32,
    in_burst: bool,
}

/// One request of the schedule.
pub struct Slot {
    pub user: usize,
    pub gap: Duration,
    /// The last request of the user's turn (a single one or a burst).
    pub turn_ends: bool,
}

impl Schedule {
    pub fn new(seed: u64, users: usize, requests: u64) -> Self {
        Schedule {
            rng: Rng(seed),
            users,
            left: requests,
            user: 0,
            burst_left: 0,
            in_burst: false,
        }
    }

    /// How many requests are still to come.
    pub fn left(&self) -> u64 {
        self.left
    }
}

impl Iterator for Schedule {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        if self.left == 0 {
            return None;
        }
        if self.burst_left == 0 {
            self.user = self.rng.skewed(self.users);
            // A hot user now and then sends a burst that the limits must
            // stop: 60 requests in 1.2 s, about 36 of them searches (25 allowed).
            self.in_burst = self.rng.unit() < 0.005;
            self.burst_left = if self.in_burst { 60 } else { 1 };
        }
        self.left -= 1;
        self.burst_left -= 1;
        let gap = if self.in_burst {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(500 + self.rng.next() % 5_000)
        };
        Some(Slot {
            user: self.user,
            gap,
            turn_ends: self.burst_left == 0 || self.left == 0,
        })
    }
}
