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
//! * Streams of every battle that start within [`SHARE_INITIAL_FOR`] of one another share one
//!   rendered initial snapshot ([`SharedSnapshot`]): each gets it (id L) and then, from the
//!   replay ring, the notifications after L — what a client that connected at L would have got.
//!   A thousand clients reconnecting at once cost one snapshot (up to 10,000 battles,
//!   megabytes), not a thousand, and a client that never reads holds a share of one.
//!
//! A keep-alive comment (`: keep-alive`) goes out every `sse_keep_alive` (15 s by default),
//! whether or not events went out in between; streams end when the server shuts down.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use livebattle_engine::{
    BattleSnapshot, Delivery, Engine, Filter, Notification, State as BattleState, Subscription,
};
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) mod direct;

pub use direct::Lanes;

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
    /// An event already rendered (a stream's first snapshot).
    Rendered(Bytes),
    Battle(Arc<Notification>),
}

impl Item {
    /// The event's bytes on the wire (`event`, `id` and one `data` line: compact JSON has no
    /// line break); a notification's are rendered once for every stream that sends it.
    fn into_frame(self) -> Option<Bytes> {
        let frame = match self {
            Item::Rendered(frame) => return Some(frame),
            Item::Snapshot(ref s) => {
                serde_json::to_string(s).map(|json| frame(SNAPSHOT_EVENT, s.seq, &json))
            }
            Item::Battle(ref n) => rendered(n),
        };
        match frame {
            Ok(frame) => Some(frame),
            Err(e) => {
                tracing::error!(error = %e, "could not serialise an SSE event");
                None
            }
        }
    }
}

/// One SSE event: `event: {name}\nid: {seq}\ndata: {json}\n\n`.
fn frame(name: &str, seq: u64, json: &str) -> Bytes {
    let mut out = Vec::with_capacity(name.len() + json.len() + 40);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\nid: ");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The keep-alive comment.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// How many recent notifications keep their rendered event for the streams that have yet to
/// send them.
const RENDERED_SLOTS: usize = 256;

/// The rendered events of recent notifications, by `seq % RENDERED_SLOTS`: every stream that
/// sends a notification (10,000 subscribers of one battle all send the same one) shares one
/// serialization and one buffer (each stream hands the connection a reference to it). A slot
/// holds the notification weakly and matches by identity, so streams of different engines in
/// one process never share an entry, and a freed notification misses.
struct RenderedCache {
    slots: Vec<std::sync::Mutex<Option<Rendered>>>,
}

/// A notification (held weakly) and its event.
type Rendered = (std::sync::Weak<Notification>, Bytes);

fn rendered_cache() -> &'static RenderedCache {
    static CACHE: std::sync::OnceLock<RenderedCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| RenderedCache {
        slots: (0..RENDERED_SLOTS)
            .map(|_| std::sync::Mutex::new(None))
            .collect(),
    })
}

