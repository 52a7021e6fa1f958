//! The on-disk cache of compiled components, keyed by content digest and engine fingerprint.
//!
//! Compiling a component takes from tens of milliseconds to seconds; loading a cached
//! artifact takes about a millisecond. But a compiled artifact is native code that wasmtime
//! maps and runs without re-validating it, so an entry is only loaded after it proved it is
//! exactly what this host wrote: each file carries an HMAC-SHA256 over the engine
//! fingerprint, the digest and the artifact, keyed by a random secret kept next to the cache
//! (`cache.key`, mode 0600). A truncated, corrupted or tampered file fails the check, is
//! deleted, and the component is compiled again; it is never loaded blindly.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::component::Digest;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 8] = b"SBCWASM1";
const MAC_LEN: usize = 32;
const KEY_FILE: &str = "cache.key";

/// What happened when the cache was asked for a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    /// A verified artifact was loaded.
    Hit,
    /// No entry.
    Miss,
    /// An entry failed verification or loading; it was removed.
    Rejected,
}

/// Compiled artifacts on disk, authenticated with a host-local key.
pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
    fingerprint: String,
}

impl ArtifactCache {
    /// Opens (creating if needed, mode 0700) the cache in `dir` for artifacts of `engine`.
    ///
    /// Refuses a directory others can write to, or a key file others can read: whoever can
    /// plant a key and an entry there could make this host run native code of their choice.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        check_private(dir, 0o022, "writable by group or others")?;
        let key_path = dir.join(KEY_FILE);
        let key = load_or_create_key(&key_path)?;
        check_private(&key_path, 0o077, "readable or writable by group or others")?;
        Ok(Self {
            dir: dir.to_owned(),
            key,
            fingerprint: engine_fingerprint(engine),
        })
    }

    /// Path of the entry for `digest`.
    pub fn entry_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.cwasm",
            digest.as_str(),
            &self.fingerprint[..16]
        ))
    }

    fn mac(&self, digest: &Digest, artifact: &[u8]) -> HmacSha256 {
        // A 32-byte key is always a valid HMAC key.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(self.fingerprint.as_bytes());
        mac.update(b"\0");
        mac.update(digest.as_str().as_bytes());
        mac.update(b"\0");
        mac.update(artifact);
        mac
    }

    /// Loads the artifact for `digest` if a verified one exists.
    pub fn load(&self, engine: &Engine, digest: &Digest) -> (CacheLookup, Option<Component>) {
        let path = self.entry_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(_) => return (CacheLookup::Miss, None),
        };
        let verified = bytes.len() > MAGIC.len() + MAC_LEN
            && &bytes[..MAGIC.len()] == MAGIC
            && self
                .mac(digest, &bytes[MAGIC.len() + MAC_LEN..])
                .verify_slice(&bytes[MAGIC.len()..MAGIC.len() + MAC_LEN])
                .is_ok();
        if !verified {
            tracing::warn!(path = %path.display(), "compiled-component cache entry is truncated or tampered with; recompiling");
            let _ = fs::remove_file(&path);
            return (CacheLookup::Rejected, None);
        }
        let artifact = &bytes[MAGIC.len() + MAC_LEN..];
        // SAFETY: `artifact` is byte for byte what this host stored (`Component::serialize`,
        // or its own compile worker's output that it loaded) for this engine fingerprint: the HMAC above, keyed by a secret only this host
        // holds, proves it. wasmtime additionally checks its own version/config header.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => (CacheLookup::Hit, Some(component)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cached component does not load; recompiling");
                let _ = fs::remove_file(&path);
                (CacheLookup::Rejected, None)
            }
        }
    }

    /// Stores the artifact of `component` for `digest` (see [`ArtifactCache::store_artifact`]).
    pub fn store(&self, digest: &Digest, component: &Component) -> std::io::Result<()> {
        let artifact = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.store_artifact(digest, &artifact)
    }

    /// Stores `artifact`, the compiled form of `digest` for this cache's engine (what
    /// `Component::serialize` or a compile worker's `Engine::precompile_component` made and
    /// this host loaded). Written to a temporary file and renamed, so a crash never leaves a
    /// half-written entry under the real name.
    pub fn store_artifact(&self, digest: &Digest, artifact: &[u8]) -> std::io::Result<()> {
        let mac = self.mac(digest, artifact).finalize().into_bytes();
        let path = self.entry_path(digest);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&mac)?;
            file.write_all(artifact)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)
    }
}

/// Fails if `path` has any of the `forbidden` permission bits or belongs to another user.
fn check_private(path: &Path, forbidden: u32, what: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(path)?;
        let ours = fs::metadata("/proc/self").map(|m| m.uid()).ok();
        if meta.mode() & forbidden != 0 || ours.is_some_and(|uid| uid != meta.uid()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{} is {what} or owned by another user; the compile cache must be private \
                     (chmod go-rwx it, or choose another --cache-dir)",
                    path.display()
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, forbidden, what);
    Ok(())
}

fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(bytes) = fs::read(path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let key: [u8; 32] = rand::random();
    let tmp = path.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        hex::encode(rand::random::<[u8; 4]>())
    ));
    {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(&key)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    // If another process raced us, use whichever key won the rename.
    let bytes = fs::read(path)?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| std::io::Error::other("cache key is corrupt"))
}

/// A stable fingerprint of everything that makes compiled code compatible with an engine:
/// the wasmtime version and the engine's compilation settings.
pub fn engine_fingerprint(engine: &Engine) -> String {
    use sha2::Digest as _;
    use std::hash::Hash;

    /// Feeds `Hash` output into SHA-256, so the fingerprint is stable across runs.
    struct ShaHasher(Sha256);
    impl std::hash::Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    hasher.0.update(b"wasmtime-48;sandbus-");
    hasher.0.update(env!("CARGO_PKG_VERSION").as_bytes());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(hasher.0.finalize())
}
