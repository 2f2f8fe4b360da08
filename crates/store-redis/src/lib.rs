//! # livebattle-store-redis
//!
//! A [`Store`] several `livebattle` instances share, on Redis: battles, their versions and
//! deadlines, the dedupe memory, timer claims, the `seq` counter and a change feed (a Redis
//! Stream) every instance follows. Each instance keeps a replica of every battle; a change is
//! committed by a Lua script that compare-and-sets every battle's version, so two instances
//! handling events of one battle never lose either ([`SharedStore`]).
//!
//! ```no_run
//! use livebattle_engine::Engine;
//! use livebattle_store_redis::{RedisOptions, RedisStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379", RedisOptions::default()).await?;
//! let engine = Engine::builder().store(store).replay_capacity(10_000).start().await?;
//! # Ok(()) }
//! ```
//!
//! ## Key layout
//!
//! Every key carries the hash tag `{<namespace>}` (default `{livebattle}`), so all of them live
//! in one Redis Cluster slot and a script may touch them together:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{ns}:format` | string | layout version ([`FORMAT_VERSION`]) |
//! | `{ns}:battles` | hash | battle id → record (postcard) |
//! | `{ns}:versions` | hash | battle id → version (compare-and-set) |
//! | `{ns}:timers` | sorted set | battle id → its armed deadline, Unix ms |
//! | `{ns}:evicted` | sorted set | evicted battle id → Unix ms it may be forgotten (dedupe) |
//! | `{ns}:claims` | hash | battle id → `generation\|instance\|lease-expiry-ms` |
//! | `{ns}:seq` | string | the last notification `seq` |
//! | `{ns}:feed` | stream | every committed change, id `<seq>-<n>` |

use std::sync::{Arc, Mutex};
use std::time::Duration;

use livebattle_engine::store::BoxFuture;
use livebattle_engine::{
    Battle, Claim, Commit, Fetched, Loaded, Notification, Replicated, SharedStore, Store,
    StoreError, StoreOp, Stored,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

/// The layout version in `{ns}:format`; a namespace written by another layout is refused.
pub const FORMAT_VERSION: u64 = 1;

/// How a [`RedisStore`] behaves.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// The hash tag every key carries (several deployments can share one Redis).
    pub namespace: String,
    /// How long a timer claim holds: if the instance that claimed a due timer dies before it
    /// commits, another fires it after this (ms).
    pub lease_ms: u64,
    /// How many recent notifications are loaded for resuming subscriptions.
    pub replay: usize,
    /// The change feed's approximate length (older entries are trimmed).
    pub feed_len: u64,
    /// Per-command timeout: a Redis that does not answer is treated as down.
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> RedisOptions {
        RedisOptions {
            namespace: "livebattle".into(),
            lease_ms: 1_000,
            replay: 10_000,
            feed_len: 1_000_000,
            timeout: Duration::from_secs(5),
        }
    }
}

struct Keys {
    format: String,
    battles: String,
    versions: String,
    timers: String,
    evicted: String,
    claims: String,
    seq: String,
    feed: String,
}

impl Keys {
    fn new(ns: &str) -> Keys {
        let k = |name: &str| format!("{{{ns}}}:{name}");
        Keys {
            format: k("format"),
            battles: k("battles"),
            versions: k("versions"),
            timers: k("timers"),
            evicted: k("evicted"),
            claims: k("claims"),
            seq: k("seq"),
            feed: k("feed"),
        }
    }
}

/// Where following the change feed stands: the last entry followed, and how many entries the
/// feed had ever been given up to it (Redis's `entries-added` counts every entry ever added).
/// The feed is trimmed from its oldest end, so `entries-added − length` entries are gone; when
/// that is more than `consumed`, entries this instance had not followed yet were trimmed.
#[derive(Clone, Debug)]
struct Cursor {
    id: String,
    consumed: u64,
}

impl Default for Cursor {
    fn default() -> Cursor {
        Cursor {
            id: "0-0".into(),
            consumed: 0,
        }
    }
}

/// The feed's counters, from `XINFO STREAM`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FeedInfo {
    /// The newest entry's id (`0-0` for an empty or missing feed).
    last_id: String,
    /// Entries now in the feed.
    length: u64,
    /// Entries ever added (`None` before Redis 7.0, which does not count them).
    entries_added: Option<u64>,
}

