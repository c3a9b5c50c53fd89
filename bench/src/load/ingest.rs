//! `ingest`: audio throughput and the server CPU it costs.
//!
//! Opens C sessions (each sends a 103 first), then every session writes 101 audio frames as
//! fast as the server takes them for the given time. The frames are encoded once and written
//! in large batches so that the client spends its CPU in the kernel, not in encoding. Each
//! session then sends a Close and waits for the server's: the server has then read and handled
//! every byte sent, and its CPU time is measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value, json};
use tokio::task::JoinSet;

use super::conn::Conn;
use super::{Failures, Session, Target, open_sessions, print_result, round, spawn_progress};
use crate::frames;
use crate::proc_stats::Process;

/// How long a session waits for the server's Close (and end of stream) after sending its own.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Time between progress lines while streaming.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Sessions streaming audio at once
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Seconds of streaming
    #[arg(long, default_value_t = 20, value_name = "S")]
    pub seconds: u64,
    /// PCM bytes per 101 message (16000 = 0.5 s of 16 kHz audio); the message adds 12 bytes
    #[arg(long, default_value_t = 16_000, value_name = "BYTES")]
    pub frame_bytes: usize,
    /// Bytes handed to one write: as many whole frames as fit (at least one)
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub write_bytes: usize,
}

/// The wire bytes of one batch write and what they hold.
struct Batch {
    bytes: Vec<u8>,
    frames: u64,
}

impl Batch {
    /// As many copies of one masked 101 frame as fit in `write_bytes` (at least one).
    fn new(pcm_bytes: usize, write_bytes: usize) -> Batch {
        let timestamp_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let frame = frames::binary_frame(&frames::audio_message(timestamp_s, pcm_bytes));
        let count = (write_bytes / frame.len()).max(1);
        Batch {
            bytes: frame.repeat(count),
            frames: count as u64,
        }
    }
}

/// What one session did.
#[derive(Default)]
struct Sent {
    bytes: u64,
    frames: u64,
    /// Why the session stopped early or did not close cleanly.
    error: Option<String>,
}

/// What one ingest run measured.
pub struct Outcome {
    /// Sessions that streamed.
    pub open: usize,
    pub failures: Failures,
    pub stream_errors: Failures,
    /// Wire bytes and 101 frames sent.
    pub bytes: u64,
    pub frames: u64,
    /// When the sessions started streaming, and when the last one's close was answered (the
    /// server has handled every byte by then).
    pub started: Instant,
    pub ended: Instant,
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
    pub server_rss_after_kib: u64,
}

impl Outcome {
    /// Seconds from the start of streaming to the last close.
    pub fn seconds(&self) -> f64 {
        (self.ended - self.started).as_secs_f64()
    }

    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds()
    }

    /// The result fields of the `ingest` scenario.
    pub fn fields(&self, args: &Args) -> Map<String, Value> {
        let seconds = self.seconds();
        let fields = json!({
            "connections_requested": args.connections,
            "connections": self.open,
            "frame_pcm_bytes": args.frame_bytes,
            "frame_wire_bytes": frames::frame_bytes(args.frame_bytes + 12),
            "bytes_sent": self.bytes,
            "frames_sent": self.frames,
            "seconds": round(seconds, 3),
            "mb_per_s": round(self.mb_per_s(), 1),
            "frames_per_s": round(self.frames as f64 / seconds, 0),
            "server_cpu_s": round(self.server_cpu_s, 2),
            "gb_per_server_cpu_s": round(self.bytes as f64 / 1e9 / self.server_cpu_s, 3),
            "frames_per_server_cpu_s": round(self.frames as f64 / self.server_cpu_s, 0),
            "client_cpu_s": round(self.client_cpu_s, 2),
            "server_rss_after_kib": self.server_rss_after_kib,
            "failures": self.failures.total(),
            "failure_reasons": self.failures.to_json(),
            "stream_errors": self.stream_errors.total(),
            "stream_error_reasons": self.stream_errors.to_json(),
        });
        match fields {
            Value::Object(fields) => fields,
            _ => unreachable!("json! of an object literal"),
        }
    }

    /// The one-line human summary.
    pub fn human(&self) -> String {
        let seconds = self.seconds();
        format!(
            "{} sessions, {:.1} MB in {seconds:.1}s = {:.1} MB/s, {:.0} frames/s; \
             server CPU {:.2}s = {:.2} GB and {:.0} frames per CPU-second; client CPU {:.2}s; \
             {} failed to open, {} stream errors",
            self.open,
            self.bytes as f64 / 1e6,
            self.mb_per_s(),
            self.frames as f64 / seconds,
            self.server_cpu_s,
            self.bytes as f64 / 1e9 / self.server_cpu_s,
            self.frames as f64 / self.server_cpu_s,
            self.client_cpu_s,
            self.failures.total(),
            self.stream_errors.total(),
        )
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    let outcome = measure(&args).await?;
    print_result(
        "ingest",
        &args.target,
        Value::Object(outcome.fields(&args)),
        &format!("ingest: {}", outcome.human()),
    )
}

