// What the peer benchmark scripts (graphile.mjs, pgboss.mjs) share: env
// parsing, logging to stderr, schema reset and ANALYZE, timing, the drain
// timeout and the one JSON result line. See README.md.
//
// Importing this module redirects console.log/info/warn/debug to stderr, so
// stdout keeps only the result line whatever a library prints. The scripts
// import it statically, so this runs before any library is (dynamically)
// imported.

import { createRequire } from "node:module";
import { readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";

console.log = console.error;
console.info = console.error;
console.warn = console.error;
console.debug = console.error;

/** A `log(...args)` that writes `[peer] ...` to stderr. */
export function makeLog(peer) {
  return (...args) => console.error(`[${peer}]`, ...args);
}

export function intEnv(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n)) throw new Error(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  return n;
}

/** The env both scripts read: DATABASE_URL, JOBS, DRAIN_TIMEOUT_S, ANALYZE_AFTER_ENQUEUE. */
export function commonEnv() {
  const connectionString = process.env.DATABASE_URL;
  if (!connectionString) throw new Error("DATABASE_URL is required");
  const jobs = intEnv("JOBS", 20000);
  if (jobs < 1) throw new Error("JOBS must be >= 1");
  return {
    connectionString,
    jobs,
    drainTimeoutMs: intEnv("DRAIN_TIMEOUT_S", 300) * 1000,
    analyze: intEnv("ANALYZE_AFTER_ENQUEUE", 1) !== 0,
  };
}

/** The version in the installed package.json of `pkgName`. */
export function packageVersion(pkgName) {
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

/** Drop the peer's schema (not timed); the library reinstalls it. */
export async function dropSchema(client, schema) {
  await client.query("set client_min_messages = warning");
  await client.query(`drop schema if exists ${schema} cascade`);
}

// The schema was just created, so Postgres has no statistics for the freshly
// filled job table until autovacuum gets round to it (measured here: 100k-job
// drains ran 1.4-3x slower without this).
// A long-lived queue has statistics, so by default give it some, untimed.
export async function analyzeSchema(client, schema, log) {
  const { rows } = await client.query(
    "select format('%I.%I', schemaname, tablename) as t from pg_tables where schemaname = $1",
    [schema],
  );
  if (rows.length) await client.query(`analyze ${rows.map((r) => r.t).join(", ")}`);
  log(`analyzed schema ${schema} (untimed; ANALYZE_AFTER_ENQUEUE=0 to skip)`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A promise with its `resolve` outside. */
export function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * Enqueue `total` jobs, `chunk` at a time, with `await enqueue(n)` per chunk;
 * returns the seconds it took.
 */
export async function timedChunks(total, chunk, enqueue) {
  const t0 = performance.now();
  for (let done = 0; done < total; ) {
    const n = Math.min(chunk, total - done);
    await enqueue(n);
    done += n;
  }
  return (performance.now() - t0) / 1000;
}

/**
 * Wait until `handled` resolves, or throw if one of `failures` resolves first
 * (with a reason) or `timeoutMs` passes; `progress()` is put in the error.
 */
export async function awaitHandlers(handled, failures, timeoutMs, progress) {
  let timer;
  const timeout = new Promise((r) => (timer = setTimeout(r, timeoutMs, "timeout")));
  const first = await Promise.race([handled.then(() => "ok"), ...failures, timeout]);
  clearTimeout(timer);
  if (first !== "ok") throw new Error(`drain did not finish: ${first} (${progress()})`);
}

/**
 * Poll every 2 ms until `await check()` returns null; otherwise it returns
 * what is still pending, which is put in the error once `deadline`
 * (a performance.now() value) has passed.
 */
export async function pollUntilDone(deadline, check) {
  for (;;) {
    const pending = await check();
    if (pending === null) return;
    if (performance.now() > deadline) throw new Error(`timeout: ${pending}`);
    await sleep(2);
  }
}

/**
 * The one stdout line. `drainS` counts from the first job's start to the last
 * completion (how taskbox's drain is counted); `drainWallS` from starting the
 * worker.
 */
export function printResult({ peer, version, jobs, enqueueS, drainS, drainWallS }) {
  const result = {
    peer,
    version,
    jobs,
    enqueue_per_s: Math.round((jobs / enqueueS) * 10) / 10,
    drain_per_s: Math.round((jobs / drainS) * 10) / 10,
    drain_wall_per_s: Math.round((jobs / drainWallS) * 10) / 10,
  };
  process.stdout.write(JSON.stringify(result) + "\n");
}

/** Run `main`, exit 0 when it resolves; log and exit 1 (no stdout line) when it throws. */
export function runMain(main, log) {
  main().then(
    () => process.exit(0),
    (err) => {
      log("FAILED:", err?.stack ?? err);
      process.exit(1);
    },
  );
}
