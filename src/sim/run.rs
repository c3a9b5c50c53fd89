//! One simulated life of the durable audio path, from one seed, and its oracle.
//!
//! The world: a [`SimDisk`] and a [`SimStore`] that outlive processes, a [`SimClock`], and the
//! model of what the sessions sent. A process is the real spill code — [`open_shared`] (recovery)
//! and [`open_writer`], [`Writer::step`], the hand-off rings, [`SpillSource`] (the uploader's view:
//! reading a batch back, confirming it) — driven tick by tick. Sessions push records into the
//! rings as the cores do (backpressure: a full ring or a full log makes them wait); a batch is
//! acknowledged when its ring reports the close durable, as a session's Close waits for. Uploads
//! follow the uploader's contract: read the batch, put it (retried with the uploader's
//! [`Backoff`] on failure or a lost reply), confirm it through the log, then notify — at most
//! `upload_concurrency` at once.
//!
//! Faults from the seed: EIO on writes and syncs, ENOSPC (a disk smaller than the budget, until
//! the healing phase), torn writes at a crash, crashes at any tick and whenever the writer stops
//! (an I/O error it must not retry), store failures, lost replies, latency, and, in some seeds,
//! a flipped bit in a durable segment between two runs.
//!
//! The oracle, after the last crash and a healing phase that lets everything drain:
//! - every acknowledged batch with audio is stored exactly, under its own key, once (no other key holds
//!   its audio), and nothing unacknowledged was reported durable (else a crash would have lost
//!   acknowledged audio, and the first rule fails);
//! - every stored object is a prefix of what its batch's session sent (an unacknowledged batch
//!   is stored as far as it was durable);
//! - no batch is put again after its confirmation was durable, and none is notified twice or
//!   before its confirmation;
//! - the log ends empty (every batch confirmed, every segment but the active one deleted);
//! - with damage, each flipped bit may cost at most two batches: the one whose record it hit
//!   (partial or lost) and one marked partial though whole (the bit was in a batch-id field).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::SimClock;
use super::disk::{DiskFaults, SimDisk};
use super::rng::SimRng;
use super::store::{PutOutcome, SimStore, StoreFaults};
use crate::audio_log::{SpillSource, open_shared, open_writer, upload_job};
use crate::config::Config;
use crate::id::Id;
use crate::settings::DataProtectionLevel;
use crate::spill::handoff::Handoff;
use crate::spill::index::BatchEntry;
use crate::spill::metrics::SpillMetrics;
use crate::spill::record::{
    BATCH_OPEN_PAYLOAD_BYTES_MAX, BatchOpen, Kind, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
    encode_batch_open,
};
use crate::spill::recovery::DAMAGED_DIR_NAME;
use crate::spill::writer::{SpillShared, Writer};
use crate::upload::backoff::Backoff;
use crate::upload::{BatchSource, UploadJob};

/// Ticks of the workload phase (then the healing phase drains everything).
const WORKLOAD_TICKS_MAX: u64 = 400;
/// Bound of the healing phase: past it the log has not drained (a liveness failure).
const HEALING_TICKS_MAX: u64 = 30_000;
/// Restarts in a row that may fail before the run is a failure.
const START_ATTEMPTS_MAX: u32 = 50;
const SESSIONS_MAX: u64 = 4;
const UPLOAD_CONCURRENCY: usize = 2;
const RING_BYTES: usize = 4096;
const AUDIO_RECORD_BYTES_MAX: u64 = 96;

/// What one seed did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed played.
    pub seed: u64,
    /// Simulation steps taken.
    pub ticks: u64,
    /// Machine crashes simulated (unsynced bytes lost).
    pub crashes: u64,
    /// Starts or writer runs that stopped on an I/O error (then the process restarts).
    pub writer_failures: u64,
    /// Batches the sessions opened.
    pub batches: u64,
    /// Batches whose close became durable, so acknowledged to their session.
    pub acknowledged: u64,
    /// Puts that reached the store, every key.
    pub puts: u64,
    /// Bits flipped in segment files (damage recovery must contain).
    pub damage: u64,
    /// Batches recovery found with holes (stored as `.partial`).
    pub partial: u64,
    /// Disk faults injected: write EIOs, sync EIOs and ENOSPCs.
    pub disk_faults: u64,
}

/// One batch as its session sent it.
#[derive(Debug, Clone)]
struct SentBatch {
    key: String,
    audio: Vec<u8>,
    acknowledged: bool,
}

