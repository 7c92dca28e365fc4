// Peer benchmark: pg-boss (https://github.com/timgit/pg-boss).
//
// Enqueues JOBS no-op jobs with `insert(name, jobs[])` in chunks, then drains
// them with `work()` fetching `batchSize` jobs per fetch (the handler gets the
// whole batch and pg-boss completes it with one `complete` call), and prints
// one JSON line on stdout. Everything else goes to stderr. See README.md.
//
// Env:
//   DATABASE_URL   required; the `pgboss` schema in it is DROPPED.
//   JOBS           number of jobs (default 20000)
//   PB_ENQUEUE_CHUNK       jobs per insert() call                   (default 5000)
//   PB_BATCH_SIZE          work() batchSize (jobs per fetch/complete) (default 500)
//   PB_LOCAL_CONCURRENCY   work() localConcurrency (fetch loops)     (default 4)
//   PB_POOL_MAX            constructor `max` (pg pool size)          (default 10, pg-boss's default)
//   ANALYZE_AFTER_ENQUEUE  1 (default): ANALYZE the schema's tables between
//                          enqueue and drain, untimed; 0: don't
//   DRAIN_TIMEOUT_S        give up (exit 1) after this long          (default 300)

import { createRequire } from "node:module";
import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";

// Keep stdout for the single result line, whatever a library prints.
console.log = console.error;
console.info = console.error;
console.warn = console.error;
console.debug = console.error;

const PEER = "pg-boss";
const SCHEMA = "pgboss";
const QUEUE = "bench_noop";

function log(...args) {
  console.error(`[${PEER}]`, ...args);
}

function intEnv(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n)) throw new Error(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  return n;
}

