//! Configuration: command-line flags, `LIVEBATTLE_*` environment variables and an optional TOML
//! file, resolved into one [`Config`].
//!
//! Precedence, per setting: flag > environment variable > file > built-in default. clap handles
//! the first two (every flag has an `env` fallback); [`Config::resolve`] layers the result over
//! the file and the defaults. docs/operations.md has the full table.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use livebattle_engine::Rules;
use livebattle_ingest::{AppConfig, IngestConfig};
use serde::Deserialize;

/// Where the server listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How many recent notifications are kept so an SSE client can resume with `Last-Event-ID`.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;
/// Interval of the SSE keep-alive comments.
pub const DEFAULT_SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The longest SSE keep-alive interval accepted (a day; proxies close idle streams far sooner).
pub const MAX_SSE_KEEP_ALIVE: Duration = Duration::from_secs(86_400);
/// How long a connection may take to send a request head (hyper's default).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest header read timeout accepted (an hour).
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(3_600);

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The command line. Every setting is optional here: what is not given falls back to its
/// `LIVEBATTLE_*` variable, then to the `--config` file, then to the default shown.
#[derive(Clone, Debug, Default, Parser)]
#[command(
    name = "livebattle",
    version,
    about = "Tencent Live (TUILiveKit) battle webhooks in; live battle state out over HTTP, SSE and metrics.",
    long_about = "Tencent Live (TUILiveKit) battle webhooks in (POST /callback); live battle state out \
                  over a JSON API, Server-Sent Events and Prometheus metrics.\n\n\
                  Every setting can be given as a flag, as the LIVEBATTLE_* environment variable \
                  shown, or as a key of the --config TOML file. Precedence: flag > environment > \
                  file > default. Several apps with their own tokens go in the file ([[apps]]); \
                  see docs/operations.md.\n\n\
                  Battles and their timers are stored durably in --data-dir (default \
                  ./livebattle-data) and survive a restart or a crash; --in-memory opts out."
)]
pub struct Cli {
    /// TOML configuration file (keys as in docs/operations.md).
    #[arg(long, env = "LIVEBATTLE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080]. Port 0 takes a free port; the address
    /// in use is printed on stdout as "listening on ADDR". File key: listen.
    #[arg(long, env = "LIVEBATTLE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Tencent SDKAppID to accept callbacks for; repeat the flag (or comma-separate the
    /// variable) for several apps. Replaces the file's `[[apps]]` list; an app listed in the file
    /// keeps the token the file gives it. Required, here or in the file.
    #[arg(
        long = "sdk-app-id",
        env = "LIVEBATTLE_SDK_APP_ID",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub sdk_app_ids: Vec<String>,

    /// The callback token (set_callback_token) of the app given by --sdk-app-id: callbacks
    /// must then carry Sign = sha256(token + RequestTime). Needs exactly one app. Without a
    /// token, the app's callbacks are accepted unsigned.
    #[arg(
        long,
        env = "LIVEBATTLE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Largest accepted |now - RequestTime| of a signed callback, in seconds [default: 60].
    /// File key: signature_window_secs.
    #[arg(long, env = "LIVEBATTLE_SIGNATURE_WINDOW_SECS", value_name = "SECS")]
    pub signature_window_secs: Option<u64>,

    /// Largest accepted callback body, in bytes [default: 65536]. File key: body_limit.
    #[arg(long, env = "LIVEBATTLE_BODY_LIMIT", value_name = "BYTES")]
    pub body_limit: Option<usize>,

    /// After a battle's response deadline, how long to wait for Tencent's Start/End webhook
    /// before deciding, in ms [default: 3000]. File key: response_grace_ms.
    #[arg(long, env = "LIVEBATTLE_RESPONSE_GRACE_MS", value_name = "MS")]
    pub response_grace_ms: Option<u64>,

    /// How long an ended battle stays queryable before it is evicted, in seconds
    /// [default: 600]. File key: retention_secs.
    #[arg(long, env = "LIVEBATTLE_RETENTION_SECS", value_name = "SECS")]
    pub retention_secs: Option<u64>,

