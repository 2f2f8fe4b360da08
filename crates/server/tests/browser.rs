//! The countdown page in a real browser: the `livebattle` binary, signed Tencent webhooks, and
//! Debian's headless Chromium driven over the DevTools protocol (`--remote-debugging-pipe`: JSON
//! messages separated by NUL bytes on file descriptors 3 and 4, so no WebSocket client is needed).
//!
//! Chromium missing: the test fails under `CI=true`, and is skipped (loudly) elsewhere.
//! Screenshots go to `target/browser-running.png` and `target/browser-ended.png`.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const APP: &str = "1400000001";
const TOKEN: &str = "T";
/// Battle ids shaped like Tencent's, with '/', '+' and '='.
const ID_MANUAL_END: &str = "4siHsNsWN/T3aub9zKraqPbSEGRX2z6gs3LDFi+d/3M=";
const ID_AWAITING: &str = "4siHsNsWN/T3aub9zKraqI4zZAyPRpXQhdtKv1q4HOs=";
const ID_TIMER_END: &str = "4siHsNsWN/T3aub9zKraqPfGQAimPhdFoe6VWhtz9lY=";
const ID_LONG: &str = "4siHsNsWN/T3aub9zKraqBr0wserTest+Long/Run0=";
const ID_AFTER_RESTART: &str = "4siHsNsWN/T3aub9zKraqBr0wserTest+Restart/0=";
const WAIT: Duration = Duration::from_secs(15);

