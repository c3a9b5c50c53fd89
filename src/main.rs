//! The `pusher` binary: `pusher serve` runs the server, `pusher budget` prints the memory budget,
//! `pusher spill inspect` reports what the spill log holds, `pusher spill drain` uploads an
//! orphaned one.

use std::io::IsTerminal;
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
    #[command(allow_negative_numbers = true)]
    Serve(ConfigArgs),
    /// Print the worst-case memory budget computed from the config, then exit.
    #[command(allow_negative_numbers = true)]
    Budget(ConfigArgs),
    /// The durable audio log under <data_dir>/spill.
    Spill {
        #[command(subcommand)]
        command: SpillCommand,
    },
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start
enum SpillCommand {
    /// List segments and batches (open, closed, damaged, uploaded and awaiting deletion),
    /// pending bytes and damage, without modifying anything.
    Inspect(InspectArgs),
    /// Upload everything in the log of --data-dir (a volume whose server is gone, or a
    /// Kubernetes Job) and empty it; exit 0 once empty, 1 if batches are left after
    /// --upload-drain-ms. Refused while a server holds the data directory.
    #[command(allow_negative_numbers = true)]
    Drain(ConfigArgs),
}

/// What to do once the config is loaded.
enum Mode {
    Serve,
    Budget,
    SpillInspect,
    SpillDrain,
}

/// `pusher spill inspect` reads only where the log is, and how many batches it may hold.
#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// TOML config file (its data_dir and spill_batches_max are used)
    #[arg(long, env = "PUSHER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory the server writes to; the log is <DIR>/spill [default: ./data]
    #[arg(long, env = "PUSHER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// TOML config file; keys are the option names with '_' (e.g. message_bytes_max)
    #[arg(long, env = "PUSHER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> ExitCode {
    pusher::memory::configure_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    let (args, mode) = match cli.command {
        Command::Serve(args) => (args, Mode::Serve),
        Command::Budget(args) => (args, Mode::Budget),
        Command::Spill {
            command: SpillCommand::Inspect(args),
        } => {
            let overrides = Overrides {
                data_dir: args.data_dir,
                ..Overrides::default()
            };
            let args = ConfigArgs {
                config: args.config,
                overrides,
            };
            (args, Mode::SpillInspect)
        }
        Command::Spill {
            command: SpillCommand::Drain(args),
        } => (args, Mode::SpillDrain),
    };
    let config = match Config::load(args.config.as_deref(), &args.overrides) {
        Ok(config) => config,
        Err(message) => {
            let format = args.overrides.log_format.unwrap_or(LogFormat::Text);
            return fatal(format, &message, 2);
        }
    };
    match mode {
        Mode::Serve => {}
        Mode::Budget => {
            println!("{}", pusher::app::plan(&config).budget);
            return ExitCode::SUCCESS;
        }
        Mode::SpillInspect => {
            if let Err(message) = require_spill_log(&config, "inspect") {
                return fatal(config.log_format, &message, 2);
            }
            return spill_inspect(&config);
        }
        Mode::SpillDrain => {
            if let Err(message) = require_spill_log(&config, "drain") {
                return fatal(config.log_format, &message, 2);
            }
            init_logging(config.log_format);
            return match pusher::audio_log::drain::drain_orphaned(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => fatal(config.log_format, &format!("spill drain: {message}"), 1),
            };
        }
    }
    let format = config.log_format;
    init_logging(format);
    match pusher::app::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fatal(format, error.message(), error.exit_code()),
    }
}

/// A command line clap refused (exit 2; `--help` and `--version` exit 0). When the bad value
/// came from a `PUSHER_*` variable rather than the flag, the message names the variable.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue};
    let code = if error.use_stderr() { 2 } else { 0 };
    let context = |kind| match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text.clone()),
        _ => None,
    };
    let arg = context(ContextKind::InvalidArg);
    let variable = arg.as_deref().and_then(variable_of);
    match (variable, arg) {
        (Some(name), Some(arg)) => {
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            let why = match (
                std::error::Error::source(&error),
                error.get(ContextKind::ValidValue),
            ) {
                (Some(source), _) => format!(": {source}"),
                (None, Some(ContextValue::Strings(valid))) => {
                    format!(": one of {}", valid.join(", "))
                }
                _ => String::new(),
            };
            eprintln!("pusher: invalid value {value:?} in the variable {name} (for {arg}){why}");
        }
        _ => {
            let _ = error.print();
        }
    }
    ExitCode::from(code)
}

/// The `PUSHER_*` variable that supplied the flag in `arg` (`--workers <N>` → `PUSHER_WORKERS`),
/// or `None` when the flag is on the command line (which wins over the variable) or unset.
fn variable_of(arg: &str) -> Option<String> {
    let flag = arg.split(' ').next()?;
    let long = flag.strip_prefix("--")?;
    let on_command_line = std::env::args().skip(1).any(|a| {
        a == flag
            || a.strip_prefix(flag)
                .is_some_and(|rest| rest.starts_with('='))
    });
    if on_command_line {
        return None;
    }
    let command = <Cli as clap::CommandFactory>::command();
    let name = command
        .get_subcommands()
        .flat_map(|c| std::iter::once(c).chain(c.get_subcommands()))
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    std::env::var_os(&name).map(|_| name)
}

/// A start error, printed once on stderr in the log format (a JSON line with Cloud Logging's
/// `severity` for `json`), and the exit code: 2 for usage and configuration, 1 for run time.
fn fatal(format: LogFormat, message: &str, code: u8) -> ExitCode {
    let line = format!("pusher: {message}");
    match format {
        LogFormat::Text => eprintln!("{line}"),
        LogFormat::Json => {
            eprintln!(
                "{}",
                serde_json::json!({ "severity": "CRITICAL", "message": line })
            );
        }
    }
    ExitCode::from(code)
}

/// `spill inspect` and `spill drain` work on an existing log: a data directory without one is a
/// mistyped path or the wrong volume (exit 2), not an empty log to report or drain.
fn require_spill_log(config: &Config, what: &str) -> Result<(), String> {
    let dir = pusher::spill::scan::spill_dir(&config.data_dir);
    if dir.is_dir() {
        return Ok(());
    }
    Err(format!(
        "spill {what}: no spill log at {} (the data directory is {}; set it with --data-dir or \
         PUSHER_DATA_DIR): nothing to {what}",
        dir.display(),
        config.data_dir.display()
    ))
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

/// `info`, except object_store's retry chatter: it logs each retry at INFO (several lines per
/// attempt during a store outage); pusher's uploader logs the attempts that matter at WARN.
const LOG_FILTER_DEFAULT: &str = "info,object_store=warn";

/// Logs go to stdout, filtered by `RUST_LOG` (default [`LOG_FILTER_DEFAULT`]). `json`: one object per line with
/// Cloud Logging's `severity` and `message` at the top level (tracing-stackdriver); `text`:
/// human lines, coloured only on a terminal (and never with `NO_COLOR` set).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LOG_FILTER_DEFAULT));
    match format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_stackdriver::layer())
            .init(),
        LogFormat::Text => {
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(colour)
                .init();
        }
    }
}
