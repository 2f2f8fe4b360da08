//! Shared by the server's benches: starting the real release `livebattle` binary, signing
//! callbacks, reading its memory and metrics, a minimal SSE client over a raw `TcpStream` (light
//! enough for 100,000 connections from one process), and the webhook load driver of `webhooks`
//! and `scale_out` ([`drive`]).

#![allow(dead_code)]

pub mod reader;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const APP: &str = "1400000001";
pub const TOKEN: &str = "bench-token";
pub const ADMIN_TOKEN: &str = "bench-admin-token";

pub fn smoke() -> bool {
    std::env::var("LIVEBATTLE_BENCH_SMOKE").is_ok_and(|v| v == "1")
}

pub fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A keep-alive HTTP client that keeps one idle connection (one per bench connection).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .expect("an HTTP client")
}

/// The signed query string of a Tencent callback.
pub fn query(command: &str) -> String {
    let t = (now_ms() / 1000).to_string();
    let sign = hex::encode(Sha256::digest(format!("{TOKEN}{t}")));
    format!(
        "SdkAppid={APP}&CallbackCommand={command}&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI&Sign={sign}&RequestTime={t}"
    )
}

pub const CREATE: &str = "Live.CallbackAfterCreateBattle";
pub const START: &str = "Live.CallbackAfterStartBattle";
pub const END: &str = "Live.CallbackAfterEndBattle";

/// A Create body (NeedResponse as given) whose battle ends `duration_ms` after `event_ms`.
pub fn create_body(id: &str, event_ms: i64, duration_ms: i64, need_response: bool) -> String {
    format!(
        r#"{{"CallbackCommand":"{CREATE}","Operator_Account":"op","BattleId":"{id}","FromRoomId":"a-{id}","ToRoomIdList":["b-{id}"],"Timeout":30000,"Duration":{duration_ms},"NeedResponse":{need_response},"ExtensionInfo":"bench","EventTime":{event_ms}}}"#
    )
}

/// Percent-encodes a path segment.
pub fn pct_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Makes sure this process may open `want` files: if its soft limit is lower, re-executes itself
/// through `sh -c 'ulimit -n …'` once (raising the soft limit, and the hard one when root).
pub fn ensure_nofile(want: u64) {
    let current = nofile_limit().unwrap_or(0);
    if current >= want || std::env::var_os("LIVEBATTLE_BENCH_NOFILE").is_some() {
        return;
    }
    let me = std::env::current_exe().expect("the bench's own path");
    let args: Vec<String> = std::env::args().skip(1).collect();
    eprintln!("raising the open-file limit from {current} to {want} (re-exec through sh)");
    let err = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {want} 2>/dev/null || ulimit -n $(ulimit -Hn); exec \"$0\" \"$@\""
        ))
        .arg(me)
        .args(args)
        .env("LIVEBATTLE_BENCH_NOFILE", want.to_string())
        .exec();
    panic!("could not re-exec through sh: {err}");
}

/// The soft `Max open files` of this process.
pub fn nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `VmRSS` (or another `Vm*` line) of a process, in bytes.
pub fn vm(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// CPU seconds (user + system) a process has used: `/proc/PID/stat`.
pub fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// The release `livebattle` binary cargo built for this bench, or `LIVEBATTLE_BENCH_BIN` (another
/// build — an earlier commit's, say — to compare against with the same load generator).
pub fn binary() -> PathBuf {
    std::env::var_os("LIVEBATTLE_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_livebattle")),
        PathBuf::from,
    )
}

/// `livebattle`'s flags for a bench: a free loopback port, the bench's app, token and admin
/// token, then `storage` (`--in-memory`, or `--data-dir DIR ...`).
pub fn server_args<'a>(storage: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--sdk-app-id",
        APP,
        "--token",
        TOKEN,
        "--admin-token",
        ADMIN_TOKEN,
    ];
    args.extend_from_slice(storage);
    args
}

/// The real server process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
}

