//! Compiling a plugin within limits. Cranelift cannot be cancelled or
//! bounded in memory from inside the process, so the `taskbox` binary
//! compiles in a child process of its own ([`Compiler::Subprocess`]): the
//! child re-executes the binary with [`COMPILE_SUBCOMMAND`], caps its own
//! data segment (`RLIMIT_DATA`; `RLIMIT_AS` would break wasmtime's address
//! space reservations), builds an engine from the same settings as the
//! parent's, precompiles the wasm read from stdin and writes the artifact to
//! stdout; the parent kills it at the time limit. Library users without
//! the binary compile in process ([`Compiler::InProcess`]), bounded in time
//! only loosely (see there).

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::Engine;

use super::{PluginError, Sandbox, SandboxConfig};

/// Largest plugin file loaded: far above any real plugin (a full Python
/// interpreter component is ~30 MiB), small enough that reading one never
/// strains a worker. Larger files are refused without being read.
pub const DEFAULT_MAX_PLUGIN_SIZE: u64 = 128 * 1024 * 1024;
/// Longest one plugin may take to compile. Real plugins take milliseconds
/// to a few seconds on a small machine; a component built to be slow takes
/// minutes.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(20);
/// Memory (data segment) the compiler of one plugin may use.
pub const DEFAULT_COMPILE_MEMORY: u64 = 1024 * 1024 * 1024;
/// The hidden first argument that makes the `taskbox` binary a compiler.
pub const COMPILE_SUBCOMMAND: &str = "__compile-plugin";

/// Bytes of the compiler's stderr kept for the refusal's reason.
const STDERR_KEPT: u64 = 4096;

/// Where plugins are compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compiler {
    /// On a blocking thread of this process. Past the timeout the plugin is
    /// refused, but the compile runs on to its end (it cannot be stopped),
    /// and its memory is not bounded.
    InProcess,
    /// `PROGRAM __compile-plugin ...`: the `taskbox` binary (see
    /// [`child_main`]), killed at the timeout, its memory bounded.
    Subprocess(PathBuf),
}

/// Limits on loading one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadLimits {
    /// Files larger than this are refused unread.
    pub max_file_size: u64,
    pub compile_timeout: Duration,
    /// Enforced by [`Compiler::Subprocess`] only.
    pub compile_memory: u64,
    pub compiler: Compiler,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_file_size: DEFAULT_MAX_PLUGIN_SIZE,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
            compile_memory: DEFAULT_COMPILE_MEMORY,
            compiler: Compiler::InProcess,
        }
    }
}

/// Precompile `wasm` for `sandbox`'s engine within its limits: the bytes
/// `Engine::precompile_component` gives.
pub(crate) async fn precompile(
    sandbox: &Sandbox,
    wasm: Vec<u8>,
    shown: &str,
) -> Result<Vec<u8>, PluginError> {
    let limits = &sandbox.config.load;
    let timed_out = || PluginError::CompileTimeout {
        path: shown.to_owned(),
        limit: limits.compile_timeout,
    };
    match &limits.compiler {
        Compiler::InProcess => {
            let engine = sandbox.engine.clone();
            let compile = tokio::task::spawn_blocking(move || engine.precompile_component(&wasm));
            match tokio::time::timeout(limits.compile_timeout, compile).await {
                Err(_) => Err(timed_out()),
                Ok(joined) => {
                    joined
                        .map_err(PluginError::engine)?
                        .map_err(|err| PluginError::Compile {
                            path: shown.to_owned(),
                            reason: one_line(&format!("{err:#}")),
                        })
                }
            }
        }
        Compiler::Subprocess(program) => {
            let mut child = tokio::process::Command::new(program)
                .arg(COMPILE_SUBCOMMAND)
                .args(child_args(&sandbox.config))
                .env_clear()
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|err| {
                    PluginError::Engine(format!(
                        "cannot start the compiler {}: {err}",
                        program.display()
                    ))
                })?;
            let (Some(mut stdin), Some(stdout), Some(stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(PluginError::Engine("the compiler has no pipes".to_owned()));
            };
            let exchange = async {
                let write = async {
                    // A compiler that died early closes its stdin; its exit
                    // status says why.
                    let _ = stdin.write_all(&wasm).await;
                    drop(stdin);
                };
                let mut artifact = Vec::new();
                let mut message = Vec::new();
                let read = async {
                    // The artifact cannot outgrow the compiler's memory.
                    stdout
                        .take(limits.compile_memory)
                        .read_to_end(&mut artifact)
                        .await
                };
                let mut stderr = stderr.take(STDERR_KEPT);
                let read_err = stderr.read_to_end(&mut message);
                let (_, read, _) = tokio::join!(write, read, read_err);
                let status = child.wait().await;
                (status, read, artifact, message)
            };
            let finished = tokio::time::timeout(limits.compile_timeout, exchange).await;
            let Ok((status, read, artifact, message)) = finished else {
                // kill_on_drop ends it; reap it so no zombie is left.
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(timed_out());
            };
            let status = status.map_err(PluginError::engine)?;
            let message = String::from_utf8_lossy(&message);
            if status.success() {
                read.map_err(PluginError::engine)?;
                return Ok(artifact);
            }
            if out_of_memory(&status, &message) {
                return Err(PluginError::CompileMemory {
                    path: shown.to_owned(),
                    limit: limits.compile_memory,
                });
            }
            Err(PluginError::Compile {
                path: shown.to_owned(),
                reason: match message.trim() {
                    "" => format!("the compiler {status}"),
                    said => one_line(said),
                },
            })
        }
    }
}

