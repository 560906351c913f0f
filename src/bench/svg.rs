//! A small SVG chart writer for the HTML report: line charts and grouped bar charts with
//! axes, ticks, labels and a legend, as self-contained `<svg>` text (no scripts, no fonts,
//! no external files).

use std::fmt::Write as _;

/// Most points drawn per line; longer lines keep each stretch's highest point.
const MAX_POINTS: usize = 1_200;
const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 48.0;

/// Titles of a chart.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// Above the plot.
    pub title: &'a str,
    /// Under the x axis.
    pub x_label: &'a str,
    /// Beside the y axis.
    pub y_label: &'a str,
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    /// Legend text.
    pub name: &'a str,
    /// CSS colour.
    pub color: &'a str,
    /// `(x, y)` points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// One series of a bar chart: a value per category.
#[derive(Debug, Clone)]
pub struct Bars<'a> {
    /// Legend text.
    pub name: &'a str,
    /// CSS colour.
    pub color: &'a str,
    /// One value per category.
    pub values: Vec<f64>,
}

/// Escapes text for SVG and HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A step of 1, 2 or 5 × 10^k giving about `ticks` ticks over `span`.
fn nice_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(f64::MIN_POSITIVE)
}

fn label(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if abs >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if abs >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.2}");
        text.trim_end_matches('0').to_owned()
    }
}

fn open(out: &mut String, frame: &Frame<'_>) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/><text x="{}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(14 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        escape(frame.title),
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 8.0,
        escape(frame.x_label),
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        escape(frame.y_label),
    );
}

/// Draws the y grid and ticks for `[0, y_max]`; returns the rounded-up maximum.
fn y_axis(out: &mut String, y_max: f64) -> f64 {
    let step = nice_step(y_max.max(1e-9), 5.0);
    let top = (y_max / step).ceil().max(1.0) * step;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let y = TOP + plot_h - v / top * plot_h;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            label(v)
        );
        v += step;
    }
    top
}

fn legend(out: &mut String, items: &[(&str, &str)]) {
    let mut x = LEFT;
    for (name, color) in items {
        let _ = write!(
            out,
            r#"<rect x="{x:.1}" y="26" width="10" height="10" fill="{color}"/><text x="{:.1}" y="35">{}</text>"#,
            x + 14.0,
            escape(name)
        );
        x += 24.0 + 6.5 * name.chars().count() as f64;
    }
}

/// Keeps at most [`MAX_POINTS`] points, each the highest of its stretch.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let per = points.len().div_ceil(MAX_POINTS);
    points
        .chunks(per)
        .filter_map(|chunk| {
            let y = chunk.iter().map(|p| p.1).fold(f64::MIN, f64::max);
            chunk.first().map(|p| (p.0, y))
        })
        .collect()
}

/// A line chart of `lines` (y from 0).
pub fn line_chart(frame: &Frame<'_>, lines: &[Line<'_>]) -> String {
    let mut out = String::new();
    open(&mut out, frame);
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let x_min = all().map(|p| p.0).fold(f64::MAX, f64::min).min(0.0);
    let x_max = all().map(|p| p.0).fold(f64::MIN, f64::max).max(x_min + 1.0);
    let y_top = y_axis(&mut out, all().map(|p| p.1).fold(0.0, f64::max));
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x_min) / (x_max - x_min) * plot_w;
    let sy = |y: f64| TOP + plot_h - y / y_top * plot_h;
    let step = nice_step(x_max - x_min, 6.0);
    let mut x = (x_min / step).ceil() * step;
    while x <= x_max {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            sx(x),
            TOP + plot_h + 14.0,
            label(x)
        );
        x += step;
    }
    for line in lines {
        let mut path = String::new();
        for (i, (x, y)) in thin(&line.points).iter().enumerate() {
            let _ = write!(
                path,
                "{}{:.1},{:.1}",
                if i == 0 { "M" } else { "L" },
                sx(*x),
                sy(*y)
            );
        }
        let _ = write!(
            out,
            r#"<path d="{path}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
            line.color
        );
    }
    axes(&mut out);
    let items: Vec<(&str, &str)> = lines.iter().map(|l| (l.name, l.color)).collect();
    legend(&mut out, &items);
    out.push_str("</svg>");
    out
}

/// A grouped bar chart: one group per category label, one bar per series.
pub fn bar_chart(frame: &Frame<'_>, categories: &[String], series: &[Bars<'_>]) -> String {
    let mut out = String::new();
    open(&mut out, frame);
    let y_max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max);
    let y_top = y_axis(&mut out, y_max);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let group = plot_w / categories.len().max(1) as f64;
    let bar = group * 0.8 / series.len().max(1) as f64;
    for (c, name) in categories.iter().enumerate() {
        let x0 = LEFT + c as f64 * group + group * 0.1;
        for (s, bars) in series.iter().enumerate() {
            let value = bars.values.get(c).copied().unwrap_or(0.0);
            let h = value / y_top * plot_h;
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                x0 + s as f64 * bar,
                TOP + plot_h - h,
                bar.max(0.5),
                bars.color,
                escape(name),
                label(value)
            );
        }
        let _ = write!(
            out,
            r#"<text transform="translate({:.1} {:.1}) rotate(-35)" text-anchor="end" font-size="9">{}</text>"#,
            x0 + group * 0.4,
            TOP + plot_h + 12.0,
            escape(name)
        );
    }
    axes(&mut out);
    let items: Vec<(&str, &str)> = series.iter().map(|s| (s.name, s.color)).collect();
    legend(&mut out, &items);
    out.push_str("</svg>");
    out
}

fn axes(out: &mut String) {
    let bottom = HEIGHT - BOTTOM;
    let _ = write!(
        out,
        r#"<path d="M{LEFT},{TOP}V{bottom}H{}" fill="none" stroke="black"/>"#,
        WIDTH - RIGHT
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_titles_escaped() {
        let frame = Frame {
            title: "a < b",
            x_label: "x",
            y_label: "y",
        };
        let line = line_chart(
            &frame,
            &[Line {
                name: "n",
                color: "red",
                points: (0..5000)
                    .map(|i| (f64::from(i), f64::from(i % 7)))
                    .collect(),
            }],
        );
        assert!(line.starts_with("<svg") && line.ends_with("</svg>"));
        assert!(line.contains("a &lt; b"));
        let bars = bar_chart(
            &frame,
            &["1 ms".to_owned(), "2 ms".to_owned()],
            &[Bars {
                name: "poa",
                color: "blue",
                values: vec![3.0, 0.0],
            }],
        );
        assert!(bars.contains("<rect") && bars.ends_with("</svg>"));
        assert_eq!(line_chart(&frame, &[]).matches("<svg").count(), 1);
    }

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(nice_step(100.0, 5.0), 20.0));
        assert!(close(nice_step(7.0, 5.0), 2.0));
        assert!(close(nice_step(0.3, 6.0), 0.05));
        assert_eq!(
            (label(5.0), label(0.25), label(0.5), label(25_000.0)),
            ("5".into(), "0.25".into(), "0.5".into(), "25k".into())
        );
    }
}
