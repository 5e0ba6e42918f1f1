//! Token buckets, one per key (an account, a client address), bounded in number: what
//! keeps one account or one address from trying passwords, or sending, faster than the
//! cluster's `[limits]` allow. Each node limits what it serves; the limits are per node.
//!
//! A bucket holds up to `per_minute` tokens and refills at `per_minute` tokens a minute; a
//! request takes one, or is refused with how long until one is there. Time is the node's
//! monotonic clock in milliseconds, passed in (so tests need no sleeping).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tonic::Status;

use super::status;
use crate::cluster_config::Limits;
use crate::seam::{MonotonicClock, NodeClock};

/// One token, in the buckets' units: a bucket of rate N gains N units a millisecond, so a
/// token is a minute's worth of milliseconds.
const TOKEN: u64 = 60_000;
/// Most keys a limiter tracks. A full bucket is the same as none, so full ones are dropped
/// when this is reached; if every bucket is in use, new keys are refused until some
/// refill. 65,536 keys take about 5 MB.
pub const KEYS_MAX: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused; a token will be there after this long.
    Limited {
        retry_after: Duration,
    },
    /// Refused: too many keys are being limited at once to track another.
    Crowded,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    units: u64,
    updated_ms: u64,
}

pub struct RateLimiter<K> {
    per_minute: u64,
    keys_max: usize,
    buckets: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    by_key: BTreeMap<K, Bucket>,
    /// When full buckets were last swept out: at most once a second, so that a stream of
    /// new keys against a full limiter costs a lookup each, not a scan each.
    swept_at_ms: Option<u64>,
}

/// What a look at a bucket takes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// A token, if there is one.
    IfThere,
    /// Nothing.
    Nothing,
    /// A token, or what there is of one.
    Always,
}

/// Least time between two sweeps of a full limiter.
const SWEEP_INTERVAL_MS: u64 = 1_000;

impl<K: Ord + Clone> RateLimiter<K> {
    /// A limiter of `per_minute` requests a minute per key (at least one), in bursts of as
    /// many.
    pub fn new(per_minute: u64) -> Self {
        Self::with_keys_max(per_minute, KEYS_MAX)
    }

    fn with_keys_max(per_minute: u64, keys_max: usize) -> Self {
        assert!(keys_max > 0, "a limiter tracks at least one key");
        let buckets = Buckets { by_key: BTreeMap::new(), swept_at_ms: None };
        Self { per_minute: per_minute.max(1), keys_max, buckets: Mutex::new(buckets) }
    }

    fn capacity(&self) -> u64 {
        self.per_minute.saturating_mul(TOKEN)
    }

    /// The bucket's units at `now_ms` (time never goes back for a bucket).
    fn refilled(&self, bucket: &Bucket, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(bucket.updated_ms);
        bucket.units.saturating_add(elapsed.saturating_mul(self.per_minute)).min(self.capacity())
    }

    /// Takes a token for `key` at `now_ms`, if there is one.
    pub fn check(&self, key: &K, now_ms: u64) -> Verdict {
        self.take(key, now_ms, Take::IfThere)
    }

    /// Whether `key` has a token at `now_ms`, taking none: for a limit charged only
    /// afterwards, on failure ([`RateLimiter::charge`]).
    pub fn peek(&self, key: &K, now_ms: u64) -> Verdict {
        self.take(key, now_ms, Take::Nothing)
    }

    /// Takes a token for `key` at `now_ms`, or what is left of one (the bucket may go to
    /// zero, never below).
    pub fn charge(&self, key: &K, now_ms: u64) {
        let _ = self.take(key, now_ms, Take::Always);
    }