#[test]
fn countdown_page_follows_battles_in_headless_chromium() {
    let Some(chromium) = find_chromium() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "chromium not found, and CI=true: the browser test must run in CI \
                 (apt-get install chromium, or set LIVEBATTLE_CHROMIUM)"
            );
        }
        eprintln!();
        eprintln!("==============================================================");
        eprintln!("SKIPPED: chromium not found (apt-get install -y chromium)");
        eprintln!("==============================================================");
        return;
    };
    let scratch = Scratch::new();
    let server = start_server(&scratch.0, "127.0.0.1:0");
    let url = format!("http://{}/", server.addr);
    let mut browser = Browser::launch(&chromium, &scratch.0);
    let page = browser.open(&url);

    browser.wait_for(
        &page,
        "document.body.dataset.ready === 'true'",
        "the first snapshot",
    );
    assert_eq!(
        browser.eval(
            &page,
            "document.querySelectorAll('[data-battle-id]').length"
        ),
        json!(0),
        "a fresh server has no battles"
    );

    let now = unix_ms();
    server.callback(&create(ID_MANUAL_END, "pk-3", "pk-5", false, 8_000, now));
    server.callback(&create(ID_AWAITING, "pk-7", "pk-8", true, 60_000, now));
    server.callback(&create(ID_TIMER_END, "pk-11", "pk-12", false, 2_500, now));
    server.callback(&create(ID_LONG, "pk-21", "pk-22", false, 90_000, now));

    // A running battle with a countdown that goes down.
    let card = browser.wait_for_card(&page, ID_MANUAL_END, "running");
    let first = countdown_secs(&card);
    assert!(
        (4.0..=8.0).contains(&first),
        "an 8 s battle just created shows at most 8 s: {card}"
    );
    thread::sleep(Duration::from_millis(700));
    let card = browser.card(&page, ID_MANUAL_END);
    let second = countdown_secs(&card);
    assert!(
        second < first,
        "the countdown decreases: {first} then {second}"
    );
    assert!(
        first - second >= 0.3 && first - second <= 2.0,
        "about 0.7 s passed: {first} then {second}"
    );

    // The response window has its own labelled countdown.
    let awaiting = browser.wait_for_card(&page, ID_AWAITING, "awaiting_response");
    assert!(
        awaiting["label"]
            .as_str()
            .is_some_and(|l| l.contains("Response window")),
        "{awaiting}"
    );
    let window = countdown_secs(&awaiting);
    assert!((20.0..=30.0).contains(&window), "{awaiting}");

    // The clock was synchronised with /v1/time.
    assert_eq!(
        browser.eval(&page, "window.livebattle.clock.synced"),
        json!(true)
    );
    browser.screenshot(&page, "browser-running.png");

    // The End webhook: the card shows the result and the reason.
    server.callback(&end(ID_MANUAL_END, "pk-3", "pk-5", 0, (120, 80), now));
    let ended = browser.wait_for_card(&page, ID_MANUAL_END, "ended");
    assert_eq!(ended["reason"], json!("time_up"), "{ended}");
    assert!(
        ended["reasonText"]
            .as_str()
            .is_some_and(|t| t.contains("time_up")),
        "{ended}"
    );
    assert_eq!(ended["outcome"], json!("pk-3 wins"), "{ended}");

    // The server's own timer ends the short battle; the page shows that too.
    let timed_out = browser.wait_for_card(&page, ID_TIMER_END, "ended");
    assert_eq!(timed_out["reason"], json!("time_up"), "{timed_out}");
    assert_eq!(timed_out["outcome"], json!("Draw at 0"), "{timed_out}");

    // The long battle is still running, and the live ones are listed before the ended ones.
    browser.wait_for_card(&page, ID_LONG, "running");
    let order = browser.eval(
        &page,
        "[...document.querySelectorAll('[data-battle-id]')].map(e => e.dataset.state)",
    );
    assert_eq!(
        order,
        json!(["running", "awaiting_response", "ended", "ended"]),
        "live battles first"
    );
    browser.screenshot(&page, "browser-ended.png");

    // The server goes away: the page says so, and EventSource keeps retrying.
    let addr = server.addr.clone();
    drop(server);
    browser.wait_for(
        &page,
        "document.getElementById('conn').dataset.status !== 'live'",
        "the page to notice the lost connection",
    );
    // The server restarts on the same address and data directory: the page reconnects, still
    // shows the battles the server kept, and follows new ones.
    let server = start_server(&scratch.0, &addr);
    browser.wait_for(
        &page,
        "document.getElementById('conn').dataset.status === 'live'",
        "the page to reconnect",
    );
    server.callback(&create(
        ID_AFTER_RESTART,
        "pk-31",
        "pk-32",
        false,
        30_000,
        unix_ms(),
    ));
    browser.wait_for_card(&page, ID_AFTER_RESTART, "running");
    let long = browser.card(&page, ID_LONG);
    assert_eq!(long["state"], json!("running"), "{long}");
    assert!(
        countdown_secs(&long) > 60.0,
        "a 90 s battle keeps its deadline across the restart: {long}"
    );
    assert_eq!(
        browser.card(&page, ID_MANUAL_END)["state"],
        json!("ended"),
        "recently ended battles stay for a while"
    );
    assert!(
        browser.page_errors.is_empty(),
        "the page threw: {:?}",
        browser.page_errors
    );
    browser.close();
}

// ---- Webhooks -------------------------------------------------------------------------------

fn create(id: &str, from: &str, to: &str, need_response: bool, duration_ms: u64, at: i64) -> Value {
    json!({
        "CallbackCommand": "Live.CallbackAfterCreateBattle",
        "Operator_Account": format!("host-of-{from}"),
        "BattleId": id,
        "FromRoomId": from,
        "ToRoomIdList": [to],
        "Timeout": 30_000,
        "Duration": duration_ms,
        "NeedResponse": need_response,
        "ExtensionInfo": "browser test",
        "EventTime": at,
    })
}

fn end(id: &str, from: &str, to: &str, op_type: i64, scores: (i64, i64), created: i64) -> Value {
    let now = unix_ms();
    json!({
        "CallbackCommand": "Live.CallbackAfterEndBattle",
        "BattleId": id,
        "Duration": 8_000,
        "CreateTime": created / 1000,
        "StartTime": created / 1000,
        "EndTime": now / 1000,
        "OpType": op_type,
        "FromRoomInfo": { "RoomId": from, "Score": scores.0, "Owner_Account": 144115245353757792u64 },
        "ToRoomList": [ { "RoomId": to, "Score": scores.1, "Owner_Account": "tandy" } ],
        "EventTime": now,
    })
}

// ---- The server -----------------------------------------------------------------------------

struct Server {
    addr: String,
    _child: KillOnDrop,
}

