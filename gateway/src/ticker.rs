//! Periodic `on-tick` calls: every `plugins.tick_interval_ms`, each plugin
//! that reported the `tick` hook is called once per route it is configured
//! on, on an instance of that route's pool, between requests. What plugins
//! need to do without traffic (resolve an incident that cleared) happens
//! here.
//!
//! Each tick runs on its own task, under the plugin's CPU deadline, and
//! rounds do not wait for them: a tick waiting on the network (jwt_auth
//! refreshing its keys from a slow identity provider) holds back no other
//! plugin's. A pool whose previous tick is still running skips the round
//! rather than piling ticks up. A tick that fails is logged and the
//! instance is thrown away, like a request's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::plugin::Hooks;
use crate::registry::Registry;

/// Ticks until `shutdown` turns true.
pub async fn run(registry: Arc<Registry>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(registry.current().config.plugins.tick_interval_ms);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick of an interval is immediate; the first round waits.
    interval.tick().await;
    let mut running = HashMap::new();
    loop {
        tokio::select! {
            _ = interval.tick() => round(&registry, &mut running),
            _ = shutdown.changed() => break,
        }
    }
}

/// One round: every ticking plugin of every route of the current
/// generation whose previous tick has ended. `running` holds the ticks in
/// flight, by pool.
fn round(registry: &Registry, running: &mut HashMap<usize, JoinHandle<()>>) {
    running.retain(|_, tick| !tick.is_finished());
    let generation = registry.current();
    for route in &generation.routes {
        for link in route.chain.iter().filter(|l| l.hooks.contains(Hooks::TICK)) {
            let key = Arc::as_ptr(&link.pool) as usize;
            if running.contains_key(&key) {
                continue;
            }
            let (pool, plugin, route) =
                (link.pool.clone(), link.plugin.clone(), route.name.clone());
            let tick = tokio::spawn(async move {
                if let Err(e) = pool.on_tick(&route).await {
                    tracing::warn!(
                        target: "portcullis::plugin",
                        plugin = %plugin,
                        route = %route,
                        "on-tick failed: {e}"
                    );
                }
            });
            running.insert(key, tick);
        }
    }
}
