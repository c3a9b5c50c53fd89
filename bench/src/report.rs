//! The result file of one scenario run (`--result-file`) and its goals, pure.
//!
//! Shape (stable; bench/README.md, "Result files"):
//!
//! ```json
//! {"format": 1, "scenario": "chaos", "labels": {"commit": "...", ...},
//!  "goals": {"rss_flat": {"value": 0.12, "op": "<", "limit": 1.0, "unit": "MB/min", "met": true}, ...},
//!  "figures": {...every field of the result line but scenario, labels...},
//!  "series": {"rss": [[s, KiB], ...], "cpu": [[s, % of one core], ...]}}
//! ```
//!
//! `met` is `true`, `false`, or `null` when the goal could not be judged (for instance no memory
//! budget on a server without `pusher_memory_budget_bytes`); `series` is `{}` for a scenario that
//! does not sample RSS and CPU.

use serde_json::{Map, Value, json};

/// Version of the result-file shape.
pub const FORMAT: u64 = 1;

/// Keys every result file has.
pub const REQUIRED: [&str; 6] = ["format", "scenario", "labels", "goals", "figures", "series"];

/// One goal of a scenario: `value op limit`, judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub name: &'static str,
    pub value: Value,
    /// One of `<`, `<=`, `>=`, `==`.
    pub op: &'static str,
    pub limit: Value,
    pub unit: &'static str,
    pub met: Option<bool>,
}

impl Goal {
    /// A goal on a number, judged here: `met` is `None` when `value` or `limit` is not a number.
    fn compare(
        name: &'static str,
        value: &Value,
        op: &'static str,
        limit: f64,
        unit: &'static str,
    ) -> Goal {
        let met = value.as_f64().map(|v| match op {
            "<" => v < limit,
            "<=" => v <= limit,
            ">=" => v >= limit,
            _ => v == limit,
        });
        Goal {
            name,
            value: value.clone(),
            op,
            limit: json!(limit),
            unit,
            met,
        }
    }

    /// A goal the scenario judged itself (`met` taken from its result line).
    fn judged(
        name: &'static str,
        value: &Value,
        op: &'static str,
        limit: &Value,
        unit: &'static str,
        met: &Value,
    ) -> Goal {
        Goal {
            name,
            value: value.clone(),
            op,
            limit: limit.clone(),
            unit,
            met: met.as_bool(),
        }
    }

    /// A yes/no goal (`value == true`).
    fn flag(name: &'static str, met: &Value) -> Goal {
        Goal {
            name,
            value: met.clone(),
            op: "==",
            limit: json!(true),
            unit: "",
            met: met.as_bool(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "value": self.value,
            "op": self.op,
            "limit": self.limit,
            "unit": self.unit,
            "met": self.met,
        })
    }
}

