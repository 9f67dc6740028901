//! The compiled-module cache loads only entries it wrote itself: a forged,
//! foreign, corrupt or renamed entry is refused, logged, deleted and the
//! module compiled again; a good one loads without compiling.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::plugin::engine::EngineLimits;
use portcullis::plugin::{ModuleCache, PluginEngine};
use portcullis_tests::{fixtures, init_logs, logged_lines};

/// How long the background write of an entry may take.
const WRITE_BOUND: Duration = Duration::from_secs(20);

fn engine() -> PluginEngine {
    PluginEngine::new(EngineLimits {
        memory_mib: 32,
        timeout_ms: 100,
        max_instances: 4,
    })
    .expect("engine")
}

fn cache(state: &Path) -> Arc<ModuleCache> {
    Arc::new(ModuleCache::open(state, &state.join("modules")).expect("cache opens"))
}

fn module(path: &str) -> Vec<u8> {
    std::fs::read(path).expect("fixture module")
}

/// Compiles `bytes` through `cache` and waits until its entry is on disk;
/// returns the entry's path.
fn compile_and_store(engine: &PluginEngine, cache: &Arc<ModuleCache>, bytes: &[u8]) -> PathBuf {
    let compiled = engine.compile("m", bytes, Some(cache)).expect("compiles");
    let path = cache.entry_path(&compiled.hash, engine.compatibility_hash());
    let deadline = Instant::now() + WRITE_BOUND;
    while !path.is_file() {
        assert!(Instant::now() < deadline, "the entry was never written");
        std::thread::sleep(Duration::from_millis(10));
    }
    path
}

/// Whether compiling `bytes` now loads it from `cache`.
fn loads_from_cache(engine: &PluginEngine, cache: &Arc<ModuleCache>, bytes: &[u8]) -> bool {
    engine
        .compile("m", bytes, Some(cache))
        .expect("compiles either way")
        .from_cache
}

fn refusals(path: &Path) -> usize {
    logged_lines(&[
        "refusing a compiled-module cache entry",
        &path.display().to_string(),
    ])
    .len()
}

/// Makes a cache of its own (so that no background write of an earlier
/// compile can land after the tampering), writes the entry of `bytes`,
/// changes it with `tamper`, and asserts that the next compile refuses it
/// (logged once), compiles, and writes a good entry again.
fn assert_refused_after(what: &str, bytes: &[u8], tamper: impl FnOnce(&mut Vec<u8>)) {
    let engine = engine();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache(dir.path());
    let entry = compile_and_store(&engine, &cache, bytes);
    assert!(
        loads_from_cache(&engine, &cache, bytes),
        "{what}: the good entry loads"
    );
    let mut entry_bytes = std::fs::read(&entry).expect("entry");
    tamper(&mut entry_bytes);
    std::fs::write(&entry, &entry_bytes).expect("write");
    assert!(!loads_from_cache(&engine, &cache, bytes), "{what}: refused");
    assert_eq!(refusals(&entry), 1, "{what}: logged once");
    // Deleted, compiled, and written again: a good entry loads.
    let deadline = Instant::now() + WRITE_BOUND;
    while !loads_from_cache(&engine, &cache, bytes) {
        assert!(Instant::now() < deadline, "{what}: never rewritten");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_tampered_entry_is_refused_and_the_module_compiled_again() {
    init_logs();
    let stamp = module(fixtures::STAMP_V1);
    assert_refused_after("corrupt", &stamp, |bytes| {
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
    });
    assert_refused_after("truncated", &stamp, |bytes| {
        bytes.truncate(bytes.len() - 100);
    });
    assert_refused_after("shorter than the tag", &stamp, |bytes| bytes.truncate(5));
    // Forged: the code with a tag made without the key (what someone who
    // can write the directory but not read the key can make).
    assert_refused_after("forged", &stamp, |bytes| {
        bytes[..32].copy_from_slice(&[0u8; 32]);
    });
}

#[test]
fn an_entry_from_another_installation_or_module_is_refused() {
    init_logs();
    let engine = engine();
    let stamp = module(fixtures::STAMP_V1);
    let hash = portcullis::plugin::engine::content_hash(&stamp);

    // Foreign: a valid entry of another installation (another key).
    let (ours, theirs) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (our_cache, their_cache) = (cache(ours.path()), cache(theirs.path()));
    let their_entry = compile_and_store(&engine, &their_cache, &stamp);
    let our_entry = our_cache.entry_path(&hash, engine.compatibility_hash());
    std::fs::copy(&their_entry, &our_entry).expect("copy");
    assert!(
        !loads_from_cache(&engine, &our_cache, &stamp),
        "foreign: refused"
    );
    assert_eq!(refusals(&our_entry), 1);

    // Renamed: this installation's own valid entry of another module, put
    // under this one's name (in a cache of its own, so that no background
    // write lands in between).
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = cache(dir.path());
    let other = module(fixtures::MISBEHAVE);
    let other_entry = compile_and_store(&engine, &cache, &other);
    let entry = cache.entry_path(&hash, engine.compatibility_hash());
    std::fs::copy(&other_entry, &entry).expect("copy");
    assert!(
        !loads_from_cache(&engine, &cache, &stamp),
        "another module's entry: refused"
    );
    assert_eq!(refusals(&entry), 1);
    // The other module's own entry is untouched and still loads.
    assert!(loads_from_cache(&engine, &cache, &other));
}
