//! Watches the plugin directory, the config file, the files plugin configs
//! are read from (`files = { ... }`) and the listeners' certificates and
//! keys, and reloads on change.
//!
//! A finished write (`close_write`) or a rename into place triggers a reload
//! at once; other changes (a create, a write still in progress, platforms
//! without close events) after a quiet period, so a module is not read half
//! written. Reloads run one at a time on the blocking pool, off the request
//! path. A module whose content equals the loaded one is ignored; a config
//! change (or a touched config file) always builds a new generation, which
//! reuses the pools whose module and config did not change.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Registry, plugin_name, signature_plugin_name};

/// Quiet period after a change that is not known to be complete.
const SETTLE: Duration = Duration::from_millis(150);
/// Events arriving this close together are handled as one.
const COALESCE: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    Plugin(String),
    Config,
}

/// Starts watching; the task ends when `shutdown` turns true.
pub fn spawn(
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let plugin_dir = canonical(&registry.plugin_directory());
    let config_path = canonical(registry.config_path());
    let config_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();

    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut watcher: RecommendedWatcher =
        notify::recommended_watcher(move |res: notify::Result<Event>| match res {
            Ok(event) => {
                let _ = tx.send(event);
            }
            Err(e) => tracing::warn!("file watcher error: {e}"),
        })?;
    watcher.watch(&plugin_dir, RecursiveMode::NonRecursive)?;
    let mut watched = HashSet::from([plugin_dir.clone()]);
    if watched.insert(config_dir.clone()) {
        watcher.watch(&config_dir, RecursiveMode::NonRecursive)?;
    }
    let mut config_files = watch_config_files(&registry, &mut watcher, &mut watched);
    tracing::info!(plugins = %plugin_dir.display(), config = %config_path.display(), "watching for changes");

    Ok(tokio::spawn(async move {
        let mut pending: HashMap<Target, Instant> = HashMap::new();
        loop {
            let next_due = pending.values().min().copied();
            tokio::select! {
                _ = shutdown.changed() => break,
                event = rx.recv() => {
                    let Some(event) = event else { break };
                    for (target, delay) in classify(&event, &plugin_dir, &config_path, &config_files) {
                        let due = Instant::now() + delay;
                        pending
                            .entry(target)
                            .and_modify(|d| {
                                // A completed write brings a pending reload forward;
                                // a write in progress pushes it back.
                                *d = if delay == COALESCE { due.min(*d) } else { due };
                            })
                            .or_insert(due);
                    }
                }
                _ = sleep_until(next_due) => {
                    let now = Instant::now();
                    let due: Vec<Target> = pending.iter().filter(|(_, d)| **d <= now).map(|(t, _)| t.clone()).collect();
                    for target in due {
                        pending.remove(&target);
                        let config_changed = target == Target::Config;
                        let reloading = registry.clone();
                        let job = tokio::task::spawn_blocking(move || match target {
                            Target::Plugin(name) => reloading.reload_plugin(&name),
                            Target::Config => reloading.reload_config(),
                        });
                        if let Err(e) = job.await {
                            tracing::error!("reload task failed: {e}");
                        }
                        if config_changed {
                            config_files = watch_config_files(&registry, &mut watcher, &mut watched);
                        }
                    }
                }
            }
        }
    }))
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Watches the directory of every file the current config reads (plugin
/// values, TLS certificates and keys); returns those files.
fn watch_config_files(
    registry: &Registry,
    watcher: &mut RecommendedWatcher,
    watched: &mut HashSet<PathBuf>,
) -> HashSet<PathBuf> {
    let generation = registry.current();
    let files: HashSet<PathBuf> = generation.config.watched_files().map(canonical).collect();
    for dir in files.iter().filter_map(|f| f.parent()) {
        if watched.insert(dir.to_path_buf())
            && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
        {
            tracing::warn!(dir = %dir.display(), "cannot watch for changes: {e}");
        }
    }
    files
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What an event concerns and how soon to act on it.
fn classify(
    event: &Event,
    plugin_dir: &Path,
    config_path: &Path,
    config_files: &HashSet<PathBuf>,
) -> Vec<(Target, Duration)> {
    let delay = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Remove(_) => COALESCE,
        EventKind::Access(_) => return Vec::new(),
        _ => SETTLE,
    };
    let mut targets = Vec::new();
    for path in &event.paths {
        let target = if path == config_path || config_files.contains(path) {
            Some(Target::Config)
        } else if path.parent() == Some(plugin_dir) {
            // A module, or its signature (a module may wait for it).
            plugin_name(path)
                .or_else(|| signature_plugin_name(path))
                .map(Target::Plugin)
        } else {
            None
        };
        if let Some(target) = target
            && !targets.iter().any(|(t, _)| *t == target)
        {
            targets.push((target, delay));
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RenameMode};

    fn event(kind: EventKind, paths: &[&str]) -> Event {
        Event {
            kind,
            paths: paths.iter().map(PathBuf::from).collect(),
            attrs: Default::default(),
        }
    }

    #[test]
    fn completed_writes_are_immediate_and_partial_ones_settle() {
        let dir = Path::new("/p");
        let cfg = Path::new("/c/portcullis.toml");
        let none = HashSet::new();
        let closed = event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &["/p/key_auth.wasm"],
        );
        assert_eq!(
            classify(&closed, dir, cfg, &none),
            vec![(Target::Plugin("key_auth".into()), COALESCE)]
        );
        let written = event(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &["/p/key_auth.wasm"],
        );
        assert_eq!(
            classify(&written, dir, cfg, &none),
            vec![(Target::Plugin("key_auth".into()), SETTLE)]
        );
        let created = event(EventKind::Create(CreateKind::File), &["/c/portcullis.toml"]);
        assert_eq!(
            classify(&created, dir, cfg, &none),
            vec![(Target::Config, SETTLE)]
        );
    }

    #[test]
    fn files_read_by_the_config_count_as_the_config() {
        let files = HashSet::from([PathBuf::from("/keys/jwks.json")]);
        let e = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            &["/keys/jwks.json", "/keys/other.json"],
        );
        assert_eq!(
            classify(&e, Path::new("/p"), Path::new("/c/portcullis.toml"), &files),
            vec![(Target::Config, COALESCE)]
        );
    }

    #[test]
    fn other_files_are_ignored() {
        let dir = Path::new("/p");
        let cfg = Path::new("/c/portcullis.toml");
        let e = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            &[
                "/p/.key_auth.wasm.tmp",
                "/p/notes.txt",
                "/p/.cache/x.cwasm",
                "/p/Bad.wasm",
            ],
        );
        assert!(classify(&e, dir, cfg, &HashSet::new()).is_empty());
    }

    #[test]
    fn a_signature_concerns_its_module() {
        let dir = Path::new("/p");
        let cfg = Path::new("/c/portcullis.toml");
        let e = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            &[
                "/p/key_auth.wasm.sig",
                "/p/.key_auth.wasm.sig.tmp",
                "/p/x.sig",
            ],
        );
        assert_eq!(
            classify(&e, dir, cfg, &HashSet::new()),
            vec![(Target::Plugin("key_auth".into()), COALESCE)]
        );
    }
}
