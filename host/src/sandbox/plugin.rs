//! Plugins: a folder of `NAME.wasm` components. Each is read (refused
//! unread above the size limit), compiled once within the load limits (see
//! [`super::compile`]), its precompiled artifact cached on disk and verified
//! before reuse (see `cache.rs`), pre-linked into an `InstancePre`, and
//! asked once for its args/result schema. Each plugin loads under its own
//! lock, so a slow one holds up no other. A file version is told apart by
//! inode, change time, length and mtime, then by content digest; while a
//! newer file fails to load, the last version that loaded keeps serving.
//! `NAME.toml` beside the file holds the plugin's grants (see
//! [`super::grants`]); it is part of the version, so editing it alone takes
//! effect without compiling again, and a bad one refuses the plugin the
//! way a bad wasm file does. Files that are not taskbox components are
//! refused with a reason the `plugins` command shows; the rest keep working.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postcard_schema::schema::owned::OwnedNamedType;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Component;

use super::bindings::TaskPre;
use super::cache::ArtifactCache;
use super::compile;
use super::grants::{GRANTS_EXTENSION, Grants, MAX_GRANTS_FILE};
use super::run::{Call, Returned};
use super::{LogTarget, Sandbox, TaskState};

/// The extension of plugin files.
pub const PLUGIN_EXTENSION: &str = "wasm";
/// How long a plugin may take to describe itself.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const COMPONENT_LAYER: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
const CORE_MODULE_LAYER: [u8; 4] = [0x01, 0x00, 0x00, 0x00];

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("no plugin named `{0}` in the plugins folder")]
    NotFound(String),
    #[error("`{0}` is not a valid plugin name (use letters, digits, `-` and `_`)")]
    BadName(String),
    #[error("cannot read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{0} is not a WebAssembly file")]
    NotWasm(String),
    #[error("{0} is a core WebAssembly module, not a component; build it for wasm32-wasip2")]
    CoreModule(String),
    #[error("{path} does not compile: {reason}")]
    Compile { path: String, reason: String },
    /// Compiled, but this engine will not take it: most often a component
    /// with more memories, tables or instances than a task may have.
    #[error("{path} cannot be loaded: {reason}")]
    Load { path: String, reason: String },
    #[error("{path} is not a taskbox task (world taskbox:plugin/task): {reason}")]
    WrongWorld { path: String, reason: String },
    #[error("{path} did not describe its args: {reason}")]
    Describe { path: String, reason: String },
    #[error(
        "{path} is {size} bytes, over the plugin size limit of {limit} bytes (--max-plugin-size)"
    )]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{0} changed while it was read; it is read again on the next look")]
    Changing(String),
    #[error("{path} took longer than {} to compile (--compile-timeout)", humantime::format_duration(*.limit))]
    CompileTimeout { path: String, limit: Duration },
    #[error("{path} needed more than {} of memory to compile (--compile-memory)", crate::size::show(*.limit))]
    CompileMemory { path: String, limit: u64 },
    #[error(
        "the plugin cache {dir} is {reason}; make it yours and writable by you alone (chmod 700), or set TASKBOX_CACHE to another folder"
    )]
    UnsafeCache { dir: String, reason: String },
    #[error("{path}: {reason}")]
    Grants { path: String, reason: String },
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    /// The host, not the file, failed (it could not reserve memory for an
    /// instance): not remembered against the file, tried again on next use.
    #[error("{path} could not be loaded because {reason}")]
    Host { path: String, reason: String },
}

impl PluginError {
    /// True when the host failed, not the plugin: a task that needs it
    /// should be given back, not failed.
    pub fn is_host_failure(&self) -> bool {
        matches!(self, PluginError::Host { .. })
    }

    pub(crate) fn engine(err: impl std::fmt::Display) -> Self {
        PluginError::Engine(format!("{err:#}"))
    }
}

/// A loaded plugin, ready to instantiate.
pub struct Plugin {
    /// Shared with every log line the plugin writes.
    pub name: Arc<str>,
    /// `sha256:` and the hex digest of the `.wasm` file.
    pub digest: String,
    pub args_schema: OwnedNamedType,
    pub result_schema: OwnedNamedType,
    /// What `NAME.toml` granted; nothing without one.
    pub grants: Arc<Grants>,
    pub(crate) pre: TaskPre<TaskState>,
}

