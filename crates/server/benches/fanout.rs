//! SSE fan-out of the real release `livebattle` process (in memory): how long after a webhook's
//! acknowledgement each subscriber receives the notification.
//!
//! ```sh
//! cargo bench -p livebattle-server --bench fanout                          # 10,000 on one battle; 100,000 battles
//! LIVEBATTLE_BENCH_SMOKE=1 cargo bench -p livebattle-server --bench fanout # 200 and 1,000, a few seconds
//! cargo bench -p livebattle-server --bench fanout -- --subscribers 5000 --battles 20000 --rounds 10
//! ```
//!
//! * **One battle, many subscribers**: `--subscribers` (10,000) raw-TCP SSE clients on
//!   `GET /v1/battles/fan-1/events`, each waiting for its initial snapshot. Then, one at a time:
//!   the battle's Create (NeedResponse true), Start and End webhooks, and between Start and End
//!   `--rounds` (5) admin score updates (`POST /v1/battles/fan-1/scores`). For every change, every
//!   subscriber's receipt instant minus the instant the HTTP reply (the ack) reached the sender.
//!   The next change is sent once every subscriber received the previous one.
//! * **Many battles, one subscriber each**: `--battles` (100,000) clients, client i on
//!   `GET /v1/battles/b{i}/events`; then one Create webhook per battle, closed-loop over 64
//!   connections; per battle, receipt minus that battle's ack. The bench tries to raise its own
//!   open-file limit and the server's with `ulimit -n` (re-executing itself through `sh`); where
//!   the hard limit cannot be raised (a container without CAP_SYS_RESOURCE), at most
//!   `limit - 2000` subscribers are connected at once (`--wave`): the battles are taken in
//!   waves, each wave's subscribers connect, its Creates are sent, its subscribers leave, and
//!   the battles stay. Clients bind to source addresses 127.0.0.2–127.0.0.9 in turn, so the
//!   sockets that waves leave in TIME_WAIT never exhaust one address's ephemeral ports.
//!
//! * **The floor**, after part one and in the same run: the same subscribers on a raw SSE server
//!   (`fanout/floor.rs`: no engine, no HTTP library, one blocking `write` of a ready chunk per
//!   subscriber from a thread per core), events of the size livebattle's were, the same number of
//!   changes. What loopback TCP alone costs on this machine; livebattle's figures are printed
//!   against it.
//!
//! The subscribers' sockets are read by one thread with epoll (`common/reader.rs`), so that the
//! load generator's share of the two cores stays small. Negative figures mean the event arrived
//! before the ack did (the server publishes before it replies). Exits non-zero only if a
//! subscriber missed an event; targets are printed.

mod common;
#[path = "fanout/floor.rs"]
mod floor;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::reader::Reader;
use common::*;
use tokio::sync::mpsc;