/// Opens the sessions, streams for `--seconds`, closes them and measures.
pub async fn measure(args: &Args) -> Result<Outcome, String> {
    if args.connections == 0 || args.seconds == 0 {
        return Err("--connections and --seconds must be at least 1".to_owned());
    }
    let server = Process::new(args.target.pid);
    let client = Process::current();
    let opened = open_sessions(&args.target, "ingest", args.connections, args.connections).await;
    let failures = opened.failures;
    if opened.sessions.is_empty() {
        return Err(format!(
            "no session could be opened: {}",
            failures.to_json()
        ));
    }
    let open = opened.sessions.len();
    let batch = Arc::new(Batch::new(args.frame_bytes, args.write_bytes));
    eprintln!(
        "ingest: {open} sessions streaming {} frames of {} B per write for {}s",
        batch.frames,
        frames::frame_bytes(args.frame_bytes + 12),
        args.seconds
    );

    let server_cpu_before = server.cpu_s().map_err(|e| e.to_string())?;
    let client_cpu_before = client.cpu_s().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let progress = {
        let bytes_sent = Arc::clone(&bytes_sent);
        spawn_progress(started, deadline, PROGRESS_EVERY, move || {
            let cpu_s = server
                .cpu_s()
                .map_or(f64::NAN, |now| now - server_cpu_before);
            format!(
                "{:.0} MB sent; server CPU {cpu_s:.1}s",
                bytes_sent.load(Ordering::Relaxed) as f64 / 1e6
            )
        })
    };
    let mut streams = JoinSet::new();
    for session in opened.sessions {
        streams.spawn(stream(
            session,
            Arc::clone(&batch),
            deadline,
            Arc::clone(&bytes_sent),
        ));
    }
    let mut total = Sent::default();
    let mut stream_errors = Failures::default();
    while let Some(joined) = streams.join_next().await {
        let sent = joined.map_err(|e| format!("streaming task: {e}"))?;
        total.bytes += sent.bytes;
        total.frames += sent.frames;
        if let Some(error) = sent.error {
            stream_errors.add(error);
        }
    }
    let ended = Instant::now();
    progress.abort();
    Ok(Outcome {
        open,
        failures,
        stream_errors,
        bytes: total.bytes,
        frames: total.frames,
        started,
        ended,
        server_cpu_s: server.cpu_s().map_err(|e| e.to_string())? - server_cpu_before,
        client_cpu_s: client.cpu_s().map_err(|e| e.to_string())? - client_cpu_before,
        server_rss_after_kib: server.rss_kib().map_err(|e| e.to_string())?,
    })
}

/// Writes batches until `deadline` (adding what it wrote to `bytes_sent`, for the progress
/// line), then closes: sends a Close and reads until the server has answered and ended the
/// stream.
async fn stream(
    session: Session,
    batch: Arc<Batch>,
    deadline: Instant,
    bytes_sent: Arc<AtomicU64>,
) -> Sent {
    let mut sent = Sent::default();
    let mut conn = Conn::new(session.stream);
    while Instant::now() < deadline {
        // Between writes: pings answered and sent as the listen service does.
        let served = conn.serve_ready(&mut |_| {}).await;
        if let Err(end) = served.and(conn.send(&batch.bytes).await) {
            sent.error = Some(end.reason());
            return sent;
        }
        bytes_sent.fetch_add(batch.bytes.len() as u64, Ordering::Relaxed);
        sent.bytes += batch.bytes.len() as u64;
        sent.frames += batch.frames;
    }
    sent.error = conn.close(CLOSE_WAIT, &mut |_| {}).await.err();
    sent
}

#[cfg(test)]
mod tests {
    use pusher::websocket::{Decoder, DecoderLimits, Event};

    use super::*;

    #[test]
    fn a_batch_is_whole_audio_frames_that_the_server_decodes() {
        let batch = Batch::new(16_000, 50_000);
        assert_eq!(batch.frames, 3);
        assert_eq!(batch.bytes.len(), 3 * frames::frame_bytes(16_000 + 12));

        let limits = DecoderLimits {
            max_message_bytes: 1 << 20,
        };
        let mut decoder = Decoder::new(limits);
        let mut buf = vec![0u8; Decoder::buffer_bytes_required(limits)];
        buf[..batch.bytes.len()].copy_from_slice(&batch.bytes);
        let mut messages = 0;
        while let Some(event) = decoder.decode(&mut buf, batch.bytes.len()).unwrap() {
            let Event::Message { payload, .. } = event else {
                panic!("unexpected {event:?}");
            };
            assert_eq!(payload.len(), 4 + 8 + 16_000);
            assert_eq!(
                buf[payload.start..payload.start + 4],
                frames::AUDIO.to_le_bytes()
            );
            messages += 1;
        }
        assert_eq!(messages, 3);
    }

    #[test]
    fn a_batch_holds_at_least_one_frame() {
        let batch = Batch::new(16_000, 100);
        assert_eq!(batch.frames, 1);
        assert_eq!(batch.bytes.len(), frames::frame_bytes(16_000 + 12));
    }
}
