//! What stops a process: SIGINT or SIGTERM, and for a supervised worker also its
//! supervisor's end (its stdin closes). The serve/drain sequence that follows is in
//! [`crate::app`]; this module only says when.

/// A worker stops on SIGTERM, or when its supervisor is gone (its stdin closes).
pub(crate) async fn signal_or_orphaned() {
    let orphaned = async {
        use tokio::io::AsyncReadExt;
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        tracing::warn!("the supervisor is gone: shutting down");
    };
    tokio::select! {
        _ = signal() => {}
        _ = orphaned => {}
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
