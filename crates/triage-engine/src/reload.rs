//! Hot reload: poll the policy file and swap in a new policy when it changes.
//!
//! Polling the modification time and size is enough here: `triage train` replaces the file by
//! rename, so a changed stamp always means a complete new file. A file that fails to load (bad
//! JSON, a half-copied file from another tool, a policy for another encoder) is logged and skipped
//! until it changes again; the old policy keeps serving meanwhile.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::engine::RoutingEngine;

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Watches `path` every `interval` until the returned task is aborted.
pub(crate) fn watch_policy(
    engine: RoutingEngine,
    path: PathBuf,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = stamp(&path);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = stamp(&path);
            if now == seen || now.is_none() {
                continue;
            }
            seen = now;
            let engine = engine.clone();
            let file = path.clone();
            let loaded = tokio::task::spawn_blocking(move || engine.reload_policy(&file)).await;
            match loaded {
                Ok(Ok(version)) => {
                    tracing::info!(path = %path.display(), %version, "policy reloaded")
                }
                Ok(Err(error)) => tracing::error!(
                    path = %path.display(),
                    %error,
                    "new policy file rejected; the previous policy keeps serving"
                ),
                Err(error) => tracing::error!(%error, "policy reload task failed"),
            }
        }
    })
}
