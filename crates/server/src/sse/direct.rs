//! Event streams written straight to their sockets: a notification is written to every stream of
//! a lane by one task, instead of waking and polling a task per stream.
//!
//! The listener ([`crate::listener`]) reads each new connection's request head; a plain
//! `GET` of an event stream ([`parse_head`]) is served here, everything else by axum. The events
//! and their order are the same as axum's streams (`super`): a snapshot or a resumption, then
//! every notification after it, a fresh snapshot after a lag, a keep-alive comment every
//! `sse_keep_alive`.
//!
//! * A **lane** is one engine subscription for one filter and a list of streams; a filter with
//!   many streams has one lane per tokio worker, streams dealt round-robin, so that a
//!   notification for 10,000 streams is two wake-ups and two loops of non-blocking writes (each
//!   yielding to other tasks every tokio budget) instead of 10,000 task wake-ups and polls.
//! * A **stream** is a socket and what waits for it ([`Out`]). A lane writes an event at once when
//!   nothing waits before it; what the socket does not take waits in the stream's queue, which
//!   the stream's own task writes once the socket is writable. The task also watches the socket
//!   for the client's close and the server's shutdown.
//! * **Joining**: a stream is put in its lane *holding* (the lane keeps what it would write, with
//!   its `seq`), then its start is read (snapshot, or replay after `Last-Event-ID`), then it is
//!   released: the start goes out, then what was held and is newer. So no notification falls
//!   between the start and the lane, and none is sent twice.
//! * **Lag**: a stream more events behind than a subscription may fall
//!   ([`Engine::lag_limit`]: 8,192 in the server, or 64 for one battle or room) drops the waiting events (the rest of one begun is
//!   still written), skips what follows, and once its queue is written starts again with a
//!   fresh snapshot (`reason: "lagged"`), as axum's streams do when their subscription lags.
//!   Waiting events share the lane's buffers: a stream's queue costs a pointer per event. A
//!   lane whose subscription lags makes each of its streams lag. A lagging stream gets at most
//!   one fresh snapshot a second (each is up to 10,000 battles, megabytes).
//! * **Catching up**: the events that come while a client reads its start (a snapshot of
//!   megabytes takes a reader tens of milliseconds, in which thousands of events may come) do
//!   not count against the limit alone: from its start until it is back within the limit, a
//!   stream may be up to [`CATCH_UP`] times the limit behind. Otherwise a client reading as fast
//!   as its socket could never recover from a lag under a high event rate (each fresh snapshot
//!   would make it lag again).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::Method;
use dashmap::DashMap;
use futures_util::Stream as _;
use livebattle_engine::{Delivery, Filter, Notification, Subscription};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    last_event_id_value, rendered, snapshot, start, Item, Open, KEEP_ALIVE, LAG_SNAPSHOT_EVERY,
};
use crate::state::AppState;

/// A request head the listener read: an event stream served here, something else, or not
/// complete yet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// A plain event-stream request: served by [`serve`].
    Stream {
        /// Which events.
        filter: Filter,
        /// The route template, for the HTTP counters.
        route: &'static str,
        /// `Last-Event-ID`, when given and a number.
        last_event_id: Option<u64>,
    },
    /// Anything else (another route or method, a body, an upgrade, an encoded path segment,
    /// more bytes after the head…): for axum.
    Other,
    /// Could still become a [`Head::Stream`]: read more.
    Partial,
}

/// The most bytes the listener reads looking for a request head.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// Classifies the first bytes read from a new connection.
pub(crate) fn parse_head(bytes: &[u8]) -> Head {
    const PREFIX: &[u8] = b"GET /v1/";
    let n = bytes.len().min(PREFIX.len());
    if bytes[..n] != PREFIX[..n] {
        return Head::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(bytes) {
        // Bytes after the head (a pipelined request) are axum's to serve.
        Ok(httparse::Status::Complete(len)) if len == bytes.len() => {}
        Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => return Head::Partial,
        _ => return Head::Other,
    }
    if request.version != Some(1) {
        return Head::Other;
    }
    let Some((filter, route)) = request.path.and_then(route_of) else {
        return Head::Other;
    };
    let mut last_event_id = None;
    for h in request.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return Head::Other;
            }
        } else if ["transfer-encoding", "upgrade", "expect"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            return Head::Other;
        } else if name.eq_ignore_ascii_case("last-event-id") && last_event_id.is_none() {
            last_event_id = Some(last_event_id_value(h.value));
        }
    }
    Head::Stream {
        filter,
        route,
        last_event_id: last_event_id.flatten(),
    }
}

/// The event-stream routes, with ids of unreserved characters only (anything percent-encoded
/// is axum's to decode); a query is ignored, as axum's routes ignore it.
fn route_of(target: &str) -> Option<(Filter, &'static str)> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == "/v1/events" {
        return Some((Filter::All, "/v1/events"));
    }
    let id = |prefix: &str| {
        let id = path.strip_prefix(prefix)?.strip_suffix("/events")?;
        let plain = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        (plain && !id.is_empty() && id != "." && id != "..").then(|| id.to_owned())
    };
    if let Some(id) = id("/v1/battles/") {
        return Some((Filter::Battle(id), "/v1/battles/{battle_id}/events"));
    }
    id("/v1/rooms/").map(|id| (Filter::Room(id), "/v1/rooms/{room_id}/events"))
}

/// Serves an event stream on `socket`, whose request head has been read: answers `200` and
/// runs the stream on its own task until the client leaves or the server shuts down.
pub(crate) fn serve(
    state: AppState,
    socket: TcpStream,
    filter: Filter,
    route: &'static str,
    last_event_id: Option<u64>,
) {
    state.http_metrics().record(route, &Method::GET, 200);
    tracing::debug!(method = "GET", route, status = 200, "request");
    tokio::spawn(run(state, socket, filter, last_event_id));
}

/// The response head: hyper's for the same stream (chunked, dated).
fn response_head() -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\ntransfer-encoding: chunked\r\ndate: {}\r\n\r\n",
        httpdate::fmt_http_date(std::time::SystemTime::now())
    )
}