    /// How many recent notifications are kept for SSE resumption with Last-Event-ID
    /// [default: 100000]; 0 turns resumption off (every reconnect gets a fresh snapshot).
    /// File key: replay_capacity.
    #[arg(long, env = "LIVEBATTLE_REPLAY_CAPACITY", value_name = "N")]
    pub replay_capacity: Option<usize>,

    /// Bearer token for the admin routes (POST /v1/battles/{id}/responses, /end, /scores).
    /// Without it those routes answer 403 admin_disabled. File key: admin_token.
    #[arg(
        long,
        env = "LIVEBATTLE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Log format on stderr [default: pretty]; the level comes from RUST_LOG (default info).
    /// File key: log_format.
    #[arg(long, env = "LIVEBATTLE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Where battles, their timers, the dedupe memory and recent notifications are stored
    /// durably [default: ./livebattle-data]. A webhook is acknowledged only once its effect is
    /// written there. File key: data_dir.
    #[arg(long, env = "LIVEBATTLE_DATA_DIR", value_name = "PATH")]
    pub data_dir: Option<PathBuf>,

    /// Which durable store keeps --data-dir: log (append-only log, group commit, background
    /// compaction; the fastest) or redb (the single-file B-tree of earlier releases). Default:
    /// redb for a directory that holds livebattle.redb, else log. A directory holding the other
    /// store's files is refused. File key: durable_store.
    #[arg(long, env = "LIVEBATTLE_DURABLE_STORE", value_name = "STORE")]
    pub durable_store: Option<DurableStore>,

    /// Keep battles in memory only (no --data-dir): a restart forgets every battle. File key:
    /// in_memory.
    #[arg(long, env = "LIVEBATTLE_IN_MEMORY", conflicts_with = "data_dir")]
    pub in_memory: bool,

    /// Share battles with other livebattle instances through Redis (redis://host:port[/db]):
    /// battles, timers, dedupe and the event feed live there; every instance serves every
    /// battle. Replaces --data-dir. See docs/operations.md "Several instances". File key: store.
    #[arg(
        long,
        env = "LIVEBATTLE_STORE",
        value_name = "URL",
        conflicts_with_all = ["data_dir", "in_memory"]
    )]
    pub store: Option<String>,

    /// The Redis key namespace (hash tag) of this deployment [default: livebattle]. File key:
    /// redis_namespace.
    #[arg(long, env = "LIVEBATTLE_REDIS_NAMESPACE", value_name = "NAME")]
    pub redis_namespace: Option<String>,

    /// How long an instance's claim on a due timer holds before another instance may fire it
    /// (if the first died), in ms [default: 1000]. File key: redis_lease_ms.
    #[arg(long, env = "LIVEBATTLE_REDIS_LEASE_MS", value_name = "MS")]
    pub redis_lease_ms: Option<u64>,

    /// Engine shard tasks [default: number of CPUs]. File key: shards.
    #[arg(long, env = "LIVEBATTLE_SHARDS", value_name = "N")]
    pub shards: Option<usize>,

    /// A battle known only from an app-side answer ends not_started if Tencent's Create webhook
    /// does not come within this many seconds [default: 60]. File key: pending_ttl_secs.
    #[arg(long, env = "LIVEBATTLE_PENDING_TTL_SECS", value_name = "SECS")]
    pub pending_ttl_secs: Option<u64>,

    /// After eviction, webhooks for the battle still change nothing for this many seconds
    /// [default: 3600]. File key: dedupe_horizon_secs.
    #[arg(long, env = "LIVEBATTLE_DEDUPE_HORIZON_SECS", value_name = "SECS")]
    pub dedupe_horizon_secs: Option<u64>,

    /// A Tencent timestamp further in the future than this many ms is clamped to now
    /// [default: 2000]. File key: future_tolerance_ms.
    #[arg(long, env = "LIVEBATTLE_FUTURE_TOLERANCE_MS", value_name = "MS")]
    pub future_tolerance_ms: Option<u64>,

    /// The longest a callback waits for the engine before Tencent gets a failure reply, in ms
    /// [default: 1500]. File key: apply_timeout_ms.
    #[arg(long, env = "LIVEBATTLE_APPLY_TIMEOUT_MS", value_name = "MS")]
    pub apply_timeout_ms: Option<u64>,

    /// Interval of the SSE keep-alive comments, in seconds [default: 15]. File key:
    /// sse_keep_alive_secs.
    #[arg(long, env = "LIVEBATTLE_SSE_KEEP_ALIVE_SECS", value_name = "SECS")]
    pub sse_keep_alive_secs: Option<u64>,

    /// How long a connection may take to send a request head, in seconds, counted from when the
    /// server starts waiting for it: a connection that sends nothing, or a head too slowly, or
    /// stays idle that long between requests, is closed [default: 30]. File key:
    /// header_read_timeout_secs.
    #[arg(long, env = "LIVEBATTLE_HEADER_READ_TIMEOUT_SECS", value_name = "SECS")]
    pub header_read_timeout_secs: Option<u64>,

    /// A one-off task instead of serving (`livebattle copy-store --help`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The one-off tasks of the binary.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Copy a stopped server's data dir into a new data dir, kept by the store asked (the log
    /// store by default), and check that the copy reads back the same; the source is left as it
    /// was. The way from redb to the log store: stop the server, copy, start it on the new dir.
    CopyStore {
        /// The data dir to copy (its server stopped).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The new data dir (created if missing; it must not hold a store yet).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The new data dir's store.
        #[arg(long, value_name = "STORE", default_value = "log")]
        store: DurableStore,
    },
}

