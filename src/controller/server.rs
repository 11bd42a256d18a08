//! A small HTTP endpoint for probes and scraping: `/healthz`, `/readyz`, `/metrics`.

use super::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Serves until the process ends. Only GET of the three paths is answered; anything else is 404.
pub async fn serve(address: SocketAddr, ctx: Arc<Context>) -> std::io::Result<()> {
    let listener = TcpListener::bind(address).await?;
    tracing::info!(%address, "serving /healthz, /readyz and /metrics");
    loop {
        let (stream, _) = listener.accept().await?;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &ctx).await {
                warn!(%error, "HTTP request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, ctx: &Context) -> std::io::Result<()> {
    let mut buffer = [0u8; 2048];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "request not received in time")
        })??;
    let request = String::from_utf8_lossy(&buffer[..read]);
    let path = request
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("GET "))
        .and_then(|rest| rest.split(' ').next());
    let (status, content_type, body) = match path {
        Some("/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        Some("/readyz") if ctx.is_ready() => ("200 OK", "text/plain", "ready\n".to_string()),
        Some("/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "watch caches not synced yet\n".to_string(),
        ),
        Some("/metrics") => {
            ctx.metrics.set_clones_in_flight(ctx.clones.in_flight());
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ctx.metrics.encode(),
            )
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
