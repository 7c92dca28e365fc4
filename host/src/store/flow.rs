//! Flow control, decided once for both stores: how many of a queue's tasks
//! a claim may start (its global limit and its rate), which keys get them
//! (the key limit, a rate per key, and turns), and what the claim records.
//!
//! A queue with none of these settings is claimed by the stores' one claim
//! statement and never comes here. A queue with any is claimed in a
//! transaction that first locks its `queues` row, so claims of it are taken
//! one at a time across every worker; each statement after the lock sees
//! every claim before it, and the counts below are exact. The stores only
//! run the statements of [`FlowTransaction`]; the numbers are decided here.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::{ClaimRequest, ClaimedTask, StoreResult};

/// SQL: whether a `queues` row has a limit or a key limit, whose runs are
/// counted in `counted_runs`. Only such a queue has counted runs: a change
/// of settings counts or forgets a queue's runs in its own transaction.
/// (A macro, so that constant statements are built from it with `concat!`.)
macro_rules! counting_queue {
    () => {
        "(max_running IS NOT NULL OR key_limit IS NOT NULL)"
    };
}

/// SQL: whether a `queues` row has a limit or a rate, the one test of a
/// limited queue in every statement of both stores.
macro_rules! limited_queue {
    () => {
        concat!(
            "(",
            $crate::store::flow::counting_queue!(),
            " OR rate_count IS NOT NULL)"
        )
    };
}

/// SQL: whether a `queues` row is one the plain claim leaves out: paused,
/// or claimed under its limits alone.
macro_rules! left_out_queue {
    () => {
        concat!(
            "(paused_at IS NOT NULL OR ",
            $crate::store::flow::limited_queue!(),
            ")"
        )
    };
}

pub(crate) use {counting_queue, left_out_queue, limited_queue};

/// Most starts a rate may allow per window: its recent starts are kept, one
/// number each, on the queue's row.
pub const MAX_RATE_COUNT: u32 = 10_000;
/// Longest window a rate may have.
pub const MAX_RATE_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Shortest window a rate may have: starts are counted in microseconds, and
/// a claim takes a few hundred of them.
pub const MIN_RATE_WINDOW: Duration = Duration::from_millis(10);
/// Highest global or per-key limit taken.
pub const MAX_LIMIT: u32 = 1_000_000;
/// Most keys one claim takes turns from (besides those at their limit):
/// with more keys than this, a claim takes up to each key's share from
/// these and the next claim goes on after them. Each key costs the claim an
/// index probe or two, so a claim over every key of a queue with many would
/// cost more than the tasks it takes.
pub const KEYS_PER_CLAIM: usize = 256;
/// How long a claim trusts its last look at a queue's keys, when the queue
/// had at most [`KEYS_PER_CLAIM`] of them: finding them walks the queue's
/// index once per key, which cost a keyed drain more than the tasks the
/// claims took. A key whose first task arrives meanwhile gets its turn
/// within this long; a claim that finds nothing under the keys it knows
/// looks again at once, so an idle worker starts a new key's task at once.
pub const KEYS_RECHECK: Duration = Duration::from_millis(100);
/// A rate also holds, rounded up, over this fraction of its window, so a
/// queue idle for a while does not start a whole window's worth at once:
/// `20/1s` starts at most 2 in any 100 ms.
pub const RATE_SPREAD: u32 = 10;

/// At most `count` starts in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub window: Duration,
}

impl Rate {
    /// How many more may start at `now` (microseconds), given the recent
    /// starts: the whole window's room and its spread share's, the less.
    pub fn room(&self, starts: &[i64], now: i64) -> usize {
        let window = micros(self.window);
        let spread_window = window / i64::from(RATE_SPREAD);
        let spread_count = self.count.div_ceil(RATE_SPREAD);
        // Starts later than `now` count too: a claim's clock is its
        // transaction's, and one that waited for the lock may be earlier
        // than the starts written before it. Counting every start after
        // `now - window` keeps every window holding `now` within the count.
        let in_window = starts.iter().filter(|&&at| at > now - window).count();
        let in_spread = starts
            .iter()
            .filter(|&&at| at > now - spread_window)
            .count();
        (self.count as usize)
            .saturating_sub(in_window)
            .min((spread_count as usize).saturating_sub(in_spread))
    }

    /// The recent starts once `started` more started at `now`. Those a whole
    /// window before the window are forgotten: a later claim's clock may be
    /// a little earlier than this one's and still need the ones just out.
    pub fn record(&self, starts: &[i64], now: i64, started: usize) -> Vec<i64> {
        let window = micros(self.window);
        let mut kept: Vec<i64> = starts
            .iter()
            .copied()
            .filter(|&at| at > now - 2 * window)
            .collect();
        kept.extend(std::iter::repeat_n(now, started));
        kept
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.window)
        )
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `COUNT/WINDOW`: `100/1s`, `5/1m`, `1000/1h`.
    fn from_str(text: &str) -> Result<Self, String> {
        let Some((count, window)) = text.split_once('/') else {
            return Err(format!(
                "the rate {text:?} is not COUNT/WINDOW, e.g. 100/1s or 5/1m"
            ));
        };
        let count: u32 = count.trim().parse().map_err(|_| {
            format!("the rate {text:?} does not start with a whole number of starts")
        })?;
        if count == 0 || count > MAX_RATE_COUNT {
            return Err(format!(
                "a rate allows 1 to {MAX_RATE_COUNT} starts per window (it was {count})"
            ));
        }
        let window = window.trim();
        if window.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "the rate's window {window:?} has no unit; write e.g. 1s, 500ms or 1m"
            ));
        }
        let window = humantime::parse_duration(window)
            .map_err(|err| format!("the rate's window {window:?} is not a duration: {err}"))?;
        if !(MIN_RATE_WINDOW..=MAX_RATE_WINDOW).contains(&window) {
            return Err(format!(
                "a rate's window is {} to {} (it was {})",
                humantime::format_duration(MIN_RATE_WINDOW),
                humantime::format_duration(MAX_RATE_WINDOW),
                humantime::format_duration(window)
            ));
        }
        Ok(Rate { count, window })
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// A limit as `queue limit` and `queue key-limit` take it: a number from 1,
/// or `none` to clear it.
pub fn parse_limit(text: &str) -> Result<Option<u32>, String> {
    if text == "none" {
        return Ok(None);
    }
    match text.parse::<i64>() {
        Ok(n) if (1..=i64::from(MAX_LIMIT)).contains(&n) => Ok(Some(n as u32)),
        Ok(n) => Err(format!(
            "a limit is a number from 1 to {MAX_LIMIT}, or none (it was {n})"
        )),
        Err(_) => Err(format!(
            "the limit {text:?} is not a number; give one from 1 to {MAX_LIMIT}, or none"
        )),
    }
}

