//! The compiled-module cache: machine code that the gateway loads without
//! compiling, so every entry is authenticated before it is loaded.
//!
//! A compiled module is native code outside the sandbox. Whoever could
//! write an entry the gateway loads could run anything in the gateway's
//! process, so the cache does not trust its directory:
//!
//! - It lives in the gateway's state directory (see `state_directory` in
//!   docs/config.md), not beside the modules: dropping a `.wasm` into the
//!   plugin directory does not give a way to drop a compiled one.
//! - Every entry carries an HMAC-SHA256 over what it is (the format, the
//!   engine's compatibility hash, the module's SHA-256) and its bytes,
//!   under a key made on first use and kept in the state directory, readable
//!   only by the gateway's user (mode 0600). An entry whose tag does not
//!   verify (forged, written under another installation's key, corrupt,
//!   truncated, or renamed to another module's name) is refused with a log
//!   line, deleted, and the module is compiled again.
//! - The bytes that verified are the bytes deserialized (from memory, not
//!   read again from the file), so the entry cannot change in between.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use wasmtime::Engine;
use wasmtime::component::Component;

/// What the tag covers before the entry's bytes, so that a tag made for one
/// purpose, engine or module never verifies for another.
const DOMAIN: &[u8] = b"portcullis compiled-module cache v1\0";

/// Length of the key, and of the tag at the start of every entry.
const TAG_LEN: usize = 32;

/// The file name of the key in the state directory.
const KEY_FILE: &str = "module-cache.key";

/// Why the cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A directory or the key file could not be made or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The key file is not what the gateway writes.
    #[error("{path}: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The on-disk cache of compiled modules, with its authentication key.
