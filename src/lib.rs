//! pusher: a thread-per-core WebSocket fan-out server for the Omi transcription service.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the code map.

pub mod budget;
pub mod config;
pub mod connection;
pub mod cpus;
pub mod drain;
pub mod egress;
pub mod http;
pub mod id;
pub mod mapped;
pub mod memory;
pub mod metrics;
pub mod payload;
pub mod protocol;
pub mod server;
pub mod session;
pub mod settings;
pub mod sim;
pub mod spill;
pub mod upload;
pub mod websocket;
