//! Reading pusher's `/metrics` (Prometheus text format): the samples of one scrape, looked up by
//! metric name, and the scrape itself.

use std::net::SocketAddr;
use std::time::Duration;

use crate::http;

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// The samples of one scrape: `(name, labels, value)`, labels as written between the braces.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    samples: Vec<(String, String, f64)>,
}

impl Scrape {
    /// Parses the text format; comment lines and lines that do not parse are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Scrape { samples }
    }

    /// The value of the series `name` without labels.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, labels, _)| n == name && labels.is_empty())
            .map(|&(_, _, value)| value)
    }

    /// The sum over every series named `name`, whatever its labels (0 when there is none).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|&(_, _, value)| value)
            .sum()
    }

    /// [`Scrape::get`], or 0 when the series is missing.
    pub fn value(&self, name: &str) -> f64 {
        self.get(name).unwrap_or(0.0)
    }
}

/// Scrapes `GET /metrics` on `addr`.
pub async fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let text = http::get_ok_text(addr, "/metrics", SCRAPE_TIMEOUT).await?;
    Ok(Scrape::parse(&text))
}

/// `name{labels} value [timestamp]` → `(name, labels, value)`. Label values are quoted and may
/// hold spaces, braces and escaped quotes.
fn parse_sample(line: &str) -> Option<(String, String, f64)> {
    let (name, labels, rest) = match line.find(['{', ' ', '\t']) {
        Some(at) if line.as_bytes()[at] == b'{' => {
            let end = at + 1 + labels_end(&line[at + 1..])?;
            (&line[..at], &line[at + 1..end], &line[end + 1..])
        }
        Some(at) => (&line[..at], "", &line[at..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    (!name.is_empty()).then(|| (name.to_owned(), labels.to_owned(), value))
}

/// Offset of the `}` that closes a label set, skipping quoted values.
fn labels_end(text: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (at, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(at),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP pusher_spill_appended_bytes bytes appended\n\
        # TYPE pusher_spill_appended_bytes counter\n\
        pusher_spill_appended_bytes_total 123456789\n\
        pusher_spill_pending_bytes 4.5e6\n\
        pusher_upload_attempts_failed_total{reason=\"store\"} 7\n\
        pusher_upload_attempts_failed_total{reason=\"timeout\"} 2\n\
        pusher_odd{note=\"a } b \\\" c\",x=\"y\"} 3 1700000000000\n\
        pusher_spill_sync_seconds_bucket{le=\"+Inf\"} 40\n\
        pusher_spill_sync_seconds_sum 0.25\n\
        # EOF\n";

    #[test]
    fn unlabelled_series_are_found_by_name() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(
            scrape.get("pusher_spill_appended_bytes_total"),
            Some(123_456_789.0)
        );
        assert_eq!(scrape.get("pusher_spill_pending_bytes"), Some(4_500_000.0));
        assert_eq!(scrape.get("pusher_spill_sync_seconds_sum"), Some(0.25));
        assert_eq!(scrape.get("pusher_spill_appended_bytes"), None);
        assert_eq!(scrape.value("missing"), 0.0);
    }

    #[test]
    fn labelled_series_are_summed() {
        let scrape = Scrape::parse(TEXT);
        assert_eq!(scrape.sum("pusher_upload_attempts_failed_total"), 9.0);
        assert_eq!(scrape.get("pusher_upload_attempts_failed_total"), None);
        assert_eq!(
            scrape.sum("pusher_odd"),
            3.0,
            "quoted braces and a timestamp"
        );
        assert_eq!(scrape.sum("pusher_spill_sync_seconds_bucket"), 40.0);
        assert_eq!(scrape.sum("missing"), 0.0);
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let scrape = Scrape::parse("novalue\nx{unclosed=\"1\" 2\ny notanumber\nz 1\n{a=\"b\"} 4\n");
        assert_eq!(scrape.samples.len(), 1);
        assert_eq!(scrape.get("z"), Some(1.0));
    }
}
