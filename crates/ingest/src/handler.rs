//! The HTTP side: the [`Ingest`] handle, the axum handler and the router.
//!
//! Per request: parse and check the query (app, command, signature, freshness) before reading
//! the body; read at most `body_limit` bytes; parse the body; `engine.apply(..).await` bounded by
//! `apply_timeout`; only then reply OK. Every step's refusal is a Tencent-shaped `FAIL` reply and
//! leaves the engine untouched. A `debug` span per request carries command, battle_id and
//! outcome; a refusal's `warn` event carries them itself (the span, at `info`, cost a quarter of
//! the server's instructions per webhook in formatting its fields).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use livebattle_engine::{Engine, EngineError, Event};
use tracing::{field, Instrument};

use crate::command::Command;
use crate::config::{ConfigError, IngestConfig};
use crate::metrics::{IngestMetrics, RequestOutcome};
use crate::payload::{parse_payload, Action};
use crate::query::CallbackQuery;
use crate::reply::{Reason, Refusal, TencentReply};
use crate::signature::{body_too_large, shorten_cow, Verifier};

/// Where [`Ingest::router`] mounts the handler.
pub const CALLBACK_PATH: &str = "/callback";

struct Inner {
    engine: Engine,
    verifier: Verifier,
    metrics: IngestMetrics,
    apply_timeout: Duration,
}

/// The ingest service: the engine it feeds, the served apps and tokens, and its counters.
/// Cheap to clone; every clone is the same service.
///
/// ```
/// use livebattle_engine::{Engine, TokioClock};
/// use livebattle_ingest::{AppConfig, Ingest, IngestConfig};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let engine = Engine::builder()
///     .clock(TokioClock::starting_at(1_739_954_005_000))
///     .start()
///     .await
///     .unwrap();
/// let config = IngestConfig {
///     apps: vec![AppConfig::new("1400000001")],
///     ..IngestConfig::default()
/// };
/// let ingest = Ingest::new(engine.clone(), config).unwrap();
/// let app: axum::Router = ingest.router(); // POST /callback
/// // Or mount the handler elsewhere:
/// let custom: axum::Router = axum::Router::new()
///     .route("/tencent/live", axum::routing::post(livebattle_ingest::callback))
///     .with_state(ingest.clone());
///
/// let body = br#"{"CallbackCommand":"Live.CallbackAfterCreateBattle","BattleId":"b1",
///   "FromRoomId":"pk-3","ToRoomIdList":["pk-5"],"Duration":60000,"NeedResponse":false,
///   "EventTime":1739954005000}"#;
/// let query = "SdkAppid=1400000001&CallbackCommand=Live.CallbackAfterCreateBattle&contenttype=json";
/// ingest.process(query, body).await.unwrap();
/// assert!(engine.battle("b1").is_some());
/// assert_eq!(
///     ingest.metrics().snapshot().requests("Live.CallbackAfterCreateBattle", "new"),
///     1
/// );
/// # let _ = (app, custom);
/// # }
/// ```
#[derive(Clone)]
pub struct Ingest {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("apply_timeout", &self.inner.apply_timeout)
            .field("body_limit", &self.inner.verifier.body_limit())
            .finish_non_exhaustive()
    }
}

/// Builds the service and returns a router with `POST /callback`.
pub fn router(engine: Engine, config: IngestConfig) -> Result<Router, ConfigError> {
    Ok(Ingest::new(engine, config)?.router())
}

impl Ingest {
    /// Validates `config` and builds the service. A `previous_token` stays valid for
    /// `token_overlap` from now on the engine clock.
    pub fn new(engine: Engine, config: IngestConfig) -> Result<Ingest, ConfigError> {
        let verifier = Verifier::new(&config, engine.now_ms())?;
        Ok(Ingest {
            inner: Arc::new(Inner {
                engine,
                verifier,
                metrics: IngestMetrics::default(),
                apply_timeout: config.apply_timeout,
            }),
        })
    }

    /// A router with `POST /callback` (any other method gets a 405 in Tencent's shape).
    pub fn router(&self) -> Router {
        Router::new()
            .route(CALLBACK_PATH, post(callback).fallback(method_not_allowed))
            .with_state(self.clone())
    }