function packageVersion(pkgName) {
  const require = createRequire(import.meta.url);
  let dir = dirname(require.resolve(pkgName));
  for (;;) {
    const candidate = join(dir, "package.json");
    if (existsSync(candidate)) {
      const pkg = JSON.parse(readFileSync(candidate, "utf8"));
      if (pkg.name === pkgName) return pkg.version;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find package.json of ${pkgName}`);
    dir = parent;
  }
}

// The schema was just created, so Postgres has no statistics for the freshly
// filled job table until autovacuum gets round to it (measured here: 100k-job
// drains ran 1.4-3x slower without this).
// A long-lived queue has statistics, so by default give it some, untimed.
async function analyzeSchema(client, schema) {
  const { rows } = await client.query(
    "select format('%I.%I', schemaname, tablename) as t from pg_tables where schemaname = $1",
    [schema],
  );
  if (rows.length) await client.query(`analyze ${rows.map((r) => r.t).join(", ")}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const connectionString = process.env.DATABASE_URL;
  if (!connectionString) throw new Error("DATABASE_URL is required");
  const JOBS = intEnv("JOBS", 20000);
  if (JOBS < 1) throw new Error("JOBS must be >= 1");
  const CHUNK = intEnv("PB_ENQUEUE_CHUNK", 5000);
  const BATCH = intEnv("PB_BATCH_SIZE", 500);
  const CONCURRENCY = intEnv("PB_LOCAL_CONCURRENCY", 4);
  const POOL_MAX = intEnv("PB_POOL_MAX", 10);
  const DRAIN_TIMEOUT_MS = intEnv("DRAIN_TIMEOUT_S", 300) * 1000;
  const ANALYZE = intEnv("ANALYZE_AFTER_ENQUEUE", 1) !== 0;

  const { PgBoss } = await import("pg-boss");
  const pg = (await import("pg")).default;
  const version = packageVersion("pg-boss");
  log(`version ${version}, jobs ${JOBS}, batchSize ${BATCH}, localConcurrency ${CONCURRENCY}, ` +
      `pool max ${POOL_MAX}, enqueue chunk ${CHUNK}`);

  const admin = new pg.Client({ connectionString });
  await admin.connect();
  let boss = null;
  let bossError = null;
  let bossFailed;
  const bossFailedP = new Promise((r) => (bossFailed = r));
  try {
    // ---- reset + install (not timed)
    await admin.query("set client_min_messages = warning");
    await admin.query(`drop schema if exists ${SCHEMA} cascade`);
    boss = new PgBoss({
      connectionString,
      schema: SCHEMA,
      max: POOL_MAX,
      schedule: false, // no cron in this benchmark
    });
    boss.on("error", (e) => {
      bossError ??= e;
      bossFailed(`error event: ${e?.message ?? e}`);
      log("error event:", e?.stack ?? e);
    });
    boss.on("warning", (w) => log("warning event:", JSON.stringify(w)));
    await boss.start();
    await boss.createQueue(QUEUE);
    log("schema installed");

    const counts = async () => {
      const { rows } = await admin.query(
        `select count(*) filter (where state = 'completed')::int as completed,
                count(*) filter (where state <> 'completed')::int as other,
                count(distinct id)::int as ids
           from ${SCHEMA}.job where name = $1`,
        [QUEUE],
      );
      return rows[0];
    };

    // ---- enqueue (timed)
    const t0 = performance.now();
    for (let done = 0; done < JOBS; ) {
      const n = Math.min(CHUNK, JOBS - done);
      const jobs = new Array(n);
      for (let i = 0; i < n; i++) jobs[i] = { data: {} };
      await boss.insert(QUEUE, jobs);
      done += n;
    }
    const enqueueS = (performance.now() - t0) / 1000;
    const afterEnqueue = await counts();
    if (afterEnqueue.other !== JOBS || afterEnqueue.completed !== 0) {
      throw new Error(`expected ${JOBS} queued jobs after enqueue, found ${JSON.stringify(afterEnqueue)}`);
    }
    log(`enqueued ${JOBS} in ${enqueueS.toFixed(3)}s`);
    if (ANALYZE) {
      await analyzeSchema(admin, SCHEMA);
      log(`analyzed schema ${SCHEMA} (untimed; ANALYZE_AFTER_ENQUEUE=0 to skip)`);
    }

    // ---- drain (timed): from starting the worker until every job is completed
    let handled = 0;
    let allHandled;
    const allHandledP = new Promise((r) => (allHandled = r));
    const t1 = performance.now();
    await boss.work(
      QUEUE,
      {
        batchSize: BATCH,
        localConcurrency: CONCURRENCY,
        // keep fetching with no delay while fetches come back full
        burstWhenBatchFull: true,
        pollingIntervalSeconds: 0.5, // the minimum; only matters once the backlog is gone
      },
      async (jobs) => {
        handled += jobs.length;
        if (handled >= JOBS) allHandled();
      },
    );
    const deadline = t1 + DRAIN_TIMEOUT_MS;
    let timer;
    const timeout = new Promise((r) => (timer = setTimeout(r, DRAIN_TIMEOUT_MS, "timeout")));
    const first = await Promise.race([allHandledP.then(() => "ok"), bossFailedP, timeout]);
    clearTimeout(timer);
    if (first !== "ok") throw new Error(`drain did not finish: ${first} (handled ${handled}/${JOBS})`);
    // The batch is completed by pg-boss after the handler resolves; the drain
    // is over when every row is in state 'completed'.
    let c;
    for (;;) {
      const { rows } = await admin.query(
        `select count(*)::int as n from ${SCHEMA}.job where name = $1 and state = 'completed'`,
        [QUEUE],
      );
      if (rows[0].n >= JOBS) break;
      if (bossError) throw bossError;
      if (performance.now() > deadline) throw new Error(`timeout: only ${rows[0].n}/${JOBS} jobs completed`);
      await sleep(2);
    }
    const drainS = (performance.now() - t1) / 1000;
    log(`drained ${handled} in ${drainS.toFixed(3)}s`);

    // ---- verify
    await boss.offWork(QUEUE, { wait: true });
    c = await counts();
    if (bossError) throw bossError;
    if (handled !== JOBS) throw new Error(`handler saw ${handled} jobs for ${JOBS} enqueued`);
    if (c.completed !== JOBS || c.other !== 0 || c.ids !== JOBS) {
      throw new Error(`after drain expected ${JOBS} completed / 0 other, found ${JSON.stringify(c)}`);
    }

    await boss.stop({ graceful: true, timeout: 10000 });
    boss = null;

    const result = {
      peer: PEER,
      version,
      jobs: JOBS,
      enqueue_per_s: Math.round((JOBS / enqueueS) * 10) / 10,
      drain_per_s: Math.round((JOBS / drainS) * 10) / 10,
    };
    process.stdout.write(JSON.stringify(result) + "\n");
  } finally {
    if (boss) await boss.stop({ graceful: false, timeout: 2000 }).catch((e) => log("stop failed:", e));
    await admin.end().catch(() => {});
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    log("FAILED:", err?.stack ?? err);
    process.exit(1);
  },
);
