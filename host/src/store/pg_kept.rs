//! A connection a hot path (the claim loop, the completer) keeps checked out
//! of its own pool between statements.
//!
//! sqlx returns a pooled connection through a task that first makes a round
//! trip to the server (a `Sync`, to flush whatever a dropped statement left
//! behind), and the next acquire waits for that task. On a claim loop that
//! is a second round trip per claim, behind the busy worker's other work:
//! beginning a keyed claim's transaction took up to 7 ms of a 30 ms claim,
//! a tenth of the claim loop's time in a drain. A kept connection skips
//! both; it goes back to the pool (and its lifetime rules) only when a use
//! fails or is dropped half way, when nothing is known of its state, and
//! once it has been kept for [`KEEP_FOR`]. A pool shared with other
//! users gets its connections back after each use, as before.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{Mutex, MutexGuard};

/// How long a connection is kept before it goes back to its pool, which
/// closes it once past the pool's own lifetime and opens another on demand:
/// a server-side session does not live for ever.
pub const KEEP_FOR: Duration = Duration::from_secs(30 * 60);

/// A pool whose one connection is kept between uses, or (shared) a pool
/// others use too, whose connections go back after each use.
#[derive(Clone, Debug)]
pub(super) struct KeptConnection {
    pool: PgPool,
    /// `None` for a shared pool.
    slot: Option<Arc<Mutex<Option<Kept>>>>,
    /// How long a connection is kept ([`KEEP_FOR`]).
    keep_for: Duration,
}

#[derive(Debug)]
pub(super) struct Kept {
    conn: PoolConnection<Postgres>,
    since: Instant,
}

impl KeptConnection {
    /// Keep `pool`'s connection (a pool of its own, of one connection).
    pub fn kept(pool: PgPool) -> Self {
        Self::kept_for(pool, KEEP_FOR)
    }

    fn kept_for(pool: PgPool, keep_for: Duration) -> Self {
        KeptConnection {
            pool,
            slot: Some(Arc::default()),
            keep_for,
        }
    }

    /// Take a connection of `pool` for each use and give it back after.
    pub fn shared(pool: PgPool) -> Self {
        KeptConnection {
            pool,
            slot: None,
            keep_for: Duration::ZERO,
        }
    }

    /// The kept connection (uses wait for each other, as long as the pool
    /// would wait for a connection), or a fresh one from the pool. Call
    /// [`KeptUse::keep`] once the use went through.
    pub async fn acquire(&self) -> Result<KeptUse<'_>, sqlx::Error> {
        let Some(slot) = &self.slot else {
            return Ok(KeptUse::Pooled(self.pool.acquire().await?));
        };
        // Uncontended (one claim loop, one completer) without a timer.
        let mut slot = match slot.try_lock() {
            Ok(slot) => slot,
            Err(_) => {
                let waiting = self.pool.options().get_acquire_timeout();
                tokio::time::timeout(waiting, slot.lock())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)?
            }
        };
        if slot.is_none() {
            *slot = Some(Kept {
                conn: self.pool.acquire().await?,
                since: Instant::now(),
            });
        }
        Ok(KeptUse::Kept {
            slot,
            keep_for: self.keep_for,
            went_through: false,
        })
    }
}

/// One use of a [`KeptConnection`]: its connection, given back to the pool
/// on drop unless the use went through and the connection is to be kept.
pub(super) enum KeptUse<'a> {
    Kept {
        slot: MutexGuard<'a, Option<Kept>>,
        keep_for: Duration,
        went_through: bool,
    },
    Pooled(PoolConnection<Postgres>),
}

impl KeptUse<'_> {
    /// The use went through: the connection is ready for the next one.
    pub fn keep(mut self) {
        if let KeptUse::Kept { went_through, .. } = &mut self {
            *went_through = true;
        }
    }
}

impl Deref for KeptUse<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        match self {
            KeptUse::Kept { slot, .. } => &slot.as_ref().expect("filled by acquire").conn,
            KeptUse::Pooled(conn) => conn,
        }
    }
}

impl DerefMut for KeptUse<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            KeptUse::Kept { slot, .. } => &mut slot.as_mut().expect("filled by acquire").conn,
            KeptUse::Pooled(conn) => conn,
        }
    }
}

