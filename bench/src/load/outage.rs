//! `outage`: the store down for a minute under real-time audio load: server memory stays flat,
//! the backlog (backpressure) is visible in pusher's metrics while the store is down and drains
//! once it is back, and no byte is lost.
//!
//! The load is `stream`'s ([`Load`]: sessions `uid=outage-<i>` each sending one 101 per
//! interval at real-time rate, switching conversation every `--conversation-s`), and so are the
//! drain wait and the per-uid comparison of bytes sent and stored. The S3 endpoint is the
//! downstream simulator run in this process on `--downstream-listen`, with its clock started at
//! the start of streaming: every put from `--store-fail-from-s` for `--store-fail-for-s` is
//! answered `503` at once (outside the window a put takes `--store-delay-ms`).
//!
//! Results besides `stream`'s RSS figures: `pusher_spill_pending_bytes` before, during and after
//! the outage and how long after the store came back it took to fall to its level before the
//! outage (`recovery_s`); the transitions of `pusher_upload_store_healthy`; upload retries and
//! failed attempts; `pusher_spill_backpressure_seconds_total` (session-seconds not read); the
//! puts the simulator answered 503; bytes sent vs stored. Goals: `rss_flat` (slope after the
//! warm-up below `--goal-rss-slope-mb-per-min`), `no_loss`, `recovered` (after the close the
//! log drained, pending back to at most `--goal-pending-bytes`, within `--drain-timeout-s`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, json};

use super::private_cloud::Lag;
use super::stream::{Load, run_load};
use super::{BYTES_PER_MB, round};
use crate::downstream::{self, Route, RouteArgs};
use crate::stats;

const UID_PREFIX: &str = "outage";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    load: Load,
    /// The simulator's routes: `--store-delay-ms`, `--store-fail-from-s` and
    /// `--store-fail-for-s` (counted from the start of streaming) matter here
    #[command(flatten)]
    routes: RouteArgs,
    /// Address of the downstream simulator run in this process (the server's S3 endpoint)
    #[arg(long, default_value = "127.0.0.1:18766", value_name = "ADDR:PORT")]
    downstream_listen: SocketAddr,
    /// Goal: largest pending bytes after the drain (the backlog is gone)
    #[arg(long, default_value_t = 0.0, value_name = "BYTES")]
    goal_pending_bytes: f64,
}

/// Whether the backlog is gone: the log drained within the timeout (`after_drain`) with at most
/// `tolerance` bytes pending.
pub fn recovered(after_drain: Option<&Lag>, tolerance: f64) -> bool {
    after_drain.is_some_and(|lag| lag.pending_bytes <= tolerance)
}

/// Seconds from `from_s` until the first reading at or after it with `value ≤ level`
/// (`readings` as `(s, value)` in time order); `None` if none.
pub fn time_to_fall(readings: &[(f64, f64)], from_s: f64, level: f64) -> Option<f64> {
    readings
        .iter()
        .find(|&&(at, value)| at >= from_s && value <= level)
        .map(|&(at, _)| at - from_s)
}

/// The changes of a gauge: `(s, new value)` for every reading that differs from the one
/// before, the first reading included.
pub fn transitions(readings: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut changes: Vec<(f64, f64)> = Vec::new();
    for &(at, value) in readings {
        if changes.last().is_none_or(|&(_, last)| last != value) {
            changes.push((at, value));
        }
    }
    changes
}

