//! Where an attempt leaves its task. [`Transition`] names every end a
//! completion can write, each one a row the schema's state machine allows
//! (a success carries a result and no error, a retry a delay and an
//! error, a release neither); [`Transition::decide`] is the one decision
//! from how an attempt ended to where its task goes, and the stores write
//! what [`Transition`]'s accessors say, the same for both.

use std::time::Duration;

use super::{MAX_RETRY_DELAY, Status};

/// How an attempt ended, as the worker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The plugin returned these result bytes.
    Returned(Vec<u8>),
    /// The plugin failed (an error, a trap, a limit).
    Failed(String),
    /// The attempt ran past its deadline.
    TimedOut(String),
    /// The task's input can never run (args that do not fit the plugin's
    /// schema): no attempt is worth trying again.
    Refused(String),
    /// Cancelled from outside; `ran` is false when it never started.
    Cancelled { ran: bool },
    /// Handed back unrun (shutdown, or a host that cannot run tasks now).
    GivenBack,
    /// Its worker was lost while it ran: not the task's fault, so it runs
    /// again at once while attempts remain.
    WorkerLost(String),
}

/// Where a task goes after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Success, with the plugin's result.
    Succeeded { result: Vec<u8> },
    /// Failed with attempts left: waiting again `after` the database's
    /// clock, the error joining the task's history.
    Retry { after: Duration, error: String },
    /// Failed for good: `timeout` when it ran out of time, else `error`.
    Failed { timed_out: bool, error: String },
    /// Cancelled. One that never started does not spend its attempt.
    Cancelled { ran: bool },
    /// Waiting again at once, its attempt not spent.
    Released,
}

impl Transition {
    /// The one decision: where `ending` leaves a task on attempt `attempt`
    /// of `max_attempts`. `backoff(n)` is the delay before retrying after
    /// attempt `n`.
    pub fn decide(
        ending: Ending,
        attempt: i32,
        max_attempts: i32,
        backoff: impl FnOnce(i32) -> Duration,
    ) -> Transition {
        let failed = |timed_out: bool, error: String| {
            if attempt < max_attempts {
                Transition::Retry {
                    after: backoff(attempt),
                    error,
                }
            } else {
                Transition::Failed { timed_out, error }
            }
        };
        match ending {
            Ending::Returned(result) => Transition::Succeeded { result },
            Ending::Failed(error) => failed(false, error),
            Ending::TimedOut(error) => failed(true, error),
            Ending::Refused(error) => Transition::Failed {
                timed_out: false,
                error,
            },
            Ending::Cancelled { ran } => Transition::Cancelled { ran },
            Ending::GivenBack => Transition::Released,
            Ending::WorkerLost(error) if attempt < max_attempts => Transition::Retry {
                after: Duration::ZERO,
                error,
            },
            Ending::WorkerLost(error) => Transition::Failed {
                timed_out: false,
                error,
            },
        }
    }

    /// The status the row takes.
    pub fn status(&self) -> Status {
        match self {
            Transition::Succeeded { .. } => Status::Success,
            Transition::Retry { .. } | Transition::Released => Status::Waiting,
            Transition::Failed {
                timed_out: true, ..
            } => Status::Timeout,
            Transition::Failed { .. } => Status::Error,
            Transition::Cancelled { .. } => Status::Cancelled,
        }
    }

    /// Whether the attempt counts against `max_attempts`.
    pub fn spends_attempt(&self) -> bool {
        !matches!(
            self,
            Transition::Released | Transition::Cancelled { ran: false }
        )
    }

    pub fn result(&self) -> Option<&[u8]> {
        match self {
            Transition::Succeeded { result } => Some(result),
            _ => None,
        }
    }

    /// The error the row shows and its history keeps.
    pub fn error(&self) -> Option<&str> {
        match self {
            Transition::Retry { error, .. } | Transition::Failed { error, .. } => Some(error),
            Transition::Cancelled { ran: true } => Some("cancelled while running"),
            Transition::Cancelled { ran: false } => Some("cancelled before it ran"),
            Transition::Succeeded { .. } | Transition::Released => None,
        }
    }

