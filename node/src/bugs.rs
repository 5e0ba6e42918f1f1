//! Bugs planted on purpose, to prove that the simulation's checkers catch them.
//!
//! They exist only in builds with the `planted-bugs` feature (the simulation crate enables
//! it under `--cfg madsim`); everywhere else [`active`] is the constant `false` and every
//! planted branch is compiled away. A simulation activates at most one at a time.

/// The bugs that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Bug {
    /// The leader commits an entry stored on one node fewer than a majority.
    CommitWithoutQuorum = 1,
    /// The log (votes, terms, entries) is written but never fsynced before what depends on
    /// it is sent: a power loss takes back votes and acknowledgements already given.
    SkipFsync = 2,
    /// Replicas apply entries they hold but that are not yet committed.
    ApplyBeforeCommit = 3,
    /// Applying a send skips the session-sequence lookup, so a retry stores a second copy.
    ForgetDedup = 4,
    /// Reads skip ReadIndex: whichever node a client asks (a deposed leader, a lagging or
    /// partitioned follower) answers from what it has applied.
    SkipReadIndex = 5,
}

impl Bug {
    pub const ALL: [Bug; 5] =
        [Bug::CommitWithoutQuorum, Bug::SkipFsync, Bug::ApplyBeforeCommit, Bug::ForgetDedup, Bug::SkipReadIndex];
}

// Per thread: a madsim simulation runs all of its nodes on one thread, and simulations of
// different seeds may run side by side on others, each with its own bug.
#[cfg(feature = "planted-bugs")]
thread_local! {
    static ACTIVE: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Plants `bug` (or none) in every node running on this thread.
#[cfg(feature = "planted-bugs")]
pub fn activate(bug: Option<Bug>) {
    ACTIVE.with(|active| active.set(bug.map_or(0, |b| b as u8)));
}

/// Whether `bug` is planted.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        ACTIVE.with(|active| active.get()) == bug as u8
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}
