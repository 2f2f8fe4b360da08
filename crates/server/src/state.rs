//! What every handler shares: the engine, the ingest service, the admin token, the HTTP and SSE
//! counters, and the shutdown signal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use livebattle_engine::Engine;
use livebattle_ingest::Ingest;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics::HttpMetrics;
use crate::sse::{Lanes, SharedSnapshot, StreamCount};

/// The shared server state. Cheap to clone; every clone is the same server.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    ingest: Ingest,
    admin_token: Option<String>,
    sse_keep_alive: Duration,
    http: HttpMetrics,
    sse_streams: Arc<StreamCount>,
    sse_lanes: Lanes,
    sse_shared_snapshot: SharedSnapshot,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
}

impl AppState {
    /// The state for `engine`, with the ingest service built from `config.ingest`.
    pub fn new(
        engine: Engine,
        config: &Config,
    ) -> Result<AppState, livebattle_ingest::ConfigError> {
        let ingest = Ingest::new(engine.clone(), config.ingest.clone())?;
        Ok(AppState {
            inner: Arc::new(Inner {
                engine,
                ingest,
                admin_token: config.admin_token.clone(),
                sse_keep_alive: config.sse_keep_alive,
                http: HttpMetrics::default(),
                sse_streams: Arc::default(),
                sse_lanes: Lanes::default(),
                sse_shared_snapshot: SharedSnapshot::default(),
                shutting_down: AtomicBool::new(false),
                shutdown: watch::Sender::new(false),
            }),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The Tencent webhook service.
    pub fn ingest(&self) -> &Ingest {
        &self.inner.ingest
    }

    /// The admin bearer token, when the admin routes are enabled.
    pub fn admin_token(&self) -> Option<&str> {
        self.inner.admin_token.as_deref()
    }

    /// SSE keep-alive interval.
    pub fn sse_keep_alive(&self) -> Duration {
        self.inner.sse_keep_alive
    }

    /// HTTP request counters.
    pub fn http_metrics(&self) -> &HttpMetrics {
        &self.inner.http
    }

    /// The open SSE streams.
    pub fn sse_streams(&self) -> Arc<StreamCount> {
        self.inner.sse_streams.clone()
    }

    /// The lanes of the event streams the listener serves directly.
    pub fn sse_lanes(&self) -> &Lanes {
        &self.inner.sse_lanes
    }

    /// The initial snapshot of every battle that streams starting together share.
    pub fn sse_shared_snapshot(&self) -> &SharedSnapshot {
        &self.inner.sse_shared_snapshot
    }

    /// Starts shutting down: `/readyz` turns 503 and every SSE stream ends, so the server's
    /// graceful shutdown only waits for ordinary requests.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.shutdown.send_replace(true);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Resolves once shutdown has begun.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.shutdown.subscribe();
        async move {
            // An error means the sender is gone: the server is gone too.
            let _ = rx.wait_for(|down| *down).await;
        }
    }
}
