//! `cargo xtask`: the project's own set-up and checks, so a fresh machine
//! needs nothing installed by hand.
//!
//! - `plugins`: build every plugin in `plugins/` for wasm32-wasip2 (adding the
//!   target when missing) into `target/plugins/NAME.wasm`;
//! - `demo`: plugins, then the release binary, then `taskbox demo` (on the
//!   embedded SQLite default unless `DATABASE_URL` is set: no server needed);
//! - `test`: plugins, a reachable Postgres (the Postgres half of every
//!   suite needs one), then every test in the workspace;
//! - `bench`: plugins, Postgres, then the benchmark (see BENCHMARKS.md).

use std::env;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const WASM_TARGET: &str = "wasm32-wasip2";
/// The member of `plugins/` every plugin depends on; not a plugin itself.
const SDK_PACKAGE: &str = "taskbox-sdk";
/// The file the binary uses when `DATABASE_URL` is not set.
const SQLITE_DEFAULT_FILE: &str = "taskbox.db";
/// Where tests and benchmarks find Postgres unless DATABASE_URL says otherwise.
const LOCAL_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const LOCAL_POSTGRES_ADDR: &str = "127.0.0.1:5432";
const POSTGRES_START_WAIT: Duration = Duration::from_secs(30);
/// The cargo profile the benchmark builds: release code with line tables.
const BENCH_PROFILE: &str = "profiling";

