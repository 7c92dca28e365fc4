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

// First import: it keeps stdout for the single result line (see harness.mjs).
import {
  analyzeSchema, awaitHandlers, commonEnv, deferred, dropSchema, intEnv, makeLog,
  packageVersion, pollUntilDone, printResult, runMain, timedChunks,
} from "./harness.mjs";
import { performance } from "node:perf_hooks";

const PEER = "pg-boss";
const SCHEMA = "pgboss";
const QUEUE = "bench_noop";

const log = makeLog(PEER);

async function main() {
  const { connectionString, jobs: JOBS, drainTimeoutMs: DRAIN_TIMEOUT_MS, analyze: ANALYZE } = commonEnv();
  const CHUNK = intEnv("PB_ENQUEUE_CHUNK", 5000);
  const BATCH = intEnv("PB_BATCH_SIZE", 500);
  const CONCURRENCY = intEnv("PB_LOCAL_CONCURRENCY", 4);
  const POOL_MAX = intEnv("PB_POOL_MAX", 10);

  const { PgBoss } = await import("pg-boss");
  const pg = (await import("pg")).default;
  const version = packageVersion("pg-boss");
  log(`version ${version}, jobs ${JOBS}, batchSize ${BATCH}, localConcurrency ${CONCURRENCY}, ` +
      `pool max ${POOL_MAX}, enqueue chunk ${CHUNK}`);

  const admin = new pg.Client({ connectionString });
  await admin.connect();
  let boss = null;
  let bossError = null;
  const bossFailed = deferred();
  try {
    // ---- reset + install (not timed)
    await dropSchema(admin, SCHEMA);
    boss = new PgBoss({
      connectionString,
      schema: SCHEMA,
      max: POOL_MAX,
      schedule: false, // no cron in this benchmark
    });
    boss.on("error", (e) => {
      bossError ??= e;
      bossFailed.resolve(`error event: ${e?.message ?? e}`);
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
    const enqueueS = await timedChunks(JOBS, CHUNK, async (n) => {
      const jobs = new Array(n);
      for (let i = 0; i < n; i++) jobs[i] = { data: {} };
      await boss.insert(QUEUE, jobs);
    });
    const afterEnqueue = await counts();
    if (afterEnqueue.other !== JOBS || afterEnqueue.completed !== 0) {
      throw new Error(`expected ${JOBS} queued jobs after enqueue, found ${JSON.stringify(afterEnqueue)}`);
    }
    log(`enqueued ${JOBS} in ${enqueueS.toFixed(3)}s`);
    if (ANALYZE) await analyzeSchema(admin, SCHEMA, log);

    // ---- drain (timed): from the first job's start (and, for the wall figure,
    // from starting the worker) until every job is completed
    let handled = 0;
    let firstStart = null;
    const allHandled = deferred();
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
        firstStart ??= performance.now();
        handled += jobs.length;
        if (handled >= JOBS) allHandled.resolve();
      },
    );
    await awaitHandlers(allHandled.promise, [bossFailed.promise], DRAIN_TIMEOUT_MS,
      () => `handled ${handled}/${JOBS}`);
    // The batch is completed by pg-boss after the handler resolves; the drain
    // is over when every row is in state 'completed'.
    await pollUntilDone(t1 + DRAIN_TIMEOUT_MS, async () => {
      const { rows } = await admin.query(
        `select count(*)::int as n from ${SCHEMA}.job where name = $1 and state = 'completed'`,
        [QUEUE],
      );
      if (rows[0].n >= JOBS) return null;
      if (bossError) throw bossError;
      return `only ${rows[0].n}/${JOBS} jobs completed`;
    });
    const done = performance.now();
    const drainS = (done - firstStart) / 1000;
    const drainWallS = (done - t1) / 1000;
    log(`drained ${handled} in ${drainS.toFixed(3)}s (${drainWallS.toFixed(3)}s from worker start)`);

    // ---- verify
    await boss.offWork(QUEUE, { wait: true });
    const c = await counts();
    if (bossError) throw bossError;
    if (handled !== JOBS) throw new Error(`handler saw ${handled} jobs for ${JOBS} enqueued`);
    if (c.completed !== JOBS || c.other !== 0 || c.ids !== JOBS) {
      throw new Error(`after drain expected ${JOBS} completed / 0 other, found ${JSON.stringify(c)}`);
    }

    await boss.stop({ graceful: true, timeout: 10000 });
    boss = null;

    printResult({ peer: PEER, version, jobs: JOBS, enqueueS, drainS, drainWallS });
  } finally {
    if (boss) await boss.stop({ graceful: false, timeout: 2000 }).catch((e) => log("stop failed:", e));
    await admin.end().catch(() => {});
  }
}

runMain(main, log);
