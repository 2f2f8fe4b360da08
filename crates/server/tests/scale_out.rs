//! Several `livebattle` binaries sharing their battles through a real Redis
//! (`LIVEBATTLE_TEST_REDIS`, default redis://127.0.0.1:6379; under CI it must be there, else the
//! tests skip with a loud message):
//!
//! * three instances, webhooks spread round-robin (duplicates and Starts sent to other
//!   instances), one instance killed mid-battle: every battle ends exactly once, at its deadline
//!   (±50 ms), and the SSE clients of every instance see the same sequence; a client of the dead
//!   instance resumes on another with `Last-Event-ID` and misses nothing;
//! * Redis going away: webhooks are refused (never acknowledged), `/readyz` says not ready, and
//!   the instance recovers by itself when Redis is back (a private `redis-server` on its own port).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;

const TOLERANCE_MS: i64 = 50;

fn redis_url() -> String {
    std::env::var("LIVEBATTLE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether a Redis answers PING at `host:port`.
async fn pings(addr: &str) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

/// Skips loudly when there is no Redis, except under CI.
fn skip(why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("required under CI: {why}");
    }
    eprintln!("\n*** SKIPPED: {why} ***\n");
    true
}

fn namespace(name: &str) -> String {
    format!("lbtest-{}-{}-{name}", std::process::id(), now_ms())
}

/// One instance of the binary on the shared store.
async fn instance(url: &str, ns: &str) -> (Child, Server) {
    let mut cmd = command();
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--sdk-app-id",
        APP,
        "--token",
        TOKEN,
        "--store",
        url,
        "--redis-namespace",
        ns,
        "--redis-lease-ms",
        "300",
    ]);
    let (child, base) = spawn(cmd).await;
    (child, Server::remote(base))
}

/// Every `battle` event of a stream until it has been quiet for `quiet` (or closed).
async fn collect(sse: &mut Sse, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(quiet, sse.frame(quiet + WAIT)).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return out,
        };
        if frame.event.as_deref() == Some("battle") {
            out.push(frame.json());
        }
    }
}

