//! The I/O layer: one monoio worker per core, each with its own SO_REUSEPORT listener, session
//! slab, buffer pools and payload arena. Everything protocol-shaped is delegated to the sans-I/O
//! modules (`http`, `websocket`, `protocol`, `session`); this layer moves bytes, keeps time and
//! enforces the per-core bounds.
//!
//! Layers, bottom up (a file imports only from files below it): `pool`, `task`, `parked`,
//! `outbound`, `handshake_slots`, `driver`, `shared` → `streams` → `slots` → `core_egress` →
//! `core` → `delivery` → `outputs` → `connection`, `endpoints` → `handshake` → `worker`,
//! `shutdown` → this file (the facade `crate::app` starts them through).
//!
//! Invariant: no file I/O and no blocking call ever runs on a worker thread (under the epoll
//! driver it would stall every socket of the core); all per-core memory is allocated when the
//! worker starts.

mod connection;
mod core;
mod core_egress;
mod delivery;
pub mod driver;
mod endpoints;
mod handshake;
mod handshake_slots;
mod outbound;
mod outputs;
mod parked;
pub mod pool;
mod shared;
mod shutdown;
mod slots;
mod streams;
mod task;
mod worker;

pub use core_egress::new_link as egress_link;
pub use shared::{DrainState, Shared};
pub use shutdown::wait_for_signals;
pub use worker::{bind_listeners, start as start_workers};

use crate::budget::ItemSizes;
use crate::config::Config;
use crate::websocket::codec::Decoder;

/// The sizes of the per-core items the memory budget counts.
pub fn item_sizes(config: &Config) -> ItemSizes {
    let limits = config.decoder_limits();
    ItemSizes {
        // A slot, and its possible entry in the core's queue of sessions waiting for spill room.
        slot_bytes: (slots::SLOT_BYTES + core::SPILL_WAITER_BYTES) as u64,
        connection_task_bytes: connection::TASK_BYTES_MAX as u64,
        handshake_task_bytes: handshake::HANDSHAKE_TASK_BYTES_MAX as u64,
        recv_buffer_bytes: Decoder::buffer_bytes_required(limits) as u64,
        ring_entry_bytes: streams::RING_ENTRY_BYTES as u64,
        arena_block_meta_bytes: crate::payload::BLOCK_META_BYTES as u64,
        spill_index_entry_bytes: crate::spill::index::ENTRY_BYTES as u64,
        upload_job_bytes: std::mem::size_of::<crate::upload::UploadJob>() as u64,
        egress_job_bytes: crate::egress::job::JOB_BYTES as u64,
        delay_entry_bytes: crate::egress::delay::entry_bytes::<crate::payload::Handle>() as u64,
    }
}
