//! What crosses between a core and the egress thread: owned jobs one way, completions the other,
//! through one [`Link`] per core (two bounded `ArrayQueue`s and a wake-up each way).
//!
//! Invariants: a core only submits a job when its own counts leave room for it (so the job queue
//! never refuses a counted job), and every job that is not a settings fetch yields exactly one
//! completion, so the completion queue (as large as the counted jobs) never overflows. A job
//! owns everything it needs: the egress thread never touches core memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use tokio_util::sync::CancellationToken;

use crate::id::Id;
use crate::metrics::Stream;
use crate::settings::UserSettings;

/// One core's shares of the global egress bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreShares {
    /// Deliveries in flight (transcripts, audio items, speaker samples).
    pub deliveries: usize,
    /// Payload bytes those deliveries hold (passed by at most one item).
    pub bytes: usize,
    /// Process-conversation calls in flight.
    pub processes: usize,
    /// Settings fetches in flight (one per handshake at most).
    pub settings_fetches: usize,
}

impl CoreShares {
    /// Each of `workers` cores' share of the configured totals: `egress_in_flight_max` and
    /// `processor_in_flight_max` rounded up (at least 1), `egress_in_flight_bytes_max` rounded down
    /// (at least 1 byte); settings fetches are bounded by the core's handshake slots.
    pub fn of(config: &crate::config::Config, workers: usize) -> CoreShares {
        let share = |total: usize| total.div_ceil(workers).max(1);
        CoreShares {
            deliveries: share(config.egress_in_flight_max),
            bytes: (config.egress_in_flight_bytes_max / workers).max(1),
            processes: share(config.processor_in_flight_max),
            settings_fetches: config.handshake_buffers_per_core,
        }
    }

    /// Jobs the core may have queued or running at once.
    pub fn jobs(&self) -> usize {
        self.deliveries + self.processes + self.settings_fetches
    }

    /// Jobs that report a completion.
    pub fn completions(&self) -> usize {
        self.deliveries + self.processes
    }
}

/// Bytes of one job record: the queue slot and its boxed work.
pub const JOB_BYTES: usize = std::mem::size_of::<Job>() + std::mem::size_of::<Work>();

/// A slot on the submitting core: (key, generation) names one session, even after the key is
/// reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The session's slot key on its core (reused after the session ends).
    pub key: usize,
    /// The slot's generation when the job was made: tells a later session in the same slot apart.
    pub generation: u32,
}

/// What egress needs to know about a session, shared by all its jobs; created on its first job.
#[derive(Debug)]
pub struct SessionContext {
    /// The session's user.
    pub uid: Id,
    /// The session's sample rate in Hz (`sample_rate` of audio requests, docs/downstream.md §1).
    pub sample_rate_hz: u32,
    /// The user's settings snapshot taken at the upgrade: the targets of the session's items.
    pub settings: Arc<UserSettings>,
    /// Cancelled when the session ends: its process calls in flight are dropped. (Deliveries
    /// in flight finish within their timeouts; items still queued are discarded.)
    pub cancel: CancellationToken,
}

/// Which consumer an audio item is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioTarget {
    /// Every app with the `audio_bytes` trigger.
    Apps,
    /// The user's audio-bytes webhook.
    Webhook,
}

/// What a job asks egress to do.
pub enum Work {
    /// One transcript item, to every transcript target of the session.
    Transcript {
        /// The 102's `memory_id`, else the session's current conversation, else none (sent to
        /// global hooks only, docs/downstream.md §1).
        conversation: Option<Id>,
        /// The 102's `segments` array, as JSON text byte for byte.
        segments: String,
    },
    /// One audio item.
    Audio {
        /// The consumer the item is for.
        target: AudioTarget,
        /// The accumulated PCM16 LE audio: the request body.
        pcm: Vec<u8>,
    },
    /// A process-conversation call; its completion carries the 201.
    Process {
        /// The 104's `conversation_id`.
        conversation: Id,
        /// The 104's whole JSON object (the body, docs/downstream.md §3).
        payload: String,
    },
    /// A due speaker-sample request (its session may be gone).
    SpeakerSample {
        /// The JSON body, built when the 105 arrived (docs/downstream.md §4).
        body: Vec<u8>,
    },
    /// A user's settings from the `http` source; answered through `reply`, not a completion.
    Settings {
        /// The user whose settings to fetch (`GET {settings_url}/{uid}`).
        uid: Id,
        /// Where the settings, or the reason they could not be fetched, go.
        reply: futures_channel::oneshot::Sender<Result<Arc<UserSettings>, String>>,
    },
}