/// `n` as a `battle` event, rendered once for every stream that sends it.
fn rendered(n: &Arc<Notification>) -> Result<Bytes, serde_json::Error> {
    let slot = &rendered_cache().slots[(n.seq % RENDERED_SLOTS as u64) as usize];
    if let Ok(guard) = slot.lock() {
        if let Some((weak, event)) = &*guard {
            if std::ptr::eq(weak.as_ptr(), Arc::as_ptr(n)) && weak.strong_count() > 0 {
                return Ok(event.clone());
            }
        }
    }
    let event = frame(BATTLE_EVENT, n.seq, &serde_json::to_string(&**n)?);
    if let Ok(mut guard) = slot.lock() {
        *guard = Some((Arc::downgrade(n), event.clone()));
    }
    Ok(event)
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

/// The least time between two fresh snapshots of one lagging stream: a client slower than the
/// notifications lags again and again, and each fresh snapshot (up to 10,000 battles,
/// megabytes) costs the server.
pub(crate) const LAG_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

struct Feed {
    engine: Engine,
    filter: Filter,
    subscription: Subscription,
    /// Notifications up to this seq are already in the last snapshot sent (or were sent).
    covered: u64,
    first: Option<Bytes>,
    shutdown: Shutdown,
    /// When the last fresh snapshot after a lag was sent.
    lagged_at: Option<tokio::time::Instant>,
    /// A lag waiting for [`LAG_SNAPSHOT_EVERY`] to pass before its fresh snapshot.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    _open: Open,
}

impl Feed {
    /// The next item: the first snapshot, then notifications not yet covered, with a fresh
    /// snapshot after a lag; `None` at shutdown or when the engine is gone.
    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Item::Rendered(first)));
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        loop {
            // A lag waiting out its second: the snapshot comes when it has passed.
            if let Some(pause) = self.pause.as_mut() {
                if std::future::Future::poll(pause.as_mut(), cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
                return Poll::Ready(Some(self.lag_snapshot()));
            }
            let delivery = match Pin::new(&mut self.subscription).poll_next(cx) {
                Poll::Ready(Some(d)) => d,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match delivery {
                Delivery::Notification(n) if n.seq <= self.covered => continue,
                Delivery::Notification(n) => {
                    self.covered = n.seq;
                    return Poll::Ready(Some(Item::Battle(n)));
                }
                Delivery::Lagged { missed } => {
                    tracing::debug!(missed, "SSE subscriber lagged; sending a fresh snapshot");
                    let now = tokio::time::Instant::now();
                    match self.lagged_at.map(|at| at + LAG_SNAPSHOT_EVERY) {
                        Some(due) if now < due => {
                            self.pause = Some(Box::pin(tokio::time::sleep_until(due)));
                        }
                        _ => return Poll::Ready(Some(self.lag_snapshot())),
                    }
                }
            }
        }
    }

    /// A fresh snapshot after a lag; what it covers is not sent again.
    fn lag_snapshot(&mut self) -> Item {
        let fresh = snapshot(&self.engine, &self.filter, "lagged");
        self.covered = fresh.seq;
        self.lagged_at = Some(tokio::time::Instant::now());
        Item::Snapshot(fresh)
    }

    #[cfg(test)]
    async fn next_item(&mut self) -> Option<Item> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }
}

/// An SSE response body: the feed's events, and a keep-alive comment every interval.
///
/// A hand-written stream rather than axum's `Sse`: with 10,000 streams on one battle, each
/// notification is one shared buffer per stream (no per-stream event building), and the
/// keep-alive is a plain interval (no timer reset per event).
struct Events {
    feed: Feed,
    keep_alive: tokio::time::Interval,
}

