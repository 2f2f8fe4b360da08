//! The `CallbackCommand` word: the four this crate applies and every other one it acknowledges.

use std::fmt;

/// The commands Tencent documents for TUILiveKit (and the older TUIRoomKit `Room.*` words),
/// other than the four applied ones. Each gets its own metric label; anything else counts as
/// `other`, so a stranger cannot grow the metric set.
pub const ACKNOWLEDGED_COMMANDS: [&str; 21] = [
    "Live.CallbackAfterCreateRoom",
    "Live.CallbackAfterUpdateRoomInfo",
    "Live.CallbackAfterSetMetadata",
    "Live.CallbackAfterDelMetadata",
    "Live.CallbackAfterCreateRoomReachingThreshold",
    "Live.CallbackAfterMemberStateChanged",
    "Live.CallbackAfterChangeOwner",
    "Live.CallbackAfterModifyAdmin",
    "Mic.CallbackAfterSeatInfoChanged",
    "Live.CallbackBeforeSendGift",
    "Live.CallbackBeforeCallBackNotBlock",
    "Group.CallbackAfterSendMsg",
    "Group.CallbackBeforeSendMsg",
    "Follow.CallbackAfterFollowAdd",
    "Follow.CallbackAfterFollowDelete",
    "Room.CallbackAfterCreateRoom",
    "Room.CallbackAfterDestroyRoom",
    "Room.CallbackAfterUpdateRoomInfo",
    "Room.CallbackAfterMemberEnter",
    "Room.CallbackAfterMemberLeave",
    "State.StateChange",
];

/// Metric label for an acknowledged command that is not in [`ACKNOWLEDGED_COMMANDS`].
pub const OTHER_COMMAND_LABEL: &str = "other";

/// A callback command, as named in the URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// `Live.CallbackAfterCreateBattle` → `Event::Created`.
    CreateBattle,
    /// `Live.CallbackAfterStartBattle` → `Event::Started`.
    StartBattle,
    /// `Live.CallbackAfterEndBattle` → `Event::Ended`.
    EndBattle,
    /// `Live.CallbackAfterDestroyRoom` → `Event::RoomDestroyed`.
    DestroyRoom,
    /// Any other command: acknowledged, counted, not applied.
    Other(String),
}

impl Command {
    /// The applied commands, in metric order.
    pub const APPLIED: [Command; 4] = [
        Command::CreateBattle,
        Command::StartBattle,
        Command::EndBattle,
        Command::DestroyRoom,
    ];

    /// Classifies a command word (exact, case-sensitive, as Tencent sends it).
    pub fn parse(word: &str) -> Command {
        match word {
            "Live.CallbackAfterCreateBattle" => Command::CreateBattle,
            "Live.CallbackAfterStartBattle" => Command::StartBattle,
            "Live.CallbackAfterEndBattle" => Command::EndBattle,
            "Live.CallbackAfterDestroyRoom" => Command::DestroyRoom,
            other => Command::Other(other.to_owned()),
        }
    }

    /// The command word.
    pub fn as_str(&self) -> &str {
        match self {
            Command::CreateBattle => "Live.CallbackAfterCreateBattle",
            Command::StartBattle => "Live.CallbackAfterStartBattle",
            Command::EndBattle => "Live.CallbackAfterEndBattle",
            Command::DestroyRoom => "Live.CallbackAfterDestroyRoom",
            Command::Other(word) => word,
        }
    }

    /// True for the four commands that feed the engine.
    pub fn is_applied(&self) -> bool {
        !matches!(self, Command::Other(_))
    }

    /// A bounded metric label: the command word when documented, `other` otherwise.
    pub fn label(&self) -> &'static str {
        match self {
            Command::CreateBattle => "Live.CallbackAfterCreateBattle",
            Command::StartBattle => "Live.CallbackAfterStartBattle",
            Command::EndBattle => "Live.CallbackAfterEndBattle",
            Command::DestroyRoom => "Live.CallbackAfterDestroyRoom",
            Command::Other(word) => ACKNOWLEDGED_COMMANDS
                .iter()
                .find(|known| *known == word)
                .copied()
                .unwrap_or(OTHER_COMMAND_LABEL),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_labels() {
        for c in Command::APPLIED {
            assert_eq!(Command::parse(c.as_str()), c);
            assert_eq!(c.label(), c.as_str());
            assert!(c.is_applied());
        }
        let gift = Command::parse("Live.CallbackBeforeSendGift");
        assert!(!gift.is_applied());
        assert_eq!(gift.label(), "Live.CallbackBeforeSendGift");
        assert_eq!(Command::parse("Evil.Whatever").label(), "other");
        assert_eq!(
            Command::parse("live.callbackafterendbattle").label(),
            "other"
        );
    }
}
