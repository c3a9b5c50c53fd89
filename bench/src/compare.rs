//! Tables over result files (`--result-file`): `compare` puts runs of one scenario side by side
//! (pusher and a peer, or io_uring and epoll) with one RSS plot, and `summary` lists every run
//! of an invocation with its headline figures and goals.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::report;
use crate::svg;

/// Shown for a value a file does not have (or has as `null`: not measured there).
const MISSING: &str = "–";
/// Longest array shown as JSON in a cell; a longer one is shown as its length.
const ARRAY_CHARS_MAX: usize = 60;

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Also write one plot of the files side by side: RSS over time, or the scenario's own
    /// figure (bench/README.md, "Peer mode")
    #[arg(long, value_name = "OUT.svg")]
    svg: Option<PathBuf>,
    /// Result files of one scenario
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SummaryArgs {
    /// Result files, of any scenarios
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// A result file read and checked.
struct Run {
    path: PathBuf,
    file: Value,
}

impl Run {
    fn read(path: &Path) -> Result<Run, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        report::validate(&file).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Run {
            path: path.to_owned(),
            file,
        })
    }

    fn scenario(&self) -> &str {
        self.file["scenario"].as_str().unwrap_or_default()
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.file["labels"].get(key).and_then(Value::as_str)
    }

    fn file_name(&self) -> String {
        self.path.file_stem().map_or_else(
            || self.path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        )
    }

    /// The `target` label, else the resolved driver, else the file name.
    fn target(&self) -> String {
        self.label("target")
            .or_else(|| self.label("driver_resolved"))
            .map_or_else(|| self.file_name(), str::to_owned)
    }

    /// The RSS readings as `(s, MiB)` (the second column of `series.rss` is KiB).
    fn rss_mib(&self) -> Vec<(f64, f64)> {
        self.file["series"]["rss"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| Some((row.get(0)?.as_f64()?, row.get(1)?.as_f64()? / 1024.0)))
            .collect()
    }

    /// `figures.rss.budget_bytes`, when the target exposed one.
    fn budget_bytes(&self) -> Option<f64> {
        self.file["figures"]["rss"]["budget_bytes"].as_f64()
    }
}

/// Column titles: the target name; where two are equal, with the resolved driver; where those
/// are still equal, the file name.
fn column_titles(runs: &[Run]) -> Vec<String> {
    let unique = |titles: &[String]| {
        titles
            .iter()
            .enumerate()
            .all(|(i, t)| !titles[..i].contains(t))
    };
    let titles: Vec<String> = runs.iter().map(Run::target).collect();
    if unique(&titles) {
        return titles;
    }
    let with_driver: Vec<String> = runs
        .iter()
        .zip(&titles)
        .map(|(run, title)| match run.label("driver_resolved") {
            Some(driver) if driver != title => format!("{title} ({driver})"),
            _ => title.clone(),
        })
        .collect();
    if unique(&with_driver) {
        with_driver
    } else {
        runs.iter().map(Run::file_name).collect()
    }
}

/// A JSON value as a table cell: numbers to at most 3 decimals, `null` as [`MISSING`].
fn cell(value: &Value) -> String {
    match value {
        Value::Null => MISSING.to_owned(),
        Value::String(text) => text.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            (None, Some(f)) => {
                // `+ 0.0` turns -0 into 0.
                let text = format!("{:.3}", (f * 1000.0).round() / 1000.0 + 0.0);
                text.trim_end_matches('0').trim_end_matches('.').to_owned()
            }
            _ => n.to_string(),
        },
        Value::Array(items) => {
            let text = value.to_string();
            if text.chars().count() <= ARRAY_CHARS_MAX {
                text
            } else {
                format!("[{} items]", items.len())
            }
        }
        other => other.to_string(),
    }
}

/// The scalar leaves of `value` as `(dotted path, value)`, objects walked in their order;
/// arrays are leaves (shown as JSON).
fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&path, field, out);
            }
        }
        leaf => out.push((prefix.to_owned(), leaf.clone())),
    }
}

