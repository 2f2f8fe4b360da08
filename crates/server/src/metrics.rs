//! `GET /metrics`: Prometheus text exposition of the ingest, engine, SSE and HTTP counters.
//!
//! Every label set is bounded: commands, outcomes and reasons come from fixed lists, routes are
//! the router's templates (unmatched paths count as `unmatched`), methods outside the usual
//! ones count as `other`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use livebattle_engine::State as BattleState;

use crate::state::AppState;

/// The route label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// HTTP requests by route template, method and status.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Keyed by the route's index in [`crate::ROUTES`] (the usual case: no allocation, no
    /// string comparison in the map), or by the route's text for any other label.
    requests: Mutex<HashMap<(RouteKey, &'static str, u16), u64, foldhash::fast::RandomState>>,
}

/// A route label as [`HttpMetrics`] keys it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RouteKey {
    Known(usize),
    Unmatched,
    Other(Box<str>),
}

impl RouteKey {
    /// The key of a route template (or of [`UNMATCHED_ROUTE`]).
    pub(crate) fn of(route: &str) -> RouteKey {
        if route == UNMATCHED_ROUTE {
            return RouteKey::Unmatched;
        }
        match crate::ROUTES.iter().position(|(_, path)| *path == route) {
            Some(i) => RouteKey::Known(i),
            None => RouteKey::Other(route.into()),
        }
    }

    fn label(&self) -> &str {
        match self {
            RouteKey::Known(i) => crate::ROUTES.get(*i).map_or(UNMATCHED_ROUTE, |(_, p)| p),
            RouteKey::Unmatched => UNMATCHED_ROUTE,
            RouteKey::Other(r) => r,
        }
    }
}

impl HttpMetrics {
    /// Counts one request.
    pub fn record(&self, route: &str, method: &Method, status: u16) {
        self.record_key(RouteKey::of(route), method, status);
    }

    /// Counts one request; returns the route (for the log line).
    fn record_key(&self, route: RouteKey, method: &Method, status: u16) -> RouteKey {
        let key = (route, method_label(method), status);
        let mut map = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match map.get_mut(&key) {
            Some(n) => *n += 1,
            None => {
                map.insert(key.clone(), 1);
            }
        }
        key.0
    }

    /// `(route, method, status, count)` for every non-zero counter, sorted.
    pub fn snapshot(&self) -> Vec<(String, &'static str, u16, u64)> {
        let map = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sorted: BTreeMap<(String, &'static str, u16), u64> = map
            .iter()
            .map(|((r, m, s), n)| ((r.label().to_owned(), *m, *s), *n))
            .collect();
        sorted
            .into_iter()
            .map(|((r, m, s), n)| (r, m, s, n))
            .collect()
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Route-layer middleware: counts and logs each routed request.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(RouteKey::Unmatched, |p| RouteKey::of(p.as_str()));
    let response = next.run(request).await;
    observe(&state, route, &method, &response, started);
    response
}

/// Counts and logs one routed request that started at `started`: [`track`]'s work, also done
/// by the webhook route, which is served outside the route layer (`crate::app`).
pub(crate) fn observe(
    state: &AppState,
    route: RouteKey,
    method: &Method,
    response: &Response,
    started: Instant,
) {
    let status = response.status();
    let route = state
        .http_metrics()
        .record_key(route, method, status.as_u16());
    let route = route.label();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), elapsed_ms, "request failed");
    } else {
        tracing::debug!(%method, route, status = status.as_u16(), elapsed_ms, "request");
    }
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Response {
    let body = prometheus_text(&state);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every metric, as Prometheus text.
pub fn prometheus_text(state: &AppState) -> String {
    let engine = state.engine();
    let m = engine.metrics().snapshot();
    let mut out = state.ingest().metrics().to_prometheus();

    family(
        &mut out,
        "livebattle_battles",
        "gauge",
        "Battles held, by state.",
    );
    for (s, n) in BattleState::ALL.iter().zip(m.battles_by_state) {
        let _ = writeln!(out, "livebattle_battles{{state=\"{}\"}} {n}", s.as_str());
    }
    family(
        &mut out,
        "livebattle_transitions_total",
        "counter",
        "Battle changes (state transitions and in-state updates), by cause.",
    );
    for (c, n) in &m.changes_by_cause {
        let _ = writeln!(
            out,
            "livebattle_transitions_total{{cause=\"{}\"}} {n}",
            c.as_str()
        );
    }
    let counters = [
        (
            "livebattle_events_total",
            "Events applied by the engine.",
            m.events,
        ),
        (
            "livebattle_duplicate_events_total",
            "Events that repeated an already applied Tencent callback.",
            m.duplicates,
        ),
        (
            "livebattle_timers_armed_total",
            "Timers armed.",
            m.timers_armed,
        ),
        (
            "livebattle_timers_cancelled_total",
            "Timers cancelled or replaced before firing.",
            m.timers_cancelled,
        ),
        (
            "livebattle_timers_fired_total",
            "Timers fired.",
            m.timers_fired,
        ),
        (
            "livebattle_battles_evicted_total",
            "Ended battles evicted after retention.",
            m.evicted,
        ),
        (
            "livebattle_store_conflicts_total",
            "Rounds the shared store (Redis) rejected because another instance changed a battle first; they were applied again.",
            m.store_conflicts,
        ),
    ];
    for (name, help, value) in counters {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }

    let name = "livebattle_timer_lateness_ms";
    family(
        &mut out,
        name,
        "histogram",
        "How late timers fired, in ms after their deadline.",
    );
    let mut count = 0;
    for (le, cumulative) in &m.lateness_buckets {
        let le = le.map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        count = *cumulative;
    }
    let _ = writeln!(out, "{name}_sum {}", m.lateness_sum_ms);
    let _ = writeln!(out, "{name}_count {count}");
    let name = "livebattle_timer_lateness_max_ms";
    family(
        &mut out,
        name,
        "gauge",
        "The latest any timer fired since the process started, in ms after its deadline.",
    );
    let _ = writeln!(out, "{name} {}", m.lateness_max_ms);

    let gauges = [
        (
            "livebattle_sse_streams",
            "Open Server-Sent Events streams.",
            state.sse_streams().get(),
        ),
        (
            "livebattle_subscribers",
            "Open engine subscriptions (one per SSE lane, per SSE stream served by axum, and any other).",
            engine.subscriber_count() as u64,
        ),
        (
            "livebattle_last_seq",
            "Sequence number of the latest notification.",
            engine.last_seq(),
        ),
    ];
    for (name, help, value) in gauges {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }

    for f in engine.store_figures() {
        family(
            &mut out,
            f.name,
            if f.counter { "counter" } else { "gauge" },
            f.help,
        );
        let _ = writeln!(out, "{} {}", f.name, f.value);
    }

    family(
        &mut out,
        "livebattle_http_requests_total",
        "counter",
        "HTTP requests by route template, method and status.",
    );
    for (route, method, status, n) in state.http_metrics().snapshot() {
        let _ = writeln!(
            out,
            "livebattle_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}",
            escape(&route)
        );
    }
    out
}