impl Drop for KeptUse<'_> {
    fn drop(&mut self) {
        if let KeptUse::Kept {
            slot,
            keep_for,
            went_through,
        } = self
        {
            let expired = slot
                .as_ref()
                .is_some_and(|kept| kept.since.elapsed() >= *keep_for);
            if !*went_through || expired {
                // Back to the pool, which tests it on the way (see above).
                slot.take();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn backend_of(conn: &mut PgConnection) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
            .unwrap()
    }

    /// A pool of one connection to `pool`'s database, whose acquire waits
    /// `waiting` at most.
    async fn pool_of_one(pool: &PgPool, waiting: Duration) -> PgPool {
        sqlx::pool::PoolOptions::<Postgres>::new()
            .max_connections(1)
            .acquire_timeout(waiting)
            .connect_with((*pool.connect_options()).clone())
            .await
            .unwrap()
    }

    async fn holding(kept: &KeptConnection) -> bool {
        kept.slot
            .as_ref()
            .expect("a kept pool")
            .lock()
            .await
            .is_some()
    }

    /// Uses that went through share one connection, which never goes back
    /// to the pool in between: no round trip returns it.
    #[sqlx::test(migrations = false)]
    async fn uses_that_went_through_keep_one_connection_out_of_the_pool(pool: PgPool) {
        let kept = KeptConnection::kept(pool.clone());
        let mut first = kept.acquire().await.unwrap();
        let backend = backend_of(&mut first).await;
        first.keep();
        for _ in 0..3 {
            let mut next = kept.acquire().await.unwrap();
            assert_eq!(backend_of(&mut next).await, backend);
            next.keep();
            assert_eq!(pool.num_idle(), 0, "the connection went back to the pool");
        }
        assert_eq!(pool.size(), 1);
    }

    /// A use that failed, or was dropped half way through a statement,
    /// gives its connection back (nothing is known of its state), and the
    /// next use works on a connection the pool tested or opened.
    #[sqlx::test(migrations = false)]
    async fn a_failed_or_abandoned_use_gives_the_connection_back(pool: PgPool) {
        let kept = KeptConnection::kept(pool.clone());
        let mut failing = kept.acquire().await.unwrap();
        let divided: Result<i32, _> = sqlx::query_scalar("SELECT 1 / 0")
            .fetch_one(&mut *failing)
            .await;
        assert!(divided.is_err());
        drop(failing);
        assert!(!holding(&kept).await, "a failed use kept its connection");

        let abandoned = async {
            let mut conn = kept.acquire().await.unwrap();
            let _: Result<(), _> = sqlx::query("SELECT pg_sleep(1)")
                .execute(&mut *conn)
                .await
                .map(|_| ());
            conn.keep();
        };
        let cut = tokio::time::timeout(Duration::from_millis(50), abandoned).await;
        assert!(cut.is_err(), "the statement should have been cut short");
        assert!(
            !holding(&kept).await,
            "an abandoned use kept its connection"
        );

        let mut next = kept.acquire().await.unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *next)
            .await
            .unwrap();
        assert_eq!(one, 1);
        next.keep();
        assert!(holding(&kept).await);
    }

    /// A use waits for the kept connection only as long as the pool would
    /// wait for a connection, then fails as the pool would.
    #[sqlx::test(migrations = false)]
    async fn a_use_waits_for_the_kept_connection_as_long_as_for_the_pool(pool: PgPool) {
        let kept = KeptConnection::kept(pool_of_one(&pool, Duration::from_millis(100)).await);
        let held = kept.acquire().await.unwrap();
        let waited = kept.acquire().await;
        assert!(matches!(waited, Err(sqlx::Error::PoolTimedOut)));
        held.keep();
        kept.acquire().await.unwrap().keep();
    }

    /// A connection kept for its time goes back to the pool after the use
    /// that outlived it, went through or not.
    #[sqlx::test(migrations = false)]
    async fn a_connection_kept_for_its_time_goes_back_to_the_pool(pool: PgPool) {
        let kept = KeptConnection::kept_for(pool.clone(), Duration::ZERO);
        let mut conn = kept.acquire().await.unwrap();
        backend_of(&mut conn).await;
        conn.keep();
        assert!(!holding(&kept).await, "kept past its time");
        let lasting = KeptConnection::kept_for(pool.clone(), Duration::from_secs(3600));
        let mut conn = lasting.acquire().await.unwrap();
        backend_of(&mut conn).await;
        conn.keep();
        assert!(holding(&lasting).await, "given back before its time");
    }

    /// A shared pool's connections go back after each use: on a pool of
    /// one, each use after the first gets the connection the one before
    /// gave back.
    #[sqlx::test(migrations = false)]
    async fn a_shared_pool_gets_each_connection_back(pool: PgPool) {
        let one = pool_of_one(&pool, Duration::from_secs(5)).await;
        let shared = KeptConnection::shared(one.clone());
        let mut backends = Vec::new();
        for _ in 0..3 {
            let mut conn = shared.acquire().await.unwrap();
            backends.push(backend_of(&mut conn).await);
            conn.keep();
        }
        assert_eq!(one.size(), 1);
        assert!(
            backends.windows(2).all(|pair| pair[0] == pair[1]),
            "{backends:?}"
        );
    }
}
