//! The memory budget: the worst case of every bounded structure, computed from the config at
//! start, logged, exported as `pusher_memory_budget_bytes` and printed by `pusher budget`.
//!
//! Invariant: each line is `count × bytes` of a structure whose count and size are fixed by the
//! config; nothing else in the process grows with load, so RSS stays below the total plus the
//! fixed overhead of code, runtime and thread stacks ([`FIXED_OVERHEAD_BYTES_ESTIMATE`]).

use std::fmt;

use crate::config::Config;
use crate::session::{BATCH_AUDIO_SECONDS, PCM_BYTES_PER_SAMPLE, SAMPLE_RATE_HZ_MAX};

/// Code, static data, runtime drivers and touched thread-stack pages: measured RSS of an idle
/// process with no sessions is well below this.
pub const FIXED_OVERHEAD_BYTES_ESTIMATE: u64 = 24 << 20;

/// Sizes of the per-item structures, supplied by the modules that own them.
#[derive(Debug, Clone, Copy)]
pub struct ItemSizes {
    /// One session slot in the per-core slab.
    pub slot_bytes: u64,
    /// Upper bound of one connection task (its future plus the runtime's task header).
    pub connection_task_bytes: u64,
    /// Upper bound of one handshake task (accept to upgrade).
    pub handshake_task_bytes: u64,
    /// One receive buffer.
    pub recv_buffer_bytes: u64,
    /// One entry of a droppable-stream ring (item plus the queue's slot stamp).
    pub ring_entry_bytes: u64,
    /// Metadata of one payload-arena block.
    pub arena_block_meta_bytes: u64,
    /// One spill-index entry with its hash-map slot and closed-queue slot.
    pub spill_index_entry_bytes: u64,
    /// One queued upload job.
    pub upload_job_bytes: u64,
    /// One egress job record (queue slot and boxed work).
    pub egress_job_bytes: u64,
    /// One entry of a speaker-sample delay queue.
    pub delay_entry_bytes: u64,
}

/// What one HTTP request in flight costs the client beyond its body (connection buffers, the
/// request task, TLS state): an estimate, measured well below this on loopback.
pub const EGRESS_REQUEST_OVERHEAD_BYTES_ESTIMATE: u64 = 64 * 1024;

/// Largest droppable item: an audio item of the longest accumulation at 48 kHz, plus the frame
/// that crossed the threshold and its tag byte.
pub fn egress_item_bytes_max(config: &Config) -> u64 {
    let seconds = u64::from(
        config
            .webhook_audio_delay_s_max
            .max(crate::session::APP_AUDIO_SECONDS),
    );
    seconds * audio_bytes_per_second_max() + config.message_bytes_max as u64 + 1
}

/// Bytes of one second of audio at the highest sample rate a session accepts (PCM16 mono).
fn audio_bytes_per_second_max() -> u64 {
    u64::from(SAMPLE_RATE_HZ_MAX * PCM_BYTES_PER_SAMPLE)
}

/// Largest batch: [`BATCH_AUDIO_SECONDS`] of audio at the highest sample rate, plus the frame that
/// crossed the limit (a batch closes after the append that reaches it).
pub fn batch_bytes_max(max_message_bytes: usize) -> u64 {
    u64::from(BATCH_AUDIO_SECONDS) * audio_bytes_per_second_max() + max_message_bytes as u64
}

/// One structure of the budget: how many there are at most, and the bytes of each.
#[derive(Debug, Clone)]
pub struct BudgetLine {
    /// What the structure is, as `pusher budget` prints it.
    pub name: &'static str,
    /// How many, over all workers (or process-wide).
    pub count: u64,
    /// Bytes of one.
    pub item_bytes: u64,
}

impl BudgetLine {
    /// `count × item_bytes`.
    pub fn bytes(&self) -> u64 {
        self.count * self.item_bytes
    }
}

/// The worst-case memory of a configuration, line by line (`pusher_memory_budget_bytes` is its
/// total).
#[derive(Debug, Clone)]
pub struct Budget {
    /// Worker threads the budget is for.
    pub workers: u64,
    /// Session slots per worker the budget is for.
    pub sessions_per_core: u64,
    /// Every structure whose count and size the config fixes.
    pub lines: Vec<BudgetLine>,
}