/// A goal as a cell: `value op limit unit: verdict`.
fn goal_cell(goal: &Value) -> String {
    let verdict = match goal["met"].as_bool() {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "not judged",
    };
    let unit = goal["unit"].as_str().unwrap_or_default();
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    format!(
        "{} {} {}{unit}: {verdict}",
        cell(&goal["value"]),
        goal["op"].as_str().unwrap_or("?"),
        cell(&goal["limit"])
    )
}

/// Rows `(name, one cell per run)`: the union of the runs' labels, goals and figures in order
/// of first appearance, a cell [`MISSING`] where a run lacks the row.
fn rows(runs: &[Run]) -> Vec<(String, Vec<String>)> {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut put = |name: String, column: usize, text: String| {
        let at = match rows.iter().position(|(n, _)| *n == name) {
            Some(at) => at,
            None => {
                rows.push((name, vec![MISSING.to_owned(); runs.len()]));
                rows.len() - 1
            }
        };
        rows[at].1[column] = text;
    };
    for (column, run) in runs.iter().enumerate() {
        for (key, value) in run.file["labels"].as_object().into_iter().flatten() {
            put(format!("label {key}"), column, cell(value));
        }
    }
    for (column, run) in runs.iter().enumerate() {
        for (name, goal) in run.file["goals"].as_object().into_iter().flatten() {
            put(format!("goal {name}"), column, goal_cell(goal));
        }
    }
    for (column, run) in runs.iter().enumerate() {
        let mut figures = Vec::new();
        leaves("", &run.file["figures"], &mut figures);
        for (path, value) in figures {
            put(path, column, cell(&value));
        }
    }
    rows
}

