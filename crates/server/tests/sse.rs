//! Server-Sent Events over HTTP: snapshot first, then notifications; resumption with
//! `Last-Event-ID` without gap or duplicate; a fresh snapshot when resumption is impossible.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn battle_ids(snapshot: &Value) -> Vec<String> {
    snapshot["battles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["battle_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn snapshot_then_notifications_with_headers() {
    let server = Server::start(config()).await;
    server
        .callback_ok(CREATE, &create("before", "r1", &["r2"], 60_000, false))
        .await;
    let mut stream = server.sse("/v1/events", None).await;
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    assert_eq!(stream.headers["cache-control"], "no-cache");

    let snap = stream.event().await;
    assert_eq!(snap.event.as_deref(), Some("snapshot"));
    let data = snap.json();
    assert_eq!(battle_ids(&data), ["before"]);
    assert_eq!(data["seq"], 1);
    assert_eq!(data["reason"], "initial");
    assert_eq!(snap.seq(), 1);

    server
        .callback_ok(CREATE, &create("after", "r3", &["r4"], 60_000, false))
        .await;
    let n = stream.event().await;
    assert_eq!(n.event.as_deref(), Some("battle"));
    assert_eq!(n.seq(), 2);
    let data = n.json();
    assert_eq!(data["seq"], 2);
    assert_eq!(data["battle_id"], "after");
    assert_eq!(data["from"], Value::Null);
    assert_eq!(data["to"], "running");
    assert_eq!(data["cause"], "create_webhook");
    assert_eq!(data["state"], "running");
    assert!(data["server_time_ms"].is_i64() && data["ends_at_ms"].is_i64());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn timer_driven_battle_stream() {
    let server = Server::start(config()).await;
    let mut stream = server
        .sse(&format!("/v1/battles/{}/events", encode("t/1=")), None)
        .await;
    let snap = stream.event().await;
    assert_eq!(snap.event.as_deref(), Some("snapshot"));
    assert!(
        battle_ids(&snap.json()).is_empty(),
        "the battle does not exist yet"
    );

    // Another battle's news does not reach this stream.
    server
        .callback_ok(CREATE, &create("other", "o1", &["o2"], 60_000, false))
        .await;
    server.create_running("t/1=", 300).await;
    let started = stream.event().await.json();
    assert_eq!(started["battle_id"], "t/1=");
    assert_eq!(started["to"], "running");
    let ended = stream.event().await.json();
    assert_eq!(ended["from"], "running");
    assert_eq!(ended["to"], "ended");
    assert_eq!(ended["cause"], "end_timer");
    assert_eq!(ended["end_reason"], "time_up");
    assert!(ended["seq"].as_u64() > started["seq"].as_u64());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn resume_with_last_event_id_has_no_gap_and_no_duplicate() {
    let server = Server::start(config()).await;
    let mut stream = server.sse("/v1/events", None).await;
    assert_eq!(stream.event().await.seq(), 0);
    server
        .callback_ok(CREATE, &create("r-1", "a", &["b"], 60_000, false))
        .await;
    let first = stream.event().await;
    assert_eq!(first.seq(), 1);
    drop(stream);

    // While disconnected: three more changes.
    server
        .callback_ok(CREATE, &create("r-2", "c", &["d"], 60_000, false))
        .await;
    server
        .admin(
            "/v1/battles/r-1/scores",
            &json!({"scores": [{"room_id": "a", "score": 7}]}),
        )
        .await;
    server.admin("/v1/battles/r-2/end", &json!({})).await;

    let mut resumed = server.sse("/v1/events", Some(first.seq())).await;
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let f = resumed.event().await;
        assert_eq!(
            f.event.as_deref(),
            Some("battle"),
            "no snapshot on a successful resume"
        );
        assert_eq!(f.json()["seq"].as_u64(), Some(f.seq()));
        seqs.push(f.seq());
    }
    assert_eq!(seqs, [2, 3, 4]);
    // Then live, continuing the same sequence.
    server
        .callback_ok(CREATE, &create("r-3", "e", &["f"], 60_000, false))
        .await;
    assert_eq!(resumed.event().await.seq(), 5);
    resumed.assert_quiet(Duration::from_millis(200)).await;

    // A per-battle stream resumes with only that battle's notifications.
    let mut one = server.sse("/v1/battles/r-1/events", Some(1)).await;
    let f = one.event().await;
    assert_eq!(f.seq(), 3);
    assert_eq!(f.json()["participants"][0]["score"], 7);
    one.assert_quiet(Duration::from_millis(200)).await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn resume_too_old_gets_a_fresh_snapshot() {
    let mut c = config();
    c.replay_capacity = 2;
    let server = Server::start(c).await;
    for i in 0..5 {
        server
            .callback_ok(
                CREATE,
                &create(
                    &format!("old-{i}"),
                    &format!("x{i}"),
                    &[&format!("y{i}")],
                    60_000,
                    false,
                ),
            )
            .await;
    }
    let mut stream = server.sse("/v1/events", Some(1)).await;
    let snap = stream.event().await;
    assert_eq!(snap.event.as_deref(), Some("snapshot"));
    let data = snap.json();
    assert_eq!(data["reason"], "resume_too_old");
    assert_eq!(data["seq"], 5);
    assert_eq!(battle_ids(&data).len(), 5);
    // Within the ring it resumes.
    let mut ok = server.sse("/v1/events", Some(3)).await;
    assert_eq!(ok.event().await.seq(), 4);
    assert_eq!(ok.event().await.seq(), 5);
    // A seq from the future (e.g. before a restart) also gets a snapshot.
    let mut future = server.sse("/v1/events", Some(999)).await;
    assert_eq!(future.event().await.json()["reason"], "resume_too_old");
    // A malformed id is ignored.
    let r = server
        .client
        .get(server.url("/v1/events"))
        .header("last-event-id", "not-a-number")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn room_stream_and_keep_alive() {
    let mut c = config();
    c.sse_keep_alive = Duration::from_secs(1);
    let server = Server::start(c).await;
    server.create_running("room-1", 60_000).await;
    let mut stream = server.sse("/v1/rooms/pk-5/events", None).await;
    let snap = stream.event().await.json();
    assert_eq!(battle_ids(&snap), ["room-1"]);
    server
        .callback_ok(CREATE, &create("room-2", "zz-1", &["zz-2"], 60_000, false))
        .await;
    server.admin("/v1/battles/room-1/end", &json!({})).await;
    let n = stream.event().await.json();
    assert_eq!(n["battle_id"], "room-1");
    assert_eq!(n["to"], "ended");
    assert_eq!(n["end_reason"], "ended_by_app");
    // Keep-alive comments arrive while nothing happens.
    let f = stream.frame(WAIT).await.unwrap();
    assert!(f.comment, "{f:?}");
    server.stop().await.unwrap();
}

/// Reads `socket` until `done` holds for the events read (within [`WAIT`]).
async fn raw_events(
    socket: &mut tokio::net::TcpStream,
    raw: &mut Vec<u8>,
    done: impl Fn(&[(String, String, String)]) -> bool,
) -> Vec<(String, String, String)> {
    use tokio::io::AsyncReadExt;
    let read = async {
        loop {
            let events = dechunked_events(raw);
            if done(&events) {
                return events;
            }
            let mut buf = [0u8; 16 * 1024];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(raw));
            raw.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(WAIT, read).await.expect("the events")
}

/// The `(event, id, data)` of a chunked SSE response read so far (from its head on).
fn dechunked_events(raw: &[u8]) -> Vec<(String, String, String)> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, mut rest)) = text.split_once("\r\n\r\n") else {
        return Vec::new();
    };
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size, 16).unwrap();
        if after.len() < size + 2 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    let complete = body.rfind("\n\n").map_or("", |end| &body[..end]);
    complete
        .split("\n\n")
        .filter(|e| !e.is_empty() && !e.starts_with(':'))
        .map(|e| {
            let field = |k: &str| {
                e.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("event: "), field("id: "), field("data: "))
        })
        .collect()
}

/// The listener serves a connection's first request when it is a plain event stream, and
/// axum serves the rest (here a stream opened on a connection a `GET /v1/time` used before):
/// both send the same events, byte for byte for a notification.
#[tokio::test]
async fn a_stream_on_a_reused_connection_sends_the_same_events() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(config()).await;
    server.create_running("reuse-1", 60_000).await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let request = b"GET /v1/battles/reuse-1/events HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let mut reused = tokio::net::TcpStream::connect(&addr).await.unwrap();
    reused
        .write_all(b"GET /v1/time HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut time = Vec::new();
    while !String::from_utf8_lossy(&time).contains("}") {
        let mut buf = [0u8; 4096];
        let n = reused.read(&mut buf).await.unwrap();
        assert!(n > 0);
        time.extend_from_slice(&buf[..n]);
    }
    assert!(time.starts_with(b"HTTP/1.1 200 OK"));
    reused.write_all(request).await.unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (socket, raw) in [(&mut first, &mut a), (&mut reused, &mut b)] {
        let events = raw_events(socket, raw, |e| !e.is_empty()).await;
        assert_eq!(events[0].0, "snapshot");
        assert!(events[0].2.contains("reuse-1"), "{}", events[0].2);
    }
    server.admin("/v1/battles/reuse-1/end", &json!({})).await;
    let ended = |e: &[(String, String, String)]| e.len() == 2;
    let (one, two) = (
        raw_events(&mut first, &mut a, ended).await,
        raw_events(&mut reused, &mut b, ended).await,
    );
    assert_eq!(one[0].1, two[0].1, "the snapshots cover the same seq");
    assert_eq!(one[1], two[1], "the same notification");
    assert_eq!(one[1].0, "battle");
    assert!(one[1].2.contains("\"to\":\"ended\""), "{}", one[1].2);
    server.stop().await.unwrap();
}

/// A stream of every battle that starts within a second of another shares its snapshot and gets
/// what came since as events (else it reads its own snapshot): either way it knows every
/// battle once, in order, and continues live.
#[tokio::test]
async fn a_stream_starting_right_after_another_knows_what_came_between() {
    let server = Server::start(config()).await;
    server
        .callback_ok(CREATE, &create("first", "r1", &["r2"], 60_000, false))
        .await;
    let mut a = server.sse("/v1/events", None).await;
    let snap_a = a.event().await;
    assert_eq!(snap_a.seq(), 1);
    server
        .callback_ok(CREATE, &create("between", "r3", &["r4"], 60_000, false))
        .await;
    let mut b = server.sse("/v1/events", None).await;
    let snap_b = b.event().await;
    assert_eq!(snap_b.event.as_deref(), Some("snapshot"));
    assert_eq!(snap_b.json()["reason"], "initial");
    let mut known = battle_ids(&snap_b.json());
    if snap_b.seq() == 1 {
        // The shared snapshot (without "between"): "between" follows as its event.
        let n = b.event().await;
        assert_eq!((n.event.as_deref(), n.seq()), (Some("battle"), 2));
        known.push(n.json()["battle_id"].as_str().unwrap().to_owned());
    } else {
        assert_eq!(snap_b.seq(), 2);
    }
    known.sort();
    assert_eq!(known, ["between", "first"]);
    server
        .callback_ok(CREATE, &create("after", "r5", &["r6"], 60_000, false))
        .await;
    let n = b.event().await;
    assert_eq!(
        (n.seq(), n.json()["battle_id"].as_str()),
        (3, Some("after"))
    );
    server.stop().await.unwrap();
}
