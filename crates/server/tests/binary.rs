//! The real `livebattle` binary: `--listen 127.0.0.1:0` with the port read from its "listening
//! on ADDR" line, configuration precedence (flag > env > file > default), `--help`, and a clean
//! exit on SIGTERM while a stream is open.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary on an ephemeral port for the test app, in memory, with `extra` arguments.
fn serving(extra: &[&str]) -> Command {
    let mut cmd = on_port(&["--in-memory"]);
    cmd.args(extra);
    cmd
}

/// The binary on an ephemeral port for the test app, with its storage arguments.
fn on_port(storage: &[&str]) -> Command {
    let mut cmd = command();
    cmd.args(["--listen", "127.0.0.1:0", "--sdk-app-id", APP])
        .args(storage);
    cmd
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("livebattle-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("livebattle.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A battle read back after a restart (or a move) is the one read before: state, version,
/// deadlines and participants.
fn assert_same_battle(before: &serde_json::Value, after: &serde_json::Value) {
    for key in [
        "state",
        "version",
        "ends_at_ms",
        "started_at_ms",
        "participants",
    ] {
        assert_eq!(before[key], after[key], "{key} as it was");
    }
}

async fn terminate(mut child: Child) {
    let pid = child.id().unwrap();
    // The shell's builtin `kill`: no dependency on procps.
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the binary exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test]
async fn runs_on_an_ephemeral_port_and_stops_on_sigterm() {
    let cmd = serving(&[]);
    let (child, base) = spawn(cmd).await;
    let server = Server::remote(base);
    assert_eq!(server.get("/healthz").await.0, StatusCode::OK);

    // No token configured: unsigned callbacks are accepted.
    let body = create("bin-1", "pk-3", &["pk-5"], 60_000, false);
    let (status, _) = server
        .callback_raw(CREATE, "", body.to_string().into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, b) = server.get("/v1/battles/bin-1").await;
    assert_eq!(b["state"], "running");

    // An open SSE stream does not hold the shutdown up.
    let mut stream = server.sse("/v1/events", None).await;
    assert_eq!(stream.event().await.event.as_deref(), Some("snapshot"));
    terminate(child).await;
    drop(stream);
}

/// `--header-read-timeout-secs`: a connection that sends nothing is closed (the timing itself
/// is tested under paused time in tests/connections.rs).
#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    use tokio::io::AsyncReadExt;
    let (child, base) = spawn(serving(&["--header-read-timeout-secs", "1"])).await;
    let addr = base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, socket.read(&mut buf))
        .await
        .expect("the server closes a silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    terminate(child).await;
}

#[tokio::test]
async fn flags_beat_env_beat_file() {
    let file = temp_file(
        "precedence",
        &format!(
            r#"
            listen = "127.0.0.1:1"
            admin_token = "from-file"
            body_limit = 100000
            [[apps]]
            sdk_app_id = {APP}
            token = "{TOKEN}"
            "#
        ),
    );
    // Its own data dir (removed below), not ./livebattle-data: a dir left by another build
    // (another format version) must not decide this test.
    let data_dir = file.parent().unwrap().join("data");
    let mut cmd = command();
    cmd.arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--listen", "127.0.0.1:0", "--admin-token", "from-flag"])
        .env("LIVEBATTLE_ADMIN_TOKEN", "from-env")
        .env("LIVEBATTLE_BODY_LIMIT", "2000");
    let (child, base) = spawn(cmd).await;
    let server = Server::remote(base);

    // The file's app and token are used (nothing overrides them).
    server.create_running("prec", 60_000).await;

    // The flag's admin token wins over the variable's and the file's.
    for (token, expected) in [
        ("from-flag", StatusCode::OK),
        ("from-env", StatusCode::UNAUTHORIZED),
        ("from-file", StatusCode::UNAUTHORIZED),
    ] {
        let scores = json!({"scores": [{"room_id": "pk-3", "score": 1}]});
        let (status, _) = server
            .post("/v1/battles/prec/scores", Some(token), &scores)
            .await;
        assert_eq!(status, expected, "admin token {token}");
    }

    // The variable's body limit wins over the file's.
    let mut big = create("big", "pk-3", &["pk-5"], 60_000, false);
    big["ExtensionInfo"] = json!("x".repeat(3000));
    let (status, _) = server.callback(CREATE, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    terminate(child).await;
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[tokio::test]
async fn help_and_config_errors() {
    let out = command().arg("--help").output().await.unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--sdk-app-id",
        "--token",
        "--signature-window-secs",
        "--body-limit",
        "--response-grace-ms",
        "--retention-secs",
        "--admin-token",
        "--log-format",
        "--in-memory",
        "--data-dir",
        "--config",
        "LIVEBATTLE_SDK_APP_ID",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    assert!(
        help.contains("./livebattle-data"),
        "--help names the default data dir"
    );

    let out = command().output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--sdk-app-id"), "{err}");

    let file = temp_file("typo", "lisen = \"127.0.0.1:0\"\n");
    let out = command()
        .arg("--config")
        .arg(&file)
        .args(["--sdk-app-id", APP])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("lisen"), "{err}");
    let _ = std::fs::remove_dir_all(file.parent().unwrap());

    // The JSON log format logs JSON lines.
    let mut cmd = serving(&["--log-format", "json"]);
    cmd.env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(first.unwrap().starts_with("listening on "));
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = tokio::time::timeout(WAIT, stderr.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&log).unwrap_or_else(|e| panic!("{e}: {log}"));
    assert!(parsed.get("level").is_some(), "{log}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    child.kill().await.unwrap();
}

#[tokio::test]
async fn durable_by_default_survives_kill_9_and_refuses_a_second_process() {
    let dir = std::env::temp_dir().join(format!("livebattle-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.to_str().unwrap().to_string();
    let durable = || on_port(&["--data-dir", &data]);
    let (mut child, base) = spawn(durable()).await;
    let server = Server::remote(base);
    let body = create("durable-1", "pk-3", &["pk-5"], 600_000, false);
    let (status, _) = server
        .callback_raw(CREATE, "", body.to_string().into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK, "acknowledged, so stored");
    let (_, before) = server.get("/v1/battles/durable-1").await;

    // A second process on the same data dir is refused, naming the file.
    let out = durable().output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("LOCK"), "the log store by default: {err}");
    assert!(err.contains("locked"), "{err}");

    // kill -9: no shutdown, no flush.
    child.kill().await.unwrap();
    let (child, base) = spawn(durable()).await;
    let server = Server::remote(base);
    let (status, after) = server.get("/v1/battles/durable-1").await;
    assert_eq!(status, StatusCode::OK, "the acknowledged battle survived");
    assert_same_battle(&before, &after);
    // The dedupe memory survived too.
    let (status, _) = server
        .callback_raw(CREATE, "", body.to_string().into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = server.get("/v1/battles/durable-1").await;
    assert_eq!(
        again["version"], before["version"],
        "a duplicate changed nothing"
    );
    // The log store's own figures are on /metrics.
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "# TYPE livebattle_store_commits_total counter",
        "# TYPE livebattle_store_log_bytes gauge",
        "livebattle_store_compactions_total 0",
    ] {
        assert!(metrics.contains(needle), "{needle}:\n{metrics}");
    }
    terminate(child).await;

    // Asking for the other store on this directory is refused, naming what it holds.
    let mut redb = durable();
    redb.args(["--durable-store", "redb"]);
    let out = redb.output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("holds a log store"), "{err}");
    assert!(err.contains("--durable-store log"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `livebattle copy-store`: a redb data dir copied into a new one kept by the log store; the
/// server started on the copy has the battles, the dedupe memory and the replay ring (a client
/// resumes with `Last-Event-ID` across the move).
#[tokio::test]
async fn copy_store_moves_a_redb_data_dir_to_the_log_store() {
    let root = std::env::temp_dir().join(format!("livebattle-copy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (old, new) = (root.join("redb"), root.join("log"));
    let (old_dir, new_dir) = (old.to_str().unwrap(), new.to_str().unwrap());
    let (child, base) = spawn(on_port(&["--data-dir", old_dir, "--durable-store", "redb"])).await;
    let server = Server::remote(base);
    let mut stream = server.sse("/v1/events", None).await;
    assert_eq!(stream.event().await.event.as_deref(), Some("snapshot"));
    let first = create("copy-1", "pk-3", &["pk-5"], 600_000, false);
    server.callback_ok(CREATE, &first).await;
    let seen = stream.event().await.seq();
    server
        .callback_ok(CREATE, &create("copy-2", "pk-7", &["pk-9"], 600_000, false))
        .await;
    let (_, before) = server.get("/v1/battles/copy-1").await;
    drop(stream);
    terminate(child).await;

    let copy = |to: &str| {
        let mut cmd = command();
        cmd.args(["copy-store", "--from", old_dir, "--to", to]);
        cmd
    };
    let out = copy(new_dir).output().await.unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("copied 2 battles"), "{said}");
    assert!(said.contains("(redb)") && said.contains("(log)"), "{said}");
    // Copying into a data dir that holds a store is refused, and so is a dir holding none.
    for (to, why) in [
        (new_dir, "already holds a log store"),
        (old_dir, "already holds a redb store"),
    ] {
        let out = copy(to).output().await.unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
    }
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cmd = command();
    cmd.args([
        "copy-store",
        "--from",
        empty.to_str().unwrap(),
        "--to",
        new_dir,
    ]);
    let out = cmd.output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no livebattle store"));

    // The server on the copy: the log store (chosen by the files), the same battles.
    let (child, base) = spawn(on_port(&["--data-dir", new_dir])).await;
    let server = Server::remote(base);
    let (status, after) = server.get("/v1/battles/copy-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_same_battle(&before, &after);
    let (status, _) = server.get("/v1/battles/copy-2").await;
    assert_eq!(status, StatusCode::OK);
    // The dedupe memory: the same Create again changes nothing.
    server.callback_ok(CREATE, &first).await;
    let (_, again) = server.get("/v1/battles/copy-1").await;
    assert_eq!(again["version"], before["version"]);
    // The replay ring: resuming after the first Create's event gives the second's, no snapshot.
    let mut resumed = server.sse("/v1/events", Some(seen)).await;
    let next = resumed.event().await;
    assert_eq!(next.event.as_deref(), Some("battle"));
    assert_eq!(next.json()["battle_id"], "copy-2");
    terminate(child).await;
    let _ = std::fs::remove_dir_all(&root);
}