fn start_server(scratch: &Path, listen: &str) -> Server {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(scratch.join("server.log"))
        .expect("server log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_livebattle"))
        .args(["--listen", listen, "--sdk-app-id", APP, "--token", TOKEN])
        .arg("--data-dir")
        .arg(scratch.join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start the livebattle binary");
    let stdout = child.stdout.take().expect("stdout is piped");
    let child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(WAIT)
        .expect("the server prints `listening on ADDR`");
    let server = Server {
        addr,
        _child: child,
    };
    let (status, body) = server.http("GET", "/v1/time", "");
    assert_eq!(status, 200, "{body}");
    server
}

impl Server {
    /// POSTs a signed Tencent callback and expects Tencent's OK reply.
    fn callback(&self, body: &Value) {
        let command = body["CallbackCommand"].as_str().expect("a command");
        let now_s = unix_ms() / 1000;
        let sign = hex::encode(Sha256::digest(format!("{TOKEN}{now_s}")));
        let path = format!(
            "/callback?SdkAppid={APP}&CallbackCommand={command}&contenttype=json\
             &ClientIP=127.0.0.1&OptPlatform=RESTAPI&Sign={sign}&RequestTime={now_s}"
        );
        let (status, reply) = self.http("POST", &path, &body.to_string());
        assert_eq!(status, 200, "{command}: {reply}");
        let reply: Value = serde_json::from_str(&reply).expect("a JSON reply");
        assert_eq!(reply["ActionStatus"], "OK", "{command}: {reply}");
    }

    /// One HTTP/1.1 exchange on a fresh connection; the status and the body.
    fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr).expect("connect to the server");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .expect("send the request");
        let mut raw = String::new();
        stream.read_to_string(&mut raw).expect("read the response");
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, body.to_owned())
    }
}

