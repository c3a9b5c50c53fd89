//! Egress (docs/downstream.md §1, §3, §4, §5): everything pusher sends over HTTP besides uploads.
//!
//! A core turns a session's items into owned [`job::Job`]s and hands them to the egress thread
//! through its [`job::Link`]; the egress runtime ([`runtime`]) makes the requests with one shared
//! client and reports each job back as a [`job::Completion`] (a 201 for a 104). The core side of
//! this (counts, per-session order, the speaker-sample [`delay::DelayQueue`]) lives in
//! `server::delivery`.
//!
//! Pieces, from pure to I/O:
//! - [`target`]: target kinds (timeouts, labels) and `?`/`&` query joining;
//! - [`body`]: request bodies;
//! - [`answer`]: what an answer means (the 201 of a 104, the relayed message);
//! - [`delay`]: the per-core delay queue of speaker-sample requests;
//! - [`job`]: jobs, completions and the per-core link;
//! - [`metrics`]: `pusher_egress_*`, `pusher_process_calls_*`, `pusher_speaker_sample*`;
//! - [`runtime`]: the tokio thread(s) and the HTTP calls.

pub mod answer;
pub mod body;
pub mod delay;
pub mod job;
pub mod metrics;
pub mod runtime;
pub mod target;

pub use job::{Link, SessionContext, Ticket};
pub use metrics::EgressMetrics;
