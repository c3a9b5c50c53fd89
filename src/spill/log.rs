//! Starting the durable audio path: recover the log, start the uploader, open a new segment and
//! start the writer thread. The cores get one hand-off ring each.
//!
//! Order matters: recovery rebuilds the index before anything is written; the uploader exists
//! before the writer hands it the recovered batches; the writer exists before any core pushes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handoff::Handoff;
use super::index::BatchEntry;
use super::metrics::SpillMetrics;
use super::reader::read_batch_audio;
use super::recovery::recover;
use super::writer::{SpillShared, Writer, WriterLimits, unix_ms};
use crate::config::Config;
use crate::upload::{BatchSource, UploadJob, UploaderHandle};

/// What the server keeps of the spill log.
pub struct SpillLog {
    /// One hand-off ring per worker, in worker order.
    pub rings: Vec<Arc<Handoff>>,
    pub shared: Arc<SpillShared>,
    /// The writer thread (cores unpark it when they push to an idle ring).
    pub writer: std::thread::Thread,
}

impl SpillLog {
    /// Recovers `<data_dir>/spill`, starts the uploader and the writer.
    pub fn start(
        config: &Config,
        workers: usize,
        metrics: SpillMetrics,
        start_uploader: impl FnOnce(Arc<dyn BatchSource>) -> Result<UploaderHandle, String>,
    ) -> Result<SpillLog, String> {
        let dir = config.data_dir.join("spill");
        let recovered = recover(&dir, config.spill_batches_max, unix_ms())
            .map_err(|e| format!("spill log {}: {e}", dir.display()))?;
        metrics.corrupt_tails.inc_by(recovered.corrupt_tails);
        let existing = recovered
            .segments
            .iter()
            .map(|s| (s.sequence, s.bytes))
            .collect();
        let run_id = run_id();
        let shared = Arc::new(SpillShared::new(dir, run_id, recovered.index, metrics));
        let uploader = start_uploader(Arc::new(SpillSource {
            shared: Arc::clone(&shared),
        }))?;
        let rings: Vec<Arc<Handoff>> = (0..workers)
            .map(|_| Arc::new(Handoff::new(config.spill_handoff_bytes_per_core)))
            .collect();
        let limits = WriterLimits {
            segment_bytes_max: config.spill_segment_bytes,
            sync_interval: Duration::from_millis(config.spill_sync_interval_ms),
            sync_bytes: config.spill_sync_bytes,
            max_bytes: config.spill_max_bytes,
        };
        let submit_shared = Arc::clone(&shared);
        let submit =
            Box::new(move |entry: &BatchEntry| submit_job(&uploader, &submit_shared, entry));
        let writer = Writer::open(
            Arc::clone(&shared),
            rings.clone(),
            limits,
            existing,
            recovered.next_sequence,
            submit,
        )
        .map_err(|e| format!("spill log: cannot open a new segment: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("pusher-spill".into())
            .spawn(move || writer.run())
            .map_err(|e| format!("cannot start the spill writer: {e}"))?;
        Ok(SpillLog {
            rings,
            shared,
            writer: thread.thread().clone(),
        })
    }

    /// Waits until every record handed over so far is durable, or `limit` passes; true if so.
    pub fn wait_durable(&self, limit: Duration) -> bool {
        let targets: Vec<u64> = self.rings.iter().map(|ring| ring.produced()).collect();
        let start = Instant::now();
        loop {
            let done = self
                .rings
                .iter()
                .zip(&targets)
                .all(|(ring, &at)| ring.is_durable(at));
            if done {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            for ring in &self.rings {
                ring.wake(&self.writer);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn submit_job(uploader: &UploaderHandle, shared: &SpillShared, entry: &BatchEntry) {
    let job = UploadJob {
        key: entry.key,
        uid: entry.open.uid,
        conversation: entry.open.conversation,
        timestamp: entry.open.timestamp,
        sample_rate_hz: entry.open.sample_rate_hz,
        level: entry.open.level,
        audio_bytes: entry.audio_bytes,
    };
    if uploader.submit(job).is_err() {
        // The upload queue holds as many jobs as the index holds batches; the batch stays in
        // the log (and is uploaded by the next process) but this one will not retry it.
        shared.metrics.records_rejected.inc();
        tracing::error!(
            batch = entry.key.batch,
            "the upload queue refused a batch; it stays in the log"
        );
    }
}

/// Unique per process start: wall-clock nanoseconds.
fn run_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// The uploader's view of the log: batch audio read back from the segments, confirmations
/// applied to the index.
struct SpillSource {
    shared: Arc<SpillShared>,
}

impl BatchSource for SpillSource {
    fn read_audio(&self, job: &UploadJob, out: &mut Vec<u8>) -> std::io::Result<()> {
        let entry = self
            .shared
            .index
            .lock()
            .expect("index lock")
            .get(&job.key)
            .copied();
        let entry =
            entry.ok_or_else(|| std::io::Error::other("batch is not in the spill index"))?;
        read_batch_audio(&self.shared.dir, &entry, out)
    }

    fn uploaded(&self, job: &UploadJob) {
        self.shared.uploaded(&job.key);
    }
}
