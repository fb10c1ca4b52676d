//! The `null` participant: runs `noop` steps and keeps nothing, for load tests and demos.
//!
//! A `memory` participant records a marker per step and keeps it for the life of the process,
//! so a server that runs millions of `noop` sagas on one grows by their markers (about 1.5 KiB
//! per 3-step saga: that was most of `sagalog bench`'s RSS growth, issue 13 item 5). A `null`
//! participant keeps no markers (like `http` and `worker`): a step in doubt is sent again, which
//! for a `noop` changes nothing, and `sagalog audit` names it as a participant without markers.
//!
//! Never does: anything but `noop` (any other operation is refused, permanently, at the call;
//! `config check` refuses it earlier), or hold state per step.

use super::{Applied, BoxFuture, Direction, Error, Kind, MarkerEntry, Operation, Participant, StepKey};

const NO_MARKERS: &str = "a null participant keeps no markers (its steps are noops, sent again when in doubt)";

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Null {
    name: String,
}

impl Null {
    pub fn new(name: &str) -> Null {
        Null { name: name.to_owned() }
    }
}

impl Participant for Null {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> Kind {
        Kind::Null
    }

    fn has_markers(&self) -> bool {
        false
    }

    fn apply<'a>(&'a self, key: &'a StepKey, attempt: u32, op: &'a Operation) -> BoxFuture<'a, Result<Applied, Error>> {
        let _ = (key, attempt);
        Box::pin(async move {
            match op {
                Operation::Noop => Ok(Applied::Applied),
                _ => Err(Error::permanent(&self.name, "a null participant runs `noop` steps only")),
            }
        })
    }

    fn lookup_marker<'a>(&'a self, key: &'a StepKey) -> BoxFuture<'a, Result<bool, Error>> {
        let _ = key;
        super::no_markers(&self.name, NO_MARKERS)
    }

    fn settle_marker<'a>(&'a self, key: &'a StepKey, through_attempt: u32) -> BoxFuture<'a, Result<bool, Error>> {
        let _ = (key, through_attempt);
        super::no_markers(&self.name, NO_MARKERS)
    }

    fn markers<'a>(&'a self, saga_id: &'a str) -> BoxFuture<'a, Result<Vec<(u32, Direction)>, Error>> {
        let _ = saga_id;
        super::no_markers(&self.name, NO_MARKERS)
    }

    fn all_markers(&self) -> BoxFuture<'_, Result<Vec<MarkerEntry>, Error>> {
        super::no_markers(&self.name, NO_MARKERS)
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A noop applies every time (nothing is remembered); anything else is refused for good.
    #[tokio::test]
    async fn runs_noops_and_keeps_nothing() {
        let null = Null::new("n");
        let key = StepKey { saga_id: "s".into(), step: 0, direction: Direction::Forward, scope: None };
        for attempt in 1..=2 {
            assert_eq!(null.apply(&key, attempt, &Operation::Noop).await.unwrap(), Applied::Applied);
        }
        let put = Operation::FilePut { path: "x".into(), contents: vec![] };
        let refused = null.apply(&key, 1, &put).await.unwrap_err();
        assert!(!refused.is_retryable() && refused.message.contains("noop"), "{refused}");
        assert!(!null.has_markers());
        assert!(null.lookup_marker(&key).await.is_err());
    }
}