// ---- The browser ----------------------------------------------------------------------------

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LIVEBATTLE_CHROMIUM").map(PathBuf::from) {
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .collect();
    ["chromium", "chromium-browser"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// A page's DevTools session.
struct Page {
    session: String,
}

struct Browser {
    _child: KillOnDrop,
    to_browser: ChildStdin,
    from_browser: Receiver<Value>,
    next_id: u64,
    /// Uncaught exceptions the pages threw (`Runtime.exceptionThrown`).
    page_errors: Vec<Value>,
}

impl Browser {
    fn launch(chromium: &Path, scratch: &Path) -> Browser {
        let profile = scratch.join("chromium-profile");
        fs::create_dir_all(&profile).expect("profile dir");
        let log = File::create(scratch.join("chromium.log")).expect("chromium log file");
        // Chromium speaks CDP on fds 3 (in) and 4 (out): map them onto our pipes.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--mute-audio",
                "--hide-scrollbars",
                "--window-size=1320,900",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start chromium");
        let to_browser = child.stdin.take().expect("stdin is piped");
        let mut out = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice(&message[..end]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Browser {
            _child: KillOnDrop(child),
            to_browser,
            from_browser: rx,
            next_id: 0,
            page_errors: Vec::new(),
        }
    }

    /// One DevTools command; its result.
    fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            message["sessionId"] = json!(s);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .and_then(|()| self.to_browser.flush())
            .unwrap_or_else(|e| panic!("{method}: cannot write to chromium: {e}"));
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.from_browser.recv_timeout(left) {
                Ok(reply) if reply["id"] == json!(id) => {
                    if let Some(err) = reply.get("error") {
                        panic!("{method}: {err}");
                    }
                    return reply["result"].clone();
                }
                Ok(event) => {
                    if event["method"] == "Runtime.exceptionThrown" {
                        self.page_errors
                            .push(event["params"]["exceptionDetails"].clone());
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("{method}: no reply from chromium"),
                Err(RecvTimeoutError::Disconnected) => panic!("{method}: chromium went away"),
            }
        }
    }

    /// A new tab on `url`, 1280x860.
    fn open(&mut self, url: &str) -> Page {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }), None);
        let target_id = target["targetId"].as_str().expect("a targetId").to_owned();
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
            None,
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("a sessionId")
            .to_owned();
        let s = Some(session.as_str());
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 860, "deviceScaleFactor": 1, "mobile": false }),
            s,
        );
        self.call("Page.enable", json!({}), s);
        self.call("Runtime.enable", json!({}), s);
        let nav = self.call("Page.navigate", json!({ "url": url }), s);
        assert!(nav.get("errorText").is_none(), "navigate: {nav}");
        Page { session }
    }

    /// Evaluates a JavaScript expression in the page; its value.
    fn eval(&mut self, page: &Page, expression: &str) -> Value {
        self.try_eval(page, expression)
            .unwrap_or_else(|ex| panic!("{expression}: {ex}"))
    }

    /// Evaluates a JavaScript expression in the page; its value, or the exception it threw.
    fn try_eval(&mut self, page: &Page, expression: &str) -> Result<Value, Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            Some(&page.session),
        );
        match r.get("exceptionDetails") {
            Some(ex) => Err(ex.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Polls until `condition` (JavaScript) is true; while the page loads it may throw.
    fn wait_for(&mut self, page: &Page, condition: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.try_eval(page, &format!("!!({condition})")) == Ok(json!(true)) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// What a battle's card shows (null when there is no card).
    fn card(&mut self, page: &Page, id: &str) -> Value {
        let id = serde_json::to_string(id).expect("a JSON string");
        self.eval(
            page,
            &format!(
                "(() => {{
                  const el = document.querySelector(`[data-battle-id=\"${{CSS.escape({id})}}\"]`);
                  if (!el) return null;
                  const text = (sel) => el.querySelector(sel)?.textContent ?? null;
                  return {{
                    state: el.dataset.state,
                    countdown: text('.countdown'),
                    label: text('.label'),
                    outcome: text('.outcome'),
                    reason: el.querySelector('.end-reason')?.dataset.endReason ?? null,
                    reasonText: text('.end-reason'),
                  }};
                }})()"
            ),
        )
    }

    /// Polls until the battle's card is in `state`; what it shows then.
    fn wait_for_card(&mut self, page: &Page, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let card = self.card(page, id);
            if card["state"] == json!(state) {
                return card;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {id} to be {state}: {card}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the page under target/.
    fn screenshot(&mut self, page: &Page, name: &str) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png" }),
            Some(&page.session),
        );
        let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = target_dir().join(name);
        fs::write(&path, png).expect("write the screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    fn close(mut self) {
        // Best effort: the child is killed on drop anyway.
        let mut bytes = json!({ "id": 0, "method": "Browser.close" })
            .to_string()
            .into_bytes();
        bytes.push(0);
        let _ = self.to_browser.write_all(&bytes);
        let _ = self.to_browser.flush();
        thread::sleep(Duration::from_millis(200));
    }
}

// ---- Helpers --------------------------------------------------------------------------------

/// "00:07.3" → 7.3, "1:02:03.4" → 3723.4.
fn countdown_secs(card: &Value) -> f64 {
    let text = card["countdown"].as_str().unwrap_or_default();
    text.split(':')
        .map(|part| part.parse::<f64>())
        .try_fold(0.0, |acc, part| part.map(|p| acc * 60.0 + p))
        .unwrap_or_else(|_| panic!("not a countdown: {card}"))
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let digits: Vec<u32> = text
        .bytes()
        .filter(|c| !matches!(c, b'=' | b'\n' | b'\r'))
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, d)| acc | (d << (18 - 6 * i)));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64
}

/// Kills (and reaps) a child process when dropped, also when the test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh directory for this run (browser profile, logs), removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("browser-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "browser test: logs kept in {} (server.log, chromium.log)",
                self.0.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn countdown_text_and_base64_helpers() {
    assert_eq!(countdown_secs(&json!({ "countdown": "00:07.3" })), 7.3);
    assert_eq!(countdown_secs(&json!({ "countdown": "1:02:03.5" })), 3723.5);
    assert_eq!(base64_decode("Zm9v"), b"foo");
    assert_eq!(base64_decode("Zm8="), b"fo");
    assert_eq!(base64_decode("Zg=="), b"f");
    assert_eq!(base64_decode("+/8="), [0xfb, 0xff]);
}
