//! `--watch-sse N`: N clients on `GET /v1/events` that check the stream as they read it —
//! a `snapshot` first, then `battle` events whose ids follow one another without a gap (a
//! fresh `snapshot` with `reason: "lagged"` may restart the count) — and, at the end, that
//! each one caught up with the server's last `seq`.
//!
//! Each client is one task with its own connection, reading the chunked response with a
//! minimal parser (only the event name, id and, for a snapshot, its reason).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What the clients saw, added up.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// `battle` events.
    pub events: u64,
    /// Fresh snapshots after a lag.
    pub lagged: u64,
    /// Ids that did not follow the one before (not after a lagged snapshot).
    pub gaps: u64,
    /// Streams that broke or were malformed.
    pub broken: u64,
    /// Clients that reached the server's last `seq` at the end.
    pub caught_up: u64,
}

/// One client's counts, shared with its task.
#[derive(Default)]
struct Seen {
    last: AtomicU64,
    events: AtomicU64,
    lagged: AtomicU64,
    gaps: AtomicU64,
    broken: AtomicU64,
}

/// The running clients.
pub struct Watchers {
    addr: SocketAddr,
    authority: String,
    clients: Vec<(Arc<Seen>, JoinHandle<()>)>,
}

/// Opens `n` clients and waits for each one's first snapshot.
pub async fn start(addr: SocketAddr, authority: &str, n: usize) -> Result<Watchers, String> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = Stream::open(addr, authority).await?;
        let first = stream.next().await?;
        if first.name != "snapshot" {
            return Err(format!(
                "the stream began with {:?}, not a snapshot",
                first.name
            ));
        }
        let seen = Arc::new(Seen::default());
        seen.last.store(first.id, Ordering::Relaxed);
        clients.push((seen.clone(), tokio::spawn(watch(stream, seen))));
    }
    Ok(Watchers {
        addr,
        authority: authority.to_owned(),
        clients,
    })
}

impl Watchers {
    /// Reads the server's last `seq` (a new stream's snapshot id), waits up to `patience` for
    /// every client to reach it, then stops them and adds up what they saw.
    pub async fn finish(self, patience: Duration) -> Result<Tally, String> {
        let mut probe = Stream::open(self.addr, &self.authority).await?;
        let target = probe.next().await?.id;
        let behind = || {
            self.clients
                .iter()
                .filter(|(seen, _)| seen.last.load(Ordering::Relaxed) < target)
                .count()
        };
        let deadline = tokio::time::Instant::now() + patience;
        while behind() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut tally = Tally {
            caught_up: (self.clients.len() - behind()) as u64,
            ..Tally::default()
        };
        for (seen, task) in &self.clients {
            task.abort();
            tally.events += seen.events.load(Ordering::Relaxed);
            tally.lagged += seen.lagged.load(Ordering::Relaxed);
            tally.gaps += seen.gaps.load(Ordering::Relaxed);
            tally.broken += seen.broken.load(Ordering::Relaxed);
        }
        Ok(tally)
    }
}

/// Reads one client's stream until it ends or the client is stopped.
async fn watch(mut stream: Stream, seen: Arc<Seen>) {
    loop {
        let Ok(event) = stream.next().await else {
            seen.broken.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match event.name.as_str() {
            "battle" => {
                seen.events.fetch_add(1, Ordering::Relaxed);
                if event.id != seen.last.load(Ordering::Relaxed) + 1 {
                    seen.gaps.fetch_add(1, Ordering::Relaxed);
                }
            }
            "snapshot" if event.lagged => {
                seen.lagged.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                seen.broken.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        seen.last.store(event.id, Ordering::Relaxed);
    }
}

/// One event off the wire.
struct Event {
    name: String,
    id: u64,
    /// A snapshot sent after a lag.
    lagged: bool,
}

/// A chunked SSE response being read.
struct Stream {
    socket: TcpStream,
    raw: Vec<u8>,
    /// Where unread chunk bytes start in `raw`.
    at: usize,
    /// De-chunked bytes; events before `read` are split off already.
    body: Vec<u8>,
    read: usize,
    /// `body` from `read` up to here holds no event's end (so a big event arriving in many
    /// reads is scanned once, not once per read).
    scanned: usize,
}

impl Stream {
    async fn open(addr: SocketAddr, authority: &str) -> Result<Stream, String> {
        let mut socket = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let request = format!("GET /v1/events HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        socket
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send the stream request: {e}"))?;
        let mut stream = Stream {
            socket,
            raw: Vec::with_capacity(64 * 1024),
            at: 0,
            body: Vec::new(),
            read: 0,
            scanned: 0,
        };
        loop {
            if let Some(end) = find(&stream.raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&stream.raw[..end]).to_lowercase();
                if !head.starts_with("http/1.1 200") || !head.contains("chunked") {
                    return Err(format!("not a chunked event stream: {head}"));
                }
                stream.at = end + 4;
                return Ok(stream);
            }
            stream.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), String> {
        // Compact once half of the buffer is consumed (not on every read: a big chunk arrives
        // in many reads).
        if self.at > 0 && self.at >= self.raw.len() / 2 {
            self.raw.drain(..self.at);
            self.at = 0;
        }
        let mut buf = [0u8; 64 * 1024];
        match self.socket.read(&mut buf).await {
            Ok(0) => Err("the stream ended".into()),
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                Ok(())
            }
            Err(e) => Err(format!("reading the stream: {e}")),
        }
    }

    /// The next event (comments skipped).
    async fn next(&mut self) -> Result<Event, String> {
        loop {
            while let Some(end) = find(&self.body[self.scanned..], b"\n\n") {
                let end = self.scanned + end;
                let text = &self.body[self.read..end];
                self.read = end + 2;
                self.scanned = self.read;
                if let Some(event) = parse_event(text)? {
                    return Ok(event);
                } // else a keep-alive comment
            }
            // Nothing complete from `read` on: keep the scan's place (minus the one byte that
            // could begin a "\n\n"), drop what was split off, move whole chunks in.
            self.scanned = self.body.len().saturating_sub(1).max(self.read);
            self.body.drain(..self.read);
            self.scanned -= self.read;
            self.read = 0;
            loop {
                let rest = &self.raw[self.at..];
                let Some(eol) = find(rest, b"\r\n") else {
                    break;
                };
                let size = std::str::from_utf8(&rest[..eol])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s, 16).ok())
                    .ok_or_else(|| "a malformed chunk size".to_string())?;
                if size == 0 {
                    return Err("the stream ended".into());
                }
                if rest.len() < eol + 2 + size + 2 {
                    break;
                }
                self.body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
                self.at += eol + 2 + size + 2;
            }
            if find(&self.body[self.scanned..], b"\n\n").is_none() {
                self.fill().await?;
            }
        }
    }
}

/// An event's name, id and (for a snapshot) whether it follows a lag; `None` for a comment.
fn parse_event(text: &[u8]) -> Result<Option<Event>, String> {
    let field = |k: &[u8]| {
        text.split(|&b| b == b'\n')
            .find_map(|line| line.strip_prefix(k))
    };
    let Some(name) = field(b"event: ") else {
        return Ok(None);
    };
    let id = field(b"id: ")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .ok_or_else(|| "an event without a numeric id".to_string())?;
    let lagged = name == b"snapshot"
        && field(b"data: ").is_some_and(|d| find(d, b"\"reason\":\"lagged\"").is_some());
    Ok(Some(Event {
        name: String::from_utf8_lossy(name).into_owned(),
        id,
        lagged,
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
