//! Periodic `on-tick` calls: every `plugins.tick_interval_ms`, each plugin
//! that reported the `tick` hook is called once per route it is configured
//! on, on an instance of that route's pool, between requests. What plugins
//! need to do without traffic (resolve an incident that cleared) happens
//! here.
//!
//! The ticks of one round run side by side, each on its own task under the
//! plugin's CPU deadline, so that a tick waiting on the network (jwt_auth
//! refreshing its keys from a slow identity provider) holds back no other
//! plugin's; a tick that fails is logged and the instance is thrown away,
//! like a request's. A round ends when its last tick does: when that takes
//! longer than the interval, the next round starts late rather than piling
//! up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
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
    loop {
        tokio::select! {
            _ = interval.tick() => round(&registry).await,
            _ = shutdown.changed() => break,
        }
    }
}

/// One round: every ticking plugin of every route of the current generation.
async fn round(registry: &Registry) {
    let generation = registry.current();
    let mut ticks = tokio::task::JoinSet::new();
    for route in &generation.routes {
        for link in route.chain.iter().filter(|l| l.hooks.contains(Hooks::TICK)) {
            let (pool, plugin, route) =
                (link.pool.clone(), link.plugin.clone(), route.name.clone());
            ticks.spawn(async move {
                if let Err(e) = pool.on_tick(&route).await {
                    tracing::warn!(
                        target: "portcullis::plugin",
                        plugin = %plugin,
                        route = %route,
                        "on-tick failed: {e}"
                    );
                }
            });
        }
    }
    while ticks.join_next().await.is_some() {}
}
