//! What the uploader takes: an [`UploadJob`] per closed batch, and the [`BatchSource`] it reads
//! the batch's audio from and confirms the upload to (the spill log implements it).

use super::object_key::{object_key, partial_object_key};
use crate::id::Id;
use crate::settings::DataProtectionLevel;
use crate::spill::index::BatchKey;

/// One closed batch to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadJob {
    /// The batch in the spill log (run and batch id).
    pub key: BatchKey,
    /// The batch's user.
    pub uid: Id,
    /// The batch's conversation.
    pub conversation: Id,
    /// The batch's first-frame timestamp, epoch seconds.
    pub timestamp: f64,
    /// The session's sample rate in Hz.
    pub sample_rate_hz: u32,
    /// The user's data protection level when the batch opened: `.enc` (encrypted) or `.bin`.
    pub level: DataProtectionLevel,
    /// Audio bytes the batch holds (a hint for the read buffer; the read decides).
    pub audio_bytes: u64,
    /// Records of the batch were lost to damage in the log: stored under its `.partial` key.
    pub partial: bool,
}

impl UploadJob {
    /// Where the batch is stored.
    pub fn object_key(&self) -> String {
        if self.partial {
            partial_object_key(&self.uid, &self.conversation, self.timestamp, self.level)
        } else {
            object_key(&self.uid, &self.conversation, self.timestamp, self.level)
        }
    }
}

/// Where batches come from and where their confirmation goes (the spill log).
pub trait BatchSource: Send + Sync + 'static {
    /// Reads the batch's audio, in order, appending to `out` (blocking file I/O; call it via spawn_blocking).
    fn read_audio(&self, job: &UploadJob, out: &mut Vec<u8>) -> std::io::Result<()>;
    /// The store confirmed the upload: record it durably, then call `confirmed` (the batch may
    /// now leave the log; the chunk notification waits for it). `confirmed` is never called if
    /// the log cannot make the record durable (the process then exits).
    ///
    /// Called once per accepted job, on a blocking-pool thread of the uploader.
    fn uploaded(&self, job: &UploadJob, confirmed: Box<dyn FnOnce() + Send>);
}
