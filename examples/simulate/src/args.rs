//! Command-line flags.

use std::fmt;
use std::str::FromStr;

use clap::Parser;

use crate::plan::{PlanConfig, Scenario};

/// Sends Tencent-faithful battle webhooks (Create/Start/End) to a livebattle server at a chosen
/// rate, with duplicates and out-of-order deliveries, and checks that every battle ends with the
/// reason Tencent's messages imply.
#[derive(Debug, Parser)]
#[command(name = "livebattle-simulate", version)]
pub struct Args {
    /// The webhook URL (the query string is appended).
    #[arg(long, default_value = "http://127.0.0.1:8080/callback")]
    pub url: String,

    /// Base URL of the query API, for --verify; defaults to the scheme and host of --url.
    #[arg(long)]
    pub api_url: Option<String>,

    /// SdkAppid sent in the query string.
    #[arg(long, default_value = "1400000001")]
    pub sdk_app_id: String,

    /// Callback token: adds Sign=sha256(token + RequestTime) and RequestTime. Without it the
    /// requests are unsigned, as when Tencent's token auth is off.
    #[arg(long)]
    pub token: Option<String>,

    /// New battles per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,

    /// How many battles to simulate.
    #[arg(long, default_value_t = 100, conflicts_with = "duration_s")]
    pub battles: u64,

    /// Instead of --battles: create battles for this many seconds (rate x duration battles).
    #[arg(long)]
    pub duration_s: Option<f64>,

    /// Shortest battle Duration (ms).
    #[arg(long, default_value_t = 3_000)]
    pub min_duration_ms: u64,

    /// Longest battle Duration (ms).
    #[arg(long, default_value_t = 8_000)]
    pub max_duration_ms: u64,

    /// Shortest response Timeout (ms) for NeedResponse battles.
    #[arg(long, default_value_t = 1_000)]
    pub min_timeout_ms: u64,

    /// Longest response Timeout (ms) for NeedResponse battles.
    #[arg(long, default_value_t = 4_000)]
    pub max_timeout_ms: u64,

    /// The server's response grace (its --response-grace-ms): how long after the response
    /// deadline a battle nobody accepted ends `response_timeout`.
    #[arg(long, default_value_t = 3_000)]
    pub response_grace_ms: u64,

    /// Scenario weights, e.g. "instant=35,accepted=25,not-started=10,silent=10,exit=20".
    /// instant: NeedResponse=false, Start at once, End OpType 0 (time_up);
    /// accepted: NeedResponse=true, a callee accepts (Start), End OpType 0 (time_up);
    /// not-started: NeedResponse=true, nobody accepts, End OpType 2 (not_started);
    /// silent: NeedResponse=true, nobody accepts and no End comes (response_timeout);
    /// exit: Start, then every host leaves early, End OpType 1 (all_exited).
    #[arg(
        long,
        default_value = "instant=35,accepted=25,not-started=10,silent=10,exit=20"
    )]
    pub mix: Mix,

    /// Chance that a webhook is delivered twice.
    #[arg(long, default_value_t = 0.1)]
    pub dup_ratio: f64,

    /// Chance that a battle's webhooks arrive out of order (Start before Create, Create or
    /// Start after End).
    #[arg(long, default_value_t = 0.15)]
    pub reorder_ratio: f64,

    /// Chance that the End of a time-up battle is never delivered (the server's own timer must
    /// end it).
    #[arg(long, default_value_t = 0.1)]
    pub end_loss_ratio: f64,

    /// Chance that an Owner_Account is sent as a big JSON integer instead of a string.
    #[arg(long, default_value_t = 0.3)]
    pub numeric_owner_ratio: f64,

    /// At most this many requests in flight.
    #[arg(long, default_value_t = 256)]
    pub max_inflight: usize,

    /// Keep-alive connections to the server (requests are handed to them in turn).
    #[arg(long, default_value_t = 32)]
    pub connections: usize,

    /// Per-request timeout (ms).
    #[arg(long, default_value_t = 5_000)]
    pub request_timeout_ms: u64,

    /// Query GET /v1/battles/{id} for every battle once it should have ended, and report
    /// battles whose state or end_reason differ from what the webhooks imply.
    #[arg(long)]
    pub verify: bool,

    /// How long (ms) verification keeps polling a battle that has not reached the expected end.
    #[arg(long, default_value_t = 5_000)]
    pub verify_patience_ms: u64,

    /// Also open this many SSE clients on `GET /v1/events` (at the API's origin) that check
    /// the stream as they read it — a snapshot, then every notification's id following the one
    /// before (a fresh `lagged` snapshot may restart the count) — and that each caught up with
    /// the server's last `seq` at the end. Any gap, broken stream or client left behind fails
    /// the run.
    #[arg(long, default_value_t = 0)]
    pub watch_sse: usize,

    /// PRNG seed (random when absent); the same seed gives the same battles.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Print one line per battle as it is verified.
    #[arg(long, short)]
    pub verbose: bool,
}

