//! The disk's own sequential write rate, measured with `dd` from `/dev/zero` into a file of a
//! directory on the filesystem under test (the file is deleted afterwards).

use std::path::Path;
use std::process::Command;

/// Name of the file `dd` writes in the probed directory.
const PROBE_FILE: &str = "pusher-bench-dd.bin";

/// One `dd` run.
#[derive(Debug, Clone, PartialEq)]
pub struct DdRun {
    pub bytes: u64,
    pub seconds: f64,
}

impl DdRun {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
}

/// `dd if=/dev/zero of=DIR/pusher-bench-dd.bin ARGS...` (e.g. `bs=1M count=2048
/// conv=fdatasync`), then deletes the file. Blocks the calling thread while dd runs.
pub fn dd(dir: &Path, args: &[String]) -> Result<DdRun, String> {
    let file = dir.join(PROBE_FILE);
    let output = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(args)
        .env("LC_ALL", "C")
        .output();
    // Whatever happened, the file goes (it may be gigabytes).
    let _ = std::fs::remove_file(&file);
    let output = output.map_err(|e| format!("dd: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "dd {}: {}: {}",
            args.join(" "),
            output.status,
            stderr.trim()
        ));
    }
    let run = parse_summary(&stderr)
        .ok_or_else(|| format!("dd {}: no summary in {:?}", args.join(" "), stderr.trim()))?;
    eprintln!(
        "disk: dd {}: {} bytes in {:.3}s = {:.1} MB/s",
        args.join(" "),
        run.bytes,
        run.seconds,
        run.mb_per_s()
    );
    Ok(run)
}

/// Bytes and seconds of GNU dd's last line in the C locale: `2147483648 bytes (2.1 GB, 2.0 GiB)
/// copied, 4.09 s, 525 MB/s`.
fn parse_summary(stderr: &str) -> Option<DdRun> {
    let line = stderr
        .lines()
        .rev()
        .find(|line| line.contains(" copied, "))?;
    let bytes = line.split_whitespace().next()?.parse().ok()?;
    let after = line.split(" copied, ").nth(1)?;
    let seconds: f64 = after.split_whitespace().next()?.parse().ok()?;
    (seconds > 0.0).then_some(DdRun { bytes, seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_gives_bytes_and_seconds() {
        let stderr = "2048+0 records in\n2048+0 records out\n\
            2147483648 bytes (2.1 GB, 2.0 GiB) copied, 4.09 s, 525 MB/s\n";
        let run = parse_summary(stderr).unwrap();
        assert_eq!(run.bytes, 2_147_483_648);
        assert_eq!(run.seconds, 4.09);
        assert!((run.mb_per_s() - 525.06).abs() < 0.01);
        let tiny = "1 byte copied, 0.000123 s, 8.1 kB/s\n";
        assert_eq!(parse_summary(tiny).unwrap().bytes, 1);
    }

    #[test]
    fn no_summary_or_zero_seconds_is_none() {
        assert_eq!(parse_summary("dd: error writing: No space left\n"), None);
        assert_eq!(parse_summary("5 bytes copied, 0 s, inf B/s\n"), None);
    }

    #[test]
    fn dd_writes_and_deletes_its_file() {
        let dir = std::env::temp_dir().join(format!("pusher-bench-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = ["bs=4k", "count=16", "conv=fdatasync"].map(String::from);
        let run = dd(&dir, &args).unwrap();
        assert_eq!(run.bytes, 16 * 4096);
        assert!(!dir.join(PROBE_FILE).exists());
        assert!(dd(&dir.join("missing"), &args).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
