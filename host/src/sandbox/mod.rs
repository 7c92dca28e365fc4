//! The narrow wrapper around wasmtime: one [`Sandbox`] owns the engine, the
//! linker (WASI p2 with no capabilities granted, the `host` interface, and
//! `wasi:http` and `wasi:config` answered by each plugin's [`grants`]),
//! and the epoch ticker that makes deadlines preemptive. Loading plugins
//! lives in [`plugin`], running one task in [`run`].

mod cache;
pub mod capture;
pub mod compile;
pub mod grants;
pub mod limits;
pub mod log;
mod outbound;
pub mod plugin;
pub mod run;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::WasiConfig;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use limits::{MAX_CORE_INSTANCES_PER_TASK, MAX_MEMORIES_PER_TASK, MAX_TABLES_PER_TASK};

pub use compile::{Compiler, LoadLimits};
use grants::Grants;
use limits::TaskLimiter;
use log::PluginLog;
pub use log::{LogLimits, LogTarget};
use outbound::Outbound;
pub use plugin::{Plugin, PluginError, PluginListing, Plugins};
pub use run::{Execution, Outcome};

/// Generated from `wit/`, the single source of truth for the plugin ABI.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "task",
        path: "../wit",
        exports: { default: async },
    });
}

/// Bytes a task's memories and tables may take together, unless configured
/// otherwise.
pub const DEFAULT_MEMORY_LIMIT: usize = 64 * 1024 * 1024;
/// Bytes of stdout and of stderr kept per task.
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;
/// WebAssembly call-stack budget per task.
pub const DEFAULT_MAX_WASM_STACK: usize = 512 * 1024;
/// Instances the pooling allocator is sized for when nobody says otherwise.
pub const DEFAULT_MAX_INSTANCES: u32 = 64;
/// How often the epoch advances: the granularity of deadlines and
/// cancellation, and how often a busy guest yields to the scheduler.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Instances in flight beyond the task concurrency (plugin loading).
const SPARE_INSTANCES: u32 = 8;

/// Limits that apply to every task a sandbox runs.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Bytes a task's memories and tables may take together.
    pub memory_limit: usize,
    pub output_cap: usize,
    pub max_wasm_stack: usize,
    /// How many tasks may be instantiated at once (sizes the pool).
    pub max_instances: u32,
    /// Where precompiled plugins are cached; `None` disables the cache.
    pub cache_dir: Option<std::path::PathBuf>,
    /// A deterministic instruction budget per task (wasmtime fuel), on top
    /// of the deadline. `None`: deadlines only (epoch interruption), which
    /// costs less on call-heavy guests.
    pub fuel: Option<u64>,
    /// How much a plugin may write to the worker's log per attempt.
    pub log: LogLimits,
    /// Use the pooling allocator when the host grants its address space.
    /// `false` forces on-demand allocation, what a host that refuses the
    /// pool's reservation gets; every per-task limit holds either way.
    pub pooling: bool,
    /// Limits on reading and compiling plugin files.
    pub load: LoadLimits,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            output_cap: DEFAULT_OUTPUT_CAP,
            max_wasm_stack: DEFAULT_MAX_WASM_STACK,
            max_instances: DEFAULT_MAX_INSTANCES,
            cache_dir: default_cache_dir(),
            fuel: None,
            log: LogLimits::default(),
            pooling: true,
            load: LoadLimits::default(),
        }
    }
}

/// `$TASKBOX_CACHE`, else the user's cache folder.
pub fn default_cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("TASKBOX_CACHE")
        .map(Into::into)
        .or_else(|| dirs::cache_dir().map(|dir| dir.join("taskbox")))
}

/// Per-task state inside a wasmtime `Store`.
pub struct TaskState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: TaskLimiter,
    log: PluginLog,
    /// The plugin's grants: what `wasi:config` answers.
    grants: Arc<Grants>,
    http: WasiHttpCtx,
    /// Where every outgoing request is checked against the grants.
    outbound: Outbound,
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for TaskState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("taskbox-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The engine, linker and limits shared by every task of a process.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<TaskState>,
    config: SandboxConfig,
    /// Guests run here, one thread per core, apart from the caller's
    /// runtime: a guest busy between epoch ticks never delays claiming,
    /// completing or listening.
    guest_runtime: Option<tokio::runtime::Runtime>,
    _ticker: EpochTicker,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Arc<Self>, PluginError> {
        let pooled = if config.pooling {
            Engine::new(&engine_config(&config, true))
        } else {
            Err(wasmtime::format_err!("switched off"))
        };
        let engine = match pooled {
            Ok(engine) => engine,
            Err(err) => {
                // The pool reserves address space up front; where that is
                // refused (ulimit -v, small VMs) run with on-demand allocation.
                tracing::warn!("pooling allocator unavailable ({err}); using on-demand allocation");
                Engine::new(&engine_config(&config, false)).map_err(PluginError::engine)?
            }
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(PluginError::engine)?;
        bindings::Task::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(PluginError::engine)?;
        // Linked for every plugin, answered by its grants: with none, every
        // request is denied and the config store is empty.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(PluginError::engine)?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |state: &mut TaskState| {
            WasiConfig::from(&state.grants.variables)
        })
        .map_err(PluginError::engine)?;
        let guest_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
            .thread_name("taskbox-guest")
            .enable_all()
            .build()
            .map_err(PluginError::engine)?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(Arc::new(Sandbox {
            engine,
            linker,
            config,
            guest_runtime: Some(guest_runtime),
            _ticker: ticker,
        }))
    }

    /// The runtime guests run on. Work spawned here calls the sandbox
    /// without a hop between runtimes.
    pub fn guest_runtime(&self) -> &tokio::runtime::Handle {
        self.guest_runtime
            .as_ref()
            .expect("present until drop")
            .handle()
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // May run inside another runtime, where a blocking shutdown panics.
        if let Some(runtime) = self.guest_runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn engine_config(limits: &SandboxConfig, pooling: bool) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .max_wasm_stack(limits.max_wasm_stack)
        // Guests do not use component-model async; leaving it on costs ~20 µs
        // per async task (see shared/wasmtime-facts.md).
        .concurrency_support(false)
        .consume_fuel(limits.fuel.is_some())
        .memory_init_cow(true);
    if pooling {
        let instances = limits.max_instances + SPARE_INSTANCES;
        let mut pool = PoolingAllocationConfig::new();
        // Each task may take at most its share of every kind of slot, and
        // the pool holds a full share for every task that can run at once:
        // a component asking for more is refused when it loads, so one task
        // can never leave another without a slot.
        pool.total_component_instances(instances)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_TASK)
            .total_core_instances(instances * MAX_CORE_INSTANCES_PER_TASK)
            .max_memories_per_component(MAX_MEMORIES_PER_TASK)
            .total_memories(instances * MAX_MEMORIES_PER_TASK)
            .max_tables_per_component(MAX_TABLES_PER_TASK)
            .total_tables(instances * MAX_TABLES_PER_TASK)
            .total_stacks(instances)
            // No one memory may outgrow the task's whole budget; the
            // limiter holds the memories and tables together to it.
            .max_memory_size(limits.memory_limit)
            .linear_memory_keep_resident(1024 * 1024)
            .table_keep_resident(64 * 1024)
            .async_stack_keep_resident(64 * 1024)
            .pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}
