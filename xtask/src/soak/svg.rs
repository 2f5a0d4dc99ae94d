//! The soak's samples drawn as an SVG: resident memory over time with the
//! line fitted after the warm-up, and below it open files, threads and
//! live tokio tasks.

use std::fmt::Write as _;

use super::gate::Trend;
use crate::bench::report::escape;

/// One sample, as drawn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    /// Seconds since the start.
    pub(crate) at: f64,
    pub(crate) rss_kib: f64,
    pub(crate) fds: f64,
    pub(crate) threads: f64,
    pub(crate) tasks: Option<f64>,
}

/// A count's name, colour and points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

const WIDTH: f64 = 900.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
/// Heights of the memory panel and of the counts panel, and the gap.
const MEMORY_HEIGHT: f64 = 260.0;
const COUNTS_HEIGHT: f64 = 140.0;
const GAP: f64 = 50.0;
const HEIGHT: f64 = TOP + MEMORY_HEIGHT + GAP + COUNTS_HEIGHT + 45.0;

/// A round step for about `ticks` ticks over `span`.
fn tick_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10_f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A panel: maps data to pixels inside its box.
struct Panel {
    top: f64,
    height: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, seconds: f64) -> f64 {
        LEFT + seconds / self.x_max * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, value: f64) -> f64 {
        self.top + self.height - (value - self.y_min) / (self.y_max - self.y_min) * self.height
    }

    /// The box, its horizontal grid with labels, and the time axis ticks.
    fn frame(&self, out: &mut String, label: &str, format: &dyn Fn(f64) -> String) {
        let step = tick_step(self.y_max - self.y_min, 5.0);
        let mut value = (self.y_min / step).ceil() * step;
        while value <= self.y_max + step * 1e-9 {
            let y = self.y(value);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                WIDTH - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                format(value)
            );
            value += step;
        }
        let minutes = self.x_max / 60.0;
        let (step, unit) = if minutes >= 3.0 {
            (tick_step(minutes, 10.0) * 60.0, 60.0)
        } else {
            (tick_step(self.x_max, 10.0), 1.0)
        };
        let mut at = 0.0;
        while at <= self.x_max + 1e-9 {
            let x = self.x(at);
            let bottom = self.top + self.height;
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#888"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                bottom + 4.0,
                bottom + 17.0,
                at / unit
            );
            at += step;
        }
        let unit_name = if unit == 60.0 { "minutes" } else { "seconds" };
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>
<text x="{LEFT}" y="{:.1}" font-weight="bold">{label}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{unit_name}</text>"##,
            self.top,
            WIDTH - LEFT - RIGHT,
            self.height,
            self.top - 8.0,
            WIDTH - RIGHT,
            self.top + self.height + 30.0,
        );
    }

    fn polyline(&self, out: &mut String, points: &[(f64, f64)], colour: &str) {
        let path: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", self.x(*t), self.y(*v)))
            .collect();
        let _ = writeln!(
            out,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"##,
            path.join(" ")
        );
    }
}