/// `data` as one HTTP/1.1 chunk.
pub(crate) fn chunk(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One stream's task: the head, then joining its lane and serving until the client leaves or
/// the server shuts down (when it ends the body and closes).
async fn run(state: AppState, mut socket: TcpStream, filter: Filter, last_event_id: Option<u64>) {
    let _open = Open::new(state.sse_streams());
    // Each event is a whole message: no waiting for the client's acknowledgement of the last.
    let _ = socket.set_nodelay(true);
    if socket.write_all(response_head().as_bytes()).await.is_err() {
        return;
    }
    let stream = Arc::new(Stream {
        socket,
        limit: state.engine().lag_limit(&filter),
        out: Mutex::new(Out {
            holding: true,
            ..Out::default()
        }),
        wake: Notify::new(),
        slot: AtomicUsize::new(0),
    });
    let lanes = state.sse_lanes();
    let (key, lane) = lanes.join(&state, filter.clone(), &stream);
    let mut shutdown = std::pin::pin!(state.shutdown_signal());
    let mut resume = Resume::LastEventId(last_event_id);
    let mut lagged_at: Option<tokio::time::Instant> = None;
    let ended = loop {
        let (start, covered) = begin(&state, &filter, resume);
        stream.release(start, covered);
        match stream.serve(shutdown.as_mut()).await {
            Ended::Lagged => {
                // A client slower than the notifications lags again and again, and each fresh
                // snapshot (up to 10,000 battles, megabytes) costs the server: at most one a
                // second per stream. Meanwhile it holds nothing more than it may.
                if let Some(at) = lagged_at {
                    let until = at + LAG_SNAPSHOT_EVERY;
                    if let Some(ended) = stream.pause(until, shutdown.as_mut()).await {
                        break ended;
                    }
                }
                lagged_at = Some(tokio::time::Instant::now());
                resume = Resume::Lagged;
            }
            other => break other,
        }
    };
    stream.finish(ended == Ended::Shutdown);
    lanes.leave(&key, &lane, &stream);
}

/// The most queued chunks one write of a stream takes (`writev`).
const WRITE_BATCH: usize = 64;

/// How many times its lag limit a stream may be behind while it catches up after its start.
pub(crate) const CATCH_UP: usize = 4;

/// How long a stream's socket may take nothing while bytes wait for it: then the client is not
/// reading, and the stream is closed (what waits for it — its start, up to megabytes — is
/// freed). A client that reads, however slowly, is not affected.
pub(crate) const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How a stream (re)starts.
enum Resume {
    /// Its request's `Last-Event-ID`, if any.
    LastEventId(Option<u64>),
    /// It fell behind: a fresh snapshot.
    Lagged,
}

/// What a stream starts with and the `seq` it covers: the start rule shared with axum's streams
/// ([`start`]); a replay (up to the ring's 100,000 notifications) is taken at once but rendered
/// only as the socket gets to it, as axum's stream renders it.
fn begin(state: &AppState, filter: &Filter, resume: Resume) -> (Vec<Waiting>, u64) {
    let engine = state.engine();
    let fresh = |reason| {
        let s = snapshot(engine, filter, reason);
        let seq = s.seq;
        let frame = Item::Snapshot(s).into_frame();
        (
            frame
                .map(|f| Waiting::Chunk(chunk(&f), false))
                .into_iter()
                .collect(),
            seq,
        )
    };
    match resume {
        Resume::Lagged => fresh("lagged"),
        Resume::LastEventId(id) => {
            let mut start = start(engine, filter, id, state.sse_shared_snapshot());
            let mut waiting: Vec<Waiting> = start
                .first
                .take()
                .map(|first| Waiting::Chunk(first.chunk(), false))
                .into_iter()
                .collect();
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut covered = start.covered;
            loop {
                match Pin::new(&mut start.subscription).poll_next(&mut cx) {
                    Poll::Ready(Some(Delivery::Notification(n))) if n.seq > covered => {
                        covered = n.seq;
                        waiting.push(Waiting::Replay(n));
                    }
                    Poll::Ready(Some(Delivery::Notification(_))) => {}
                    Poll::Ready(Some(Delivery::Lagged { .. })) => break fresh("lagged"),
                    Poll::Ready(None) | Poll::Pending => return (waiting, covered),
                }
            }
        }
    }
}

/// What waits for a stream's socket.
#[derive(Debug, PartialEq)]
enum Waiting {
    /// An HTTP chunk, or the rest of one (`true`: an event the lane offered, counted in
    /// `Out::behind`; a start's chunks and keep-alives are not).
    Chunk(Bytes, bool),
    /// A replayed notification, rendered when the socket gets to it.
    Replay(Arc<Notification>),
}

/// How a stream's serving ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// It fell behind and has written what it had: start again with a fresh snapshot.
    Lagged,
    /// The client left, a write failed, or the engine is gone.
    Closed,
    /// The server is shutting down.
    Shutdown,
}

/// A socket and what waits for it.
struct Stream {
    socket: TcpStream,
    /// How many events may wait before the stream lags.
    limit: usize,
    out: Mutex<Out>,
    /// Rung when the queue gains bytes the lane could not write, or the stream is closed.
    wake: Notify,
    /// Where the stream is in its lane's list (kept under the lane's lock), so that leaving
    /// is a swap, not a search — 10,000 clients leaving at once would otherwise cost
    /// 50 million comparisons under the lock the lane delivers with.
    slot: AtomicUsize,
}

/// What a stream has sent and what waits, under its lock.
#[derive(Default)]
struct Out {
    /// Notifications up to this `seq` are sent, queued or covered by what was.
    covered: u64,
    /// Joining: the lane's events are kept in `held`, not written.
    holding: bool,
    held: Vec<(u64, Bytes)>,
    /// The newest `seq` dropped while holding (past the limit).
    dropped_upto: u64,
    /// What the socket has not taken yet, in order.
    queue: VecDeque<Waiting>,
    /// Offered events waiting in the queue.
    behind: usize,
    /// The queue's first buffer is the rest of an event partly written.
    begun: bool,
    /// Fell behind: events are skipped until the queue is written and a snapshot sent.
    lagged: bool,
    /// Since its start was queued and until it is back within the limit (or has written all):
    /// the stream may be [`CATCH_UP`] times the limit behind.
    catching_up: bool,
    /// The socket failed, the engine is gone or the stream ended.
    closed: bool,
    /// Bytes the socket took, in all (how the task sees that a blocked stream moves).
    written: u64,
}

