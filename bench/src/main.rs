//! `pusher-bench`: load scenarios against a running pusher server, measured from the outside
//! (the server's /proc entry and its /metrics), and a simulator of the services pusher calls
//! (processor, webhooks, hooks, a slow S3 endpoint). See bench/README.md.

mod compare;
mod disk;
mod downstream;
mod frames;
mod http;
mod load;
mod proc_stats;
mod prometheus;
mod report;
mod sampler;
mod stats;
mod svg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Load tool for pusher. Each scenario prints one JSON line (stdout) and a summary (stderr).
#[derive(Debug, Parser)]
#[command(name = "pusher-bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open many idle sessions (103, then heartbeats) from several client processes, step by
    /// step, and measure server RSS per session at each step.
    Idle(load::idle::Args),
    /// One client process of `idle` (started by it; commands on stdin, counts on stdout).
    #[command(hide = true)]
    IdleClient(load::idle::ClientArgs),
    /// Stream 101 audio as fast as possible and measure throughput and server CPU per byte.
    Ingest(load::ingest::Args),
    /// The ingest load, measuring the spill log's append rate from /metrics (beside the disk's).
    Log(load::log::Args),
    /// Many sessions at real-time rate: server RSS slope, upload lag, bytes stored vs sent.
    Stream(load::stream::Args),
    /// The stream load with the store down for a while: RSS flat, the backlog visible and
    /// drained, no byte lost.
    Outage(load::outage::Args),
    /// The seed's chaos workload (104s to a slow processor, fast audio to slow apps and a slow
    /// store): server RSS slope and peak, every 104 answered, every audio byte stored.
    Chaos(load::chaos::Args),
    /// Many sessions sending transcripts to a global hook: delivery latency percentiles.
    Latency(load::latency::Args),
    /// A reconnect storm: many sessions upgraded at once from several client processes;
    /// sessions refused, time to all open, upgrade latency, /health latency, server RSS.
    Storm(load::storm::Args),
    /// One client process of `storm` (started by it; commands on stdin, counts on stdout).
    #[command(hide = true)]
    StormClient(load::storm::ClientArgs),
    /// Real-time sessions as the listen service streams them, with a mix of features, ramped
    /// until a bound breaks: sustained sessions per core, with CPU, RSS, disk and egress.
    Capacity(load::capacity::Args),
    /// One client process of `capacity` (started by it; commands on stdin, counts on stdout).
    #[command(hide = true)]
    CapacityClient(load::capacity::ClientArgs),
    /// Print the per-user settings file (TOML) that gives the server `capacity`'s mix.
    CapacitySettings(load::capacity::SettingsArgs),
    /// Serve as the services pusher calls (processor, webhooks, hooks, speaker samples, a slow
    /// S3 endpoint), with a delay and failure share per route, counting what each receives.
    #[command(alias = "s3-sink")]
    Downstream(downstream::Args),
    /// Read result files (`--result-file`), print each goal, and fail (exit 1) when a goal was
    /// not met or a file is malformed (`BENCH_ASSERT=1` in bench/run.sh).
    Check(CheckArgs),
    /// Put result files of one scenario side by side (pusher and a peer, io_uring and epoll):
    /// one markdown table, a column per file, and with --svg one RSS plot, a line per file.
    Compare(compare::CompareArgs),
    /// One markdown table of result files (an invocation of bench/run.sh): scenario, target,
    /// headline figures, goals met.
    Summary(compare::SummaryArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Result files
    #[arg(required = true, value_name = "FILE")]
    files: Vec<std::path::PathBuf>,
}

/// Prints every goal of the result files; `Err` names the goals not met and the bad files.
/// A goal not judged (`met: null`, e.g. no memory budget known) is printed but does not fail.
fn check(args: &CheckArgs) -> Result<(), String> {
    let mut failed = Vec::new();
    for path in &args.files {
        let outcomes = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
            .and_then(|file: serde_json::Value| report::goal_outcomes(&file));
        match outcomes {
            Ok(outcomes) => {
                for (name, met) in outcomes {
                    let verdict = match met {
                        Some(true) => "met",
                        Some(false) => "NOT MET",
                        None => "not judged",
                    };
                    eprintln!("{}: {name}: {verdict}", path.display());
                    if met == Some(false) {
                        failed.push(format!("{}: {name}", path.display()));
                    }
                }
            }
            Err(e) => failed.push(format!("{}: {e}", path.display())),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("goals not met: {}", failed.join("; ")))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let offline = match &cli.scenario {
        Scenario::Check(args) => Some(check(args)),
        Scenario::Compare(args) => Some(compare::compare(args)),
        Scenario::Summary(args) => Some(compare::summary(args)),
        Scenario::CapacitySettings(args) => Some(load::capacity::write_settings(args)),
        _ => None,
    };
    if let Some(outcome) = offline {
        return match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("pusher-bench: {message}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = load::raise_open_files_limit() {
        eprintln!("pusher-bench: cannot raise RLIMIT_NOFILE: {e}");
    }
    // One client thread: the load generator must leave the server's cores alone as far as
    // possible, and every scenario is I/O-bound on the client side.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pusher-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.scenario {
            Scenario::Idle(args) => load::idle::run(args).await,
            Scenario::IdleClient(args) => load::idle::run_client(args).await,
            Scenario::Ingest(args) => load::ingest::run(args).await,
            Scenario::Log(args) => load::log::run(args).await,
            Scenario::Stream(args) => load::stream::run(args).await,
            Scenario::Chaos(args) => load::chaos::run(args).await,
            Scenario::Outage(args) => load::outage::run(args).await,
            Scenario::Latency(args) => load::latency::run(args).await,
            Scenario::Storm(args) => load::storm::run(args).await,
            Scenario::StormClient(args) => load::storm::run_client(args).await,
            Scenario::Capacity(args) => load::capacity::run(args).await,
            Scenario::CapacityClient(args) => load::capacity::run_client(args).await,
            Scenario::Downstream(args) => downstream::run(args).await,
            Scenario::Check(_)
            | Scenario::Compare(_)
            | Scenario::Summary(_)
            | Scenario::CapacitySettings(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pusher-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