/// The SVG of `points`, titled `title`, with the warm-up's end marked and
/// the fitted memory trend drawn over the samples after it.
pub(crate) fn draw(title: &str, points: &[Point], warmup: f64, trend: Option<Trend>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"##,
        escape(title)
    );
    let x_max = points.iter().map(|p| p.at).fold(1.0, f64::max);
    let mib: Vec<(f64, f64)> = points.iter().map(|p| (p.at, p.rss_kib / 1024.0)).collect();
    let low = mib.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
    let high = mib.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let low = if low.is_finite() { low } else { 0.0 };
    // Zero at the bottom when the curve is not far above it, else a margin:
    // either way a rise of 1% is visible as such, not blown up.
    let y_min = if low < high * 0.5 {
        0.0
    } else {
        (low * 0.9).floor()
    };
    let memory = Panel {
        top: TOP,
        height: MEMORY_HEIGHT,
        x_max,
        y_min,
        y_max: (high * 1.05).max(y_min + 1.0).ceil(),
    };
    memory.frame(&mut out, "resident memory (MiB)", &|v| format!("{v}"));
    let x = memory.x(warmup);
    let _ = writeln!(
        out,
        r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#666">warm-up ends</text>"##,
        TOP + MEMORY_HEIGHT,
        x + 4.0,
        TOP + 14.0
    );
    memory.polyline(&mut out, &mib, "#1f77b4");
    if let Some(trend) = trend {
        let end = x_max;
        let fitted = [
            (warmup, trend.line.at(warmup) / 1024.0),
            (end, trend.line.at(end) / 1024.0),
        ];
        memory.polyline(&mut out, &fitted, "#d62728");
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#d62728">Theil–Sen line after the warm-up: {:+.1} KiB/min ({:+.3}%/min)</text>"##,
            WIDTH - RIGHT - 6.0,
            TOP + MEMORY_HEIGHT - 8.0,
            trend.per_minute,
            trend.percent_per_minute
        );
    }

    let top = TOP + MEMORY_HEIGHT + GAP;
    let count_max = points
        .iter()
        .flat_map(|p| [p.fds, p.threads, p.tasks.unwrap_or(0.0)])
        .fold(1.0, f64::max);
    let counts = Panel {
        top,
        height: COUNTS_HEIGHT,
        x_max,
        y_min: 0.0,
        y_max: (count_max * 1.15).ceil(),
    };
    counts.frame(&mut out, "open files, threads, tokio tasks", &|v| {
        format!("{v}")
    });
    let series: [Series<'_>; 3] = [
        (
            "open files",
            "#2ca02c",
            points.iter().map(|p| (p.at, p.fds)).collect(),
        ),
        (
            "threads",
            "#9467bd",
            points.iter().map(|p| (p.at, p.threads)).collect(),
        ),
        (
            "tokio tasks",
            "#ff7f0e",
            points
                .iter()
                .filter_map(|p| p.tasks.map(|t| (p.at, t)))
                .collect(),
        ),
    ];
    for (i, (name, colour, line)) in series.iter().enumerate() {
        counts.polyline(&mut out, line, colour);
        // Lines of close counts overlap: the legend tells their range.
        let low = line.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
        let high = line
            .iter()
            .map(|(_, v)| *v)
            .fold(f64::NEG_INFINITY, f64::max);
        let range = match (low.is_finite(), low == high) {
            (false, _) => "none".to_owned(),
            (true, true) => format!("{low}"),
            (true, false) => format!("{low}–{high}"),
        };
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{colour}">{name}: {range}</text>"##,
            WIDTH - RIGHT - 6.0 - (2 - i) as f64 * 150.0,
            top - 8.0
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(30.0, 10.0), 5.0);
        assert_eq!(tick_step(60.0, 10.0), 10.0);
        assert_eq!(tick_step(1800.0, 10.0), 200.0);
        assert_eq!(tick_step(0.7, 5.0), 0.2);
    }

    #[test]
    fn the_drawing_holds_every_sample_and_the_fitted_line() {
        let points: Vec<Point> = (1..=100)
            .map(|t| Point {
                at: f64::from(t),
                rss_kib: 16384.0,
                fds: 12.0,
                threads: 5.0,
                tasks: Some(9.0),
            })
            .collect();
        let trend = super::super::gate::trend(
            &points
                .iter()
                .skip(20)
                .map(|p| (p.at, p.rss_kib))
                .collect::<Vec<_>>(),
        )
        .ok();
        let svg = draw("a <soak>", &points, 20.0, trend);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;soak&gt;"));
        // Memory, its fit, and three counts.
        assert_eq!(svg.matches("<polyline").count(), 5);
        assert!(svg.contains("+0.0 KiB/min"), "{svg}");
    }
}