fn key(e: &Value) -> (u64, String, String) {
    (
        e["seq"].as_u64().unwrap_or(0),
        e["battle_id"].as_str().unwrap_or_default().to_owned(),
        e["to"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_battles_and_one_event_order_through_redis() {
    let url = redis_url();
    let addr = url.trim_start_matches("redis://").trim_end_matches('/');
    if !pings(addr).await && skip(&format!("no Redis at {url}; start redis-server")) {
        return;
    }
    let ns = namespace("three");
    let mut children = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let (child, server) = instance(&url, &ns).await;
        children.push(child);
        servers.push(server);
    }
    let mut streams = Vec::new();
    for s in &servers {
        let mut sse = s.sse("/v1/events", None).await;
        let first = sse.event().await;
        assert_eq!(first.event.as_deref(), Some("snapshot"));
        streams.push(sse);
    }

    // 45 battles of 4-5.5 s, webhooks round-robin; each Create sent again to the next instance
    // (a duplicate), every third battle also gets its Start through the instance after that.
    let n = 45;
    let mut deadlines = BTreeMap::new();
    for i in 0..n {
        let id = format!("so-{i}");
        let duration = 4_000 + (i as u64 * 37) % 1_500;
        let body = create(
            &id,
            &format!("room-a{i}"),
            &[&format!("room-b{i}")],
            duration,
            false,
        );
        let at = body["EventTime"].as_i64().unwrap_or(0);
        deadlines.insert(id.clone(), at + duration as i64);
        servers[i % 3].callback_ok(CREATE, &body).await;
        servers[(i + 1) % 3].callback_ok(CREATE, &body).await;
        if i % 3 == 0 {
            let start = json!({
                "CallbackCommand": START,
                "BattleId": id,
                "Duration": duration,
                "CreateTime": at / 1000,
                "StartTime": at / 1000,
                "FromRoomInfo": { "RoomId": format!("room-a{i}") },
                "ToRoomList": [ { "RoomId": format!("room-b{i}") } ],
                "EventTime": at,
            });
            servers[(i + 2) % 3].callback_ok(START, &start).await;
        }
    }
    // Kill the third instance mid-battle (every deadline is still ahead).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first_deadline = deadlines.values().min().copied().unwrap_or(0);
    assert!(
        now_ms() < first_deadline - 500,
        "the kill comes before any deadline"
    );
    let killed_seen = {
        // What its client saw before the kill.
        let seen = collect(&mut streams[2], Duration::from_millis(300)).await;
        children[2].start_kill().expect("kill");
        let _ = children[2].wait().await;
        seen
    };
    let last_deadline = deadlines.values().max().copied().unwrap_or(0);
    let wait = (last_deadline - now_ms()).max(0) as u64 + 1_500;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let seen0 = collect(&mut streams[0], Duration::from_millis(500)).await;
    let seen1 = collect(&mut streams[1], Duration::from_millis(500)).await;

    // The same sequence on every instance, gapless.
    let k0: Vec<_> = seen0.iter().map(key).collect();
    let k1: Vec<_> = seen1.iter().map(key).collect();
    assert_eq!(k0, k1, "both survivors delivered the same sequence");
    for w in k0.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "no gap in the sequence: {w:?}");
    }
    let k2: Vec<_> = killed_seen.iter().map(key).collect();
    assert!(!k2.is_empty(), "the killed instance's client saw events");
    assert_eq!(
        k2,
        k0[..k2.len()],
        "the killed instance delivered the same order"
    );

    // Every battle ended exactly once, by its timer, at its deadline.
    let mut offsets = Vec::new();
    for (id, deadline) in &deadlines {
        let ends: Vec<&Value> = seen0
            .iter()
            .filter(|e| e["battle_id"] == id.as_str() && e["to"] == "ended")
            .collect();
        assert_eq!(ends.len(), 1, "{id} ended exactly once: {ends:?}");
        let end = ends[0];
        assert_eq!(end["cause"], "end_timer", "{id}: {end}");
        assert_eq!(end["ended_at_ms"].as_i64(), Some(*deadline), "{id}: {end}");
        let fired = end["server_time_ms"].as_i64().unwrap_or(0);
        offsets.push(fired - deadline);
        assert!(
            (fired - deadline).abs() <= TOLERANCE_MS,
            "{id} ended at {fired}, deadline {deadline} ({} ms off)",
            fired - deadline
        );
        let (s0, b0) = servers[0].get(&format!("/v1/battles/{id}")).await;
        let (s1, b1) = servers[1].get(&format!("/v1/battles/{id}")).await;
        assert_eq!((s0, s1), (StatusCode::OK, StatusCode::OK));
        assert_eq!(b0["state"], "ended");
        assert_eq!(b0["version"], b1["version"], "{id}: replicas agree");
    }

    offsets.sort_unstable();
    eprintln!(
        "{} battles on 3 instances (one killed): timer ends at deadline {:+} .. {:+} ms, median {:+} ms",
        offsets.len(),
        offsets.first().copied().unwrap_or(0),
        offsets.last().copied().unwrap_or(0),
        offsets.get(offsets.len() / 2).copied().unwrap_or(0)
    );

    // A client of the dead instance resumes on a survivor: exactly what came after.
    let last = k2.last().map_or(0, |k| k.0);
    let mut resumed = servers[0].sse("/v1/events", Some(last)).await;
    let first = resumed.event().await;
    assert_eq!(
        first.event.as_deref(),
        Some("battle"),
        "no snapshot on resume"
    );
    assert_eq!(first.seq(), last + 1, "no gap after Last-Event-ID {last}");

    for mut c in children {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
}

/// A private redis-server (its own port and directory), so it can be stopped and restarted.
struct PrivateRedis {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    async fn start(port: u16, dir: &std::path::Path) -> Option<PrivateRedis> {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if pings(&addr).await {
                return Some(PrivateRedis {
                    child,
                    port,
                    dir: dir.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    async fn stop(mut self) -> (u16, std::path::PathBuf) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        (self.port, self.dir)
    }
}

async fn ready(server: &Server) -> bool {
    server
        .client
        .get(server.url("/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status() == StatusCode::OK)
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_webhooks_and_readiness_then_recovers_by_itself() {
    let has_redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    if !has_redis && skip("redis-server is not installed") {
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("address").port()
    };
    let dir = std::env::temp_dir().join(format!("livebattle-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("redis dir");
    let redis = PrivateRedis::start(port, &dir)
        .await
        .expect("redis-server starts");
    let url = format!("redis://127.0.0.1:{port}");
    let (mut child, server) = instance(&url, "down").await;
    eventually("ready", || ready(&server)).await;
    server.create_running("before", 60_000).await;

    let (port, dir) = redis.stop().await;
    let (status, reply) = server
        .callback(CREATE, &create("during", "pk-7", &["pk-8"], 60_000, false))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert_eq!(reply["ActionStatus"], "FAIL", "never acknowledged: {reply}");
    eventually("not ready while Redis is down", async || {
        !ready(&server).await
    })
    .await;

    let redis = PrivateRedis::start(port, &dir)
        .await
        .expect("redis-server restarts");
    eventually("ready again", || ready(&server)).await;
    server
        .callback_ok(CREATE, &create("after", "pk-7", &["pk-8"], 60_000, false))
        .await;
    let (status, before) = server.get("/v1/battles/before").await;
    assert_eq!(status, StatusCode::OK, "kept in Redis: {before}");
    let (status, during) = server.get("/v1/battles/during").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the refused webhook changed nothing: {during}"
    );

    let _ = child.start_kill();
    let _ = child.wait().await;
    redis.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