/// An SDKAppID in the file: a string, or a bare TOML integer.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum FileAppId {
    Text(String),
    Number(u64),
}

impl FileAppId {
    fn into_string(self) -> String {
        match self {
            FileAppId::Text(s) => s,
            FileAppId::Number(n) => n.to_string(),
        }
    }
}

/// One `[[apps]]` table of the file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp {
    sdk_app_id: FileAppId,
    token: Option<String>,
    previous_token: Option<String>,
}

/// The TOML file. Every key is optional; unknown keys are an error (typos do not pass
/// silently).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    #[serde(default)]
    apps: Vec<FileApp>,
    signature_window_secs: Option<u64>,
    body_limit: Option<usize>,
    token_overlap_secs: Option<u64>,
    response_grace_ms: Option<u64>,
    retention_secs: Option<u64>,
    replay_capacity: Option<usize>,
    admin_token: Option<String>,
    log_format: Option<LogFormat>,
    in_memory: Option<bool>,
    data_dir: Option<PathBuf>,
    durable_store: Option<DurableStore>,
    store: Option<String>,
    redis_namespace: Option<String>,
    redis_lease_ms: Option<u64>,
    shards: Option<usize>,
    pending_ttl_secs: Option<u64>,
    dedupe_horizon_secs: Option<u64>,
    future_tolerance_ms: Option<u64>,
    apply_timeout_ms: Option<u64>,
    sse_keep_alive_secs: Option<u64>,
    header_read_timeout_secs: Option<u64>,
}

impl FileConfig {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }
}

/// The default data directory of the binary.
pub const DEFAULT_DATA_DIR: &str = "./livebattle-data";

/// Which durable store keeps a data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurableStore {
    /// The append-only log with group commit and background compaction (`livebattle-store-log`):
    /// the fastest, and the default for a new data directory.
    Log,
    /// The redb B-tree file `livebattle.redb` (`livebattle-store-redb`), the store of earlier
    /// releases.
    Redb,
}

impl DurableStore {
    /// Its name, as `--durable-store` takes it.
    pub fn name(self) -> &'static str {
        match self {
            DurableStore::Log => "log",
            DurableStore::Redb => "redb",
        }
    }
}

/// Where the engine keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Nothing survives a restart.
    InMemory,
    /// Durable, in this directory.
    DataDir {
        /// The directory.
        dir: PathBuf,
        /// Which store; `None` chooses by what the directory holds (redb if it holds
        /// `livebattle.redb`, else the log store).
        store: Option<DurableStore>,
    },
    /// Shared with other instances, in Redis.
    Redis {
        /// `redis://host:port[/db]`.
        url: String,
        /// The key namespace (hash tag).
        namespace: String,
        /// Timer claim lease, ms.
        lease_ms: u64,
    },
}