    /// A retry's delay as the stores bind it: microseconds after the
    /// database's clock, cut to [`MAX_RETRY_DELAY`]; `None`: the row's
    /// `run_at` stays (a released task's is already due).
    pub fn retry_micros(&self) -> Option<i64> {
        match self {
            Transition::Retry { after, .. } => {
                Some((*after).min(MAX_RETRY_DELAY).as_micros() as i64)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ending_leads_where_it_should() {
        let backoff = |n: i32| Duration::from_secs(n as u64 * 10);
        let error = || "boom".to_owned();
        let cases = [
            (
                Ending::Returned(b"r".to_vec()),
                1,
                3,
                Transition::Succeeded {
                    result: b"r".to_vec(),
                },
            ),
            (
                Ending::Failed(error()),
                1,
                3,
                Transition::Retry {
                    after: Duration::from_secs(10),
                    error: error(),
                },
            ),
            (
                Ending::Failed(error()),
                2,
                3,
                Transition::Retry {
                    after: Duration::from_secs(20),
                    error: error(),
                },
            ),
            (
                Ending::Failed(error()),
                3,
                3,
                Transition::Failed {
                    timed_out: false,
                    error: error(),
                },
            ),
            (
                Ending::TimedOut(error()),
                1,
                2,
                Transition::Retry {
                    after: Duration::from_secs(10),
                    error: error(),
                },
            ),
            (
                Ending::TimedOut(error()),
                2,
                2,
                Transition::Failed {
                    timed_out: true,
                    error: error(),
                },
            ),
            (
                Ending::Refused(error()),
                1,
                5,
                Transition::Failed {
                    timed_out: false,
                    error: error(),
                },
            ),
            (
                Ending::Cancelled { ran: true },
                1,
                3,
                Transition::Cancelled { ran: true },
            ),
            (
                Ending::Cancelled { ran: false },
                1,
                3,
                Transition::Cancelled { ran: false },
            ),
            (Ending::GivenBack, 3, 3, Transition::Released),
            (
                Ending::WorkerLost(error()),
                1,
                2,
                Transition::Retry {
                    after: Duration::ZERO,
                    error: error(),
                },
            ),
            (
                Ending::WorkerLost(error()),
                2,
                2,
                Transition::Failed {
                    timed_out: false,
                    error: error(),
                },
            ),
        ];
        for (ending, attempt, max, expected) in cases {
            let shown = format!("{ending:?} on {attempt}/{max}");
            assert_eq!(
                Transition::decide(ending, attempt, max, backoff),
                expected,
                "{shown}"
            );
        }
    }

    #[test]
    fn each_transition_is_a_row_the_schema_allows() {
        let error = || "e".to_owned();
        let rows = [
            (
                Transition::Succeeded { result: vec![1] },
                Status::Success,
                true,
                true,
                false,
                None,
            ),
            (
                Transition::Retry {
                    after: Duration::from_secs(1),
                    error: error(),
                },
                Status::Waiting,
                true,
                false,
                true,
                Some(1_000_000),
            ),
            (
                Transition::Failed {
                    timed_out: true,
                    error: error(),
                },
                Status::Timeout,
                true,
                false,
                true,
                None,
            ),
            (
                Transition::Failed {
                    timed_out: false,
                    error: error(),
                },
                Status::Error,
                true,
                false,
                true,
                None,
            ),
            (
                Transition::Cancelled { ran: true },
                Status::Cancelled,
                true,
                false,
                true,
                None,
            ),
            (
                Transition::Cancelled { ran: false },
                Status::Cancelled,
                false,
                false,
                true,
                None,
            ),
            (
                Transition::Released,
                Status::Waiting,
                false,
                false,
                false,
                None,
            ),
        ];
        for (transition, status, spends, has_result, has_error, retry) in rows {
            assert_eq!(transition.status(), status, "{transition:?}");
            assert_eq!(transition.spends_attempt(), spends, "{transition:?}");
            assert_eq!(transition.result().is_some(), has_result, "{transition:?}");
            assert_eq!(transition.error().is_some(), has_error, "{transition:?}");
            assert_eq!(transition.retry_micros(), retry, "{transition:?}");
        }
    }

    #[test]
    fn a_retry_waits_no_longer_than_the_maximum() {
        let far = Transition::Retry {
            after: MAX_RETRY_DELAY * 10,
            error: String::new(),
        };
        assert_eq!(far.retry_micros(), Some(MAX_RETRY_DELAY.as_micros() as i64));
    }
}
