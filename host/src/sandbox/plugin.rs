//! Plugins: a folder of `NAME.wasm` components. Each is compiled once, its
//! precompiled artifact cached on disk by content hash and engine
//! compatibility, pre-linked into an `InstancePre`, and asked once for its
//! args/result schema. Files that are not taskbox components are refused
//! with a reason the `plugins` command shows; the rest keep working.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use postcard_schema::schema::owned::OwnedNamedType;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Component;

use super::bindings::TaskPre;
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
    #[error("{path} is not a taskbox task (world taskbox:plugin/task): {reason}")]
    WrongWorld { path: String, reason: String },
    #[error("{path} did not describe its args: {reason}")]
    Describe { path: String, reason: String },
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
}

impl PluginError {
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
    pub(crate) pre: TaskPre<TaskState>,
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
    pub loaded: Result<Arc<Plugin>, PluginError>,
}

/// Identity of a file on disk, so a changed file is loaded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Clone)]
struct Entry {
    stamp: FileStamp,
    loaded: Result<Arc<Plugin>, PluginError>,
}

/// The plugins folder and what has been loaded from it.
pub struct Plugins {
    dir: PathBuf,
    sandbox: Arc<Sandbox>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Serialises loading so one file is compiled once even when many
    /// consumers ask for it together.
    loading: tokio::sync::Mutex<()>,
}

impl Plugins {
    pub fn new(sandbox: Arc<Sandbox>, dir: impl Into<PathBuf>) -> Self {
        Plugins {
            dir: dir.into(),
            sandbox,
            entries: Mutex::default(),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// The plugin called `name`, loading it on first use. A file that failed
    /// to load is tried again once it changes on disk.
    pub async fn get(&self, name: &str) -> Result<Arc<Plugin>, PluginError> {
        if let Some(Ok(plugin)) = self.cached(name).map(|entry| entry.loaded) {
            return Ok(plugin);
        }
        let _guard = self.loading.lock().await;
        // Boxed: loading is rare, and its future would otherwise make every
        // caller's future (one per running task) several kilobytes larger.
        Box::pin(self.refresh(name)).await
    }

    /// Load every plugin in the folder (again where a file changed) and
    /// report each, sorted by name. A worker calls this periodically, so a
    /// plugin dropped in or replaced is picked up without a restart.
    pub async fn load_all(&self) -> Result<Vec<PluginListing>, PluginError> {
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
        let _guard = self.loading.lock().await;
        let mut listings = Vec::with_capacity(names.len());
        for name in names {
            let loaded = self.refresh(&name).await;
            listings.push(PluginListing { name, loaded });
        }
        Ok(listings)
    }

    fn cached(&self, name: &str) -> Option<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    async fn refresh(&self, name: &str) -> Result<Arc<Plugin>, PluginError> {
        if !valid_name(name) {
            return Err(PluginError::BadName(name.to_owned()));
        }
        let path = self.dir.join(format!("{name}.{PLUGIN_EXTENSION}"));
        let stamp = match std::fs::metadata(&path) {
            Ok(meta) => FileStamp {
                modified: meta.modified().ok(),
                len: meta.len(),
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(PluginError::NotFound(name.to_owned()));
            }
            Err(err) => {
                return Err(PluginError::Io {
                    path: path.display().to_string(),
                    reason: err.to_string(),
                });
            }
        };
        if let Some(entry) = self.cached(name)
            && entry.stamp == stamp
        {
            return entry.loaded;
        }
        let loaded = load(&self.sandbox, name, &path).await.map(Arc::new);
        // Logged once per version of the file, however often it is looked at.
        match &loaded {
            Ok(plugin) => tracing::info!(plugin = name, digest = %plugin.digest, "loaded"),
            Err(err) => tracing::warn!(plugin = name, "refused: {err}"),
        }
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                name.to_owned(),
                Entry {
                    stamp,
                    loaded: loaded.clone(),
                },
            );
        loaded
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

async fn load(sandbox: &Arc<Sandbox>, name: &str, path: &Path) -> Result<Plugin, PluginError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|err| PluginError::Io {
        path: shown.clone(),
        reason: err.to_string(),
    })?;
    if bytes.len() < 8 || &bytes[..4] != WASM_MAGIC {
        return Err(PluginError::NotWasm(shown));
    }
    if bytes[4..8] == CORE_MODULE_LAYER {
        return Err(PluginError::CoreModule(shown));
    }
    if bytes[4..8] != COMPONENT_LAYER {
        return Err(PluginError::NotWasm(shown));
    }
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let component = {
        let engine = sandbox.engine.clone();
        let cache_dir = sandbox.config.cache_dir.clone();
        let digest = digest.clone();
        let shown = shown.clone();
        tokio::task::spawn_blocking(move || {
            compile(&engine, cache_dir.as_deref(), &digest, &bytes, &shown)
        })
        .await
        .map_err(PluginError::engine)??
    };
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
        .call(&pre, target, Call::Describe, DESCRIBE_TIMEOUT, &never)
        .await;
    let describe_error = |reason: String| PluginError::Describe {
        path: shown.clone(),
        reason,
    };
    let signature = match returned {
        Ok(Returned::Describe(signature)) => signature,
        Ok(Returned::Run(_)) => unreachable!("asked to describe, not to run"),
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
        pre,
    })
}

/// Compile, or load the precompiled artifact for this exact file and engine.
fn compile(
    engine: &wasmtime::Engine,
    cache_dir: Option<&Path>,
    digest: &str,
    bytes: &[u8],
    shown: &str,
) -> Result<Component, PluginError> {
    let cached = cache_dir.map(|dir| {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let file_hash = digest.trim_start_matches("sha256:");
        dir.join(format!("{file_hash}-{:016x}.cwasm", hasher.finish()))
    });
    if let Some(path) = &cached
        && path.exists()
    {
        // SAFETY: the cache holds only artifacts this process family wrote
        // with `Component::serialize`; wasmtime checks the engine
        // compatibility header again and we recompile on any failure.
        match unsafe { Component::deserialize_file(engine, path) } {
            Ok(component) => return Ok(component),
            Err(err) => tracing::warn!(path = %path.display(), "ignoring cached artifact: {err}"),
        }
    }
    let component = Component::new(engine, bytes).map_err(|err| PluginError::Compile {
        path: shown.to_owned(),
        reason: format!("{err:#}"),
    })?;
    if let Some(path) = &cached
        && let Err(err) = store_artifact(&component, path)
    {
        tracing::warn!(path = %path.display(), "cannot cache the compiled plugin: {err}");
    }
    Ok(component)
}

fn store_artifact(component: &Component, path: &Path) -> std::io::Result<()> {
    let artifact = component.serialize().map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write beside and rename, so a reader never sees half a file.
    let partial = path.with_extension(format!("{}.partial", std::process::id()));
    std::fs::write(&partial, artifact)?;
    std::fs::rename(&partial, path)
}
