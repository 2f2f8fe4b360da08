//! The injectable wall clock. Tencent's timestamps are Unix times, so the engine needs one; it
//! reads it only through [`Clock`], and timers wait on tokio's clock, so under
//! `#[tokio::test(start_paused = true)]` everything is virtual and deterministic.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A source of Unix time in milliseconds.
pub trait Clock: Send + Sync + 'static {
    /// Now, in Unix ms.
    fn now_ms(&self) -> i64;
}

/// Wall time that advances with tokio's clock: anchored once at a Unix time, then moving exactly
/// as `tokio::time::Instant` moves. Under paused time it is fully virtual.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use livebattle_engine::{Clock, TokioClock};
/// let clock = TokioClock::starting_at(1_739_954_005_000);
/// assert!(clock.now_ms() >= 1_739_954_005_000);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TokioClock {
    anchor_ms: i64,
    anchor: Instant,
}

impl TokioClock {
    /// Anchored at the system's current Unix time.
    pub fn system() -> TokioClock {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        TokioClock::starting_at(ms)
    }

    /// Anchored at `unix_ms` now (tests: a fixed, reproducible start).
    pub fn starting_at(unix_ms: i64) -> TokioClock {
        TokioClock {
            anchor_ms: unix_ms,
            anchor: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.anchor_ms + self.anchor.elapsed().as_millis() as i64
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

/// Converts an absolute Unix-ms deadline into a tokio instant, given the clock.
pub(crate) fn instant_for(clock: &dyn Clock, deadline_ms: i64) -> Instant {
    let now = Instant::now();
    let delta = deadline_ms.saturating_sub(clock.now_ms());
    if delta <= 0 {
        now
    } else {
        now + std::time::Duration::from_millis(delta as u64)
    }
}