/// The resolved configuration the server runs with.
#[derive(Clone)]
pub struct Config {
    /// Where battles are kept.
    pub storage: Storage,
    /// Listen address.
    pub listen: SocketAddr,
    /// Served apps, tokens and callback limits.
    pub ingest: IngestConfig,
    /// Lifecycle rules (grace, retention, ...).
    pub rules: Rules,
    /// Notifications kept for SSE resumption.
    pub replay_capacity: usize,
    /// Engine shards; `None` for one per CPU.
    pub shards: Option<usize>,
    /// Admin bearer token; `None` disables the admin routes.
    pub admin_token: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// SSE keep-alive interval.
    pub sse_keep_alive: Duration,
    /// How long a connection may take to send a request head, counted from when the server
    /// starts waiting for it (so also how long a connection may stay idle between requests).
    pub header_read_timeout: Duration,
}

impl Default for Config {
    /// The defaults for embedding and tests: in memory, with no app (add at least one to
    /// `ingest.apps`). The binary's default storage is durable ([`DEFAULT_DATA_DIR`]).
    fn default() -> Config {
        Config {
            storage: Storage::InMemory,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ingest: IngestConfig::default(),
            rules: Rules::default(),
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            shards: None,
            admin_token: None,
            log_format: LogFormat::Pretty,
            sse_keep_alive: DEFAULT_SSE_KEEP_ALIVE,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

// The tokens are secrets: keep them out of Debug output and logs.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("storage", &self.storage)
            .field("listen", &self.listen)
            .field("ingest", &self.ingest)
            .field("rules", &self.rules)
            .field("replay_capacity", &self.replay_capacity)
            .field("shards", &self.shards)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("log_format", &self.log_format)
            .field("sse_keep_alive", &self.sse_keep_alive)
            .field("header_read_timeout", &self.header_read_timeout)
            .finish()
    }
}

/// A configuration that cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read(PathBuf, std::io::Error),
    /// The file is not valid TOML for this configuration.
    Parse(PathBuf, Box<toml::de::Error>),
    /// `--token` with no app, or with several apps it could belong to.
    AmbiguousToken,
    /// A value out of range.
    Invalid(String),
    /// The ingest part (apps, tokens, limits) is invalid.
    Ingest(livebattle_ingest::ConfigError),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read config file {}: {e}", p.display()),
            ConfigError::Parse(p, e) => write!(f, "invalid config file {}: {e}", p.display()),
            ConfigError::AmbiguousToken => f.write_str(
                "--token belongs to exactly one app: give one --sdk-app-id, or put several apps \
                 with their tokens in the config file",
            ),
            ConfigError::Invalid(m) => f.write_str(m),
            ConfigError::Ingest(livebattle_ingest::ConfigError::NoApps) => f.write_str(
                "no Tencent app configured: give --sdk-app-id (or LIVEBATTLE_SDK_APP_ID, or \
                 [[apps]] in the config file)",
            ),
            ConfigError::Ingest(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the `--config` file, if any, and resolves.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        Config::resolve(cli, file.unwrap_or_default())
    }

