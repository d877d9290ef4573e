//! Process-wide plumbing every command shares: shutdown signals and the TLS crypto provider.

use anyhow::Context;

/// Resolves on SIGINT or SIGTERM; calls `on_usr1` at each SIGUSR1.
pub async fn wait_for_shutdown(on_usr1: impl Fn()) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot watch SIGUSR1")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = usr1.recv() => on_usr1(),
        }
    }
}

/// rustls needs one process-wide crypto provider; ring is the one this build carries.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