    /// The counters.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.inner.metrics
    }

    /// The engine fed.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The app and token checks.
    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// Rotates an app's token (`None` turns its auth off); the old one stays valid for
    /// `token_overlap` on the engine clock.
    pub fn rotate_token(
        &self,
        sdk_app_id: &str,
        new_token: Option<String>,
    ) -> Result<(), ConfigError> {
        let now = self.inner.engine.now_ms();
        self.inner.verifier.rotate_token(sdk_app_id, new_token, now)
    }

    /// Handles one callback whose body is already in memory (no HTTP): the same checks,
    /// apply and counters as the handler. `Ok` means Tencent gets the OK reply.
    pub async fn process(&self, raw_query: &str, body: &[u8]) -> Result<RequestOutcome, Refusal> {
        let span = request_span();
        async {
            let mut command = None;
            let result = match self.authorize(raw_query, &mut command) {
                Ok(command) => self.apply_body(&command, body).await,
                Err(refusal) => Err(refusal),
            };
            self.finish(command.as_ref(), raw_query, Some(body), result)
        }
        .instrument(span)
        .await
    }

    async fn serve(&self, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let (raw_query, headers) = (parts.uri.query().unwrap_or_default(), &parts.headers);
        let mut command = None;
        let mut read = None;
        let result = match self.authorize(raw_query, &mut command) {
            Ok(command) => match self.read_body(headers, body).await {
                Ok(bytes) => {
                    let applied = self.apply_body(&command, &bytes).await;
                    read = Some(bytes);
                    applied
                }
                Err(refusal) => Err(refusal),
            },
            Err(refusal) => Err(refusal),
        };
        match self.finish(command.as_ref(), raw_query, read.as_deref(), result) {
            Ok(_) => TencentReply::ok().into_response(),
            Err(refusal) => refusal.into_response(),
        }
    }

    /// Query and signature; notes the command for the counters as soon as it is known. Returns
    /// the command to apply.
    fn authorize(
        &self,
        raw_query: &str,
        command: &mut Option<Command>,
    ) -> Result<Command, Refusal> {
        let query = CallbackQuery::parse(raw_query)?;
        let span = tracing::Span::current();
        let recording = !span.is_disabled();
        if let Some(c) = query.callback_command.as_deref().filter(|c| !c.is_empty()) {
            *command = Some(Command::parse(c));
            if recording {
                span.record("command", &*shorten_cow(c));
            }
        }
        if recording {
            for (field, value) in [
                ("sdk_app_id", &query.sdk_app_id),
                ("client_ip", &query.client_ip),
                ("opt_platform", &query.opt_platform),
            ] {
                span.record(field, value.as_deref().map(shorten_cow).as_deref());
            }
        }
        self.inner
            .verifier
            .authorize_command(&query, self.inner.engine.now_ms())
    }

    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, Refusal> {
        let limit = self.inner.verifier.body_limit();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(body_too_large(limit));
        }
        let unreadable = |e: axum::BoxError| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                body_too_large(limit)
            } else {
                Refusal::new(
                    Reason::UnreadableBody,
                    format!("could not read the body: {e}"),
                )
            }
        };
        // The data frames, concatenated (trailers are ignored). A body of one frame, the usual
        // case, is returned as it came. `collect()` + `Collected::to_bytes` would not copy it
        // either, but it queues frames in a `VecDeque` first: ~500 more instructions per
        // webhook (callgrind, `scripts/profile-webhooks.sh in-memory`), on the hottest path.
        let mut body = Limited::new(body, limit);
        let mut first = Bytes::new();
        let mut joined: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(unreadable)?.into_data() else {
                continue;
            };
            if first.is_empty() {
                first = data;
            } else {
                if joined.is_empty() {
                    joined.extend_from_slice(&first);
                }
                joined.extend_from_slice(&data);
            }
        }
        Ok(if joined.is_empty() {
            first
        } else {
            Bytes::from(joined)
        })
    }

    /// Size, payload, then the engine. Returns only after the engine accepted the event.
    async fn apply_body(&self, command: &Command, body: &[u8]) -> Result<RequestOutcome, Refusal> {
        self.inner.verifier.check_body_size(body.len())?;
        let event = match parse_payload(command, body)? {
            Action::Acknowledge => return Ok(RequestOutcome::Acknowledged),
            Action::Apply(event) => event,
        };
        let span = tracing::Span::current();
        match &event {
            Event::RoomDestroyed(d) => span.record("room_id", d.room_id.as_str()),
            other => span.record("battle_id", other.battle_id()),
        };
        let applied =
            tokio::time::timeout(self.inner.apply_timeout, self.inner.engine.apply(event))
                .await
                .map_err(|_| {
                    Refusal::new(
                        Reason::EngineTimeout,
                        format!(
                            "the engine did not accept the event within {} ms",
                            self.inner.apply_timeout.as_millis()
                        ),
                    )
                })?
                .map_err(engine_refusal)?;
        Ok(RequestOutcome::Applied(applied.outcome))
    }

    /// Counts, logs and records the outcome on the span. A refusal is logged with what is
    /// known of its request (`raw_query`, and the `body` when it was read), looked up again
    /// here: nothing is kept for the log while requests succeed.
    fn finish(
        &self,
        command: Option<&Command>,
        raw_query: &str,
        body: Option<&[u8]>,
        result: Result<RequestOutcome, Refusal>,
    ) -> Result<RequestOutcome, Refusal> {
        let metrics = &self.inner.metrics;
        let span = tracing::Span::current();
        match &result {
            Ok(outcome) => {
                metrics.record(command, *outcome);
                span.record("outcome", outcome.label());
                tracing::debug!("callback accepted");
            }
            Err(refusal) => {
                metrics.record(command, RequestOutcome::Refused);
                metrics.record_refusal(refusal.reason);
                span.record("outcome", "refused");
                span.record("error_code", refusal.reason.code());
                log_refusal(refusal, command, raw_query, body);
            }
        }
        result
    }
}