/// What the world remembers across processes.
#[derive(Default)]
struct Model {
    batches: Vec<SentBatch>,
    by_key: BTreeMap<String, usize>,
    /// Keys whose confirmation completed (durable in the log).
    confirmed: BTreeMap<String, u32>,
    notified: BTreeMap<String, u32>,
    /// Oracle breaches that damage may excuse: (batch key, what). Each damage event excuses the
    /// breaches of two batches.
    deviations: Vec<(String, String)>,
}

/// A session's open batch.
struct OpenBatch {
    batch: u64,
    sent: usize,
    records_left: u64,
}

struct Session {
    ring: usize,
    open: Option<OpenBatch>,
}

enum UploadState {
    /// Waiting until `at_ms` to (re)try.
    Ready {
        at_ms: u64,
    },
    Putting {
        done_ms: u64,
        outcome: PutOutcome,
        body: Vec<u8>,
    },
    Confirming {
        durable: Arc<AtomicBool>,
    },
}

struct Upload {
    job: UploadJob,
    attempt: u32,
    state: UploadState,
}

/// One process: the real spill code on the simulated disk.
struct Process {
    shared: Arc<SpillShared>,
    writer: Writer,
    rings: Vec<Arc<Handoff>>,
    source: SpillSource,
    submitted: Arc<Mutex<VecDeque<UploadJob>>>,
    uploads: Vec<Upload>,
    sessions: Vec<Session>,
    /// (ring, ring position just past the close record, sent batch).
    closes: Vec<(usize, u64, usize)>,
    next_batch: u64,
}

struct World {
    rng: SimRng,
    clock: Arc<SimClock>,
    disk: SimDisk,
    store: SimStore,
    model: Model,
    config: Config,
    backoff: Backoff,
    disk_faults: DiskFaults,
    crash_ppm: u32,
    damage_ppm: u32,
    report: Report,
    runs: u64,
}

