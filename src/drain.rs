//! The drain (docs/protocol.md §5) as a pure state machine: what to do when, given the signals, the
//! `POST /__internal/drain` requests and the open-session count. Time comes in as milliseconds on a
//! monotonic clock; the caller (the main thread, `server::shutdown`) does the I/O: it flips the
//! flags the workers read and exits the process.
//!
//! ```text
//!  Serving ──begin (POST or first signal)──► Draining ──grace over──► Closing
//!                                              │  exit asked, no session  │ exit asked and (no session
//!                                              ▼                          ▼  or close wait over)
//!                                             Done ◄──────────────────────┘
//! ```
//!
//! Invariants: the drain starts once (a second begin keeps the first start); a drain begun by
//! `POST` never ends the process by itself — only a signal asks for the exit; a signal after the
//! exit was asked means "exit at once".

/// Where the drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not draining: ready, sessions admitted.
    Serving,
    /// Readiness 503, new sessions turned away; open sessions may end on their own until the
    /// grace period is over.
    Draining {
        /// When the drain began, on the caller's millisecond clock.
        since_ms: u64,
    },
    /// Grace over: open sessions were told to close (1001); waiting for them.
    Closing {
        /// When the sessions were told to close, on the caller's millisecond clock.
        since_ms: u64,
    },
    /// The process may exit.
    Done,
}

/// What the caller must do after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing now.
    Wait,
    /// Mark the drain begun (readiness 503, new sessions turned away) from `since_ms`.
    Begin {
        /// When the drain began, on the caller's millisecond clock.
        since_ms: u64,
    },
    /// The grace period is over: close every open session with 1001.
    CloseSessions,
    /// Every session is gone (or the close wait is over): flush and exit normally.
    Exit,
    /// A second signal: exit at once.
    ExitNow,
}

/// The drain's bounds, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time open sessions get to end after the drain began (`drain_grace_ms`).
    pub grace_ms: u64,
    /// After the sessions were told to close, how long to wait for them before exiting anyway
    /// (the close timeout plus slack).
    pub close_wait_ms: u64,
}

/// The drain state machine.
#[derive(Debug, Clone)]
pub struct Drain {
    limits: Limits,
    phase: Phase,
    /// A signal asked for the exit (SIGTERM or SIGINT).
    exit_asked: bool,
}

impl Drain {
    /// A serving process.
    pub fn new(limits: Limits) -> Drain {
        Drain {
            limits,
            phase: Phase::Serving,
            exit_asked: false,
        }
    }

    /// Where the drain is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether a signal asked for the exit.
    pub fn exit_asked(&self) -> bool {
        self.exit_asked
    }

    /// A drain began at `since_ms` (a `POST /__internal/drain`, seen through the shared flag).
    /// Idempotent: a drain already begun keeps its start.
    pub fn on_begin(&mut self, since_ms: u64) -> Action {
        if self.phase != Phase::Serving {
            return Action::Wait;
        }
        self.phase = Phase::Draining { since_ms };
        Action::Begin { since_ms }
    }

    /// SIGTERM or SIGINT at `now_ms`: the first one begins the drain (if a `POST` has not) and
    /// asks for the exit at its end; the next one exits at once.
    pub fn on_signal(&mut self, now_ms: u64) -> Action {
        if self.exit_asked {
            self.phase = Phase::Done;
            return Action::ExitNow;
        }
        self.exit_asked = true;
        self.on_begin(now_ms)
    }

    /// Time passed: `open` sessions are still open at `now_ms`.
    pub fn on_tick(&mut self, now_ms: u64, open: usize) -> Action {
        let action = match self.phase {
            Phase::Serving | Phase::Done => Action::Wait,
            Phase::Draining { .. } if self.exit_asked && open == 0 => Action::Exit,
            Phase::Draining { since_ms } if now_ms >= since_ms + self.limits.grace_ms => {
                self.phase = Phase::Closing { since_ms: now_ms };
                Action::CloseSessions
            }
            Phase::Draining { .. } => Action::Wait,
            Phase::Closing { since_ms }
                if self.exit_asked
                    && (open == 0 || now_ms >= since_ms + self.limits.close_wait_ms) =>
            {
                Action::Exit
            }
            Phase::Closing { .. } => Action::Wait,
        };
        if action == Action::Exit {
            self.phase = Phase::Done;
        }
        action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        grace_ms: 30_000,
        close_wait_ms: 3_500,
    };

