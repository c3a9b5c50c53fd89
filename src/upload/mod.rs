//! Private-cloud audio uploads (docs/downstream.md §2): closed batches read back from the spill log
//! are stored in the configured object store, encrypted for users whose data protection level is
//! `enhanced`, retried forever with capped backoff, and reported back once the store confirms.
//!
//! Pieces, from pure to I/O:
//! - [`crypto`] holds the backend's encryption format (HKDF-SHA256 key per user, AES-256-GCM blob);
//! - [`object_key`] names objects `chunks/{uid}/{conversation}/{timestamp}.bin|.enc`;
//! - [`backoff`] is the capped exponential backoff with equal jitter;
//! - [`store`] opens the object store named by `--store` (`file://`, `s3://`, `gs://`, `az://`);
//! - [`uploader`] runs the upload thread (a small tokio runtime; object_store needs tokio), fed
//!   through a bounded queue by [`UploaderHandle::submit`].
//!
//! Invariant: a job handed to [`UploaderHandle::submit`] and accepted is never dropped by the
//! uploader while it runs: it is retried until the store confirms it, and only then is
//! [`BatchSource::uploaded`] called. A job cut short by shutdown stays in the spill log and is
//! uploaded again by the next process (an upload is idempotent: same key, same audio).

pub mod backoff;
mod body;
pub mod crypto;
mod health;
pub mod job;
pub mod metrics;
pub mod notifier;
pub mod object_key;
pub mod store;
pub mod uploader;

pub use job::{BatchSource, UploadJob};
pub use metrics::UploadMetrics;
pub use uploader::{UploaderHandle, start};

pub use crate::spill::index::BatchKey;
