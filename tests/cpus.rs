//! Worker count and pinning (`crate::cpus`): under `taskset`, without it, with `--pin`, and
//! under a cgroup CPU quota. The worker threads' allowed CPUs are read from /proc.

mod common;

use common::*;

on_both_drivers!(
    under_taskset_one_worker_is_pinned_to_the_cpu_it_was_given,
    on_the_whole_machine_auto_does_not_pin,
    pin_on_pins_within_the_affinity_mask,
    a_cpu_quota_limits_the_workers_and_nothing_is_pinned,
);

/// CPUs online: the taskset cases need two.
fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1)
}

/// `Cpus_allowed_list` of each worker thread (`pusher-core-N`), by worker index.
fn worker_cpus(pid: u32) -> Vec<String> {
    let mut workers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task list") {
        let task = task.expect("task").path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let Some(index) = name.trim().strip_prefix("pusher-core-") else {
            continue;
        };
        let status = std::fs::read_to_string(task.join("status")).expect("status");
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list")
            .trim()
            .to_owned();
        workers.push((index.parse::<usize>().expect("worker index"), cpus));
    }
    workers.sort();
    workers.into_iter().map(|(_, cpus)| cpus).collect()
}

fn all_cpus() -> String {
    format!("0-{}", online_cpus() - 1)
}

async fn under_taskset_one_worker_is_pinned_to_the_cpu_it_was_given(driver: &str) {
    if online_cpus() < 2 {
        eprintln!("skipped: one CPU online, nothing to choose from");
        return;
    }
    let server =
        Server::start_wrapped(&["taskset", "-c", "1"], driver, &["--workers", "0"], &[]).await;
    assert_eq!(
        worker_cpus(server.pid()),
        ["1"],
        "one worker, on CPU 1 only"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.sum("pusher_sessions_capacity{"),
        metrics.value("pusher_sessions_capacity{core=\"0\"}")
    );
    // Two workers on a one-CPU cpuset: auto does not pin, and nothing leaves the mask.
    let server =
        Server::start_wrapped(&["taskset", "-c", "1"], driver, &["--workers", "2"], &[]).await;
    assert_eq!(worker_cpus(server.pid()), ["1", "1"]);
}

async fn on_the_whole_machine_auto_does_not_pin(driver: &str) {
    let server = Server::start(driver, &["--workers", "0"]).await;
    let cpus = worker_cpus(server.pid());
    assert_eq!(cpus.len(), online_cpus(), "a worker per CPU");
    assert!(cpus.iter().all(|c| *c == all_cpus()), "{cpus:?}");
}

async fn pin_on_pins_within_the_affinity_mask(driver: &str) {
    let server = Server::start(driver, &["--workers", "0", "--pin", "on"]).await;
    let expected: Vec<String> = (0..online_cpus()).map(|c| c.to_string()).collect();
    assert_eq!(worker_cpus(server.pid()), expected);
    if online_cpus() >= 2 {
        let server = Server::start_wrapped(
            &["taskset", "-c", "1"],
            driver,
            &["--workers", "2", "--pin", "on"],
            &[],
        )
        .await;
        assert_eq!(
            worker_cpus(server.pid()),
            ["1", "1"],
            "never CPU 0, outside the mask"
        );
    }
}

/// A cgroup with a CPU quota of half a CPU, or None where this process may not make one.
struct QuotaGroup(std::path::PathBuf);

impl QuotaGroup {
    fn create() -> Option<QuotaGroup> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("pusher-test-{}-{n}", std::process::id());
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let (dir, file, quota) = if v2 {
            (
                std::path::Path::new("/sys/fs/cgroup").join(&name),
                "cpu.max",
                "50000 100000",
            )
        } else {
            (
                std::path::Path::new("/sys/fs/cgroup/cpu").join(&name),
                "cpu.cfs_quota_us",
                "50000",
            )
        };
        std::fs::create_dir_all(&dir).ok()?;
        let group = QuotaGroup(dir);
        std::fs::write(group.0.join(file), quota).ok()?;
        Some(group)
    }
}

impl Drop for QuotaGroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

async fn a_cpu_quota_limits_the_workers_and_nothing_is_pinned(driver: &str) {
    let Some(group) = QuotaGroup::create() else {
        eprintln!(
            "skipped: cannot create a cgroup with a CPU quota here (not root, or no cgroupfs)"
        );
        return;
    };
    let procs = group.0.join("cgroup.procs");
    let enter = format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display());
    let server =
        Server::start_wrapped(&["sh", "-c", &enter], driver, &["--workers", "0"], &[]).await;
    let cpus = worker_cpus(server.pid());
    assert_eq!(cpus.len(), 1, "half a CPU of quota: one worker");
    assert_eq!(cpus, [all_cpus()], "shared CPUs are not pinned");
    drop(server);
}
