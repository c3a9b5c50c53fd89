//! A line plot of RSS over time as plain SVG text (no plotting crate): one polyline per named
//! series (one per target: pusher today, a peer beside it later), the memory budget as a dashed
//! horizontal line, axes in seconds and MiB, and a legend.

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

/// One line: a name for the legend and `(seconds, MiB)` points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// The plot of `series` (RSS in MiB over seconds) titled `title`, with `budget_mib` (if known) as
/// a dashed line. The y axis starts at 0 MiB and reaches above the highest point and the budget.
pub fn rss_plot(title: &str, series: &[Series], budget_mib: Option<f64>) -> String {
    let xs = || series.iter().flat_map(|s| s.points.iter().map(|&(x, _)| x));
    let (mut x_min, mut x_max) = (
        xs().fold(f64::INFINITY, f64::min),
        xs().fold(f64::NEG_INFINITY, f64::max),
    );
    if !x_min.is_finite() || !x_max.is_finite() {
        (x_min, x_max) = (0.0, 1.0);
    }
    if x_max <= x_min {
        x_max = x_min + 1.0;
    }
    let y_top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, y)| y))
        .chain(budget_mib)
        .fold(0.0, f64::max);
    let y_step = nice_step(y_top.max(1.0) * 1.1 / 5.0);
    let y_max = ((y_top * 1.1 / y_step).ceil() * y_step).max(y_step);
    let x_step = nice_step((x_max - x_min) / 8.0);

    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * plot_w;
    let py = |y: f64| TOP + plot_h - (y / y_max) * plot_h;

    let mut svg = String::new();
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
    // Grid, ticks and tick labels.
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/><text x="{2:.1}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            py(y),
            WIDTH - RIGHT,
            LEFT - 6.0,
            py(y) + 4.0,
            tick_label(y)
        );
        y += y_step;
    }
    let mut x = (x_min / x_step).ceil() * x_step;
    while x <= x_max + x_step * 1e-9 {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text x="{0:.1}" y="{2:.1}" text-anchor="middle">{3}</text>"##,
            px(x),
            TOP + plot_h,
            TOP + plot_h + 16.0,
            tick_label(x)
        );
        x += x_step;
    }
    // Axes and their labels.
    let _ = writeln!(
        svg,
        r#"<path d="M{LEFT},{TOP} V{0} H{1}" fill="none" stroke="black"/>"#,
        TOP + plot_h,
        WIDTH - RIGHT
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{0}" text-anchor="middle" transform="rotate(-90 16 {0})">RSS (MiB)</text>"#,
        TOP + plot_h / 2.0
    );
    // The budget, then one polyline per series.
    if let Some(budget) = budget_mib {
        let _ = writeln!(
            svg,
            r#"<line class="budget" x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="black" stroke-width="1.5" stroke-dasharray="6,4"/>"#,
            py(budget),
            WIDTH - RIGHT
        );
    }
    for (i, s) in series.iter().enumerate() {
        let mut points = String::new();
        for &(x, y) in &s.points {
            let _ = write!(points, "{:.1},{:.1} ", px(x), py(y));
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            COLOURS[i % COLOURS.len()],
            points.trim_end()
        );
    }
    // Legend, top right inside the plot area.
    let entries: Vec<(String, &str, bool)> = series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.to_owned(), COLOURS[i % COLOURS.len()], false))
        .chain(budget_mib.map(|b| (format!("budget {b:.0} MiB"), "black", true)))
        .collect();
    let legend_x = WIDTH - RIGHT - 190.0;
    for (i, (name, colour, dashed)) in entries.iter().enumerate() {
        let y = TOP + 14.0 + 18.0 * i as f64;
        let dash = if *dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="1.5"{dash}/><text x="{}" y="{}">{}</text>"#,
            legend_x + 24.0,
            legend_x + 30.0,
            y + 4.0,
            escape(name)
        );
    }
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

    #[test]
    fn one_polyline_per_series_scaled_into_the_view_box() {
        let pusher = Series {
            name: "pusher",
            points: (0..100)
                .map(|i| (i as f64 * 0.5 - 2.0, 40.0 + i as f64))
                .collect(),
        };
        let peer = Series {
            name: "python <peer>",
            points: vec![(0.0, 300.0), (10.0, 900.0), (47.5, 1200.0)],
        };
        let svg = rss_plot("chaos: RSS", &[pusher, peer], Some(1536.0));
        assert!(svg.starts_with("<svg "), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(r#"viewBox="0 0 800 420""#));
        let lines = polylines(&svg);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), 100);
        assert_eq!(lines[1].len(), 3);
        for &(x, y) in lines.iter().flatten() {
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "x {x}");
            assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "y {y}");
        }
        // The earliest point is at the left edge, the latest at the right, higher MiB is higher.
        assert_eq!(lines[0][0].0, LEFT);
        assert_eq!(lines[1][2].0, WIDTH - RIGHT);
        assert!(lines[1][2].1 < lines[1][0].1);
        // The budget is dashed and above every point (1536 MiB > 1200 MiB), and in the legend.
        assert_eq!(svg.matches("stroke-dasharray").count(), 2);
        let budget = svg.split(r#"class="budget""#).nth(1).unwrap();
        let y1: f64 = budget
            .split("y1=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(y1 >= TOP && y1 < lines[1][2].1, "budget y {y1}");
        assert!(svg.contains(">budget 1536 MiB</text>"));
        assert!(svg.contains(">python &lt;peer&gt;</text>"));
        assert!(svg.contains(">time (s)</text>") && svg.contains(">RSS (MiB)</text>"));
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
    }

    #[test]
    fn no_budget_no_dashed_line_and_degenerate_input_stays_finite() {
        let svg = rss_plot(
            "one point",
            &[Series {
                name: "pusher",
                points: vec![(3.0, 0.0)],
            }],
            None,
        );
        assert!(!svg.contains("stroke-dasharray"));
        assert_eq!(polylines(&svg).len(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let empty = rss_plot("nothing", &[], None);
        assert!(empty.starts_with("<svg ") && !empty.contains("<polyline"));
        assert!(!empty.contains("NaN"));
    }

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(33.0), 50.0);
        assert_eq!(nice_step(51.0), 100.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(40.0), "40");
        assert_eq!(tick_label(-0.0001), "0");
    }
}