    #[test]
    fn serving_waits_for_ever() {
        let mut drain = Drain::new(LIMITS);
        assert_eq!(drain.on_tick(u64::MAX / 2, 100), Action::Wait);
        assert_eq!(drain.phase(), Phase::Serving);
    }

    #[test]
    fn sigterm_alone_drains_then_exits_once_the_sessions_are_gone() {
        let mut drain = Drain::new(LIMITS);
        assert_eq!(drain.on_signal(1_000), Action::Begin { since_ms: 1_000 });
        assert_eq!(drain.on_tick(2_000, 3), Action::Wait);
        assert_eq!(drain.on_tick(3_000, 0), Action::Exit);
        assert_eq!(drain.phase(), Phase::Done);
    }

    #[test]
    fn sessions_that_outlive_the_grace_are_closed_then_waited_for_up_to_the_close_wait() {
        let mut drain = Drain::new(LIMITS);
        drain.on_signal(0);
        assert_eq!(drain.on_tick(29_999, 2), Action::Wait);
        assert_eq!(drain.on_tick(30_000, 2), Action::CloseSessions);
        assert_eq!(drain.phase(), Phase::Closing { since_ms: 30_000 });
        assert_eq!(drain.on_tick(33_499, 1), Action::Wait);
        assert_eq!(
            drain.on_tick(33_500, 1),
            Action::Exit,
            "the close wait is bounded"
        );
    }

    #[test]
    fn a_post_drain_never_exits_by_itself() {
        let mut drain = Drain::new(LIMITS);
        assert_eq!(drain.on_begin(500), Action::Begin { since_ms: 500 });
        assert_eq!(
            drain.on_tick(1_000, 0),
            Action::Wait,
            "no exit without a signal"
        );
        assert_eq!(drain.on_tick(30_500, 4), Action::CloseSessions);
        assert_eq!(drain.on_tick(100_000, 0), Action::Wait);
        assert!(!drain.exit_asked());
    }

    #[test]
    fn a_second_post_keeps_the_first_start() {
        let mut drain = Drain::new(LIMITS);
        drain.on_begin(500);
        assert_eq!(drain.on_begin(9_000), Action::Wait);
        assert_eq!(drain.phase(), Phase::Draining { since_ms: 500 });
        assert_eq!(drain.on_tick(30_500, 1), Action::CloseSessions);
    }

    #[test]
    fn sigterm_after_a_post_continues_the_same_drain() {
        let mut drain = Drain::new(LIMITS);
        drain.on_begin(0);
        // The chart's preStop: POST, sleep 15 s, then SIGTERM.
        assert_eq!(
            drain.on_signal(15_000),
            Action::Wait,
            "the drain already began"
        );
        assert_eq!(drain.phase(), Phase::Draining { since_ms: 0 });
        assert_eq!(drain.on_tick(20_000, 2), Action::Wait);
        assert_eq!(
            drain.on_tick(30_000, 2),
            Action::CloseSessions,
            "the grace counts from the POST, not from the signal"
        );
        assert_eq!(drain.on_tick(30_100, 0), Action::Exit);
    }

    #[test]
    fn sigterm_after_the_grace_of_a_post_exits_once_the_sessions_are_gone() {
        let mut drain = Drain::new(LIMITS);
        drain.on_begin(0);
        assert_eq!(drain.on_tick(30_000, 1), Action::CloseSessions);
        assert_eq!(drain.on_tick(60_000, 0), Action::Wait);
        assert_eq!(drain.on_signal(61_000), Action::Wait);
        assert_eq!(drain.on_tick(61_020, 0), Action::Exit);
    }

    #[test]
    fn a_second_signal_exits_at_once_in_any_phase() {
        for ticks in [0u64, 31_000] {
            let mut drain = Drain::new(LIMITS);
            drain.on_signal(0);
            if ticks > 0 {
                drain.on_tick(ticks, 5);
            }
            assert_eq!(drain.on_signal(ticks + 1), Action::ExitNow);
            assert_eq!(drain.phase(), Phase::Done);
        }
        let mut drain = Drain::new(LIMITS);
        drain.on_begin(0);
        assert_eq!(
            drain.on_signal(10),
            Action::Wait,
            "the first signal after a POST"
        );
        assert_eq!(drain.on_signal(20), Action::ExitNow);
    }

    #[test]
    fn zero_grace_closes_at_the_first_tick() {
        let mut drain = Drain::new(Limits {
            grace_ms: 0,
            close_wait_ms: 100,
        });
        drain.on_signal(7);
        assert_eq!(drain.on_tick(7, 3), Action::CloseSessions);
        assert_eq!(drain.on_tick(107, 3), Action::Exit);
    }
}
