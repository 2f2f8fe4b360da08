//! Test harness: the real server on an ephemeral port (in-process through `serve`), a plain
//! HTTP client, signed Tencent callbacks and a small SSE reader.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use livebattle_ingest::AppConfig;
use livebattle_server::{serve, Config, ServeError};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const APP: &str = "1400000001";
pub const TOKEN: &str = "callback-token";
pub const ADMIN: &str = "admin-secret";

pub const CREATE: &str = "Live.CallbackAfterCreateBattle";
pub const START: &str = "Live.CallbackAfterStartBattle";
pub const END: &str = "Live.CallbackAfterEndBattle";

/// The documented sample's BattleId, with '/', '+' and '='.
pub const SAMPLE_ID: &str = "4siHsNsWN/T3aub9zKraqPbSEGRX2z6gs3LDFi+d/3M=";
/// The same, percent-encoded for a path segment.
pub const SAMPLE_ID_ENCODED: &str = "4siHsNsWN%2FT3aub9zKraqPbSEGRX2z6gs3LDFi%2Bd%2F3M%3D";

/// Generous bound for anything timer-driven.
pub const WAIT: Duration = Duration::from_secs(10);

/// A configuration with one signed app and the admin API on.
pub fn config() -> Config {
    let mut c = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_token: Some(ADMIN.into()),
        ..Config::default()
    };
    c.ingest.apps = vec![AppConfig::with_token(APP, TOKEN)];
    c
}