/// A markdown table; `|` in cells is escaped.
fn markdown(header: &[String], rows: &[(String, Vec<String>)]) -> String {
    let escape = |text: &str| text.replace('|', "\\|");
    let mut out = format!(
        "| {} |\n|{}\n",
        header
            .iter()
            .map(|h| escape(h))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(header.len())
    );
    for (name, cells) in rows {
        let cells: Vec<String> = std::iter::once(name.as_str())
            .chain(cells.iter().map(String::as_str))
            .map(escape)
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

/// The comparison table of `runs` (one scenario): a title line and a markdown table.
fn compare_table(runs: &[Run]) -> Result<String, String> {
    let scenario = runs[0].scenario();
    if let Some(other) = runs.iter().find(|run| run.scenario() != scenario) {
        return Err(format!(
            "{} is a {} run, {} a {scenario} run: compare runs of one scenario",
            other.path.display(),
            other.scenario(),
            runs[0].path.display()
        ));
    }
    let mut header = vec![scenario.to_owned()];
    header.extend(column_titles(runs));
    Ok(format!(
        "## {scenario}\n\n{}",
        markdown(&header, &rows(runs))
    ))
}

/// One plot of the runs side by side, titled by their columns: RSS over time (as growth, with
/// the slope goal) when a run sampled it; otherwise the scenario's own figure: `idle` RSS growth
/// over the sessions of each step (the 2 KiB per session goal dashed), `capacity` the server's
/// CPU over the sessions of each step of the ramp (its CPU bound dashed), `latency` the
/// percentiles (the 10 ms goal dashed), `ingest` GB per server CPU-second (the goal dashed).
/// `None` when there is nothing to draw.
fn compare_plot(runs: &[Run]) -> Option<String> {
    let titles = column_titles(runs);
    let scenario = runs[0].scenario();
    let readings: Vec<(&String, Vec<(f64, f64)>)> = titles
        .iter()
        .zip(runs)
        .map(|(title, run)| (title, run.rss_mib()))
        .filter(|(_, points)| !points.is_empty())
        .collect();
    if !readings.is_empty() {
        let goal = runs
            .iter()
            .zip(&titles)
            .find(|(_, title)| *title == readings[0].0)
            .and_then(|(run, _)| report::slope_goal(&run.file["figures"]));
        let series: Vec<svg::Series> = readings
            .into_iter()
            .map(|(name, points)| svg::Series { name, points })
            .collect();
        let budget_mib = runs
            .iter()
            .find_map(Run::budget_bytes)
            .map(|bytes| bytes / 1024.0 / 1024.0);
        return Some(svg::rss_plot(
            &format!("{scenario}: server RSS over time"),
            &series,
            goal,
            budget_mib,
        ));
    }
    let steps = |run: &Run, x: &str, y: &dyn Fn(&Value) -> Option<f64>| -> Vec<(f64, f64)> {
        run.file["figures"]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|step| Some((step[x].as_f64()?, y(step)?)))
            .collect()
    };
    let per_run = |points: &dyn Fn(&Run) -> Vec<(f64, f64)>| -> Vec<svg::Series> {
        titles
            .iter()
            .zip(runs)
            .map(|(name, run)| svg::Series {
                name,
                points: points(run),
            })
            .filter(|series| !series.points.is_empty())
            .collect()
    };
    let figure = |run: &Run, path: &str| at(&run.file["figures"], path).as_f64();
    match scenario {
        "idle" => {
            let series = per_run(&|run| {
                let before = figure(run, "rss_before_kib").unwrap_or(0.0);
                steps(run, "sessions", &|step| {
                    Some((step["rss_after_kib"].as_f64()? - before) / 1024.0)
                })
            });
            let sessions_max = series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .fold(0.0, f64::max);
            (!series.is_empty()).then(|| {
                svg::line_plot(&svg::LinePlot {
                    title: "idle: server RSS growth by sessions open".to_owned(),
                    x_label: "sessions open",
                    y_label: "RSS − before any session (MiB)",
                    fits: Vec::new(),
                    guides: vec![svg::Guide {
                        name: "goal: 2 KiB per session".to_owned(),
                        from: (0.0, 0.0),
                        to: (sessions_max, sessions_max * 2.0 / 1024.0),
                    }],
                    notes: Vec::new(),
                    series,
                })
            })
        }
        "capacity" => {
            let series =
                per_run(&|run| steps(run, "sessions", &|step| step["cpu_pct_of_cores"].as_f64()));
            let bound = runs
                .iter()
                .find_map(|run| figure(run, "bounds.cpu_pct_of_cores_max"))
                .unwrap_or(70.0);
            (!series.is_empty()).then(|| {
                svg::line_plot(&svg::LinePlot {
                    title: "capacity: server CPU by real-time sessions".to_owned(),
                    x_label: "real-time sessions",
                    y_label: "server CPU (% of its workers' cores)",
                    fits: Vec::new(),
                    guides: vec![svg::Guide {
                        name: format!("bound: {bound} % of the workers' cores"),
                        from: (0.0, bound),
                        to: (f64::MAX, bound),
                    }],
                    notes: Vec::new(),
                    series,
                })
            })
        }
        "latency" => {
            let categories = [
                ("102 p50", "latency_ms.p50"),
                ("102 p99", "latency_ms.p99"),
                ("102 p99.9", "latency_ms.p999"),
                ("104 p50", "process_latency_ms.p50"),
                ("104 p99", "process_latency_ms.p99"),
            ];
            let groups: Vec<(&str, Vec<Option<f64>>)> = titles
                .iter()
                .zip(runs)
                .map(|(name, run)| {
                    let values = categories.iter().map(|(_, path)| figure(run, path));
                    (name.as_str(), values.collect())
                })
                .collect();
            Some(svg::bar_plot(
                "latency: transcript to hook, 104 to 201",
                "ms",
                &categories.map(|(name, _)| name),
                &groups,
                Some(("goal: p99 < 10 ms", 10.0)),
            ))
        }
        "ingest" => {
            let groups: Vec<(&str, Vec<Option<f64>>)> = titles
                .iter()
                .zip(runs)
                .map(|(name, run)| (name.as_str(), vec![figure(run, "gb_per_server_cpu_s")]))
                .collect();
            Some(svg::bar_plot(
                "ingest: audio per server CPU-second",
                "GB per server CPU-second",
                &["ingest"],
                &groups,
                Some(("goal: >= 2 GB per CPU-second", 2.0)),
            ))
        }
        _ => None,
    }
}

/// `pusher-bench compare`: the table on stdout, the plot to `--svg`.
pub fn compare(args: &CompareArgs) -> Result<(), String> {
    let runs = args
        .files
        .iter()
        .map(|path| Run::read(path))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{}", compare_table(&runs)?);
    if let Some(path) = &args.svg {
        match compare_plot(&runs) {
            Some(svg) => {
                std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
                eprintln!("compare: plot {}", path.display());
            }
            None => eprintln!(
                "compare: nothing to plot for these files; {} not written",
                path.display()
            ),
        }
    }
    Ok(())
}

/// The figures `summary` shows per scenario: `(name, dotted path in figures)`.
fn headline(scenario: &str) -> &'static [(&'static str, &'static str)] {
    match scenario {
        "idle" => &[("sessions", "sessions"), ("KiB/session", "kib_per_session")],
        "ingest" => &[
            ("MB/s", "mb_per_s"),
            ("GB/server CPU-s", "gb_per_server_cpu_s"),
        ],
        "log" => &[
            ("log MB/s", "log_mb_per_s"),
            ("log/disk", "log_to_disk_ratio"),
        ],
        "stream" | "outage" => &[
            ("RSS slope MB/min", "rss.slope_mb_per_min"),
            ("RSS peak KiB", "rss.peak_kib"),
            ("bytes missing", "sink.bytes_missing"),
        ],
        "chaos" => &[
            ("RSS slope MB/min", "rss.slope_mb_per_min"),
            ("RSS peak KiB", "rss.peak_kib"),
            ("104 unanswered", "process.unanswered"),
            ("bytes missing", "private_cloud.sink.bytes_missing"),
        ],
        "latency" => &[
            ("p99 ms", "latency_ms.p99"),
            ("104 p99 ms", "process_latency_ms.p99"),
        ],
        "capacity" => &[
            ("sessions/core", "sessions_per_core"),
            ("sessions", "sessions"),
            ("stopped by", "stopped_by"),
            ("CPU % of cores", "at_capacity.cpu_pct_of_cores"),
            ("RSS KiB", "at_capacity.rss_kib"),
            ("disk MB/s", "at_capacity.disk_write_mb_per_s"),
            ("transcript p99 ms", "at_capacity.transcript_latency_ms.p99"),
        ],
        "storm" => &[
            ("upgraded", "upgraded"),
            ("refused", "refused"),
            ("all open s", "all_open_s"),
            ("upgrade p99 ms", "upgrade_latency_ms.p99"),
            ("/health max ms", "health.max_ms"),
            ("RSS peak KiB", "rss.peak_kib"),
        ],
        _ => &[],
    }
}