impl FeedInfo {
    /// A feed not created yet.
    fn empty() -> FeedInfo {
        FeedInfo {
            last_id: "0-0".into(),
            length: 0,
            entries_added: Some(0),
        }
    }

    /// How many entries were trimmed away, if Redis counts them.
    fn trimmed(&self) -> Option<u64> {
        self.entries_added.map(|a| a.saturating_sub(self.length))
    }
}

/// The Redis store. Cheap to clone: clones share connections and the follow cursor.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    options: RedisOptions,
    keys: Keys,
    /// Requests (multiplexed, reconnecting).
    con: ConnectionManager,
    /// The change feed's blocking reads (their own connection).
    feed_con: tokio::sync::Mutex<ConnectionManager>,
    /// Where following the feed stands.
    cursor: Mutex<Cursor>,
    instance: String,
    fetch: Script,
    commit: Script,
}

impl RedisStore {
    /// Connects (an error when Redis does not answer) and checks the layout version.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<RedisStore, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError(format!("redis {url}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(options.timeout)
            .set_connection_timeout(options.timeout)
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let feed_config = ConnectionManagerConfig::new()
            .set_response_timeout(options.timeout + FOLLOW_BLOCK)
            .set_connection_timeout(options.timeout)
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let down = |e: redis::RedisError| StoreError(format!("redis {url}: {e}"));
        let con = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(down)?;
        let feed_con = ConnectionManager::new_with_config(client, feed_config)
            .await
            .map_err(down)?;
        let keys = Keys::new(&options.namespace);
        let instance = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let store = RedisStore {
            inner: Arc::new(Inner {
                url: url.to_string(),
                options,
                keys,
                con,
                feed_con: tokio::sync::Mutex::new(feed_con),
                cursor: Mutex::new(Cursor::default()),
                instance,
                fetch: Script::new(include_str!("fetch.lua")),
                commit: Script::new(include_str!("commit.lua")),
            }),
        };
        store.check_format().await?;
        Ok(store)
    }

    /// Whether `url` is a Redis URL this client can use (without connecting).
    pub fn check_url(url: &str) -> Result<(), StoreError> {
        redis::Client::open(url)
            .map(|_| ())
            .map_err(|e| StoreError(format!("redis {url}: not a usable Redis URL: {e}")))
    }

    /// This instance's name in timer claims.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Deletes every key of the namespace (tests; or to start a deployment afresh).
    pub async fn clear(&self) -> Result<(), StoreError> {
        let k = &self.inner.keys;
        let mut con = self.inner.con.clone();
        redis::cmd("DEL")
            .arg(&k.format)
            .arg(&k.battles)
            .arg(&k.versions)
            .arg(&k.timers)
            .arg(&k.evicted)
            .arg(&k.claims)
            .arg(&k.seq)
            .arg(&k.feed)
            .query_async::<()>(&mut con)
            .await
            .map_err(|e| self.err(e))
    }

    fn err(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError(format!("redis {}: {what}", self.inner.url))
    }

    async fn check_format(&self) -> Result<(), StoreError> {
        let mut con = self.inner.con.clone();
        let key = &self.inner.keys.format;
        let set: Value = redis::cmd("SET")
            .arg(key)
            .arg(FORMAT_VERSION)
            .arg("NX")
            .arg("GET")
            .query_async(&mut con)
            .await
            .map_err(|e| self.err(e))?;
        match set {
            Value::Nil => Ok(()),
            v => match text(&v).and_then(|s| s.parse::<u64>().ok()) {
                Some(FORMAT_VERSION) => Ok(()),
                other => Err(self.err(format!(
                    "{key} holds layout version {other:?}; this build reads version \
                     {FORMAT_VERSION} (use another --redis-namespace, or clear the namespace)"
                ))),
            },
        }
    }

    async fn load_all(&self) -> Result<Loaded, StoreError> {
        let keys = &self.inner.keys;
        let mut con = self.inner.con.clone();
        // Where the feed stands before reading: following continues from here, and changes
        // made while loading come again through the feed (newer versions win).
        let feed = self.feed_info(&mut con).await?;
        let cursor = Cursor {
            id: feed.last_id.clone(),
            consumed: feed.entries_added.unwrap_or(0),
        };
        let mut loaded = Loaded::default();
        let mut scan = "0".to_string();
        loop {
            let page: Value = redis::cmd("HSCAN")
                .arg(&keys.battles)
                .arg(&scan)
                .arg("COUNT")
                .arg(2_000)
                .query_async(&mut con)
                .await
                .map_err(|e| self.err(e))?;
            let (next, items) = match page {
                Value::Array(mut parts) if parts.len() == 2 => {
                    let items = parts.pop();
                    let next = parts.pop().as_ref().and_then(text);
                    (next, items)
                }
                _ => (None, None),
            };
            let (Some(next), Some(Value::Array(items))) = (next, items) else {
                return Err(self.err(format!("unexpected HSCAN reply on {}", keys.battles)));
            };
            for pair in items.chunks(2) {
                if let [id, Value::BulkString(bytes)] = pair {
                    let id = text(id).unwrap_or_default();
                    loaded.battles.push(self.decode_battle(&id, bytes)?);
                }
            }
            if next == "0" {
                break;
            }
            scan = next;
        }
        let evicted: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&keys.evicted)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut con)
            .await
            .map_err(|e| self.err(e))?;
        loaded.evicted = evicted
            .into_iter()
            .map(|(id, at)| (Arc::from(id), at as i64))
            .collect();
        loaded.notifications = self.recent_notifications(&cursor.id).await?;
        if let Ok(mut c) = self.inner.cursor.lock() {
            *c = cursor;
        }
        Ok(loaded)
    }

    /// The feed's newest id and counters (`XINFO STREAM`); a feed not created yet is empty.
    async fn feed_info(&self, con: &mut ConnectionManager) -> Result<FeedInfo, StoreError> {
        let reply: Result<Value, redis::RedisError> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&self.inner.keys.feed)
            .query_async(con)
            .await;
        let reply = match reply {
            Ok(v) => v,
            Err(e) if e.to_string().contains("no such key") => return Ok(FeedInfo::empty()),
            Err(e) => return Err(self.err(e)),
        };
        let pairs: Vec<(String, Value)> = match reply {
            Value::Map(kv) => kv
                .into_iter()
                .filter_map(|(k, v)| text(&k).map(|k| (k, v)))
                .collect(),
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => text(k).map(|k| (k, v.clone())),
                    _ => None,
                })
                .collect(),
            _ => return Err(self.err("unexpected XINFO STREAM reply")),
        };
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let number = |name: &str| get(name).and_then(text).and_then(|t| t.parse::<u64>().ok());
        Ok(FeedInfo {
            last_id: get("last-generated-id")
                .and_then(text)
                .unwrap_or_else(|| "0-0".into()),
            length: number("length").unwrap_or(0),
            entries_added: number("entries-added"),
        })
    }

    /// The last `replay` notifications up to `until`, reading the feed backwards.
    async fn recent_notifications(&self, until: &str) -> Result<Vec<Notification>, StoreError> {
        let want = self.inner.options.replay;
        let mut con = self.inner.con.clone();
        let mut out = Vec::new();
        let mut end = until.to_string();
        while out.len() < want && end != "0-0" {
            let page: Value = redis::cmd("XREVRANGE")
                .arg(&self.inner.keys.feed)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut con)
                .await
                .map_err(|e| self.err(e))?;
            let entries = self.parse_entries(&page)?;
            let Some((last_id, _)) = entries.last() else {
                break;
            };
            end = match previous_id(last_id) {
                Some(p) => p,
                None => break,
            };
            let done = entries.len() < 1_000;
            for (_, change) in entries {
                if let Some(Replicated::Notify(n)) = change {
                    if out.len() < want {
                        out.push(*n);
                    }
                }
            }
            if done {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    fn decode_battle(&self, id: &str, bytes: &[u8]) -> Result<Battle, StoreError> {
        postcard::from_bytes(bytes).map_err(|e| {
            self.err(format!(
                "battle {id:?} in {} is unreadable ({e}); written by another version?",
                self.inner.keys.battles
            ))
        })
    }

    /// Parses feed entries (`[[id, [field, value, …]], …]`).
    fn parse_entries(&self, v: &Value) -> Result<Vec<(String, Option<Replicated>)>, StoreError> {
        let Value::Array(entries) = v else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let Value::Array(parts) = e else { continue };
            let (Some(id), Some(Value::Array(fields))) =
                (parts.first().and_then(text), parts.get(1))
            else {
                continue;
            };
            let field = |name: &[u8]| {
                fields.chunks(2).find_map(|kv| match kv {
                    [Value::BulkString(k), Value::BulkString(v)] if k == name => Some(v.as_slice()),
                    _ => None,
                })
            };
            let change = if let Some(record) = field(b"p") {
                Replicated::Put(Box::new(self.decode_battle(&id, record)?))
            } else if let Some(json) = field(b"n") {
                let mut n: Notification = serde_json::from_slice(json).map_err(|e| {
                    self.err(format!(
                        "feed entry {id} holds an unreadable notification: {e}"
                    ))
                })?;
                n.seq = id
                    .split('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| self.err(format!("feed entry id {id} has no seq")))?;
                Replicated::Notify(Box::new(n))
            } else if let (Some(battle), Some(at)) = (field(b"e"), field(b"f")) {
                let at = std::str::from_utf8(at)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .ok_or_else(|| self.err(format!("feed entry {id}: bad forget-at")))?;
                Replicated::Evict(
                    Arc::from(String::from_utf8_lossy(battle).as_ref()),
                    at as i64,
                )
            } else {
                out.push((id, None));
                continue;
            };
            out.push((id, Some(change)));
        }
        Ok(out)
    }

    async fn commit_ops(&self, ops: Vec<StoreOp>) -> Result<Commit, StoreError> {
        let keys = &self.inner.keys;
        let mut inv = self.inner.commit.prepare_invoke();
        inv.key(&keys.battles)
            .key(&keys.versions)
            .key(&keys.timers)
            .key(&keys.evicted)
            .key(&keys.claims)
            .key(&keys.seq)
            .key(&keys.feed)
            .arg(self.inner.options.feed_len);
        for op in &ops {
            match op {
                StoreOp::Put {
                    battle,
                    expected_version,
                } => {
                    let record = postcard::to_stdvec(&**battle)
                        .map_err(|e| self.err(format!("encode battle {:?}: {e}", battle.id)))?;
                    inv.arg("P")
                        .arg(&*battle.id)
                        .arg(expected_version.map_or_else(String::new, |v| v.to_string()))
                        .arg(battle.version)
                        .arg(record)
                        .arg(
                            battle
                                .timer
                                .map_or_else(String::new, |t| t.at_ms.to_string()),
                        );
                }
                StoreOp::Evict {
                    battle_id,
                    forget_at_ms,
                } => {
                    inv.arg("E").arg(&**battle_id).arg(*forget_at_ms);
                }
                StoreOp::Forget { battle_id } => {
                    inv.arg("F").arg(&**battle_id);
                }
                StoreOp::Notify {
                    notification,
                    keep_from_seq,
                } => {
                    let json = serde_json::to_vec(&**notification)
                        .map_err(|e| self.err(format!("encode notification: {e}")))?;
                    inv.arg("N")
                        .arg(notification.seq)
                        .arg(*keep_from_seq)
                        .arg(json);
                }
            }
        }
        let mut con = self.inner.con.clone();
        let reply: Value = inv.invoke_async(&mut con).await.map_err(|e| self.err(e))?;
        match reply {
            Value::Array(parts) => match (parts.first(), parts.get(1)) {
                (Some(Value::Int(1)), Some(Value::Int(seq))) => Ok(Commit::Done(*seq as u64)),
                (Some(Value::Int(0)), Some(Value::Array(ids))) => Ok(Commit::Conflict(
                    ids.iter().filter_map(text).map(Arc::from).collect(),
                )),
                _ => Err(self.err("unexpected commit reply")),
            },
            _ => Err(self.err("unexpected commit reply")),
        }
    }
}

/// How long one follow call waits for new changes.
const FOLLOW_BLOCK: Duration = Duration::from_millis(1_000);

/// The feed id just before `id` (for reading backwards), `None` at the start.
fn previous_id(id: &str) -> Option<String> {
    let (ms, n) = id.split_once('-')?;
    let (ms, n): (u64, u64) = (ms.parse().ok()?, n.parse().ok()?);
    match (ms, n) {
        (0, 0) => None,
        (ms, 0) => Some(format!("{}-{}", ms - 1, u64::MAX)),
        (ms, n) => Some(format!("{ms}-{}", n - 1)),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

impl Store for RedisStore {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        Box::pin(self.load_all())
    }

    fn write(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match self.commit_ops(ops).await? {
                Commit::Done(_) => Ok(()),
                Commit::Conflict(ids) => Err(self.err(format!(
                    "version conflict on battles {ids:?}: another writer changed them"
                ))),
            }
        })
    }

    fn shared(&self) -> Option<&dyn SharedStore> {
        Some(self)
    }
}