/// The goals of a `scenario` from the fields of its result line.
pub fn goals(scenario: &str, fields: &Map<String, Value>) -> Vec<Goal> {
    let at = |path: &str| fields_at(fields, path).cloned().unwrap_or(Value::Null);
    // The RSS slope after the warm-up, judged by the scenario (stream, outage, chaos).
    let rss_flat = || {
        Goal::judged(
            "rss_flat",
            &at("rss.slope_mb_per_min"),
            "<",
            &at("goals.rss_slope_mb_per_min_max"),
            "MB/min",
            &at("goals.rss_flat"),
        )
    };
    match scenario {
        "idle" => vec![Goal::compare(
            "kib_per_session",
            &at("kib_per_session"),
            "<=",
            2.0,
            "KiB",
        )],
        "ingest" => vec![Goal::compare(
            "gb_per_server_cpu_s",
            &at("gb_per_server_cpu_s"),
            ">=",
            2.0,
            "GB/CPU-s",
        )],
        "latency" => vec![
            Goal::compare("p99_ms", &at("latency_ms.p99"), "<", 10.0, "ms"),
            Goal::compare(
                "process_p99_ms",
                &at("process_latency_ms.p99"),
                "<",
                10.0,
                "ms",
            ),
        ],
        "storm" => vec![
            Goal::compare("refused", &at("refused"), "==", 0.0, "sessions"),
            Goal::judged(
                "all_open_s",
                &at("all_open_s"),
                "<=",
                &at("goals.all_open_s_max"),
                "s",
                &at("goals.all_open"),
            ),
            Goal::judged(
                "health_probe_max_ms",
                &at("health.max_ms"),
                "<",
                &at("goals.health_probe_max_ms_max"),
                "ms",
                &at("goals.health_ok"),
            ),
            Goal::compare(
                "closed_after_upgrade",
                &at("closed_after_upgrade.total"),
                "==",
                0.0,
                "sessions",
            ),
        ],
        "capacity" => vec![Goal::compare(
            "sessions_per_core",
            &at("sessions_per_core"),
            ">=",
            at("goal_sessions_per_core").as_f64().unwrap_or(5000.0),
            "sessions",
        )],
        "log" => vec![Goal::judged(
            "log_to_disk_ratio",
            &at("log_to_disk_ratio"),
            ">=",
            &at("goal_ratio"),
            "",
            &at("goal_met"),
        )],
        "stream" => vec![
            rss_flat(),
            Goal::judged(
                "lag_bounded",
                &at("lag.oldest_pending_age_s_max"),
                "<=",
                &at("goals.oldest_pending_age_s_max"),
                "s",
                &at("goals.lag_bounded"),
            ),
            Goal::flag("no_loss", &at("goals.no_loss")),
        ],
        "outage" => vec![
            rss_flat(),
            Goal::flag("no_loss", &at("goals.no_loss")),
            Goal::judged(
                "recovered",
                &at("lag.pending_bytes_after_drain"),
                "<=",
                &at("goals.pending_bytes_max"),
                "bytes",
                &at("goals.recovered"),
            ),
        ],
        "chaos" => {
            let peak_bytes = at("rss.peak_kib").as_f64().map(|kib| kib * 1024.0);
            vec![
                rss_flat(),
                Goal::judged(
                    "peak_under_budget",
                    &json!(peak_bytes),
                    "<",
                    &at("rss.budget_bytes"),
                    "bytes",
                    &at("goals.peak_under_budget"),
                ),
                Goal::flag(
                    "all_104_answered_or_cancelled",
                    &at("goals.all_104_answered_or_cancelled"),
                ),
                Goal::flag("no_loss", &at("goals.no_loss")),
                Goal::flag("reconnected", &at("goals.reconnected")),
                Goal::flag("cleaned_up", &at("goals.cleaned_up")),
            ]
        }
        _ => Vec::new(),
    }
}

/// The RSS slope goal of a run for its plot, from its figures: the slope from `warmup_s` to
/// `seconds` (the end of the load) below `goals.rss_slope_mb_per_min_max`; `None` for a
/// scenario without one.
pub fn slope_goal(figures: &Value) -> Option<crate::svg::SlopeGoal> {
    Some(crate::svg::SlopeGoal {
        from_s: figures["warmup_s"].as_f64().unwrap_or(0.0),
        to_s: figures["seconds"].as_f64(),
        limit_mb_per_min: figures["goals"]["rss_slope_mb_per_min_max"].as_f64()?,
    })
}

/// The value at a dotted `path` of `fields`.
fn fields_at<'a>(fields: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = fields.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    Some(value)
}

/// The result file of one run: `fields` are the result line's own fields (without `scenario`
/// and `labels`), `rss` the server's RSS readings as `[s, KiB]` rows (if sampled).
pub fn result_file(
    scenario: &str,
    labels: Value,
    fields: Map<String, Value>,
    rss: Option<Value>,
) -> Value {
    let goals: Map<String, Value> = goals(scenario, &fields)
        .iter()
        .map(|goal| (goal.name.to_owned(), goal.to_json()))
        .collect();
    let mut series = Map::new();
    if let Some(rss) = rss {
        series.insert("rss".to_owned(), rss);
    }
    json!({
        "format": FORMAT,
        "scenario": scenario,
        "labels": labels,
        "goals": goals,
        "figures": fields,
        "series": series,
    })
}

