//! # livebattle-engine
//!
//! Tencent Live (TUILiveKit) battles as state machines — `pending → awaiting_response → running →
//! ended` — with their timers, driven by the Create/Start/End battle webhooks and app-side calls,
//! and observed by in-process observers or async subscriptions.
//!
//! * [`transition`] is the pure core: `battle + event + now → battle' + effects`, property-tested
//!   without a runtime. Every lifecycle rule lives there (docs/lifecycle.md explains them).
//! * [`Engine`] is the thin async shell: a fixed set of shards, each the single writer of its
//!   battles (its task, or in memory a caller that finds it free) and the owner of one timer
//!   queue; timers are data (absolute Unix-ms deadline +
//!   generation), so a stale timer never acts and a store can rebuild them.
//! * Wall time comes from an injectable [`Clock`]; [`TokioClock`] follows tokio's clock, so under
//!   `#[tokio::test(start_paused = true)]` everything is deterministic.
//! * [`Store`] is the durability seam ([`EphemeralStore`] by default, [`MemoryStore`] for tests).
//!
//! See [`Engine`] for an example.

#![warn(missing_docs)]

mod battle;
mod clock;
mod engine;
mod event;
mod metrics;
mod notify;
mod shard;
pub mod store;
#[cfg(feature = "store-contract")]
pub mod store_contract;
mod table;
mod timers;
pub mod transition;

pub use battle::{
    Battle, BattleSnapshot, EndReason, OptDur, OptMs, Participant, ParticipantView, Participants,
    Response, Rooms, StartSource, State, Timer, TimerKind,
};
pub use clock::{Clock, TokioClock};
pub use engine::{Applied, Engine, EngineBuilder, EngineError, Outcome};
pub use event::{Cause, Created, Ended, Event, RoomDestroyed, RoomInfo, Started};
pub use metrics::{Metrics, MetricsSnapshot, LATENESS_BUCKETS_MS};
pub use notify::{
    Delivery, Filter, Notification, NotificationFields, Observer, ResumeTooOld, Subscription,
    Target,
};
pub use store::{
    Claim, Commit, EphemeralStore, Fetched, Loaded, MemoryStore, Replicated, SharedStore, Store,
    StoreError, StoreFigure, StoreOp, Stored,
};
pub use transition::{Refusal, Rules};
