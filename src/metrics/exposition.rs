//! The two text formats `/metrics` speaks, and which one a scraper gets.
//!
//! `prometheus-client` writes OpenMetrics 1.0 text only. Prometheus' classic text format
//! (version 0.0.4, what `promtool check metrics` and every Prometheus server reads) differs in
//! a few lines, so it is derived from the OpenMetrics text line by line:
//! - a counter family is named with its `_total` suffix in `# HELP` and `# TYPE` (OpenMetrics
//!   names the family without it; the samples carry it in both formats);
//! - an `info` family becomes a `gauge` named `<name>_info` (classic has no `info` type; the
//!   sample `<name>_info{…} 1` is the same);
//! - `# UNIT` lines and the closing `# EOF` are dropped.
//!
//! Samples, label escaping and the other types (gauge, histogram) are the same in both.
//! OpenMetrics is served only when the scraper asks for it in `Accept` (Prometheus does, with
//! a higher q-value than for the classic format).
//!
//! Invariant: the classic text holds exactly the samples of the OpenMetrics text, in order.

/// `Content-Type` of the classic text format.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A text format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Classic,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` this format is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => CLASSIC_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it lists
    /// `application/openmetrics-text` with a q-value above zero and at least as high as any
    /// range that matches the classic format (`text/plain`, `text/*`, `*/*`); else classic.
    pub fn negotiate(accept: Option<&[u8]>) -> Format {
        let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
            return Format::Classic;
        };
        let mut openmetrics_q = 0.0f32;
        let mut classic_q = 0.0f32;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case("application/openmetrics-text") {
                openmetrics_q = openmetrics_q.max(q);
            } else if ["text/plain", "text/*", "*/*"]
                .iter()
                .any(|m| media.eq_ignore_ascii_case(m))
            {
                classic_q = classic_q.max(q);
            }
        }
        if openmetrics_q > 0.0 && openmetrics_q >= classic_q {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }
}

/// The classic text format of an OpenMetrics text written by `prometheus-client`.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The family's `# HELP` line waits for its `# TYPE` line, which says how to name it.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                other => ("", other),
            };
            if let Some((help_name, text)) = help.take() {
                debug_assert_eq!(help_name, name, "HELP and TYPE name one family");
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::metrics::info::Info;
    use prometheus_client::registry::{Registry, Unit};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Label {
        code: String,
    }

    fn sample_registry() -> String {
        let mut registry = Registry::with_prefix("pusher");
        registry.register(
            "driver",
            "io driver",
            Info::new(vec![("driver".to_string(), "io_uring".to_string())]),
        );
        let counter = Counter::<u64>::default();
        counter.inc_by(3);
        registry.register("sessions_opened", "sessions upgraded", counter);
        let family = Family::<Label, Counter>::default();
        family
            .get_or_create(&Label {
                code: "1001".into(),
            })
            .inc();
        registry.register("sessions_closed", "sessions closed \"by\" code", family);
        let gauge = Gauge::<i64>::default();
        gauge.set(-2);
        registry.register("ready", "1 when ready", gauge);
        let seconds = Counter::<f64>::default();
        seconds.inc_by(1.5);
        registry.register_with_unit("stall", "time stalled", Unit::Seconds, seconds);
        let histogram = Histogram::new([0.1, 1.0]);
        histogram.observe(0.5);
        registry.register("latency_seconds", "latency", histogram);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn classic_names_counters_with_total_and_info_as_a_gauge() {
        let openmetrics = sample_registry();
        let classic = to_classic(&openmetrics);
        for expected in [
            "# HELP pusher_driver_info io driver.\n# TYPE pusher_driver_info gauge\npusher_driver_info{driver=\"io_uring\"} 1\n",
            "# HELP pusher_sessions_opened_total sessions upgraded.\n# TYPE pusher_sessions_opened_total counter\npusher_sessions_opened_total 3\n",
            "# TYPE pusher_sessions_closed_total counter\npusher_sessions_closed_total{code=\"1001\"} 1\n",
            "# TYPE pusher_ready gauge\npusher_ready -2\n",
            "# TYPE pusher_stall_seconds_total counter\npusher_stall_seconds_total 1.5\n",
            "# TYPE pusher_latency_seconds histogram\n",
            "pusher_latency_seconds_bucket{le=\"1.0\"} 1\n",
        ] {
            assert!(
                classic.contains(expected),
                "missing {expected:?} in\n{classic}"
            );
        }
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
        assert!(!classic.contains(" info\n"), "{classic}");
    }

    #[test]
    fn classic_keeps_every_sample_in_order() {
        let openmetrics = sample_registry();
        let samples = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&to_classic(&openmetrics)), samples(&openmetrics));
    }

    #[test]
    fn negotiation() {
        let prometheus =
            b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
            version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        for (accept, expected) in [
            (None, Format::Classic),
            (Some(&b"*/*"[..]), Format::Classic),
            (Some(b"text/plain"), Format::Classic),
            (Some(prometheus), Format::OpenMetrics),
            (Some(b"application/openmetrics-text"), Format::OpenMetrics),
            (
                Some(b"text/plain;version=0.0.4,application/openmetrics-text;q=0.5"),
                Format::Classic,
            ),
            (Some(b"application/openmetrics-text;q=0"), Format::Classic),
            (Some(b"\xff"), Format::Classic),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
    }
}
