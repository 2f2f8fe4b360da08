//! # livebattle-server
//!
//! The `livebattle` service: Tencent Live battle webhooks in (`POST /callback`, via
//! [`livebattle_ingest`]); battle state out over a JSON API, Server-Sent Events and Prometheus
//! metrics (docs/http-api.md), on one [`livebattle_engine::Engine`].
//!
//! * [`config`]: flags, `LIVEBATTLE_*` variables and the TOML file, resolved into a [`Config`];
//! * [`api`]: the read API; [`admin`]: the bearer-token admin API; [`sse`]: the event streams;
//! * [`health`], [`metrics`], [`assets`] (the countdown page and `/openapi.json`);
//! * [`app`] builds the router, [`serve`] runs it until a shutdown signal.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use livebattle_ingest::AppConfig;
//! use livebattle_server::{serve, Config};
//!
//! let mut config = Config::default();
//! config.ingest.apps = vec![AppConfig::with_token("1400000001", "callback-token")];
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! println!("listening on {}", listener.local_addr()?);
//! serve(config, listener, livebattle_server::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod assets;
pub mod config;
mod connections;
pub mod error;
pub mod health;
mod listener;
pub mod metrics;
pub mod sse;
mod state;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use livebattle_engine::store::Copied;
use livebattle_engine::{Engine, EngineError, Store, StoreError};
use livebattle_ingest::CALLBACK_PATH;
use livebattle_store_log::LogStore;
use livebattle_store_redb::RedbStore;
use livebattle_store_redis::{RedisOptions, RedisStore};
use tokio::net::TcpListener;

pub use config::{
    Cli, Command, Config, ConfigError, DurableStore, LogFormat, Storage, DEFAULT_DATA_DIR,
};
pub use error::ApiError;
pub use state::AppState;

/// Every route [`app`] serves, as `(method, path template)`; `/openapi.json` documents each.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/callback"),
    ("GET", "/v1/time"),
    ("GET", "/v1/battles"),
    ("GET", "/v1/battles/{battle_id}"),
    ("GET", "/v1/battles/{battle_id}/events"),
    ("POST", "/v1/battles/{battle_id}/responses"),
    ("POST", "/v1/battles/{battle_id}/end"),
    ("POST", "/v1/battles/{battle_id}/scores"),
    ("GET", "/v1/rooms/{room_id}/battle"),
    ("GET", "/v1/rooms/{room_id}/events"),
    ("GET", "/v1/events"),
];

/// The whole HTTP surface on `state`.
///
/// Every routed request is counted and logged by [`metrics::track`], a route layer, except the
/// webhook route: it is the hot path, and axum's route layer costs a boxed service clone and a
/// boxed future per request on top of `from_fn`'s own; its handler counts itself with the same
/// `metrics::observe`.
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/", get(assets::index))
        .route("/openapi.json", get(assets::openapi))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::render))
        .route("/v1/time", get(api::time))
        .route("/v1/battles", get(api::list_battles))
        .route("/v1/battles/{battle_id}", get(api::get_battle))
        .route("/v1/battles/{battle_id}/events", get(sse::battle_events))
        .route("/v1/battles/{battle_id}/responses", post(admin::respond))
        .route("/v1/battles/{battle_id}/end", post(admin::end))
        .route("/v1/battles/{battle_id}/scores", post(admin::scores))
        .route("/v1/rooms/{room_id}/battle", get(api::room_battle))
        .route("/v1/rooms/{room_id}/events", get(sse::room_events))
        .route("/v1/events", get(sse::all_events))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone());
    let callback_route = metrics::RouteKey::of(CALLBACK_PATH);
    let webhook = Router::new()
        .route(
            CALLBACK_PATH,
            post(callback).fallback(callback_method_not_allowed),
        )
        .with_state((state.clone(), callback_route));
    routes
        .route_layer(axum::middleware::from_fn_with_state(state, metrics::track))
        .merge(webhook)
}

/// `POST /callback`: the ingest handler, counted like every routed request.
async fn callback(
    State((state, route)): State<(AppState, metrics::RouteKey)>,
    request: Request,
) -> Response {
    let method = request.method().clone();
    counted(&state, route, method, state.ingest().handle(request)).await
}

/// Any other method on `/callback`: Tencent's 405, counted like every routed request.
async fn callback_method_not_allowed(
    State((state, route)): State<(AppState, metrics::RouteKey)>,
    method: Method,
) -> Response {
    counted(&state, route, method, async {
        state.ingest().refuse_method()
    })
    .await
}

/// Awaits `reply` and counts it as [`metrics::track`] would.
async fn counted(
    state: &AppState,
    route: metrics::RouteKey,
    method: Method,
    reply: impl Future<Output = Response>,
) -> Response {
    let started = Instant::now();
    let response = reply.await;
    metrics::observe(state, route, &method, &response, started);
    response
}

async fn no_route(State(state): State<AppState>, method: Method, uri: Uri) -> ApiError {
    let error = ApiError::no_route(uri.path());
    state
        .http_metrics()
        .record(metrics::UNMATCHED_ROUTE, &method, error.status.as_u16());
    error
}