/// What the stream's task waits for next.
enum Step {
    Idle,
    /// The socket takes no more now; `written`: [`Out::written`].
    Blocked {
        written: u64,
    },
    Done(Ended),
}

impl Stream {
    fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lane's `chunk` for this stream: a notification's or snapshot's (`seq`), or a
    /// keep-alive (`None`). Written at once when nothing waits before it.
    fn offer(&self, seq: Option<u64>, chunk: &Bytes) {
        let mut out = self.out();
        if out.closed {
            return;
        }
        if out.holding {
            // Once too much was held, nothing more is, and the stream lags — unless the start
            // it is reading covers all it dropped (see `release`).
            let Some(seq) = seq else {
                return;
            };
            if out.lagged {
                out.dropped_upto = out.dropped_upto.max(seq);
                return;
            }
            out.held.push((seq, chunk.clone()));
            if out.held.len() > self.limit {
                let upto = out.held.iter().map(|(s, _)| *s).max().unwrap_or(seq);
                out.dropped_upto = out.dropped_upto.max(upto);
                out.held.clear();
                out.lagged = true;
            }
            return;
        }
        if let Some(seq) = seq {
            if seq <= out.covered {
                return;
            }
            out.covered = seq;
        }
        if out.lagged || (seq.is_none() && !out.queue.is_empty()) {
            return;
        }
        let event = seq.is_some();
        if out.queue.is_empty() {
            match self.socket.try_write(chunk) {
                Ok(n) if n == chunk.len() => return,
                Ok(n) => out.enqueue(chunk.slice(n..), n > 0, event, self.limit),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.enqueue(chunk.clone(), false, event, self.limit)
                }
                Err(_) => out.closed = true,
            }
        } else {
            out.enqueue(chunk.clone(), false, event, self.limit);
        }
        drop(out);
        self.wake.notify_one();
    }

    /// Ends holding: `start` (covering up to `covered`) goes out first, then what the lane held
    /// that is newer.
    fn release(&self, start: Vec<Waiting>, covered: u64) {
        let mut out = self.out();
        let out = &mut *out;
        out.covered = covered;
        if out.lagged && out.dropped_upto <= covered {
            // Everything dropped while holding is in the start: nothing was lost.
            out.lagged = false;
        }
        out.dropped_upto = 0;
        out.catching_up = true;
        out.queue.extend(start);
        for (seq, frame) in std::mem::take(&mut out.held) {
            if seq > out.covered {
                out.covered = seq;
                out.queue.push_back(Waiting::Chunk(frame, true));
                out.behind += 1;
            }
        }
        out.holding = false;
    }

    /// Ends the stream: nothing more is written; at shutdown a body whose every chunk went out
    /// gets its last chunk (one cut mid-chunk is just closed).
    fn finish(&self, shutdown: bool) {
        let mut out = self.out();
        out.closed = true;
        if shutdown && out.queue.is_empty() {
            let _ = self.socket.try_write(LAST_CHUNK);
        }
    }

    /// Writes what waits, watches for the client leaving and for shutdown, until the stream
    /// lags (its queue written), closes or the server shuts down.
    async fn serve(&self, mut shutdown: Pin<&mut impl Future<Output = ()>>) -> Ended {
        // While blocked: the bytes written when the socket last took some, and the time.
        let mut moved: Option<(u64, tokio::time::Instant)> = None;
        loop {
            let stall = match self.step() {
                Step::Done(ended) => return ended,
                Step::Idle => {
                    moved = None;
                    None
                }
                Step::Blocked { written } => {
                    let since = match moved {
                        Some((w, since)) if w == written => since,
                        _ => tokio::time::Instant::now(),
                    };
                    moved = Some((written, since));
                    Some(since + STALL_LIMIT)
                }
            };
            let blocked = stall.is_some();
            tokio::select! {
                // Also while blocked: a close from outside must be heard.
                _ = self.wake.notified() => {}
                () = async {
                    match stall {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                }, if blocked => {
                    tracing::debug!("an event stream's client read nothing for {STALL_LIMIT:?}; closed");
                    self.out().closed = true;
                    return Ended::Closed;
                }
                _ = self.socket.writable(), if blocked => {}
                _ = self.socket.readable() => {
                    if self.client_left() {
                        return Ended::Closed;
                    }
                }
                () = shutdown.as_mut() => return Ended::Shutdown,
            }
        }
    }

    /// Waits until `until`, or until the client leaves or the server shuts down (then how the
    /// stream ended).
    async fn pause(
        &self,
        until: tokio::time::Instant,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Ended> {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return None,
                _ = self.socket.readable() => {
                    if self.client_left() {
                        return Some(Ended::Closed);
                    }
                }
                () = shutdown.as_mut() => return Some(Ended::Shutdown),
            }
        }
    }

    /// Writes the queue as far as the socket takes it, up to [`WRITE_BATCH`] chunks per write:
    /// a stream that is behind sends its events in large segments, not one segment each (a
    /// client with a small receive buffer is charged far more for many small segments than for
    /// their bytes, and would fall further behind).
    fn step(&self) -> Step {
        let mut guard = self.out();
        let out = &mut *guard;
        while !out.closed && !out.queue.is_empty() {
            // Replays are rendered as the socket gets to them.
            for waiting in out.queue.iter_mut().take(WRITE_BATCH) {
                if let Waiting::Replay(n) = waiting {
                    let bytes = match rendered(n) {
                        Ok(f) => chunk(&f),
                        Err(e) => {
                            tracing::error!(error = %e, "could not serialise an SSE event");
                            Bytes::new()
                        }
                    };
                    *waiting = Waiting::Chunk(bytes, false);
                }
            }
            let (written, total) = {
                let mut slices = [io::IoSlice::new(&[]); WRITE_BATCH];
                let (mut used, mut total) = (0, 0);
                for (slice, waiting) in slices.iter_mut().zip(out.queue.iter()) {
                    if let Waiting::Chunk(bytes, _) = waiting {
                        *slice = io::IoSlice::new(bytes);
                        used += 1;
                        total += bytes.len();
                    }
                }
                (self.socket.try_write_vectored(&slices[..used]), total)
            };
            let mut n = match written {
                // (A socket that takes nothing of something is gone, as for `write_all`.)
                Ok(0) if total > 0 => {
                    out.closed = true;
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Step::Blocked {
                        written: out.written,
                    }
                }
                Err(_) => {
                    out.closed = true;
                    break;
                }
            };
            out.written += n as u64;
            // Whole chunks leave the queue; a chunk written in part keeps its rest.
            while let Some(Waiting::Chunk(bytes, counted)) = out.queue.front_mut() {
                if n < bytes.len() {
                    if n > 0 {
                        *bytes = bytes.slice(n..);
                        out.begun = true;
                    }
                    break;
                }
                n -= bytes.len();
                if *counted {
                    // (Events queue behind the start: it is written.)
                    out.behind -= 1;
                    if out.behind <= self.limit {
                        out.catching_up = false;
                    }
                }
                out.queue.pop_front();
                out.begun = false;
            }
        }
        if out.queue.is_empty() {
            out.catching_up = false;
        }
        if out.closed {
            Step::Done(Ended::Closed)
        } else if out.lagged {
            out.lagged = false;
            out.holding = true;
            Step::Done(Ended::Lagged)
        } else {
            Step::Idle
        }
    }

    /// Whether the client closed its side (what it sends is read and ignored).
    fn client_left(&self) -> bool {
        let mut scratch = [0u8; 512];
        match self.socket.try_read(&mut scratch) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Lags from outside (its lane fell behind).
    fn lag(&self) {
        let mut out = self.out();
        if out.closed {
            return;
        }
        out.lag();
        drop(out);
        self.wake.notify_one();
    }

    /// Ends the stream from outside (the engine is gone).
    fn close(&self) {
        self.out().closed = true;
        self.wake.notify_one();
    }
}