fn engine_refusal(e: EngineError) -> Refusal {
    match e {
        EngineError::Invalid(_) | EngineError::Refused(_) => Refusal::new(
            Reason::EventRejected,
            format!("the engine rejected the event: {e}"),
        ),
        other => Refusal::new(
            Reason::EngineUnavailable,
            format!("the engine is unavailable: {other}"),
        ),
    }
}

/// The `warn` event of a refused callback, with the request's command, app, client, platform and
/// battle (or room) when they can be read.
fn log_refusal(refusal: &Refusal, command: Option<&Command>, raw_query: &str, body: Option<&[u8]>) {
    if !tracing::enabled!(tracing::Level::WARN) {
        return;
    }
    let query = CallbackQuery::parse(raw_query).ok();
    let q = query.as_ref();
    let callback_command = q
        .and_then(|q| q.callback_command.as_deref())
        .map(shorten_cow);
    let sdk_app_id = q.and_then(|q| q.sdk_app_id.as_deref()).map(shorten_cow);
    let client_ip = q.and_then(|q| q.client_ip.as_deref()).map(shorten_cow);
    let opt_platform = q.and_then(|q| q.opt_platform.as_deref()).map(shorten_cow);
    let event = command
        .zip(body)
        .and_then(|(command, body)| match parse_payload(command, body) {
            Ok(Action::Apply(event)) => Some(event),
            _ => None,
        });
    let (battle_id, room_id) = match &event {
        Some(Event::RoomDestroyed(d)) => (None, Some(shorten_cow(&d.room_id))),
        Some(other) => (other.battle_id().map(shorten_cow), None),
        None => (None, None),
    };
    tracing::warn!(
        command = callback_command.as_deref(),
        battle_id = battle_id.as_deref(),
        room_id = room_id.as_deref(),
        error_code = refusal.reason.code(),
        sdk_app_id = sdk_app_id.as_deref(),
        client_ip = client_ip.as_deref(),
        opt_platform = opt_platform.as_deref(),
        reason = %refusal.reason,
        info = %refusal.info,
        "callback refused"
    );
}

/// The request's span: `debug`, so that at the default level it costs nothing (a refusal's
/// `warn` carries its own fields, [`log_refusal`]).
fn request_span() -> tracing::Span {
    tracing::debug_span!(
        "tencent_callback",
        command = field::Empty,
        battle_id = field::Empty,
        room_id = field::Empty,
        outcome = field::Empty,
        error_code = field::Empty,
        sdk_app_id = field::Empty,
        client_ip = field::Empty,
        opt_platform = field::Empty,
    )
}

/// The axum handler for Tencent's POST. Mount it anywhere with `State<Ingest>`; the reply is
/// sent only after the engine accepted the event.
pub async fn callback(State(ingest): State<Ingest>, request: Request) -> Response {
    ingest.handle(request).await
}

/// Any method but POST on the callback path.
async fn method_not_allowed(State(ingest): State<Ingest>) -> Response {
    ingest.refuse_method()
}

impl Ingest {
    /// [`callback`] on a borrowed service (for a caller that holds the `Ingest` in its own
    /// state). It takes the whole request: the query and headers are read in place (no copy of
    /// either), the body streamed. The request's future (~1.5 KiB: the parsed event and the
    /// engine round trip) is boxed once here, so the layers above it (the span, the caller's
    /// handler, axum's own box) move a pointer instead of copying it at each level.
    pub fn handle(&self, request: Request) -> impl Future<Output = Response> + Send + '_ {
        Box::pin(self.serve(request)).instrument(request_span())
    }

    /// The reply to any method but POST on the callback path (4051 / 405), counted.
    pub fn refuse_method(&self) -> Response {
        let refusal = Refusal::new(
            Reason::MethodNotAllowed,
            "Tencent callbacks are POST requests",
        );
        let _ = self.finish(None, "", None, Err(refusal.clone()));
        refusal.into_response()
    }
}