/// A change to a queue's flow settings, as one command makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowChange {
    /// At most this many running at once on all workers; `None` clears it.
    Limit(Option<u32>),
    /// At most this many running per key; `None` clears it.
    KeyLimit(Option<u32>),
    /// At most so many starts per window, per key or for the whole queue;
    /// `None` clears it.
    Rate { rate: Option<Rate>, per_key: bool },
}

/// A queue's flow settings as its locked row holds them, with what the
/// last claims left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueFlow {
    pub name: String,
    pub max_running: Option<u32>,
    pub key_limit: Option<u32>,
    pub rate: Option<Rate>,
    pub rate_per_key: bool,
    /// The queue's recent starts (a rate for the whole queue).
    pub starts: Vec<i64>,
    /// The key the last claim ended its turn at.
    pub key_cursor: Option<String>,
}

impl QueueFlow {
    /// Claims take keys in turn, each under its own limit or rate.
    pub fn keyed(&self) -> bool {
        self.key_limit.is_some() || (self.rate.is_some() && self.rate_per_key)
    }

    /// A claim records its runs, for a limit to count.
    pub fn counts_runs(&self) -> bool {
        self.max_running.is_some() || self.key_limit.is_some()
    }

    /// The rate the queue as a whole is held to.
    fn queue_rate(&self) -> Option<Rate> {
        self.rate.filter(|_| !self.rate_per_key)
    }

    /// The rate each key is held to.
    fn key_rate(&self) -> Option<Rate> {
        self.rate.filter(|_| self.rate_per_key)
    }

    /// How many of its tasks may start now, at most `wanted`.
    pub fn room(&self, running: &Running, now: i64, wanted: usize) -> usize {
        let mut room = wanted;
        if let Some(limit) = self.max_running {
            room = room.min((limit as usize).saturating_sub(running.total));
        }
        if let Some(rate) = self.queue_rate() {
            room = room.min(rate.room(&self.starts, now));
        }
        room
    }

    /// How many of `key`'s tasks may start now.
    pub fn key_room(&self, key: &WaitingKey, running: &Running, now: i64) -> usize {
        let mut room = usize::MAX;
        if let Some(limit) = self.key_limit {
            let of_key = running.by_key.get(&key.key).copied().unwrap_or(0);
            room = room.min((limit as usize).saturating_sub(of_key));
        }
        if let Some(rate) = self.key_rate() {
            room = room.min(rate.room(&key.starts, now));
        }
        room
    }
}

/// A queue's counted runs: all of them, and per key (`None`: no key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    pub total: usize,
    pub by_key: HashMap<Option<String>, usize>,
}

impl Running {
    /// From `(key, count)` rows, as both stores read them.
    pub(crate) fn of(rows: Vec<(Option<String>, i64)>) -> Running {
        let by_key: HashMap<Option<String>, usize> = rows
            .into_iter()
            .map(|(key, n)| (key, n.max(0) as usize))
            .collect();
        Running {
            total: by_key.values().sum(),
            by_key,
        }
    }
}

/// A key with due waiting tasks (`None`: the tasks without a key, which
/// take turns as one key), and its recent starts under a rate per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitingKey {
    pub key: Option<String>,
    pub starts: Vec<i64>,
}

/// How many of each key's tasks a claim takes at most, in the keys' turn
/// order: the claim takes the first task of each key, then the second, and
/// so on, until it has `room`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyShares {
    pub keys: Vec<Option<String>>,
    pub shares: Vec<i64>,
}

/// A keyed claim's `tasks`, given in claim order (`priority, run_at, id`),
/// put in its turns: every key's first task in the keys' turn order `keys`
/// (as the claim's [`KeyShares`] has them), then every key's second, and so
/// on. A worker starts them in this order.
fn into_turns(tasks: Vec<ClaimedTask>, keys: &[Option<String>]) -> Vec<ClaimedTask> {
    let turn: HashMap<Option<&str>, usize> = keys
        .iter()
        .enumerate()
        .map(|(turn, key)| (key.as_deref(), turn))
        .collect();
    let mut taken: HashMap<Option<&str>, usize> = HashMap::new();
    let places: Vec<(usize, usize)> = tasks
        .iter()
        .map(|task| {
            let key = task.key.as_deref();
            let rank = taken.entry(key).or_default();
            *rank += 1;
            (*rank, turn.get(&key).copied().unwrap_or(usize::MAX))
        })
        .collect();
    let mut placed: Vec<((usize, usize), ClaimedTask)> = places.into_iter().zip(tasks).collect();
    placed.sort_by_key(|(place, _)| *place);
    placed.into_iter().map(|(_, task)| task).collect()
}

/// What a claim of one limited queue may take: `room` tasks, from any key
/// (`shares` is `None`) or from each key at most its share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    pub room: usize,
    pub shares: Option<KeyShares>,
}

/// What the claim records on the queue's row and its keys' rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowRecord {
    /// The queue's recent starts, when it has a rate for the whole queue.
    pub starts: Option<Vec<i64>>,
    /// Where the next claim's turn begins, when keys take turns.
    pub key_cursor: Option<Option<String>>,
    /// Each key's recent starts, under a rate per key.
    pub key_starts: Vec<(String, Vec<i64>)>,
}

/// The statements one claim of limited queues runs, inside one
/// transaction. Implemented by each store in its own dialect.
pub(crate) trait FlowTransaction: Send {
    /// Lock the `queues` rows with a limit or rate among `scope`'s queues
    /// (all, when it names none), in name order; with the database's clock
    /// read after the locks (microseconds since the epoch).
    fn lock_limited(
        &mut self,
        queues: &[String],
    ) -> impl Future<Output = StoreResult<(Vec<QueueFlow>, i64)>> + Send;

    /// The queue's counted runs.
    fn running(&mut self, queue: &str) -> impl Future<Output = StoreResult<Running>> + Send;

