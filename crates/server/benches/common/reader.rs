//! The subscribers' side of the fan-out bench: many SSE connections read by one thread through
//! epoll (mio). Each event costs the subscribers one `read` and a parse — no task wake-up, no
//! channel message per event — so that the load generator's share of the two cores stays small
//! and what is measured is the server.

use std::io::{ErrorKind, Read as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use tokio::sync::mpsc::UnboundedSender;

use super::{SseClient, SseParser};

/// One `battle` event received.
#[derive(Clone, Copy, Debug)]
pub struct Receipt {
    /// The subscriber's number, as given to [`Reader::spawn`].
    pub client: usize,
    /// Which of this subscriber's `battle` events (0 for its first).
    pub k: usize,
    /// When the `read` that completed it returned.
    pub at: Instant,
    /// Bytes that `read` returned (the event's frame, when one read holds one event).
    pub bytes: usize,
}

/// The reading thread; [`Reader::stop`] closes every connection.
pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Conn {
    client: usize,
    stream: mio::net::TcpStream,
    parser: SseParser,
    k: usize,
}

impl Reader {
    /// Takes over `clients` (numbered; their snapshots already read) and sends the receipts
    /// of their `battle` events to `tx`, one batch per wake-up of the thread.
    pub fn spawn(
        clients: Vec<(usize, SseClient)>,
        tx: UnboundedSender<Vec<Receipt>>,
    ) -> std::io::Result<Reader> {
        let poll = Poll::new()?;
        let mut conns = Vec::with_capacity(clients.len());
        for (token, (client, sse)) in clients.into_iter().enumerate() {
            let (stream, parser) = sse.into_parts()?;
            let mut stream = mio::net::TcpStream::from_std(stream);
            poll.registry()
                .register(&mut stream, Token(token), Interest::READABLE)?;
            conns.push(Conn {
                client,
                stream,
                parser,
                k: 0,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sse-reader".into())
            .spawn(move || read_all(poll, conns, &stopped, &tx))?;
        Ok(Reader {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and closes the connections (as dropping it does).
    pub fn stop(self) {}
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_all(
    mut poll: Poll,
    mut conns: Vec<Conn>,
    stop: &AtomicBool,
    tx: &UnboundedSender<Vec<Receipt>>,
) {
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 * 1024];
    // Events read with the snapshot, before this thread took over.
    let mut early = Vec::new();
    for c in &mut conns {
        while let Some(e) = c.parser.next_event(Instant::now()) {
            if e.name == "battle" {
                early.push(Receipt {
                    client: c.client,
                    k: c.k,
                    at: e.at,
                    bytes: 0,
                });
                c.k += 1;
            }
        }
    }
    if !early.is_empty() && tx.send(early).is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            eprintln!("sse-reader: {e}");
            return;
        }
        let mut batch = Vec::new();
        for event in events.iter() {
            let Some(c) = conns.get_mut(event.token().0) else {
                continue;
            };
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        let _ = poll.registry().deregister(&mut c.stream);
                        break;
                    }
                    Ok(n) => {
                        let at = Instant::now();
                        c.parser.feed(&buf[..n]);
                        while let Some(battle) = c.parser.next_is_battle() {
                            if battle {
                                batch.push(Receipt {
                                    client: c.client,
                                    k: c.k,
                                    at,
                                    bytes: n,
                                });
                                c.k += 1;
                            }
                        }
                        // A short read emptied the socket: epoll (edge-triggered) reports the
                        // next arrival, so no second read just to hear "would block".
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        if !batch.is_empty() && tx.send(batch).is_err() {
            return;
        }
    }
}
