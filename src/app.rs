//! The composition root: resolves the configuration on this machine (workers, CPUs, session
//! slots, the memory budget), then starts every part in order — the data directory's lock,
//! egress, the object store, the spill log and its uploader, the workers — and waits for the
//! shutdown. Nothing below imports this module.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use crate::audio_log::SpillLog;
use crate::budget::Budget;
use crate::config::Config;
use crate::cpus::{CpuPlan, Machine};
use crate::egress::{self, EgressMetrics};
use crate::metrics::Metrics;
use crate::server::{self, DrainState, Shared, driver};
use crate::settings::{HttpSettings, SettingsFile, SettingsSource};
use crate::spill::metrics::SpillMetrics;
use crate::upload::crypto::{EncryptionSecret, SECRET_ENV};
use crate::upload::{self, UploadMetrics};

/// Descriptors for listeners, runtimes, logs, spill segments and idle pooled HTTP connections.
const FD_RESERVE_FIXED: u64 = 64;

/// File descriptors kept out of the session cap, so that accept never meets EMFILE however
/// many sessions are open: the fixed reserve; one per connection that may be mid-handshake
/// (two when it may fetch its settings over HTTP meanwhile); one per outbound call that may be
/// in flight (deliveries, process calls when a processor is set, uploads).
fn fd_reserve(config: &Config, workers: usize) -> u64 {
    let per_handshake = if config.settings_url.is_some() { 2 } else { 1 };
    let handshakes = (workers * config.handshake_buffers_per_core * per_handshake) as u64;
    let process_calls = if config.processor_url.is_some() {
        config.processor_in_flight_max
    } else {
        0
    };
    let outbound = (config.egress_in_flight_max + process_calls + config.upload_concurrency) as u64;
    FD_RESERVE_FIXED + handshakes + outbound
}

/// What a config resolves to on this machine: workers and their CPUs, session slots and the
/// memory budget.
pub struct Plan {
    /// Worker threads (one per core; from the CPU plan).
    pub workers: usize,
    /// How many workers and where each is pinned.
    pub cpus: CpuPlan,
    /// The CPU facts the plan was made from.
    pub machine: Machine,
    /// Session slots per worker: `max_sessions_per_core`, capped by the open-files hard limit less
    /// the descriptors kept for other uses.
    pub sessions_per_core: usize,
    /// The open-files hard limit (RLIMIT_NOFILE), which the soft limit is raised to.
    pub open_files_limit: u64,
    /// The worst-case memory of this plan.
    pub budget: Budget,
}

/// Resolves workers, caps sessions by the open-files hard limit, and computes the budget.
pub fn plan(config: &Config) -> Plan {
    let machine = Machine::read();
    let cpus = crate::cpus::plan(config.workers, config.pin, &machine);
    let workers = cpus.workers;
    let open_files_limit = open_files_limits().1;
    let by_files = open_files_limit.saturating_sub(fd_reserve(config, workers)) / workers as u64;
    let sessions_per_core = config.sessions_per_core_max.min(by_files.max(1) as usize);
    let budget = Budget::compute(
        config,
        workers,
        sessions_per_core,
        server::item_sizes(config),
    );
    Plan {
        workers,
        cpus,
        machine,
        sessions_per_core,
        open_files_limit,
        budget,
    }
}

/// (soft, hard) RLIMIT_NOFILE.
fn open_files_limits() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the provided struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return (1024, 1024);
    }
    (limit.rlim_cur, limit.rlim_max)
}

/// Raises the soft open-files limit to the hard limit.
fn raise_open_files_limit() -> std::io::Result<u64> {
    let (_, hard) = open_files_limits();
    let limit = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the provided struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(hard)
}

/// A panic anywhere (a broken invariant) takes the whole process down rather than leaving a
/// worker dead and its sessions stuck; the spill log keeps every written record for the next
/// start.
fn abort_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}; aborting");
        default_hook(info);
        std::process::abort();
    }));
}

/// Why the server could not start or stopped: the operator's configuration (exit 2), or the
/// machine and its environment at run time (exit 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fatal {
    /// Usage, options, the settings file, the store URL, a missing secret…: exit 2.
    Config(String),
    /// The data directory held or not writable, the address taken, a thread that cannot start…:
    /// exit 1.
    Runtime(String),
}

impl Fatal {
    /// The one-line message printed on stderr.
    pub fn message(&self) -> &str {
        match self {
            Fatal::Config(message) | Fatal::Runtime(message) => message,
        }
    }

    /// The process exit code: 2 for usage and configuration, 1 for run time.
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Config(_) => 2,
            Fatal::Runtime(_) => 1,
        }
    }
}