impl Out {
    /// Queues an offered chunk's `bytes` (`begun`: the rest of one partly written; `event`: an
    /// event, not a keep-alive); more than `limit` events behind (`CATCH_UP` times that while
    /// catching up), the stream lags and keeps only what it began writing.
    fn enqueue(&mut self, bytes: Bytes, begun: bool, event: bool, limit: usize) {
        if self.queue.is_empty() {
            self.begun = begun;
        }
        self.queue.push_back(Waiting::Chunk(bytes, event));
        self.behind += usize::from(event);
        let allowed = if self.catching_up {
            limit.saturating_mul(CATCH_UP)
        } else {
            limit
        };
        if self.behind > allowed {
            self.lag();
        }
    }

    /// Falls behind: what waits is dropped but a chunk begun, and events are skipped until the
    /// stream starts again with a fresh snapshot. Holding, it drops what it held and will not
    /// count on its start to cover it.
    fn lag(&mut self) {
        self.lagged = true;
        if self.holding {
            self.held.clear();
            self.dropped_upto = u64::MAX;
            return;
        }
        self.queue.truncate(usize::from(self.begun));
        self.behind = self
            .queue
            .iter()
            .filter(|w| matches!(w, Waiting::Chunk(_, true)))
            .count();
    }
}

/// A lane's key: the filter and the lane's number among that filter's.
type LaneKey = (Filter, usize);

/// Every lane of the server.
#[derive(Default)]
pub struct Lanes {
    map: DashMap<LaneKey, Arc<Lane>>,
    next: AtomicUsize,
}

/// One subscription and the streams it writes to.
struct Lane {
    streams: Mutex<Vec<Arc<Stream>>>,
    /// Cancelled when the lane's last stream left.
    stop: CancellationToken,
}

impl Lane {
    fn streams(&self) -> MutexGuard<'_, Vec<Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Lanes {
    /// How many lanes are open (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no lane is open.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Puts `stream` in a lane of `filter`, starting the lane (its subscription first) when
    /// there is none.
    fn join(&self, state: &AppState, filter: Filter, stream: &Arc<Stream>) -> (LaneKey, Arc<Lane>) {
        let per_filter = tokio::runtime::Handle::try_current()
            .map_or(1, |h| h.metrics().num_workers())
            .max(1);
        let key = (
            filter,
            self.next.fetch_add(1, Ordering::Relaxed) % per_filter,
        );
        let lane = match self.map.entry(key.clone()) {
            dashmap::Entry::Occupied(e) => {
                let lane = e.get().clone();
                let mut streams = lane.streams();
                stream.slot.store(streams.len(), Ordering::Relaxed);
                streams.push(stream.clone());
                drop(streams);
                lane
            }
            dashmap::Entry::Vacant(v) => {
                let lane = Arc::new(Lane {
                    streams: Mutex::new(vec![stream.clone()]),
                    // (`slot` 0: the first of the list.)
                    stop: CancellationToken::new(),
                });
                let subscription = state.engine().subscribe(key.0.clone());
                tokio::spawn(run_lane(
                    state.clone(),
                    key.clone(),
                    lane.clone(),
                    subscription,
                ));
                v.insert(lane.clone());
                lane
            }
        };
        (key, lane)
    }

    /// Takes `stream` out of its lane, and the lane away when it was the last.
    fn leave(&self, key: &LaneKey, lane: &Arc<Lane>, stream: &Arc<Stream>) {
        let empty = {
            let mut streams = lane.streams();
            let slot = stream.slot.load(Ordering::Relaxed);
            let at = if streams.get(slot).is_some_and(|s| Arc::ptr_eq(s, stream)) {
                Some(slot)
            } else {
                streams.iter().position(|s| Arc::ptr_eq(s, stream))
            };
            if let Some(at) = at {
                streams.swap_remove(at);
                if let Some(moved) = streams.get(at) {
                    moved.slot.store(at, Ordering::Relaxed);
                }
            }
            streams.is_empty()
        };
        if empty
            && self
                .map
                .remove_if(key, |_, l| Arc::ptr_eq(l, lane) && l.streams().is_empty())
                .is_some()
        {
            lane.stop.cancel();
        }
    }
}

