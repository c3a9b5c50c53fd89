//! The `pusher` binary: `pusher serve` runs the server, `pusher budget` prints the memory budget,
//! `pusher spill inspect` reports what the spill log holds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pusher::config::{Config, LogFormat, Overrides};

#[global_allocator]
static GLOBAL: pusher::memory::CountingAllocator<mimalloc::MiMalloc> =
    pusher::memory::CountingAllocator(mimalloc::MiMalloc);

/// WebSocket fan-out server for the Omi transcription service: thread-per-core, io_uring,
/// bounded memory. Every option can be set in the config file, by a PUSHER_* variable or by a
/// flag (flag > variable > file > default).
#[derive(Debug, Parser)]
#[command(name = "pusher", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ConfigArgs),
    /// Print the worst-case memory budget computed from the config, then exit.
    Budget(ConfigArgs),
    /// The durable audio log under <data_dir>/spill.
    Spill {
        #[command(subcommand)]
        command: SpillCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SpillCommand {
    /// List segments, batches (open/closed), pending bytes and tail damage, without modifying
    /// anything.
    Inspect(ConfigArgs),
}

/// What to do once the config is loaded.
enum Mode {
    Serve,
    Budget,
    SpillInspect,
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// TOML config file; keys are the option names with '_' (e.g. max_message_bytes)
    #[arg(long, env = "PUSHER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> ExitCode {
    pusher::memory::configure_allocator();
    let cli = Cli::parse();
    let (args, mode) = match cli.command {
        Command::Serve(args) => (args, Mode::Serve),
        Command::Budget(args) => (args, Mode::Budget),
        Command::Spill {
            command: SpillCommand::Inspect(args),
        } => (args, Mode::SpillInspect),
    };
    let config = match Config::load(args.config.as_deref(), &args.overrides) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("pusher: {message}");
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Serve => {}
        Mode::Budget => {
            println!("{}", pusher::server::plan(&config).budget);
            return ExitCode::SUCCESS;
        }
        Mode::SpillInspect => return spill_inspect(&config),
    }
    init_logging(config.log_format);
    match pusher::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("pusher: {message}");
            ExitCode::from(1)
        }
    }
}

fn spill_inspect(config: &Config) -> ExitCode {
    let dir = pusher::spill::scan::spill_dir(&config.data_dir);
    let mut out = std::io::stdout().lock();
    match pusher::spill::inspect::inspect(&dir, config.spill_batches_max, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pusher: spill log {}: {error}", dir.display());
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