pub async fn run(args: Args) -> Result<(), String> {
    let load = &args.load;
    let Some(fail_from_s) = args.routes.store_fail_from_s else {
        return Err("--store-fail-from-s is required (the start of the outage)".to_owned());
    };
    let fail_to_s = fail_from_s + args.routes.store_fail_for_s;
    let simulator = downstream::start(args.downstream_listen, args.routes.clone()).await?;
    let clock = Arc::clone(&simulator);
    let m = run_load(load, UID_PREFIX, Some(args.downstream_listen), move || {
        clock.restart_clock()
    })
    .await?;
    let store = simulator.route(Route::Store);

    let seconds = |at: Instant| {
        if at >= m.start {
            (at - m.start).as_secs_f64()
        } else {
            -(m.start - at).as_secs_f64()
        }
    };
    let series = |f: fn(&Lag) -> f64| -> Vec<(f64, f64)> {
        m.lag_samples
            .iter()
            .map(|(at, lag)| (seconds(*at), f(lag)))
            .collect()
    };
    let pending = series(|l| l.pending_bytes);
    let max_in = |from: f64, to: f64| {
        stats::max(
            pending
                .iter()
                .filter(|&&(at, _)| at >= from && at < to)
                .map(|&(_, v)| v),
        )
    };
    let streaming_s = load.seconds as f64;
    let before_max = max_in(load.warmup_s.min(fail_from_s as u64) as f64, fail_from_s);
    let during_max = max_in(fail_from_s, fail_to_s);
    let pending_at = |s: f64| {
        pending
            .iter()
            .rev()
            .find(|&&(at, _)| at <= s)
            .map(|&(_, v)| v)
    };
    let at_recovery = pending_at(fail_to_s);
    // Back to the level before the outage (10 % or 1 MB of slack, whichever is larger).
    let level = before_max.map(|b| (b * 1.1).max(b + BYTES_PER_MB));
    let recovery_s = level.and_then(|level| time_to_fall(&pending, fail_to_s, level));
    let healthy = transitions(&series(|l| l.store_healthy));
    let first = m.first.as_ref().map(Lag::of).unwrap_or_default();
    let last = m.lag_samples.last().map(|&(_, l)| l).unwrap_or(first);
    let delta = |f: fn(&Lag) -> f64| f(&last) - f(&first);
    let all: Vec<Lag> = m.lag_samples.iter().map(|&(_, l)| l).collect();
    let max_of = |f: fn(&Lag) -> f64| stats::max(all.iter().map(f));

    let rss_flat = m.rss_slope().map(|s| s < load.goal_rss_slope_mb_per_min);
    let no_loss = m.no_loss();
    // Not judged without pusher's /metrics (a peer): the backlog cannot be read.
    let recovered = m
        .first
        .as_ref()
        .map(|_| recovered(m.after_drain.as_ref(), args.goal_pending_bytes));
    let mb =
        |bytes: Option<f64>| bytes.map_or("n/a".to_owned(), |b| format!("{:.1}", b / BYTES_PER_MB));

    let human = format!(
        "{}\n\
         \x20 store down {fail_from_s}..{fail_to_s} s: {} puts answered 503 ({} 500s, {} stored); \
         store healthy transitions {}\n\
         \x20 pending MB: max {} before, {} during, {} at recovery, {} max over the run; back to \
         the level before {} after recovery, {} MB at the end of streaming; drain {} in {:.1}s\n\
         \x20 uploader: {} retries, {} failed attempts; backpressure {:.1} session-s, spill full \
         seen {}\n\
         \x20 {}",
        m.summary(UID_PREFIX, load),
        store.unavailable,
        store.failed,
        store.ok,
        healthy
            .iter()
            .map(|(at, v)| format!("{v}@{at:.0}s"))
            .collect::<Vec<_>>()
            .join(" "),
        mb(before_max),
        mb(during_max),
        mb(at_recovery),
        mb(max_of(|l| l.pending_bytes)),
        recovery_s.map_or("never while streaming".to_owned(), |s| format!("{s:.0}s")),
        mb(pending_at(streaming_s)),
        if m.after_drain.is_some() {
            "complete"
        } else {
            "NOT complete"
        },
        m.drain_s(),
        delta(|l| l.retries),
        delta(|l| l.failed_attempts),
        delta(|l| l.backpressure_s),
        all.iter().any(|l| l.full > 0.0),
        m.sink_summary(),
    );
    let outage_json = json!({
        "fail_from_s": fail_from_s,
        "fail_for_s": args.routes.store_fail_for_s,
        "store_delay_ms": args.routes.store_delay_ms,
        "puts_unavailable": store.unavailable,
        "puts_failed": store.failed,
        "puts_ok": store.ok,
        "puts_abandoned": store.abandoned,
        "store_healthy_transitions": healthy,
    });
    let lag_json = json!({
        "samples": m.lag_samples.len(),
        "pending_bytes_max_before": before_max,
        "pending_bytes_max_during": during_max,
        "pending_bytes_at_recovery": at_recovery,
        "pending_bytes_max": max_of(|l| l.pending_bytes),
        "pending_bytes_at_end_of_streaming": pending_at(streaming_s),
        "recovery_s": recovery_s.map(|s| round(s, 1)),
        "oldest_pending_age_s_max": max_of(|l| l.oldest_age_s),
        "pending_batches_max": max_of(|l| l.pending_batches),
        "upload_retries": delta(|l| l.retries),
        "upload_failed_attempts": delta(|l| l.failed_attempts),
        "backpressure_session_s": round(delta(|l| l.backpressure_s), 2),
        "spill_full_seen": all.iter().any(|l| l.full > 0.0),
        "drained": m.after_drain.is_some(),
        "pending_bytes_after_drain": m.after_drain.map(|l| l.pending_bytes),
        "drain_s": round(m.drain_s(), 1),
        "uploads": m.after_drain.map(|l| l.uploaded - first.uploaded),
    });
    let goals_json = json!({
        "rss_slope_mb_per_min_max": load.goal_rss_slope_mb_per_min,
        "pending_bytes_max": args.goal_pending_bytes,
        "rss_flat": rss_flat,
        "no_loss": no_loss,
        "recovered": recovered,
    });
    let extra = Map::from_iter([("outage".to_owned(), outage_json)]);
    m.print_result("outage", load, lag_json, goals_json, extra, &human)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovered_when_drained_with_nothing_pending() {
        let drained = Lag::default();
        assert!(recovered(Some(&drained), 0.0));
        let left = Lag {
            pending_bytes: 2e6,
            ..Lag::default()
        };
        assert!(!recovered(Some(&left), 0.0));
        assert!(recovered(Some(&left), 2e6));
        assert!(!recovered(None, f64::MAX));
    }

    #[test]
    fn the_fall_is_timed_from_the_recovery() {
        let pending = [
            (0.0, 1.0),
            (30.0, 1.0),
            (60.0, 9.0),
            (90.0, 12.0),
            (100.0, 5.0),
            (110.0, 1.0),
            (120.0, 0.5),
        ];
        assert_eq!(time_to_fall(&pending, 90.0, 1.0), Some(20.0));
        assert_eq!(time_to_fall(&pending, 90.0, 5.0), Some(10.0));
        assert_eq!(time_to_fall(&pending, 90.0, 0.1), None);
        // Readings before the recovery do not count.
        assert_eq!(time_to_fall(&pending, 40.0, 1.0), Some(70.0));
    }

    #[test]
    fn transitions_keep_only_the_changes() {
        let healthy = [
            (0.0, 1.0),
            (2.0, 1.0),
            (31.0, 0.0),
            (33.0, 0.0),
            (92.0, 1.0),
            (94.0, 1.0),
        ];
        assert_eq!(
            transitions(&healthy),
            [(0.0, 1.0), (31.0, 0.0), (92.0, 1.0)]
        );
        assert!(transitions(&[]).is_empty());
    }
}