async fn method_not_allowed(
    State(state): State<AppState>,
    method: Method,
    route: Option<MatchedPath>,
) -> ApiError {
    let error = ApiError::method_not_allowed();
    let route = route
        .as_ref()
        .map_or(metrics::UNMATCHED_ROUTE, MatchedPath::as_str);
    state
        .http_metrics()
        .record(route, &method, error.status.as_u16());
    error
}

/// Why [`serve`] could not run.
#[derive(Debug)]
pub enum ServeError {
    /// The engine did not start.
    Engine(EngineError),
    /// The configuration is invalid.
    Config(livebattle_ingest::ConfigError),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Engine(e) => write!(f, "the engine did not start: {e}"),
            ServeError::Config(e) => write!(f, "invalid configuration: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// How far an engine subscription of every battle may fall behind before it lags: an SSE lane
/// (`sse::direct`) or an `/v1/events` stream. A lane's task waits its turn among every request
/// task: at 60,000 notifications a second, 1,024 (the engine's default) is 17 ms of waiting,
/// which a busy two-core server exceeds, and a lane that lags makes each of its streams start
/// again. 8,192 is 130 ms; the engine's broadcast ring holds that many notifications
/// (≈ 6 MiB) once that many were sent. The same figure is a stream's lag limit
/// ([`Engine::lag_limit`]).
const SUBSCRIPTION_CAPACITY: usize = 8_192;

/// Starts an engine as `config` says: its store (durable in the data dir, or in memory), rules,
/// shards and the replay ring for SSE resumption. With a data dir, this loads every stored
/// battle and re-arms its timer (overdue ones fire at once, marked late).
pub async fn start_engine(config: &Config) -> Result<Engine, EngineError> {
    let mut builder = Engine::builder()
        .rules(config.rules.clone())
        .channel_capacity(SUBSCRIPTION_CAPACITY)
        .replay_capacity(config.replay_capacity);
    if let Some(n) = config.shards {
        builder = builder.shards(n);
    }
    match &config.storage {
        Storage::DataDir { dir, store } => {
            let chosen = durable_store(dir, *store).map_err(EngineError::Store)?;
            builder = builder.store(open_durable(dir, chosen).map_err(EngineError::Store)?);
        }
        Storage::Redis {
            url,
            namespace,
            lease_ms,
        } => {
            let options = RedisOptions {
                namespace: namespace.clone(),
                lease_ms: *lease_ms,
                replay: config.replay_capacity,
                ..RedisOptions::default()
            };
            let store = connect_redis(url, options).await?;
            tracing::info!(%url, %namespace, "shared storage in Redis");
            builder = builder.store(store);
        }
        Storage::InMemory => {
            tracing::warn!("in-memory storage: a restart forgets every battle");
        }
    }
    let started = std::time::Instant::now();
    let engine = builder.start().await?;
    tracing::info!(
        battles = engine.battle_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "engine ready"
    );
    Ok(engine)
}

/// Which store keeps `dir`: the one asked for, else the one whose files it holds (the log
/// store for a new directory). A directory holding the other store's files is refused, so
/// that switching stores never looks like losing every battle.
fn durable_store(dir: &Path, asked: Option<DurableStore>) -> Result<DurableStore, StoreError> {
    let refuse = |holds: &str, use_: &str| {
        Err(StoreError(format!(
            "{} holds {holds}; start with --durable-store {use_} (durable_store = \"{use_}\"), \
             or copy it into a new data dir with `livebattle copy-store`",
            dir.display()
        )))
    };
    match (asked, held_store(dir)?) {
        (Some(DurableStore::Log), Some(DurableStore::Redb)) => refuse(
            &format!(
                "a redb store ({})",
                dir.join(livebattle_store_redb::FILE_NAME).display()
            ),
            "redb",
        ),
        (Some(DurableStore::Redb), Some(DurableStore::Log)) => {
            refuse("a log store (log-*, snapshot-*)", "log")
        }
        (Some(asked), _) => Ok(asked),
        (None, Some(held)) => Ok(held),
        (None, None) => Ok(DurableStore::Log),
    }
}

/// The store whose files `dir` holds, if any (both is refused).
fn held_store(dir: &Path) -> Result<Option<DurableStore>, StoreError> {
    let has_redb = dir.join(livebattle_store_redb::FILE_NAME).exists();
    match (has_redb, LogStore::found_in(dir)) {
        (true, true) => Err(StoreError(format!(
            "{} holds both a redb store ({}) and a log store (log-*, snapshot-*): keep one",
            dir.display(),
            livebattle_store_redb::FILE_NAME
        ))),
        (true, false) => Ok(Some(DurableStore::Redb)),
        (false, true) => Ok(Some(DurableStore::Log)),
        (false, false) => Ok(None),
    }
}

/// Opens (creating if needed) the durable store `kind` in `dir`.
fn open_durable(dir: &Path, kind: DurableStore) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match kind {
        DurableStore::Log => {
            let store = LogStore::open(dir)?;
            tracing::info!(dir = %store.dir().display(), "durable storage: log store");
            Arc::new(store)
        }
        DurableStore::Redb => {
            let store = RedbStore::open(dir)?;
            tracing::info!(path = %store.path().display(), "durable storage: redb");
            Arc::new(store)
        }
    })
}

