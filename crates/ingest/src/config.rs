//! Which apps this process serves, their callback tokens, and the request limits.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

/// Default `|now − RequestTime|` window: Tencent's documented one minute.
pub const DEFAULT_SIGNATURE_WINDOW: Duration = Duration::from_secs(60);
/// Default body limit: 64 KiB (the battle callbacks are well under 1 KiB).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// Default time an old token stays valid after a rotation.
pub const DEFAULT_TOKEN_OVERLAP: Duration = Duration::from_secs(5 * 60);
/// Default bound on `engine.apply`, well inside Tencent's 2 s callback budget.
pub const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_millis(1500);

/// One Tencent application (SDKAppID) this process accepts callbacks for.
#[derive(Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// The SDKAppID, as decimal digits (compared as a string, so leading zeros matter).
    pub sdk_app_id: String,
    /// The callback token set with `set_callback_token`; `None` when token auth is off for the
    /// app, in which case `Sign`/`RequestTime` are ignored.
    pub token: Option<String>,
    /// A token being rotated out: accepted beside `token` for
    /// [`IngestConfig::token_overlap`] after start-up. `None` unless a rotation is in progress.
    pub previous_token: Option<String>,
}

impl AppConfig {
    /// An app with token auth off.
    pub fn new(sdk_app_id: impl Into<String>) -> AppConfig {
        AppConfig {
            sdk_app_id: sdk_app_id.into(),
            token: None,
            previous_token: None,
        }
    }

    /// An app whose callbacks must be signed with `token`.
    pub fn with_token(sdk_app_id: impl Into<String>, token: impl Into<String>) -> AppConfig {
        AppConfig {
            token: Some(token.into()),
            ..AppConfig::new(sdk_app_id)
        }
    }
}

// Tokens are secrets: keep them out of Debug output and logs.
impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppConfig")
            .field("sdk_app_id", &self.sdk_app_id)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "previous_token",
                &self.previous_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The ingest configuration. Build it with struct syntax over [`Default`].
///
/// ```
/// use livebattle_ingest::{AppConfig, IngestConfig};
/// let config = IngestConfig {
///     apps: vec![AppConfig::with_token("1400000001", "xxxxyyyy")],
///     ..IngestConfig::default()
/// };
/// assert!(config.validate().is_ok());
/// assert!(IngestConfig::default().validate().is_err()); // no apps
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestConfig {
    /// The apps served; at least one.
    pub apps: Vec<AppConfig>,
    /// Largest accepted `|now − RequestTime|` (default 60 s), on the engine's clock.
    pub signature_window: Duration,
    /// Largest accepted body in bytes (default 64 KiB).
    pub body_limit: usize,
    /// How long an old token stays valid after a rotation (default 5 min), on the engine's clock.
    pub token_overlap: Duration,
    /// The longest the handler waits for `engine.apply` before replying 503 (default 1.5 s).
    pub apply_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig {
            apps: Vec::new(),
            signature_window: DEFAULT_SIGNATURE_WINDOW,
            body_limit: DEFAULT_BODY_LIMIT,
            token_overlap: DEFAULT_TOKEN_OVERLAP,
            apply_timeout: DEFAULT_APPLY_TIMEOUT,
        }
    }
}

/// A configuration that cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `apps` is empty: every callback would be refused.
    NoApps,
    /// An SDKAppID that is empty or not all decimal digits.
    BadSdkAppId(String),
    /// The same SDKAppID twice.
    DuplicateSdkAppId(String),
    /// An empty token or previous token (Tencent tokens are 1–128 characters).
    EmptyToken(String),
    /// A zero body limit.
    ZeroBodyLimit,
    /// A zero apply timeout.
    ZeroApplyTimeout,
    /// A token rotation named an SDKAppID this process does not serve.
    UnknownSdkAppId(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoApps => f.write_str("ingest config lists no apps (SdkAppIds)"),
            ConfigError::BadSdkAppId(id) => {
                write!(
                    f,
                    "SdkAppId {id:?} is not a non-empty string of decimal digits"
                )
            }
            ConfigError::DuplicateSdkAppId(id) => write!(f, "SdkAppId {id} is listed twice"),
            ConfigError::EmptyToken(id) => write!(f, "SdkAppId {id} has an empty token"),
            ConfigError::ZeroBodyLimit => f.write_str("body_limit must be at least 1 byte"),
            ConfigError::ZeroApplyTimeout => f.write_str("apply_timeout must not be zero"),
            ConfigError::UnknownSdkAppId(id) => write!(f, "SdkAppId {id} is not served here"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// True for a non-empty string of ASCII decimal digits.
pub(crate) fn is_sdk_app_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl IngestConfig {
    /// Checks the configuration: at least one app, SDKAppIDs of digits and unique, no empty
    /// token, a non-zero body limit and apply timeout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.apps.is_empty() {
            return Err(ConfigError::NoApps);
        }
        if self.body_limit == 0 {
            return Err(ConfigError::ZeroBodyLimit);
        }
        if self.apply_timeout.is_zero() {
            return Err(ConfigError::ZeroApplyTimeout);
        }
        let mut seen = HashSet::new();
        for app in &self.apps {
            if !is_sdk_app_id(&app.sdk_app_id) {
                return Err(ConfigError::BadSdkAppId(app.sdk_app_id.clone()));
            }
            if !seen.insert(app.sdk_app_id.as_str()) {
                return Err(ConfigError::DuplicateSdkAppId(app.sdk_app_id.clone()));
            }
            let empty = |t: &Option<String>| t.as_deref().is_some_and(str::is_empty);
            if empty(&app.token) || empty(&app.previous_token) {
                return Err(ConfigError::EmptyToken(app.sdk_app_id.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(apps: Vec<AppConfig>) -> IngestConfig {
        IngestConfig {
            apps,
            ..IngestConfig::default()
        }
    }

    #[test]
    fn defaults() {
        let c = IngestConfig::default();
        assert_eq!(c.signature_window, Duration::from_secs(60));
        assert_eq!(c.body_limit, 65536);
        assert_eq!(c.token_overlap, Duration::from_secs(300));
        assert_eq!(c.validate(), Err(ConfigError::NoApps));
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(matches!(
            with(vec![AppConfig::new("14000a")]).validate(),
            Err(ConfigError::BadSdkAppId(_))
        ));
        assert!(matches!(
            with(vec![AppConfig::new("")]).validate(),
            Err(ConfigError::BadSdkAppId(_))
        ));
        assert!(matches!(
            with(vec![AppConfig::new("1"), AppConfig::with_token("1", "t")]).validate(),
            Err(ConfigError::DuplicateSdkAppId(_))
        ));
        assert!(matches!(
            with(vec![AppConfig::with_token("1", "")]).validate(),
            Err(ConfigError::EmptyToken(_))
        ));
        let mut c = with(vec![AppConfig::new("1")]);
        c.body_limit = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroBodyLimit));
        let mut c = with(vec![AppConfig::new("1")]);
        c.apply_timeout = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroApplyTimeout));
        assert!(
            with(vec![AppConfig::new("1"), AppConfig::with_token("2", "t")])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn debug_redacts_tokens() {
        let s = format!("{:?}", AppConfig::with_token("1", "secret-token"));
        assert!(!s.contains("secret-token"), "{s}");
    }
}
