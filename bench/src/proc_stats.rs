//! What the tool measures of a process (normally the server): resident set from
//! `/proc/PID/status`, CPU time (user + system) from `/proc/PID/stat`, and the same per thread
//! from `/proc/PID/task/TID/stat`; CPU use per interval between periodic readings.

use std::io;
use std::time::Instant;

use crate::stats;

/// A process observed through `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pid: u32,
}

impl Process {
    pub fn new(pid: u32) -> Process {
        Process { pid }
    }

    /// This process (the load client itself).
    pub fn current() -> Process {
        Process::new(std::process::id())
    }

    /// Resident set size (`VmRSS`), KiB.
    pub fn rss_kib(&self) -> io::Result<u64> {
        let status = self.read("status")?;
        parse_rss_kib(&status).ok_or_else(|| self.malformed("status", "no VmRSS line"))
    }

    /// CPU time so far, user + system, in seconds.
    pub fn cpu_s(&self) -> io::Result<f64> {
        let stat = self.read("stat")?;
        let ticks =
            parse_cpu_ticks(&stat).ok_or_else(|| self.malformed("stat", "no utime/stime"))?;
        Ok(ticks as f64 / clock_ticks_per_s() as f64)
    }

    /// Resident set and CPU time so far, read together (one sample of a periodic sampler).
    pub fn usage(&self) -> io::Result<Usage> {
        Ok(Usage {
            rss_kib: self.rss_kib()?,
            cpu_s: self.cpu_s()?,
        })
    }

    /// Every thread's name and CPU time so far (threads that end while being listed are
    /// skipped).
    pub fn threads(&self) -> io::Result<Vec<ThreadCpu>> {
        let dir = format!("/proc/{}/task", self.pid);
        let entries =
            std::fs::read_dir(&dir).map_err(|e| io::Error::new(e.kind(), format!("{dir}: {e}")))?;
        let mut threads = Vec::new();
        for entry in entries {
            let Ok(stat) = std::fs::read_to_string(entry?.path().join("stat")) else {
                continue;
            };
            if let (Some(name), Some(ticks)) = (parse_comm(&stat), parse_cpu_ticks(&stat)) {
                threads.push(ThreadCpu {
                    name: name.to_owned(),
                    cpu_s: ticks as f64 / clock_ticks_per_s() as f64,
                });
            }
        }
        Ok(threads)
    }

    /// Threads named `name`: how many, and their CPU time so far summed.
    pub fn threads_named(&self, name: &str) -> io::Result<(usize, f64)> {
        let named: Vec<ThreadCpu> = self
            .threads()?
            .into_iter()
            .filter(|thread| thread.name == name)
            .collect();
        Ok((named.len(), named.iter().map(|thread| thread.cpu_s).sum()))
    }

    fn read(&self, file: &str) -> io::Result<String> {
        let path = format!("/proc/{}/{file}", self.pid);
        std::fs::read_to_string(&path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
    }

    fn malformed(&self, file: &str, what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{}/{file}: {what}", self.pid),
        )
    }
}

/// One reading of a process: resident set (KiB) and CPU time so far (user + system, s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub rss_kib: u64,
    pub cpu_s: f64,
}

/// Readings of one quantity, `(time, value)`, oldest first.
pub type Readings<T> = Vec<(Instant, T)>;

/// Periodic [`Usage`] readings split into `(time, RSS KiB)` and `(time, CPU seconds so far)`.
pub fn split_usage(samples: &[(Instant, Usage)]) -> (Readings<u64>, Readings<f64>) {
    samples
        .iter()
        .map(|&(at, usage)| ((at, usage.rss_kib), (at, usage.cpu_s)))
        .unzip()
}

/// CPU use between consecutive readings `(time, CPU seconds so far)`, oldest first: one
/// `(end of the interval, % of one core)` per interval; an interval of zero length is skipped.
pub fn cpu_percent(readings: &[(Instant, f64)]) -> Vec<(Instant, f64)> {
    stats::interval_rates(readings)
        .map(|(_, to, cpu_s_per_s)| (to, cpu_s_per_s * 100.0))
        .collect()
}

/// Average and peak CPU use (% of one core) over readings `(time, CPU seconds so far)`: the
/// average is the CPU time between the first and last reading over the time between them, the
/// peak the busiest interval. `None` with fewer than two readings apart in time.
pub fn cpu_avg_peak_percent(readings: &[(Instant, f64)]) -> Option<(f64, f64)> {
    let (&(first_at, first_cpu), &(last_at, last_cpu)) = (readings.first()?, readings.last()?);
    let seconds = last_at.saturating_duration_since(first_at).as_secs_f64();
    let peak = cpu_percent(readings)
        .into_iter()
        .map(|(_, percent)| percent)
        .reduce(f64::max)?;
    (seconds > 0.0).then(|| ((last_cpu - first_cpu) / seconds * 100.0, peak))
}

/// One thread of a process: its name (`comm`, at most 15 bytes) and CPU time.
#[derive(Debug, Clone)]
pub struct ThreadCpu {
    pub name: String,
    pub cpu_s: f64,
}