/// Checks the shape of a result file; the error names what is wrong.
pub fn validate(file: &Value) -> Result<(), String> {
    let object = file.as_object().ok_or("not a JSON object")?;
    for key in REQUIRED {
        if !object.contains_key(key) {
            return Err(format!("no \"{key}\""));
        }
    }
    if !file["scenario"].is_string() {
        return Err("\"scenario\" is not a string".to_owned());
    }
    for key in ["labels", "goals", "figures", "series"] {
        if !file[key].is_object() {
            return Err(format!("\"{key}\" is not an object"));
        }
    }
    for (name, goal) in file["goals"].as_object().into_iter().flatten() {
        for key in ["value", "op", "limit", "met"] {
            if goal.get(key).is_none() {
                return Err(format!("goal {name}: no \"{key}\""));
            }
        }
        if !matches!(goal["op"].as_str(), Some("<" | "<=" | ">=" | "==")) {
            return Err(format!("goal {name}: bad op {}", goal["op"]));
        }
        if !(goal["met"].is_boolean() || goal["met"].is_null()) {
            return Err(format!(
                "goal {name}: \"met\" is neither a boolean nor null"
            ));
        }
    }
    for (name, series) in file["series"].as_object().into_iter().flatten() {
        let rows = series
            .as_array()
            .ok_or(format!("series {name} is not an array"))?;
        let well_formed = rows.iter().all(|row| {
            row.as_array()
                .is_some_and(|row| row.len() >= 2 && row.iter().all(Value::is_number))
        });
        if !well_formed {
            return Err(format!("series {name}: a row is not [s, value, ...]"));
        }
    }
    Ok(())
}

