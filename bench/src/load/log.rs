//! `log`: the spill log's ingest rate with group commit on, beside the disk's own rate.
//!
//! Runs the `ingest` load (every session sends a 103 first, so its audio is private-cloud audio
//! and goes to the spill log) and reads pusher's `/metrics` before, during (every
//! `--sample-ms`) and after: the log's rate is the growth of `pusher_spill_appended_bytes_total`
//! (records with their headers, as written to disk) over the streaming window. Every close is
//! acknowledged only once the session's audio is durable, so the window ends with all of it
//! synced.
//!
//! With `--disk-probe-dir` (a directory on the filesystem of the server's data directory) the
//! tool measures the disk itself with `dd`: a sequential write then one fdatasync (`bs=1M
//! conv=fdatasync`) before and after the load, whose mean is the reference of the ratio (a
//! virtual disk's rate moves from minute to minute; both are reported), and a write with every
//! block synced (`bs=256k oflag=dsync`) before the load, for comparison.
//!
//! The server should have a store that takes no uploads cheaply (run.sh: an S3 endpoint on a
//! closed port), so that the uploader neither competes for the CPU nor frees log space, and a
//! `spill_bytes_max` above what the run writes: `spill_full_at_end` says if the budget was hit.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::ingest;
use super::{print_result, round};
use crate::disk;
use crate::proc_stats::Process;
use crate::prometheus::{self, Scrape};
use crate::sampler::Sampler;
use crate::stats;

/// The spill writer thread's name in the server.
const WRITER_THREAD: &str = "pusher-spill";
const APPENDED_BYTES: &str = "pusher_spill_appended_bytes_total";
/// The ratio to the disk's `conv=fdatasync` rate the issue asks for.
const GOAL_RATIO: f64 = 0.8;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    ingest: ingest::Args,
    /// Measure the disk with dd in this directory (on the filesystem of the server's data
    /// directory): `bs=1M conv=fdatasync` before and after the load, `bs=256k oflag=dsync` before
    #[arg(long, value_name = "DIR")]
    disk_probe_dir: Option<PathBuf>,
    /// MiB each `conv=fdatasync` probe writes
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    disk_probe_mib: u64,
    /// MiB the `oflag=dsync` probe writes; 0: no such probe
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    disk_probe_dsync_mib: u64,
    /// Period of the /metrics samples taken while streaming (per-interval log rates)
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    sample_ms: u64,
}

/// Counters of the spill log at one moment.
#[derive(Debug, Clone, Copy)]
struct Spill {
    appended_bytes: f64,
    appended_records: f64,
    syncs: f64,
    sync_s: f64,
    backpressure_s: f64,
    io_errors: f64,
}

impl Spill {
    fn of(scrape: &Scrape) -> Spill {
        Spill {
            appended_bytes: scrape.value(APPENDED_BYTES),
            appended_records: scrape.value("pusher_spill_appended_records_total"),
            syncs: scrape.value("pusher_spill_sync_seconds_count"),
            sync_s: scrape.value("pusher_spill_sync_seconds_sum"),
            backpressure_s: scrape.value("pusher_spill_backpressure_seconds_total"),
            io_errors: scrape.value("pusher_spill_io_errors_total"),
        }
    }

    fn minus(&self, before: &Spill) -> Spill {
        Spill {
            appended_bytes: self.appended_bytes - before.appended_bytes,
            appended_records: self.appended_records - before.appended_records,
            syncs: self.syncs - before.syncs,
            sync_s: self.sync_s - before.sync_s,
            backpressure_s: self.backpressure_s - before.backpressure_s,
            io_errors: self.io_errors - before.io_errors,
        }
    }
}

/// The `conv=fdatasync` probe.
fn fdatasync_probe(args: &Args) -> Vec<String> {
    vec![
        "bs=1M".to_owned(),
        format!("count={}", args.disk_probe_mib),
        "conv=fdatasync".to_owned(),
    ]
}

/// The `oflag=dsync` probe.
fn dsync_probe(args: &Args) -> Vec<String> {
    vec![
        "bs=256k".to_owned(),
        format!("count={}", args.disk_probe_dsync_mib * 4),
        "oflag=dsync".to_owned(),
    ]
}