/// Runs the server until drained (SIGTERM) or killed.
pub fn run(config: Config) -> Result<(), Fatal> {
    abort_on_panic();
    // One process owns a data directory (its spill log): held until this function returns.
    let _data_dir_lock = crate::spill::lock::DataDirLock::acquire(&config.data_dir).map_err(
        |error| match error {
            // The option names a place that cannot be a directory: configuration.
            crate::spill::lock::LockError::Create { .. } => Fatal::Config(error.to_string()),
            _ => Fatal::Runtime(error.to_string()),
        },
    )?;
    match raise_open_files_limit() {
        Ok(limit) => tracing::info!(
            open_files_limit = limit,
            "raised the soft open-files limit to the hard limit"
        ),
        Err(err) => tracing::warn!("could not raise the open-files limit: {err}"),
    }
    let plan = plan(&config);
    let (driver, why) = driver::resolve(config.driver).map_err(Fatal::Config)?;
    tracing::info!(
        driver = driver.label(),
        "io driver: {}: {why}",
        driver.label()
    );
    let settings = match (&config.settings, &config.settings_url) {
        (_, Some(url)) => SettingsSource::Http(Arc::new(HttpSettings::new(
            url,
            std::time::Duration::from_millis(config.settings_cache_ttl_ms),
            config.settings_cache_entries_max,
            config.settings_cache_bytes_max,
        ))),
        (Some(path), None) => {
            SettingsSource::File(SettingsFile::load(path).map_err(Fatal::Config)?)
        }
        (None, None) => SettingsSource::File(SettingsFile::defaults_only()),
    };
    tracing::info!(
        workers = plan.workers,
        usable_cpus = plan.machine.usable,
        affinity = ?plan.machine.mask,
        pins = ?plan.cpus.pins,
        "workers: {}; {}",
        plan.workers,
        plan.cpus.reason
    );
    if plan.workers > plan.machine.usable {
        tracing::warn!(
            workers = plan.workers,
            usable_cpus = plan.machine.usable,
            "more workers than the CPUs this process may use: they will share CPUs"
        );
    }
    tracing::info!(
        workers = plan.workers,
        sessions_per_core = plan.sessions_per_core,
        open_files_limit = plan.open_files_limit,
        "session slots capped by sessions_per_core_max and the open-files limit"
    );
    tracing::info!(
        budget_bytes = plan.budget.total_bytes(),
        "{}",
        plan.budget.summary()
    );
    if config.test_echo_route {
        tracing::warn!("TEST ONLY: the echo route /test/echo is enabled");
    }
    let secret = EncryptionSecret::from_env().map_err(Fatal::Config)?;
    match &secret {
        Some((secret, name)) if secret.is_public_dev_secret() => tracing::warn!(
            source = name,
            "{name} is the public development secret of `make run`: anything it encrypts is \
             readable by anyone; set a secret of your own outside development"
        ),
        Some((_, name)) => tracing::info!(source = name, "encryption secret from {name}"),
        None if settings.may_encrypt() => {
            return Err(Fatal::Config(format!(
                "{SECRET_ENV} (or {}) is not set, but private-cloud audio of users at data \
                 protection level `enhanced` (the default) must be encrypted with it (at least 32 \
                 bytes); set it, or set every user's private_cloud_sync_enabled = false or level \
                 standard/e2ee",
                crate::config::omi::ENCRYPTION_SECRET
            )));
        }
        None => tracing::info!("no encryption secret: no user stores audio at level enhanced"),
    }
    let secret = secret.map(|(secret, _)| secret);
    if config.metrics_token.is_some() {
        tracing::info!(
            source = %config.origins.metrics_token,
            "/metrics and /debug/memory need the bearer token (from {})",
            config.origins.metrics_token
        );
    }
    let mut metrics = Metrics::new(driver.label(), plan.workers);
    metrics.budget_bytes.set(plan.budget.total_bytes() as i64);
    let spill_metrics = SpillMetrics::register(metrics.registry_mut());
    let upload_metrics = UploadMetrics::register(metrics.registry_mut());
    let egress_metrics = EgressMetrics::register(metrics.registry_mut());
    let egress_links: Vec<_> = (0..plan.workers)
        .map(|_| server::egress_link(&config, plan.workers))
        .collect();
    let _egress = egress::runtime::start(
        &config,
        egress_links.clone(),
        egress_metrics.clone(),
        settings.http().cloned(),
    )
    .map_err(Fatal::Runtime)?;
    let opened = upload::store::open_configured(&config).map_err(Fatal::Config)?;
    tracing::info!(
        store = %opened.location,
        source = %match config.origins.store {
            crate::config::omi::Origin::Unset => "the default under data_dir".to_string(),
            origin => origin.to_string(),
        },
        credentials = opened.credentials,
        "object store {} (credentials: {})",
        opened.location,
        opened.credentials
    );
    let store = opened.store;
    let spill = SpillLog::start(&config, plan.workers, spill_metrics, |source| {
        upload::start(
            &config,
            store,
            secret,
            source,
            upload_metrics.clone(),
            config.spill_batches_max,
        )
    })
    .map_err(Fatal::Runtime)?;
    let shared = Arc::new(Shared {
        config,
        metrics,
        settings,
        driver,
        sessions_per_core: plan.sessions_per_core,
        budget: plan.budget,
        drain: DrainState::new(),
        sessions_open: AtomicUsize::new(0),
        spill,
        uploads: upload_metrics,
        egress_links,
        egress_metrics,
    });
    let listeners = server::bind_listeners(&shared, plan.workers).map_err(Fatal::Runtime)?;
    tracing::info!(listen = %shared.config.listen, "listening");
    let workers =
        server::start_workers(&shared, listeners, plan.cpus.pins).map_err(Fatal::Runtime)?;
    server::wait_for_signals(&shared, workers).map_err(Fatal::Runtime)
}
