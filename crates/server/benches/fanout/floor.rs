//! The floor of a fan-out on this machine: a raw SSE server with no engine, no HTTP library and
//! no task per stream — one blocking `write` of a ready chunk per subscriber from a plain thread
//! per core (two here). What livebattle's fan-out costs above the kernel's loopback TCP shows against it,
//! measured in the same run with the same subscribers.
//!
//! `fanout --floor-server` (the bench runs itself as this second process) listens on
//! 127.0.0.1:0 and prints `listening on ADDR`. A `GET` gets an SSE head and a `snapshot` event,
//! and joins the subscribers. Each `POST /fire?bytes=N` hands a `battle` event of N bytes on the
//! wire (chunk framing included) to the writer threads, then acknowledges, as livebattle
//! publishes and then acknowledges.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Writer threads: the machine's cores, like the server's tokio workers.
fn writers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Runs the floor server until killed.
pub fn serve() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let subscribers: Arc<RwLock<Vec<TcpStream>>> = Arc::default();
    let count = writers();
    let mut queues = Vec::new();
    for w in 0..count {
        let (tx, rx) = mpsc::channel::<Arc<Vec<u8>>>();
        let subscribers = subscribers.clone();
        std::thread::spawn(move || {
            while let Ok(chunk) = rx.recv() {
                let Ok(subscribers) = subscribers.read() else {
                    return;
                };
                for s in subscribers.iter().skip(w).step_by(count) {
                    let _ = (&*s).write_all(&chunk);
                }
            }
        });
        queues.push(tx);
    }
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() || skip_head(&mut reader).is_err() {
            continue;
        }
        if request_line.starts_with("GET ") {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
            let snapshot = chunk(b"event: snapshot\nid: 0\ndata: {}\n\n");
            if conn.write_all(head.as_bytes()).is_ok() && conn.write_all(&snapshot).is_ok() {
                if let Ok(mut list) = subscribers.write() {
                    list.push(conn);
                }
            }
        } else {
            let queues = queues.clone();
            std::thread::spawn(move || fire(conn, reader, request_line, queues));
        }
    }
    Ok(())
}

/// Serves `POST /fire?bytes=N` requests on one keep-alive connection.
fn fire(
    mut conn: TcpStream,
    mut reader: BufReader<TcpStream>,
    mut request_line: String,
    queues: Vec<mpsc::Sender<Arc<Vec<u8>>>>,
) {
    let _ = conn.set_read_timeout(None);
    let mut seq = 0u64;
    loop {
        seq += 1;
        let bytes = request_line
            .split_once("bytes=")
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(600usize);
        let event = event(seq, bytes);
        let shared = Arc::new(chunk(&event));
        for q in &queues {
            let _ = q.send(shared.clone());
        }
        if conn
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
        request_line.clear();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if skip_head(&mut reader).is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads the rest of a request head (and a body, by its content-length).
fn skip_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)
}

/// A `battle` event whose chunk is `wire` bytes long (as near as the framing allows).
fn event(seq: u64, wire: usize) -> Vec<u8> {
    let head = format!("event: battle\nid: {seq}\ndata: {{\"seq\":{seq},\"pad\":\"");
    let tail = "\"}\n\n";
    // A chunk adds its size in hex and two CRLFs.
    let data = wire.saturating_sub(4);
    let data = data.saturating_sub(format!("{data:x}").len());
    let pad = data.saturating_sub(head.len() + tail.len());
    let mut out = head.into_bytes();
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(tail.as_bytes());
    out
}

/// `data` as one HTTP/1.1 chunk.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}