    /// Layers the command line (flags and environment, as clap resolved them) over the file and
    /// the defaults, and validates the result.
    pub fn resolve(cli: Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        let ingest_defaults = IngestConfig::default();
        let in_memory = cli.in_memory || (cli.data_dir.is_none() && file.in_memory == Some(true));
        let redis = cli
            .store
            .clone()
            .or_else(|| (!cli.in_memory && cli.data_dir.is_none()).then(|| file.store.clone())?);
        let storage = if let Some(url) = redis {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(ConfigError::Invalid(format!(
                    "store: {url:?} is not a redis:// URL (the only shared store)"
                )));
            }
            Storage::Redis {
                url,
                namespace: cli
                    .redis_namespace
                    .clone()
                    .or(file.redis_namespace.clone())
                    .unwrap_or_else(|| "livebattle".into()),
                lease_ms: cli.redis_lease_ms.or(file.redis_lease_ms).unwrap_or(1_000),
            }
        } else if in_memory {
            Storage::InMemory
        } else {
            Storage::DataDir {
                dir: cli
                    .data_dir
                    .clone()
                    .or(file.data_dir.clone())
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
                store: cli.durable_store.or(file.durable_store),
            }
        };
        let apps = resolve_apps(&cli, &file)?;
        let secs = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_secs);
        let millis = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        let ingest = IngestConfig {
            apps,
            signature_window: secs(
                cli.signature_window_secs.or(file.signature_window_secs),
                ingest_defaults.signature_window,
            ),
            body_limit: cli
                .body_limit
                .or(file.body_limit)
                .unwrap_or(ingest_defaults.body_limit),
            token_overlap: secs(file.token_overlap_secs, ingest_defaults.token_overlap),
            apply_timeout: millis(
                cli.apply_timeout_ms.or(file.apply_timeout_ms),
                ingest_defaults.apply_timeout,
            ),
        };
        ingest.validate().map_err(ConfigError::Ingest)?;
        let rd = defaults.rules.clone();
        let rules = Rules {
            response_grace_ms: cli
                .response_grace_ms
                .or(file.response_grace_ms)
                .unwrap_or(rd.response_grace_ms),
            future_tolerance_ms: cli
                .future_tolerance_ms
                .or(file.future_tolerance_ms)
                .unwrap_or(rd.future_tolerance_ms),
            retention_ms: secs_to_ms(cli.retention_secs.or(file.retention_secs), rd.retention_ms)?,
            dedupe_horizon_ms: secs_to_ms(
                cli.dedupe_horizon_secs.or(file.dedupe_horizon_secs),
                rd.dedupe_horizon_ms,
            )?,
            pending_ttl_ms: secs_to_ms(
                cli.pending_ttl_secs.or(file.pending_ttl_secs),
                rd.pending_ttl_ms,
            )?,
        };
        let shards = cli.shards.or(file.shards);
        if shards == Some(0) {
            return Err(ConfigError::Invalid("shards must be at least 1".into()));
        }
        let sse_keep_alive = bounded_secs(
            "sse_keep_alive_secs",
            cli.sse_keep_alive_secs.or(file.sse_keep_alive_secs),
            defaults.sse_keep_alive,
            MAX_SSE_KEEP_ALIVE,
        )?;
        let header_read_timeout = bounded_secs(
            "header_read_timeout_secs",
            cli.header_read_timeout_secs
                .or(file.header_read_timeout_secs),
            defaults.header_read_timeout,
            MAX_HEADER_READ_TIMEOUT,
        )?;
        let admin_token = cli.admin_token.or(file.admin_token);
        if admin_token.as_deref() == Some("") {
            return Err(ConfigError::Invalid(
                "the admin token must not be empty".into(),
            ));
        }
        Ok(Config {
            storage,
            listen: cli.listen.or(file.listen).unwrap_or(defaults.listen),
            ingest,
            rules,
            replay_capacity: cli
                .replay_capacity
                .or(file.replay_capacity)
                .unwrap_or(defaults.replay_capacity),
            shards,
            admin_token,
            log_format: cli
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
            sse_keep_alive,
            header_read_timeout,
        })
    }
}

/// A whole number of seconds from 1 to `max`, or `default` when not given.
fn bounded_secs(
    name: &str,
    given: Option<u64>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let value = given.map_or(default, Duration::from_secs);
    if value.is_zero() || value > max {
        return Err(ConfigError::Invalid(format!(
            "{name} must be from 1 to {}",
            max.as_secs()
        )));
    }
    Ok(value)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
    FileConfig::parse(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), Box::new(e)))
}

fn secs_to_ms(secs: Option<u64>, default_ms: u64) -> Result<u64, ConfigError> {
    match secs {
        None => Ok(default_ms),
        Some(s) => s
            .checked_mul(1000)
            .ok_or_else(|| ConfigError::Invalid(format!("{s} seconds is too long"))),
    }
}