    /// Up to `count` keys of the queue with waiting tasks, in key order
    /// after `after` (from the first, when `None`), but not past `until`.
    fn waiting_keys(
        &mut self,
        queue: &str,
        after: Option<&str>,
        until: Option<&str>,
        count: usize,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;

    /// The recent starts of the queue's `keys`, at least one (those with
    /// none left out).
    fn key_starts(
        &mut self,
        queue: &str,
        keys: &[String],
    ) -> impl Future<Output = StoreResult<HashMap<String, Vec<i64>>>> + Send;

    /// Whether the queue has waiting tasks without a key.
    fn has_keyless(&mut self, queue: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Claim up to `allowance.room` of the queue's due tasks in claim order
    /// (per key by turns, when it has shares), recording each run for the
    /// limits to count when `count_runs`; the tasks returned in claim order
    /// (`priority, run_at, id`), which the claim puts in turns.
    fn claim_queue(
        &mut self,
        queue: &str,
        allowance: &Allowance,
        count_runs: bool,
        request: &ClaimRequest<'_>,
    ) -> impl Future<Output = StoreResult<Vec<ClaimedTask>>> + Send;

    /// Write what the claim leaves for the next one.
    fn record(
        &mut self,
        queue: &str,
        record: &FlowRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

/// Claim up to `request.limit` tasks of the limited queues in the request's
/// scope, each under its settings: the whole decision, for both stores.
pub(crate) async fn claim_limited<T: FlowTransaction>(
    tx: &mut T,
    request: &ClaimRequest<'_>,
    keys_seen: &KeysSeen,
) -> StoreResult<Vec<ClaimedTask>> {
    let (queues, now) = tx.lock_limited(request.scope.queues).await?;
    let mut claimed = Vec::new();
    for flow in &queues {
        let wanted = request.limit.saturating_sub(claimed.len());
        if wanted == 0 {
            break;
        }
        let running = if flow.counts_runs() {
            tx.running(&flow.name).await?
        } else {
            Running::default()
        };
        let room = flow.room(&running, now, wanted);
        if room == 0 {
            continue;
        }
        let mut turn = claim_turn(tx, flow, &running, room, now, keys_seen, request).await?;
        // Nothing under the keys an earlier claim saw: look at the keys
        // afresh, once, for one that came since.
        if turn.tasks.is_empty() && turn.keys_seen_before {
            keys_seen.forget(&flow.name);
            turn = claim_turn(tx, flow, &running, room, now, keys_seen, request).await?;
        }
        let Turn {
            waiting,
            allowance,
            tasks,
            ..
        } = turn;
        if allowance.shares.as_ref().is_some_and(|s| s.keys.is_empty()) {
            continue;
        }
        let record = record_of(flow, &allowance, &waiting, &tasks, now);
        if record != FlowRecord::default() {
            tx.record(&flow.name, &record).await?;
        }
        claimed.extend(tasks);
    }
    Ok(claimed)
}

/// One claim of a limited queue: the keys whose turn it is, what each may
/// give, and the tasks taken.
struct Turn {
    waiting: Vec<WaitingKey>,
    allowance: Allowance,
    tasks: Vec<ClaimedTask>,
    /// The keys are an earlier claim's look at them.
    keys_seen_before: bool,
}

/// Claim up to `room` of `flow`'s tasks, by keys in turn when it has any;
/// nothing when no key has room.
async fn claim_turn<T: FlowTransaction>(
    tx: &mut T,
    flow: &QueueFlow,
    running: &Running,
    room: usize,
    now: i64,
    keys_seen: &KeysSeen,
    request: &ClaimRequest<'_>,
) -> StoreResult<Turn> {
    let (waiting, keys_seen_before) = if flow.keyed() {
        turn_of_keys(tx, flow, running, room, keys_seen).await?
    } else {
        (Vec::new(), false)
    };
    let shares = flow
        .keyed()
        .then(|| shares_of(flow, &waiting, running, now, room));
    let allowance = Allowance { room, shares };
    let tasks = match &allowance.shares {
        Some(shares) if shares.keys.is_empty() => Vec::new(),
        shares => {
            let tasks = tx
                .claim_queue(&flow.name, &allowance, flow.counts_runs(), request)
                .await?;
            match shares {
                Some(shares) => into_turns(tasks, &shares.keys),
                None => tasks,
            }
        }
    };
    Ok(Turn {
        waiting,
        allowance,
        tasks,
        keys_seen_before,
    })
}

/// The keys whose turn it is: after the cursor, wrapping around to the
/// first, one per task of `room` up to [`KEYS_PER_CLAIM`], and as many more
/// as are at their limit (they give none); the keyless tasks take the turn
/// after the last key. A queue with few keys has them all looked up at
/// most once per [`KEYS_RECHECK`]; one with more is walked from the cursor
/// by every claim. With whether the keys are an earlier claim's look.
async fn turn_of_keys<T: FlowTransaction>(
    tx: &mut T,
    flow: &QueueFlow,
    running: &Running,
    room: usize,
    keys_seen: &KeysSeen,
) -> StoreResult<(Vec<WaitingKey>, bool)> {
    let full = match flow.key_limit {
        Some(limit) => running
            .by_key
            .values()
            .filter(|&&n| n >= limit as usize)
            .count(),
        None => 0,
    };
    let wanted = room.min(KEYS_PER_CLAIM) + full;
    let cursor = flow.key_cursor.as_deref();
    let fresh = keys_seen.fresh(&flow.name);
    let seen_before = matches!(fresh, Some(KnownKeys::All(_)));
    let known = match fresh {
        Some(known) => known,
        None => {
            let first = tx
                .waiting_keys(&flow.name, None, None, KEYS_PER_CLAIM + 1)
                .await?;
            let known = if first.len() > KEYS_PER_CLAIM {
                KnownKeys::Many
            } else {
                let keyless = tx.has_keyless(&flow.name).await?;
                KnownKeys::All(
                    first
                        .into_iter()
                        .map(Some)
                        .chain(keyless.then_some(None))
                        .collect::<Vec<_>>()
                        .into(),
                )
            };
            keys_seen.note(&flow.name, known.clone());
            known
        }
    };
    let keys = match known {
        KnownKeys::All(all) => in_turn(&all, cursor, wanted),
        KnownKeys::Many => walk_from(tx, &flow.name, cursor, wanted).await?,
    };
    let named: Vec<String> = keys.iter().flatten().cloned().collect();
    let mut starts = if flow.key_rate().is_some() && !named.is_empty() {
        tx.key_starts(&flow.name, &named).await?
    } else {
        HashMap::new()
    };
    let keys = keys
        .into_iter()
        .map(|key| WaitingKey {
            starts: key
                .as_ref()
                .and_then(|k| starts.remove(k))
                .unwrap_or_default(),
            key,
        })
        .collect();
    Ok((keys, seen_before))
}

/// Up to `wanted` of `all` (the named keys in key order, then `None` for
/// the keyless tasks if any wait) in turn order after `cursor`: the keys
/// after it, the keyless, then the keys from the first up to the cursor.
fn in_turn(all: &[Option<String>], cursor: Option<&str>, wanted: usize) -> Vec<Option<String>> {
    let after = |key: &Option<String>| match (key, cursor) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(key), Some(cursor)) => key.as_str() > cursor,
    };
    let later = all.iter().filter(|key| after(key));
    let keyless = all.iter().filter(|key| key.is_none());
    let wrapped = all.iter().filter(|key| key.is_some() && !after(key));
    later
        .chain(keyless)
        .chain(wrapped)
        .take(wanted)
        .cloned()
        .collect()
}

/// The turn walked in the store from `cursor`, for a queue with too many
/// keys to keep: as [`in_turn`] over all of them.
async fn walk_from<T: FlowTransaction>(
    tx: &mut T,
    queue: &str,
    cursor: Option<&str>,
    wanted: usize,
) -> StoreResult<Vec<Option<String>>> {
    let mut keys: Vec<Option<String>> = tx
        .waiting_keys(queue, cursor, None, wanted)
        .await?
        .into_iter()
        .map(Some)
        .collect();
    // Past the last key: the keyless tasks' turn, then the first keys again.
    if keys.len() < wanted {
        if tx.has_keyless(queue).await? {
            keys.push(None);
        }
        if keys.len() < wanted && cursor.is_some() {
            let wrapped = tx
                .waiting_keys(queue, None, cursor, wanted - keys.len())
                .await?;
            keys.extend(wrapped.into_iter().map(Some));
        }
    }
    Ok(keys)
}

/// What a claim last found of a queue's keys.
#[derive(Debug, Clone)]
pub(crate) enum KnownKeys {
    /// Every key with waiting tasks, in key order, then `None` when tasks
    /// without a key wait (shared: every claim within the recheck reads it).
    All(Arc<[Option<String>]>),
    /// More than [`KEYS_PER_CLAIM`]: each claim walks its own turn.
    Many,
}

/// Each limited queue's [`KnownKeys`], as last looked up.
#[derive(Debug, Default)]
pub(crate) struct KeysSeen {
    last: std::sync::Mutex<HashMap<String, (std::time::Instant, KnownKeys)>>,
}

impl KeysSeen {
    /// The queue's keys as last seen, while younger than [`KEYS_RECHECK`].
    pub fn fresh(&self, queue: &str) -> Option<KnownKeys> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.get(queue)
            .filter(|(at, _)| at.elapsed() < KEYS_RECHECK)
            .map(|(_, known)| known.clone())
    }

    pub fn note(&self, queue: &str, known: KnownKeys) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.insert(queue.to_owned(), (std::time::Instant::now(), known));
    }