/// A lane's task: each notification (or keep-alive) rendered once and offered to every stream
/// of the lane. When the lane itself falls behind, each of its streams lags: each starts again
/// with its own fresh snapshot (at most one a second), not one the lane would queue to all.
async fn run_lane(state: AppState, key: LaneKey, lane: Arc<Lane>, mut subscription: Subscription) {
    let mut keep_alive = super::keep_alive(state.sse_keep_alive());
    let keep_alive_chunk = chunk(KEEP_ALIVE);
    let mut shutdown = std::pin::pin!(state.shutdown_signal());
    loop {
        let (seq, frame) = tokio::select! {
            biased;
            () = lane.stop.cancelled() => return,
            () = shutdown.as_mut() => return,
            delivery = subscription.next() => {
                let n = match delivery {
                    Some(Delivery::Notification(n)) => n,
                    Some(Delivery::Lagged { missed }) => {
                        tracing::debug!(missed, "SSE lane lagged; its streams start again");
                        for s in lane.streams().iter() {
                            s.lag();
                        }
                        continue;
                    }
                    None => {
                        // The engine is gone: no stream joins this lane any more, and those
                        // in it end.
                        state.sse_lanes().map.remove_if(&key, |_, l| Arc::ptr_eq(l, &lane));
                        for s in lane.streams().iter() {
                            s.close();
                        }
                        return;
                    }
                };
                let seq = n.seq;
                match Item::Battle(n).into_frame() {
                    Some(frame) => (Some(seq), chunk(&frame)),
                    None => continue,
                }
            }
            _ = keep_alive.tick() => (None, keep_alive_chunk.clone()),
        };
        let streams = lane.streams().clone();
        for stream in &streams {
            stream.offer(seq, &frame);
            tokio::task::consume_budget().await;
        }
    }
}

#[cfg(test)]
mod tests {

    use std::time::Duration;

    use livebattle_engine::{Created, Engine, Event};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;
    use crate::config::Config;

