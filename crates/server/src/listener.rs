//! The server's listener: reads each new connection's request head, serves a plain event-stream
//! request itself ([`crate::sse::direct`]) and hands every other connection to axum (through
//! [`crate::connections`]), the bytes it read put back in front ([`Sniffed`]).
//!
//! Only a connection's first request is looked at: a client that opens a stream on a keep-alive
//! connection it used before is served by axum's stream, which sends the same events. A
//! connection whose first head is not complete within the header read timeout is closed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::sse::direct::{self, Head};
use crate::state::AppState;

/// Connections handed to axum and not yet accepted by it.
const HANDOVER_QUEUE: usize = 1024;

/// Connections read up to their first request head, for axum.
pub(crate) struct Sniffing {
    connections: mpsc::Receiver<Sniffed>,
}

impl Sniffing {
    /// The next connection; `None` once accepting stopped (at shutdown).
    pub(crate) async fn accept(&mut self) -> Option<Sniffed> {
        self.connections.recv().await
    }
}

/// Accepts on `listener` (until `state` shuts down) and sorts each connection, giving each
/// `header_read_timeout` to send its first request head.
pub(crate) fn sniffing(
    listener: TcpListener,
    state: AppState,
    header_read_timeout: Duration,
) -> Sniffing {
    let (tx, connections) = mpsc::channel(HANDOVER_QUEUE);
    tokio::spawn(async move {
        let mut shutdown = std::pin::pin!(state.shutdown_signal());
        loop {
            let accepted = tokio::select! {
                () = shutdown.as_mut() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((socket, _)) => {
                    let sorted = sort(socket, tx.clone(), state.clone());
                    tokio::spawn(async move {
                        // Timed out: the socket is dropped, closing the connection.
                        let _ = tokio::time::timeout(header_read_timeout, sorted).await;
                    });
                }
                Err(e) => accept_failed(e).await,
            }
        }
    });
    Sniffing { connections }
}

/// As axum's own listener: a failed connection is skipped; anything else (out of file
/// descriptors, say) is logged and accepting pauses for a second.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Reads `socket` until its first request head shows what it is; starts serving an event
/// stream (on a task of its own), hands anything else to axum.
async fn sort(mut socket: TcpStream, axum: mpsc::Sender<Sniffed>, state: AppState) {
    let mut head = Vec::with_capacity(1024);
    let mut shutdown = std::pin::pin!(state.shutdown_signal());
    loop {
        let read = tokio::select! {
            read = socket.read_buf(&mut head) => read,
            // A connection that sent no whole head yet is closed, as axum closes idle ones.
            () = shutdown.as_mut() => return,
        };
        match read {
            Ok(0) if head.is_empty() => return,
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return,
        }
        match direct::parse_head(&head) {
            Head::Partial if head.len() < direct::MAX_HEAD => {}
            Head::Stream {
                filter,
                route,
                last_event_id,
            } if !state.is_shutting_down() => {
                return direct::serve(state, socket, filter, route, last_event_id);
            }
            _ => break,
        }
    }
    // An error means axum stopped accepting: the server is shutting down.
    let _ = axum.send(Sniffed::new(socket, head)).await;
}

/// A connection with the bytes already read from it put back in front.
pub(crate) struct Sniffed {
    read: Vec<u8>,
    at: usize,
    socket: TcpStream,
}

impl Sniffed {
    fn new(socket: TcpStream, read: Vec<u8>) -> Sniffed {
        Sniffed {
            read,
            at: 0,
            socket,
        }
    }
}

impl AsyncRead for Sniffed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn what_was_read_comes_first_then_the_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut sniffed = Sniffed::new(server, b"GET / HTTP/1.1\r\n".to_vec());
        client.write_all(b"Host: x\r\n\r\n").await.unwrap();
        let mut first = [0u8; 4];
        sniffed.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET ");
        let mut rest = vec![0u8; 12 + 11];
        sniffed.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"/ HTTP/1.1\r\nHost: x\r\n\r\n");
        sniffed.write_all(b"pong").await.unwrap();
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"pong");
    }
}
