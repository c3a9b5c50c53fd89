//! Plots as plain SVG text (no plotting crate), drawn so that what a goal judges can be seen:
//! the axes fit the data (not a ~150 MiB line at the bottom of a 0–1,500 MiB axis).
//!
//! - [`rss_plot`]: RSS over time as growth since each target's first reading, one line per
//!   target, with the least-squares fit over the window the slope goal judges (dotted) and the
//!   goal itself, a line of the goal's slope from the first target's fit (dashed); the memory
//!   budget is named in the legend, not drawn (it would flatten the lines).
//! - [`line_plot`]: any `(x, y)` lines with dashed guides (the `idle` steps, the `capacity`
//!   ramp).
//! - [`bar_plot`]: figures per target side by side (latency percentiles, ingest rate), from 0,
//!   with a goal as a dashed line.

use std::fmt::Write;

/// Size of the picture (the viewBox is `0 0 WIDTH HEIGHT`).
pub const WIDTH: f64 = 800.0;
pub const HEIGHT: f64 = 420.0;
/// The plot area within it.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Line colours, one per series in order (repeating).
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
/// MB (10^6 bytes) per MiB.
const MB_PER_MIB: f64 = 1_048_576.0 / 1e6;

/// One line: a name for the legend and `(x, y)` points (for RSS: seconds, MiB).
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// The RSS slope goal of a run: the least-squares slope of RSS from `from_s` to `to_s` (the
/// last reading when `None`) below `limit_mb_per_min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlopeGoal {
    pub from_s: f64,
    pub to_s: Option<f64>,
    pub limit_mb_per_min: f64,
}

/// A dashed straight line from `from` to `to` (in data units), named in the legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Guide {
    pub name: String,
    pub from: (f64, f64),
    pub to: (f64, f64),
}

/// A line plot: solid `series`, dotted `fits` (coloured as the series of the same index) and
/// dashed `guides`, with legend `notes` (text only).
pub struct LinePlot<'a> {
    pub title: String,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series<'a>>,
    pub fits: Vec<Option<Guide>>,
    pub guides: Vec<Guide>,
    pub notes: Vec<String>,
}

/// Least-squares line through `points`: `(slope, intercept)`; `None` with fewer than two
/// distinct x.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if points.len() < 2 || sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    Some((slope, mean_y - slope * mean_x))
}

/// RSS over time (`series` in seconds and MiB) drawn as growth since each series' first
/// reading, with the slope goal where it can be judged (module doc).
pub fn rss_plot(
    title: &str,
    series: &[Series],
    goal: Option<SlopeGoal>,
    budget_mib: Option<f64>,
) -> String {
    let mut notes = Vec::new();
    let mut fits = Vec::new();
    let mut guides = Vec::new();
    let grown: Vec<Series> = series
        .iter()
        .map(|s| {
            let base = s.points.first().map_or(0.0, |p| p.1);
            let peak = s.points.iter().map(|p| p.1).fold(f64::NAN, f64::max);
            let name = format!("{} (from {base:.1} MiB, peak {peak:.1})", s.name);
            notes.push(name);
            Series {
                name: s.name,
                points: s.points.iter().map(|&(x, y)| (x, y - base)).collect(),
            }
        })
        .collect();
    if let Some(goal) = goal {
        for (i, s) in grown.iter().enumerate() {
            let to = goal
                .to_s
                .unwrap_or_else(|| s.points.last().map_or(goal.from_s, |p| p.0));
            let window: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.0 >= goal.from_s && p.0 <= to)
                .collect();
            let line = fit(&window).map(|(slope, intercept)| {
                let at = |x: f64| intercept + slope * x;
                Guide {
                    name: format!("{}: fit {:.2} MB/min", s.name, slope * 60.0 * MB_PER_MIB),
                    from: (goal.from_s, at(goal.from_s)),
                    to: (to, at(to)),
                }
            });
            if i == 0
                && let Some(line) = &line
            {
                let rise = goal.limit_mb_per_min / MB_PER_MIB / 60.0 * (to - goal.from_s);
                guides.push(Guide {
                    name: format!(
                        "goal: slope < {} MB/min from {} s",
                        tick_label(goal.limit_mb_per_min),
                        tick_label(goal.from_s)
                    ),
                    from: line.from,
                    to: (to, line.from.1 + rise),
                });
            }
            fits.push(line);
        }
    }
    if let Some(budget) = budget_mib {
        notes.push(format!("memory budget {budget:.0} MiB (off this scale)"));
    }
    line_plot(&LinePlot {
        title: title.to_owned(),
        x_label: "time (s)",
        y_label: "RSS − first reading (MiB)",
        series: grown,
        fits,
        guides,
        notes,
    })
}

