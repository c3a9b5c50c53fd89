//! Worker threads: one per core, pinned, each running a monoio runtime with its own listener.

use std::net::TcpListener as StdListener;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::core::Core;
use super::delivery;
use super::driver::Driver;
use super::shared::Shared;

/// Pending connections the kernel may queue per listener before the worker accepts them.
const LISTEN_BACKLOG: i32 = 4096;
/// io_uring submission-queue entries per worker.
const URING_ENTRIES: u32 = 4096;
/// Pause after an accept error such as EMFILE, so a full descriptor table does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);
/// At most one accept-error line per worker per this interval.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// While every handshake slot is taken, how often the accept loop looks for a connection
/// waiting in the backlog (and for one to evict).
const EVICTION_LOOK_INTERVAL: Duration = Duration::from_millis(10);

/// Binds one SO_REUSEPORT listener per worker on the configured address (on this thread, so an
/// address in use is a clear start error). First it makes sure nobody listens there yet: a
/// second pusher would otherwise join the first one's SO_REUSEPORT group silently and take a
/// share of its sessions.
pub fn bind_listeners(shared: &Shared, workers: usize) -> Result<Vec<StdListener>, String> {
    let addr = shared.config.listen;
    ensure_address_free(addr)?;
    (0..workers)
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
                .map_err(|e| format!("socket: {e}"))?;
            socket
                .set_reuse_address(true)
                .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
            socket
                .set_reuse_port(true)
                .map_err(|e| format!("SO_REUSEPORT: {e}"))?;
            socket
                .set_nonblocking(true)
                .map_err(|e| format!("O_NONBLOCK: {e}"))?;
            socket
                .bind(&addr.into())
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            socket
                .listen(LISTEN_BACKLOG)
                .map_err(|e| format!("listen on {addr}: {e}"))?;
            Ok(socket.into())
        })
        .collect()
}

/// Binds `addr` once without SO_REUSEPORT: it fails while any socket (another pusher's
/// SO_REUSEPORT listeners included) is bound there.
fn ensure_address_free(addr: std::net::SocketAddr) -> Result<(), String> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| format!("socket: {e}"))?;
    probe
        .set_reuse_address(true)
        .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "cannot listen on {addr}: the address is in use (another pusher, or another \
             program, listens there); one process serves an address"
        )),
        Err(e) => Err(format!("cannot listen on {addr}: {e}")),
    }
}

/// Starts the workers; worker `i` is pinned to `pins[i]` (a CPU of the affinity mask) when the
/// CPU plan pins (`crate::cpus`).
pub fn start(
    shared: &Arc<Shared>,
    listeners: Vec<StdListener>,
    pins: Option<Vec<usize>>,
) -> Result<Vec<JoinHandle<()>>, String> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let shared = Arc::clone(shared);
            let cpu = pins.as_ref().map(|pins| pins[index]);
            std::thread::Builder::new()
                .name(format!("pusher-core-{index}"))
                .spawn(move || run_worker(index, cpu, shared, listener))
                .map_err(|e| format!("cannot start worker {index}: {e}"))
        })
        .collect()
}

fn run_worker(index: usize, cpu: Option<usize>, shared: Arc<Shared>, listener: StdListener) {
    if let Some(cpu) = cpu
        && let Err(err) = monoio::utils::bind_to_cpu_set([cpu])
    {
        tracing::warn!(
            worker = index,
            cpu,
            "cannot pin worker to CPU {cpu}: {err:?}; it runs unpinned"
        );
    }
    match shared.driver {
        Driver::IoUring => {
            let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(URING_ENTRIES)
                .enable_timer()
                .build()
                .expect("io_uring was probed at start");
            runtime.block_on(serve(index, shared, listener));
        }
        Driver::Epoll => {
            let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("epoll runtime");
            runtime.block_on(serve(index, shared, listener));
        }
    }
}

async fn serve(index: usize, shared: Arc<Shared>, listener: StdListener) {
    let listener =
        monoio::net::TcpListener::from_std(listener).expect("listener registers with the driver");
    let core = Rc::new(Core::new(index, shared));
    monoio::spawn(housekeeping(Rc::clone(&core)));
    monoio::spawn(super::delivery::pump(Rc::clone(&core)));
    let mut errors = AcceptErrors::default();
    loop {
        if !core.handshakes.has_room() {
            wait_for_room(&core, listener.as_raw_fd()).await;
            continue;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ticket = core
                    .handshakes
                    .take(stream.as_raw_fd(), Instant::now())
                    .expect("room checked before the accept");
                super::handshake::spawn(Rc::clone(&core), stream, peer, ticket);
            }
            Err(err) => {
                core.shared.metrics.accept_errors.inc();
                errors.log(index, &err);
                monoio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Every handshake slot is taken: new connections wait in the kernel's accept backlog. If one
/// waits there, the oldest silent or stalled handshake is evicted to make room (see
/// `handshake_slots`); then this waits for a free slot or the next look.
async fn wait_for_room(core: &Core, listener_fd: RawFd) {
    if listener_has_pending(listener_fd) {
        core.handshakes
            .evict_oldest(Instant::now(), super::outbound::has_input);
    }
    monoio::select! {
        _ = core.handshakes.room() => {}
        _ = monoio::time::sleep(EVICTION_LOOK_INTERVAL) => {}
    }
}

/// True when a connection waits in the listener's accept backlog.
fn listener_has_pending(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout: poll(2) only reports.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & libc::POLLIN != 0
}

/// Accept failures, logged at most once per [`ACCEPT_ERROR_LOG_INTERVAL`] per worker (with
/// how many were not logged): EMFILE under a descriptor flood repeats every pause.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn log(&mut self, worker: usize, err: &std::io::Error) {
        if let Some(unlogged) = self.should_log(Instant::now()) {
            tracing::warn!(
                worker,
                not_logged_since_last = unlogged,
                "accept failed: {err} (pusher_accept_errors_total counts every one)"
            );
        }
    }

    /// Whether an error at `now` gets its log line; if so, how many were not logged since the
    /// last one.
    fn should_log(&mut self, now: Instant) -> Option<u64> {
        if self
            .last_logged
            .is_some_and(|at| now.duration_since(at) < ACCEPT_ERROR_LOG_INTERVAL)
        {
            self.unlogged += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// How often a worker fires due session deadlines and speaker-sample requests, refreshes its
/// gauges and looks for the drain's close signal: the resolution of every session timer (idle,
/// close handshake, batch age, speaker-sample delay).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(10);

/// The worker's housekeeping task: fires due session deadlines and speaker-sample requests,
/// refreshes gauges and relays the drain's close signal to every open session.
async fn housekeeping(core: Rc<Core>) {
    loop {
        monoio::time::sleep(HOUSEKEEPING_INTERVAL).await;
        let now = core.now_ms();
        core.slots.fire_due(now);
        delivery::send_due_speaker_samples(&core, now);
        core.wake_spill_waiters();
        core.refresh_gauges();
        core.relay_drain_close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_logged_once_per_interval_with_the_count_in_between() {
        // Durability defect 8: "accept failed: Too many open files" was logged every 20 ms
        // per worker.
        let mut errors = AcceptErrors::default();
        let t0 = Instant::now();
        assert_eq!(errors.should_log(t0), Some(0));
        for pause in 1..=499u32 {
            assert_eq!(errors.should_log(t0 + ACCEPT_ERROR_PAUSE * pause), None);
        }
        assert_eq!(
            errors.should_log(t0 + ACCEPT_ERROR_LOG_INTERVAL),
            Some(499),
            "one line per interval, saying how many it did not log"
        );
    }
}