impl Plugin {
    /// This code under `grants`.
    fn with_grants(&self, grants: Arc<Grants>) -> Plugin {
        Plugin {
            name: self.name.clone(),
            digest: self.digest.clone(),
            args_schema: self.args_schema.clone(),
            result_schema: self.result_schema.clone(),
            grants,
            pre: self.pre.clone(),
        }
    }

    /// This version's schemas as the store keeps them, by digest.
    pub fn schemas(&self) -> crate::store::PluginSchemas {
        // Encoding an owned schema into a Vec cannot fail.
        let encode = |schema: &OwnedNamedType| postcard::to_stdvec(schema).unwrap_or_default();
        crate::store::PluginSchemas {
            digest: self.digest.clone(),
            args: encode(&self.args_schema),
            result: encode(&self.result_schema),
        }
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// A plugin file and what loading it gave.
#[derive(Debug, Clone)]
pub struct PluginListing {
    pub name: String,
    /// What loading the file as it is now gave.
    pub loaded: Result<Arc<Plugin>, PluginError>,
    /// When that failed: the last version that loaded, which tasks still run.
    pub serving: Option<Arc<Plugin>>,
}

/// Identity of one version of a file. `cp -p`, `rsync -t` and Nix keep the
/// length and modification time of a replacement, so those alone miss it;
/// the inode (a rename) and the change time (any write; nobody can set it)
/// do not. A changed stamp leads to comparing content digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// The files looked at last and what loading them gave.
struct Seen {
    stamp: FileStamp,
    /// `None` when the file could not be read whole.
    sha256: Option<[u8; 32]>,
    /// What the wasm file alone gave, kept so a change to the grants file
    /// alone does not compile it again.
    code: Result<Arc<Plugin>, PluginError>,
    /// The grants file's stamp; `None` when there is none.
    grants_stamp: Option<FileStamp>,
    /// The code with its grants: what tasks run.
    loaded: Result<Arc<Plugin>, PluginError>,
}

/// A wasm file's digest and what loading it gave.
type Loaded = (Option<[u8; 32]>, Result<Arc<Plugin>, PluginError>);

/// What a look at one plugin file found.
struct Refreshed {
    loaded: Result<Arc<Plugin>, PluginError>,
    /// The last version that loaded, which tasks run meanwhile.
    serving: Option<Arc<Plugin>>,
}

/// The plugins folder and what has been loaded from it.
pub struct Plugins {
    dir: PathBuf,
    sandbox: Arc<Sandbox>,
    /// The version of each plugin tasks run: the last that loaded. Read
    /// without waiting for any load.
    serving: Mutex<HashMap<String, Arc<Plugin>>>,
    /// One lock per plugin name, held while its file is looked at and
    /// loaded: a file compiles once however many ask for it together, and a
    /// slow one holds up no other plugin.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Seen>>>>>,
    /// The names of the serving plugins, sorted (see [`Plugins::names`]).
    names: tokio::sync::watch::Sender<Arc<[String]>>,
}

impl Plugins {
    pub fn new(sandbox: Arc<Sandbox>, dir: impl Into<PathBuf>) -> Self {
        Plugins {
            dir: dir.into(),
            sandbox,
            serving: Mutex::default(),
            slots: Mutex::default(),
            names: tokio::sync::watch::Sender::new(Arc::from([])),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Refuse a cache folder another user owns or others may write to (and
    /// create it, writable by this user alone, when missing). Loading checks
    /// this too; a command checks it first to fail before doing anything.
    pub fn check_cache(&self) -> Result<(), PluginError> {
        match &self.sandbox.config.cache_dir {
            Some(dir) => ArtifactCache::open(dir).map(drop),
            None => Ok(()),
        }
    }

    /// The plugin called `name`, loading it on first use. While a newer
    /// file fails to load, the last version that loaded keeps serving; a
    /// failed file is tried again once it changes on disk.
    pub async fn get(&self, name: &str) -> Result<Arc<Plugin>, PluginError> {
        if let Some(plugin) = self.serving_now(name) {
            return Ok(plugin);
        }
        // Boxed: loading is rare, and its future would otherwise make every
        // caller's future (one per running task) several kilobytes larger.
        let refreshed = Box::pin(self.refresh(name)).await;
        match (refreshed.loaded, refreshed.serving) {
            (Ok(plugin), _) | (Err(_), Some(plugin)) => Ok(plugin),
            (Err(err), None) => Err(err),
        }
    }

    /// Load every plugin in the folder (again where a file changed) and
    /// report each, sorted by name. A worker's watcher calls this in the
    /// background, so a plugin dropped in or replaced is picked up without
    /// a restart.
    pub async fn load_all(&self) -> Result<Vec<PluginListing>, PluginError> {
        self.check_cache()?;
        let mut names = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|err| PluginError::Io {
            path: self.dir.display().to_string(),
            reason: err.to_string(),
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == PLUGIN_EXTENSION)
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                names.push(stem.to_owned());
            }
        }
        names.sort();
        self.forget_vanished(&names);
        let mut listings = Vec::with_capacity(names.len());
        for name in names {
            let refreshed = Box::pin(self.refresh(&name)).await;
            let serving = match &refreshed.loaded {
                Ok(_) => None,
                Err(_) => refreshed.serving,
            };
            listings.push(PluginListing {
                name,
                loaded: refreshed.loaded,
                serving,
            });
        }
        Ok(listings)
    }

    /// Stop serving plugins whose file is gone from the folder (`present`
    /// is every file stem there, sorted), so a worker stops claiming their
    /// tasks; a file that comes back is loaded afresh.
    fn forget_vanished(&self, present: &[String]) {
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        let before = serving.len();
        serving.retain(|name, _| present.binary_search(name).is_ok());
        if serving.len() == before {
            return;
        }
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| present.binary_search(name).is_ok());
        tracing::info!("plugin files removed; their tasks are left to other workers");
        self.publish(&serving);
    }

    /// Tell [`Plugins::names`]' watchers the serving plugins, when they
    /// changed.
    fn publish(&self, serving: &HashMap<String, Arc<Plugin>>) {
        let mut names: Vec<String> = serving.keys().cloned().collect();
        names.sort();
        self.names.send_if_modified(|published| {
            let changed = **published != *names;
            if changed {
                *published = names.into();
            }
            changed
        });
    }

    /// The names of the plugins serving now, sorted, and every change to
    /// them: a worker claims only their tasks and tells them in its
    /// heartbeat.
    pub fn names(&self) -> tokio::sync::watch::Receiver<Arc<[String]>> {
        self.names.subscribe()
    }

    /// The names of the plugins serving now, sorted.
    pub fn serving_names(&self) -> Arc<[String]> {
        self.names.borrow().clone()
    }

    /// True while any plugin serves: otherwise a worker has nothing to run
    /// a task with.
    pub fn any_serving(&self) -> bool {
        !self.names.borrow().is_empty()
    }

    /// Resolves once any plugin serves.
    pub async fn until_any_serving(&self) {
        let mut names = self.names.subscribe();
        // The sender lives as long as `self`.
        let _ = names.wait_for(|names| !names.is_empty()).await;
    }

    fn serving_now(&self, name: &str) -> Option<Arc<Plugin>> {
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<Option<Seen>>> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    async fn refresh(&self, name: &str) -> Refreshed {
        if !valid_name(name) {
            return Refreshed {
                loaded: Err(PluginError::BadName(name.to_owned())),
                serving: None,
            };
        }
        let slot = self.slot(name);
        let mut seen = slot.lock().await;
        let loaded = self.look(name, &mut seen).await;
        Refreshed {
            loaded,
            serving: self.serving_now(name),
        }
    }

    /// Load `name` if its files are not the versions `seen` holds.
    async fn look(&self, name: &str, seen: &mut Option<Seen>) -> Result<Arc<Plugin>, PluginError> {
        let path = self.dir.join(format!("{name}.{PLUGIN_EXTENSION}"));
        let shown = path.display().to_string();
        let stamp = match std::fs::metadata(&path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(PluginError::NotFound(name.to_owned()));
            }
            Err(err) => {
                return Err(PluginError::Io {
                    path: shown,
                    reason: err.to_string(),
                });
            }
        };
        let grants_path = self.dir.join(format!("{name}.{GRANTS_EXTENSION}"));
        let grants_stamp = grants_stamp(&grants_path)?;
        if let Some(seen) = seen.as_ref()
            && seen.stamp == stamp
            && seen.grants_stamp == grants_stamp
        {
            return seen.loaded.clone();
        }
        let (sha256, code) = match seen.as_ref() {
            Some(old) if old.stamp == stamp => (old.sha256, old.code.clone()),
            old => match self.code(name, &path, old).await? {
                Some(read) => read,
                // Half-written: looked at again on the next scan.
                None => return Err(PluginError::Changing(shown)),
            },
        };
        let loaded = code.clone().and_then(|code| {
            let grants = read_grants(&grants_path)?;
            Ok(Arc::new(code.with_grants(grants)))
        });
        if let Err(err) = &code
            && err.is_host_failure()
        {
            // The file may be fine: load it again on the next use, and
            // leave the telling to whoever gives the task back.
            return loaded;
        }
        let found = Seen {
            stamp,
            sha256,
            code,
            grants_stamp,
            loaded: loaded.clone(),
        };
        self.record(name, seen, found);
        loaded
    }

    /// Read and load the wasm file unless its content is what `old` held:
    /// its digest (`None` when it could not be read whole) and what loading
    /// gave; `None` while it is being written.
    async fn code(
        &self,
        name: &str,
        path: &Path,
        old: Option<&Seen>,
    ) -> Result<Option<Loaded>, PluginError> {
        let max_size = self.sandbox.config.load.max_file_size;
        let read = {
            let path = path.to_owned();
            tokio::task::spawn_blocking(move || read_plugin(&path, max_size))
                .await
                .map_err(PluginError::engine)?
        };
        let (bytes, sha256) = match read {
            Ok((_, bytes, sha256)) => (bytes, sha256),
            Err(PluginError::Changing(_)) => return Ok(None),
            Err(err) => return Ok(Some((None, Err(err)))),
        };
        if let Some(old) = old
            && old.sha256 == Some(sha256)
        {
            // The same content under a new stamp (touched, copied back).
            return Ok(Some((Some(sha256), old.code.clone())));
        }
        let shown = path.display().to_string();
        let code = load(&self.sandbox, name, &shown, bytes, sha256)
            .await
            .map(Arc::new);
        Ok(Some((Some(sha256), code)))
    }

    /// Remember what loading these file versions gave, and log it: once
    /// per version, however often it is looked at.
    fn record(&self, name: &str, seen: &mut Option<Seen>, found: Seen) {
        match &found.loaded {
            Ok(plugin) => {
                tracing::info!(plugin = name, digest = %plugin.digest, "loaded");
                let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
                serving.insert(name.to_owned(), plugin.clone());
                self.publish(&serving);
            }
            Err(err) => match self.serving_now(name) {
                Some(serving) => tracing::warn!(
                    plugin = name,
                    serving = %serving.digest,
                    "refused: {err}; the last version that loaded keeps serving"
                ),
                None => tracing::warn!(plugin = name, "refused: {err}"),
            },
        }
        *seen = Some(found);
    }
}

/// The stamp of a grants file; `None` when there is none.
fn grants_stamp(path: &Path) -> Result<Option<FileStamp>, PluginError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(FileStamp::of(&meta))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(PluginError::Io {
            path: path.display().to_string(),
            reason: err.to_string(),
        }),
    }
}

