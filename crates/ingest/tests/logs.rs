//! What the ingest logs, read through a real `tracing_subscriber::fmt` subscriber at the
//! default level (`info`): a refusal is one `warn` line with what is known of its request; an
//! accepted callback prints nothing.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use tracing_subscriber::fmt::MakeWriter;

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// A subscriber at `info` for this thread (the test's runtime is single-threaded).
fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(out.clone())
        .finish();
    (out.clone(), tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn a_refusal_is_one_warning_with_its_request_and_an_accepted_callback_prints_nothing() {
    let (out, _guard) = capture();
    let h = harness().await;
    h.deliver(CREATE, "create_battle.json").await;
    assert_eq!(
        out.text(),
        "",
        "an accepted callback prints nothing at info"
    );

    // Refused after its body was read: the battle is named.
    h.engine.shutdown().await;
    let reply = h
        .post(&query(APP, START), fixture("start_battle.json"))
        .await;
    assert_eq!(reply.status.as_u16(), 503);
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = lines[0];
    for expected in [
        "WARN",
        "callback refused",
        "command=\"Live.CallbackAfterStartBattle\"",
        &format!("battle_id=\"{START_ID}\""),
        "error_code=5031",
        &format!("sdk_app_id=\"{APP}\""),
        "client_ip=\"127.0.0.1\"",
        "opt_platform=\"RESTAPI\"",
    ] {
        assert!(line.contains(expected), "{expected:?} missing from {line}");
    }
}

#[tokio::test]
async fn a_refusal_before_the_body_names_what_the_query_said() {
    let (out, _guard) = capture();
    let h = harness().await;
    // The signed app without a signature: refused before the body is read.
    let reply = h
        .post(&query(SIGNED_APP, CREATE), fixture("create_battle.json"))
        .await;
    assert_eq!(reply.status.as_u16(), 401);
    let text = out.text();
    assert!(
        text.contains(&format!("sdk_app_id=\"{SIGNED_APP}\""))
            && text.contains("command=\"Live.CallbackAfterCreateBattle\"")
            && !text.contains("battle_id"),
        "{text}"
    );
}