/// The range `[lo, hi]` of `values` widened by 5 % each side and to nice steps: `(lo, hi,
/// step)`. A flat or empty range gets room around it.
fn axis(values: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64, f64) {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-9 {
        let room = (hi.abs() * 0.1).max(1.0);
        (lo, hi) = (lo - room, hi + room);
    }
    let pad = (hi - lo) * 0.05;
    // Padding never takes a range that starts at or above 0 below it.
    let lo_padded = if lo >= 0.0 && (from_zero || lo - pad < 0.0) {
        lo.min(if from_zero { 0.0 } else { lo })
    } else {
        lo - pad
    };
    let hi_padded = hi + pad;
    let step = nice_step((hi_padded - lo_padded) / 6.0);
    (
        (lo_padded / step).floor() * step,
        (hi_padded / step).ceil() * step,
        step,
    )
}

/// The frame of a plot: title, grid, ticks, axis labels; returns the SVG so far and the maps
/// from data to picture coordinates.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        let plot_h = HEIGHT - TOP - BOTTOM;
        TOP + plot_h - (y - self.y.0) / (self.y.1 - self.y.0) * plot_h
    }
}

fn open_svg(svg: &mut String, title: &str) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
}

/// Horizontal grid lines and y tick labels every `step` in `frame.y`, the axes and their labels.
fn axes(svg: &mut String, frame: &Frame, step: f64, x_label: &str, y_label: &str) {
    let plot_h = HEIGHT - TOP - BOTTOM;
    let mut y = frame.y.0;
    while y <= frame.y.1 + step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            frame.py(y),
            WIDTH - RIGHT,
            LEFT - 6.0,
            frame.py(y) + 4.0,
            tick_label(y)
        );
        y += step;
    }
    let _ = writeln!(
        svg,
        r#"<path d="M{LEFT},{TOP} V{0} H{1}" fill="none" stroke="black"/>"#,
        TOP + plot_h,
        WIDTH - RIGHT
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 10.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">{1}</text>"#,
        TOP + plot_h / 2.0,
        escape(y_label)
    );
}

/// Legend entries `(text, colour, dash)` top left inside the plot area.
fn legend(svg: &mut String, entries: &[(String, &str, &str)]) {
    let x = LEFT + 10.0;
    for (i, (text, colour, dash)) in entries.iter().enumerate() {
        let y = TOP + 14.0 + 16.0 * i as f64;
        if colour.is_empty() {
            let _ = writeln!(
                svg,
                r##"<text x="{x}" y="{}" fill="#444">{}</text>"##,
                y + 4.0,
                escape(text)
            );
            continue;
        }
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="1.5"{dash}/><text x="{}" y="{}">{}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0,
            escape(text)
        );
    }
}

