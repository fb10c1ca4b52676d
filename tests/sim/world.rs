//! The seeded parts of a simulation: the random number generator and the knobs one seed picks.

/// SplitMix64: tiny, fast, and the same on every platform, so a seed means the same schedule
/// everywhere (no dependency on `rand`'s algorithm choices between versions).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `per_mille`/1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        (self.next_u64() % 1000) < u64::from(per_mille)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() { None } else { Some(&items[(self.next_u64() % items.len() as u64) as usize]) }
    }

    /// An independent stream derived from this one (for a participant, say).
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

/// How a run (epoch) of the engine ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Drain, then a clean journal shutdown.
    Clean,
    /// The process dies: tasks dropped, nothing flushed by the engine (the OS keeps every
    /// written byte, as it does for a real process crash).
    Crash,
    /// The machine loses power: only synced bytes survive, plus some unsynced pages.
    PowerLoss(PageLoss),
}

/// Which unsynced pages of the journal survive a power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageLoss {
    /// None of them.
    All,
    /// The first `n` unsynced pages of each segment (a prefix, as most file systems do).
    Prefix(u64),
    /// Each page independently, with probability 1/2 (holes of zeroes in between).
    Scattered,
}

/// Fault rates of a simulated participant, per mille of calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    pub apply_retryable: u32,
    /// Commit, then report a retryable error (the reply was lost).
    pub lost_reply: u32,
    /// Hang past the step timeout; the commit lands later anyway (the future is dropped, the
    /// transaction is not).
    pub late_commit: u32,
    /// Hang past the step timeout and never commit.
    pub hang: u32,
    /// A permanent failure of a compensation (makes the saga STUCK until resolved).
    pub compensate_permanent: u32,
    pub lookup_retryable: u32,
    pub lookup_permanent: u32,
}

/// What one seed decided before anything ran.
#[derive(Debug, Clone)]
pub struct Plan {
    pub participants: usize,
    pub epochs: usize,
    pub epoch_ticks: u64,
    pub rates: Rates,
    /// Whether late commits are on for this seed (they can land after a marker lookup said
    /// "absent"; see docs/simulator.md).
    #[allow(dead_code)] // shown in the schedule (Debug)
    pub late_commits: bool,
}

impl Plan {
    pub fn new(rng: &mut Rng) -> Plan {
        let late_commits = rng.chance(250);
        let rates = Rates {
            apply_retryable: rng.range(0, 120) as u32,
            lost_reply: rng.range(0, 60) as u32,
            late_commit: if late_commits { rng.range(10, 60) as u32 } else { 0 },
            hang: rng.range(0, 30) as u32,
            compensate_permanent: rng.range(0, 40) as u32,
            lookup_retryable: rng.range(0, 150) as u32,
            lookup_permanent: rng.range(0, 20) as u32,
        };
        Plan {
            participants: rng.range(1, 3) as usize,
            epochs: rng.range(2, 5) as usize,
            epoch_ticks: rng.range(20, 60),
            rates,
            late_commits,
        }
    }
}

/// A catalog for `participants` participants, with seeded retry budgets, timeouts and breaker
/// settings: a new one at each restart ("config changes between restarts"). Actions and
/// participants keep their names, so every journaled saga stays runnable. The delay action
/// `wait` ([`DELAY_ACTION`]) is the same in every config (drawing its delay from `rng` would
/// change every named seed's schedule).
/// The delay action of every simulated config, and its delay: short, so that restarts,
/// crashes, power losses, cancels and drains often land in the middle of a wait.
pub const DELAY_ACTION: &str = "wait";
pub const DELAY_MS: u64 = 25;

pub fn config(rng: &mut Rng, participants: usize) -> String {
    let mut text = format!(
        "[executor]\nin_flight_max = {}\nbreaker_failures = {}\nbreaker_cooldown_ms = {}\nbreaker_successes = 1\n\n",
        rng.range(1, 8),
        rng.range(2, 6),
        rng.range(5, 40)
    );
    for p in 0..participants {
        text.push_str(&format!("[participants.p{p}]\nkind = \"memory\"\n\n"));
    }
    text.push_str(&format!("[actions.{DELAY_ACTION}]\ndelay_ms = {DELAY_MS}\n\n"));
    for p in 0..participants {
        let attempts = rng.range(2, 6);
        let comp_attempts = rng.range(2, 6);
        let timeout = rng.range(15, 60);
        text.push_str(&format!(
            "[actions.a{p}]\nparticipant = \"p{p}\"\nparams = {{ n = \"int\" }}\nforward = {{ sql = \"do\", args = [\"n\"] }}\n\
             compensate = {{ sql = \"undo\", args = [\"n\"] }}\n\
             retry = {{ max_attempts = {attempts}, initial_backoff_ms = 1, max_backoff_ms = 8, jitter = 0.5 }}\n\
             compensate_retry = {{ max_attempts = {comp_attempts}, initial_backoff_ms = 1, max_backoff_ms = 8, jitter = 0.5 }}\n\
             timeout_ms = {timeout}\n\n"
        ));
    }
    text
}