/// Plays `seed`; the report, or what broke (with the seed, to replay it).
pub fn run(seed: u64) -> Result<Report, String> {
    let mut world = World::new(seed);
    world.play().map_err(|why| format!("seed {seed}: {why}"))?;
    Ok(world.report)
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = SimRng::new(seed);
        let segment_bytes = 512 + rng.below(4096);
        let max_bytes = 8 * 1024 + rng.below(32 * 1024);
        // Some seeds run on a disk smaller than the budget (ENOSPC until the healing phase).
        let capacity_bytes = if rng.chance_ppm(300_000) {
            max_bytes / 2 + rng.below(max_bytes)
        } else {
            u64::MAX
        };
        let disk_faults = DiskFaults {
            write_eio_ppm: [0, 0, 500, 3_000][rng.below(4) as usize],
            sync_eio_ppm: [0, 0, 500, 3_000][rng.below(4) as usize],
            capacity_bytes,
        };
        let config = Config {
            data_dir: PathBuf::from("/sim"),
            spill_segment_bytes: segment_bytes,
            spill_sync_interval_ms: 1 + rng.below(30),
            spill_sync_bytes: 64 + rng.below(2048),
            spill_bytes_max: max_bytes,
            spill_batches_max: 64,
            ..Config::default()
        };
        let mut store = SimStore::default();
        store.faults = StoreFaults {
            fail_ppm: [0, 50_000, 300_000][rng.below(3) as usize],
            lost_reply_ppm: [0, 50_000, 200_000][rng.below(3) as usize],
            latency_ms_max: rng.below(50),
        };
        let disk = SimDisk::new(rng.next_u64(), disk_faults);
        World {
            crash_ppm: [0, 2_000, 10_000][rng.below(3) as usize],
            damage_ppm: [0, 0, 0, 200_000][rng.below(4) as usize],
            rng,
            clock: Arc::new(SimClock::default()),
            disk,
            store,
            model: Model::default(),
            config,
            backoff: Backoff::new(5, 200),
            disk_faults,
            report: Report {
                seed,
                ..Report::default()
            },
            runs: 0,
        }
    }

    fn play(&mut self) -> Result<(), String> {
        let mut process = self.start()?;
        let workload_ticks = 50 + self.rng.below(WORKLOAD_TICKS_MAX);
        for _ in 0..workload_ticks {
            process = self.tick(process, true)?;
        }
        // Healing: no more faults; the sessions end their batches; everything drains.
        self.disk.set_faults(DiskFaults {
            capacity_bytes: u64::MAX,
            ..DiskFaults::default()
        });
        self.store.faults = StoreFaults::default();
        self.crash_ppm = 0;
        for ticks in 0.. {
            if ticks == HEALING_TICKS_MAX {
                return Err(format!(
                    "the log did not drain in {HEALING_TICKS_MAX} ticks: {} batches left, {} \
                     uploads in flight",
                    process.shared.pending_batches(),
                    process.uploads.len()
                ));
            }
            process = self.tick(process, false)?;
            if process.sessions.iter().all(|s| s.open.is_none())
                && process.closes.is_empty()
                && process.uploads.is_empty()
                && process.submitted.lock().expect("jobs").is_empty()
                && process.shared.pending_batches() == 0
                && !process.writer.is_stalled()
            {
                break;
            }
        }
        self.check(&process)
    }

    /// A new process on the disk as it is: recovery, then a writer on a new segment.
    fn start(&mut self) -> Result<Process, String> {
        for attempt in 0..START_ATTEMPTS_MAX {
            if attempt == 3 {
                // A full disk keeps a start from making its first segment: the operator frees
                // space (gives the disk its budget's room, `docs/0005-durability-policy.md`).
                self.disk_faults.capacity_bytes = u64::MAX;
                self.disk.set_faults(self.disk_faults);
            }
            self.runs += 1;
            let disk: Arc<dyn crate::spill::disk::Disk> = Arc::new(self.disk.clone());
            let metrics =
                SpillMetrics::register(&mut prometheus_client::registry::Registry::default());
            let (shared, recovered) =
                match open_shared(&self.config, disk, self.clock.clone(), metrics, self.runs) {
                    Ok(opened) => opened,
                    Err(_) => {
                        // Recovery hit an I/O error (keeping a damaged segment aside syncs a
                        // directory): this start fails, the next one tries again.
                        self.report.writer_failures += 1;
                        self.crash_disk();
                        continue;
                    }
                };
            self.report.partial += recovered.holed_batches;
            let rings: Vec<Arc<Handoff>> = (0..1 + self.rng.below(2))
                .map(|_| Arc::new(Handoff::new(RING_BYTES)))
                .collect();
            let submitted = Arc::new(Mutex::new(VecDeque::new()));
            let jobs = Arc::clone(&submitted);
            let submit = Box::new(move |entry: &BatchEntry| {
                jobs.lock().expect("jobs").push_back(upload_job(entry));
            });
            match open_writer(&self.config, &shared, rings.clone(), &recovered, submit) {
                Ok(writer) => {
                    let sessions = (0..1 + self.rng.below(SESSIONS_MAX))
                        .map(|n| Session {
                            ring: n as usize % rings.len(),
                            open: None,
                        })
                        .collect();
                    return Ok(Process {
                        source: SpillSource {
                            shared: Arc::clone(&shared),
                        },
                        shared,
                        writer,
                        rings,
                        submitted,
                        uploads: Vec::new(),
                        sessions,
                        closes: Vec::new(),
                        next_batch: 1,
                    });
                }
                Err(_) => {
                    // The new segment could not be made durable: this start fails too.
                    self.report.writer_failures += 1;
                    self.crash_disk();
                }
            }
        }
        Err(format!(
            "no start succeeded in {START_ATTEMPTS_MAX} attempts"
        ))
    }

    fn tick(&mut self, mut process: Process, faults: bool) -> Result<Process, String> {
        self.report.ticks += 1;
        self.clock.advance(1 + self.rng.below(8));
        if faults {
            for session in 0..process.sessions.len() {
                self.drive_session(&mut process, session);
            }
        } else {
            for session in 0..process.sessions.len() {
                self.end_session(&mut process, session);
            }
        }
        if process.writer.step().is_err() {
            self.report.writer_failures += 1;
            return self.crash(process);
        }
        self.acknowledge(&mut process);
        self.drive_uploads(&mut process)?;
        if faults && self.rng.chance_ppm(self.crash_ppm) {
            return self.crash(process);
        }
        Ok(process)
    }

    /// The session sends its next record, if the ring and the log take it.
    fn drive_session(&mut self, process: &mut Process, session: usize) {
        if !self.rng.chance_ppm(500_000) {
            return;
        }
        let ring = Arc::clone(&process.rings[process.sessions[session].ring]);
        let room = !process.shared.is_full()
            && ring.free_bytes() >= 2 * (RECORD_HEADER_BYTES + BATCH_OPEN_PAYLOAD_BYTES_MAX);
        if !room {
            return; // backpressure: the session is not read
        }
        match process.sessions[session].open.take() {
            None => {
                let sent = self.model.batches.len();
                let batch = process.next_batch;
                process.next_batch += 1;
                let open = BatchOpen {
                    uid: Id::parse(format!("u{session}").as_bytes()).expect("id"),
                    conversation: Id::parse(format!("c{sent}").as_bytes()).expect("id"),
                    timestamp: 1_000.0 + sent as f64,
                    sample_rate_hz: 16_000,
                    level: DataProtectionLevel::Standard,
                };
                let key = crate::upload::object_key::object_key(
                    &open.uid,
                    &open.conversation,
                    open.timestamp,
                    open.level,
                );
                self.model.by_key.insert(key.clone(), sent);
                self.model.batches.push(SentBatch {
                    key,
                    audio: Vec::new(),
                    acknowledged: false,
                });
                self.report.batches += 1;
                let mut payload = [0u8; BATCH_OPEN_PAYLOAD_BYTES_MAX];
                let len = encode_batch_open(&mut payload, &open);
                push(&ring, Kind::BatchOpen, batch, &payload[..len]);
                process.sessions[session].open = Some(OpenBatch {
                    batch,
                    sent,
                    records_left: 1 + self.rng.below(12),
                });
            }
            Some(open) if open.records_left == 0 => {
                let position = push(&ring, Kind::BatchClose, open.batch, &[1]);
                let ring_index = process.sessions[session].ring;
                process.closes.push((ring_index, position, open.sent));
            }
            Some(mut open) => {
                let len = 1 + self.rng.below(AUDIO_RECORD_BYTES_MAX) as usize;
                let audio: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
                push(&ring, Kind::Audio, open.batch, &audio);
                self.model.batches[open.sent]
                    .audio
                    .extend_from_slice(&audio);
                open.records_left -= 1;
                process.sessions[session].open = Some(open);
            }
        }
    }

    /// Healing: the session closes its batch (when the ring takes the close).
    fn end_session(&mut self, process: &mut Process, session: usize) {
        let ring_index = process.sessions[session].ring;
        let ring = Arc::clone(&process.rings[ring_index]);
        if ring.free_bytes() < 2 * RECORD_HEADER_BYTES + 8 {
            return;
        }
        if let Some(open) = process.sessions[session].open.take() {
            let position = push(&ring, Kind::BatchClose, open.batch, &[4]);
            process.closes.push((ring_index, position, open.sent));
        }
    }

    /// A close reported durable acknowledges its batch (the session's Close goes out).
    fn acknowledge(&mut self, process: &mut Process) {
        let model = &mut self.model;
        process.closes.retain(|&(ring, position, sent)| {
            let durable = process.rings[ring].is_durable(position);
            if durable {
                model.batches[sent].acknowledged = true;
            }
            !durable
        });
    }

    fn drive_uploads(&mut self, process: &mut Process) -> Result<(), String> {
        while process.uploads.len() < UPLOAD_CONCURRENCY {
            let Some(job) = process.submitted.lock().expect("jobs").pop_front() else {
                break;
            };
            process.uploads.push(Upload {
                job,
                attempt: 0,
                state: UploadState::Ready { at_ms: 0 },
            });
        }
        let now = self.clock.now_ms();
        let mut finished = Vec::new();
        for (at, upload) in process.uploads.iter_mut().enumerate() {
            if self.drive_upload(&process.source, upload, now)? {
                finished.push(at);
            }
        }
        for at in finished.into_iter().rev() {
            process.uploads.remove(at);
        }
        Ok(())
    }

    /// One step of one upload; true when it is over (confirmed and notified).
    fn drive_upload(
        &mut self,
        source: &SpillSource,
        upload: &mut Upload,
        now: u64,
    ) -> Result<bool, String> {
        let key = upload.job.object_key();
        match &mut upload.state {
            UploadState::Ready { at_ms } if *at_ms <= now => {
                let mut body = Vec::new();
                if let Err(error) = source.read_audio(&upload.job, &mut body) {
                    // The real uploader retries a failed read forever: a batch that cannot be
                    // read back would never leave the log.
                    return Err(format!("reading {key} back failed: {error}"));
                }
                let (outcome, latency) = self.store.plan_put(&mut self.rng);
                upload.state = UploadState::Putting {
                    done_ms: now + latency,
                    outcome,
                    body,
                };
            }
            UploadState::Putting {
                done_ms,
                outcome,
                body,
            } if *done_ms <= now => {
                if *outcome != PutOutcome::Failed {
                    self.put(&key, body);
                }
                if *outcome == PutOutcome::Stored {
                    let durable = Arc::new(AtomicBool::new(false));
                    let flag = Arc::clone(&durable);
                    source.uploaded(
                        &upload.job,
                        Box::new(move || flag.store(true, Ordering::Release)),
                    );
                    upload.state = UploadState::Confirming { durable };
                } else {
                    let delay = self.backoff.delay(upload.attempt, self.rng.next_u64());
                    upload.attempt = upload.attempt.saturating_add(1);
                    upload.state = UploadState::Ready {
                        at_ms: now + delay.as_millis() as u64,
                    };
                }
            }
            UploadState::Confirming { durable } if durable.load(Ordering::Acquire) => {
                *self.model.confirmed.entry(key.clone()).or_default() += 1;
                if !upload.job.partial {
                    let notified = self.model.notified.entry(key.clone()).or_default();
                    *notified += 1;
                    if *notified > 1 {
                        let what = "notified twice".to_string();
                        self.model.deviations.push((key.clone(), what));
                    }
                }
                return Ok(true);
            }
            _ => {}
        }
        Ok(false)
    }

    fn put(&mut self, key: &str, body: &[u8]) {
        if self.model.confirmed.contains_key(key) {
            let what = "put again after its confirmation was durable".to_string();
            self.model.deviations.push((key.to_string(), what));
        }
        self.store.store(key, body);
    }

    /// The machine crashes: the process is gone, the disk keeps what was durable (maybe a
    /// torn last write), puts in flight may or may not have reached the store; then, in some
    /// seeds, a bit rots; then a new process starts.
    fn crash(&mut self, process: Process) -> Result<Process, String> {
        self.report.crashes += 1;
        for upload in &process.uploads {
            if let UploadState::Putting { outcome, body, .. } = &upload.state
                && *outcome != PutOutcome::Failed
                && self.rng.chance_ppm(500_000)
            {
                let key = upload.job.object_key();
                let body = body.clone();
                self.put(&key, &body);
            }
        }
        drop(process);
        self.crash_disk();
        if self.rng.chance_ppm(self.damage_ppm) {
            self.damage();
        }
        self.start()
    }

    fn crash_disk(&mut self) {
        self.disk.crash();
        self.disk.set_faults(self.disk_faults);
    }

    /// Flips one bit of a durable segment record (never the 24-byte segment header: see
    /// `docs/0011-simulation.md`).
    fn damage(&mut self) {
        let damaged_dir = self.config.data_dir.join("spill").join(DAMAGED_DIR_NAME);
        let segments: Vec<(PathBuf, usize)> = self
            .disk
            .files()
            .into_iter()
            .filter(|(path, len)| {
                path.parent() != Some(&damaged_dir) && *len > SEGMENT_HEADER_BYTES
            })
            .collect();
        if segments.is_empty() {
            return;
        }
        let (path, len) = &segments[self.rng.below(segments.len() as u64) as usize];
        let offset =
            SEGMENT_HEADER_BYTES + self.rng.below((len - SEGMENT_HEADER_BYTES) as u64) as usize;
        if self.disk.flip(path, offset, self.rng.below(8) as u8) {
            self.report.damage += 1;
        }
    }

    fn check(&mut self, process: &Process) -> Result<(), String> {
        self.report.puts = self.store.puts_total();
        self.report.acknowledged =
            self.model.batches.iter().filter(|b| b.acknowledged).count() as u64;
        let injected = self.disk.injected();
        self.report.disk_faults = injected.write_eio + injected.sync_eio + injected.enospc;
        let mut deviations = std::mem::take(&mut self.model.deviations);
        let objects = self.store.objects();
        for batch in &self.model.batches {
            let stored = objects.get(&batch.key);
            // A batch without audio is dropped, not uploaded: nothing to store.
            if batch.acknowledged && !batch.audio.is_empty() && stored != Some(&batch.audio) {
                let partial = objects.get(&format!("{}.partial", batch.key));
                let what = format!(
                    "acknowledged ({} bytes), stored as {:?} bytes, partial {:?}",
                    batch.audio.len(),
                    stored.map(Vec::len),
                    partial.map(Vec::len)
                );
                deviations.push((batch.key.clone(), what));
            }
        }
        for (key, body) in objects {
            let (base, partial) = match key.strip_suffix(".partial") {
                Some(base) => (base, true),
                None => (key.as_str(), false),
            };
            let Some(&sent) = self.model.by_key.get(base) else {
                return Err(format!("{key} is no batch's key"));
            };
            let audio = &self.model.batches[sent].audio;
            if partial {
                if self.report.damage == 0 || body.len() > audio.len() {
                    return Err(format!("{key}: a partial object without damage"));
                }
                if self.model.batches[sent].acknowledged && body == audio {
                    let what = "whole, yet marked partial".to_string();
                    deviations.push((base.to_string(), what));
                }
            } else if !audio.starts_with(body) && self.report.damage == 0 {
                return Err(format!(
                    "{key} holds {} bytes that are not a prefix of the {} sent",
                    body.len(),
                    audio.len()
                ));
            }
        }
        for (key, &count) in &self.model.notified {
            if self.model.confirmed.get(key).copied().unwrap_or(0) < count {
                return Err(format!(
                    "{key} notified before its confirmation was durable"
                ));
            }
        }
        // Damage may cost a batch several breaches (lost confirmation: put and notified again).
        let batches: std::collections::BTreeSet<&str> =
            deviations.iter().map(|(key, _)| key.as_str()).collect();
        let excused = 2 * self.report.damage as usize;
        if batches.len() > excused {
            let list: Vec<String> = deviations
                .iter()
                .map(|(key, what)| format!("{key}: {what}"))
                .collect();
            return Err(format!(
                "oracle breaches in {} batches ({excused} excused by {} damage events): {}",
                batches.len(),
                self.report.damage,
                list.join("; ")
            ));
        }
        let live: Vec<(u64, u64)> = process.writer.segments().collect();
        if live.len() != 1 {
            return Err(format!("the drained log still has segments {live:?}"));
        }
        Ok(())
    }
}