    fn take(&self, key: &K, now_ms: u64, take: Take) -> Verdict {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let buckets = &mut *buckets;
        if !buckets.by_key.contains_key(key) {
            if take == Take::Nothing {
                // No bucket is a full one.
                return Verdict::Allowed;
            }
            if buckets.by_key.len() >= self.keys_max {
                let sweep_due = buckets.swept_at_ms.is_none_or(|at| now_ms.saturating_sub(at) >= SWEEP_INTERVAL_MS);
                if sweep_due {
                    let capacity = self.capacity();
                    buckets.by_key.retain(|_, bucket| self.refilled(bucket, now_ms) < capacity);
                    buckets.swept_at_ms = Some(now_ms);
                }
                if buckets.by_key.len() >= self.keys_max {
                    return Verdict::Crowded;
                }
            }
        }
        let bucket = buckets.by_key.entry(key.clone()).or_insert(Bucket { units: self.capacity(), updated_ms: now_ms });
        let units = self.refilled(bucket, now_ms);
        bucket.updated_ms = bucket.updated_ms.max(now_ms);
        if units >= TOKEN {
            bucket.units = if take == Take::Nothing { units } else { units - TOKEN };
            Verdict::Allowed
        } else {
            bucket.units = if take == Take::Always { 0 } else { units };
            let missing = TOKEN - units;
            Verdict::Limited { retry_after: Duration::from_millis(missing.div_ceil(self.per_minute)) }
        }
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.buckets.lock().unwrap().by_key.len()
    }
}

/// The limits of a node's chat service.
pub struct ChatLimits {
    logins_per_account: RateLimiter<String>,
    logins_per_address: RateLimiter<IpAddr>,
    sends_per_account: RateLimiter<u64>,
    /// The account of each session that sent through this node (learned from the sends'
    /// outcomes, so a send costs no lookup), at most [`KEYS_MAX`]; forgotten all at once
    /// when full (a session's next send learns it again).
    senders: Mutex<BTreeMap<Vec<u8>, u64>>,
    clock: MonotonicClock,
}

impl ChatLimits {
    pub fn new(limits: &Limits, clock: &NodeClock) -> Self {
        Self {
            logins_per_account: RateLimiter::new(limits.logins_per_account_per_minute),
            logins_per_address: RateLimiter::new(limits.logins_per_address_per_minute),
            sends_per_account: RateLimiter::new(limits.sends_per_account_per_minute),
            senders: Mutex::new(BTreeMap::new()),
            clock: clock.monotonic(),
        }
    }

    /// A password check for `username` (canonical; existing or not, so that the answer
    /// says nothing of which names exist) from `address`: every attempt counts against the
    /// address, and only a failed one (see [`ChatLimits::password_failed`]) against the
    /// account, so that a stranger's wrong guesses lock its owner out only as long as they
    /// go on, and a person logging in right is never refused for logging in often.
    pub fn password_check(&self, username: &str, address: Option<IpAddr>) -> Result<(), Status> {
        let now_ms = self.clock.now_ms();
        verdict(self.logins_per_account.peek(&username.to_owned(), now_ms), "failed login attempts for this account")?;
        if let Some(address) = address {
            verdict(
                self.logins_per_address.check(&crate::host::host_of(address), now_ms),
                "login attempts from your address",
            )?;
        }
        Ok(())
    }

    /// A password check for `username` failed.
    pub fn password_failed(&self, username: &str) {
        self.logins_per_account.charge(&username.to_owned(), self.clock.now_ms());
    }

    /// A send by the session `token_hash`: refused while its account (if this node has
    /// seen the session send before) has no token left.
    pub fn send(&self, token_hash: &[u8]) -> Result<(), Status> {
        let sender = self.senders.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(token_hash).copied();
        match sender {
            Some(user_id) => {
                verdict(self.sends_per_account.peek(&user_id, self.clock.now_ms()), "messages sent by this account")
            }
            None => Ok(()),
        }
    }

    /// The session `token_hash` of account `sender_id` sent a message: it is charged to
    /// the account. (Charged after the fact, the limit lets at most the sends already in
    /// flight through beyond it.)
    pub fn sent(&self, token_hash: &[u8], sender_id: u64) {
        {
            let mut senders = self.senders.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if senders.len() >= KEYS_MAX && !senders.contains_key(token_hash) {
                senders.clear();
            }
            senders.insert(token_hash.to_vec(), sender_id);
        }
        self.sends_per_account.charge(&sender_id, self.clock.now_ms());
    }
}