impl Args {
    /// How many battles this run creates.
    pub fn battle_count(&self) -> u64 {
        match self.duration_s {
            Some(s) => (s * self.rate).ceil().max(0.0) as u64,
            None => self.battles,
        }
    }

    /// Checks the flags that clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err("--rate must be a positive number".into());
        }
        if let Some(s) = self.duration_s {
            if !(s.is_finite() && s > 0.0) {
                return Err("--duration-s must be a positive number".into());
            }
        }
        if self.min_duration_ms == 0 || self.min_duration_ms > self.max_duration_ms {
            return Err("need 0 < --min-duration-ms <= --max-duration-ms".into());
        }
        if self.min_timeout_ms == 0 || self.min_timeout_ms > self.max_timeout_ms {
            return Err("need 0 < --min-timeout-ms <= --max-timeout-ms".into());
        }
        for (name, v) in [
            ("--dup-ratio", self.dup_ratio),
            ("--reorder-ratio", self.reorder_ratio),
            ("--end-loss-ratio", self.end_loss_ratio),
            ("--numeric-owner-ratio", self.numeric_owner_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be within 0..=1"));
            }
        }
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.max_inflight == 0 {
            return Err("--max-inflight must be at least 1".into());
        }
        if !self.url.starts_with("http://") {
            return Err("--url must be an http:// URL (the simulator speaks plain HTTP)".into());
        }
        Ok(())
    }

    /// The scenario-generation settings.
    pub fn plan_config(&self) -> PlanConfig {
        PlanConfig {
            mix: self.mix.clone(),
            duration_ms: (self.min_duration_ms, self.max_duration_ms),
            timeout_ms: (self.min_timeout_ms, self.max_timeout_ms),
            response_grace_ms: self.response_grace_ms,
            dup_ratio: self.dup_ratio,
            reorder_ratio: self.reorder_ratio,
            end_loss_ratio: self.end_loss_ratio,
            numeric_owner_ratio: self.numeric_owner_ratio,
        }
    }

    /// The query API's base URL (no trailing slash).
    pub fn api_base(&self) -> String {
        match &self.api_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => origin_of(&self.url).to_owned(),
        }
    }
}

/// `http://host:port` of a URL.
pub fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find(['/', '?']) {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Scenario weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix(pub Vec<(Scenario, u32)>);

impl Mix {
    /// Picks a scenario with probability proportional to its weight.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> Scenario {
        let total: u32 = self.0.iter().map(|(_, w)| w).sum();
        let mut n = rng.u32(0..total.max(1));
        for (s, w) in &self.0 {
            if n < *w {
                return *s;
            }
            n -= w;
        }
        Scenario::Instant
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=weight"))?;
            let scenario = Scenario::parse(name.trim()).ok_or_else(|| {
                format!(
                    "unknown scenario {name:?} (known: {})",
                    Scenario::ALL.map(Scenario::name).join(", ")
                )
            })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: weight must be a whole number"))?;
            out.push((scenario, weight));
        }
        if out.iter().map(|(_, w)| *w as u64).sum::<u64>() == 0 {
            return Err("the mix needs at least one scenario with a weight above 0".into());
        }
        Ok(Mix(out))
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(s, w)| format!("{}={w}", s.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_picks_only_weighted_scenarios() {
        let mix: Mix = "silent=0, exit=3".parse().unwrap();
        assert_eq!(mix.to_string(), "silent=0,exit=3");
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..100 {
            assert_eq!(mix.pick(&mut rng), Scenario::Exit);
        }
        assert!("bogus=1".parse::<Mix>().is_err());
        assert!("exit=0".parse::<Mix>().is_err());
        assert!("exit".parse::<Mix>().is_err());
    }

    #[test]
    fn origin_strips_path_and_query() {
        assert_eq!(
            origin_of("http://127.0.0.1:8080/callback"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(origin_of("http://h:1?x=1"), "http://h:1");
        assert_eq!(origin_of("http://h:1"), "http://h:1");
    }

    #[test]
    fn flags_parse_and_validate() {
        let a = Args::try_parse_from([
            "sim",
            "--rate",
            "20",
            "--duration-s",
            "2",
            "--min-duration-ms",
            "1000",
            "--max-duration-ms",
            "3000",
        ])
        .unwrap();
        assert_eq!(a.battle_count(), 40);
        a.validate().unwrap();
        let bad = Args::try_parse_from(["sim", "--dup-ratio", "2"]).unwrap();
        assert!(bad.validate().is_err());
    }
}