pub async fn run(args: Args) -> Result<(), String> {
    // dd blocks this (only) thread; nothing else runs while it does.
    let (disk_before, dsync) = match &args.disk_probe_dir {
        Some(dir) => (
            Some(disk::dd(dir, &fdatasync_probe(&args))?),
            match args.disk_probe_dsync_mib {
                0 => None,
                _ => Some(disk::dd(dir, &dsync_probe(&args))?),
            },
        ),
        None => (None, None),
    };
    let target = &args.ingest.target;
    let server = Process::new(target.pid);
    let first = prometheus::scrape(target.addr).await?;
    if first.get(APPENDED_BYTES).is_none() {
        return Err(format!(
            "{APPENDED_BYTES} is not in the server's /metrics: not a pusher with a spill log?"
        ));
    }
    let before = Spill::of(&first);
    let (writer_threads, writer_cpu_before) = server
        .threads_named(WRITER_THREAD)
        .map_err(|e| e.to_string())?;
    let addr = target.addr;
    let sampler = Sampler::start(
        Duration::from_millis(args.sample_ms.max(10)),
        move || async move {
            prometheus::scrape(addr)
                .await
                .ok()
                .map(|scrape| scrape.value(APPENDED_BYTES))
        },
    );
    let outcome = ingest::measure(&args.ingest).await;
    let samples = sampler.finish().await;
    let outcome = outcome?;
    let last = prometheus::scrape(target.addr).await?;
    let (_, writer_cpu_after) = server
        .threads_named(WRITER_THREAD)
        .map_err(|e| e.to_string())?;

    let disk_after = match &args.disk_probe_dir {
        Some(dir) => Some(disk::dd(dir, &fdatasync_probe(&args))?),
        None => None,
    };

    let delta = Spill::of(&last).minus(&before);
    let seconds = outcome.seconds();
    let log_mb_per_s = delta.appended_bytes / 1e6 / seconds;
    let rates = interval_rates(&samples, outcome.started, outcome.ended);
    let disk_rates: Vec<f64> = [&disk_before, &disk_after]
        .into_iter()
        .flatten()
        .map(disk::DdRun::mb_per_s)
        .collect();
    let disk_mb_per_s =
        (!disk_rates.is_empty()).then(|| disk_rates.iter().sum::<f64>() / disk_rates.len() as f64);
    let ratio = disk_mb_per_s.map(|disk| log_mb_per_s / disk);
    let ratio_range = stats::max(disk_rates.iter().copied()).map(|fastest| {
        let slowest = disk_rates
            .iter()
            .copied()
            .reduce(f64::min)
            .unwrap_or(fastest);
        [
            round(log_mb_per_s / fastest, 3),
            round(log_mb_per_s / slowest, 3),
        ]
    });
    let writer_cpu_s = writer_cpu_after - writer_cpu_before;
    let mean_sync_ms = (delta.syncs > 0.0).then(|| delta.sync_s / delta.syncs * 1e3);
    let full_at_end = last.value("pusher_spill_full") > 0.0;

    let mut fields = outcome.fields(&args.ingest);
    let log = json!({
        "log_bytes_appended": delta.appended_bytes,
        "log_records_appended": delta.appended_records,
        "log_mb_per_s": round(log_mb_per_s, 1),
        "log_writer_threads": writer_threads,
        "log_mb_per_s_per_writer_thread": round(log_mb_per_s / writer_threads.max(1) as f64, 1),
        "log_interval_mb_per_s_min": rates.iter().copied().reduce(f64::min).map(|r| round(r, 1)),
        "log_interval_mb_per_s_median": stats::median(&rates).map(|r| round(r, 1)),
        "log_interval_mb_per_s_max": stats::max(rates.iter().copied()).map(|r| round(r, 1)),
        "log_intervals": rates.len(),
        "log_interval_mb_per_s": rates.iter().map(|&r| round(r, 0)).collect::<Vec<f64>>(),
        "log_syncs": delta.syncs,
        "log_syncs_per_s": round(delta.syncs / seconds, 1),
        "log_sync_ms_mean": mean_sync_ms.map(|ms| round(ms, 3)),
        "log_sync_share_of_time": round(delta.sync_s / seconds, 3),
        "log_writer_cpu_s": round(writer_cpu_s, 2),
        "log_backpressure_session_s": round(delta.backpressure_s, 1),
        "log_io_errors": delta.io_errors,
        "spill_full_at_end": full_at_end,
        "spill_live_bytes_at_end": last.value("pusher_spill_live_bytes"),
        "spill_pending_batches_at_end": last.value("pusher_spill_pending_batches"),
        "disk_probe_dir": args.disk_probe_dir.as_ref().map(|dir| dir.display().to_string()),
        "disk_fdatasync_mb_per_s_before": disk_before.as_ref().map(|r| round(r.mb_per_s(), 1)),
        "disk_fdatasync_mb_per_s_after": disk_after.as_ref().map(|r| round(r.mb_per_s(), 1)),
        "disk_fdatasync_mb_per_s": disk_mb_per_s.map(|r| round(r, 1)),
        "disk_dsync_mb_per_s": dsync.as_ref().map(|r| round(r.mb_per_s(), 1)),
        "log_to_disk_ratio": ratio.map(|r| round(r, 3)),
        "log_to_disk_ratio_range": ratio_range,
        "goal_ratio": GOAL_RATIO,
        "goal_met": ratio.map(|r| r >= GOAL_RATIO),
    });
    if let Value::Object(log) = log {
        fields.extend(log);
    }
    let disk = match (disk_mb_per_s, ratio) {
        (Some(disk), Some(ratio)) => format!(
            "; disk (dd conv=fdatasync, mean of {} runs) {disk:.1} MB/s: ratio {:.0} % (goal ≥ {:.0} %)",
            disk_rates.len(),
            ratio * 100.0,
            GOAL_RATIO * 100.0
        ),
        _ => String::new(),
    };
    let human = format!(
        "log: {:.2} GB appended in {seconds:.1}s = {log_mb_per_s:.1} MB/s by {writer_threads} writer thread(s) \
         (writer CPU {writer_cpu_s:.2}s, {:.0} syncs/s, mean sync {:.2} ms){disk}{}\n  ingest: {}",
        delta.appended_bytes / 1e9,
        delta.syncs / seconds,
        mean_sync_ms.unwrap_or(0.0),
        if full_at_end {
            "; WARNING: the log hit spill_bytes_max"
        } else {
            ""
        },
        outcome.human(),
    );
    print_result("log", &args.ingest.target, Value::Object(fields), &human)
}

