//! Which CPUs the workers run on: how many workers by default, and whether and where each is
//! pinned.
//!
//! - The default worker count is what the process may use: its affinity mask (`taskset`, a
//!   cpuset) and its cgroup CPU quota (a container's CPU limit), at least 1 — what the standard
//!   library's `available_parallelism` reports.
//! - A worker is only ever pinned to a CPU of the affinity mask (worker `i` to the mask's
//!   `i mod n`-th CPU), never to a CPU by its absolute number: two pods on one node would both
//!   pin their worker 0 to CPU 0, and under a static cpuset the pin would fail.
//! - `pin = auto` (the default) pins only when the process owns an exclusive cpuset of its
//!   worker count: the affinity mask is a strict subset of the online CPUs (someone handed the
//!   process these CPUs: Kubernetes' static CPU manager, `taskset`, systemd's `CPUAffinity`),
//!   it has exactly as many CPUs as there are workers, and no CPU quota limits the process
//!   below it. On a whole machine, or under a quota, the kernel places the threads. `on` pins
//!   within the mask whatever it is (a dedicated host); `off` never pins.
//!
//! Invariant: [`plan`] is pure; [`Machine::read`] is the only place the CPU facts are read.

use serde::{Deserialize, Serialize};

/// The `pin` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PinChoice {
    /// Pin only when the process owns an exclusive cpuset of its worker count.
    Auto,
    /// Pin each worker to a CPU of the affinity mask.
    On,
    /// Never pin.
    Off,
}

/// What the process may use, as read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The CPUs of the process's affinity mask, ascending.
    pub mask: Vec<usize>,
    /// CPUs online on the machine.
    pub online: usize,
    /// CPUs the process may use: the mask, reduced by the cgroup CPU quota (at least 1).
    pub usable: usize,
}

impl Machine {
    /// Reads the affinity mask (`sched_getaffinity`), the online CPUs and the usable count
    /// (`available_parallelism`: the mask and the cgroup v1/v2 quota).
    pub fn read() -> Machine {
        let mask = affinity_mask();
        // SAFETY: sysconf has no preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let online = usize::try_from(online)
            .unwrap_or(mask.len())
            .max(mask.len());
        let usable = std::thread::available_parallelism()
            .map_or(mask.len(), |n| n.get())
            .clamp(1, mask.len().max(1));
        Machine {
            mask,
            online,
            usable,
        }
    }
}

fn affinity_mask() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return vec![0];
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// How many workers, and where each is pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlan {
    /// Worker threads to run (at least 1).
    pub workers: usize,
    /// The CPU of each worker, or None: the workers are not pinned.
    pub pins: Option<Vec<usize>>,
    /// Why, for the start-up log.
    pub reason: String,
}

/// The workers (`configured`, 0 = what the process may use) and their pins.
pub fn plan(configured: usize, pin: PinChoice, machine: &Machine) -> CpuPlan {
    let usable = machine.usable.max(1);
    let workers = if configured == 0 { usable } else { configured };
    let quota_limited = machine.usable < machine.mask.len();
    let exclusive = machine.mask.len() < machine.online && !quota_limited;
    let pinned = || {
        (0..workers)
            .map(|worker| machine.mask[worker % machine.mask.len()])
            .collect()
    };
    let (pins, reason) = match pin {
        PinChoice::Off => (None, "pin = off".to_owned()),
        PinChoice::On if machine.mask.is_empty() => (None, "no affinity mask".to_owned()),
        PinChoice::On => (
            Some(pinned()),
            "pin = on: within the affinity mask".to_owned(),
        ),
        PinChoice::Auto if quota_limited => (
            None,
            format!(
                "pin = auto: a CPU quota limits the process to {} of its {} CPUs (shared)",
                machine.usable,
                machine.mask.len()
            ),
        ),
        PinChoice::Auto if !exclusive => (
            None,
            format!(
                "pin = auto: the affinity mask is the whole machine ({} CPUs), not a cpuset of \
                 this process's own",
                machine.online
            ),
        ),
        PinChoice::Auto if workers != machine.mask.len() => (
            None,
            format!(
                "pin = auto: {workers} workers on a cpuset of {} CPUs",
                machine.mask.len()
            ),
        ),
        PinChoice::Auto => (
            Some(pinned()),
            format!(
                "pin = auto: an exclusive cpuset of {} CPUs for {workers} workers",
                machine.mask.len()
            ),
        ),
    };
    CpuPlan {
        workers,
        pins,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(mask: &[usize], online: usize, usable: usize) -> Machine {
        Machine {
            mask: mask.to_vec(),
            online,
            usable,
        }
    }

    #[test]
    fn the_default_worker_count_is_what_the_process_may_use() {
        assert_eq!(
            plan(0, PinChoice::Auto, &machine(&[0, 1, 2, 3], 4, 4)).workers,
            4
        );
        // taskset -c 2,3
        assert_eq!(plan(0, PinChoice::Auto, &machine(&[2, 3], 4, 2)).workers, 2);
        // A 1.5 CPU quota on an 8-CPU node.
        assert_eq!(
            plan(
                0,
                PinChoice::Auto,
                &machine(&(0..8).collect::<Vec<_>>(), 8, 2)
            )
            .workers,
            2
        );
        assert_eq!(plan(0, PinChoice::Auto, &machine(&[0], 1, 0)).workers, 1);
        assert_eq!(plan(6, PinChoice::Auto, &machine(&[0, 1], 2, 2)).workers, 6);
    }

    #[test]
    fn auto_pins_only_on_an_exclusive_cpuset_of_the_worker_count() {
        // A Guaranteed pod under the static CPU manager: CPUs 5 and 9 are its own.
        let owned = plan(0, PinChoice::Auto, &machine(&[5, 9], 16, 2));
        assert_eq!(owned.pins, Some(vec![5, 9]), "{}", owned.reason);
        // The whole machine (a pod without a cpuset, or a shared host).
        let whole = plan(0, PinChoice::Auto, &machine(&[0, 1, 2, 3], 4, 4));
        assert_eq!(whole.pins, None);
        assert!(whole.reason.contains("whole machine"), "{}", whole.reason);
        // A CPU limit (quota) on a node: shared CPUs.
        let quota = plan(
            0,
            PinChoice::Auto,
            &machine(&[0, 1, 2, 3, 4, 5, 6, 7], 8, 1),
        );
        assert_eq!(quota.pins, None);
        assert!(quota.reason.contains("quota"), "{}", quota.reason);
        // More workers than the cpuset.
        let more = plan(4, PinChoice::Auto, &machine(&[2, 3], 4, 2));
        assert_eq!(more.pins, None);
    }

    #[test]
    fn on_pins_within_the_mask_never_by_absolute_number() {
        let pinned = plan(3, PinChoice::On, &machine(&[4, 6], 8, 2));
        assert_eq!(pinned.pins, Some(vec![4, 6, 4]));
        assert_eq!(
            plan(0, PinChoice::On, &machine(&[0, 1, 2, 3], 4, 4)).pins,
            Some(vec![0, 1, 2, 3])
        );
        assert_eq!(plan(0, PinChoice::Off, &machine(&[5, 9], 16, 2)).pins, None);
    }

    #[test]
    fn this_machine_has_a_mask() {
        let here = Machine::read();
        assert!(!here.mask.is_empty());
        assert!(here.usable >= 1 && here.usable <= here.mask.len());
        assert!(here.online >= here.mask.len());
    }
}