    /// Look again at the queue's keys on the next claim.
    pub fn forget(&self, queue: &str) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.remove(queue);
    }

    /// Look again at every queue's keys (this process enqueued).
    pub fn forget_all(&self) {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Each key's share of a claim of `room` tasks, in turn order; keys with no
/// room are left out. A share is the key's room, but no more than the
/// claim's round can take from it: the claim takes every key's first task,
/// then every key's second, and so on, so past the round where the shares
/// add up to `room` it takes nothing. Each task of a share is an index
/// entry the claim reads: a key limit of 100 over 100 keys read 10,000
/// rows for a claim of 512.
fn shares_of(
    flow: &QueueFlow,
    keys: &[WaitingKey],
    running: &Running,
    now: i64,
    room: usize,
) -> KeyShares {
    let (keys, rooms): (Vec<Option<String>>, Vec<usize>) = keys
        .iter()
        .map(|key| (key.key.clone(), flow.key_room(key, running, now)))
        .filter(|&(_, room)| room > 0)
        .unzip();
    let last_round = last_round(&rooms, room);
    KeyShares {
        keys,
        shares: rooms
            .into_iter()
            .map(|room| i64::try_from(room.min(last_round)).unwrap_or(i64::MAX))
            .collect(),
    }
}

/// The fewest rounds of one task per key (each key giving at most its
/// room among `rooms`) that add up to `wanted` tasks, or the most any key
/// can give when all of them together give fewer.
fn last_round(rooms: &[usize], wanted: usize) -> usize {
    let mut sorted = rooms.to_vec();
    sorted.sort_unstable();
    // Keys from `i` on all give a full round each while `rounds` is below
    // their room; the keys before `i` are spent.
    let mut spent = 0usize;
    for (i, &key_room) in sorted.iter().enumerate() {
        let giving = sorted.len() - i;
        // Rounds past what the spent keys gave that the rest need.
        let needed = wanted.saturating_sub(spent).div_ceil(giving);
        if needed <= key_room {
            return needed;
        }
        spent = spent.saturating_add(key_room);
    }
    sorted.last().copied().unwrap_or(0)
}

/// What the claim of `tasks` leaves on the queue's and its keys' rows.
fn record_of(
    flow: &QueueFlow,
    allowance: &Allowance,
    waiting: &[WaitingKey],
    tasks: &[ClaimedTask],
    now: i64,
) -> FlowRecord {
    let mut record = FlowRecord::default();
    if let Some(rate) = flow.queue_rate()
        && !tasks.is_empty()
    {
        record.starts = Some(rate.record(&flow.starts, now, tasks.len()));
    }
    let Some(shares) = &allowance.shares else {
        return record;
    };
    // The turn ends at the last key in turn order that got a task; with
    // none taken it moves past the keys looked at, so that keys with
    // nothing to give do not hold up the rest. The keyless tasks sort after
    // every key, so after their turn it wraps around.
    let served = shares
        .keys
        .iter()
        .rposition(|key| tasks.iter().any(|task| task.key == *key));
    let end = match served {
        Some(at) => shares.keys[at].clone(),
        None => shares.keys.last().cloned().flatten(),
    };
    if end != flow.key_cursor {
        record.key_cursor = Some(end);
    }
    if let Some(rate) = flow.key_rate() {
        for key in waiting {
            let Some(name) = &key.key else { continue };
            let started = tasks
                .iter()
                .filter(|t| t.key.as_ref() == Some(name))
                .count();
            if started > 0 {
                record
                    .key_starts
                    .push((name.clone(), rate.record(&key.starts, now, started)));
            }
        }
    }
    record
}

impl Rate {
    /// From the columns a store keeps it in.
    pub fn stored(count: Option<i32>, window_ms: Option<i64>) -> Option<Rate> {
        match (count, window_ms) {
            (Some(count), Some(ms)) if count > 0 && ms > 0 => Some(Rate {
                count: count as u32,
                window: Duration::from_millis(ms as u64),
            }),
            _ => None,
        }
    }
}

impl FlowChange {
    /// The change sets a limit or a rate (rather than clearing one).
    pub fn limits(&self) -> bool {
        match self {
            FlowChange::Limit(limit) | FlowChange::KeyLimit(limit) => limit.is_some(),
            FlowChange::Rate { rate, .. } => rate.is_some(),
        }
    }

    /// The values the stores write: the limit or the rate's count, the
    /// rate's window in milliseconds, and whether it is per key.
    pub fn columns(&self) -> (Option<i32>, Option<i64>, bool) {
        match self {
            FlowChange::Limit(limit) | FlowChange::KeyLimit(limit) => {
                (limit.map(|n| n as i32), None, false)
            }
            FlowChange::Rate { rate, per_key } => (
                rate.map(|r| r.count as i32),
                rate.map(|r| i64::try_from(r.window.as_millis()).unwrap_or(i64::MAX)),
                *per_key && rate.is_some(),
            ),
        }
    }
}

/// How long a store trusts its last look at whether any queue is limited.
/// The plain claim leaves limited queues out by itself, exactly; this only
/// decides whether a claim also takes the limited path, so a queue limited
/// since is claimed again within this long.
pub const FLOW_RECHECK: Duration = Duration::from_secs(1);

/// What the queues' settings ask of a claim.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub(crate) struct QueuesSet {
    /// Some queue has a limit or a rate: a claim also takes the limited path.
    pub limited: bool,
    /// Some queue is paused or limited: the plain claim walks each queue it
    /// takes on its own, so as not to read through the others' tasks.
    pub left_out: bool,
}

