//! The janitor, run by every worker: keeps taskbox's own tables healthy
//! whatever the server's vacuum settings. Every task rewrites its row twice
//! (claim, completion), so a long drain leaves millions of dead row versions
//! that claims then walk past; a server with autovacuum off (common in CI
//! configurations) never clears them, and one with it on often lags a
//! queue's churn. Every `interval` the janitor asks the store to vacuum the
//! tables past the threshold; the store lets one worker at a time do it.
//! While the worker is in the middle of work the threshold is higher
//! ([`VACUUM_BUSY_FACTOR`]), so a short burst runs on both cores and the
//! vacuum follows it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{TaskStore, VACUUM_BUSY_FACTOR, VACUUM_DEAD_FRACTION, VACUUM_DEAD_ROWS};

/// How often a worker looks at its tables' dead rows (a cheap read of the
/// server's statistics): often, so each vacuum has a drain's few seconds of
/// dead rows to clear, not a long stretch of them.
pub const DEFAULT_TIDY_INTERVAL: Duration = Duration::from_secs(2);

/// Tidy at once and then every `interval`, until `stop` fires; `busy` tells
/// whether the worker is in the middle of work.
pub(crate) async fn run<S: TaskStore>(
    store: S,
    interval: Duration,
    busy: impl Fn() -> bool + Send,
    stop: CancellationToken,
) {
    let mut told_autovacuum_off = false;
    let mut failing = false;
    // The first tick is at once: a worker started on a table that has lived
    // should not drain it through the dead rows for a whole interval.
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let tidied = tokio::select! {
            tidied = store.tidy(busy()) => tidied,
            _ = stop.cancelled() => return,
        };
        match tidied {
            Ok(tidied) => {
                failing = false;
                if tidied.autovacuum_off && !told_autovacuum_off {
                    tracing::warn!(
                        "autovacuum is off on this server: workers vacuum taskbox's tables themselves once a table's dead rows pass {VACUUM_DEAD_ROWS} plus {:.0}% of its live rows, or outnumber the live rows of a smaller table ({VACUUM_BUSY_FACTOR} times that while a worker is busy)",
                        VACUUM_DEAD_FRACTION * 100.0
                    );
                    told_autovacuum_off = true;
                }
                for (table, dead) in tidied.vacuumed {
                    tracing::info!(%table, dead_rows = dead, "vacuumed");
                }
                for table in tidied.analyzed {
                    tracing::debug!(%table, "statistics refreshed");
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!("cannot tidy taskbox's tables: {err}; trying again later");
                    failing = true;
                }
            }
        }
    }
}