/// Opens `count` SSE clients on `path_of(i)` (at most 512 connecting at once), each reading its
/// snapshot; returns those that did, numbered.
async fn subscribe_all(
    addr: SocketAddr,
    count: usize,
    sources: &[IpAddr],
    path_of: impl Fn(usize) -> String,
) -> Vec<(usize, SseClient)> {
    let mut tasks = Vec::with_capacity(count);
    let parallel = Arc::new(tokio::sync::Semaphore::new(512));
    let started = Instant::now();
    for i in 0..count {
        let path = path_of(i);
        let source = if sources.is_empty() {
            None
        } else {
            Some(sources[i % sources.len()])
        };
        let parallel = parallel.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = parallel.acquire_owned().await;
            for attempt in 0..5 {
                match SseClient::connect(addr, source, &path, Some(16 * 1024)).await {
                    Ok(mut client) => {
                        return match client.next().await {
                            Some(e) if e.name == "snapshot" => Some((i, client)),
                            _ => None,
                        }
                    }
                    Err(e) => {
                        if attempt == 4 {
                            eprintln!("subscriber {i}: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            None
        }));
    }
    let mut clients = Vec::with_capacity(count);
    for t in tasks {
        if let Ok(Some(c)) = t.await {
            clients.push(c);
        }
    }
    println!(
        "  {} subscribers ready in {:.1} s ({} failed)",
        clients.len(),
        started.elapsed().as_secs_f64(),
        count - clients.len()
    );
    clients
}

/// `at - since` in µs, negative when `at` came first.
fn micros_after(at: Instant, since: Instant) -> i64 {
    if at >= since {
        (at - since).as_micros() as i64
    } else {
        -((since - at).as_micros() as i64)
    }
}

fn summary(label: &str, lat_us: &mut [i64]) -> f64 {
    lat_us.sort_unstable();
    let p99 = pct(lat_us, 0.99) as f64 / 1000.0;
    println!(
        "  {label}: {} samples, ack -> receipt p50 {:.2} ms, p99 {p99:.2} ms, p99.9 {:.2} ms, max {:.2} ms, min {:.2} ms (target p99 <= 50 ms)",
        lat_us.len(),
        pct(lat_us, 0.50) as f64 / 1000.0,
        pct(lat_us, 0.999) as f64 / 1000.0,
        pct(lat_us, 1.0) as f64 / 1000.0,
        pct(lat_us, 0.0) as f64 / 1000.0,
    );
    p99
}

fn signed_post(
    client: &reqwest::Client,
    addr: SocketAddr,
    command: &str,
    body: String,
) -> reqwest::RequestBuilder {
    client
        .post(format!("http://{addr}/callback?{}", query(command)))
        .body(body)
}

/// One change of part one: what it is, whether it is a webhook (else an admin score update), and
/// its request.
type Change = (&'static str, bool, reqwest::RequestBuilder);

/// livebattle's change `k` of `changes` to battle `id`: Create, Start, score updates, End.
fn livebattle_change(
    client: &reqwest::Client,
    addr: SocketAddr,
    id: &str,
    k: usize,
    changes: usize,
    started_s: i64,
) -> Change {
    let (cs, ss) = (started_s, started_s);
    let rooms_start = format!(
        r#""FromRoomInfo":{{"RoomId":"a-{id}","Owner_Account":"x"}},"ToRoomList":[{{"RoomId":"b-{id}","Owner_Account":"y"}}]"#
    );
    if k == 0 {
        (
            "Create webhook",
            true,
            signed_post(
                client,
                addr,
                CREATE,
                create_body(id, now_ms(), 600_000, true),
            ),
        )
    } else if k == 1 {
        (
            "Start webhook",
            true,
            signed_post(
                client,
                addr,
                START,
                format!(
                    r#"{{"CallbackCommand":"{START}","BattleId":"{id}","Duration":600000,"CreateTime":{cs},"StartTime":{ss},{rooms_start},"EventTime":{}}}"#,
                    now_ms()
                ),
            ),
        )
    } else if k == changes - 1 {
        (
            "End webhook",
            true,
            signed_post(
                client,
                addr,
                END,
                format!(
                    r#"{{"CallbackCommand":"{END}","BattleId":"{id}","Duration":600000,"CreateTime":{cs},"StartTime":{ss},"EndTime":{},"OpType":1,"FromRoomInfo":{{"RoomId":"a-{id}","Score":10,"Owner_Account":"x"}},"ToRoomList":[{{"RoomId":"b-{id}","Score":20,"Owner_Account":"y"}}],"EventTime":{}}}"#,
                    now_ms() / 1000,
                    now_ms()
                ),
            ),
        )
    } else {
        (
            "admin scores",
            false,
            client
                .post(format!("http://{addr}/v1/battles/{id}/scores"))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"scores":[{{"room_id":"a-{id}","score":{k}}},{{"room_id":"b-{id}","score":{}}}]}}"#,
                    2 * k
                )),
        )
    }
}

/// What part one (or its floor) measured.
struct OneBattle {
    ok: bool,
    /// p99 of every change, ms.
    p99_ms: f64,
    /// Bytes per received event on the wire (chunk framing included).
    event_bytes: usize,
}

