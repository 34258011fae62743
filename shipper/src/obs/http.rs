//! The HTTP server: /metrics (Prometheus text) and /healthz.

use tokio_util::sync::CancellationToken;

use super::health;
use super::metrics::render;

/// 200 `ok`, or 503 with one `degraded: ...` line per reason (`health::report`).
async fn healthz() -> (axum::http::StatusCode, String) {
    match health::report() {
        Some(body) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, body),
        None => (axum::http::StatusCode::OK, "ok\n".to_string()),
    }
}

async fn scrape() -> String {
    health::export();
    render()
}

/// Binds the /metrics address; None when it is "off".
pub(crate) async fn bind(addr: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if addr == "off" || addr.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on --metrics-addr {addr}: {e} (use another address or \"off\")"
        )
    })?;
    tracing::info!(addr = %addr, "metrics listening");
    Ok(Some(listener))
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .route("/healthz", axum::routing::get(healthz));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
