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
use livebattle_engine::{
    BattleSnapshot, Delivery, Engine, Filter, Notification, State as BattleState, Subscription,
};
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

/// The most battles one `snapshot` event carries: live ones first (pending, awaiting response,
/// running), then ended ones. Past it the snapshot says `truncated` and clients page through
/// `GET /v1/battles`; a snapshot of a million battles would be hundreds of megabytes.
pub const SNAPSHOT_LIMIT: usize = 10_000;

/// Data of a `snapshot` event.
#[derive(Debug, Serialize)]
struct Snapshot {
    battles: Vec<BattleSnapshot>,
    seq: u64,
    reason: &'static str,
    /// More battles matched than [`SNAPSHOT_LIMIT`].
    truncated: bool,
}

/// What a stream sends next.
#[derive(Debug)]
enum Item {
    Snapshot(Snapshot),
    Battle(Arc<Notification>),
}

impl Item {
    fn into_event(self) -> Option<Event> {
        let (name, seq, data) = match &self {
            Item::Snapshot(s) => (
                SNAPSHOT_EVENT,
                s.seq,
                serde_json::to_string(s).map(Into::into),
            ),
            Item::Battle(n) => (BATTLE_EVENT, n.seq, serialized(n)),
        };
        match data {
            Ok(data) => Some(
                Event::default()
                    .event(name)
                    .id(seq.to_string())
                    .data(&*data),
            ),
            Err(e) => {
                tracing::error!(seq, error = %e, "could not serialise an SSE event");
                None
            }
        }
    }
}

/// How many recent notifications keep their JSON for the streams that have yet to send them.
const SERIALIZED_SLOTS: usize = 256;

/// The JSON of recent notifications, by `seq % SERIALIZED_SLOTS`: every stream that sends a
/// notification (10,000 subscribers of one battle all send the same one) shares one
/// serialization. A slot holds the notification weakly and matches by identity, so streams of
/// different engines in one process never share an entry, and a freed notification misses.
struct SerializedCache {
    slots: Vec<std::sync::Mutex<Option<Serialized>>>,
}

/// A notification (held weakly) and its JSON.
type Serialized = (std::sync::Weak<Notification>, Arc<str>);

fn serialized_cache() -> &'static SerializedCache {
    static CACHE: std::sync::OnceLock<SerializedCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| SerializedCache {
        slots: (0..SERIALIZED_SLOTS)
            .map(|_| std::sync::Mutex::new(None))
            .collect(),
    })
}

