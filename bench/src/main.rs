//! `pusher-bench`: load scenarios against a running pusher server, measured from the outside
//! (the server's /proc entry and its /metrics), and a simulator of the services pusher calls
//! (processor, webhooks, hooks, a slow S3 endpoint). See bench/README.md.

mod disk;
mod downstream;
mod frames;
mod http;
mod load;
mod proc_stats;
mod prometheus;
mod sampler;
mod stats;

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
    /// Open many idle sessions (103, then heartbeats) and measure server RSS per session.
    Idle(load::idle::Args),
    /// Stream 101 audio as fast as possible and measure throughput and server CPU per byte.
    Ingest(load::ingest::Args),
    /// The ingest load, measuring the spill log's append rate from /metrics (beside the disk's).
    Log(load::log::Args),
    /// Many sessions at real-time rate: server RSS slope, upload lag, bytes stored vs sent.
    Stream(load::stream::Args),
    /// The seed's chaos workload (104s to a slow processor, fast audio to slow apps and a slow
    /// store): server RSS slope and peak, every 104 answered, every audio byte stored.
    Chaos(load::chaos::Args),
    /// Many sessions sending transcripts to a global hook: delivery latency percentiles.
    Latency(load::latency::Args),
    /// Serve as the services pusher calls (processor, webhooks, hooks, speaker samples, a slow
    /// S3 endpoint), with a delay and failure share per route, counting what each receives.
    #[command(alias = "s3-sink")]
    Downstream(downstream::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            Scenario::Ingest(args) => load::ingest::run(args).await,
            Scenario::Log(args) => load::log::run(args).await,
            Scenario::Stream(args) => load::stream::run(args).await,
            Scenario::Chaos(args) => load::chaos::run(args).await,
            Scenario::Latency(args) => load::latency::run(args).await,
            Scenario::Downstream(args) => downstream::run(args).await,
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