/// Part one: `subs` subscribers on `path` of `server`; change `k` of `changes` made by
/// `change(k)`, the next once every subscriber received the previous one.
async fn one_battle(
    server: &Server,
    subs: usize,
    changes: usize,
    path: &str,
    change: impl Fn(usize) -> Change,
) -> OneBattle {
    let rss0 = server.rss();
    let sources: Vec<IpAddr> = (2..=9)
        .map(|d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)))
        .collect();
    let clients = subscribe_all(server.addr, subs, &sources, |_| path.to_owned()).await;
    let ready = clients.len();
    let rss1 = server.rss();
    println!(
        "  server VmRSS {:.1} -> {:.1} MiB with the subscribers ({:.1} KiB per subscriber)",
        rss0 as f64 / 1048576.0,
        rss1 as f64 / 1048576.0,
        rss1.saturating_sub(rss0) as f64 / 1024.0 / subs.max(1) as f64
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = match Reader::spawn(clients, tx) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("the subscribers' reader: {e}");
            return OneBattle {
                ok: false,
                p99_ms: f64::NAN,
                event_bytes: 0,
            };
        }
    };
    let mut webhook_lat = Vec::new();
    let mut admin_lat = Vec::new();
    let (mut bytes, mut reads) = (0usize, 0usize);
    let mut ok = true;
    let (server_cpu0, my_cpu0) = (cpu_s(server.pid), cpu_s(std::process::id()));
    for k in 0..changes {
        let (label, webhook, request) = change(k);
        let reply = request.send().await;
        let acked = Instant::now();
        match reply {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                eprintln!("change {k}: HTTP {}", r.status());
                ok = false;
                continue;
            }
            Err(e) => {
                eprintln!("change {k}: {e}");
                ok = false;
                continue;
            }
        }
        let mut this = Vec::with_capacity(ready);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while this.len() < ready {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(batch)) => {
                    for r in batch {
                        if r.k != k {
                            eprintln!("a subscriber's event {} arrived during change {k}", r.k);
                        }
                        bytes += r.bytes;
                        reads += usize::from(r.bytes > 0);
                        this.push(micros_after(r.at, acked));
                    }
                }
                _ => break,
            }
        }
        if this.len() < ready {
            eprintln!(
                "change {k}: only {} of {ready} subscribers received it",
                this.len()
            );
            ok = false;
        }
        (if webhook {
            &mut webhook_lat
        } else {
            &mut admin_lat
        })
        .extend_from_slice(&this);
        this.sort_unstable();
        println!(
            "    change {k} ({label}): min {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            pct(&this, 0.0) as f64 / 1000.0,
            pct(&this, 0.5) as f64 / 1000.0,
            pct(&this, 0.99) as f64 / 1000.0,
            pct(&this, 1.0) as f64 / 1000.0
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The 200 ms pauses between changes cost (almost) nothing.
    println!(
        "  CPU per change: server {:.1} ms, this process (the subscribers and the sender) {:.1} ms",
        1000.0 * (cpu_s(server.pid) - server_cpu0) / changes as f64,
        1000.0 * (cpu_s(std::process::id()) - my_cpu0) / changes as f64
    );
    if !webhook_lat.is_empty() {
        summary("webhooks (Create, Start, End)", &mut webhook_lat);
    }
    if !admin_lat.is_empty() {
        summary("admin score updates", &mut admin_lat);
    }
    let mut all: Vec<i64> = webhook_lat.iter().chain(&admin_lat).copied().collect();
    let p99_ms = summary("all changes", &mut all);
    reader.stop();
    OneBattle {
        ok: ok && ready == subs,
        p99_ms,
        event_bytes: bytes / reads.max(1),
    }
}

/// Part two: `n` battles, one subscriber each, at most `wave` subscribers connected at once
/// (battles `w*wave ..` get their subscribers, then their Creates, then the subscribers leave;
/// the battles stay, so the server holds all `n` at the end).
async fn many_battles(server: &Server, n: usize, wave: usize) -> bool {
    let addr = server.addr;
    let wave = wave.clamp(1, n.max(1));
    println!(
        "{n} battles, one subscriber each, in {} waves of at most {wave} concurrent subscribers:",
        n.div_ceil(wave)
    );
    let sources: Vec<IpAddr> = (2..=9)
        .map(|d| IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)))
        .collect();
    let mut lat = Vec::new();
    let (mut all_errors, mut all_missed) = (0, 0);
    let mut first = 0;
    while first < n {
        let count = wave.min(n - first);
        let rss0 = server.rss();
        let clients = subscribe_all(addr, count, &sources, move |i| {
            format!("/v1/battles/b{}/events", first + i)
        })
        .await;
        let ready = clients.len();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reader = match Reader::spawn(clients, tx) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("the subscribers' reader: {e}");
                return false;
            }
        };
        let rss1 = server.rss();
        println!(
            "  battles {first}..{}: server VmRSS {:.1} -> {:.1} MiB with the subscribers ({:.1} KiB per subscriber)",
            first + count,
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0,
            rss1.saturating_sub(rss0) as f64 / 1024.0 / count.max(1) as f64
        );
        let collector = tokio::spawn(async move {
            let mut got = vec![None; count];
            let mut received = 0;
            while received < ready {
                match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                    Ok(Some(batch)) => {
                        for r in batch {
                            got[r.client] = Some(r.at);
                            received += 1;
                        }
                    }
                    _ => break,
                }
            }
            got
        });
        let started = Instant::now();
        let (ok, errors, acks) = post_all(
            addr,
            count,
            64,
            move |i| {
                (
                    CREATE,
                    create_body(&format!("b{}", first + i), now_ms(), 600_000, false),
                )
            },
            true,
        )
        .await;
        let secs = started.elapsed().as_secs_f64();
        let got = collector.await.unwrap_or_default();
        let mut missed = 0;
        let before = lat.len();
        for (ack, at) in acks.iter().zip(&got) {
            match (ack, at) {
                (Some(ack), Some(at)) => lat.push(micros_after(*at, *ack)),
                _ => missed += 1,
            }
        }
        let mut this: Vec<i64> = lat[before..].to_vec();
        this.sort_unstable();
        println!(
            "    {ok} Creates acknowledged ({errors} errors) in {secs:.1} s ({:.0}/s); {missed} without ack and receipt; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ok as f64 / secs,
            pct(&this, 0.5) as f64 / 1000.0,
            pct(&this, 0.99) as f64 / 1000.0,
            pct(&this, 1.0) as f64 / 1000.0,
        );
        reader.stop();
        all_errors += errors;
        all_missed += missed;
        first += count;
        // Let the server notice the closed streams.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "  server VmRSS at the end {:.1} MiB, {n} battles live; {all_missed} battles without both an ack and a receipt",
        server.rss() as f64 / 1048576.0
    );
    summary("Create webhooks, all waves", &mut lat);
    all_errors == 0 && all_missed == 0
}