/// A line plot whose axes fit its series and guides (the guides are clipped to the series'
/// x range).
pub fn line_plot(plot: &LinePlot) -> String {
    let xs = || {
        plot.series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
    };
    let (x_lo, x_hi, x_step) = axis(xs(), false);
    let x_min = xs().fold(f64::INFINITY, f64::min);
    let x_max = xs().fold(f64::NEG_INFINITY, f64::max);
    let (x0, x1) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max)
    } else {
        (x_lo, x_hi)
    };
    let lines: Vec<&Guide> = plot.fits.iter().flatten().chain(&plot.guides).collect();
    let ys = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(lines.iter().flat_map(|g| [g.from.1, g.to.1]));
    let (y0, y1, y_step) = axis(ys, false);
    let frame = Frame {
        x: (x0, x1),
        y: (y0, y1),
    };
    let mut svg = String::new();
    open_svg(&mut svg, &plot.title);
    let mut x = (x0 / x_step).ceil() * x_step;
    while x <= x1 + x_step * 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
            frame.px(x),
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0,
            tick_label(x)
        );
        x += x_step;
    }
    axes(&mut svg, &frame, y_step, plot.x_label, plot.y_label);
    let mut entries = Vec::new();
    for (i, s) in plot.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points = String::new();
        for &(x, y) in &s.points {
            let _ = write!(points, "{:.1},{:.1} ", frame.px(x), frame.py(y));
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            points.trim_end()
        );
        entries.push((s.name.to_owned(), colour, ""));
    }
    let clip = |g: &Guide| -> Option<((f64, f64), (f64, f64))> {
        let (a, b) = (g.from, g.to);
        let at = |x: f64| {
            if (b.0 - a.0).abs() < 1e-12 {
                a.1
            } else {
                a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0)
            }
        };
        let (lo, hi) = (a.0.min(b.0).max(x0), a.0.max(b.0).min(x1));
        (lo <= hi).then(|| ((lo, at(lo)), (hi, at(hi))))
    };
    for (i, fit) in plot.fits.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        if let Some(fit) = fit
            && let Some((a, b)) = clip(fit)
        {
            let _ = writeln!(
                svg,
                r#"<line class="fit" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="1" stroke-dasharray="2,3"/>"#,
                frame.px(a.0),
                frame.py(a.1),
                frame.px(b.0),
                frame.py(b.1)
            );
            entries.push((fit.name.clone(), colour, "2,3"));
        }
    }
    for guide in &plot.guides {
        if let Some((a, b)) = clip(guide) {
            let _ = writeln!(
                svg,
                r#"<line class="guide" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black" stroke-width="1.5" stroke-dasharray="6,4"/>"#,
                frame.px(a.0),
                frame.py(a.1),
                frame.px(b.0),
                frame.py(b.1)
            );
        }
        entries.push((guide.name.clone(), "black", "6,4"));
    }
    for note in &plot.notes {
        entries.push((note.clone(), "", ""));
    }
    legend(&mut svg, &entries);
    svg.push_str("</svg>\n");
    svg
}

/// Bars: one group per category, one bar per target (`groups`: name and one value per
/// category, `None` where it has none), from 0; `goal` (name, value) as a dashed line.
pub fn bar_plot(
    title: &str,
    y_label: &str,
    categories: &[&str],
    groups: &[(&str, Vec<Option<f64>>)],
    goal: Option<(&str, f64)>,
) -> String {
    let values = groups
        .iter()
        .flat_map(|(_, values)| values.iter().flatten().copied())
        .chain(goal.map(|g| g.1));
    let (y0, y1, y_step) = axis(values, true);
    let frame = Frame {
        x: (0.0, categories.len().max(1) as f64),
        y: (y0, y1),
    };
    let mut svg = String::new();
    open_svg(&mut svg, title);
    axes(&mut svg, &frame, y_step, "", y_label);
    let slot = (WIDTH - LEFT - RIGHT) / categories.len().max(1) as f64;
    let bar = slot * 0.8 / groups.len().max(1) as f64;
    let mut entries = Vec::new();
    for (c, category) in categories.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            frame.px(c as f64 + 0.5),
            HEIGHT - BOTTOM + 16.0,
            escape(category)
        );
        for (g, (_, values)) in groups.iter().enumerate() {
            let Some(value) = values.get(c).copied().flatten() else {
                continue;
            };
            let x = LEFT + slot * c as f64 + slot * 0.1 + bar * g as f64;
            let (top, base) = (frame.py(value.max(y0)), frame.py(0.0f64.max(y0)));
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                top.min(base),
                bar * 0.9,
                (base - top).abs(),
                COLOURS[g % COLOURS.len()],
                x + bar * 0.45,
                top.min(base) - 3.0,
                tick_label((value * 100.0).round() / 100.0)
            );
        }
    }
    for (g, (name, _)) in groups.iter().enumerate() {
        entries.push((name.to_string(), COLOURS[g % COLOURS.len()], ""));
    }
    if let Some((name, value)) = goal {
        let _ = writeln!(
            svg,
            r#"<line class="guide" x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="black" stroke-width="1.5" stroke-dasharray="6,4"/>"#,
            frame.py(value),
            WIDTH - RIGHT
        );
        entries.push((name.to_owned(), "black", "6,4"));
    }
    legend(&mut svg, &entries);
    svg.push_str("</svg>\n");
    svg
}