/// MB/s between consecutive samples of a byte counter, for the intervals wholly inside
/// `[from, to]`.
fn interval_rates(samples: &[(Instant, f64)], from: Instant, to: Instant) -> Vec<f64> {
    stats::interval_rates(samples)
        .filter(|&(start, end, _)| start >= from && end <= to)
        .map(|(_, _, bytes_per_s)| bytes_per_s / 1e6)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_rates_cover_whole_intervals_inside_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let samples = [
            (at(0), 0.0),
            (at(1000), 0.0),
            (at(2000), 500e6),
            (at(2500), 800e6),
            (at(3500), 1_000e6),
        ];
        let rates = interval_rates(&samples, at(900), at(3000));
        assert_eq!(rates, [500.0, 600.0]);
        assert!(interval_rates(&samples, at(3000), at(3100)).is_empty());
    }

    #[test]
    fn spill_counters_come_from_the_metrics_text() {
        let scrape = Scrape::parse(
            "pusher_spill_appended_bytes_total 1000\npusher_spill_appended_records_total 10\n\
             pusher_spill_sync_seconds_count 4\npusher_spill_sync_seconds_sum 0.02\n\
             pusher_spill_backpressure_seconds_total 1.5\npusher_spill_io_errors_total 0\n",
        );
        let before = Spill::of(&Scrape::parse("pusher_spill_appended_bytes_total 400\n"));
        let delta = Spill::of(&scrape).minus(&before);
        assert_eq!(delta.appended_bytes, 600.0);
        assert_eq!(delta.appended_records, 10.0);
        assert_eq!(delta.syncs, 4.0);
        assert_eq!(delta.sync_s, 0.02);
        assert_eq!(delta.backpressure_s, 1.5);
    }
}
