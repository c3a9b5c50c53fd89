//! pusher: a thread-per-core WebSocket fan-out server for the Omi transcription service.
//!
//! See ARCHITECTURE.md for the bird's-eye view and the code map. Without the default `server`
//! feature only the sans-I/O core is built (for the fuzz targets).

#![warn(missing_docs)]

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod audio_log;
#[cfg(feature = "server")]
pub mod budget;
#[cfg(feature = "server")]
pub mod config;
pub mod connection;
#[cfg(feature = "server")]
pub mod cpus;
pub mod drain;
#[cfg(feature = "server")]
pub mod egress;
pub mod http;
pub mod id;
pub mod mapped;
#[cfg(feature = "server")]
pub mod memory;
pub mod metrics;
#[cfg(feature = "server")]
pub mod payload;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
pub mod session;
pub mod settings;
pub mod sim;
pub mod spill;
#[cfg(feature = "server")]
pub mod upload;
pub mod websocket;
