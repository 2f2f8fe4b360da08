//! Serves the connections the listener hands over ([`crate::listener`]) with hyper's HTTP/1 and
//! the router: what `axum::serve` does, plus a header read timeout, which `axum::serve` cannot
//! set (it gives hyper no timer).
//!
//! * Every request head must arrive within the timeout, counted from when the connection starts
//!   waiting for it: a connection that dribbles a head, or stays idle between requests that long,
//!   is closed. (The listener gives a new connection's first head the same time.) Without it, a
//!   client could hold a connection and its file descriptor for ever by sending nothing.
//! * Shutdown is graceful: accepting stops, idle connections close, requests in flight finish
//!   (event streams end on the server's shutdown signal), then [`serve`] returns.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;

use crate::listener::Sniffing;

/// Serves `listener`'s connections with `router` until `shutdown` resolves, then until every
/// connection is closed.
pub(crate) async fn serve(
    mut listener: Sniffing,
    router: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let io = tokio::select! {
            () = shutdown.as_mut() => break,
            accepted = listener.accept() => match accepted {
                Some(io) => io,
                None => break,
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