/// The grants in `path`; none when there is no such file.
fn read_grants(path: &Path) -> Result<Arc<Grants>, PluginError> {
    let shown = path.display().to_string();
    let refused = |reason: String| PluginError::Grants {
        path: shown.clone(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::default()),
        Err(err) => return Err(refused(err.to_string())),
    };
    let mut text = String::new();
    file.take(MAX_GRANTS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|err| refused(err.to_string()))?;
    if text.len() as u64 > MAX_GRANTS_FILE {
        return Err(refused(format!(
            "larger than {}, which no grants file needs",
            crate::size::show(MAX_GRANTS_FILE)
        )));
    }
    Grants::parse(&text, |var| std::env::var(var).ok())
        .map(Arc::new)
        .map_err(refused)
}

/// The file's stamp, bytes and sha256, read without loading more than
/// `max_size` bytes: a larger file is refused from its length alone.
fn read_plugin(path: &Path, max_size: u64) -> Result<(FileStamp, Vec<u8>, [u8; 32]), PluginError> {
    let shown = path.display().to_string();
    let io = |err: std::io::Error| PluginError::Io {
        path: shown.clone(),
        reason: err.to_string(),
    };
    let too_large = |size: u64| PluginError::TooLarge {
        path: shown.clone(),
        size,
        limit: max_size,
    };
    // Opening a FIFO would block until someone writes to it.
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(PluginError::NotWasm(shown.clone()));
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    let before = FileStamp::of(&file.metadata().map_err(io)?);
    if before.len > max_size {
        return Err(too_large(before.len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(before.len).unwrap_or(0));
    (&mut file)
        .take(max_size + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max_size {
        return Err(too_large(bytes.len() as u64));
    }
    let after = FileStamp::of(&file.metadata().map_err(io)?);
    if after != before || bytes.len() as u64 != before.len {
        return Err(PluginError::Changing(shown.clone()));
    }
    let sha256 = Sha256::digest(&bytes).into();
    Ok((before, bytes, sha256))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

async fn load(
    sandbox: &Arc<Sandbox>,
    name: &str,
    shown: &str,
    bytes: Vec<u8>,
    sha256: [u8; 32],
) -> Result<Plugin, PluginError> {
    let shown = shown.to_owned();
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        return Err(PluginError::NotWasm(shown));
    }
    if bytes[4..8] == CORE_MODULE_LAYER {
        return Err(PluginError::CoreModule(shown));
    }
    if bytes[4..8] != COMPONENT_LAYER {
        return Err(PluginError::NotWasm(shown));
    }
    let digest = format!("sha256:{}", hex::encode(sha256));
    let component = component(sandbox, bytes, sha256, &shown).await?;
    let instance_pre =
        sandbox
            .linker
            .instantiate_pre(&component)
            .map_err(|err| PluginError::WrongWorld {
                path: shown.clone(),
                reason: format!("{err:#}"),
            })?;
    let pre = TaskPre::new(instance_pre).map_err(|err| PluginError::WrongWorld {
        path: shown.clone(),
        reason: format!("{err:#}"),
    })?;
    let name: Arc<str> = Arc::from(name);
    let target = LogTarget {
        task_id: None,
        plugin: name.clone(),
    };
    let never = CancellationToken::new();
    let (returned, _, _) = sandbox
        .call(
            &pre,
            &Arc::default(),
            target,
            Call::Describe,
            DESCRIBE_TIMEOUT,
            &never,
        )
        .await;
    let describe_error = |reason: String| PluginError::Describe {
        path: shown.clone(),
        reason,
    };
    let signature = match returned {
        Ok(Returned::Describe(signature)) => signature,
        Ok(Returned::Run(_)) => unreachable!("asked to describe, not to run"),
        Err(super::Outcome::HostFailure(reason)) => {
            return Err(PluginError::Host {
                path: shown.clone(),
                reason,
            });
        }
        Err(outcome) => return Err(describe_error(format!("{outcome:?}"))),
    };
    let args_schema = crate::schema::parse_schema(&signature.args_schema)
        .map_err(|err| describe_error(format!("args: {err}")))?;
    let result_schema = crate::schema::parse_schema(&signature.result_schema)
        .map_err(|err| describe_error(format!("result: {err}")))?;
    Ok(Plugin {
        name,
        digest,
        args_schema,
        result_schema,
        grants: Arc::default(),
        pre,
    })
}

/// The verified cached artifact for this wasm and engine, or a fresh
/// compile within the limits, cached for next time.
async fn component(
    sandbox: &Arc<Sandbox>,
    wasm: Vec<u8>,
    sha256: [u8; 32],
    shown: &str,
) -> Result<Component, PluginError> {
    let cache = match &sandbox.config.cache_dir {
        Some(dir) => Some(ArtifactCache::open(dir)?),
        None => None,
    };
    if let Some(cache) = cache.clone() {
        let engine = sandbox.engine.clone();
        let cached = tokio::task::spawn_blocking(move || cache.load(&engine, &sha256))
            .await
            .map_err(PluginError::engine)?;
        if let Some(component) = cached {
            return Ok(component);
        }
    }
    let artifact = compile::precompile(sandbox, wasm, shown).await?;
    let engine = sandbox.engine.clone();
    let shown = shown.to_owned();
    tokio::task::spawn_blocking(move || {
        // SAFETY: `Engine::precompile_component` produced these bytes just
        // now, for an engine configured as this one (in this process, or in
        // the compiler process this binary started).
        let component = unsafe { Component::deserialize(&engine, &artifact) }.map_err(|err| {
            PluginError::Load {
                path: shown.clone(),
                reason: format!("{err:#}"),
            }
        })?;
        if let Some(cache) = cache
            && let Err(err) = cache.store(&engine, &sha256, &artifact)
        {
            tracing::warn!("cannot cache the compiled {shown}: {err}");
        }
        Ok(component)
    })
    .await
    .map_err(PluginError::engine)?
}
