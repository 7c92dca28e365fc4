// Peer benchmark: Graphile Worker (https://worker.graphile.org).
//
// Enqueues JOBS no-op jobs with `addJobs` (one `add_jobs` SQL call per chunk),
// then drains them with a worker pool that has Graphile Worker's batching
// features on (local queue + batched job completion), and prints one JSON line
// on stdout. Everything else goes to stderr. See README.md.
//
// Env:
//   DATABASE_URL   required; the `graphile_worker` schema in it is DROPPED.
//   JOBS           number of jobs (default 20000)
//   GW_ENQUEUE_CHUNK     jobs per addJobs call         (default 5000)
//   GW_CONCURRENCY       preset.worker.concurrentJobs  (default 24)
//   GW_MAX_POOL_SIZE     preset.worker.maxPoolSize     (default concurrency + 1)
//   JOB_SLEEP_MS         each job waits this long (default 0: a no-op)
//   GW_LOCAL_QUEUE_SIZE  preset.worker.localQueue.size (default 500)
//   GW_COMPLETE_BATCH_DELAY  preset.worker.completeJobBatchDelay / failJobBatchDelay
//                            in ms (default 0 = batch whatever is pending)
//   ANALYZE_AFTER_ENQUEUE  1 (default): ANALYZE the schema's tables between
//                          enqueue and drain, untimed; 0: don't
//   DRAIN_TIMEOUT_S      give up (exit 1) after this long (default 300)

// First import: it keeps stdout for the single result line (see harness.mjs).
import {
  analyzeSchema, awaitHandlers, commonEnv, deferred, dropSchema, intEnv, makeLog,
  packageVersion, pollUntilDone, printResult, runMain, sleep, timedChunks,
} from "./harness.mjs";
import { performance } from "node:perf_hooks";
import { EventEmitter } from "node:events";

// Graphile Worker logs one INFO line per completed job unless this is set
// (read at module load in dist/worker.js and dist/main.js), so set it before
// the dynamic import below: we measure the queue, not per-job log formatting.
if (process.env.NO_LOG_SUCCESS === undefined) process.env.NO_LOG_SUCCESS = "1";

const PEER = "graphile-worker";
const SCHEMA = "graphile_worker";
const TASK = "bench_noop";

const log = makeLog(PEER);

