//! # livebattle-ingest
//!
//! Receives Tencent Live (TUILiveKit) webhooks and feeds the battle ones to
//! [`livebattle_engine::Engine`]:
//!
//! * [`query`]: the URL's `SdkAppid`, `CallbackCommand`, `Sign`, `RequestTime`… (any key case);
//! * [`signature`]: served apps, `Sign = sha256(token + RequestTime)`, freshness, token rotation;
//! * [`payload`]: Create/Start/End battle and DestroyRoom bodies to engine [`Event`]s;
//! * [`reply`]: Tencent's `{"ActionStatus","ErrorInfo","ErrorCode"}` and the refusal table;
//! * [`metrics`]: requests by command and outcome, refusals by reason;
//! * [`handler`]: the axum handler and router; OK only after `engine.apply` returned `Ok`.
//!
//! [`parse_and_verify`] is the whole check without HTTP or engine (the fuzz target's entry).
//! docs/ingest.md has the error codes, the parameters and the field-by-field mapping.
//!
//! ```
//! use livebattle_engine::{Engine, TokioClock};
//! use livebattle_ingest::{AppConfig, IngestConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let engine = Engine::builder().clock(TokioClock::system()).start().await.unwrap();
//! let config = IngestConfig {
//!     apps: vec![AppConfig::with_token("1400000001", "callback-token")],
//!     ..IngestConfig::default()
//! };
//! let app: axum::Router = livebattle_ingest::router(engine, config).unwrap();
//! # let _ = app;
//! // axum::serve(listener, app).await
//! # }
//! ```

#![warn(missing_docs)]

mod command;
pub mod config;
mod fields;
pub mod handler;
pub mod metrics;
pub mod payload;
pub mod query;
pub mod reply;
pub mod signature;

pub use command::{Command, ACKNOWLEDGED_COMMANDS};
pub use config::{AppConfig, ConfigError, IngestConfig};
pub use handler::{callback, router, Ingest, CALLBACK_PATH};
pub use metrics::{IngestMetrics, IngestMetricsSnapshot, RequestOutcome};
pub use payload::{parse_payload, Action};
pub use query::CallbackQuery;
pub use reply::{Reason, Refusal, TencentReply};
pub use signature::{compute_sign, sign_matches, Authorized, Verifier};

use livebattle_engine::Event;

/// A callback that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The served app it came for.
    pub sdk_app_id: String,
    /// The command.
    pub command: Command,
    /// Apply an event, or only acknowledge.
    pub action: Action,
}

impl Accepted {
    /// The event to apply, if any.
    pub fn event(&self) -> Option<&Event> {
        match &self.action {
            Action::Apply(e) => Some(e),
            Action::Acknowledge => None,
        }
    }
}

/// Every check of one callback, pure: query → app → command → signature → freshness (at
/// `now_ms`, engine Unix ms) → body size → JSON → fields. The handler runs the same steps, with
/// the body read in between.
///
/// ```
/// use livebattle_ingest::{compute_sign, parse_and_verify, AppConfig, IngestConfig, Reason, Verifier};
/// let config = IngestConfig { apps: vec![AppConfig::with_token("1400000001", "xxxxyyyy")], ..Default::default() };
/// let now_ms = 1_669_872_112_000;
/// let verifier = Verifier::new(&config, now_ms).unwrap();
/// let sign = compute_sign("xxxxyyyy", "1669872112");
/// let query = format!("SdkAppid=1400000001&CallbackCommand=Live.CallbackAfterStartBattle&Sign={sign}&RequestTime=1669872112");
/// let body = br#"{"CallbackCommand":"Live.CallbackAfterStartBattle","BattleId":"b1","Duration":60000}"#;
/// let accepted = parse_and_verify(&verifier, &query, body, now_ms).unwrap();
/// assert!(accepted.event().is_some());
/// let stale = parse_and_verify(&verifier, &query, body, now_ms + 120_000).unwrap_err();
/// assert_eq!(stale.reason, Reason::StaleRequestTime);
/// ```
pub fn parse_and_verify(
    verifier: &Verifier,
    raw_query: &str,
    body: &[u8],
    now_ms: i64,
) -> Result<Accepted, Refusal> {
    let query = CallbackQuery::parse(raw_query)?;
    let Authorized {
        sdk_app_id,
        command,
    } = verifier.authorize(&query, now_ms)?;
    verifier.check_body_size(body.len())?;
    let action = parse_payload(&command, body)?;
    Ok(Accepted {
        sdk_app_id,
        command,
        action,
    })
}
