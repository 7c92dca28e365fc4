//! The on-disk cache of precompiled plugins. Loading an artifact runs its
//! native code, so one is used only when it is verifiably the one compiled
//! from that exact wasm by this engine: each file carries a header binding
//! it to the wasm's sha256, the engine's compatibility hash and the sha256 of
//! its own body, all checked before wasmtime sees a byte. Anything else is
//! ignored (logged once) and overwritten by a fresh compile. The folder must
//! be writable by its owner alone, as ssh insists for `~/.ssh`: a checksum
//! catches corruption, not someone who may write there.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

/// First bytes of every artifact file; the version changes with the layout.
const MAGIC: &[u8; 16] = b"taskbox-cwasm-1\n";
const HASH_LEN: usize = 32;
/// Magic, wasm sha256, engine hash, body sha256.
const HEADER_LEN: usize = MAGIC.len() + 3 * HASH_LEN;
/// Group and other write bits.
const SHARED_WRITE: u32 = 0o022;

/// A cache folder checked to be writable by this user alone.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// Create `dir` (owner-only) if missing and refuse it if another user
    /// owns it or others may write to it.
    pub(crate) fn open(dir: &Path) -> Result<Self, PluginError> {
        let unsafe_dir = |reason: String| PluginError::UnsafeCache {
            dir: dir.display().to_string(),
            reason,
        };
        if let Err(err) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
        {
            return Err(PluginError::Io {
                path: dir.display().to_string(),
                reason: err.to_string(),
            });
        }
        // symlink_metadata: a link would hand the check to its target's
        // folder while another user could repoint it.
        let meta = std::fs::symlink_metadata(dir).map_err(|err| PluginError::Io {
            path: dir.display().to_string(),
            reason: err.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(unsafe_dir("not a folder".to_owned()));
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(unsafe_dir(format!(
                "owned by another user (uid {})",
                meta.uid()
            )));
        }
        if meta.mode() & SHARED_WRITE != 0 {
            return Err(unsafe_dir(format!(
                "a folder others can write to (mode {:o})",
                meta.mode() & 0o7777
            )));
        }
        Ok(ArtifactCache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, wasm_sha256: &[u8; HASH_LEN], engine: &[u8; HASH_LEN]) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.cwasm",
            hex::encode(wasm_sha256),
            hex::encode(&engine[..8])
        ))
    }

    /// The cached component for this wasm and engine, if a verified one is
    /// there. Anything unusable is logged and left to be overwritten.
    pub(crate) fn load(&self, engine: &Engine, wasm_sha256: &[u8; HASH_LEN]) -> Option<Component> {
        let engine_hash = engine_hash(engine);
        let path = self.path(wasm_sha256, &engine_hash);
        let bytes = match read_own_file(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(reason) => {
                tracing::warn!(path = %path.display(), "ignoring cached artifact: {reason}; recompiling");
                return None;
            }
        };
        let body = match verify(&bytes, wasm_sha256, &engine_hash) {
            Ok(body) => body,
            Err(reason) => {
                tracing::warn!(path = %path.display(), "ignoring cached artifact: {reason}; recompiling");
                return None;
            }
        };
        // SAFETY: `body` is byte for byte what `Engine::precompile_component`
        // produced for this wasm under this engine's configuration (its
        // sha256 and both bindings were checked above), in a folder only
        // this user can write to.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), "ignoring cached artifact: {err}; recompiling");
                None
            }
        }
    }

    /// Save `artifact`, compiled from the wasm with this digest by an engine
    /// configured as `engine`. Written beside and renamed, so a reader
    /// never sees half a file.
    pub(crate) fn store(
        &self,
        engine: &Engine,
        wasm_sha256: &[u8; HASH_LEN],
        artifact: &[u8],
    ) -> std::io::Result<()> {
        let engine_hash = engine_hash(engine);
        let path = self.path(wasm_sha256, &engine_hash);
        let partial = path.with_extension(format!("{}.partial", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        file.write_all(MAGIC)?;
        file.write_all(wasm_sha256)?;
        file.write_all(&engine_hash)?;
        file.write_all(&Sha256::digest(artifact))?;
        file.write_all(artifact)?;
        drop(file);
        std::fs::rename(&partial, &path)
    }
}

/// The artifact's body, once its header matches this wasm and engine and
/// its checksum matches its body.
fn verify<'a>(
    bytes: &'a [u8],
    wasm_sha256: &[u8; HASH_LEN],
    engine_hash: &[u8; HASH_LEN],
) -> Result<&'a [u8], &'static str> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a taskbox artifact");
    }
    let (header, body) = bytes.split_at(HEADER_LEN);
    let field = |n: usize| &header[MAGIC.len() + n * HASH_LEN..MAGIC.len() + (n + 1) * HASH_LEN];
    if field(0) != wasm_sha256 {
        return Err("compiled from another wasm file");
    }
    if field(1) != engine_hash {
        return Err("compiled by another engine configuration");
    }
    if field(2) != Sha256::digest(body).as_slice() {
        return Err("its checksum does not match (corrupted)");
    }
    Ok(body)
}

/// The file's bytes; `None` when absent. Refused when someone else owns it
/// or may write to it, whatever the folder says.
fn read_own_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err.to_string()),
    };
    let meta = file.metadata().map_err(|err| err.to_string())?;
    if meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & SHARED_WRITE != 0 {
        return Err("another user owns it or may write to it".to_owned());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|err| err.to_string())?;
    Ok(Some(bytes))
}

/// The engine's compatibility hash as sha256 bytes, stable across
/// processes (unlike `DefaultHasher`, which may change with the toolchain).
pub(crate) fn engine_hash(engine: &Engine) -> [u8; HASH_LEN] {
    /// Feeds `Hash` output into sha256.
    struct Sha256Hasher(Sha256);
    impl std::hash::Hasher for Sha256Hasher {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            unreachable!("only the digest is read")
        }
    }
    let mut hasher = Sha256Hasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hasher.0.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_binds_the_body_to_its_wasm_and_engine() {
        let wasm = [1u8; HASH_LEN];
        let engine = [2u8; HASH_LEN];
        let body = b"native code";
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&wasm);
        file.extend_from_slice(&engine);
        file.extend_from_slice(&Sha256::digest(body));
        file.extend_from_slice(body);
        assert_eq!(verify(&file, &wasm, &engine).unwrap(), body);
        assert!(verify(&file, &[3; HASH_LEN], &engine).is_err());
        assert!(verify(&file, &wasm, &[3; HASH_LEN]).is_err());
        let last = file.len() - 1;
        file[last] ^= 1;
        assert!(verify(&file, &wasm, &engine).is_err());
        assert!(verify(&file[..HEADER_LEN - 1], &wasm, &engine).is_err());
    }
}