fn main() -> std::process::ExitCode {
    match dispatch() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch() -> Result<()> {
    let task = env::args().nth(1).unwrap_or_default();
    let rest: Vec<String> = env::args().skip(2).collect();
    match task.as_str() {
        "plugins" => build_plugins().map(drop),
        "demo" => demo(&rest),
        "test" => test(&rest),
        "bench" => bench(&rest),
        _ => {
            eprintln!("usage: cargo xtask <plugins|demo|test|bench> [args...]");
            std::process::exit(2);
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup is needed to add the wasm32-wasip2 target")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    eprintln!("xtask: adding the {WASM_TARGET} target");
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
}

/// A plugin crate of the `plugins/` workspace, as `cargo metadata` tells it.
struct PluginCrate {
    /// The package name, which is the plugin's name: `word-count` becomes
    /// `word-count.wasm`.
    package: String,
    /// The library target's name, which names the file cargo writes
    /// (`word_count.wasm`); `None` when the crate is no `cdylib` and builds
    /// no component.
    cdylib: Option<String>,
}

/// The workspace members of `plugins/` but the SDK.
fn plugin_crates(plugins: &Path) -> Result<Vec<PluginCrate>> {
    let output = cargo()
        .current_dir(plugins)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed in {}", plugins.display());
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading cargo metadata")?;
    let mut crates = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or_default().to_owned();
        if name == SDK_PACKAGE {
            continue;
        }
        let cdylib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|target| {
                target["crate_types"]
                    .as_array()
                    .is_some_and(|types| types.iter().any(|t| t == "cdylib"))
            })
            .and_then(|target| target["name"].as_str())
            .map(|name| name.replace('-', "_"));
        crates.push(PluginCrate {
            package: name,
            cdylib,
        });
    }
    Ok(crates)
}

/// Build the plugin workspace and copy each component to
/// target/plugins/PACKAGE.wasm.
fn build_plugins() -> Result<PathBuf> {
    ensure_wasm_target()?;
    let root = root();
    let crates = plugin_crates(&root.join("plugins"))?;
    for skipped in crates.iter().filter(|c| c.cdylib.is_none()) {
        eprintln!(
            "xtask: warning: plugins/{0} is not built into a plugin: its Cargo.toml needs `[lib] crate-type = [\"cdylib\"]`",
            skipped.package
        );
    }
    let build_dir = root.join("target/wasm");
    run(cargo()
        .current_dir(root.join("plugins"))
        .env("CARGO_TARGET_DIR", &build_dir)
        .args(["build", "--release", "--target", WASM_TARGET]))?;
    let out = root.join("target/plugins");
    std::fs::create_dir_all(&out)?;
    let built = build_dir.join(WASM_TARGET).join("release");
    let mut copied = 0;
    for plugin in &crates {
        let Some(file) = &plugin.cdylib else {
            continue;
        };
        let from = built.join(format!("{file}.wasm"));
        let to = out.join(format!("{}.wasm", plugin.package));
        std::fs::copy(&from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        copied += 1;
    }
    if copied == 0 {
        bail!("no crate in plugins/ builds a plugin");
    }
    eprintln!("xtask: {copied} plugins in {}", out.display());
    Ok(out)
}

/// Say which step runs, and how long a first build of the host takes, so
/// a long silence of cargo's is expected rather than feared.
fn step(number: usize, of: usize, what: &str) {
    eprintln!("xtask: step {number} of {of}: {what}");
}

/// The host's first build compiles wasmtime and Cranelift: measured on a
/// 2-core machine, about 17 minutes for the release binary and 25 for the
/// tests. Later builds take seconds to a minute.
fn host_build_note(profile_dir: &str) -> &'static str {
    if root()
        .join("target")
        .join(profile_dir)
        .join("taskbox")
        .exists()
        || root()
            .join("target")
            .join(profile_dir)
            .join("deps")
            .exists()
    {
        "(incremental: seconds to a minute)"
    } else {
        "(the first build compiles wasmtime: 15 to 25 minutes on 2 cores, later ones seconds)"
    }
}

/// Make sure Postgres answers at the local address, starting the local
/// cluster when it does not. Returns the URL to use.
fn ensure_postgres() -> Result<String> {
    match env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            return Ok(url);
        }
        Ok(url) if !url.is_empty() => bail!(
            "this needs Postgres, but DATABASE_URL is `{url}`; unset it to use the local server or point it at Postgres"
        ),
        _ => {}
    }
    let addr: SocketAddr = LOCAL_POSTGRES_ADDR.parse().expect("a valid address");
    let answers = || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok();
    if !answers() {
        eprintln!("xtask: Postgres does not answer at {addr}; starting the local cluster");
        start_local_cluster()?;
        let started = Instant::now();
        while !answers() {
            if started.elapsed() > POSTGRES_START_WAIT {
                bail!(
                    "Postgres still does not answer at {addr}; start it or set DATABASE_URL to one that does"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(LOCAL_POSTGRES.to_owned())
}

fn start_local_cluster() -> Result<()> {
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("no Postgres found: install it, or set DATABASE_URL to a server that answers")?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    let version = versions
        .iter()
        .max()
        .context("/etc/postgresql holds no cluster: install Postgres or set DATABASE_URL")?;
    run(Command::new("pg_ctlcluster").args(["--skip-systemctl-redirect", version, "main", "start"]))
}

fn test(rest: &[String]) -> Result<()> {
    step(1, 3, "building the plugins");
    let plugins = build_plugins()?;
    step(2, 3, "making sure Postgres answers");
    let url = ensure_postgres()?;
    step(
        3,
        3,
        &format!(
            "building and running the tests {}",
            host_build_note("debug")
        ),
    );
    // The client's example runs as a program in the tests; `cargo test`
    // builds examples only as test harnesses.
    run(cargo()
        .current_dir(root())
        .args(["build", "-p", "taskbox-client", "--examples"]))?;
    let mut child = cargo()
        .current_dir(root())
        .env("DATABASE_URL", url)
        .env("TASKBOX_PLUGINS", plugins)
        .args(["test", "--workspace", "--all-targets"])
        .args(rest)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    // Pass the output through, and add up every test binary's result line so
    // the run ends with one total rather than the last binary's count.
    let mut totals = TestTotals::default();
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    println!("\nall test binaries together:");
    println!("{} passed, {} failed", totals.passed, totals.failed);
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if totals.passed == 0 {
        bail!("cargo test ran no test");
    }
    Ok(())
}

#[derive(Debug, Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    /// Count a libtest line such as `test result: ok. 3 passed; 1 failed; ...`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                _ => {}
            }
        }
    }
}

