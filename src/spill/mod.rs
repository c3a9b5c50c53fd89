//! The durable private-cloud audio log (spill log): append-only segment files under
//! `<data_dir>/spill/`, written by a dedicated writer thread, read back by the uploader.
//!
//! - [`record`]: the on-disk format (segment header, records with CRC-32C and a `prev` chain).
//! - [`disk`]: the file operations the log uses, behind a trait (real or simulated disk).
//! - [`clock`]: monotonic and wall-clock milliseconds, behind a trait.
//! - [`lock`]: one process per data directory (`flock` on `pusher.lock`).
//! - [`index`]: the batch index, fed records in log order.
//! - [`scan`]: segment file names, listing, and scanning a segment for its valid records.
//! - [`recovery`]: rebuilding the index from the segments at start.
//! - [`reader`]: reading a batch's audio back by walking its chain.
//! - [`inspect`]: `pusher spill inspect`, a read-only report.
//! - [`handoff`]: the bounded ring from each core to the writer.
//! - [`writer`]: the writer thread (group commit, rotation, disk budget, segment deletion).
//! - [`metrics`]: the `pusher_spill_*` metrics.
//!
//! Boundary: this module knows nothing of the uploader; `crate::audio_log` wires the log to it
//! (start-up, the upload drain, `pusher spill drain`).

pub mod clock;
pub mod disk;
pub mod handoff;
pub mod index;
#[cfg(feature = "server")]
pub mod inspect;
pub mod lock;
pub mod metrics;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod scan;
#[cfg(test)]
mod test_log;
pub mod writer;