/// The value at a dotted path.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |value, key| &value[key])
}

/// The goals of a run in one cell: `n/m met`, then those not met and not judged by name.
fn goals_cell(goals: &Map<String, Value>) -> String {
    let named = |met: Option<bool>| -> Vec<&str> {
        goals
            .iter()
            .filter(|(_, goal)| goal["met"].as_bool() == met)
            .map(|(name, _)| name.as_str())
            .collect()
    };
    let mut text = format!("{}/{} met", named(Some(true)).len(), goals.len());
    let not_met = named(Some(false));
    if !not_met.is_empty() {
        text.push_str(&format!("; NOT MET: {}", not_met.join(", ")));
    }
    let not_judged = named(None);
    if !not_judged.is_empty() {
        text.push_str(&format!("; not judged: {}", not_judged.join(", ")));
    }
    text
}

/// The summary table: a row per run (scenario, target, headline figures, goals).
fn summary_table(runs: &[Run]) -> String {
    let header = ["scenario", "target", "figures", "goals", "file"].map(str::to_owned);
    let rows: Vec<(String, Vec<String>)> = runs
        .iter()
        .map(|run| {
            let figures: Vec<String> = headline(run.scenario())
                .iter()
                .map(|(name, path)| format!("{name} {}", cell(at(&run.file["figures"], path))))
                .collect();
            let target = match run.label("driver_resolved") {
                Some(driver) => format!("{} ({driver})", run.target()),
                None => run.target(),
            };
            let goals = goals_cell(run.file["goals"].as_object().unwrap_or(&Map::new()));
            (
                run.scenario().to_owned(),
                vec![target, figures.join(", "), goals, run.file_name()],
            )
        })
        .collect();
    markdown(&header, &rows)
}