fn verdict(verdict: Verdict, what: &str) -> Result<(), Status> {
    match verdict {
        Verdict::Allowed => Ok(()),
        Verdict::Limited { retry_after } => Err(status::rate_limited(what, retry_after)),
        Verdict::Crowded => {
            Err(status::overloaded(format!("{what}: too many are being limited at once; retry shortly")))
        }
    }
}

/// The address a request came from, if the transport says.
pub fn client_ip<T>(request: &tonic::Request<T>) -> Option<IpAddr> {
    #[cfg(not(madsim))]
    if let Some(info) = crate::tls::connection_info(request) {
        return Some(info.remote.ip());
    }
    request.remote_addr().map(|address| address.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_rate_then_one_per_interval() {
        let limiter = RateLimiter::new(6);
        for _ in 0..6 {
            assert_eq!(limiter.check(&"alice", 1_000), Verdict::Allowed);
        }
        assert_eq!(limiter.check(&"alice", 1_000), Verdict::Limited { retry_after: Duration::from_secs(10) });
        assert_eq!(limiter.check(&"bob", 1_000), Verdict::Allowed, "buckets are per key");
        assert_eq!(limiter.check(&"alice", 6_000), Verdict::Limited { retry_after: Duration::from_secs(5) });
        assert_eq!(limiter.check(&"alice", 11_000), Verdict::Allowed, "one token every 10 s");
        assert!(matches!(limiter.check(&"alice", 11_001), Verdict::Limited { .. }));
        // A clock that goes back takes nothing from anyone.
        assert!(matches!(limiter.check(&"alice", 0), Verdict::Limited { .. }));
        assert_eq!(limiter.check(&"alice", 21_000), Verdict::Allowed);
        // Idle for long, the bucket is full again, and no fuller.
        for _ in 0..6 {
            assert_eq!(limiter.check(&"alice", 10_000_000), Verdict::Allowed);
        }
        assert!(matches!(limiter.check(&"alice", 10_000_000), Verdict::Limited { .. }));
    }

    #[test]
    fn a_limit_charged_on_failure_refuses_only_once_spent() {
        let limiter = RateLimiter::new(2);
        assert_eq!(limiter.peek(&"alice", 0), Verdict::Allowed);
        assert_eq!(limiter.peek(&"alice", 0), Verdict::Allowed, "a look takes nothing");
        limiter.charge(&"alice", 0);
        limiter.charge(&"alice", 0);
        assert_eq!(limiter.peek(&"alice", 0), Verdict::Limited { retry_after: Duration::from_secs(30) });
        limiter.charge(&"alice", 1_000);
        assert_eq!(limiter.peek(&"alice", 1_000), Verdict::Limited { retry_after: Duration::from_secs(30) });
        assert_eq!(limiter.peek(&"alice", 31_000), Verdict::Allowed);
    }

    #[test]
    fn keys_are_bounded_and_full_buckets_make_room() {
        let limiter = RateLimiter::with_keys_max(1, 3);
        for key in 0..3 {
            assert_eq!(limiter.check(&key, 0), Verdict::Allowed);
        }
        assert_eq!(limiter.check(&3, 0), Verdict::Crowded, "three buckets in use");
        assert_eq!(limiter.keys(), 3);
        // A minute later they are full again: forgotten, and the new key fits.
        assert_eq!(limiter.check(&3, 60_000), Verdict::Allowed);
        assert_eq!(limiter.keys(), 1);
    }

    #[test]
    fn extreme_rates_and_times_do_not_overflow() {
        let limiter = RateLimiter::new(u64::MAX);
        assert_eq!(limiter.check(&1, u64::MAX), Verdict::Allowed);
        let slow = RateLimiter::new(1);
        assert_eq!(slow.check(&1, u64::MAX - 1), Verdict::Allowed);
        assert_eq!(slow.check(&1, u64::MAX), Verdict::Limited { retry_after: Duration::from_millis(59_999) });
    }
}