pub struct ModuleCache {
    /// Where entries live.
    dir: PathBuf,
    /// The installation's key.
    key: hmac::Key,
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ModuleCache {
    /// Opens the cache in `dir`, with the key of the state directory
    /// `state_dir` (made, with the directories, on first use: mode 0700 for
    /// directories the gateway makes, 0600 for the key). A key file that
    /// others can read or write is refused: whoever reads it can forge
    /// entries.
    pub fn open(state_dir: &Path, dir: &Path) -> Result<Self, CacheError> {
        make_private_dir(state_dir)?;
        make_private_dir(dir)?;
        let key = load_or_make_key(&state_dir.join(KEY_FILE))?;
        Ok(Self {
            dir: dir.to_owned(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// The directory of the entries.
    pub fn directory(&self) -> &Path {
        &self.dir
    }

    /// The file of the entry for the module with SHA-256 `hash` compiled by
    /// an engine with compatibility hash `compat`.
    pub fn entry_path(&self, hash: &str, compat: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{compat}.cwasm"))
    }

    /// The key of the entry for `hash` and `compat`: the installation's
    /// key applied (HMAC as a PRF) to what the entry is, so that a tag made
    /// for one engine or module never verifies for another.
    fn entry_key(&self, hash: &str, compat: &str) -> hmac::Key {
        let mut context = hmac::Context::with_key(&self.key);
        for part in [DOMAIN, compat.as_bytes(), b"\0", hash.as_bytes(), b"\0"] {
            context.update(part);
        }
        hmac::Key::new(hmac::HMAC_SHA256, context.sign().as_ref())
    }

    /// The tag of an entry's `bytes` for `hash` and `compat`.
    fn tag(&self, hash: &str, compat: &str, bytes: &[u8]) -> hmac::Tag {
        hmac::sign(&self.entry_key(hash, compat), bytes)
    }

    /// The compiled module for `hash`, if the cache holds an entry for it
    /// whose tag verifies. A missing entry is `None`; a bad one is logged,
    /// deleted and `None` too, so the caller compiles again.
    pub fn load(&self, engine: &Engine, hash: &str, compat: &str) -> Option<Component> {
        let path = self.entry_path(hash, compat);
        let entry = match fs::read(&path) {
            Ok(entry) => entry,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read compiled-module cache entry; compiling");
                return None;
            }
        };
        let key = self.entry_key(hash, compat);
        let verified = entry
            .split_at_checked(TAG_LEN)
            // Compares in constant time.
            .filter(|(tag, bytes)| hmac::verify(&key, bytes, tag).is_ok());
        let Some((_, bytes)) = verified else {
            tracing::warn!(
                path = %path.display(),
                "refusing a compiled-module cache entry whose tag does not verify (forged, from another installation, or corrupt); deleting it and compiling"
            );
            let _ = fs::remove_file(&path);
            return None;
        };
        // SAFETY: `deserialize` loads native code. These bytes are the ones
        // whose HMAC-SHA256 verified just above under this installation's
        // key, which only the gateway's user can read: they are what
        // `store` below wrote from `Component::serialize` of this module,
        // by an engine of this compatibility hash. They are deserialized
        // from memory, so the file cannot change between the check and the
        // load; wasmtime also checks the header against the engine.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, bytes) };
        match loaded {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable compiled-module cache entry; deleting it and compiling");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes the entry for `component`, the module with SHA-256 `hash`
    /// compiled by an engine with compatibility hash `compat`: its tag then
    /// its bytes, to a temporary name then renamed into place. Failures are
    /// logged; the cache is an optimisation.
    pub fn store(&self, hash: &str, compat: &str, component: &Component) {
        let path = self.entry_path(hash, compat);
        let result = (|| -> anyhow::Result<()> {
            let bytes = component.serialize()?;
            let tag = self.tag(hash, compat, &bytes);
            let tmp = self.dir.join(format!(
                ".{hash}-{compat}.{}.{:?}.tmp",
                std::process::id(),
                std::thread::current().id()
            ));
            let mut file = private_file(&tmp)?;
            file.write_all(tag.as_ref())?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, &path)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not write compiled-module cache entry");
        }
    }
}

/// Makes `dir` (and its parents) if it does not exist, the last one
/// readable only by the gateway's user.
fn make_private_dir(dir: &Path) -> Result<(), CacheError> {
    let io = |source| CacheError::Io {
        path: dir.to_owned(),
        source,
    };
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io)
}

/// Creates `path` for writing, readable only by the gateway's user; fails
/// if it exists.
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// The key in `path`, made from the system's random source if there is
/// none. Two gateways starting at once agree: the key is written to a
/// temporary file and linked into place only if no other is there, and the
/// one in place is what both read.
fn load_or_make_key(path: &Path) -> Result<[u8; TAG_LEN], CacheError> {
    let io = |source| CacheError::Io {
        path: path.to_owned(),
        source,
    };
    if !path.exists() {
        let mut key = [0u8; TAG_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| io(std::io::Error::other("the system random source failed")))?;
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let written = (|| {
            let mut file = private_file(&tmp)?;
            file.write_all(&key)?;
            file.sync_all()
        })();
        written.map_err(io)?;
        // `hard_link` fails if the key exists: someone else made it first.
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(io(e));
            }
        }
        let _ = fs::remove_file(&tmp);
    }
    check_private(path)?;
    let bytes = fs::read(path).map_err(io)?;
    <[u8; TAG_LEN]>::try_from(bytes.as_slice()).map_err(|_| CacheError::BadKey {
        path: path.to_owned(),
        reason: format!(
            "the key must be {TAG_LEN} bytes, found {}; delete it to make a new one",
            bytes.len()
        ),
    })
}

/// Refuses a key file that users other than its owner can read or write.
fn check_private(path: &Path) -> Result<(), CacheError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|source| CacheError::Io {
                path: path.to_owned(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(CacheError::BadKey {
                path: path.to_owned(),
                reason: format!(
                    "the key is readable or writable by others (mode {:o}); `chmod 600` it, or delete it to make a new one",
                    mode & 0o777
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let first = ModuleCache::open(&state, &state.join("modules")).expect("opens");
        let key = fs::read(state.join(KEY_FILE)).expect("key");
        assert_eq!(key.len(), TAG_LEN);
        let again = ModuleCache::open(&state, &state.join("modules")).expect("opens again");
        assert_eq!(fs::read(state.join(KEY_FILE)).expect("key"), key);
        assert_eq!(
            first.tag("h", "c", b"x").as_ref(),
            again.tag("h", "c", b"x").as_ref(),
            "the same key"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
            assert_eq!(mode(&state), 0o700);
        }
    }

    #[test]
    fn tags_bind_the_engine_the_module_and_the_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ModuleCache::open(dir.path(), &dir.path().join("m")).expect("opens");
        let tag = |h: &str, c: &str, b: &[u8]| cache.tag(h, c, b).as_ref().to_vec();
        let base = tag("aa", "e1", b"code");
        assert_ne!(base, tag("ab", "e1", b"code"));
        assert_ne!(base, tag("aa", "e2", b"code"));
        assert_ne!(base, tag("aa", "e1", b"codf"));
        assert_ne!(tag("a", "a\0b", b""), tag("a\0a", "b", b""));
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other =
            ModuleCache::open(other_dir.path(), &other_dir.path().join("m")).expect("opens");
        assert_ne!(base, other.tag("aa", "e1", b"code").as_ref().to_vec());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        ModuleCache::open(dir.path(), &dir.path().join("m")).expect("opens");
        let key = dir.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = ModuleCache::open(dir.path(), &dir.path().join("m")).expect_err("refused");
        assert!(
            err.to_string().contains("readable or writable by others"),
            "{err}"
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&key, b"short").expect("write");
        let err = ModuleCache::open(dir.path(), &dir.path().join("m")).expect_err("refused");
        assert!(err.to_string().contains("must be 32 bytes"), "{err}");
    }
}
