//! Counters: requests by command and outcome, refusals by reason. Plain atomics, fixed label
//! sets (an undocumented command counts as `other`), so a stranger cannot grow them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use livebattle_engine::Outcome;

use crate::command::{Command, ACKNOWLEDGED_COMMANDS, OTHER_COMMAND_LABEL};
use crate::reply::Reason;

/// Command label of a request refused before its command was known.
pub const UNKNOWN_COMMAND_LABEL: &str = "unknown";

/// Outcome labels: the engine's outcomes, `applied` for an engine outcome this crate does not
/// know yet, `acknowledged` (not applied) and `refused`.
pub const OUTCOME_LABELS: [&str; 10] = [
    "new",
    "transition",
    "update",
    "unchanged",
    "duplicate",
    "evicted",
    "no_battle",
    "applied",
    "acknowledged",
    "refused",
];

const APPLIED_FALLBACK: usize = 7;
const COMMANDS: usize = Command::APPLIED.len() + ACKNOWLEDGED_COMMANDS.len() + 2;

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The engine accepted the event with this outcome.
    Applied(Outcome),
    /// Acknowledged without applying (a command this crate does not apply).
    Acknowledged,
    /// Refused; the reason is counted separately.
    Refused,
}

impl RequestOutcome {
    /// The metric label.
    pub fn label(self) -> &'static str {
        OUTCOME_LABELS[self.index()]
    }

    fn index(self) -> usize {
        let label = match self {
            RequestOutcome::Applied(o) => o.as_str(),
            RequestOutcome::Acknowledged => "acknowledged",
            RequestOutcome::Refused => "refused",
        };
        OUTCOME_LABELS
            .iter()
            .position(|l| *l == label)
            .unwrap_or(APPLIED_FALLBACK)
    }
}

fn command_label(index: usize) -> &'static str {
    let applied = Command::APPLIED.len();
    let acked = ACKNOWLEDGED_COMMANDS.len();
    if let Some(c) = Command::APPLIED.get(index) {
        c.label()
    } else if let Some(c) = ACKNOWLEDGED_COMMANDS.get(index - applied) {
        c
    } else if index == applied + acked {
        OTHER_COMMAND_LABEL
    } else {
        UNKNOWN_COMMAND_LABEL
    }
}

fn command_index(command: Option<&Command>) -> usize {
    let applied = Command::APPLIED.len();
    match command {
        None => COMMANDS - 1,
        Some(Command::Other(word)) => ACKNOWLEDGED_COMMANDS
            .iter()
            .position(|known| known == word)
            .map_or(COMMANDS - 2, |i| applied + i),
        Some(c) => Command::APPLIED
            .iter()
            .position(|a| a == c)
            .unwrap_or(COMMANDS - 2),
    }
}

/// One `(command, outcome)` counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestCount {
    /// The command word, `other` or `unknown`.
    pub command: &'static str,
    /// One of [`OUTCOME_LABELS`].
    pub outcome: &'static str,
    /// Requests so far.
    pub count: u64,
}

/// One refusal-reason counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalCount {
    /// The reason label (`bad_signature`, …).
    pub reason: &'static str,
    /// Its `ErrorCode`.
    pub code: u32,
    /// Refusals so far.
    pub count: u64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestMetricsSnapshot {
    /// Non-zero `(command, outcome)` counters.
    pub requests: Vec<RequestCount>,
    /// Every refusal reason, zero or not.
    pub refusals: Vec<RefusalCount>,
}

impl IngestMetricsSnapshot {
    /// The request counter for `(command, outcome)`, 0 when absent.
    pub fn requests(&self, command: &str, outcome: &str) -> u64 {
        self.requests
            .iter()
            .filter(|r| r.command == command && r.outcome == outcome)
            .map(|r| r.count)
            .sum()
    }

    /// The refusal counter for a reason.
    pub fn refusals(&self, reason: Reason) -> u64 {
        self.refusals
            .iter()
            .filter(|r| r.reason == reason.as_str())
            .map(|r| r.count)
            .sum()
    }
}

/// The ingest counters. Shared by every request; all methods take `&self`.
pub struct IngestMetrics {
    requests: [[AtomicU64; OUTCOME_LABELS.len()]; COMMANDS],
    refusals: [AtomicU64; Reason::ALL.len()],
}