/// The goals of a result file as `(name, met)`, after [`validate`].
pub fn goal_outcomes(file: &Value) -> Result<Vec<(String, Option<bool>)>, String> {
    validate(file)?;
    Ok(file["goals"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, goal)| (name.clone(), goal["met"].as_bool()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    /// The fields of a chaos result line, as `chaos::run` prints them (abridged).
    fn chaos_fields(slope: Value, budget: Value, peak_under: Value, no_loss: bool) -> Value {
        json!({
            "process_sessions": 30,
            "audio_sessions": 15,
            "rss": {
                "samples": 3, "start_kib": 20000, "peak_kib": 51200, "end_kib": 30000,
                "after_drain_kib": 29000, "slope_mb_per_min": slope,
                "budget_bytes": budget,
            },
            "goals": {
                "rss_slope_mb_per_min_max": 1.0,
                "rss_flat": slope.as_f64().map(|s| s < 1.0),
                "peak_under_budget": peak_under,
                "all_104_answered_or_cancelled": true,
                "no_loss": no_loss,
                "reconnected": null,
                "cleaned_up": true,
            },
        })
    }

    fn met(file: &Value, goal: &str) -> Value {
        file["goals"][goal]["met"].clone()
    }

    #[test]
    fn a_chaos_result_file_has_every_field_and_well_formed_goals() {
        let rss = json!([[-1.5, 20000], [0.0, 21000], [0.5, 51200]]);
        let file = result_file(
            "chaos",
            json!({"commit": "abc", "driver": "epoll"}),
            object(chaos_fields(json!(0.25), json!(1e9), json!(true), true)),
            Some(rss.clone()),
        );
        validate(&file).unwrap();
        assert_eq!(file["format"], 1);
        assert_eq!(file["scenario"], "chaos");
        assert_eq!(file["labels"]["commit"], "abc");
        assert_eq!(file["series"]["rss"], rss);
        assert_eq!(file["figures"]["process_sessions"], 30);
        assert!(file["figures"].get("scenario").is_none());
        let goals = file["goals"].as_object().unwrap();
        assert_eq!(
            goals.keys().collect::<Vec<_>>(),
            [
                "all_104_answered_or_cancelled",
                "cleaned_up",
                "no_loss",
                "peak_under_budget",
                "reconnected",
                "rss_flat"
            ]
        );
        assert_eq!(
            file["goals"]["rss_flat"],
            json!({"value": 0.25, "op": "<", "limit": 1.0, "unit": "MB/min", "met": true})
        );
        assert_eq!(
            file["goals"]["peak_under_budget"]["value"],
            51200.0 * 1024.0
        );
        assert_eq!(file["goals"]["peak_under_budget"]["limit"], 1e9);
        assert_eq!(
            goal_outcomes(&file).unwrap(),
            [
                ("all_104_answered_or_cancelled".to_owned(), Some(true)),
                ("cleaned_up".to_owned(), Some(true)),
                ("no_loss".to_owned(), Some(true)),
                ("peak_under_budget".to_owned(), Some(true)),
                ("reconnected".to_owned(), None),
                ("rss_flat".to_owned(), Some(true)),
            ]
        );

        // A growing RSS, a lost byte, and no budget known (not judged: null).
        let file = result_file(
            "chaos",
            json!({}),
            object(chaos_fields(json!(3.5), Value::Null, Value::Null, false)),
            Some(json!([])),
        );
        validate(&file).unwrap();
        assert_eq!(met(&file, "rss_flat"), false);
        assert_eq!(met(&file, "no_loss"), false);
        assert_eq!(met(&file, "peak_under_budget"), Value::Null);
        assert_eq!(file["goals"]["peak_under_budget"]["limit"], Value::Null);
    }

    /// The fields of a latency result line (abridged): hook p99 `p99`, 104 → 201 p99 `process_p99`.
    fn latency_fields(p99: Value, process_p99: Value) -> Map<String, Value> {
        object(json!({
            "sessions": 1000, "segments_sent": 60000, "segments_received": 60000,
            "latency_ms": {"count": 60000, "p50": 1.2, "p90": 2.0, "p99": p99,
                           "p999": 12.0, "max": 30.0, "mean": 1.4},
            "process": {"sent": 6000, "answered": 6000, "success": 6000, "busy": 0,
                        "errors": {}, "missing": 0},
            "process_latency_ms": {"count": 6000, "p50": 0.8, "p90": 1.5, "p99": process_p99,
                                   "p999": 9.0, "max": 20.0, "mean": 1.0},
        }))
    }

    #[test]
    fn a_latency_result_file_judges_p99_under_10_ms() {
        let fields = |p99: Value| latency_fields(p99, json!(2.5));
        let file = result_file("latency", json!({"date": "x"}), fields(json!(4.5)), None);
        validate(&file).unwrap();
        assert_eq!(file["series"], json!({}));
        assert_eq!(
            file["goals"]["p99_ms"],
            json!({"value": 4.5, "op": "<", "limit": 10.0, "unit": "ms", "met": true})
        );
        let slow = result_file("latency", json!({}), fields(json!(10.0)), None);
        assert_eq!(met(&slow, "p99_ms"), false);
        let none = result_file("latency", json!({}), fields(Value::Null), None);
        validate(&none).unwrap();
        assert_eq!(met(&none, "p99_ms"), Value::Null);
    }

    #[test]
    fn a_latency_result_file_judges_the_104_round_trip_p99_under_10_ms() {
        let fields = |process_p99: Value| latency_fields(json!(4.5), process_p99);
        let file = result_file("latency", json!({}), fields(json!(2.5)), None);
        validate(&file).unwrap();
        assert_eq!(
            file["goals"]["process_p99_ms"],
            json!({"value": 2.5, "op": "<", "limit": 10.0, "unit": "ms", "met": true})
        );
        assert_eq!(
            goal_outcomes(&file).unwrap(),
            [
                ("p99_ms".to_owned(), Some(true)),
                ("process_p99_ms".to_owned(), Some(true)),
            ]
        );
        let slow = result_file("latency", json!({}), fields(json!(10.0)), None);
        assert_eq!(met(&slow, "process_p99_ms"), false);
        assert_eq!(met(&slow, "p99_ms"), true);
        // No 104 answered (or none sent): not judged.
        let none = result_file("latency", json!({}), fields(Value::Null), None);
        validate(&none).unwrap();
        assert_eq!(met(&none, "process_p99_ms"), Value::Null);
    }

    #[test]
    fn an_idle_result_file_keeps_every_step_and_judges_the_largest() {
        let step = |requested: u64, sessions: u64, kib: f64| {
            json!({"sessions_requested": requested, "sessions": sessions, "kib_per_session": kib,
                   "marginal_kib_per_session": kib, "failures": 0, "sessions_lost": 0})
        };
        let fields = |largest_kib: f64| {
            object(json!({
                "sessions_requested": 18000, "sessions": 18000, "clients": 3,
                "source_ips": ["127.0.0.2", "127.0.0.3"], "kib_per_session": largest_kib,
                "steps": [step(1000, 1000, 3.1), step(10000, 10000, 1.5),
                          step(18000, 18000, largest_kib)],
            }))
        };
        let file = result_file("idle", json!({"target": "pusher"}), fields(1.4), None);
        validate(&file).unwrap();
        assert_eq!(file["series"], json!({}));
        assert_eq!(file["figures"]["steps"].as_array().unwrap().len(), 3);
        assert_eq!(file["figures"]["steps"][0]["kib_per_session"], 3.1);
        assert_eq!(
            file["goals"]["kib_per_session"],
            json!({"value": 1.4, "op": "<=", "limit": 2.0, "unit": "KiB", "met": true})
        );
        let file = result_file("idle", json!({}), fields(2.3), None);
        assert_eq!(
            goal_outcomes(&file).unwrap(),
            [("kib_per_session".to_owned(), Some(false))]
        );
    }

    #[test]
    fn a_sampled_result_file_carries_rss_and_cpu_series() {
        let mut file = result_file(
            "stream",
            json!({}),
            object(json!({"cpu": {"intervals": 2, "avg_pct": 37.5, "peak_pct": 50.0}})),
            Some(json!([[0.0, 20000], [0.5, 20100], [1.0, 20200]])),
        );
        file["series"]["cpu"] = json!([[0.5, 25.0], [1.0, 50.0]]);
        validate(&file).unwrap();
        assert_eq!(file["figures"]["cpu"]["peak_pct"], 50.0);
        let mut bad = file.clone();
        bad["series"]["cpu"] = json!([[0.5, null]]);
        let error = validate(&bad).unwrap_err();
        assert!(error.contains("series cpu"), "{error}");
        let mut bad = file.clone();
        bad["series"]["cpu"] = json!({"0.5": 25.0});
        assert_eq!(validate(&bad).unwrap_err(), "series cpu is not an array");
    }

    #[test]
    fn idle_ingest_stream_and_log_goals() {
        let idle = result_file(
            "idle",
            json!({}),
            object(json!({"kib_per_session": 2.0})),
            None,
        );
        assert_eq!(met(&idle, "kib_per_session"), true);
        let idle = result_file(
            "idle",
            json!({}),
            object(json!({"kib_per_session": 2.1})),
            None,
        );
        assert_eq!(met(&idle, "kib_per_session"), false);
        let ingest = result_file(
            "ingest",
            json!({}),
            object(json!({"gb_per_server_cpu_s": 1.9})),
            None,
        );
        assert_eq!(met(&ingest, "gb_per_server_cpu_s"), false);
        let stream = result_file(
            "stream",
            json!({}),
            object(json!({
                "rss": {"slope_mb_per_min": 0.1},
                "lag": {"oldest_pending_age_s_max": 61.0},
                "goals": {"rss_slope_mb_per_min_max": 1.0, "oldest_pending_age_s_max": 120,
                          "rss_flat": true, "lag_bounded": true, "no_loss": false},
            })),
            Some(json!([[0.0, 1], [0.5, 2]])),
        );
        validate(&stream).unwrap();
        assert_eq!(stream["goals"]["lag_bounded"]["limit"], 120);
        assert_eq!(met(&stream, "no_loss"), false);
        let log = result_file(
            "log",
            json!({}),
            object(json!({"log_to_disk_ratio": 0.9, "goal_ratio": 0.8, "goal_met": true})),
            None,
        );
        validate(&log).unwrap();
        assert_eq!(met(&log, "log_to_disk_ratio"), true);
    }

    #[test]
    fn outage_goals_are_rss_flat_no_loss_and_recovered() {
        let fields = |slope: f64, pending_after: Value, recovered: bool| {
            object(json!({
                "rss": {"slope_mb_per_min": slope},
                "lag": {"pending_bytes_after_drain": pending_after, "drained": !pending_after.is_null()},
                "goals": {"rss_slope_mb_per_min_max": 1.0, "pending_bytes_max": 0.0,
                          "rss_flat": slope < 1.0, "no_loss": true, "recovered": recovered},
            }))
        };
        let good = result_file("outage", json!({}), fields(0.2, json!(0.0), true), None);
        validate(&good).unwrap();
        let goals: Vec<String> = good["goals"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(goals, ["no_loss", "recovered", "rss_flat"]);
        assert_eq!(met(&good, "rss_flat"), true);
        assert_eq!(met(&good, "no_loss"), true);
        assert_eq!(met(&good, "recovered"), true);
        assert_eq!(good["goals"]["recovered"]["op"], "<=");
        assert_eq!(good["goals"]["recovered"]["unit"], "bytes");
        let bad = result_file("outage", json!({}), fields(1.5, Value::Null, false), None);
        validate(&bad).unwrap();
        assert_eq!(met(&bad, "rss_flat"), false);
        assert_eq!(met(&bad, "recovered"), false);
        assert_eq!(
            goal_outcomes(&bad).unwrap(),
            [
                ("no_loss".to_owned(), Some(true)),
                ("recovered".to_owned(), Some(false)),
                ("rss_flat".to_owned(), Some(false)),
            ]
        );
    }

    /// The fields of a storm result line (abridged).
    fn storm_fields(refused: u64, all_open_s: Value, health_max: Value, closed: u64) -> Value {
        let all_open = all_open_s.as_f64().is_some_and(|s| s <= 10.0);
        let health_ok = health_max.as_f64().map(|ms| ms < 1000.0);
        json!({
            "sessions": 10000, "attempted": 10000, "upgraded": 10000 - refused,
            "refused": refused, "http_refused": {"503": refused},
            "closed_after_upgrade": {"total": closed, "full_1013": closed, "draining_1001": 0,
                                     "other": 0, "by_code": {}},
            "all_open_s": all_open_s, "last_upgrade_s": 4.2, "connects_per_s": 2380.9,
            "upgrade_latency_ms": {"count": 10000, "p50": 900.0, "p99": 3100.0, "max": 4100.0},
            "health": {"probes": 50, "failures": 0, "p99_ms": 20.0, "max_ms": health_max,
                       "within_limit": health_ok},
            "rss": {"before_kib": 20000, "peak_kib": 60000, "after_kib": 30000,
                    "budget_bytes": null},
            "goals": {"refused_max": 0, "all_open_s_max": 10, "health_probe_max_ms_max": 1000.0,
                      "no_refusal": refused == 0, "all_open": all_open,
                      "none_closed": closed == 0, "health_ok": health_ok},
        })
    }

    #[test]
    fn a_capacity_result_file_judges_sessions_per_core_against_its_goal() {
        let file = |per_core: Value, goal: Option<f64>| {
            let mut fields = json!({"sessions_per_core": per_core, "sessions": 9000,
                                    "stopped_by": "cpu"});
            if let Some(goal) = goal {
                fields["goal_sessions_per_core"] = json!(goal);
            }
            result_file("capacity", json!({}), object(fields), None)
        };
        let met = file(json!(9000.0), Some(5000.0));
        validate(&met).unwrap();
        assert_eq!(
            met["goals"]["sessions_per_core"],
            json!({"value": 9000.0, "op": ">=", "limit": 5000.0, "unit": "sessions", "met": true})
        );
        assert_eq!(
            goal_outcomes(&file(json!(4999.0), None)).unwrap(),
            [("sessions_per_core".to_owned(), Some(false))],
            "5,000 per core by default"
        );
        assert_eq!(
            goal_outcomes(&file(json!(800.0), Some(500.0))).unwrap(),
            [("sessions_per_core".to_owned(), Some(true))]
        );
    }

    #[test]
    fn a_storm_result_file_judges_refusals_all_open_health_and_closes() {
        let good = result_file(
            "storm",
            json!({"target": "pusher"}),
            object(storm_fields(0, json!(4.2), json!(35.0), 0)),
            Some(json!([[0.0, 20000], [0.1, 60000]])),
        );
        validate(&good).unwrap();
        assert_eq!(
            goal_outcomes(&good).unwrap(),
            [
                ("all_open_s".to_owned(), Some(true)),
                ("closed_after_upgrade".to_owned(), Some(true)),
                ("health_probe_max_ms".to_owned(), Some(true)),
                ("refused".to_owned(), Some(true)),
            ]
        );
        assert_eq!(
            good["goals"]["all_open_s"],
            json!({"value": 4.2, "op": "<=", "limit": 10, "unit": "s", "met": true})
        );
        assert_eq!(
            good["goals"]["refused"],
            json!({"value": 0, "op": "==", "limit": 0.0, "unit": "sessions", "met": true})
        );
        assert_eq!(good["goals"]["health_probe_max_ms"]["limit"], 1000.0);
        // Today's burst: 503s, so never all open; a slow probe; 1013 closes.
        let bad = result_file(
            "storm",
            json!({}),
            object(storm_fields(4488, Value::Null, json!(1500.0), 12)),
            None,
        );
        validate(&bad).unwrap();
        assert_eq!(met(&bad, "refused"), false);
        assert_eq!(
            met(&bad, "all_open_s"),
            false,
            "not all open fails, not null"
        );
        assert_eq!(bad["goals"]["all_open_s"]["value"], Value::Null);
        assert_eq!(met(&bad, "health_probe_max_ms"), false);
        assert_eq!(met(&bad, "closed_after_upgrade"), false);
        // No probe answered at all: not judged.
        let unprobed = result_file(
            "storm",
            json!({}),
            object(storm_fields(0, json!(4.2), Value::Null, 0)),
            None,
        );
        assert_eq!(met(&unprobed, "health_probe_max_ms"), Value::Null);
    }

    #[test]
    fn malformed_files_are_rejected() {
        let good = result_file("latency", json!({}), object(json!({})), None);
        validate(&good).unwrap();
        for key in REQUIRED {
            let mut bad = good.clone();
            bad.as_object_mut().unwrap().remove(key);
            assert!(validate(&bad).is_err(), "without {key}");
        }
        let mut bad = good.clone();
        bad["goals"]["p99_ms"]["op"] = json!("~");
        assert!(validate(&bad).is_err());
        let mut bad = good.clone();
        bad["goals"]["p99_ms"]["met"] = json!("yes");
        assert!(validate(&bad).is_err());
        let mut bad = good.clone();
        bad["series"]["rss"] = json!([[1.0]]);
        assert!(validate(&bad).is_err());
        assert!(validate(&json!([])).is_err());
    }
}