impl Server {
    /// Starts `livebattle --in-memory` on a free loopback port with the bench's app, token and
    /// admin token, plus `extra` flags, with an open-file limit of `nofile`; waits for its
    /// `listening on` line. Its log goes to `log`.
    pub fn start(extra: &[&str], nofile: u64, log: &std::path::Path) -> Server {
        let mut args = server_args(&["--in-memory"]);
        args.extend_from_slice(extra);
        Server::spawn(&binary(), &args, nofile, log)
    }

    /// Starts `program args` with an open-file limit of `nofile` and waits for the
    /// `listening on ADDR` line it prints first. Its stderr goes to `log`.
    pub fn spawn(
        program: &std::path::Path,
        args: &[&str],
        nofile: u64,
        log: &std::path::Path,
    ) -> Server {
        let stderr = std::fs::File::create(log).expect("the server's log file");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n {nofile} 2>/dev/null || ulimit -n $(ulimit -Hn); exec \"$0\" \"$@\""
            ))
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        let pid = child.id();
        let mut stdout = child.stdout.take().expect("the server's stdout");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        use std::io::Read as _;
        while stdout.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).to_string();
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{} did not report its address (got {line:?})",
                    program.display()
                )
            });
        Server { child, addr, pid }
    }

    pub fn rss(&self) -> u64 {
        vm(self.pid, "VmRSS:")
    }

    /// SIGTERM, then waits (SIGKILL after 10 s).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` → body text (one-off HTTP/1.1 request with `Connection: close`).
pub async fn get_text(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect for a GET");
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send a GET");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", &text));
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk_all(body.as_bytes())
    } else {
        body.to_string()
    }
}

fn dechunk_all(mut b: &[u8]) -> String {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    String::from_utf8_lossy(&out).to_string()
}

/// One value of the Prometheus text (`name` with its labels, exactly as printed).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
}

/// One SSE event as received.
pub struct SseEvent {
    /// When its last byte was read.
    pub at: Instant,
    pub name: String,
    pub id: u64,
    pub data: String,
}

/// A minimal SSE client: one `GET` over a raw TCP connection (optionally from a given loopback
/// source address), de-chunking the body and splitting it into events.
pub struct SseClient {
    stream: TcpStream,
    parser: SseParser,
}

impl SseClient {
    /// Opens `path` from `source` (any loopback address by default). `recv_buffer` sets the
    /// socket's receive buffer: small ones let 100,000 streams live in one process, but on
    /// loopback (64 KiB segments) a stream that falls behind then gets one window of data per
    /// delayed acknowledgement (≈ 65 KB/s); `None` keeps the kernel's autotuning, as a
    /// browser's connection has.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        path: &str,
        recv_buffer: Option<u32>,
    ) -> std::io::Result<SseClient> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        if let Some(bytes) = recv_buffer {
            let _ = socket.set_recv_buffer_size(bytes);
        }
        let mut stream = socket.connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        Ok(SseClient {
            stream,
            parser: SseParser::default(),
        })
    }

    /// The next event; `None` when the stream ended. Comments (keep-alives) are skipped.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.parser.next_event(Instant::now()) {
                return Some(e);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            self.parser.feed(&chunk[..n]);
        }
    }

    /// The connection (non-blocking) and what was read of it but not yet taken.
    pub fn into_parts(self) -> std::io::Result<(std::net::TcpStream, SseParser)> {
        Ok((self.stream.into_std()?, self.parser))
    }
}

/// An SSE response as it is read: the HTTP head, then the body (de-chunked), split into events.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// De-chunked body bytes not yet split into events.
    body: Vec<u8>,
    chunked: bool,
    pub header_done: bool,
}