impl QueuesSet {
    /// Whether the plain claim walks each queue it takes on its own: for a
    /// worker serving named queues (`scoped`), or beside a queue it leaves
    /// out; else one walk over every queue passes no task it leaves.
    pub fn claims_by_queue(&self, scoped: bool) -> bool {
        scoped || self.left_out
    }
}

/// [`QueuesSet`] as last looked up, and the limited queues' keys.
#[derive(Debug, Default)]
pub(crate) struct QueuesSeen {
    last: std::sync::Mutex<Option<(std::time::Instant, QueuesSet)>>,
    pub keys: KeysSeen,
}

impl QueuesSeen {
    /// The last answer, while it is younger than [`FLOW_RECHECK`].
    pub fn fresh(&self) -> Option<QueuesSet> {
        let last = *self.last.lock().expect("not poisoned");
        last.filter(|(at, _)| at.elapsed() < FLOW_RECHECK)
            .map(|(_, set)| set)
    }

    pub fn note(&self, set: QueuesSet) {
        *self.last.lock().expect("not poisoned") = Some((std::time::Instant::now(), set));
    }

    /// Look again on the next claim (this process changed a setting).
    pub fn forget(&self) {
        *self.last.lock().expect("not poisoned") = None;
        self.keys.forget_all();
    }
}

/// Up to `$4` keys of queue `$1` with waiting tasks after `$2` (from the
/// first when NULL) and up to `$3` (NULL: no bound), in key order, one
/// index probe each (a loose index scan): one statement for both stores,
/// `{waiting}` being each one's test for a waiting row of `t`.
pub(crate) const WAITING_KEYS: &str = "
WITH RECURSIVE keys(key) AS (
    SELECT (SELECT min(t.key) FROM tasks t
            WHERE {waiting} AND t.queue = $1 AND t.key > coalesce($2, '')
              AND (CAST($3 AS text) IS NULL OR t.key <= $3))
    UNION ALL
    SELECT (SELECT min(t.key) FROM tasks t
            WHERE {waiting} AND t.queue = $1 AND t.key > k.key
              AND (CAST($3 AS text) IS NULL OR t.key <= $3))
    FROM keys k WHERE k.key IS NOT NULL
)
SELECT key FROM keys WHERE key IS NOT NULL LIMIT $4";

/// Make a queue's row if it has none (`$1`): settings need one.
pub(crate) const MAKE_QUEUE: &str =
    "INSERT INTO queues (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";

/// Whether queue `$1`'s runs are counted (it has a limit or a key limit).
pub(crate) const COUNTS_RUNS: &str = concat!(
    "SELECT coalesce((SELECT ",
    counting_queue!(),
    " FROM queues WHERE name = $1), false)"
);

/// How a store keeps the runs its queues' limits count: its statements,
/// each of queue `$1`.
pub(crate) struct RunBook {
    /// The queue's counted runs per key: `(key, count)` rows.
    pub running: &'static str,
    /// Count the queue's running tasks afresh, for a limit that starts
    /// counting them now.
    pub recount: &'static str,
    /// Forget the queue's counted runs: nothing counts them any more.
    pub forget: &'static str,
}

impl FlowChange {
    /// The statement that writes the change to queue `$1`'s row: `$2` the
    /// limit or the rate's count, and for a rate `$3` its window in
    /// milliseconds and `$4` whether it is per key (see
    /// [`FlowChange::columns`]). A new rate starts with no recent starts.
    pub(crate) fn statement(&self) -> &'static str {
        match self {
            FlowChange::Limit(_) => "UPDATE queues SET max_running = $2 WHERE name = $1",
            FlowChange::KeyLimit(_) => "UPDATE queues SET key_limit = $2 WHERE name = $1",
            FlowChange::Rate { .. } => {
                "UPDATE queues SET rate_count = $2, rate_window_ms = $3, rate_per_key = $4,
                                   starts = $5 WHERE name = $1"
            }
        }
    }
}

