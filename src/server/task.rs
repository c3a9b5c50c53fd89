//! Spawning a task whose size the budget counts.

use std::future::Future;
use std::sync::Once;

/// Bytes monoio adds around a spawned future (header, scheduler links, output slot).
pub const TASK_HEADER_BYTES: usize = 128;

/// Spawns `task` on this core's runtime after checking that it and its header fit
/// `task_bytes_max` (the budget's figure for it); `what` names it in the one log line that
/// reports its size (`logged` makes it one).
pub fn spawn_bounded<F>(task: F, task_bytes_max: usize, what: &'static str, logged: &'static Once)
where
    F: Future + 'static,
    F::Output: 'static,
{
    let task_bytes = std::mem::size_of_val(&task);
    logged.call_once(|| {
        tracing::info!(task_bytes, task_bytes_max, "{what} task size");
    });
    assert!(
        task_bytes + TASK_HEADER_BYTES <= task_bytes_max,
        "{what} task is {task_bytes} bytes + {TASK_HEADER_BYTES} of header, over its bound \
         ({task_bytes_max}): raise the bound"
    );
    monoio::spawn(task);
}