/// Appends a record to a ring as a core does (`prev` and the CRC are the writer's); returns the
/// ring position just past it.
fn push(ring: &Handoff, kind: Kind, batch: u64, payload: &[u8]) -> u64 {
    ring.push_record(kind, batch, &[payload])
        .expect("the session checked the ring's room")
}

/// Seeds `first..first + count`, split over `threads`; the first failure, or the reports.
pub fn run_seeds(first: u64, count: u64, threads: usize) -> Result<Vec<Report>, String> {
    let threads = threads.max(1) as u64;
    let results: Vec<Result<Vec<Report>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut reports = Vec::new();
                    let mut seed = first + t;
                    while seed < first + count {
                        reports.push(run(seed)?);
                        seed += threads;
                    }
                    Ok(reports)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a seed panicked".into())))
            .collect()
    });
    let mut all = Vec::new();
    for result in results {
        all.extend(result?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds to run: `SIM_SEEDS` (default 10,000), from `SIM_SEED_FIRST` (default 0); `SIM_SEED`
    /// replays one seed (`make sim SEED=n`).
    #[test]
    fn seeds() {
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        let (first, count) = match env("SIM_SEED") {
            Some(seed) => (seed, 1),
            None => (
                env("SIM_SEED_FIRST").unwrap_or(0),
                env("SIM_SEEDS").unwrap_or(10_000),
            ),
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let started = std::time::Instant::now();
        match run_seeds(first, count, threads) {
            Ok(reports) => {
                let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
                eprintln!(
                    "simulation: {} seeds from {first} in {:.1} s: {} ticks, {} crashes, {} \
                     writer stops, {} disk faults, {} batches ({} acknowledged), {} puts, {} \
                     bits flipped, {} partial batches",
                    reports.len(),
                    started.elapsed().as_secs_f64(),
                    sum(|r| r.ticks),
                    sum(|r| r.crashes),
                    sum(|r| r.writer_failures),
                    sum(|r| r.disk_faults),
                    sum(|r| r.batches),
                    sum(|r| r.acknowledged),
                    sum(|r| r.puts),
                    sum(|r| r.damage),
                    sum(|r| r.partial),
                );
            }
            Err(failure) => panic!("{failure}\nreplay: make sim SEED=<the seed above>"),
        }
    }

    #[test]
    fn a_seed_replays_exactly() {
        let a = run(7).unwrap();
        let b = run(7).unwrap();
        assert_eq!(
            (a.ticks, a.crashes, a.batches, a.acknowledged, a.puts),
            (b.ticks, b.crashes, b.batches, b.acknowledged, b.puts)
        );
    }
}