/// Whether a failed compiler ran out of its memory limit: an allocation
/// failure aborts a Rust process with this message; mmap fails with ENOMEM.
fn out_of_memory(status: &std::process::ExitStatus, message: &str) -> bool {
    use std::os::unix::process::ExitStatusExt;
    message.contains("memory allocation of")
        || message.contains("Cannot allocate memory")
        || message.contains("out of memory")
        || (status.signal() == Some(nix::libc::SIGABRT) && message.trim().is_empty())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The settings a compiler process needs to build an engine whose
/// artifacts the parent's engine accepts, and its own limits.
fn child_args(config: &SandboxConfig) -> Vec<String> {
    let limits = &config.load;
    // A backstop should the parent die before it can kill the child: CPU
    // time for every core over the whole timeout, plus a second.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    vec![
        format!("max-wasm-stack={}", config.max_wasm_stack),
        format!("memory-limit={}", config.memory_limit),
        format!("max-instances={}", config.max_instances),
        format!("fuel={}", u8::from(config.fuel.is_some())),
        format!("data-limit={}", limits.compile_memory),
        format!(
            "cpu-seconds={}",
            limits
                .compile_timeout
                .as_secs()
                .saturating_add(1)
                .saturating_mul(cores)
                + 1
        ),
    ]
}

/// What [`child_args`] wrote: the sandbox settings, the memory limit and the
/// CPU-seconds limit.
fn parse_child_args(args: &[String]) -> Result<(SandboxConfig, u64, u64), String> {
    let mut config = SandboxConfig {
        cache_dir: None,
        ..SandboxConfig::default()
    };
    let (mut data, mut cpu) = (None, None);
    for arg in args {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("`{arg}` is not KEY=VALUE"))?;
        let number = value
            .parse::<u64>()
            .map_err(|_| format!("`{arg}` is not a number"))?;
        let size = || usize::try_from(number).map_err(|_| format!("`{arg}` is too large"));
        match key {
            "max-wasm-stack" => config.max_wasm_stack = size()?,
            "memory-limit" => config.memory_limit = size()?,
            "max-instances" => {
                config.max_instances =
                    u32::try_from(number).map_err(|_| format!("`{arg}` is too large"))?;
            }
            "fuel" => config.fuel = (number != 0).then_some(u64::MAX),
            "data-limit" => data = Some(number),
            "cpu-seconds" => cpu = Some(number),
            _ => return Err(format!("unknown setting `{key}`")),
        }
    }
    match (data, cpu) {
        (Some(data), Some(cpu)) => Ok((config, data, cpu)),
        _ => Err("data-limit and cpu-seconds are required".to_owned()),
    }
}

/// The engine a compiler process builds. Pooling only changes how
/// instances are allocated, not the artifact (a test checks the hashes
/// agree), and the child never instantiates.
fn child_engine(config: &SandboxConfig) -> wasmtime::Result<Engine> {
    Engine::new(&super::engine_config(config, false))
}

/// The compiler process: `args` are what follows [`COMPILE_SUBCOMMAND`].
/// Reads wasm on stdin, writes the artifact to stdout, or one line to
/// stderr and exits 1.
pub fn child_main(args: &[String]) -> ExitCode {
    match compile_from_stdin(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{}", one_line(&message));
            ExitCode::from(1)
        }
    }
}

fn compile_from_stdin(args: &[String]) -> Result<(), String> {
    use nix::sys::resource::{Resource, setrlimit};
    use std::io::{Read, Write};
    let (config, data, cpu) = parse_child_args(args)?;
    setrlimit(Resource::RLIMIT_DATA, data, data)
        .map_err(|err| format!("cannot limit the compiler's memory: {err}"))?;
    setrlimit(Resource::RLIMIT_CPU, cpu, cpu.saturating_add(1))
        .map_err(|err| format!("cannot limit the compiler's CPU time: {err}"))?;
    let mut wasm = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut wasm)
        .map_err(|err| format!("cannot read the wasm: {err}"))?;
    let engine = child_engine(&config).map_err(|err| format!("{err:#}"))?;
    let artifact = engine
        .precompile_component(&wasm)
        .map_err(|err| format!("{err:#}"))?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&artifact)
        .and_then(|_| stdout.flush())
        .map_err(|err| format!("cannot write the artifact: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::cache::engine_hash;

    #[test]
    fn the_compiler_builds_the_engine_the_worker_runs() {
        for config in [
            SandboxConfig::default(),
            SandboxConfig {
                max_wasm_stack: 256 * 1024,
                memory_limit: 16 * 1024 * 1024,
                max_instances: 3,
                fuel: Some(1000),
                ..SandboxConfig::default()
            },
        ] {
            let (parsed, data, _) = parse_child_args(&child_args(&config)).unwrap();
            assert_eq!(data, config.load.compile_memory);
            let pooled = Engine::new(&super::super::engine_config(&config, true)).unwrap();
            let compiler = child_engine(&parsed).unwrap();
            assert_eq!(engine_hash(&pooled), engine_hash(&compiler));
        }
    }
}
