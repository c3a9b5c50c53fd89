//! The running durable audio log: the spill log (`crate::spill`) wired to its uploader
//! (`crate::upload`). Starting the durable audio path: recover the log, start the uploader, open a new segment and
//! start the writer thread. The cores get one hand-off ring each.
//!
//! Order matters: recovery rebuilds the index before anything is written; the uploader exists
//! before the writer hands it the recovered batches; the writer exists before any core pushes.

pub mod drain;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::spill::clock::{Clock, SystemClock};
use crate::spill::disk::{Disk, RealDisk};
use crate::spill::handoff::Handoff;
use crate::spill::index::BatchEntry;
use crate::spill::metrics::SpillMetrics;
use crate::spill::reader::read_batch_audio;
use crate::spill::recovery::{Recovered, recover};
use crate::spill::writer::{Confirmed, SpillShared, Submit, Writer, WriterFailed, WriterLimits};
use crate::upload::{BatchSource, UploadJob, UploaderHandle};

/// What the server keeps of the spill log.
pub struct SpillLog {
    /// One hand-off ring per worker, in worker order.
    pub rings: Vec<Arc<Handoff>>,
    /// The state the writer, the cores and the uploader share.
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
        let disk: Arc<dyn Disk> = Arc::new(RealDisk);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let (shared, recovered) = open_shared(config, disk, clock, metrics, run_id())?;
        let uploader = start_uploader(Arc::new(SpillSource {
            shared: Arc::clone(&shared),
        }))?;
        let rings: Vec<Arc<Handoff>> = (0..workers)
            .map(|_| Arc::new(Handoff::new(config.spill_handoff_bytes_per_core)))
            .collect();
        let submit_shared = Arc::clone(&shared);
        let submit =
            Box::new(move |entry: &BatchEntry| submit_job(&uploader, &submit_shared, entry));
        let writer = open_writer(config, &shared, rings.clone(), &recovered, submit)
            .map_err(|e| format!("spill log: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("pusher-spill".into())
            .spawn(move || writer.run())
            .map_err(|e| format!("cannot start the spill writer: {e}"))?;
        shared.set_writer_thread(thread.thread().clone());
        Ok(SpillLog {
            rings,
            shared,
            writer: thread.thread().clone(),
        })
    }

    /// Batches in the log not yet confirmed by the store (open, closed or uploading).
    pub fn pending_batches(&self) -> usize {
        self.shared.pending_batches()
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

/// Recovers `<data_dir>/spill` on `disk` and makes the state the writer, the cores and the
/// uploader share (the first half of [`SpillLog::start`]; the simulation calls it too).
pub fn open_shared(
    config: &Config,
    disk: Arc<dyn Disk>,
    clock: Arc<dyn Clock>,
    metrics: SpillMetrics,
    run_id: u64,
) -> Result<(Arc<SpillShared>, Recovered), String> {
    let dir = config.data_dir.join("spill");
    let mut recovered = recover(&*disk, &dir, config.spill_batches_max, clock.unix_ms())
        .map_err(|e| format!("spill log {}: {e}", dir.display()))?;
    metrics.corrupt_tails.inc_by(recovered.corrupt_tails);
    metrics.damaged_segments.inc_by(recovered.damaged_segments);
    metrics.holed_batches.inc_by(recovered.holed_batches);
    let index = std::mem::replace(&mut recovered.index, crate::spill::index::Index::new(1));
    let shared = Arc::new(SpillShared::new(dir, run_id, index, metrics, disk, clock));
    Ok((shared, recovered))
}

/// Opens the writer on a new segment after the recovered ones (the second half of
/// [`SpillLog::start`]); it submits every recovered closed batch.
pub fn open_writer(
    config: &Config,
    shared: &Arc<SpillShared>,
    rings: Vec<Arc<Handoff>>,
    recovered: &Recovered,
    submit: Submit,
) -> Result<Writer, WriterFailed> {
    let limits = WriterLimits {
        segment_bytes_max: config.spill_segment_bytes,
        sync_interval_ms: config.spill_sync_interval_ms,
        sync_bytes: config.spill_sync_bytes,
        max_bytes: config.spill_bytes_max,
    };
    let existing = recovered
        .segments
        .iter()
        .map(|s| (s.sequence, s.bytes))
        .collect();
    Writer::open(
        Arc::clone(shared),
        rings,
        limits,
        existing,
        recovered.next_sequence,
        submit,
    )
}

/// The upload job of an indexed batch.
pub fn upload_job(entry: &BatchEntry) -> UploadJob {
    UploadJob {
        key: entry.key,
        uid: entry.open.uid,
        conversation: entry.open.conversation,
        timestamp: entry.open.timestamp,
        sample_rate_hz: entry.open.sample_rate_hz,
        level: entry.open.level,
        audio_bytes: entry.audio_bytes,
        partial: entry.holes > 0,
    }
}

fn submit_job(uploader: &UploaderHandle, shared: &SpillShared, entry: &BatchEntry) {
    let job = upload_job(entry);
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
/// written to the log.
pub struct SpillSource {
    /// The log's shared state (index, disk, segment directory).
    pub shared: Arc<SpillShared>,
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
        read_batch_audio(&*self.shared.disk, &self.shared.dir, &entry, out)
    }

    fn uploaded(&self, job: &UploadJob, confirmed: Confirmed) {
        self.shared.confirm_uploaded(job.key, confirmed);
    }
}