/// What the counted runs need once a queue's runs were counted
/// (`before`) or not and are now (`after`): counting them afresh, forgetting
/// them, or nothing.
pub(crate) fn recount(before: bool, after: bool, book: &RunBook) -> Option<&'static str> {
    match (before, after) {
        (false, true) => Some(book.recount),
        (true, false) => Some(book.forget),
        _ => None,
    }
}

impl QueueFlow {
    /// From the columns both stores keep (`starts` decoded).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn stored(
        name: String,
        max_running: Option<i32>,
        key_limit: Option<i32>,
        rate_count: Option<i32>,
        rate_window_ms: Option<i64>,
        rate_per_key: bool,
        starts: Vec<i64>,
        key_cursor: Option<String>,
    ) -> QueueFlow {
        QueueFlow {
            name,
            max_running: max_running.map(|n| n as u32),
            key_limit: key_limit.map(|n| n as u32),
            rate: Rate::stored(rate_count, rate_window_ms),
            rate_per_key,
            starts,
            key_cursor,
        }
    }
}

/// The queues with waiting tasks, in name order, one index probe each (a
/// loose index scan), as the common table expression `waiting_queues`:
/// one text for both stores, `{waiting}` being each one's test for a
/// waiting row of `t`.
const WAITING_QUEUES: &str = "waiting_queues(queue) AS (
    SELECT (SELECT min(t.queue) FROM tasks t WHERE {waiting})
    UNION ALL
    SELECT (SELECT min(t.queue) FROM tasks t WHERE {waiting} AND t.queue > w.queue)
    FROM waiting_queues w WHERE w.queue IS NOT NULL
)";

/// The queues a statement takes one by one, as the common table
/// expressions `waiting_queues` and `served(queue)` (after `WITH
/// RECURSIVE`): those `named` selects (one column, `queue`), or, when
/// `none_named` holds, every queue with waiting tasks; less those `skip`
/// says of `s.queue`. One text for both stores, `waiting` being each one's
/// test for a waiting row of `t`.
pub(crate) fn served_queues(waiting: &str, named: &str, none_named: &str, skip: &str) -> String {
    format!(
        "{waiting_queues}, served AS MATERIALIZED (
    SELECT s.queue FROM (
        {named}
        UNION
        SELECT queue FROM waiting_queues WHERE {none_named} AND queue IS NOT NULL
    ) s
    WHERE NOT {skip}
)",
        waiting_queues = WAITING_QUEUES.replace("{waiting}", waiting),
    )
}

/// Whether the queue `s.queue` is paused.
pub(crate) const PAUSED: &str =
    "EXISTS (SELECT 1 FROM queues q WHERE q.name = s.queue AND q.paused_at IS NOT NULL)";

/// Whether the queue `s.queue` is one the plain claim leaves out.
pub(crate) const LEFT_OUT: &str = concat!(
    "EXISTS (SELECT 1 FROM queues q WHERE q.name = s.queue AND ",
    left_out_queue!(),
    ")"
);