impl SharedStore for RedisStore {
    fn fetch(
        &self,
        ids: Vec<Arc<str>>,
        claims: Vec<Claim>,
    ) -> BoxFuture<'_, Result<Fetched, StoreError>> {
        Box::pin(async move {
            let keys = &self.inner.keys;
            let mut inv = self.inner.fetch.prepare_invoke();
            inv.key(&keys.battles)
                .key(&keys.evicted)
                .key(&keys.claims)
                .arg(&self.inner.instance)
                .arg(self.inner.options.lease_ms)
                .arg(ids.len());
            for id in &ids {
                inv.arg(&**id);
            }
            inv.arg(claims.len());
            for c in &claims {
                inv.arg(&*c.battle_id).arg(c.generation);
            }
            let mut con = self.inner.con.clone();
            let reply: Value = inv.invoke_async(&mut con).await.map_err(|e| self.err(e))?;
            let bad = || self.err("unexpected fetch reply");
            let Value::Array(parts) = reply else {
                return Err(bad());
            };
            let (Some(Value::Array(battles)), Some(Value::Array(held))) =
                (parts.first(), parts.get(1))
            else {
                return Err(bad());
            };
            let mut fetched = Fetched::default();
            for (id, b) in ids.iter().zip(battles) {
                let Value::Array(b) = b else {
                    return Err(bad());
                };
                fetched.battles.push(match (b.first(), b.get(1)) {
                    (Some(Value::Int(1)), Some(Value::BulkString(rec))) => {
                        Stored::Present(Box::new(self.decode_battle(id, rec)?))
                    }
                    (Some(Value::Int(2)), Some(at)) => Stored::Evicted(
                        text(at)
                            .and_then(|s| s.parse::<f64>().ok())
                            .map_or(0, |f| f as i64),
                    ),
                    _ => Stored::Absent,
                });
            }
            for h in held {
                fetched.claims.push(match h {
                    Value::Int(0) => Ok(()),
                    Value::Int(ms) => Err(*ms as u64),
                    _ => return Err(bad()),
                });
            }
            Ok(fetched)
        })
    }

    fn commit(&self, ops: Vec<StoreOp>) -> BoxFuture<'_, Result<Commit, StoreError>> {
        Box::pin(self.commit_ops(ops))
    }

    fn follow(&self) -> BoxFuture<'_, Result<Vec<Replicated>, StoreError>> {
        Box::pin(async move {
            let cursor = self
                .inner
                .cursor
                .lock()
                .map(|c| c.clone())
                .unwrap_or_default();
            let mut con = self.inner.feed_con.lock().await;
            let reply: Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(2_000)
                .arg("BLOCK")
                .arg(FOLLOW_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.inner.keys.feed)
                .arg(&cursor.id)
                .query_async(&mut *con)
                .await
                .map_err(|e| self.err(e))?;
            // Nil on timeout; else [[stream, entries]] (RESP2) or a map (RESP3).
            let entries = match &reply {
                Value::Array(streams) => streams.first().and_then(|s| match s {
                    Value::Array(kv) => kv.get(1).cloned(),
                    _ => None,
                }),
                Value::Map(kv) => kv.first().map(|(_, v)| v.clone()),
                _ => None,
            };
            let Some(entries) = entries else {
                return Ok(Vec::new());
            };
            // Were entries after the cursor trimmed before this read? Counted after the read,
            // so a trim that came later (of entries just read) can only make it say so too
            // early, never too late.
            let feed = self.feed_info(&mut con).await?;
            if feed.trimmed().is_some_and(|t| t > cursor.consumed) {
                tracing::warn!(
                    feed = %self.inner.keys.feed,
                    followed = cursor.consumed,
                    trimmed = feed.trimmed().unwrap_or(0),
                    "the change feed was trimmed past the entries this instance had followed; \
                     reloading from the store"
                );
                return Ok(vec![Replicated::Reload]);
            }
            let parsed = self.parse_entries(&entries)?;
            if let Some((last, _)) = parsed.last() {
                if let Ok(mut c) = self.inner.cursor.lock() {
                    *c = Cursor {
                        id: last.clone(),
                        consumed: cursor.consumed + parsed.len() as u64,
                    };
                }
            }
            Ok(parsed.into_iter().filter_map(|(_, c)| c).collect())
        })
    }
}
