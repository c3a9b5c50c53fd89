//! Periodic sampling in the background of a scenario: a task takes one sample per period
//! (the first at once) until it is finished, and hands back every sample with its time.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// A running sampler of `T`.
pub struct Sampler<T> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<(Instant, T)>>,
}

impl<T: Send + 'static> Sampler<T> {
    /// Calls `sample` every `every` (a late tick is skipped, not caught up); a sample of `None`
    /// (a failed reading) is not kept.
    pub fn start<F, Fut>(every: Duration, mut sample: F) -> Sampler<T>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Option<T>> + Send,
    {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {
                        if let Some(value) = sample().await {
                            samples.push((Instant::now(), value));
                        }
                    }
                }
            }
            samples
        });
        Sampler { stop, task }
    }

    /// Stops sampling and returns the samples, oldest first.
    pub async fn finish(self) -> Vec<(Instant, T)> {
        // The task may have ended already (it only ends when stopped, or by a panic).
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn samples_every_period_and_drops_failed_readings() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let sampler = Sampler::start(Duration::from_millis(100), move || {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            async move { (n % 3 != 2).then_some(n) }
        });
        tokio::time::sleep(Duration::from_millis(950)).await;
        let samples = sampler.finish().await;
        assert_eq!(calls.load(Ordering::Relaxed), 10, "at 0, 100, ..., 900 ms");
        let values: Vec<u32> = samples.iter().map(|&(_, v)| v).collect();
        assert_eq!(values, [0, 1, 3, 4, 6, 7, 9]);
        assert!(samples.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