/// The command name of a `/proc/PID/stat` text: between the first `(` and the last `)`.
fn parse_comm(stat: &str) -> Option<&str> {
    let start = stat.find('(')? + 1;
    let end = stat.rfind(')')?;
    (start <= end).then(|| &stat[start..end])
}

/// `VmRSS` of a `/proc/PID/status` text, in KiB (the kernel writes it as "VmRSS:   1234 kB").
fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(value)
}

/// `utime + stime` of a `/proc/PID/stat` text, in clock ticks.
///
/// The second field (the command name, in parentheses) may itself contain spaces and
/// parentheses, so fields are counted from the last `)`: after it come field 3 (state) onwards,
/// and utime and stime are fields 14 and 15 (proc(5)).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    const UTIME_AFTER_COMM: usize = 14 - 3;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(UTIME_AFTER_COMM);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `sysconf(_SC_CLK_TCK)`: the unit of the times in `/proc/PID/stat`.
fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpusher\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
        VmPeak:\t  512000 kB\nVmSize:\t  498000 kB\nVmHWM:\t   61234 kB\nVmRSS:\t   58020 kB\n\
        RssAnon:\t   40000 kB\nThreads:\t3\n";

    #[test]
    fn rss_is_the_vmrss_line_not_vmhwm() {
        assert_eq!(parse_rss_kib(STATUS), Some(58_020));
    }

    #[test]
    fn rss_missing_or_malformed_is_none() {
        assert_eq!(
            parse_rss_kib("Name:\tkthreadd\nState:\tS (sleeping)\n"),
            None
        );
        assert_eq!(parse_rss_kib("VmRSS:\t  many kB\n"), None);
        assert_eq!(parse_rss_kib("VmRSS:\t  12 MB\n"), None);
    }

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        let stat = "4242 (pusher) S 1 4242 4242 0 -1 4194560 1911 0 0 0 731 269 0 0 20 0 3 0 \
            123456 509952000 14505 18446744073709551615 1 1 0 0 0 0 0 4096 17610 0 0 0 17 1 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(731 + 269));
    }

    #[test]
    fn cpu_ticks_survive_a_command_name_with_spaces_and_parentheses() {
        let stat = "77 (a) b (c)) R 1 77 77 0 -1 0 0 0 0 0 5 7 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(12));
    }

    #[test]
    fn cpu_ticks_of_a_truncated_stat_are_none() {
        assert_eq!(parse_cpu_ticks("77 (x) R 1 77 77 0 -1 0 0 0"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis at all"), None);
    }

    #[test]
    fn comm_is_between_the_first_and_last_parenthesis() {
        assert_eq!(parse_comm("77 (a) b (c)) R 1 77"), Some("a) b (c)"));
        assert_eq!(parse_comm("12 (pusher-spill) S 1"), Some("pusher-spill"));
        assert_eq!(parse_comm("12 pusher S 1"), None);
    }

    #[test]
    fn cpu_percent_is_per_interval_of_one_core() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        // 0.25 s of CPU in the first 500 ms, 0.5 s in the next 500 ms, none in the last
        // 1000 ms; a repeated time is skipped.
        let readings = [
            (at(0), 10.0),
            (at(500), 10.25),
            (at(1000), 10.75),
            (at(1000), 10.75),
            (at(2000), 10.75),
        ];
        let percent = cpu_percent(&readings);
        assert_eq!(
            percent,
            [(at(500), 50.0), (at(1000), 100.0), (at(2000), 0.0)]
        );
        let (avg, peak) = cpu_avg_peak_percent(&readings).unwrap();
        assert!((avg - 37.5).abs() < 1e-9, "{avg}");
        assert_eq!(peak, 100.0);
        assert_eq!(cpu_avg_peak_percent(&readings[..1]), None);
        assert_eq!(cpu_avg_peak_percent(&[]), None);
    }

    #[test]
    fn usage_splits_into_rss_and_cpu_readings() {
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_millis(500);
        let samples = [
            (
                t0,
                Usage {
                    rss_kib: 100,
                    cpu_s: 1.0,
                },
            ),
            (
                t1,
                Usage {
                    rss_kib: 120,
                    cpu_s: 1.5,
                },
            ),
        ];
        let (rss, cpu) = split_usage(&samples);
        assert_eq!(rss, [(t0, 100), (t1, 120)]);
        assert_eq!(cpu, [(t0, 1.0), (t1, 1.5)]);
    }

    #[test]
    fn this_process_can_be_measured() {
        let me = Process::current();
        assert!(me.rss_kib().unwrap() > 0);
        assert!(me.cpu_s().unwrap() >= 0.0);
        let usage = me.usage().unwrap();
        assert!(usage.rss_kib > 0 && usage.cpu_s >= 0.0);
        let threads = me.threads().unwrap();
        assert!(!threads.is_empty());
        let (count, cpu_s) = me.threads_named(&threads[0].name).unwrap();
        assert!(count >= 1 && cpu_s >= 0.0);
    }
}