/// `livebattle copy-store`: copies the store of the data dir `from` (its server stopped: the
/// store's lock is taken) into the new data dir `to`, kept by `store`, and checks that the
/// copy reads back the same. Returns the source's store and what was copied. `from` is left
/// as it was; `to` must not hold a store yet.
///
/// The way from one store to the other (redb to the faster log store, say): stop the server,
/// copy, start it on the new data dir.
pub async fn copy_store(
    from: &Path,
    to: &Path,
    store: DurableStore,
) -> Result<(DurableStore, Copied), StoreError> {
    let Some(source) = held_store(from)? else {
        return Err(StoreError(format!(
            "{} holds no livebattle store (neither {} nor log-*, snapshot-* files)",
            from.display(),
            livebattle_store_redb::FILE_NAME
        )));
    };
    if let Some(held) = held_store(to)? {
        return Err(StoreError(format!(
            "{} already holds a {} store: copy into a new data dir",
            to.display(),
            held.name()
        )));
    }
    let source_store = open_durable(from, source)?;
    let copy = open_durable(to, store)?;
    let copied = livebattle_engine::store::copy(&*source_store, &*copy).await?;
    Ok((source, copied))
}

/// Connects to Redis, waiting for it while it is down (the instance is not ready meanwhile); a
/// namespace written by another layout version is refused at once.
async fn connect_redis(url: &str, options: RedisOptions) -> Result<RedisStore, EngineError> {
    RedisStore::check_url(url).map_err(EngineError::Store)?;
    let mut logged = false;
    loop {
        match RedisStore::connect(url, options.clone()).await {
            Ok(store) => return Ok(store),
            Err(e) if e.0.contains("layout version") => return Err(EngineError::Store(e)),
            Err(e) => {
                if !logged {
                    tracing::error!(error = %e, "Redis is not answering; waiting for it");
                    logged = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// Runs the server on `listener` until `shutdown` resolves; then stops accepting, ends the SSE
/// streams, lets in-flight requests finish, and shuts the engine down (after its queued work).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let engine = start_engine(&config).await.map_err(ServeError::Engine)?;
    serve_engine(engine, config, listener, shutdown).await
}

/// [`serve`] with an engine already started by [`start_engine`] (the binary starts it first, so
/// that it announces its address only once recovery is done and it can serve).
pub async fn serve_engine(
    engine: Engine,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = match AppState::new(engine.clone(), &config) {
        Ok(state) => state,
        Err(e) => {
            engine.shutdown().await;
            return Err(ServeError::Config(e));
        }
    };
    for app in config.ingest.apps.iter().filter(|a| a.token.is_none()) {
        tracing::warn!(
            sdk_app_id = app.sdk_app_id,
            "no callback token: this app's callbacks are accepted unsigned"
        );
    }
    if config.admin_token.is_none() {
        tracing::info!("no admin token: the admin API is disabled");
    }
    let router = app(state.clone());
    let on_signal = state.clone();
    let listener = listener::sniffing(listener, state.clone(), config.header_read_timeout);
    connections::serve(listener, router, config.header_read_timeout, async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        on_signal.begin_shutdown();
    })
    .await;
    state.begin_shutdown();
    engine.shutdown().await;
    tracing::info!("engine stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Installs the global tracing subscriber: `format` on stderr (coloured only on a terminal),
/// level from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(e) = installed {
        eprintln!("livebattle: logging not initialised: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_durable_store_follows_the_data_dir_and_refuses_the_other_ones_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(durable_store(d, None), Ok(DurableStore::Log), "a new dir");
        assert_eq!(
            durable_store(d, Some(DurableStore::Redb)),
            Ok(DurableStore::Redb)
        );

        std::fs::write(d.join(livebattle_store_redb::FILE_NAME), b"").unwrap();
        assert_eq!(
            durable_store(d, None),
            Ok(DurableStore::Redb),
            "a redb dir stays redb"
        );
        let e = durable_store(d, Some(DurableStore::Log)).unwrap_err().0;
        assert!(
            e.contains("livebattle.redb") && e.contains("--durable-store redb"),
            "{e}"
        );

        std::fs::write(d.join("log-00000000000000000001"), b"").unwrap();
        let e = durable_store(d, None).unwrap_err().0;
        assert!(e.contains("both"), "{e}");

        std::fs::remove_file(d.join(livebattle_store_redb::FILE_NAME)).unwrap();
        assert_eq!(durable_store(d, None), Ok(DurableStore::Log));
        let e = durable_store(d, Some(DurableStore::Redb)).unwrap_err().0;
        assert!(
            e.contains("holds a log store") && e.contains("--durable-store log"),
            "{e}"
        );
    }
}
