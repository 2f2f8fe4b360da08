//! The header read timeout: a connection that sends no request head, or a head too slowly, or
//! stays idle between requests, is closed; one that keeps to the time is served, and an event
//! stream is never cut by it. Under paused time: the timeouts pass without waiting.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn server() -> (Server, String) {
    let mut c = config();
    c.header_read_timeout = TIMEOUT;
    let server = Server::start(c).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    (server, addr)
}

/// Reads until the server closes the connection; what it sent, and after how long.
async fn until_closed(socket: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let read_all = async {
        loop {
            let mut buf = [0u8; 4096];
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(TIMEOUT * 10, read_all).await.is_err() {
        panic!("still open after {:?}", TIMEOUT * 10);
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// Reads one whole response with a `Content-Length`.
async fn response(socket: &mut TcpStream) -> String {
    let mut got = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .expect("a content-length");
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        let mut buf = [0u8; 4096];
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the whole response: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

fn between(elapsed: Duration, low: Duration, high: Duration) {
    assert!(
        elapsed >= low && elapsed < high,
        "closed after {elapsed:?}, expected from {low:?} to {high:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_at_the_timeout() {
    let (server, addr) = server().await;
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    let (sent, after) = until_closed(&mut socket).await;
    assert_eq!(sent, "");
    between(after, TIMEOUT, TIMEOUT + Duration::from_secs(1));
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn heads_sent_too_slowly_are_closed_at_the_timeout() {
    let (server, addr) = server().await;
    // One the listener waits on (it could still be an event stream), one it hands to hyper.
    for partial in [
        "GET /v1/events HTTP/1.1\r\nHost: x\r\n",
        "POST /callback HTTP/1.1\r\nHost: x\r\n",
    ] {
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket.write_all(partial.as_bytes()).await.unwrap();
        tokio::time::sleep(TIMEOUT / 2).await;
        socket.write_all(b"X-Slow: 1\r\n").await.unwrap();
        let (_, after) = until_closed(&mut socket).await;
        between(after, TIMEOUT / 2, TIMEOUT / 2 + Duration::from_secs(1));
    }
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_keep_alive_connection_is_served_within_the_timeout_and_closed_when_idle_past_it() {
    let (server, addr) = server().await;
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    socket.write_all(request).await.unwrap();
    assert!(response(&mut socket).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
    socket.write_all(request).await.unwrap();
    assert!(response(&mut socket).await.starts_with("HTTP/1.1 200"));
    let (sent, after) = until_closed(&mut socket).await;
    assert_eq!(sent, "");
    between(after, TIMEOUT, TIMEOUT + Duration::from_secs(1));
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_event_stream_outlives_the_timeout() {
    let (server, addr) = server().await;
    let mut socket = TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    // The default keep-alive comment comes every 15 s: wait for the third, at 45 s.
    while String::from_utf8_lossy(&got).matches(":").count() < 3 || started.elapsed() < TIMEOUT * 9
    {
        let mut buf = [0u8; 4096];
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "the stream was closed after {:?}", started.elapsed());
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("event: snapshot"));
    drop(socket);
    server.stop().await.unwrap();
}
