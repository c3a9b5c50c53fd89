//! Reading pusher's `/metrics` (Prometheus text format): the samples of one scrape, looked up by
//! metric name, and the scrape itself.

use std::collections::BTreeMap;
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

    /// Whether the scrape has any of pusher's series (`pusher_*`).
    pub fn is_pusher(&self) -> bool {
        self.samples
            .iter()
            .any(|(name, _, _)| name.starts_with("pusher_"))
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
            // Not `sum()`: an empty f64 sum is -0.0, which prints as "-0".
            .fold(0.0, |sum, &(_, _, value)| sum + value)
    }

    /// [`Scrape::get`], or 0 when the series is missing.
    pub fn value(&self, name: &str) -> f64 {
        self.get(name).unwrap_or(0.0)
    }

    /// The series named `name` keyed by the values of `labels` joined with `/` (a missing label
    /// is empty); series with the same key are summed.
    pub fn by_labels(&self, name: &str, labels: &[&str]) -> BTreeMap<String, f64> {
        let mut series = BTreeMap::new();
        for (_, text, value) in self.samples.iter().filter(|(n, _, _)| n == name) {
            let key: Vec<String> = labels
                .iter()
                .map(|label| label_value(text, label).unwrap_or_default())
                .collect();
            *series.entry(key.join("/")).or_insert(0.0) += value;
        }
        series
    }

    /// [`Scrape::by_labels`] of this scrape less that of `before` (a counter's growth since
    /// then), for the keys of this scrape; keys absent before count from 0, keys that did not
    /// grow are left out.
    pub fn growth_by_labels(
        &self,
        before: &Scrape,
        name: &str,
        labels: &[&str],
    ) -> BTreeMap<String, f64> {
        let before = before.by_labels(name, labels);
        self.by_labels(name, labels)
            .into_iter()
            .map(|(key, value)| {
                let grown = value - before.get(&key).copied().unwrap_or(0.0);
                (key, grown)
            })
            .filter(|&(_, grown)| grown != 0.0)
            .collect()
    }
}

/// The value of `key` in a label set `a="x",b="y \" z"`, unescaped.
fn label_value(labels: &str, key: &str) -> Option<String> {
    let mut rest = labels;
    loop {
        let (name, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (at, '"') => break at,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        if name.trim() == key {
            return Some(value);
        }
        rest = after[end + 1..].trim_start_matches([',', ' ']);
    }
}

/// Scrapes `GET /metrics` on `addr`.
pub async fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let text = http::get_ok_text(addr, "/metrics", SCRAPE_TIMEOUT).await?;
    Ok(Scrape::parse(&text))
}

/// Scrapes `/metrics` on `addr` for figures only pusher gives: `None` when the target does not
/// answer it with pusher's series (a peer that is not pusher), after a note on stderr naming
/// `what` goes missing. The figures read from it are then null and the goals that need them
/// not judged.
pub async fn scrape_pusher(addr: SocketAddr, what: &str) -> Option<Scrape> {
    match scrape(addr).await {
        Ok(scrape) if scrape.is_pusher() => Some(scrape),
        Ok(_) => {
            eprintln!(
                "note: no pusher_* series in {addr}/metrics (not pusher?): {what} not measured"
            );
            None
        }
        Err(e) => {
            eprintln!("note: {e} (not pusher?): {what} not measured");
            None
        }
    }
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
        assert!(
            scrape.sum("missing").is_sign_positive(),
            "prints as 0, not -0"
        );
    }

    #[test]
    fn series_are_keyed_by_label_values() {
        let scrape = Scrape::parse(
            "pusher_egress_requests_total{target=\"processor\",result=\"delivered\"} 5\n\
             pusher_egress_requests_total{result=\"cancelled\",target=\"processor\"} 2\n\
             pusher_egress_requests_total{target=\"app_audio\",result=\"delivered\"} 7\n\
             pusher_egress_requests_total{target=\"app_audio\"} 1\n\
             pusher_ring_dropped_items_total{stream=\"audio_bytes\"} 3\n",
        );
        let by_target = scrape.by_labels("pusher_egress_requests_total", &["target", "result"]);
        assert_eq!(
            by_target,
            BTreeMap::from([
                ("app_audio/".to_owned(), 1.0),
                ("app_audio/delivered".to_owned(), 7.0),
                ("processor/cancelled".to_owned(), 2.0),
                ("processor/delivered".to_owned(), 5.0),
            ])
        );
        assert_eq!(
            scrape.by_labels("pusher_egress_requests_total", &["target"])["app_audio"],
            8.0
        );
        let before = Scrape::parse(
            "pusher_ring_dropped_items_total{stream=\"audio_bytes\"} 1\n\
             pusher_ring_dropped_items_total{stream=\"transcript\"} 4\n",
        );
        assert_eq!(
            scrape.growth_by_labels(&before, "pusher_ring_dropped_items_total", &["stream"]),
            BTreeMap::from([("audio_bytes".to_owned(), 2.0)])
        );
    }

    #[test]
    fn label_values_are_unescaped() {
        assert_eq!(
            label_value(r#"a="x",b="y \" z""#, "b").as_deref(),
            Some("y \" z")
        );
        assert_eq!(label_value(r#"a="x",b="y""#, "a").as_deref(), Some("x"));
        assert_eq!(label_value(r#"a="x""#, "c"), None);
        assert_eq!(label_value(r#"a=x"#, "a"), None);
        assert_eq!(label_value("", "a"), None);
    }

    #[test]
    fn only_a_scrape_with_pusher_series_is_pusher() {
        assert!(Scrape::parse(TEXT).is_pusher());
        assert!(!Scrape::parse("python_gc_objects_collected_total 12\nup 1\n").is_pusher());
        assert!(!Scrape::parse("").is_pusher());
    }

    #[tokio::test]
    async fn a_target_without_pusher_metrics_gives_none() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A peer answering 404, then one answering other metrics, then pusher's.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answers = [
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nup 1\n".to_owned(),
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{TEXT}",
                TEXT.len()
            ),
        ];
        let server = tokio::spawn(async move {
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await.unwrap();
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        assert!(scrape_pusher(addr, "test").await.is_none(), "404");
        assert!(scrape_pusher(addr, "test").await.is_none(), "not pusher's");
        let pusher = scrape_pusher(addr, "test").await.unwrap();
        assert_eq!(pusher.get("pusher_spill_pending_bytes"), Some(4_500_000.0));
        server.await.unwrap();
        // Nothing listening at all.
        assert!(scrape_pusher(addr, "test").await.is_none(), "refused");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let scrape = Scrape::parse("novalue\nx{unclosed=\"1\" 2\ny notanumber\nz 1\n{a=\"b\"} 4\n");
        assert_eq!(scrape.samples.len(), 1);
        assert_eq!(scrape.get("z"), Some(1.0));
    }
}