/// `n` as JSON, serialized once for every stream that sends it.
fn serialized(n: &Arc<Notification>) -> Result<Arc<str>, serde_json::Error> {
    let slot = &serialized_cache().slots[(n.seq % SERIALIZED_SLOTS as u64) as usize];
    if let Ok(guard) = slot.lock() {
        if let Some((weak, json)) = &*guard {
            if std::ptr::eq(weak.as_ptr(), Arc::as_ptr(n)) && weak.strong_count() > 0 {
                return Ok(json.clone());
            }
        }
    }
    let json: Arc<str> = serde_json::to_string(&**n)?.into();
    if let Ok(mut guard) = slot.lock() {
        *guard = Some((Arc::downgrade(n), json.clone()));
    }
    Ok(json)
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

type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

struct Feed {
    engine: Engine,
    filter: Filter,
    subscription: Subscription,
    /// Notifications up to this seq are already in the last snapshot sent (or were sent).
    covered: u64,
    first: Option<Snapshot>,
    shutdown: Shutdown,
    _open: Open,
}

impl Feed {
    /// The next item: the first snapshot, then notifications not yet covered, with a fresh
    /// snapshot after a lag; `None` at shutdown.
    async fn next_item(&mut self) -> Option<Item> {
        if let Some(first) = self.first.take() {
            return Some(Item::Snapshot(first));
        }
        loop {
            let delivery = tokio::select! {
                biased;
                () = &mut self.shutdown => return None,
                d = self.subscription.next() => d?,
            };
            match delivery {
                Delivery::Notification(n) if n.seq <= self.covered => continue,
                Delivery::Notification(n) => {
                    self.covered = n.seq;
                    return Some(Item::Battle(n));
                }
                Delivery::Lagged { missed } => {
                    tracing::debug!(missed, "SSE subscriber lagged; sending a fresh snapshot");
                    let fresh = snapshot(&self.engine, &self.filter, "lagged");
                    self.covered = fresh.seq;
                    return Some(Item::Snapshot(fresh));
                }
            }
        }
    }
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
            let first = snapshot(&engine, &filter, reason);
            (subscription, first.seq, Some(first))
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
    loop {
        if let Some(event) = feed.next_item().await?.into_event() {
            return Some((Ok(event), feed));
        }
    }
}

/// A snapshot for `filter`. The seq is read before the battles, so the battles include every
/// change up to it.
fn snapshot(engine: &Engine, filter: &Filter, reason: &'static str) -> Snapshot {
    let seq = engine.last_seq();
    let mut battles = Vec::new();
    let mut truncated = false;
    match filter {
        Filter::Battle(id) => battles.extend(engine.battle(id)),
        Filter::All | Filter::Room(_) => {
            let room = match filter {
                Filter::Room(room) => Some(room.as_str()),
                _ => None,
            };
            // Live battles first: they are what a countdown shows.
            for state in [
                BattleState::Running,
                BattleState::AwaitingResponse,
                BattleState::Pending,
                BattleState::Ended,
            ] {
                let room_left = SNAPSHOT_LIMIT + 1 - battles.len();
                battles.extend(engine.battles(Some(state), room, None, room_left));
                if battles.len() > SNAPSHOT_LIMIT {
                    battles.truncate(SNAPSHOT_LIMIT);
                    truncated = true;
                    break;
                }
            }
        }
    }
    Snapshot {
        battles,
        seq,
        reason,
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use livebattle_engine::{Created, Event as EngineEvent};

    use super::*;

    fn created(id: &str) -> EngineEvent {
        EngineEvent::Created(Created {
            battle_id: id.into(),
            from_room: Some(format!("{id}-a")),
            to_rooms: vec![format!("{id}-b")],
            duration_ms: Some(60_000),
            need_response: Some(false),
            ..Default::default()
        })
    }

    fn feed(engine: &Engine, first: Option<Snapshot>, covered: u64) -> Feed {
        Feed {
            engine: engine.clone(),
            filter: Filter::All,
            subscription: engine.subscribe(Filter::All),
            covered,
            first,
            shutdown: Box::pin(std::future::pending()),
            _open: Open::new(Arc::default()),
        }
    }

    async fn quiet(feed: &mut Feed) {
        let next = tokio::time::timeout(Duration::from_millis(100), feed.next_item()).await;
        assert!(next.is_err(), "expected nothing, got {next:?}");
    }

    #[tokio::test]
    async fn a_snapshot_is_bounded_and_lists_live_battles_first() {
        let engine = Engine::builder().start().await.unwrap();
        let ended = (0..5).map(|i| {
            EngineEvent::Ended(livebattle_engine::Ended {
                battle_id: format!("a-ended-{i}"),
                op_type: Some(1),
                ..Default::default()
            })
        });
        let live = (0..SNAPSHOT_LIMIT).map(|i| created(&format!("live-{i:05}")));
        for r in engine.apply_batch(ended.chain(live).collect()).await {
            r.unwrap();
        }
        let s = snapshot(&engine, &Filter::All, "initial");
        assert!(s.truncated);
        assert_eq!(s.battles.len(), SNAPSHOT_LIMIT);
        assert!(
            s.battles.iter().all(|b| b.state == BattleState::Running),
            "the live battles fill the snapshot before ended ones"
        );
        let small = snapshot(&engine, &Filter::Room("live-00001-a".into()), "initial");
        assert!(!small.truncated);
        assert_eq!(small.battles.len(), 1);
        engine.shutdown().await;
    }

    async fn first_notification(engine: &Engine, id: &str) -> Arc<Notification> {
        let mut subscription = engine.subscribe(Filter::All);
        engine.apply(created(id)).await.unwrap();
        match subscription.next().await {
            Some(Delivery::Notification(n)) => n,
            other => panic!("expected a notification, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn streams_share_one_serialization_per_notification_and_never_across_engines() {
        let (one, two) = (
            Engine::builder().start().await.unwrap(),
            Engine::builder().start().await.unwrap(),
        );
        let n1 = first_notification(&one, "engine-one").await;
        let n2 = first_notification(&two, "engine-two").await;
        assert_eq!(n1.seq, n2.seq, "same seq, different notifications");
        let (a, b) = (serialized(&n1).unwrap(), serialized(&n1).unwrap());
        assert!(
            Arc::ptr_eq(&a, &b),
            "the second stream reuses the first one's JSON"
        );
        assert_eq!(*a, serde_json::to_string(&*n1).unwrap());
        let c = serialized(&n2).unwrap();
        assert!(c.contains("engine-two") && !c.contains("engine-one"));
        assert!(serialized(&n1).unwrap().contains("engine-one"));
        one.shutdown().await;
        two.shutdown().await;
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_a_fresh_snapshot() {
        let engine = Engine::builder().channel_capacity(2).start().await.unwrap();
        let mut feed = feed(&engine, None, 0);
        for i in 0..5 {
            engine.apply(created(&format!("lag-{i}"))).await.unwrap();
        }
        let Some(Item::Snapshot(s)) = feed.next_item().await else {
            panic!("expected a snapshot after the lag");
        };
        assert_eq!((s.reason, s.seq, s.battles.len()), ("lagged", 5, 5));
        // What the broadcast still held is covered by the snapshot: not sent again.
        quiet(&mut feed).await;
        engine.apply(created("lag-5")).await.unwrap();
        let Some(Item::Battle(n)) = feed.next_item().await else {
            panic!("expected the next notification");
        };
        assert_eq!(n.seq, 6);
        engine.shutdown().await;
    }

    #[tokio::test]
    async fn notifications_covered_by_the_snapshot_are_skipped() {
        let engine = Engine::builder().start().await.unwrap();
        let subscribed = feed(&engine, None, 0);
        engine.apply(created("s-1")).await.unwrap();
        // The snapshot is read after the change: it covers seq 1.
        let first = snapshot(&engine, &Filter::All, "initial");
        assert_eq!(first.seq, 1);
        let mut feed = Feed {
            first: Some(first),
            covered: 1,
            ..subscribed
        };
        assert!(matches!(feed.next_item().await, Some(Item::Snapshot(_))));
        quiet(&mut feed).await;
        engine.apply(created("s-2")).await.unwrap();
        assert!(matches!(feed.next_item().await, Some(Item::Battle(n)) if n.seq == 2));
        engine.shutdown().await;
    }
}