/// [`QueuesSet`]: one statement for both stores.
pub(crate) const QUEUES_SET: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM queues WHERE ",
    limited_queue!(),
    ") AS limited, EXISTS (SELECT 1 FROM queues WHERE ",
    left_out_queue!(),
    ") AS left_out"
);

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000;

    fn rate(text: &str) -> Rate {
        text.parse().unwrap()
    }

    #[test]
    fn rates_parse_with_a_unit_and_refuse_without_one() {
        assert_eq!(
            rate("100/1s"),
            Rate {
                count: 100,
                window: Duration::from_secs(1)
            }
        );
        assert_eq!(rate("5/1m").window, Duration::from_secs(60));
        assert_eq!(rate("20/500ms").to_string(), "20/500ms");
        for bad in [
            "100", "100/1", "0/1s", "-1/1s", "x/1s", "10/0s", "10/2days", "10/soon",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} was taken");
        }
        assert!(
            "100/1".parse::<Rate>().unwrap_err().contains("no unit"),
            "says what is missing"
        );
    }

    #[test]
    fn limits_are_whole_and_positive_or_none() {
        assert_eq!(parse_limit("5"), Ok(Some(5)));
        assert_eq!(parse_limit("none"), Ok(None));
        for bad in ["0", "-1", "x", "", "1.5"] {
            assert!(parse_limit(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn a_rate_allows_its_count_per_window_spread_over_tenths() {
        let r = rate("20/1s");
        // Idle: a tenth of the count at once.
        assert_eq!(r.room(&[], 10 * SECOND), 2);
        let starts = r.record(&[], 10 * SECOND, 2);
        assert_eq!(r.room(&starts, 10 * SECOND), 0);
        // A tenth of the window later, two more.
        assert_eq!(r.room(&starts, 10 * SECOND + SECOND / 10 - 1), 0);
        assert_eq!(
            r.room(&starts, 10 * SECOND + SECOND / 10),
            2,
            "windows are half-open: a start a tenth later shares none"
        );
        // Twenty in the last second: none, whatever the tenth says.
        let full: Vec<i64> = (0..10)
            .flat_map(|i| [i * SECOND / 10 + 1, i * SECOND / 10 + 1])
            .collect();
        assert_eq!(r.room(&full, SECOND - 1), 0);
        assert_eq!(
            r.room(&full, SECOND + 2),
            2,
            "the first two left the window"
        );
        // Starts stamped later than the clock (another claim's) count.
        assert_eq!(r.room(&[11 * SECOND, 11 * SECOND], 10 * SECOND), 0);
        // Starts two windows old are forgotten when recording.
        assert_eq!(
            r.record(&[1, 2, 4 * SECOND, 5 * SECOND], 5 * SECOND + 1, 1),
            vec![4 * SECOND, 5 * SECOND, 5 * SECOND + 1]
        );
    }

    fn flow() -> QueueFlow {
        QueueFlow {
            name: "q".into(),
            ..QueueFlow::default()
        }
    }

    fn running(pairs: &[(Option<&str>, usize)]) -> Running {
        Running::of(
            pairs
                .iter()
                .map(|(k, n)| (k.map(str::to_owned), *n as i64))
                .collect(),
        )
    }

    #[test]
    fn room_is_the_least_of_the_limit_the_rate_and_the_demand() {
        let mut q = flow();
        assert_eq!(q.room(&running(&[]), 0, 64), 64, "no settings: the demand");
        q.max_running = Some(5);
        assert_eq!(q.room(&running(&[(None, 3)]), 0, 64), 2);
        assert_eq!(q.room(&running(&[(None, 7)]), 0, 64), 0, "over: none");
        q.rate = Some(rate("10/1s"));
        assert_eq!(q.room(&running(&[]), 0, 64), 1, "the rate's tenth");
        q.rate_per_key = true;
        assert_eq!(
            q.room(&running(&[]), 0, 64),
            5,
            "a rate per key does not bound the queue"
        );
    }

    #[test]
    fn a_keys_room_is_its_limit_less_its_running_and_its_own_rate() {
        let mut q = flow();
        q.key_limit = Some(3);
        let busy = WaitingKey {
            key: Some("a".into()),
            starts: vec![],
        };
        let idle = WaitingKey {
            key: Some("b".into()),
            starts: vec![],
        };
        let now = running(&[(Some("a"), 2)]);
        assert_eq!(q.key_room(&busy, &now, 0), 1);
        assert_eq!(q.key_room(&idle, &now, 0), 3);
        q.rate = Some(rate("10/1s"));
        q.rate_per_key = true;
        assert_eq!(q.key_room(&idle, &now, 0), 1);
        let started = WaitingKey {
            key: Some("b".into()),
            starts: vec![0],
        };
        assert_eq!(q.key_room(&started, &now, 1), 0);
        let shares = shares_of(&q, &[busy.clone(), started, idle.clone()], &now, 1, 10);
        assert_eq!(
            shares.keys,
            vec![Some("a".to_owned()), Some("b".to_owned())]
        );
        assert_eq!(shares.shares, vec![1, 1]);
    }

    /// A claim of 512 over 100 keys, each with room for 100, takes at most
    /// six of any key's tasks, so each key gives no more than six: the
    /// claim reads a share's worth of index entries from every key.
    #[test]
    fn a_keys_share_is_no_more_than_the_claims_rounds_take_from_it() {
        let mut q = flow();
        q.key_limit = Some(100);
        let keys: Vec<WaitingKey> = (0..100)
            .map(|k| WaitingKey {
                key: Some(format!("k{k:02}")),
                starts: vec![],
            })
            .collect();
        let shares = shares_of(&q, &keys, &Running::default(), 0, 512);
        assert_eq!(shares.keys.len(), 100);
        assert!(
            shares.shares.iter().all(|&share| share == 6),
            "shares {:?}",
            shares.shares
        );
        // Keys short of room give all of it; the others make up the rest.
        assert_eq!(last_round(&[1, 2, 10, 10], 12), 5);
        assert_eq!(last_round(&[1, 2, 10, 10], 11), 4);
        // All together short of the claim: every key gives its room.
        assert_eq!(last_round(&[1, 2, 3], 100), 3);
        assert_eq!(last_round(&[4, 4], 1), 1);
    }

    /// A store in memory: one queue, its waiting tasks in claim order.
    struct Memory {
        flow: QueueFlow,
        waiting: Vec<(i64, Option<String>)>,
        running: Vec<(i64, Option<String>)>,
        /// Statements that looked up the queue's keys.
        walks: usize,
    }

    impl FlowTransaction for Memory {
        async fn lock_limited(&mut self, _: &[String]) -> StoreResult<(Vec<QueueFlow>, i64)> {
            Ok((vec![self.flow.clone()], 0))
        }

        async fn running(&mut self, _: &str) -> StoreResult<Running> {
            let mut by_key: HashMap<Option<String>, i64> = HashMap::new();
            for (_, key) in &self.running {
                *by_key.entry(key.clone()).or_default() += 1;
            }
            Ok(Running::of(by_key.into_iter().collect()))
        }

        async fn waiting_keys(
            &mut self,
            _: &str,
            after: Option<&str>,
            until: Option<&str>,
            count: usize,
        ) -> StoreResult<Vec<String>> {
            let mut keys: Vec<String> = self
                .waiting
                .iter()
                .filter_map(|(_, key)| key.clone())
                .filter(|key| after.is_none_or(|a| key.as_str() > a))
                .filter(|key| until.is_none_or(|u| key.as_str() <= u))
                .collect();
            keys.sort();
            keys.dedup();
            keys.truncate(count);
            self.walks += 1;
            Ok(keys)
        }

        async fn key_starts(
            &mut self,
            _: &str,
            _: &[String],
        ) -> StoreResult<HashMap<String, Vec<i64>>> {
            Ok(HashMap::new())
        }

        async fn has_keyless(&mut self, _: &str) -> StoreResult<bool> {
            Ok(self.waiting.iter().any(|(_, key)| key.is_none()))
        }

        async fn claim_queue(
            &mut self,
            _: &str,
            allowance: &Allowance,
            _: bool,
            _: &ClaimRequest<'_>,
        ) -> StoreResult<Vec<ClaimedTask>> {
            let shares = allowance.shares.as_ref().expect("keyed");
            let mut picked: Vec<(usize, usize, i64, Option<String>)> = Vec::new();
            for (turn, (key, share)) in shares.keys.iter().zip(&shares.shares).enumerate() {
                let of_key = self.waiting.iter().filter(|(_, k)| k == key);
                for (rank, (id, _)) in of_key.take(*share as usize).enumerate() {
                    picked.push((rank, turn, *id, key.clone()));
                }
            }
            picked.sort();
            picked.truncate(allowance.room);
            let ids: Vec<i64> = picked.iter().map(|p| p.2).collect();
            self.waiting.retain(|(id, _)| !ids.contains(id));
            let tasks: Vec<ClaimedTask> = picked
                .into_iter()
                .map(|(_, _, id, key)| claimed_task(id, key))
                .collect();
            self.running
                .extend(tasks.iter().map(|t| (t.id, t.key.clone())));
            Ok(tasks)
        }

        async fn record(&mut self, _: &str, record: &FlowRecord) -> StoreResult<()> {
            if let Some(cursor) = &record.key_cursor {
                self.flow.key_cursor = cursor.clone();
            }
            Ok(())
        }
    }

    /// A claimed task of the tests' queue, by id and key.
    fn claimed_task(id: i64, key: Option<String>) -> ClaimedTask {
        ClaimedTask {
            id,
            key,
            plugin: "p".into(),
            args: Vec::new(),
            args_json: None,
            attempt: 1,
            max_attempts: 1,
            timeout_ms: 1000,
            token: 0,
        }
    }

    fn keys_of(tasks: &[ClaimedTask]) -> Vec<&str> {
        tasks
            .iter()
            .map(|t| t.key.as_deref().unwrap_or("-"))
            .collect()
    }

    #[tokio::test]
    async fn claims_take_keys_in_turn_and_the_keyless_after_the_last() {
        let mut waiting = Vec::new();
        for id in 0..100 {
            waiting.push((id, Some("big".to_owned())));
        }
        for (id, key) in [(100, "a"), (101, "a"), (102, "c"), (103, "c")] {
            waiting.push((id, Some(key.to_owned())));
        }
        waiting.push((104, None));
        let mut memory = Memory {
            flow: QueueFlow {
                name: "q".into(),
                key_limit: Some(2),
                ..QueueFlow::default()
            },
            waiting,
            running: Vec::new(),
            walks: 0,
        };
        let seen = KeysSeen::default();
        let first = claim_limited(&mut memory, &claim_of(3), &seen)
            .await
            .unwrap();
        assert_eq!(
            keys_of(&first),
            ["a", "big", "c"],
            "one of each, in key order"
        );
        assert_eq!(memory.flow.key_cursor.as_deref(), Some("c"));
        let second = claim_limited(&mut memory, &claim_of(3), &seen)
            .await
            .unwrap();
        assert_eq!(
            keys_of(&second),
            ["-", "a", "big"],
            "after the last key the keyless, then from the first"
        );
        let third = claim_limited(&mut memory, &claim_of(10), &seen)
            .await
            .unwrap();
        assert_eq!(keys_of(&third), ["c"], "a and big are at their limit");
        memory
            .running
            .retain(|(_, key)| key.as_deref() != Some("big"));
        let fourth = claim_limited(&mut memory, &claim_of(10), &seen)
            .await
            .unwrap();
        assert_eq!(keys_of(&fourth), ["big", "big"], "a key's limit, not more");
    }

    fn memory(key_limit: u32, waiting: &[(i64, &str)]) -> Memory {
        Memory {
            flow: QueueFlow {
                name: "q".into(),
                key_limit: Some(key_limit),
                ..QueueFlow::default()
            },
            waiting: waiting
                .iter()
                .map(|(id, key)| (*id, Some((*key).to_owned())))
                .collect(),
            running: Vec::new(),
            walks: 0,
        }
    }

    fn claim_of(limit: usize) -> ClaimRequest<'static> {
        ClaimRequest {
            worker_id: "w",
            limit,
            scope: Default::default(),
            default_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn claims_look_up_a_few_keys_once_and_again_when_they_give_nothing() {
        let mut memory = memory(1, &[(0, "a"), (1, "a"), (2, "b")]);
        let seen = KeysSeen::default();
        let first = claim_limited(&mut memory, &claim_of(10), &seen).await;
        assert_eq!(keys_of(&first.unwrap()), ["a", "b"]);
        assert_eq!(memory.walks, 1);
        // Both finish; a key this store was not told of arrives.
        memory.running.clear();
        memory.waiting.push((3, Some("c".to_owned())));
        let second = claim_limited(&mut memory, &claim_of(10), &seen).await;
        assert_eq!(keys_of(&second.unwrap()), ["a"], "the keys seen");
        assert_eq!(memory.walks, 1, "not looked up again");
        // a is at its limit and b has nothing: look again, at once.
        let third = claim_limited(&mut memory, &claim_of(10), &seen).await;
        assert_eq!(keys_of(&third.unwrap()), ["c"]);
        assert_eq!(memory.walks, 2);
    }

    #[tokio::test]
    async fn claims_walk_their_own_turn_of_a_queue_with_many_keys() {
        let names: Vec<String> = (0..=KEYS_PER_CLAIM).map(|n| format!("k{n:04}")).collect();
        let waiting: Vec<(i64, &str)> = names
            .iter()
            .enumerate()
            .map(|(id, key)| (id as i64, key.as_str()))
            .collect();
        let mut memory = memory(1, &waiting);
        let seen = KeysSeen::default();
        let first = claim_limited(&mut memory, &claim_of(2), &seen).await;
        assert_eq!(keys_of(&first.unwrap()), ["k0000", "k0001"]);
        let walks = memory.walks;
        let second = claim_limited(&mut memory, &claim_of(2), &seen).await;
        assert_eq!(keys_of(&second.unwrap()), ["k0002", "k0003"]);
        assert_eq!(memory.walks, walks + 1, "one walk from the cursor");
    }

    #[test]
    fn a_keyed_claims_tasks_go_in_turns_whatever_order_they_came_in() {
        let turns = [Some("b".to_owned()), None, Some("a".to_owned())];
        // The claim's tasks (id, key) in claim order, and the ids in turns.
        type Case<'a> = (&'a [(i64, Option<&'a str>)], &'a [i64]);
        let cases: [Case; 4] = [
            // Claim order puts a's tasks first; the turn after the cursor
            // is b's, then the keyless, then a's.
            (
                &[
                    (1, Some("a")),
                    (2, Some("a")),
                    (3, Some("b")),
                    (4, None),
                    (5, Some("b")),
                ],
                &[3, 4, 1, 5, 2],
            ),
            (
                &[(7, Some("a")), (8, Some("a")), (9, Some("a"))],
                &[7, 8, 9],
            ),
            (&[(4, None), (6, None), (5, Some("b"))], &[5, 4, 6]),
            (&[], &[]),
        ];
        for (tasks, expected) in cases {
            let tasks = tasks
                .iter()
                .map(|&(id, key)| claimed_task(id, key.map(str::to_owned)))
                .collect();
            let ids: Vec<i64> = into_turns(tasks, &turns).iter().map(|t| t.id).collect();
            assert_eq!(ids, expected);
        }
    }

    #[test]
    fn a_turn_starts_after_the_cursor_and_the_keyless_follow_the_last_key() {
        let all = [
            Some("a".to_owned()),
            Some("b".to_owned()),
            Some("c".to_owned()),
            None,
        ];
        let names = |keys: Vec<Option<String>>| {
            keys.into_iter()
                .map(|k| k.unwrap_or_else(|| "-".into()))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(in_turn(&all, None, 9)), ["a", "b", "c", "-"]);
        assert_eq!(names(in_turn(&all, Some("a"), 9)), ["b", "c", "-", "a"]);
        assert_eq!(names(in_turn(&all, Some("bb"), 2)), ["c", "-"]);
        assert_eq!(names(in_turn(&all[..3], Some("c"), 9)), ["a", "b", "c"]);
    }
}
