//! Record kinds: the one-byte tag in every frame that says how to read its payload.
//!
//! The values are part of the on-disk format: a value, once assigned, keeps its meaning
//! forever, and 0 is never assigned (a zero byte there is a sign of a zero-filled region).

/// What a record says. Payloads are MessagePack documents whose schema belongs to the engine;
/// the format only guarantees the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RecordKind {
    SagaSubmitted = 1,
    StepStarted = 2,
    StepSucceeded = 3,
    StepFailed = 4,
    SagaFinished = 5,
    CancelRequested = 6,
    Resolved = 7,
    /// Recovery started (the engine's `RecoveryStarted` record). The name is the tag's since
    /// version 1 and what `wal dump` prints, so it stays; it is not the checkpoint file.
    Checkpoint = 8,
    /// A saga's whole state, re-journaled so that the journal before it can go (added after
    /// version 1; a build that does not know the tag stops at it, never skips it).
    SagaSnapshot = 9,
}

impl RecordKind {
    /// Every kind this build knows, in tag order.
    pub const ALL: [RecordKind; 9] = [
        RecordKind::SagaSubmitted,
        RecordKind::StepStarted,
        RecordKind::StepSucceeded,
        RecordKind::StepFailed,
        RecordKind::SagaFinished,
        RecordKind::CancelRequested,
        RecordKind::Resolved,
        RecordKind::Checkpoint,
        RecordKind::SagaSnapshot,
    ];

    /// The tag for a byte read from disk, or `None` if this build does not know it.
    pub fn from_u8(tag: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| *k as u8 == tag)
    }

    /// The name used in dumps and logs.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::SagaSubmitted => "SagaSubmitted",
            RecordKind::StepStarted => "StepStarted",
            RecordKind::StepSucceeded => "StepSucceeded",
            RecordKind::StepFailed => "StepFailed",
            RecordKind::SagaFinished => "SagaFinished",
            RecordKind::CancelRequested => "CancelRequested",
            RecordKind::Resolved => "Resolved",
            RecordKind::Checkpoint => "Checkpoint",
            RecordKind::SagaSnapshot => "SagaSnapshot",
        }
    }

    /// The inverse of [`RecordKind::name`].
    pub fn from_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stable_and_zero_is_unassigned() {
        assert_eq!(RecordKind::from_u8(0), None);
        for (i, kind) in RecordKind::ALL.iter().enumerate() {
            assert_eq!(*kind as u8, i as u8 + 1, "tags are assigned densely from 1");
            assert_eq!(RecordKind::from_u8(*kind as u8), Some(*kind));
            assert_eq!(RecordKind::from_name(kind.name()), Some(*kind));
        }
        assert_eq!(RecordKind::from_u8(10), None);
    }
}