/// A step of 1, 2 or 5 × 10^k at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 || raw.is_infinite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&step| step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn tick_label(value: f64) -> String {
    // `+ 0.0` turns -0 into 0.
    let rounded = (value * 1000.0).round() / 1000.0 + 0.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `points` attributes of the polylines, parsed.
    fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.split("<polyline")
            .skip(1)
            .map(|rest| {
                let points = rest.split("points=\"").nth(1).unwrap();
                let points = &points[..points.find('"').unwrap()];
                points
                    .split_whitespace()
                    .map(|pair| {
                        let (x, y) = pair.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    /// The y tick labels, bottom to top.
    fn y_ticks(svg: &str) -> Vec<f64> {
        svg.split(r#"text-anchor="end">"#)
            .skip(1)
            .map(|rest| rest[..rest.find('<').unwrap()].parse().unwrap())
            .collect()
    }

    /// `(x1, y1, x2, y2)` of the lines of `class`.
    fn lines_of(svg: &str, class: &str) -> Vec<[f64; 4]> {
        svg.split(&format!(r#"class="{class}""#))
            .skip(1)
            .map(|rest| {
                let attr = |name: &str| -> f64 {
                    rest.split(&format!(" {name}=\""))
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                [attr("x1"), attr("y1"), attr("x2"), attr("y2")]
            })
            .collect()
    }

    #[test]
    fn rss_is_drawn_as_growth_on_an_axis_that_fits_it() {
        // ~150 MiB rising 0.5 MiB a minute over 10 minutes, budget 1,114 MiB.
        let pusher = Series {
            name: "pusher",
            points: (0..=600)
                .step_by(10)
                .map(|s| (s as f64, 150.0 + 0.5 * s as f64 / 60.0))
                .collect(),
        };
        let goal = SlopeGoal {
            from_s: 60.0,
            to_s: None,
            limit_mb_per_min: 1.0,
        };
        let svg = rss_plot("stream: RSS", &[pusher], Some(goal), Some(1113.7));
        let ticks = y_ticks(&svg);
        assert!(ticks[0] <= 0.0 && ticks[0] > -1.0, "{ticks:?}");
        let top = *ticks.last().unwrap();
        // The line grows 5 MiB and the goal line 10 MB (9.5 MiB) over 540 s: the axis ends
        // near there, not at the budget.
        assert!((9.5..15.0).contains(&top), "{ticks:?}");
        assert!(svg.contains("memory budget 1114 MiB (off this scale)"));
        assert!(svg.contains("pusher (from 150.0 MiB, peak 155.0)"));
        let lines = polylines(&svg);
        assert_eq!(lines.len(), 1);
        for &(x, y) in &lines[0] {
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "x {x}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "y {y}");
        }
        // The fit (0.52 MB/min) and the goal start together at 60 s; the goal ends higher
        // (higher MiB is a smaller y).
        assert!(svg.contains("pusher: fit 0.52 MB/min"), "{svg}");
        assert!(svg.contains("goal: slope &lt; 1 MB/min from 60 s"));
        let fit = lines_of(&svg, "fit")[0];
        let guide = lines_of(&svg, "guide")[0];
        assert_eq!(fit[0], guide[0]);
        assert!((fit[1] - guide[1]).abs() < 0.2);
        assert!(guide[3] < fit[3], "the goal rises faster than the fit");
        assert_eq!(fit[2], WIDTH - RIGHT);
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    }

    #[test]
    fn two_targets_get_a_line_and_a_fit_each_and_one_goal() {
        let pusher = Series {
            name: "pusher",
            points: vec![(0.0, 140.0), (30.0, 141.0), (60.0, 141.5)],
        };
        let peer = Series {
            name: "python <peer>",
            points: vec![(0.0, 60.0), (30.0, 260.0), (60.0, 460.0)],
        };
        let goal = SlopeGoal {
            from_s: 10.0,
            to_s: Some(60.0),
            limit_mb_per_min: 1.0,
        };
        let svg = rss_plot("chaos", &[pusher, peer], Some(goal), None);
        assert_eq!(polylines(&svg).len(), 2);
        assert_eq!(lines_of(&svg, "fit").len(), 2);
        assert_eq!(lines_of(&svg, "guide").len(), 1);
        assert!(
            svg.contains("python &lt;peer&gt;: fit 419.43 MB/min"),
            "{svg}"
        );
        assert!(*y_ticks(&svg).last().unwrap() >= 400.0);
        assert!(!svg.contains("memory budget"));
    }

    #[test]
    fn degenerate_input_stays_finite() {
        let svg = rss_plot(
            "one point",
            &[Series {
                name: "pusher",
                points: vec![(3.0, 0.0)],
            }],
            Some(SlopeGoal {
                from_s: 0.0,
                to_s: None,
                limit_mb_per_min: 1.0,
            }),
            None,
        );
        assert_eq!(polylines(&svg).len(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let empty = rss_plot("nothing", &[], None, None);
        assert!(empty.starts_with("<svg ") && !empty.contains("<polyline"));
        assert!(!empty.contains("NaN"));
    }

    #[test]
    fn a_line_plot_fits_its_guides_clipped_to_the_data() {
        let svg = line_plot(&LinePlot {
            title: "capacity".to_owned(),
            x_label: "sessions",
            y_label: "CPU (% of the workers' cores)",
            series: vec![Series {
                name: "pusher",
                points: vec![(1000.0, 5.0), (2000.0, 11.0), (4000.0, 21.0)],
            }],
            fits: vec![None],
            guides: vec![Guide {
                name: "bound 70 %".to_owned(),
                from: (0.0, 70.0),
                to: (1e9, 70.0),
            }],
            notes: vec!["a note".to_owned()],
        });
        let ticks = y_ticks(&svg);
        assert!(
            ticks[0] <= 5.0 && *ticks.last().unwrap() >= 70.0,
            "{ticks:?}"
        );
        let guide = lines_of(&svg, "guide")[0];
        assert_eq!(
            (guide[0], guide[2]),
            (LEFT, WIDTH - RIGHT),
            "clipped to the data"
        );
        assert!(svg.contains(">a note</text>"));
    }

    #[test]
    fn bars_start_at_zero_with_the_goal_dashed() {
        let svg = bar_plot(
            "latency",
            "ms",
            &["p50", "p99"],
            &[
                ("pusher", vec![Some(0.2), Some(0.5)]),
                ("python", vec![None, Some(31.0)]),
            ],
            Some(("goal p99 < 10 ms", 10.0)),
        );
        assert_eq!(
            svg.matches("<rect ").count(),
            1 + 3,
            "background and three bars"
        );
        assert_eq!(y_ticks(&svg)[0], 0.0);
        assert!(*y_ticks(&svg).last().unwrap() >= 31.0);
        assert_eq!(lines_of(&svg, "guide").len(), 1);
        assert!(svg.contains(">goal p99 &lt; 10 ms</text>"));
    }

    #[test]
    fn fits_and_steps() {
        let (slope, intercept) = fit(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert!((slope - 2.0).abs() < 1e-12 && (intercept - 1.0).abs() < 1e-12);
        assert_eq!(fit(&[(1.0, 1.0)]), None);
        assert_eq!(fit(&[(1.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(33.0), 50.0);
        assert_eq!(nice_step(51.0), 100.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(40.0), "40");
        assert_eq!(tick_label(-0.0001), "0");
        let (lo, hi, step) = axis([150.0, 155.0].into_iter(), false);
        assert!(
            lo <= 150.0 && lo > 140.0 && (155.0..165.0).contains(&hi),
            "{lo} {hi} {step}"
        );
        assert_eq!(axis([2.0, 3.0].into_iter(), true).0, 0.0);
    }
}