/// Apps from `--sdk-app-id` replace the file's list (keeping a listed app's file tokens);
/// `--token` goes to the single app it can belong to.
fn resolve_apps(cli: &Cli, file: &FileConfig) -> Result<Vec<AppConfig>, ConfigError> {
    let from_file: Vec<AppConfig> = file
        .apps
        .iter()
        .map(|a| AppConfig {
            sdk_app_id: a.sdk_app_id.clone().into_string(),
            token: a.token.clone(),
            previous_token: a.previous_token.clone(),
        })
        .collect();
    let mut apps: Vec<AppConfig> = if cli.sdk_app_ids.is_empty() {
        from_file
    } else {
        cli.sdk_app_ids
            .iter()
            .map(|id| id.trim())
            .map(|id| {
                from_file
                    .iter()
                    .find(|a| a.sdk_app_id == id)
                    .cloned()
                    .unwrap_or_else(|| AppConfig::new(id))
            })
            .collect()
    };
    if let Some(token) = &cli.token {
        match apps.as_mut_slice() {
            [only] => only.token = Some(token.clone()),
            _ => return Err(ConfigError::AmbiguousToken),
        }
    }
    Ok(apps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["livebattle"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    const FILE: &str = r#"
        listen = "0.0.0.0:9000"
        signature_window_secs = 30
        body_limit = 1024
        response_grace_ms = 500
        retention_secs = 5
        admin_token = "file-admin"
        log_format = "json"
        in_memory = true

        [[apps]]
        sdk_app_id = 1400000001
        token = "file-token"

        [[apps]]
        sdk_app_id = "1400000002"
    "#;

    #[test]
    fn defaults_with_one_app() {
        let c =
            Config::resolve(cli(&["--sdk-app-id", "1400000001"]), FileConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.ingest.apps, vec![AppConfig::new("1400000001")]);
        assert_eq!(c.ingest.signature_window, Duration::from_secs(60));
        assert_eq!(c.ingest.body_limit, 64 * 1024);
        assert_eq!(c.rules, Rules::default());
        assert_eq!(c.replay_capacity, DEFAULT_REPLAY_CAPACITY);
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.admin_token, None);
        assert_eq!(c.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT);
    }

    #[test]
    fn the_header_read_timeout_is_from_a_second_to_an_hour() {
        let with = |secs: &str| {
            Config::resolve(
                cli(&["--sdk-app-id", "1", "--header-read-timeout-secs", secs]),
                FileConfig::default(),
            )
        };
        assert_eq!(
            with("3600").unwrap().header_read_timeout,
            MAX_HEADER_READ_TIMEOUT
        );
        let file = FileConfig::parse("header_read_timeout_secs = 5").unwrap();
        let c = Config::resolve(cli(&["--sdk-app-id", "1"]), file).unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(5));
        for bad in ["0", "3601"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(
                e.contains("header_read_timeout_secs must be from 1 to 3600"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_sse_keep_alive_is_from_a_second_to_a_day() {
        let with = |secs: &str| {
            Config::resolve(
                cli(&["--sdk-app-id", "1", "--sse-keep-alive-secs", secs]),
                FileConfig::default(),
            )
        };
        assert_eq!(with("86400").unwrap().sse_keep_alive, MAX_SSE_KEEP_ALIVE);
        for bad in ["0", "86401", "18446744073709551615"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(
                e.contains("sse_keep_alive_secs must be from 1 to 86400"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn file_fills_what_flags_leave() {
        let file = FileConfig::parse(FILE).unwrap();
        let c = Config::resolve(cli(&[]), file).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.ingest.apps.len(), 2);
        assert_eq!(c.ingest.apps[0].sdk_app_id, "1400000001");
        assert_eq!(c.ingest.apps[0].token.as_deref(), Some("file-token"));
        assert_eq!(c.ingest.apps[1].token, None);
        assert_eq!(c.ingest.signature_window, Duration::from_secs(30));
        assert_eq!(c.ingest.body_limit, 1024);
        assert_eq!(c.rules.response_grace_ms, 500);
        assert_eq!(c.rules.retention_ms, 5_000);
        assert_eq!(c.admin_token.as_deref(), Some("file-admin"));
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(FILE).unwrap();
        let c = Config::resolve(
            cli(&[
                "--listen",
                "127.0.0.1:0",
                "--sdk-app-id",
                "1400000001",
                "--response-grace-ms",
                "250",
                "--admin-token",
                "flag-admin",
                "--log-format",
                "pretty",
            ]),
            file,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        // The flag's app list replaces the file's, keeping the file's token for that app.
        assert_eq!(c.ingest.apps.len(), 1);
        assert_eq!(c.ingest.apps[0].token.as_deref(), Some("file-token"));
        assert_eq!(c.rules.response_grace_ms, 250);
        assert_eq!(c.rules.retention_ms, 5_000);
        assert_eq!(c.admin_token.as_deref(), Some("flag-admin"));
        assert_eq!(c.log_format, LogFormat::Pretty);
    }

    #[test]
    fn token_goes_to_the_single_app() {
        let c = Config::resolve(
            cli(&["--sdk-app-id", "1400000001", "--token", "t"]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.ingest.apps[0].token.as_deref(), Some("t"));
        let err = Config::resolve(
            cli(&["--sdk-app-id", "1", "--sdk-app-id", "2", "--token", "t"]),
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::AmbiguousToken));
        let err = Config::resolve(cli(&["--token", "t"]), FileConfig::default()).unwrap_err();
        assert!(matches!(err, ConfigError::AmbiguousToken));
    }

    #[test]
    fn storage_is_durable_by_default_and_in_memory_on_request() {
        let one = |args: &[&str], file: &str| {
            let mut all = vec!["--sdk-app-id", "1"];
            all.extend_from_slice(args);
            Config::resolve(cli(&all), FileConfig::parse(file).unwrap())
                .unwrap()
                .storage
        };
        let data_dir = |dir: &str, store| Storage::DataDir {
            dir: dir.into(),
            store,
        };
        assert_eq!(one(&[], ""), data_dir(DEFAULT_DATA_DIR, None));
        assert_eq!(
            one(&["--durable-store", "redb"], "durable_store = \"log\""),
            data_dir(DEFAULT_DATA_DIR, Some(DurableStore::Redb)),
            "a flag beats the file"
        );
        assert_eq!(
            one(&[], "durable_store = \"log\""),
            data_dir(DEFAULT_DATA_DIR, Some(DurableStore::Log))
        );
        assert!(FileConfig::parse("durable_store = \"lmdb\"").is_err());
        assert_eq!(one(&["--in-memory"], ""), Storage::InMemory);
        assert_eq!(one(&[], "in_memory = true"), Storage::InMemory);
        assert_eq!(
            one(&["--store", "redis://r:6379"], "redis_lease_ms = 500"),
            Storage::Redis {
                url: "redis://r:6379".into(),
                namespace: "livebattle".into(),
                lease_ms: 500
            }
        );
        assert_eq!(
            one(&["--in-memory"], "store = \"redis://r\""),
            Storage::InMemory,
            "a flag beats the file"
        );
        assert_eq!(
            one(&["--data-dir", "/d"], "in_memory = true"),
            data_dir("/d", None),
            "a flag beats the file"
        );
        assert_eq!(one(&[], "data_dir = \"/f\""), data_dir("/f", None));
        assert!(Cli::try_parse_from(["livebattle", "--in-memory", "--data-dir", "/d"]).is_err());
    }

    #[test]
    fn refusals() {
        let no_app = Config::resolve(cli(&[]), FileConfig::default()).unwrap_err();
        assert!(no_app.to_string().contains("--sdk-app-id"), "{no_app}");
        let bad_id = Config::resolve(cli(&["--sdk-app-id", "14x"]), FileConfig::default());
        assert!(matches!(bad_id, Err(ConfigError::Ingest(_))));
        assert!(FileConfig::parse("lisen = \"127.0.0.1:1\"").is_err());
        assert!(FileConfig::parse("[[apps]]\nsdk_app_id = \"1\"\ntokn = \"x\"").is_err());
        let zero = Config::resolve(
            cli(&["--sdk-app-id", "1", "--shards", "0"]),
            FileConfig::default(),
        );
        assert!(matches!(zero, Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Config::resolve(
            cli(&[
                "--sdk-app-id",
                "1",
                "--token",
                "tok-secret",
                "--admin-token",
                "adm-secret",
            ]),
            FileConfig::default(),
        )
        .unwrap();
        let s = format!("{c:?}");
        assert!(
            !s.contains("tok-secret") && !s.contains("adm-secret"),
            "{s}"
        );
    }
}
