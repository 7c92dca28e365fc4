//! When a failed attempt runs again: exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Delay before the second attempt (before jitter).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// Longest `--backoff` (delay before the second attempt) a worker accepts.
pub const MAX_BACKOFF_BASE: Duration = DEFAULT_BACKOFF_MAX;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: DEFAULT_BACKOFF_BASE,
            max: DEFAULT_BACKOFF_MAX,
        }
    }
}

impl Backoff {
    /// The pause after failed attempt number `attempt` (1-based): `base`
    /// doubled per earlier attempt, capped, then scaled by a random factor
    /// in [0.5, 1.0] so that tasks that failed together spread out.
    pub fn delay(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 30) as u32;
        let full = self.base.saturating_mul(1 << doublings).min(self.max);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_and_caps() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for (attempt, full_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let delay = backoff.delay(attempt).as_millis();
            assert!(
                (full_ms / 2..=full_ms).contains(&delay),
                "attempt {attempt}: {delay} ms"
            );
        }
    }
}