    /// A connected pair: the client (its receive buffer `rcvbuf` bytes when given) and the
    /// server's socket.
    async fn pair(rcvbuf: Option<u32>) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n).unwrap();
        }
        let client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    async fn state(capacity: usize) -> AppState {
        let engine = Engine::builder()
            .channel_capacity(capacity)
            .start()
            .await
            .unwrap();
        let mut config = Config::default();
        config.ingest.apps = vec![livebattle_ingest::AppConfig::with_token("1400000001", "t")];
        AppState::new(engine, &config).unwrap()
    }

    fn created(id: String, extension: &str) -> Event {
        Event::Created(Created {
            battle_id: id.clone(),
            from_room: Some(format!("{id}-a")),
            to_rooms: vec![format!("{id}-b")],
            duration_ms: Some(60_000),
            need_response: Some(false),
            extension_info: Some(extension.to_owned()),
            ..Default::default()
        })
    }

    /// One SSE event read off the wire.
    #[derive(Debug)]
    struct Event_ {
        name: String,
        id: u64,
        data: String,
    }

    /// Reads a chunked SSE response: the head, then events.
    #[derive(Default)]
    struct Wire {
        raw: Vec<u8>,
        /// Where the next chunk starts, once the head is read.
        at: Option<usize>,
        body: Vec<u8>,
        events: Vec<Event_>,
        ended: bool,
    }

    impl Wire {
        /// Reads until `done` holds for the events read, within 20 s.
        async fn until(&mut self, socket: &mut TcpStream, done: impl Fn(&[Event_]) -> bool) {
            let read = async {
                let mut buf = vec![0u8; 64 * 1024];
                while !done(&self.events) {
                    let n = socket.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the stream closed; events: {:?}", self.events.len());
                    self.push(&buf[..n]);
                }
            };
            tokio::time::timeout(Duration::from_secs(20), read)
                .await
                .expect("the events within 20 s");
        }

        fn push(&mut self, bytes: &[u8]) {
            self.raw.extend_from_slice(bytes);
            if self.at.is_none() {
                let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return;
                };
                let head = String::from_utf8_lossy(&self.raw[..end]).to_lowercase();
                assert!(head.starts_with("http/1.1 200 ok"), "{head}");
                assert!(head.contains("content-type: text/event-stream"), "{head}");
                assert!(head.contains("transfer-encoding: chunked"), "{head}");
                self.at = Some(end + 4);
            }
            while let Some(at) = self.at {
                let rest = &self.raw[at..];
                let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                    break;
                };
                let len =
                    usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
                if rest.len() < eol + 2 + len + 2 {
                    break;
                }
                if len == 0 {
                    self.ended = true;
                }
                self.body.extend_from_slice(&rest[eol + 2..eol + 2 + len]);
                self.at = Some(at + eol + 2 + len + 2);
            }
            while let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let text = String::from_utf8(self.body.drain(..end + 2).collect()).unwrap();
                let mut event = Event_ {
                    name: String::new(),
                    id: 0,
                    data: String::new(),
                };
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event.name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        event.id = v.parse().unwrap();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        event.data = v.to_owned();
                    }
                }
                if !event.name.is_empty() {
                    self.events.push(event);
                }
            }
        }
    }

    /// A client (its receive buffer 4 KiB) on a stream of every battle, its first event read.
    async fn slow_client(state: &AppState) -> (TcpStream, Wire) {
        let (mut client, server) = pair(Some(4096)).await;
        serve(state.clone(), server, Filter::All, "/v1/events", None);
        let mut wire = Wire::default();
        wire.until(&mut client, |e| !e.is_empty()).await;
        (client, wire)
    }

    /// `batches` batches of 10 new battles, each with 8 KiB of `ExtensionInfo` (80 KiB a batch).
    async fn flood(engine: &Engine, prefix: &str, batches: usize) {
        let extension = "x".repeat(8 * 1024);
        for batch in 0..batches {
            let events = (0..10)
                .map(|i| created(format!("{prefix}-{batch}-{i}"), &extension))
                .collect();
            for r in engine.apply_batch(events).await {
                r.unwrap();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_for_the_stall_limit_is_closed() {
        let state = state(64).await;
        let engine = state.engine().clone();
        let (mut client, _) = slow_client(&state).await;
        // ≈ 8 MiB the client never reads: more than the sockets' buffers hold.
        flood(&engine, "stall", 100).await;
        tokio::time::sleep(STALL_LIMIT - Duration::from_secs(1)).await;
        assert_eq!(state.sse_streams().get(), 1, "open before the limit");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(state.sse_streams().get(), 0, "closed after it");
        // What was in flight reaches the client, then the end.
        let mut buf = vec![0u8; 64 * 1024];
        while client.read(&mut buf).await.unwrap() > 0 {}
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_lags_then_gets_a_fresh_snapshot_and_all_after() {
        // Streams lag 64 events behind; the lane itself never falls behind by that much.
        let state = state(64).await;
        let engine = state.engine().clone();
        let (mut client, mut wire) = slow_client(&state).await;
        assert_eq!(wire.events[0].name, "snapshot");
        // ≈ 24 MiB of events the client does not read: more than the sockets' buffers and
        // the queue hold.
        flood(&engine, "lag", 300).await;
        let last = engine.last_seq();
        assert_eq!(last, 3000);
        wire.until(&mut client, |e| e.last().is_some_and(|e| e.id == last))
            .await;
        let lagged = |e: &Event_| e.name == "snapshot" && e.data.contains("\"reason\":\"lagged\"");
        assert!(
            wire.events[1..].iter().any(lagged),
            "a fresh snapshot after a lag"
        );
        let ids: Vec<u64> = wire.events.iter().map(|e| e.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids strictly increase (no event twice, none out of order)"
        );
        // After the last fresh snapshot, every notification.
        let more = (0..10).map(|i| created(format!("after-{i}"), "")).collect();
        for r in engine.apply_batch(more).await {
            r.unwrap();
        }
        wire.until(&mut client, |e| e.last().is_some_and(|e| e.id == last + 10))
            .await;
        let lag = wire.events.iter().rposition(lagged).unwrap_or(0);
        let after: Vec<u64> = wire.events[lag + 1..].iter().map(|e| e.id).collect();
        let expected: Vec<u64> = (wire.events[lag].id + 1..=last + 10).collect();
        assert!(
            after == expected,
            "every notification after the fresh snapshot at {}: {} of {}",
            wire.events[lag].id,
            after.len(),
            expected.len()
        );
        assert_eq!(state.sse_streams().get(), 1);
        drop(client);
        gone(&state).await;
        state.engine().shutdown().await;
    }

    /// Waits until no stream is open and no lane left.
    async fn gone(state: &AppState) {
        let wait = async {
            while state.sse_streams().get() > 0 || !state.sse_lanes().is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the stream and its lane go");
    }

    /// Clients come and go on one filter while notifications flow: each client that stayed to
    /// the end heard every notification after its snapshot, in order, once; nothing is left
    /// behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_coming_and_going_while_events_flow_miss_nothing_and_leave_nothing() {
        let state = state(1024).await;
        let mut kept = Vec::new();
        let mut publishers = Vec::new();
        for i in 0..60 {
            // Five notifications race with each client's arrival (and the others' leaving).
            let engine = state.engine().clone();
            publishers.push(tokio::spawn(async move {
                for j in 0..5 {
                    engine
                        .apply(created(format!("churn-{i}-{j}"), ""))
                        .await
                        .unwrap();
                }
            }));
            let (mut client, server) = pair(None).await;
            serve(state.clone(), server, Filter::All, "/v1/events", None);
            let mut wire = Wire::default();
            wire.until(&mut client, |e| !e.is_empty()).await;
            if i % 3 == 0 {
                kept.push((client, wire));
            } // else: gone at once, while events flow
        }
        for p in publishers {
            p.await.unwrap();
        }
        // (Changes made before any listener are not numbered: with no replay ring, nobody
        // would hear them.)
        let last = state.engine().last_seq();
        assert!(last > 250, "{last}");
        for (client, wire) in &mut kept {
            wire.until(client, |e| e.last().is_some_and(|e| e.id == last))
                .await;
            let start = wire.events[0].id;
            let ids: Vec<u64> = wire.events[1..].iter().map(|e| e.id).collect();
            assert_eq!(ids, (start + 1..=last).collect::<Vec<_>>(), "from {start}");
        }
        assert!(
            kept[0].1.events[0].id < 10,
            "the first client joined before most notifications"
        );
        drop(kept);
        gone(&state).await;
        state.engine().shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_share_lanes_and_free_them_when_their_clients_leave() {
        let state = state(1024).await;
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (client, server) = pair(None).await;
            serve(state.clone(), server, Filter::Battle("b".into()), "r", None);
            clients.push(client);
        }
        let (mut other, server) = pair(None).await;
        serve(state.clone(), server, Filter::Room("r".into()), "r", None);
        let mut wires: Vec<Wire> = (0..4).map(|_| Wire::default()).collect();
        for (wire, client) in wires.iter_mut().zip(&mut clients) {
            wire.until(client, |e| !e.is_empty()).await;
        }
        state.engine().apply(created("b".into(), "")).await.unwrap();
        for (wire, client) in wires.iter_mut().zip(&mut clients) {
            wire.until(client, |e| e.len() == 2).await;
            assert_eq!(
                (wire.events[1].name.as_str(), wire.events[1].id),
                ("battle", 1)
            );
        }
        let mut wire = Wire::default();
        wire.until(&mut other, |e| !e.is_empty()).await;
        // A lane per worker for the battle (streams dealt in turn), one for the room.
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        assert_eq!(state.sse_lanes().len(), workers.min(4) + 1);
        drop(clients);
        drop(other);
        gone(&state).await;
        state.engine().shutdown().await;
    }

    #[tokio::test]
    async fn leaving_a_lane_swaps_the_last_stream_into_the_gap() {
        let state = state(1024).await;
        let lanes = state.sse_lanes();
        let mut clients = Vec::new();
        let mut joined = Vec::new();
        for _ in 0..6 {
            let (client, server) = pair(None).await;
            clients.push(client);
            let stream = Arc::new(stream_on(server, 8));
            // One worker here: one lane for the filter.
            joined.push((stream.clone(), lanes.join(&state, Filter::All, &stream)));
        }
        for i in [1, 4, 0] {
            let (stream, (key, lane)) = &joined[i];
            lanes.leave(key, lane, stream);
        }
        let (_, (_, lane)) = &joined[2];
        let left: Vec<usize> = lane
            .streams()
            .iter()
            .enumerate()
            .map(|(at, s)| {
                assert_eq!(
                    s.slot.load(Ordering::Relaxed),
                    at,
                    "its slot is where it is"
                );
                joined.iter().position(|(j, _)| Arc::ptr_eq(j, s)).unwrap()
            })
            .collect();
        assert_eq!(
            left,
            [3, 5, 2],
            "[0..6] less 1, 4 and 0, each gap filled by the last"
        );
        for i in [2, 3, 5] {
            let (stream, (key, lane)) = &joined[i];
            lanes.leave(key, lane, stream);
        }
        assert!(lanes.is_empty(), "the last one took the lane with it");
        state.engine().shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_ends_the_body_and_closes() {
        let state = state(1024).await;
        let (mut client, server) = pair(None).await;
        serve(state.clone(), server, Filter::All, "/v1/events", None);
        let mut wire = Wire::default();
        wire.until(&mut client, |e| !e.is_empty()).await;
        state.begin_shutdown();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("closed within 10 s")
            .unwrap();
        wire.push(&rest);
        assert!(
            wire.ended,
            "the last chunk: {:?}",
            String::from_utf8_lossy(&rest)
        );
        gone(&state).await;
        state.engine().shutdown().await;
    }

    fn stream(filter: Filter, route: &'static str, last_event_id: Option<u64>) -> Head {
        Head::Stream {
            filter,
            route,
            last_event_id,
        }
    }

    #[test]
    fn plain_event_stream_requests_are_served_directly() {
        let battle = "/v1/battles/{battle_id}/events";
        assert_eq!(
            parse_head(b"GET /v1/battles/b-1/events HTTP/1.1\r\nHost: x\r\n\r\n"),
            stream(Filter::Battle("b-1".into()), battle, None)
        );
        assert_eq!(
            parse_head(b"GET /v1/events?x=1 HTTP/1.1\r\nlast-event-ID:  42 \r\n\r\n"),
            stream(Filter::All, "/v1/events", Some(42))
        );
        assert_eq!(
            parse_head(b"GET /v1/rooms/r_1.~/events HTTP/1.1\r\nLast-Event-ID: x\r\ncontent-length: 0\r\n\r\n"),
            stream(Filter::Room("r_1.~".into()), "/v1/rooms/{room_id}/events", None)
        );
    }

    #[test]
    fn anything_else_is_for_axum_and_a_prefix_waits_for_more() {
        for partial in [
            &b"G"[..],
            b"GET /v1",
            b"GET /v1/events HTTP/1.1\r\nHost: x\r\n",
        ] {
            assert_eq!(parse_head(partial), Head::Partial, "{partial:?}");
        }
        for other in [
            &b"POST /callback HTTP/1.1\r\n\r\n"[..],
            b"GET /v1/battles HTTP/1.1\r\n\r\n",
            b"GET /v1/battles/a%2Fb/events HTTP/1.1\r\n\r\n",
            b"GET /v1/battles//events HTTP/1.1\r\n\r\n",
            b"GET /v1/battles/../events HTTP/1.1\r\n\r\n",
            b"GET /v1/battles/a/b/events HTTP/1.1\r\n\r\n",
            b"GET /v1/events/ HTTP/1.1\r\n\r\n",
            b"GET /v1/events HTTP/1.0\r\n\r\n",
            b"GET /v1/events HTTP/1.1\r\ncontent-length: 3\r\n\r\n",
            b"GET /v1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /v1/events HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"GET /v1/events HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /v1/events HTTP/1.1\r\n\r\nGET /v1/time HTTP/1.1\r\n\r\n",
            b"GET /v1/events HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(other),
                Head::Other,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
        // Bare line feeds end a head, as hyper reads them.
        assert_eq!(parse_head(b"GET /v1/time HTTP/1.1\n\n"), Head::Other);
        assert_eq!(
            parse_head(b"GET /v1/events HTTP/1.1\nHost: x\n\n"),
            stream(Filter::All, "/v1/events", None)
        );
        let mut long = b"GET /v1/events HTTP/1.1\r\nx: ".to_vec();
        long.resize(MAX_HEAD, b'a');
        assert_eq!(parse_head(&long), Head::Other, "too long a head");
    }

    #[test]
    fn a_chunk_frames_its_bytes() {
        assert_eq!(
            &chunk(b"0123456789abcdefg")[..],
            b"11\r\n0123456789abcdefg\r\n"
        );
    }

    #[test]
    fn a_full_queue_lags_and_keeps_only_an_event_it_began() {
        let chunk = |b: &'static [u8], counted| Waiting::Chunk(Bytes::from_static(b), counted);
        let mut out = Out::default();
        out.enqueue(Bytes::from_static(b"rest of one"), true, true, 3);
        out.enqueue(Bytes::from_static(b"two"), false, true, 3);
        out.enqueue(Bytes::from_static(b": keep-alive"), false, false, 3);
        out.enqueue(Bytes::from_static(b"three"), false, true, 3);
        assert!(!out.lagged, "a keep-alive does not count");
        out.enqueue(Bytes::from_static(b"four"), false, true, 3);
        assert!(out.lagged);
        assert_eq!(out.queue, [chunk(b"rest of one", true)]);
        assert_eq!(out.behind, 1);
        // A start's chunks do not count.
        let mut started = Out::default();
        started.queue.push_back(chunk(b"snapshot", false));
        started.enqueue(Bytes::from_static(b"one"), false, true, 1);
        assert!(!started.lagged);
        started.enqueue(Bytes::from_static(b"two"), false, true, 1);
        assert!(started.lagged && started.queue.is_empty() && started.behind == 0);
    }

    fn stream_on(socket: TcpStream, limit: usize) -> Stream {
        Stream {
            socket,
            limit,
            out: Mutex::new(Out {
                holding: true,
                ..Out::default()
            }),
            wake: Notify::new(),
            slot: AtomicUsize::new(0),
        }
    }

    #[tokio::test]
    async fn a_join_that_holds_too_much_sends_its_start_then_lags() {
        let (_client, server) = pair(None).await;
        let stream = stream_on(server, 2);
        let event = |n: u8| Bytes::from(vec![n]);
        for seq in 11..=13 {
            stream.offer(Some(seq), &event(seq as u8));
        }
        // Past the limit nothing more is held: not 14, which would follow the start with a
        // gap (11–13 dropped).
        stream.offer(Some(14), &event(14));
        let start = Waiting::Chunk(Bytes::from_static(b"start"), false);
        stream.release(vec![start], 10);
        let out = stream.out();
        assert!(out.lagged);
        assert_eq!(
            out.queue,
            [Waiting::Chunk(Bytes::from_static(b"start"), false)]
        );
        drop(out);
        // Once the start is written, the stream starts again (a fresh snapshot).
        assert!(matches!(stream.step(), Step::Done(Ended::Lagged)));
        assert!(stream.out().holding);
        // Holding again, it overflows again; but this time its start covers all it dropped
        // (a snapshot read after them): no lag.
        for seq in 15..=18 {
            stream.offer(Some(seq), &event(seq as u8));
        }
        let start = Waiting::Chunk(Bytes::from_static(b"fresh"), false);
        stream.release(vec![start], 18);
        assert!(!stream.out().lagged, "nothing was lost");
        assert!(matches!(stream.step(), Step::Idle));
    }

    #[tokio::test]
    async fn while_a_client_reads_its_start_the_stream_may_fall_further_behind_then_not() {
        let (mut client, server) = pair(Some(4096)).await;
        let stream = Arc::new(stream_on(server, 2));
        let big = |fill: u8| Bytes::from(vec![fill; 8 << 20]);
        stream.release(vec![Waiting::Chunk(big(b's'), false)], 10);
        assert!(
            matches!(stream.step(), Step::Blocked { .. }),
            "the client reads nothing yet"
        );
        // While the start is being read, up to CATCH_UP times the limit may wait.
        let allowed = 2 * CATCH_UP as u64;
        for seq in 11..=10 + allowed {
            stream.offer(Some(seq), &Bytes::from(vec![1u8]));
        }
        assert!(
            !stream.out().lagged,
            "{allowed} events behind a start: catching up"
        );
        // The client reads the start and those events; once they are written, the stream is
        // back within its limit, and the limit is the plain one again.
        let expected = (8 << 20) + allowed as usize;
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected];
            client.read_exact(&mut got).await.unwrap();
            client
        });
        loop {
            match stream.step() {
                Step::Blocked { .. } => {
                    let _ = stream.socket.writable().await;
                }
                Step::Idle => break,
                Step::Done(ended) => panic!("ended: {ended:?}"),
            }
        }
        let _client = reader.await.unwrap();
        assert!(!stream.out().catching_up);
        stream.offer(Some(11 + allowed), &big(b'e'));
        stream.offer(Some(12 + allowed), &Bytes::from(vec![1u8]));
        assert!(!stream.out().lagged, "2 behind (one partly written)");
        stream.offer(Some(13 + allowed), &Bytes::from(vec![1u8]));
        assert!(
            stream.out().lagged,
            "3 behind, caught up: past the plain limit"
        );
        // One more while catching up than it may: lags.
        let (_client, server) = pair(Some(4096)).await;
        let stream = stream_on(server, 2);
        stream.release(vec![Waiting::Chunk(big(b's'), false)], 10);
        assert!(matches!(stream.step(), Step::Blocked { .. }));
        for seq in 11..=11 + allowed {
            stream.offer(Some(seq), &Bytes::from(vec![1u8]));
        }
        assert!(stream.out().lagged);
    }

    #[tokio::test]
    async fn when_its_lane_falls_behind_a_stream_starts_again_whatever_it_holds() {
        let (_client, server) = pair(None).await;
        let stream = stream_on(server, 8);
        // Holding (joining): what it held is dropped, and its start cannot cover what the lane
        // missed.
        stream.offer(Some(5), &Bytes::from_static(b"5"));
        stream.lag();
        stream.release(
            vec![Waiting::Chunk(Bytes::from_static(b"start"), false)],
            1_000,
        );
        let out = stream.out();
        assert!(out.lagged && out.held.is_empty());
        assert_eq!(out.queue.len(), 1, "only the start");
        drop(out);
        assert!(matches!(stream.step(), Step::Done(Ended::Lagged)));
        // Serving, with a chunk begun and another waiting: the begun one is finished.
        stream.release(Vec::new(), 1_000);
        {
            let mut out = stream.out();
            out.enqueue(Bytes::from_static(b"rest"), true, true, 8);
            out.enqueue(Bytes::from_static(b"next"), false, true, 8);
        }
        stream.lag();
        let out = stream.out();
        assert!(out.lagged);
        assert_eq!(
            out.queue,
            [Waiting::Chunk(Bytes::from_static(b"rest"), true)]
        );
        assert_eq!(out.behind, 1);
    }

    #[tokio::test]
    async fn shutdown_cuts_a_body_mid_chunk_without_a_last_chunk() {
        let (mut client, server) = pair(None).await;
        let stream = stream_on(server, 8);
        stream.release(Vec::new(), 0);
        // A chunk waits (as when the socket did not take it all).
        stream
            .out()
            .queue
            .push_back(Waiting::Chunk(Bytes::from_static(b"data\r\n"), true));
        stream.finish(true);
        stream.offer(Some(1), &Bytes::from_static(b"5\r\nlate!\r\n"));
        drop(stream);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after the end: {rest:?}");
    }
}
