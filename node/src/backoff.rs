//! Exponential backoff with jitter, the one used wherever Chorus retries: a peer link
//! reconnecting, a client going round the nodes, a subscription resuming.
//!
//! Each pause is the current delay plus up to half of it again, at random, so that many
//! retriers that failed together (every client of a node that just died) do not come back
//! together. The randomness is seeded by the caller, from the seam: a simulation replays it.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    delay: Duration,
    rng: StdRng,
}

impl Backoff {
    /// Delays that start at `min` and double up to `max`; `seed` drives the jitter.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        assert!(!min.is_zero() && min <= max, "backoff from {min:?} to {max:?}: need 0 < min <= max");
        Self { min, max, delay: min, rng: StdRng::seed_from_u64(seed) }
    }

    /// The pause to take now: the current delay plus up to half of it again. The delay
    /// then doubles (up to the maximum) for the next failure.
    pub fn next_pause(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = self.delay.saturating_mul(2).min(self.max);
        let jitter_us = self.rng.random_range(0..=delay.as_micros() as u64 / 2);
        delay + Duration::from_micros(jitter_us)
    }

    /// Back to the minimum delay: the thing retried has worked.
    pub fn reset(&mut self) {
        self.delay = self.min;
    }

    /// The delay the next pause starts from.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_maximum_with_at_most_half_again_of_jitter_and_reset() {
        let (min, max) = (Duration::from_millis(20), Duration::from_millis(500));
        let mut backoff = Backoff::new(min, max, 7);
        let mut expected = min;
        for _ in 0..10 {
            let pause = backoff.next_pause();
            assert!(pause >= expected && pause <= expected + expected / 2, "{pause:?} for a delay of {expected:?}");
            expected = (expected * 2).min(max);
        }
        assert_eq!(backoff.delay(), max);
        backoff.reset();
        assert_eq!(backoff.delay(), min);
    }

    #[test]
    fn the_same_seed_gives_the_same_pauses_and_others_differ() {
        let pauses = |seed| {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), seed);
            (0..8).map(|_| backoff.next_pause()).collect::<Vec<_>>()
        };
        assert_eq!(pauses(1), pauses(1));
        assert_ne!(pauses(1), pauses(2), "the jitter is drawn, not fixed");
    }
}