fn main() -> std::process::ExitCode {
    if flag("--floor-server") {
        return match floor::serve() {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor server: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let smoke = smoke();
    let subs: usize = arg("--subscribers").unwrap_or(if smoke { 200 } else { 10_000 });
    let battles: usize = arg("--battles").unwrap_or(if smoke { 1_000 } else { 100_000 });
    let rounds: usize = arg("--rounds").unwrap_or(5);
    let nofile = (subs.max(battles) as u64 + 10_000).max(65_536);
    ensure_nofile(nofile);
    let limit = nofile_limit().unwrap_or(1024);
    // Each subscriber is one descriptor here and one in the server, whose limit is the same:
    // keep room for the webhook connections and the rest.
    let wave: usize = arg("--wave").unwrap_or((limit as usize).saturating_sub(2_000).max(100));
    println!(
        "fanout: open-file limit {limit} (wanted {nofile}), so at most {wave} subscribers at once; ephemeral ports {}",
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap_or_default()
            .trim()
            .replace('\t', "-")
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let log = std::env::temp_dir().join(format!("livebattle-fanout-{}.log", std::process::id()));
    let mut all_ok = true;
    if subs > 0 {
        let changes = 3 + rounds;
        let server = Server::start(&[], nofile, &log);
        println!("server pid {} on {}", server.pid, server.addr);
        println!("one battle, {subs} subscribers, {changes} changes (Create, Start, {rounds} score updates, End):");
        let client = reqwest::Client::new();
        let (addr, id) = (server.addr, "fan-1");
        // The battle's CreateTime and StartTime, the same in every webhook.
        let started_s = now_ms() / 1000;
        let measured = rt.block_on(one_battle(
            &server,
            subs,
            changes,
            &format!("/v1/battles/{id}/events"),
            |k| livebattle_change(&client, addr, id, k, changes, started_s),
        ));
        server.stop();
        all_ok &= measured.ok;
        let me = std::env::current_exe().expect("this bench's path");
        let floor = Server::spawn(&me, &["--floor-server"], nofile, &log);
        let bytes = measured.event_bytes;
        println!(
            "the floor: the same {subs} subscribers on a raw SSE server (pid {}), {changes} events of {bytes} bytes:",
            floor.pid
        );
        let addr = floor.addr;
        let raw = rt.block_on(one_battle(&floor, subs, changes, "/events", |_| {
            (
                "raw event",
                true,
                client.post(format!("http://{addr}/fire?bytes={bytes}")),
            )
        }));
        floor.stop();
        all_ok &= raw.ok;
        println!(
            "one battle, {subs} subscribers: livebattle p99 {:.2} ms, the floor p99 {:.2} ms ({:.1}x; target p99 <= 50 ms)",
            measured.p99_ms,
            raw.p99_ms,
            measured.p99_ms / raw.p99_ms
        );
    }
    if battles > 0 {
        let server = Server::start(&[], nofile, &log);
        println!("server pid {} on {}", server.pid, server.addr);
        all_ok &= rt.block_on(many_battles(&server, battles, wave));
        server.stop();
    }
    let _ = std::fs::remove_file(&log);
    if all_ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
