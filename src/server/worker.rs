//! Worker threads: one per core, pinned, each running a monoio runtime with its own listener.

use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::Shared;
use super::core::Core;
use super::driver::Driver;

/// Pending connections the kernel may queue per listener before the worker accepts them.
const LISTEN_BACKLOG: i32 = 4096;
/// io_uring submission-queue entries per worker.
const URING_ENTRIES: u32 = 4096;
/// Pause after an accept error such as EMFILE, so a full descriptor table does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Binds one SO_REUSEPORT listener per worker on the configured address (on this thread, so an
/// address in use is a clear start error).
pub fn bind_listeners(shared: &Shared, workers: usize) -> Result<Vec<StdListener>, String> {
    let addr = shared.config.listen;
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

/// Starts the workers; each is pinned to core `index % cores`.
pub fn start(
    shared: &Arc<Shared>,
    listeners: Vec<StdListener>,
) -> Result<Vec<JoinHandle<()>>, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let shared = Arc::clone(shared);
            std::thread::Builder::new()
                .name(format!("pusher-core-{index}"))
                .spawn(move || run_worker(index, index % cores, shared, listener))
                .map_err(|e| format!("cannot start worker {index}: {e}"))
        })
        .collect()
}

fn run_worker(index: usize, cpu: usize, shared: Arc<Shared>, listener: StdListener) {
    if let Err(err) = monoio::utils::bind_to_cpu_set([cpu]) {
        tracing::warn!(
            worker = index,
            cpu,
            "cannot pin worker to its core: {err:?}"
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
    monoio::spawn(Rc::clone(&core).housekeeping());
    monoio::spawn(super::delivery::pump(Rc::clone(&core)));
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => core.spawn_connection(stream),
            Err(err) => {
                tracing::warn!(worker = index, "accept failed: {err}");
                monoio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}