impl Default for IngestMetrics {
    fn default() -> IngestMetrics {
        IngestMetrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl std::fmt::Debug for IngestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestMetrics")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl IngestMetrics {
    /// Counts one finished request. `command` is `None` when it was refused before its command
    /// was known.
    pub fn record(&self, command: Option<&Command>, outcome: RequestOutcome) {
        self.requests[command_index(command)][outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refusal (call [`IngestMetrics::record`] with `Refused` as well).
    pub fn record_refusal(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> IngestMetricsSnapshot {
        let mut requests = Vec::new();
        for (ci, row) in self.requests.iter().enumerate() {
            for (oi, counter) in row.iter().enumerate() {
                let count = counter.load(Ordering::Relaxed);
                if count > 0 {
                    requests.push(RequestCount {
                        command: command_label(ci),
                        outcome: OUTCOME_LABELS[oi],
                        count,
                    });
                }
            }
        }
        let refusals = Reason::ALL
            .iter()
            .zip(&self.refusals)
            .map(|(reason, counter)| RefusalCount {
                reason: reason.as_str(),
                code: reason.code(),
                count: counter.load(Ordering::Relaxed),
            })
            .collect();
        IngestMetricsSnapshot { requests, refusals }
    }

    /// The counters in Prometheus text format: `livebattle_ingest_requests_total{command,outcome}`
    /// and `livebattle_ingest_refusals_total{reason,code}`.
    pub fn to_prometheus(&self) -> String {
        let snap = self.snapshot();
        let requests = snap.requests.iter().map(|r| {
            let labels = format!("command=\"{}\",outcome=\"{}\"", r.command, r.outcome);
            (labels, r.count)
        });
        let refusals = snap.refusals.iter().map(|r| {
            let labels = format!("reason=\"{}\",code=\"{}\"", r.reason, r.code);
            (labels, r.count)
        });
        let mut out = String::new();
        let help = "Tencent callbacks by command and outcome.";
        family(&mut out, "livebattle_ingest_requests_total", help, requests);
        let help = "Refused Tencent callbacks by reason.";
        family(&mut out, "livebattle_ingest_refusals_total", help, refusals);
        out
    }
}

/// One Prometheus counter family: HELP, TYPE and a line per label set.
fn family(out: &mut String, name: &str, help: &str, rows: impl Iterator<Item = (String, u64)>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (labels, count) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_index_round_trips_its_label() {
        for c in Command::APPLIED {
            assert_eq!(command_label(command_index(Some(&c))), c.label());
        }
        for word in ACKNOWLEDGED_COMMANDS {
            let c = Command::parse(word);
            assert_eq!(command_label(command_index(Some(&c))), word);
        }
        let odd = Command::parse("X.Y");
        assert_eq!(command_label(command_index(Some(&odd))), "other");
        assert_eq!(command_label(command_index(None)), "unknown");
    }

    #[test]
    fn counts_and_renders() {
        let m = IngestMetrics::default();
        m.record(
            Some(&Command::EndBattle),
            RequestOutcome::Applied(Outcome::New),
        );
        m.record(
            Some(&Command::EndBattle),
            RequestOutcome::Applied(Outcome::New),
        );
        m.record(
            Some(&Command::parse("Group.CallbackAfterSendMsg")),
            RequestOutcome::Acknowledged,
        );
        m.record(None, RequestOutcome::Refused);
        m.record_refusal(Reason::MissingCommand);
        let s = m.snapshot();
        assert_eq!(s.requests("Live.CallbackAfterEndBattle", "new"), 2);
        assert_eq!(s.requests("Group.CallbackAfterSendMsg", "acknowledged"), 1);
        assert_eq!(s.requests("unknown", "refused"), 1);
        assert_eq!(s.refusals(Reason::MissingCommand), 1);
        assert_eq!(s.refusals(Reason::BadSignature), 0);
        assert_eq!(s.refusals.len(), Reason::ALL.len());
        let text = m.to_prometheus();
        assert!(text.contains(
            "livebattle_ingest_requests_total{command=\"Live.CallbackAfterEndBattle\",outcome=\"new\"} 2"
        ));
        assert!(text.contains(
            "livebattle_ingest_refusals_total{reason=\"missing_command\",code=\"4004\"} 1"
        ));
    }

    #[test]
    fn outcome_labels() {
        assert_eq!(
            RequestOutcome::Applied(Outcome::Duplicate).label(),
            "duplicate"
        );
        assert_eq!(
            RequestOutcome::Applied(Outcome::NoBattle).label(),
            "no_battle"
        );
        assert_eq!(RequestOutcome::Acknowledged.label(), "acknowledged");
        assert_eq!(RequestOutcome::Refused.label(), "refused");
    }
}