impl SseParser {
    /// Takes bytes read off the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.decode();
    }

    fn decode(&mut self) {
        if !self.header_done {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            self.chunked = head.contains("transfer-encoding: chunked");
            self.buf.drain(..end + 4);
            self.header_done = true;
        }
        if !self.chunked {
            self.body.append(&mut self.buf);
            return;
        }
        loop {
            let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&self.buf[..eol])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            if self.buf.len() < eol + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
            self.buf.drain(..eol + 4 + size);
        }
    }

    /// Where the next whole block (an event or a comment) ends, before its blank line.
    fn block_end(&self) -> Option<usize> {
        memchr::memmem::find(&self.body, b"\n\n")
    }

    /// The next whole event fed so far, received `at`; comments (keep-alives: blocks with
    /// neither `event:` nor `data:`) are skipped.
    pub fn next_event(&mut self, at: Instant) -> Option<SseEvent> {
        loop {
            let end = self.block_end()?;
            let block: Vec<u8> = self.body.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let (mut name, mut id, mut data) = (String::new(), 0u64, String::new());
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().unwrap_or(0);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if name.is_empty() && data.is_empty() {
                continue; // a comment (keep-alive)
            }
            return Some(SseEvent { at, name, id, data });
        }
    }

    /// [`SseParser::next_event`] for a reader that needs only to know an event arrived and
    /// whether it is a `battle` event: nothing is copied out or allocated.
    pub fn next_is_battle(&mut self) -> Option<bool> {
        loop {
            let end = self.block_end()?;
            let lines = self.body[..end].split(|&b| b == b'\n');
            let comment = !lines
                .clone()
                .any(|l| l.starts_with(b"event:") || l.starts_with(b"data:"));
            let battle = lines
                .filter_map(|l| l.strip_prefix(b"event:"))
                .any(|v| v.trim_ascii() == b"battle");
            self.body.drain(..end + 2);
            if !comment {
                return Some(battle);
            }
        }
    }
}

/// Sorted-sample percentiles (0 when there is no sample).
pub fn pct<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Posts one signed callback to `url` (`…/callback`) and reads the reply; an error says what
/// went wrong (the HTTP status, or the transport error).
pub async fn post_callback(
    client: &reqwest::Client,
    url: &str,
    command: &str,
    body: String,
) -> Result<(), String> {
    let reply = client
        .post(format!("{url}?{}", query(command)))
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !reply.status().is_success() {
        return Err(format!("HTTP {}", reply.status()));
    }
    let _ = reply.bytes().await;
    Ok(())
}

/// Posts signed callbacks over `connections` keep-alive connections, closed loop; `make(i)`
/// gives the command and body of callback `i` (0..n). Returns (ok, errors, ack instant of each
/// callback when `keep_acks`).
pub async fn post_all<F>(
    addr: SocketAddr,
    n: usize,
    connections: usize,
    make: F,
    keep_acks: bool,
) -> (u64, u64, Vec<Option<Instant>>)
where
    F: Fn(usize) -> (&'static str, String) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let url = format!("http://{addr}/callback");
            let (mut ok, mut errors, mut acks) = (0u64, 0u64, Vec::new());
            let mut i = c;
            while i < n {
                let (command, body) = make(i);
                match post_callback(&client, &url, command, body).await {
                    Ok(()) => {
                        ok += 1;
                        if keep_acks {
                            acks.push((i, Instant::now()));
                        }
                    }
                    Err(e) => {
                        if errors < 3 {
                            eprintln!("callback {i}: {e}");
                        }
                        errors += 1;
                    }
                }
                i += connections;
            }
            (ok, errors, acks)
        }));
    }
    let mut all = vec![None; if keep_acks { n } else { 0 }];
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        if let Ok((o, e, acks)) = t.await {
            ok += o;
            errors += e;
            for (i, at) in acks {
                all[i] = Some(at);
            }
        }
    }
    (ok, errors, all)
}

/// One driven run: replies, errors and latencies.
#[derive(Default)]
pub struct Run {
    pub ok: u64,
    pub errors: u64,
    pub secs: f64,
    /// CPU seconds of this process (client and server) during the run.
    pub cpu_s: f64,
    /// Send to reply, µs.
    pub latencies_us: Vec<u64>,
    /// Scheduled send time to reply, µs (rate-limited runs only).
    pub scheduled_us: Vec<u64>,
}