impl Stream for Events {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.feed.poll_item(cx) {
                Poll::Ready(Some(item)) => {
                    if let Some(frame) = item.into_frame() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        match this.keep_alive.poll_tick(cx) {
            Poll::Ready(_) => Poll::Ready(Some(Ok(Bytes::from_static(KEEP_ALIVE)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| last_event_id_value(v.as_bytes()))
}

/// A `Last-Event-ID` header's value as a `seq` (anything but a number is ignored).
fn last_event_id_value(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// Where a new stream starts: a subscription, the `seq` up to which it is covered, and the
/// snapshot to send first, if any.
struct Start {
    subscription: Subscription,
    covered: u64,
    first: Option<First>,
}

/// A stream's first event (a snapshot: up to megabytes, maybe shared by many streams), rendered
/// once as an HTTP/1.1 chunk: the streams written directly send the chunk, axum's streams the
/// event inside it (hyper frames it); neither copies it.
#[derive(Clone, Debug)]
struct First {
    chunk: Bytes,
    /// The length of the chunk's size line.
    prefix: usize,
}

impl First {
    fn new(event: &[u8]) -> First {
        let chunk = direct::chunk(event);
        // The size line, the event, then the chunk's closing CRLF.
        let prefix = chunk.len() - event.len() - 2;
        First { chunk, prefix }
    }

    /// The event alone.
    fn event(&self) -> Bytes {
        self.chunk.slice(self.prefix..self.chunk.len() - 2)
    }

    /// The event as one HTTP/1.1 chunk.
    fn chunk(&self) -> Bytes {
        self.chunk.clone()
    }
}

/// How long a rendered initial snapshot of every battle is given to the streams that start
/// after it (with the notifications since, from the replay ring) instead of a new one.
pub const SHARE_INITIAL_FOR: Duration = Duration::from_secs(1);

/// The latest initial snapshot of every battle, rendered, with its `seq` and when it was read:
/// shared by the streams of every battle that start within [`SHARE_INITIAL_FOR`] of it. (Battle
/// and room streams start with a few battles at most: theirs are not shared.)
#[derive(Default)]
pub struct SharedSnapshot(std::sync::Mutex<Option<(First, u64, tokio::time::Instant)>>);

impl SharedSnapshot {
    /// The initial snapshot of every battle a stream starting now gets: the shared one when it
    /// is recent and the replay ring still holds what came since (`subscribe_after` its seq),
    /// else a new one, which becomes the shared one. Streams starting together wait for the one
    /// being read rather than each reading its own.
    fn start(&self, engine: &Engine) -> Option<Start> {
        let mut shared = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        if let Some((frame, seq, at)) = &*shared {
            if now.saturating_duration_since(*at) < SHARE_INITIAL_FOR {
                if let Ok(subscription) = engine.subscribe_after(Filter::All, *seq) {
                    return Some(Start {
                        subscription,
                        covered: *seq,
                        first: Some(frame.clone()),
                    });
                }
            }
        }
        let subscription = engine.subscribe(Filter::All);
        let first = snapshot(engine, &Filter::All, "initial");
        let covered = first.seq;
        let frame = First::new(&Item::Snapshot(first).into_frame()?);
        *shared = Some((frame.clone(), covered, now));
        Some(Start {
            subscription,
            covered,
            first: Some(frame),
        })
    }
}

/// The start rule: with `Last-Event-ID: N` still in the replay ring, the notifications after N
/// and no snapshot; otherwise a snapshot (`resume_too_old` when N was given), read after
/// subscribing so that nothing falls between the two.
///
/// A stream of every battle without `Last-Event-ID` may get a recent shared snapshot instead
/// ([`SharedSnapshot`]).
fn start(
    engine: &Engine,
    filter: &Filter,
    last_event_id: Option<u64>,
    shared: &SharedSnapshot,
) -> Start {
    if *filter == Filter::All && last_event_id.is_none() {
        if let Some(start) = shared.start(engine) {
            return start;
        }
    }
    let resumed = last_event_id.map(|n| (n, engine.subscribe_after(filter.clone(), n)));
    match resumed {
        Some((n, Ok(subscription))) => Start {
            subscription,
            covered: n,
            first: None,
        },
        other => {
            let reason = if other.is_some() {
                "resume_too_old"
            } else {
                "initial"
            };
            let subscription = engine.subscribe(filter.clone());
            let first = snapshot(engine, filter, reason);
            Start {
                subscription,
                covered: first.seq,
                first: Item::Snapshot(first).into_frame().map(|f| First::new(&f)),
            }
        }
    }
}

fn open(state: &AppState, filter: Filter, headers: &HeaderMap) -> Response {
    let engine = state.engine().clone();
    let Start {
        subscription,
        covered,
        first,
    } = start(
        &engine,
        &filter,
        last_event_id(headers),
        state.sse_shared_snapshot(),
    );
    let feed = Feed {
        engine,
        filter,
        subscription,
        covered,
        first: first.map(|f| f.event()),
        shutdown: Box::pin(state.shutdown_signal()),
        lagged_at: None,
        pause: None,
        _open: Open::new(state.sse_streams()),
    };
    let body = Body::from_stream(Events {
        feed,
        keep_alive: keep_alive(state.sse_keep_alive()),
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}

/// Ticks every `every` (1 ms to a day), the first time one `every` from now (an interval's
/// first tick is otherwise immediate).
fn keep_alive(every: Duration) -> tokio::time::Interval {
    let every = every.clamp(Duration::from_millis(1), crate::config::MAX_SSE_KEEP_ALIVE);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
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
    use futures_util::StreamExt;
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

    fn feed(engine: &Engine, first: Option<Bytes>, covered: u64) -> Feed {
        Feed {
            engine: engine.clone(),
            filter: Filter::All,
            subscription: engine.subscribe(Filter::All),
            covered,
            first,
            shutdown: Box::pin(std::future::pending()),
            lagged_at: None,
            pause: None,
            _open: Open::new(Arc::default()),
        }
    }

    async fn quiet(feed: &mut Feed) {
        let next = tokio::time::timeout(Duration::from_millis(100), feed.next_item()).await;
        assert!(next.is_err(), "expected nothing, got {next:?}");
    }

    /// The notifications a start's subscription replays at once.
    fn replayed(start: &mut Start) -> Vec<u64> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut seqs = Vec::new();
        while let Poll::Ready(Some(Delivery::Notification(n))) =
            Pin::new(&mut start.subscription).poll_next(&mut cx)
        {
            seqs.push(n.seq);
        }
        seqs
    }

    #[tokio::test(start_paused = true)]
    async fn streams_of_every_battle_starting_within_a_second_share_one_snapshot() {
        let engine = Engine::builder()
            .replay_capacity(100)
            .start()
            .await
            .unwrap();
        let shared = SharedSnapshot::default();
        engine.apply(created("s-1")).await.unwrap();
        let mut a = start(&engine, &Filter::All, None, &shared);
        assert_eq!((a.covered, replayed(&mut a)), (1, vec![]));
        engine.apply(created("s-2")).await.unwrap();
        tokio::time::sleep(SHARE_INITIAL_FOR / 2).await;
        // The same snapshot, not copied, then what came since from the replay ring.
        let mut b = start(&engine, &Filter::All, None, &shared);
        let first_a = a.first.take().unwrap().chunk();
        let first_b = b.first.take().unwrap().chunk();
        assert_eq!(first_a.as_ptr(), first_b.as_ptr());
        assert_eq!((b.covered, replayed(&mut b)), (1, vec![2]));
        // Resuming and filtered streams read their own.
        let c = start(&engine, &Filter::All, Some(0), &shared);
        assert!(c.first.is_none());
        let d = start(&engine, &Filter::Battle("s-2".into()), None, &shared);
        assert_ne!(d.first.unwrap().chunk().as_ptr(), first_a.as_ptr());
        // A second after it, a new one.
        tokio::time::sleep(SHARE_INITIAL_FOR / 2).await;
        let mut e = start(&engine, &Filter::All, None, &shared);
        let first_e = e.first.clone().unwrap();
        assert_ne!(first_e.chunk().as_ptr(), first_a.as_ptr());
        assert_eq!((e.covered, replayed(&mut e)), (2, vec![]));
        let event = String::from_utf8(first_e.event().to_vec()).unwrap();
        assert!(event.starts_with("event: snapshot\nid: 2\n"), "{event}");
        assert!(event.contains("s-2") && event.ends_with("\n\n"), "{event}");
        engine.shutdown().await;
    }

    #[tokio::test]
    async fn without_a_replay_ring_the_snapshot_is_not_shared() {
        let engine = Engine::builder().replay_capacity(0).start().await.unwrap();
        let shared = SharedSnapshot::default();
        let a = start(&engine, &Filter::All, None, &shared);
        engine.apply(created("r-1")).await.unwrap();
        let b = start(&engine, &Filter::All, None, &shared);
        assert_eq!((a.covered, b.covered), (0, 1));
        engine.shutdown().await;
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
    async fn streams_share_one_rendered_event_per_notification_and_never_across_engines() {
        let (one, two) = (
            Engine::builder().start().await.unwrap(),
            Engine::builder().start().await.unwrap(),
        );
        // Past the seqs other tests render (the cache is the process's), so that none of
        // them takes this slot between the two look-ups below.
        for engine in [&one, &two] {
            // (With no listener and no replay ring, as here, changes are not numbered.)
            let _listening = engine.subscribe(Filter::All);
            for i in 0..99 {
                engine.apply(created(&format!("warm-{i}"))).await.unwrap();
            }
        }
        let n1 = first_notification(&one, "engine-one").await;
        let n2 = first_notification(&two, "engine-two").await;
        assert_eq!(n1.seq, 100);
        assert_eq!(n1.seq, n2.seq, "same seq, different notifications");
        let (a, b) = (rendered(&n1).unwrap(), rendered(&n1).unwrap());
        assert_eq!(
            a.as_ptr(),
            b.as_ptr(),
            "the second stream reuses the first one's buffer"
        );
        let json = serde_json::to_string(&*n1).unwrap();
        assert_eq!(
            &a[..],
            format!("event: battle\nid: {}\ndata: {json}\n\n", n1.seq).as_bytes()
        );
        let c = String::from_utf8(rendered(&n2).unwrap().to_vec()).unwrap();
        assert!(c.contains("engine-two") && !c.contains("engine-one"));
        assert!(String::from_utf8_lossy(&rendered(&n1).unwrap()).contains("engine-one"));
        one.shutdown().await;
        two.shutdown().await;
    }

    #[tokio::test]
    async fn a_keep_alive_goes_out_when_its_interval_ticks_and_events_never_wait() {
        let engine = Engine::builder().start().await.unwrap();
        let every = Duration::from_secs(3600);
        // The stream's interval first ticks one interval after it opens, not at once.
        let mut first = keep_alive(every);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(first.poll_tick(&mut cx).is_pending());
        // An interval due now: the comment goes out, then an event at once, then nothing
        // until the next tick.
        let mut events = Events {
            feed: feed(&engine, None, 0),
            keep_alive: tokio::time::interval_at(tokio::time::Instant::now(), every),
        };
        assert_eq!(&events.next().await.unwrap().unwrap()[..], KEEP_ALIVE);
        engine.apply(created("busy")).await.unwrap();
        let event = events.next().await.unwrap().unwrap();
        assert!(
            event.starts_with(b"event: battle\nid: 1\ndata: {"),
            "{event:?}"
        );
        let next = tokio::time::timeout(Duration::from_millis(50), events.next()).await;
        assert!(next.is_err(), "nothing before the next tick: {next:?}");
        engine.shutdown().await;
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

    // (Real time: the server's tests run without tokio's test-util; the assertion is a lower
    // bound, which a timer guarantees.)
    #[tokio::test]
    async fn a_subscriber_that_lags_again_gets_at_most_one_fresh_snapshot_a_second() {
        let engine = Engine::builder().channel_capacity(2).start().await.unwrap();
        let mut feed = feed(&engine, None, 0);
        let lag = |engine: Engine, round: u32| async move {
            for i in 0..5 {
                engine
                    .apply(created(&format!("again-{round}-{i}")))
                    .await
                    .unwrap();
            }
        };
        lag(engine.clone(), 1).await;
        let started = tokio::time::Instant::now();
        assert!(matches!(feed.next_item().await, Some(Item::Snapshot(_))));
        lag(engine.clone(), 2).await;
        let Some(Item::Snapshot(s)) = feed.next_item().await else {
            panic!("expected a second fresh snapshot");
        };
        assert!(
            started.elapsed() >= LAG_SNAPSHOT_EVERY,
            "the second came {:?} after the first",
            started.elapsed()
        );
        // Read when it is sent: it covers what came during the pause.
        assert_eq!((s.reason, s.seq), ("lagged", 10));
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
            first: Item::Snapshot(first).into_frame(),
            covered: 1,
            ..subscribed
        };
        assert!(matches!(feed.next_item().await, Some(Item::Rendered(_))));
        quiet(&mut feed).await;
        engine.apply(created("s-2")).await.unwrap();
        assert!(matches!(feed.next_item().await, Some(Item::Battle(n)) if n.seq == 2));
        engine.shutdown().await;
    }
}