impl Budget {
    /// The worst case for `workers` cores with `sessions_per_core` slots each.
    pub fn compute(
        config: &Config,
        workers: usize,
        sessions_per_core: usize,
        sizes: ItemSizes,
    ) -> Budget {
        let w = workers as u64;
        let sessions = w * sessions_per_core as u64;
        let ring_entries_per_session =
            (config.transcript_ring_capacity + config.audio_bytes_ring_capacity) as u64;
        let shares = crate::egress::job::CoreShares::of(config, workers);
        let line = |name, count, item_bytes| BudgetLine {
            name,
            count,
            item_bytes,
        };
        let lines = vec![
            line("session slots", sessions, sizes.slot_bytes),
            line("connection tasks", sessions, sizes.connection_task_bytes),
            line(
                "receive buffers",
                w * config.recv_buffers_per_core as u64,
                sizes.recv_buffer_bytes,
            ),
            line(
                "handshake tasks",
                w * config.handshake_buffers_per_core as u64,
                sizes.handshake_task_bytes,
            ),
            line(
                "request-head scratch buffers",
                w,
                config.request_header_bytes_max as u64,
            ),
            line(
                "payload arenas",
                w,
                config.payload_arena_bytes_per_core as u64,
            ),
            line(
                "payload arena block metadata",
                w * config.payload_blocks_per_core_max as u64,
                sizes.arena_block_meta_bytes,
            ),
            line(
                "droppable-stream rings",
                sessions * ring_entries_per_session,
                sizes.ring_entry_bytes,
            ),
            line(
                "audio accumulators",
                w,
                config.audio_accumulator_bytes_per_core as u64,
            ),
            line(
                "outbound pending bytes",
                w,
                config.outbound_pending_bytes_per_core as u64,
            ),
            line(
                "spill hand-off rings",
                w,
                config.spill_handoff_bytes_per_core as u64,
            ),
            line(
                "spill index entries",
                config.spill_batches_max as u64,
                sizes.spill_index_entry_bytes,
            ),
            line(
                "spill writer confirmations",
                crate::spill::writer::CONFIRMATIONS_MAX as u64,
                crate::spill::writer::CONFIRMATION_BYTES as u64,
            ),
            line(
                "upload queue",
                config.spill_batches_max as u64,
                sizes.upload_job_bytes,
            ),
            line(
                "upload body buffers",
                config.upload_concurrency as u64,
                (config.upload_buffer_bytes as u64).max(
                    batch_bytes_max(config.message_bytes_max)
                        + crate::upload::crypto::BLOB_OVERHEAD_BYTES as u64,
                ),
            ),
            line(
                "egress job records",
                w * shares.jobs() as u64,
                sizes.egress_job_bytes,
            ),
            line(
                "egress requests (client, est.)",
                w * shares.jobs() as u64,
                EGRESS_REQUEST_OVERHEAD_BYTES_ESTIMATE,
            ),
            line(
                "egress payloads (item+3 bodies)",
                4,
                config.egress_in_flight_bytes_max as u64 + w * egress_item_bytes_max(config),
            ),
            line(
                "webhook answers read",
                w * shares.deliveries as u64,
                config.egress_response_bytes_max as u64,
            ),
            line(
                "process calls (104, answer, 201)",
                w * shares.processes as u64,
                config.process_payload_bytes_max as u64
                    + 2 * config.processor_response_bytes_max as u64,
            ),
            line(
                "speaker-sample delay queues",
                w * config.speaker_sample_queue_per_core as u64,
                sizes.delay_entry_bytes,
            ),
            line(
                "speaker-sample arenas (bodies)",
                w * config.speaker_sample_queue_per_core as u64,
                crate::egress::delay::BODY_BYTES_PER_ENTRY as u64 + sizes.arena_block_meta_bytes,
            ),
            line(
                "settings cache (http source)",
                u64::from(config.settings_url.is_some()),
                2 * config.settings_cache_bytes_max,
            ),
        ];
        Budget {
            workers: w,
            sessions_per_core: sessions_per_core as u64,
            lines,
        }
    }

    /// The sum of every line's bytes.
    pub fn total_bytes(&self) -> u64 {
        self.lines.iter().map(BudgetLine::bytes).sum()
    }