/// `pusher-bench summary`: the table on stdout. A file that cannot be read is an error.
pub fn summary(args: &SummaryArgs) -> Result<(), String> {
    let runs = args
        .files
        .iter()
        .map(|path| Run::read(path))
        .collect::<Result<Vec<_>, _>>()?;
    println!("{}", summary_table(&runs));
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(name: &str, scenario: &str, labels: Value, fields: Value, rss: Option<Value>) -> Run {
        let Value::Object(fields) = fields else {
            panic!("fields must be an object")
        };
        Run {
            path: PathBuf::from(format!("bench/results/{name}.json")),
            file: report::result_file(scenario, labels, fields, rss),
        }
    }

    /// A pusher chaos run and a peer's without /metrics (no budget, no 104 accounting).
    fn chaos_pair() -> Vec<Run> {
        let pusher = run(
            "chaos-1",
            "chaos",
            json!({"target": "pusher", "driver_resolved": "uring"}),
            json!({
                "rss": {"peak_kib": 51200, "slope_mb_per_min": 0.25, "budget_bytes": 1073741824.0},
                "process": {"sent": 100, "cancelled": 7},
                "goals": {"rss_slope_mb_per_min_max": 1.0, "rss_flat": true,
                          "peak_under_budget": true, "all_104_answered_or_cancelled": true,
                          "no_loss": true, "reconnected": null, "cleaned_up": true},
            }),
            Some(json!([[0.0, 20480], [1.0, 51200]])),
        );
        let peer = run(
            "chaos-2",
            "chaos",
            json!({"target": "python"}),
            json!({
                "rss": {"peak_kib": 409600, "slope_mb_per_min": 12.5, "budget_bytes": null},
                "process": {"sent": 90},
                "debug_memory_after_cooldown": null,
                "goals": {"rss_slope_mb_per_min_max": 1.0, "rss_flat": false,
                          "peak_under_budget": null, "all_104_answered_or_cancelled": null,
                          "no_loss": true},
            }),
            Some(json!([[0.0, 204800], [0.5, 307200], [1.0, 409600]])),
        );
        vec![pusher, peer]
    }

    /// The table's rows as `name -> cells`, parsed back from the markdown.
    fn parse(table: &str) -> Vec<Vec<String>> {
        table
            .lines()
            .filter(|line| line.starts_with('|') && !line.starts_with("|---"))
            .map(|line| {
                line.trim_matches('|')
                    .split(" | ")
                    .map(|cell| cell.trim().to_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn compare_aligns_rows_across_files_and_marks_missing_values() {
        let table = compare_table(&chaos_pair()).unwrap();
        assert!(table.starts_with("## chaos\n"), "{table}");
        let lines = parse(&table);
        assert_eq!(lines[0], ["chaos", "pusher", "python"]);
        assert!(lines.iter().all(|row| row.len() == 3), "{table}");
        let row = |name: &str| {
            lines
                .iter()
                .find(|row| row[0] == name)
                .unwrap_or_else(|| panic!("no row {name}:\n{table}"))[1..]
                .to_vec()
        };
        assert_eq!(row("label target"), ["pusher", "python"]);
        assert_eq!(row("label driver_resolved"), ["uring", MISSING]);
        assert_eq!(
            row("goal rss_flat"),
            ["0.25 < 1 MB/min: met", "12.5 < 1 MB/min: NOT MET"]
        );
        assert_eq!(
            row("goal peak_under_budget"),
            [
                "52428800 < 1073741824 bytes: met",
                format!("419430400 < {MISSING} bytes: not judged").as_str()
            ]
        );
        assert_eq!(row("rss.peak_kib"), ["51200", "409600"]);
        assert_eq!(row("process.cancelled"), ["7", MISSING]);
        assert_eq!(row("rss.budget_bytes"), ["1073741824", MISSING]);
        assert_eq!(row("debug_memory_after_cooldown"), [MISSING, MISSING]);
        // Each row once, labels then goals then figures.
        let names: Vec<&str> = lines.iter().map(|row| row[0].as_str()).collect();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique);
        let first = |prefix: &str| names.iter().position(|n| n.starts_with(prefix)).unwrap();
        assert!(first("label ") < first("goal ") && first("goal ") < first("rss."));
    }

    #[test]
    fn columns_fall_back_to_the_driver_then_the_file_name() {
        let labels = |driver: &str| json!({"target": "pusher", "driver_resolved": driver});
        let runs = [
            run("ingest-a", "ingest", labels("uring"), json!({}), None),
            run("ingest-b", "ingest", labels("epoll"), json!({}), None),
        ];
        assert_eq!(column_titles(&runs), ["pusher (uring)", "pusher (epoll)"]);
        let runs = [
            run("ingest-a", "ingest", labels("epoll"), json!({}), None),
            run("ingest-b", "ingest", labels("epoll"), json!({}), None),
        ];
        assert_eq!(column_titles(&runs), ["ingest-a", "ingest-b"]);
        let runs = [
            run(
                "ingest-a",
                "ingest",
                json!({"driver_resolved": "uring"}),
                json!({}),
                None,
            ),
            run("ingest-b", "ingest", json!({}), json!({}), None),
        ];
        assert_eq!(column_titles(&runs), ["uring", "ingest-b"]);
    }

    #[test]
    fn compare_refuses_runs_of_different_scenarios() {
        let runs = [
            run("idle-1", "idle", json!({}), json!({}), None),
            run("chaos-1", "chaos", json!({}), json!({}), None),
        ];
        let error = compare_table(&runs).unwrap_err();
        assert!(error.contains("compare runs of one scenario"), "{error}");
    }

    #[test]
    fn the_comparison_plot_has_one_line_per_file_the_goal_and_the_budget_named() {
        let svg = compare_plot(&chaos_pair()).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        let polyline_points: Vec<usize> = svg
            .split("<polyline")
            .skip(1)
            .map(|rest| {
                let points = rest.split("points=\"").nth(1).unwrap();
                points[..points.find('"').unwrap()]
                    .split_whitespace()
                    .count()
            })
            .collect();
        assert_eq!(polyline_points, [2, 3]);
        assert!(svg.contains(">pusher</text>") && svg.contains(">python</text>"));
        assert!(svg.contains("memory budget 1024 MiB (off this scale)"));
        assert!(svg.contains(">chaos: server RSS over time</text>"));

        // Without any budget none is named; a file without readings has no line.
        let mut runs = chaos_pair();
        runs.remove(0);
        runs.push(run("chaos-3", "chaos", json!({}), json!({}), None));
        let svg = compare_plot(&runs).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(!svg.contains("memory budget"));
        let no_readings = [run("storm-1", "storm", json!({}), json!({}), None)];
        assert!(compare_plot(&no_readings).is_none());
    }

    #[test]
    fn a_pair_without_rss_readings_gets_its_scenarios_own_plot() {
        let idle = |name: &str, target: &str, per: f64| {
            run(
                name,
                "idle",
                json!({"target": target}),
                json!({"rss_before_kib": 100_000, "steps": [
                    {"sessions": 1000, "rss_after_kib": 100_000.0 + 1000.0 * per},
                    {"sessions": 5000, "rss_after_kib": 100_000.0 + 5000.0 * per}]}),
                None,
            )
        };
        let svg = compare_plot(&[
            idle("idle-1", "pusher", 1.4),
            idle("idle-2", "python", 52.0),
        ])
        .unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("goal: 2 KiB per session"));
        let latency = |name: &str, target: &str, p99: f64| {
            run(
                name,
                "latency",
                json!({"target": target}),
                json!({"latency_ms": {"p50": 0.2, "p99": p99, "p999": 2.0},
                       "process_latency_ms": {"p50": 1.0, "p99": 2.0}}),
                None,
            )
        };
        let svg = compare_plot(&[
            latency("latency-1", "pusher", 0.5),
            latency("latency-2", "python", 12.0),
        ])
        .unwrap();
        assert_eq!(svg.matches("<rect ").count(), 1 + 10);
        assert!(svg.contains("goal: p99 &lt; 10 ms"));
        let ingest = run(
            "ingest-1",
            "ingest",
            json!({"target": "pusher"}),
            json!({"gb_per_server_cpu_s": 8.2}),
            None,
        );
        assert!(compare_plot(&[ingest]).unwrap().contains(">8.2</text>"));
        let capacity = run(
            "capacity-1",
            "capacity",
            json!({"target": "pusher"}),
            json!({"bounds": {"cpu_pct_of_cores_max": 70.0},
                   "steps": [{"sessions": 500, "cpu_pct_of_cores": 4.0},
                             {"sessions": 1000, "cpu_pct_of_cores": 8.5}]}),
            None,
        );
        let svg = compare_plot(&[capacity]).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(
            svg.contains("bound: 70 % of the workers&#39; cores")
                || svg.contains("bound: 70 % of the workers' cores")
        );
    }

    #[test]
    fn the_summary_has_a_row_per_run_with_headline_figures_and_goals() {
        let mut runs = chaos_pair();
        runs.push(run(
            "idle-1",
            "idle",
            json!({"target": "pusher", "driver_resolved": "epoll"}),
            json!({"sessions": 500, "kib_per_session": 1.234567}),
            None,
        ));
        let lines = parse(&summary_table(&runs));
        assert_eq!(lines[0], ["scenario", "target", "figures", "goals", "file"]);
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[1],
            [
                "chaos",
                "pusher (uring)",
                "RSS slope MB/min 0.25, RSS peak KiB 51200, 104 unanswered –, bytes missing –",
                "5/6 met; not judged: reconnected",
                "chaos-1"
            ]
        );
        assert_eq!(lines[2][1], "python");
        assert_eq!(
            lines[2][3],
            "1/6 met; NOT MET: rss_flat; not judged: all_104_answered_or_cancelled, \
             cleaned_up, peak_under_budget, reconnected"
        );
        assert_eq!(
            lines[3][..4],
            [
                "idle",
                "pusher (epoll)",
                "sessions 500, KiB/session 1.235",
                "1/1 met"
            ]
        );
    }

    #[test]
    fn a_storm_row_shows_sessions_refused_and_latencies() {
        let storm = run(
            "storm-1",
            "storm",
            json!({"target": "python"}),
            json!({"upgraded": 512, "refused": 4488, "all_open_s": null,
                   "upgrade_latency_ms": {"p99": 3011.5}, "health": {"max_ms": 12.25},
                   "rss": {"peak_kib": 61000}}),
            None,
        );
        let lines = parse(&summary_table(&[storm]));
        assert_eq!(
            lines[1][2],
            "upgraded 512, refused 4488, all open s –, upgrade p99 ms 3011.5, \
             /health max ms 12.25, RSS peak KiB 61000"
        );
    }

    #[test]
    fn cells_round_numbers_and_show_null_as_missing() {
        assert_eq!(cell(&json!(null)), MISSING);
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&json!(2.0)), "2");
        assert_eq!(cell(&json!(0.123456)), "0.123");
        assert_eq!(cell(&json!(1.5)), "1.5");
        assert_eq!(cell(&json!("uring")), "uring");
        assert_eq!(cell(&json!(true)), "true");
        assert_eq!(cell(&json!(-0.0001)), "0");
        assert_eq!(cell(&json!([1, 2])), "[1,2]");
        assert_eq!(cell(&json!([{"a": "x".repeat(60)}, {}])), "[2 items]");
        assert_eq!(
            markdown(&["a|b".to_owned()], &[("x|y".to_owned(), vec![])]),
            "| a\\|b |\n|---|\n| x\\|y |\n"
        );
    }
}
