//! `pusher-perf`: runs one measured case of the receive path a given number of times, for
//! callgrind to count its instructions (perf/instructions/run.sh), and records the session the
//! `session` case replays. See perf/README.md.

mod cases;
mod client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// The server's allocator, so the counts include the allocations it would make.
#[global_allocator]
static GLOBAL: pusher::memory::CountingAllocator<mimalloc::MiMalloc> =
    pusher::memory::CountingAllocator(mimalloc::MiMalloc);

#[derive(Debug, Parser)]
#[command(name = "pusher-perf", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one case `iterations` times; callgrind counts only inside its `perf_case_*` function.
    Run {
        case: Case,
        iterations: u32,
        /// The recorded session the `session` case replays.
        #[arg(long, default_value = "perf/instructions/session.bin")]
        session: PathBuf,
    },
    /// Write the client session the `session` case replays (deterministic).
    Record {
        #[arg(default_value = "perf/instructions/session.bin")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Case {
    /// One masked frame carrying a 101 with 16,000 bytes of PCM: unmask, then protocol::decode.
    Audio,
    /// One masked frame carrying a ~1 KB 102 (transcript segments): unmask, then protocol::decode.
    Transcript,
    /// The recorded session through Decoder, protocol::decode and Session.
    Session,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run {
            case,
            iterations,
            session,
        } => run(case, iterations, &session),
        Command::Record { out } => std::fs::write(&out, client::session())
            .map_err(|e| format!("writing {}: {e}", out.display())),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pusher-perf: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(case: Case, iterations: u32, session_path: &PathBuf) -> Result<(), String> {
    match case {
        Case::Audio => cases::repeat_frame_decode(
            &client::audio_frame(),
            iterations,
            cases::perf_case_decode_audio_frame,
        ),
        Case::Transcript => cases::repeat_frame_decode(
            &client::transcript_frame(),
            iterations,
            cases::perf_case_decode_transcript_frame,
        ),
        Case::Session => {
            let session = std::fs::read(session_path)
                .map_err(|e| format!("reading {}: {e}", session_path.display()))?;
            cases::repeat_session_replay(&session, iterations);
        }
    }
    Ok(())
}