    /// One short line for the start-up log: the total and the largest structures; the full
    /// table is `pusher budget`'s output.
    pub fn summary(&self) -> String {
        const LARGEST_SHOWN: usize = 3;
        let mut largest: Vec<&BudgetLine> = self.lines.iter().collect();
        largest.sort_by_key(|line| std::cmp::Reverse(line.bytes()));
        let parts: Vec<String> = largest
            .iter()
            .take(LARGEST_SHOWN)
            .map(|line| format!("{} {:.1} MiB", line.name, mib(line.bytes())))
            .collect();
        format!(
            "memory budget {:.1} MiB for {} workers x {} session slots (largest: {}); \
             `pusher budget` prints every line",
            mib(self.total_bytes()),
            self.workers,
            self.sessions_per_core,
            parts.join(", ")
        )
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "memory budget: {} workers x {} session slots",
            self.workers, self.sessions_per_core
        )?;
        writeln!(
            f,
            "{:<30} {:>12} {:>12} {:>12}",
            "structure", "count", "bytes each", "MiB"
        )?;
        for line in &self.lines {
            writeln!(
                f,
                "{:<30} {:>12} {:>12} {:>12.1}",
                line.name,
                line.count,
                line.item_bytes,
                mib(line.bytes())
            )?;
        }
        writeln!(
            f,
            "{:<30} {:>12} {:>12} {:>12.1}",
            "total",
            "",
            "",
            mib(self.total_bytes())
        )?;
        write!(
            f,
            "plus fixed overhead (code, runtime, thread stacks): about {:.0} MiB",
            mib(FIXED_OVERHEAD_BYTES_ESTIMATE)
        )
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: ItemSizes = ItemSizes {
        slot_bytes: 512,
        connection_task_bytes: 1024,
        handshake_task_bytes: 4096,
        recv_buffer_bytes: 1 << 20,
        ring_entry_bytes: 24,
        arena_block_meta_bytes: 32,
        spill_index_entry_bytes: 400,
        upload_job_bytes: 300,
        egress_job_bytes: 200,
        delay_entry_bytes: 40,
    };

    #[test]
    fn the_log_summary_is_one_short_line_with_the_total() {
        let config = Config::default();
        let budget = Budget::compute(&config, 2, 1000, SIZES);
        let summary = budget.summary();
        assert!(!summary.contains('\n'), "{summary}");
        assert!(summary.len() < 300, "{} chars: {summary}", summary.len());
        let total = format!("{:.1} MiB", mib(budget.total_bytes()));
        assert!(summary.contains(&total), "{summary}");
    }

    #[test]
    fn total_is_the_sum_of_count_times_size() {
        let config = Config::default();
        let budget = Budget::compute(&config, 2, 100, SIZES);
        let sessions = 200u64;
        let expected = sessions * 512
            + sessions * 1024
            + 2 * 64 * (1 << 20)
            + 2 * 1024 * 4096
            + 2 * 8192
            + 2 * (32 << 20)
            + 2 * 65_536 * 32
            + sessions * 70 * 24
            + 2 * (64 << 20)
            + 2 * (8 << 20)
            + 2 * (16 << 20)
            + 100_000 * 400
            + crate::spill::writer::CONFIRMATIONS_MAX as u64
                * crate::spill::writer::CONFIRMATION_BYTES as u64
            + 100_000 * 300
            + 32 * (5_760_000 + (1 << 20) + 32)
            + 2 * (256 + 512 + 1024) * 200
            + 2 * (256 + 512 + 1024) * 65_536
            + 4 * ((64 << 20) + 2 * (30 * 96_000 + (1 << 20) + 1))
            + 2 * 256 * 65_536
            + 2 * 512 * (65_536 + 2 * 32_768)
            + 2 * 4096 * 40
            + 2 * 4096 * (1024 + 32);
        assert_eq!(budget.total_bytes(), expected);
        let text = budget.to_string();
        assert!(text.contains("receive buffers"), "{text}");
    }

    #[test]
    fn budget_scales_with_the_config() {
        let mut config = Config::default();
        let small = Budget::compute(&config, 1, 10, SIZES).total_bytes();
        config.recv_buffers_per_core *= 2;
        let larger = Budget::compute(&config, 1, 10, SIZES).total_bytes();
        assert_eq!(larger - small, 64 * (1 << 20));
    }
}