pub struct Server {
    /// `http://ADDR`.
    pub base: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Server {
    /// Binds 127.0.0.1:0 and runs the real server in this process.
    pub async fn start(config: Config) -> Server {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config, listener, async {
            let _ = stopped.await;
        }));
        let server = Server {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        };
        let (status, _) = server.get("/healthz").await;
        assert_eq!(status, StatusCode::OK);
        server
    }

    /// A server running elsewhere (the binary), at `base`.
    pub fn remote(base: String) -> Server {
        Server {
            base,
            client: reqwest::Client::new(),
            stop: None,
            task: None,
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("an in-process server");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET, returning the status and the JSON body (Null when not JSON).
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// POST a JSON body with an optional bearer token.
    pub async fn post(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: &Value,
    ) -> (StatusCode, Value) {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// POST an admin call with the right token.
    pub async fn admin(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post(path, Some(ADMIN), body).await
    }

    /// POST a Tencent callback signed with `TOKEN` now.
    pub async fn callback(&self, command: &str, body: &Value) -> (StatusCode, Value) {
        self.callback_raw(command, TOKEN, body.to_string().into_bytes())
            .await
    }

    /// POST a Tencent callback signed with `token`, raw body.
    pub async fn callback_raw(
        &self,
        command: &str,
        token: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!(
                "{}?{}",
                self.url("/callback"),
                query(command, token)
            ))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Posts a callback and asserts Tencent's OK reply.
    pub async fn callback_ok(&self, command: &str, body: &Value) {
        let (status, reply) = self.callback(command, body).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["ActionStatus"], "OK", "{reply}");
    }

    /// Creates a battle between pk-3 and pk-5 that runs at once.
    pub async fn create_running(&self, id: &str, duration_ms: u64) {
        self.callback_ok(CREATE, &create(id, "pk-3", &["pk-5"], duration_ms, false))
            .await;
    }

    /// Polls a battle until `pred` holds (or panics after `WAIT`).
    pub async fn wait_battle(&self, encoded_id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self.get(&format!("/v1/battles/{encoded_id}")).await;
            if status == StatusCode::OK && pred(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "battle {encoded_id} never matched; last: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens an SSE stream.
    pub async fn sse(&self, path: &str, last_event_id: Option<u64>) -> Sse {
        let mut req = self.client.get(self.url(path));
        if let Some(n) = last_event_id {
            req = req.header("last-event-id", n.to_string());
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        Sse::new(r)
    }
}

/// The `code` of an API error body.
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

pub fn sign(token: &str, request_time: &str) -> String {
    hex::encode(Sha256::digest(format!("{token}{request_time}").as_bytes()))
}

/// The callback query string Tencent sends, signed with `token` now.
pub fn query(command: &str, token: &str) -> String {
    let t = (now_ms() / 1000).to_string();
    format!(
        "SdkAppid={APP}&CallbackCommand={command}&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI&Sign={}&RequestTime={t}",
        sign(token, &t)
    )
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A Create callback body starting now.
pub fn create(id: &str, from: &str, to: &[&str], duration_ms: u64, need_response: bool) -> Value {
    json!({
        "CallbackCommand": CREATE,
        "Operator_Account": "brennanli",
        "BattleId": id,
        "FromRoomId": from,
        "ToRoomIdList": to,
        "Timeout": 30000,
        "Duration": duration_ms,
        "NeedResponse": need_response,
        "ExtensionInfo": "extension pk",
        "EventTime": now_ms(),
    })
}

/// An End callback body with final scores.
pub fn end(id: &str, from: (&str, i64), to: (&str, i64)) -> Value {
    let now = now_ms();
    json!({
        "CallbackCommand": END,
        "BattleId": id,
        "Duration": 60000,
        "CreateTime": now / 1000,
        "StartTime": now / 1000,
        "EndTime": now / 1000,
        "OpType": 0,
        "FromRoomInfo": { "RoomId": from.0, "Score": from.1, "Owner_Account": "brennan" },
        "ToRoomList": [ { "RoomId": to.0, "Score": to.1, "Owner_Account": "tandy" } ],
        "EventTime": now,
    })
}

/// `shared/fixtures/tencent`, beside the repository root.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/tencent"
    ))
    .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Percent-encodes a path segment.
pub fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One SSE frame.
#[derive(Clone, Debug, Default)]
pub struct Frame {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
    /// A comment-only frame (keep-alive).
    pub comment: bool,
}

impl Frame {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
    pub fn seq(&self) -> u64 {
        self.id.as_deref().unwrap().parse().unwrap()
    }
}

pub struct Sse {
    pub headers: reqwest::header::HeaderMap,
    stream: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: String,
}

impl Sse {
    fn new(r: reqwest::Response) -> Sse {
        Sse {
            headers: r.headers().clone(),
            stream: r.bytes_stream().map(|c| c.map(|b| b.to_vec())).boxed(),
            buf: String::new(),
        }
    }

    /// The next frame, comments included; `None` when the stream ended.
    pub async fn frame(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut f = Frame::default();
                let mut data = Vec::new();
                let mut comment = true;
                for line in raw.lines() {
                    if line.is_empty() || line.starts_with(':') {
                        continue;
                    }
                    comment = false;
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match k {
                        "event" => f.event = Some(v.into()),
                        "id" => f.id = Some(v.into()),
                        "data" => data.push(v.to_owned()),
                        _ => {}
                    }
                }
                f.data = data.join("\n");
                f.comment = comment;
                return Some(f);
            }
            let chunk = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("no SSE frame within {within:?}; buffered: {:?}", self.buf)
                })?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }

    /// The next non-comment frame.
    pub async fn event(&mut self) -> Frame {
        loop {
            let f = self.frame(WAIT).await.expect("stream open");
            if !f.comment {
                return f;
            }
        }
    }

    /// Asserts nothing but keep-alives arrives for `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left, self.frame(quiet + WAIT)).await {
                Err(_) => return,
                Ok(Some(f)) if f.comment => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// The real `livebattle` binary of this build.
pub const BIN: &str = env!("CARGO_BIN_EXE_livebattle");

/// A command for the binary, free of any outer `LIVEBATTLE_*` setting.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    // Start from a clean slate whatever the outer environment holds.
    for (key, _) in std::env::vars() {
        if key.starts_with("LIVEBATTLE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn").kill_on_drop(true);
    cmd
}

/// Starts the binary and reads the address from its first stdout line.
pub async fn spawn(mut cmd: Command) -> (Child, String) {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the binary prints its address")
        .unwrap()
        .expect("a line on stdout");
    let addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, format!("http://{addr}"))
}