/// The demo needs no database server: without `DATABASE_URL` the binary
/// uses its embedded SQLite default, `./taskbox.db` in the current folder.
fn demo(rest: &[String]) -> Result<()> {
    step(1, 3, "building the plugins");
    let plugins = build_plugins()?;
    step(
        2,
        3,
        &format!("building the taskbox binary {}", host_build_note("release")),
    );
    run(cargo()
        .current_dir(root())
        .args(["build", "--release", "-p", "taskbox"]))?;
    step(3, 3, "running the demo");
    let binary = root().join("target/release/taskbox");
    if env::var_os("DATABASE_URL").is_none_or(|url| url.is_empty()) {
        let here = env::current_dir().context("cannot read the current folder")?;
        eprintln!(
            "xtask: DATABASE_URL is not set, so the demo uses SQLite in {}; read it back with `{} stats`",
            here.join(SQLITE_DEFAULT_FILE).display(),
            binary.display()
        );
    }
    run(Command::new(&binary)
        .env("TASKBOX_PLUGINS", plugins)
        .arg("demo")
        .args(rest))
}

fn bench(rest: &[String]) -> Result<()> {
    step(1, 4, "building the plugins");
    let plugins = build_plugins()?;
    step(2, 4, "making sure Postgres answers");
    let url = ensure_postgres()?;
    let root = root();
    // The profiling profile is the release build with line tables kept,
    // for the bench's `perf` profiles; it runs the same machine code.
    step(
        3,
        4,
        &format!(
            "building taskbox with line tables (profile {BENCH_PROFILE}) {}",
            host_build_note(BENCH_PROFILE)
        ),
    );
    run(cargo()
        .current_dir(&root)
        .args(["build", "--profile", BENCH_PROFILE, "-p", "taskbox"]))?;
    step(4, 4, "running the benchmark");
    run(cargo()
        .current_dir(&root)
        .env("DATABASE_URL", url)
        .env("TASKBOX_PLUGINS", plugins)
        .env(
            "TASKBOX_BIN",
            root.join("target").join(BENCH_PROFILE).join("taskbox"),
        )
        .env("TASKBOX_ROOT", &root)
        .args([
            "run",
            "--profile",
            BENCH_PROFILE,
            "-p",
            "taskbox",
            "--example",
            "bench",
            "--",
        ])
        // `cargo xtask bench -- --jobs 5000` as BENCHMARKS.md shows it: the
        // `--` only separates these args from cargo's.
        .args(rest.iter().skip_while(|arg| *arg == "--")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin workspace in a fresh folder under `target/`, with a
    /// `cdylib` crate whose name has a dash, one without `crate-type`, and
    /// the SDK.
    fn workspace() -> PathBuf {
        let dir = root().join("target/xtask-test").join(format!(
            "{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let member = |name: &str, lib: &str| {
            let src = dir.join(name).join("src");
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("lib.rs"), "").unwrap();
            std::fs::write(
                dir.join(name).join("Cargo.toml"),
                format!(
                    "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n{lib}"
                ),
            )
            .unwrap();
        };
        member("word-count", "[lib]\ncrate-type = [\"cdylib\"]\n");
        member("forgot-cdylib", "");
        member(SDK_PACKAGE, "");
        std::fs::write(
            dir.join("Cargo.toml"),
            format!(
                "[workspace]\nresolver = \"3\"\nmembers = [\"word-count\", \"forgot-cdylib\", \"{SDK_PACKAGE}\"]\n"
            ),
        )
        .unwrap();
        dir
    }

    #[test]
    fn plugins_are_named_after_their_package_and_a_missing_cdylib_is_found() {
        let dir = workspace();
        let mut crates = plugin_crates(&dir).unwrap();
        crates.sort_by(|a, b| a.package.cmp(&b.package));
        let found: Vec<(&str, Option<&str>)> = crates
            .iter()
            .map(|c| (c.package.as_str(), c.cdylib.as_deref()))
            .collect();
        assert_eq!(
            found,
            [("forgot-cdylib", None), ("word-count", Some("word_count"))]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