async function main() {
  const { connectionString, jobs: JOBS, drainTimeoutMs: DRAIN_TIMEOUT_MS, analyze: ANALYZE } = commonEnv();
  const CHUNK = intEnv("GW_ENQUEUE_CHUNK", 5000);
  const CONCURRENCY = intEnv("GW_CONCURRENCY", 24);
  const MAX_POOL = intEnv("GW_MAX_POOL_SIZE", CONCURRENCY + 1);
  const LOCAL_QUEUE = intEnv("GW_LOCAL_QUEUE_SIZE", 500);
  const BATCH_DELAY = intEnv("GW_COMPLETE_BATCH_DELAY", 0);
  // An I/O-bound job: each waits this long (0: a no-op).
  const SLEEP_MS = intEnv("JOB_SLEEP_MS", 0);

  const { Logger, makeWorkerUtils, parseCronItems, run } = await import("graphile-worker");
  const pg = (await import("pg")).default;
  const version = packageVersion("graphile-worker");

  // Library logs -> stderr; drop debug chatter.
  const logger = new Logger((scope) => (level, message) => {
    if (level === "debug") return;
    console.error(`[${PEER}:${scope.label ?? "core"}] ${level.toUpperCase()}: ${message}`);
  });

  const events = new EventEmitter(); // given up front so no early event is missed
  const preset = {
    worker: {
      events,
      connectionString,
      schema: SCHEMA,
      concurrentJobs: CONCURRENCY,
      maxPoolSize: MAX_POOL,
      pollInterval: 2000, // backlog exists before start; polling only matters when idle
      // Batching (see dist/index.d.ts GraphileConfig.WorkerOptions and
      // https://worker.graphile.org/docs/performance#batching):
      localQueue: { size: LOCAL_QUEUE },
      completeJobBatchDelay: BATCH_DELAY,
      failJobBatchDelay: BATCH_DELAY,
      logger,
    },
  };
  log(`version ${version}, jobs ${JOBS}, concurrency ${CONCURRENCY}, maxPoolSize ${MAX_POOL}, ` +
      `localQueue.size ${LOCAL_QUEUE}, complete/failJobBatchDelay ${BATCH_DELAY}ms, enqueue chunk ${CHUNK}`);

  const admin = new pg.Client({ connectionString });
  await admin.connect();
  let utils = null;
  let runner = null;
  try {
    // ---- reset + migrate (not timed)
    await dropSchema(admin, SCHEMA);
    utils = await makeWorkerUtils({ preset });
    await utils.migrate();
    log("schema installed");

    // ---- enqueue (timed)
    const enqueueS = await timedChunks(JOBS, CHUNK, async (n) => {
      const specs = new Array(n);
      for (let i = 0; i < n; i++) specs[i] = { identifier: TASK, payload: {} };
      const added = await utils.addJobs(specs);
      if (added.length !== n) throw new Error(`addJobs returned ${added.length} jobs for ${n} specs`);
    });
    const queued = Number((await admin.query(`select count(*)::int as n from ${SCHEMA}.jobs`)).rows[0].n);
    if (queued !== JOBS) throw new Error(`expected ${JOBS} queued jobs after enqueue, found ${queued}`);
    log(`enqueued ${JOBS} in ${enqueueS.toFixed(3)}s`);
    if (ANALYZE) await analyzeSchema(admin, SCHEMA, log);

    // ---- drain (timed): from the first job's start (and, for the wall figure,
    // from starting the worker) until the table is empty
    let handled = 0;
    let errors = 0;
    const allHandled = deferred();
    const jobFailed = deferred();
    events.on("job:error", ({ job, error }) => {
      errors++;
      log(`job ${job?.id} error:`, error);
      jobFailed.resolve(`job error: ${error?.message ?? error}`);
    });
    let firstStart = null;
    const taskList = {
      [TASK]: async () => {
        firstStart ??= performance.now();
        if (SLEEP_MS > 0) await new Promise((resolve) => setTimeout(resolve, SLEEP_MS));
        if (++handled === JOBS) allHandled.resolve();
      },
    };

    const t1 = performance.now();
    // no cron: an explicit empty item list stops it looking for a crontab file
    runner = await run({ preset, taskList, parsedCronItems: parseCronItems([]), noHandleSignals: true });
    const runnerDied = runner.promise.then(
      () => "runner exited",
      (e) => `runner failed: ${e?.stack ?? e}`,
    );
    await awaitHandlers(allHandled.promise, [jobFailed.promise, runnerDied], DRAIN_TIMEOUT_MS,
      () => `handled ${handled}/${JOBS}`);
    // Batched completion deletes the jobs shortly after the handlers return;
    // the drain is over when no job row is left.
    const remainingJobs = async () =>
      Number((await admin.query(`select count(*)::int as n from ${SCHEMA}._private_jobs`)).rows[0].n);
    await pollUntilDone(t1 + DRAIN_TIMEOUT_MS, async () => {
      const remaining = await remainingJobs();
      return remaining === 0 ? null : `${remaining} jobs still in the table`;
    });
    const done = performance.now();
    const drainS = (done - firstStart) / 1000;
    const drainWallS = (done - t1) / 1000;
    log(`drained ${handled} in ${drainS.toFixed(3)}s (${drainWallS.toFixed(3)}s from worker start)`);

    // ---- verify
    if (errors !== 0) throw new Error(`${errors} job errors`);
    await sleep(50); // let any stray execution surface before counting
    if (handled !== JOBS) throw new Error(`handler ran ${handled} times for ${JOBS} jobs`);
    // completing a job deletes it; a failed job would stay in the table
    const remaining = await remainingJobs();
    if (remaining !== 0) throw new Error(`${remaining} jobs left after drain`);

    await runner.stop();
    runner = null;

    printResult({ peer: PEER, version, jobs: JOBS, enqueueS, drainS, drainWallS });
  } finally {
    if (runner) await runner.stop().catch((e) => log("runner.stop failed:", e));
    if (utils) await utils.release().catch((e) => log("utils.release failed:", e));
    await admin.end().catch(() => {});
  }
}

runMain(main, log);