/// The two webhooks of one fresh battle.
pub fn bodies(id: &str) -> [(&'static str, String); 2] {
    let t = now_ms();
    let create = format!(
        r#"{{"CallbackCommand":"Live.CallbackAfterCreateBattle","Operator_Account":"op","BattleId":"{id}","FromRoomId":"a-{id}","ToRoomIdList":["b-{id}"],"Timeout":30000,"Duration":600000,"NeedResponse":false,"ExtensionInfo":"bench","EventTime":{t}}}"#
    );
    let end = format!(
        r#"{{"CallbackCommand":"Live.CallbackAfterEndBattle","BattleId":"{id}","Duration":600000,"CreateTime":{s},"StartTime":{s},"EndTime":{s},"OpType":1,"FromRoomInfo":{{"RoomId":"a-{id}","Score":1,"Owner_Account":"x"}},"ToRoomList":[{{"RoomId":"b-{id}","Score":2,"Owner_Account":"y"}}],"EventTime":{t}}}"#,
        s = t / 1000
    );
    [
        ("Live.CallbackAfterCreateBattle", create),
        ("Live.CallbackAfterEndBattle", end),
    ]
}

/// Drives the servers at `bases` (`http://host:port`; connection `c` posts to `bases[c % n]`)
/// for `seconds` over `connections` keep-alive connections, each posting a Create then an End of
/// a fresh battle again and again; `rate` (requests/s, over all connections) paces them, `None`
/// is closed-loop.
pub async fn drive(
    bases: &[String],
    label: &str,
    seconds: f64,
    connections: usize,
    rate: Option<f64>,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let started = Instant::now();
    let cpu0 = cpu_s(std::process::id());
    // Per connection: one request every `interval`, connections staggered over one interval.
    let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r.max(1.0)));
    for c in 0..connections {
        let stop = stop.clone();
        let label = label.to_string();
        let url = format!("{}/callback", bases[c % bases.len().max(1)]);
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            let mut run = Run::default();
            let mut next = interval.map(|iv| started + iv.mul_f64(c as f64 / connections as f64));
            let mut i = 0u64;
            // When the previous reply came; a request whose slot came while the connection was
            // still waiting is timed from its slot, one sent on a free connection from its send.
            let mut prev_done = started;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("{label}-{c}-{i}");
                i += 1;
                for (command, body) in bodies(&id) {
                    if let (Some(at), Some(iv)) = (next.as_mut(), interval) {
                        tokio::time::sleep_until((*at).into()).await;
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        *at += iv;
                    }
                    let sent = Instant::now();
                    let scheduled = next
                        .map(|at| at - interval.unwrap_or_default())
                        .map(|slot| if prev_done > slot { slot } else { sent });
                    match post_callback(&client, &url, command, body).await {
                        Ok(()) => {
                            run.ok += 1;
                            run.latencies_us.push(sent.elapsed().as_micros() as u64);
                            if let Some(s) = scheduled {
                                run.scheduled_us.push(s.elapsed().as_micros() as u64);
                            }
                        }
                        Err(_) => run.errors += 1,
                    }
                    prev_done = Instant::now();
                }
            }
            run
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Run::default();
    for t in tasks {
        if let Ok(run) = t.await {
            total.ok += run.ok;
            total.errors += run.errors;
            total.latencies_us.extend(run.latencies_us);
            total.scheduled_us.extend(run.scheduled_us);
        }
    }
    total.secs = started.elapsed().as_secs_f64();
    total.cpu_s = cpu_s(std::process::id()) - cpu0;
    total.latencies_us.sort_unstable();
    total.scheduled_us.sort_unstable();
    total
}

/// The `p` quantile of sorted µs samples, in ms.
pub fn pct_ms(sorted_us: &[u64], p: f64) -> f64 {
    pct(sorted_us, p) as f64 / 1000.0
}