/// One unit of work for the egress thread, owning all its data.
pub struct Job {
    /// The session (slot and generation) the job belongs to; its completion goes back to it.
    pub ticket: Ticket,
    /// The session's context; `None` for jobs that outlive their session.
    pub session: Option<Arc<SessionContext>>,
    /// Boxed: a queue slot stays small while most slots are empty.
    pub work: Box<Work>,
    /// Bytes the job holds, counted against the core's in-flight byte bound until it completes.
    pub bytes: usize,
}

/// What a completion reports.
#[derive(Debug)]
pub enum Done {
    /// The item of this stream was delivered, dropped or cancelled: the next may start.
    Delivered(Stream),
    /// A process call ended; `reply` is its 201 payload (`None`: cancelled).
    Processed {
        /// The 104's `conversation_id`.
        conversation: Id,
        /// The 201 to send (docs/protocol.md §4); `None`: cancelled with its session.
        reply: Option<Vec<u8>>,
    },
    /// A speaker-sample request ended (sent, dropped or failed): its bytes are released.
    SpeakerSample,
}

/// A finished job, as reported back to its core.
#[derive(Debug)]
pub struct Completion {
    /// The job's ticket: the completion reaches only that session.
    pub ticket: Ticket,
    /// What ended.
    pub done: Done,
    /// The job's byte count, released now.
    pub bytes: usize,
}

/// One core's two queues to and from the egress thread.
pub struct Link {
    jobs: ArrayQueue<Job>,
    completions: ArrayQueue<Completion>,
    /// Wakes the egress thread's dispatcher for this core.
    jobs_ready: tokio::sync::Notify,
    /// Wakes the core's completion pump.
    completions_ready: AtomicWaker,
}

impl Link {
    /// Queues for at most `jobs_max` jobs, `completions_max` of which yield completions.
    pub fn new(jobs_max: usize, completions_max: usize) -> Link {
        Link {
            jobs: ArrayQueue::new(jobs_max.max(1)),
            completions: ArrayQueue::new(completions_max.max(1)),
            jobs_ready: tokio::sync::Notify::new(),
            completions_ready: AtomicWaker::new(),
        }
    }

    /// Hands `job` to the egress thread; gives it back if the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.jobs.push(job)?;
        self.jobs_ready.notify_one();
        Ok(())
    }

    /// Egress side: the next job, if any.
    pub fn next_job(&self) -> Option<Job> {
        self.jobs.pop()
    }

    /// Egress side: waits until a job may be queued.
    pub async fn jobs_ready(&self) {
        self.jobs_ready.notified().await;
    }

    /// Egress side: reports a finished job to its core.
    pub fn complete(&self, completion: Completion) {
        let pushed = self.completions.push(completion);
        assert!(
            pushed.is_ok(),
            "completions never outnumber the counted jobs in flight"
        );
        self.completions_ready.wake();
    }

    /// Core side: the next completion, if any.
    pub fn next_completion(&self) -> Option<Completion> {
        self.completions.pop()
    }

    /// Core side: completes once a completion is queued (no tokio involved: an atomic waker).
    pub fn completion_ready(&self) -> CompletionReady<'_> {
        CompletionReady { link: self }
    }
}

/// The future of [`Link::completion_ready`]: ready once the completion queue is not empty.
pub struct CompletionReady<'a> {
    link: &'a Link,
}

impl Future for CompletionReady<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.link.completions.is_empty() {
            return Poll::Ready(());
        }
        self.link.completions_ready.register(cx.waker());
        if self.link.completions.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}
