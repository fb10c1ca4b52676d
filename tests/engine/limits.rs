//! Bounded memory under sustained overload (trust item B15): the registry of sagas held in
//! memory (which also bounds the queue of sagas waiting for a slot) has a named limit,
//! `executor.live_sagas_max`; a submit beyond it is refused with RESOURCE_EXHAUSTED naming the
//! limit before anything is journaled, while recovery still adopts every acknowledged saga.

use crate::engine_support;

use std::time::Duration;

use engine_support::{CONFIG, saga, settled, start};
use sagalog::engine::Status;
use sagalog::executor::{Error, SubmitOutcome};
use sagalog::participant::memory::Memory;
use sagalog::recovery;

fn config(live_max: usize) -> String {
    CONFIG.replace("[executor]\n", &format!("[executor]\nlive_sagas_max = {live_max}\n"))
}

#[tokio::test]
async fn a_submit_beyond_the_live_limit_is_refused_naming_it_and_nothing_is_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    mem.set_down(true); // every saga stays unfinished, parked behind the breaker
    let h = start(dir.path(), &mem, &config(3));
    for i in 0..3 {
        h.exec.submit(saga(&format!("s{i}"), 1)).await.unwrap();
    }
    let refused = h.exec.submit(saga("s3", 1)).await.unwrap_err();
    assert!(matches!(refused, Error::TooManyLive { max: 3 }), "{refused:?}");
    assert!(refused.to_string().contains("executor.live_sagas_max"), "{refused}");
    assert!(h.exec.get("s3").is_none(), "a refused submit left an entry");
    // A resubmit of a saga already held is still answered, not refused.
    let again = h.exec.submit(saga("s1", 1)).await.unwrap();
    assert!(matches!(again, SubmitOutcome::AlreadyExists(_)), "{again:?}");
    // Room frees up when a saga finishes.
    mem.set_down(false);
    for i in 0..3 {
        assert_eq!(settled(&h.exec, &format!("s{i}")).await.status, Status::Completed);
    }
    // Nothing of the refused saga was journaled: a restart does not know it.
    h.exec.drain(Duration::from_secs(2)).await;
    h.journal.shutdown().await.unwrap();
    let h = start(dir.path(), &mem, &config(10));
    recovery::recover(&h.exec, 1).await.unwrap();
    assert!(h.exec.get("s3").is_none(), "the refused saga reached the journal");
    assert_eq!(h.exec.submit(saga("s3", 1)).await.unwrap(), SubmitOutcome::Accepted);
}

#[tokio::test]
async fn recovery_adopts_every_acknowledged_saga_beyond_the_live_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mem = Memory::new("mem");
    mem.set_down(true);
    {
        let h = start(dir.path(), &mem, &config(10));
        for i in 0..6 {
            h.exec.submit(saga(&format!("r{i}"), 2)).await.unwrap();
        }
        h.exec.drain(Duration::from_secs(2)).await;
        h.journal.shutdown().await.unwrap();
    }
    mem.set_down(false);
    let h = start(dir.path(), &mem, &config(2));
    recovery::recover(&h.exec, 1).await.unwrap();
    for i in 0..6 {
        assert_eq!(settled(&h.exec, &format!("r{i}")).await.status, Status::Completed, "r{i}");
    }
}
