//! Server-Sent Events: a snapshot, then every notification, resumable with `Last-Event-ID`.
//!
//! * A new stream subscribes first, then reads the engine's last `seq` L, then the battles: so
//!   the `snapshot` event (id L) holds every change up to L, and every notification after L
//!   follows it as a `battle` event (id = its seq). Notifications up to L are not sent again.
//! * A reconnect with `Last-Event-ID: N` resumes after N from the engine's replay ring: no gap,
//!   no duplicate, no snapshot. When the ring no longer reaches back to N, it gets a fresh
//!   snapshot (`reason: "resume_too_old"`) instead.
//! * A subscriber that fell behind (`Delivery::Lagged`) gets a fresh snapshot
//!   (`reason: "lagged"`) and continues from there.
//!
//! Keep-alive comments go out every `sse_keep_alive` (15 s by default); streams end when the
//! server shuts down.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use livebattle_engine::{BattleSnapshot, Delivery, Engine, Filter, Notification, Subscription};
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// The SSE event name of a snapshot.
pub const SNAPSHOT_EVENT: &str = "snapshot";
/// The SSE event name of a notification.
pub const BATTLE_EVENT: &str = "battle";

/// `GET /v1/events`: every battle.
pub async fn all_events(State(state): State<AppState>, headers: HeaderMap) -> Response {
    open(&state, Filter::All, &headers)
}

/// `GET /v1/battles/{battle_id}/events`: one battle (it need not exist yet).
pub async fn battle_events(
    State(state): State<AppState>,
    battle_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(battle_id) = battle_id?;
    Ok(open(&state, Filter::Battle(battle_id), &headers))
}

/// `GET /v1/rooms/{room_id}/events`: every battle involving one room.
pub async fn room_events(
    State(state): State<AppState>,
    room_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(room_id) = room_id?;
    Ok(open(&state, Filter::Room(room_id), &headers))
}

/// Data of a `snapshot` event.
#[derive(Serialize)]
struct SnapshotData<'a> {
    battles: Vec<BattleSnapshot>,
    seq: u64,
    reason: &'a str,
}

/// Counts open SSE streams (the `livebattle_sse_streams` gauge).
#[derive(Debug, Default)]
pub struct StreamCount(AtomicU64);

impl StreamCount {
    /// Open streams now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Held by a stream; decrements the count when the stream is dropped.
struct Open(Arc<StreamCount>);

impl Open {
    fn new(count: Arc<StreamCount>) -> Open {
        count.0.fetch_add(1, Ordering::Relaxed);
        Open(count)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Feed {
    engine: Engine,
    filter: Filter,
    subscription: Subscription,
    /// Notifications up to this seq are already in the last snapshot sent.
    covered: u64,
    first: Option<Event>,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    _open: Open,
}

fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn open(state: &AppState, filter: Filter, headers: &HeaderMap) -> Response {
    let engine = state.engine().clone();
    let resumed = last_event_id(headers).map(|n| (n, engine.subscribe_after(filter.clone(), n)));
    let (subscription, covered, first) = match resumed {
        Some((n, Ok(subscription))) => (subscription, n, None),
        other => {
            let reason = if other.is_some() {
                "resume_too_old"
            } else {
                "initial"
            };
            // Subscribe before reading the snapshot, so nothing falls between the two.
            let subscription = engine.subscribe(filter.clone());
            let (event, seq) = snapshot(&engine, &filter, reason);
            (subscription, seq, Some(event))
        }
    };
    let feed = Feed {
        engine,
        filter,
        subscription,
        covered,
        first,
        shutdown: Box::pin(state.shutdown_signal()),
        _open: Open::new(state.sse_streams()),
    };
    let stream = futures_util::stream::unfold(feed, next);
    let sse = Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(state.sse_keep_alive())
            .text("keep-alive"),
    );
    let mut response = sse.into_response();
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

async fn next(mut feed: Feed) -> Option<(Result<Event, Infallible>, Feed)> {
    if let Some(first) = feed.first.take() {
        return Some((Ok(first), feed));
    }
    loop {
        let delivery = tokio::select! {
            biased;
            () = &mut feed.shutdown => return None,
            d = feed.subscription.next() => d?,
        };
        match delivery {
            Delivery::Notification(n) if n.seq <= feed.covered => continue,
            Delivery::Notification(n) => {
                feed.covered = n.seq;
                match notification_event(&n) {
                    Some(event) => return Some((Ok(event), feed)),
                    None => continue,
                }
            }
            Delivery::Lagged { missed } => {
                tracing::debug!(missed, "SSE subscriber lagged; sending a fresh snapshot");
                let (event, seq) = snapshot(&feed.engine, &feed.filter, "lagged");
                feed.covered = seq;
                return Some((Ok(event), feed));
            }
        }
    }
}

fn notification_event(n: &Notification) -> Option<Event> {
    match Event::default()
        .event(BATTLE_EVENT)
        .id(n.seq.to_string())
        .json_data(n)
    {
        Ok(event) => Some(event),
        Err(e) => {
            tracing::error!(seq = n.seq, error = %e, "could not serialise a notification");
            None
        }
    }
}

/// A snapshot event for `filter`, and the seq it covers. The seq is read before the battles, so
/// the battles include every change up to it.
fn snapshot(engine: &Engine, filter: &Filter, reason: &str) -> (Event, u64) {
    let seq = engine.last_seq();
    let battles = match filter {
        Filter::All => engine.battles(None, None, None, usize::MAX),
        Filter::Battle(id) => engine.battle(id).into_iter().collect(),
        Filter::Room(room) => engine.battles(None, Some(room), None, usize::MAX),
    };
    let data = SnapshotData {
        battles,
        seq,
        reason,
    };
    let event = Event::default()
        .event(SNAPSHOT_EVENT)
        .id(seq.to_string())
        .json_data(&data)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not serialise a snapshot");
            Event::default().event(SNAPSHOT_EVENT).id(seq.to_string())
        });
    (event, seq)
}
