//! Plots as standalone SVG elements, written by hand: axes with readable
//! tick numbers, optional log scales, 95% intervals as bands and error
//! bars, dashed guide lines for margins, colour-blind-safe colours (Okabe &
//! Ito) and dash patterns once the colours run out. The legend sits under
//! the plot and wraps onto as many rows as it needs, so no name is cut.
//! Text is drawn as `<text>`, so no font files are needed.

use super::plot::{Plot, PlotKind, Point};
use crate::study::fmt::{escape, fmt_num};
use std::fmt::Write as _;

const WIDTH: f64 = 520.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = WIDTH - 20.0;
const TOP: f64 = 36.0;
/// Height of the plot area.
const AREA: f64 = 240.0;
/// A legend row's height and the width of one character, roughly, at the
/// legend's 11 px.
const ROW: f64 = 17.0;
const CHAR: f64 = 6.6;

const COLORS: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999",
];
const DASHES: [&str; 4] = ["", "6 3", "2 3", "8 3 2 3"];

/// Series with at most this many points get a marker at each point, and
/// error bars where they have intervals.
const MARKER_LIMIT: usize = 40;

fn style(i: usize) -> (&'static str, &'static str) {
    (
        COLORS[i % COLORS.len()],
        DASHES[(i / COLORS.len()) % DASHES.len()],
    )
}

fn dash_attr(dash: &str) -> String {
    if dash.is_empty() {
        String::new()
    } else {
        format!(" stroke-dasharray=\"{dash}\"")
    }
}

/// One axis: its domain (in log10 units on a log axis) and tick values (in
/// data units).
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
    /// Decimals for linear tick labels.
    decimals: usize,
}

impl Axis {
    fn fraction(&self, v: f64) -> f64 {
        let t = if self.log { v.log10() } else { v };
        (t - self.lo) / (self.hi - self.lo)
    }

    fn label(&self, v: f64) -> String {
        let big = v.abs() >= 1e5 || (v != 0.0 && v.abs() < 1e-3);
        if self.log || big {
            fmt_num(v)
        } else {
            let s = format!("{v:.*}", self.decimals);
            if s.trim_start_matches('-')
                .chars()
                .all(|c| c == '0' || c == '.')
            {
                "0".into()
            } else {
                s
            }
        }
    }

    /// Covers `[min, max]` (both finite, min ≤ max) with round ticks.
    fn linear(mut min: f64, mut max: f64) -> Axis {
        if min == max {
            let pad = if min == 0.0 { 1.0 } else { min.abs() * 0.1 };
            min -= pad;
            max += pad;
        }
        let step = nice_step((max - min) / 5.0);
        let lo = (min / step).floor() * step;
        let hi = (max / step).ceil() * step;
        // At most 21 ticks whatever rounding does; 5 to 10 is usual.
        let n = (((hi - lo) / step).round() as usize).min(20);
        let ticks = (0..=n)
            .map(|i| {
                let t = lo + i as f64 * step;
                if t.abs() < step * 1e-9 {
                    0.0
                } else {
                    t
                }
            })
            .collect();
        Axis {
            lo,
            hi,
            log: false,
            ticks,
            decimals: (-step.log10().floor()).max(0.0) as usize,
        }
    }

    /// Covers `[min, max]` (both positive) with a little room. Ticks go
    /// at powers of ten, or at 1, 2 and 5 times them, then at every digit
    /// times them, when the range holds fewer than three marks, and at
    /// round linear steps when even that gives fewer than two.
    fn log(min: f64, max: f64) -> Axis {
        let (mut lo, mut hi) = (min.log10(), max.log10());
        let pad = if hi > lo { 0.04 * (hi - lo) } else { 0.5 };
        lo -= pad;
        hi += pad;
        let marks = |multiples: &[f64]| -> Vec<f64> {
            let mut ticks = Vec::new();
            for k in (lo.floor() as i32)..=(hi.ceil() as i32) {
                for &m in multiples {
                    let v = m * 10f64.powi(k);
                    if (lo..=hi).contains(&v.log10()) {
                        ticks.push(v);
                    }
                }
            }
            ticks
        };
        let mut ticks = marks(&[1.0]);
        if ticks.len() > 8 {
            let every = ticks.len().div_ceil(8);
            ticks = ticks.into_iter().step_by(every).collect();
        }
        if ticks.len() < 3 {
            ticks = marks(&[1.0, 2.0, 5.0]);
        }
        if ticks.len() < 3 {
            ticks = marks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        }
        if ticks.len() < 2 {
            // Less than a factor of two: round values, evenly spaced.
            let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
            let step = nice_step((b - a) / 4.0);
            let first = (a / step).ceil() as i64;
            ticks = (first..)
                .map(|i| i as f64 * step)
                .take_while(|&v| v <= b)
                .collect();
        }
        Axis {
            lo,
            hi,
            log: true,
            ticks,
            decimals: 0,
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = if raw.is_finite() && raw > 0.0 {
        raw
    } else {
        1.0
    };
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * p
}

/// Largest magnitude drawn: beyond it the span of an axis could overflow.
const MAX_DRAWN: f64 = 1e300;

/// Whether a value can be placed on an axis.
fn drawable(v: f64, log: bool) -> bool {
    v.abs() <= MAX_DRAWN && (!log || v > 0.0)
}

fn axis_for(values: impl Iterator<Item = f64>, log: bool, include_zero: bool) -> Option<Axis> {
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        min = min.min(v);
        max = max.max(v);
    }
    if min > max {
        return None;
    }
    if include_zero && !log {
        min = min.min(0.0);
        max = max.max(0.0);
    }
    Some(if log {
        Axis::log(min, max)
    } else {
        Axis::linear(min, max)
    })
}

fn px(x: &Axis, v: f64) -> f64 {
    LEFT + x.fraction(v) * (RIGHT - LEFT)
}

/// Where things go vertically: the plot area's bottom, the legend's first
/// row and the whole height.
struct Layout {
    bottom: f64,
    x_label: f64,
    legend: f64,
    height: f64,
    /// Legend entries as (series index, x, row).
    entries: Vec<(usize, f64, usize)>,
}

impl Layout {
    /// `tick_labels`: the height the x tick labels take.
    fn new(plot: &Plot, tick_labels: f64) -> Self {
        let bottom = TOP + AREA;
        let x_label = bottom + tick_labels + 16.0;
        let legend = x_label + 22.0;
        let mut entries = Vec::new();
        let (mut x, mut row) = (LEFT, 0usize);
        for (i, s) in plot.series.iter().enumerate() {
            let w = 30.0 + CHAR * s.name.chars().count() as f64 + 14.0;
            if x > LEFT && x + w > WIDTH - 8.0 {
                x = LEFT;
                row += 1;
            }
            entries.push((i, x, row));
            x += w;
        }
        let rows = if plot.series.is_empty() { 0 } else { row + 1 };
        Self {
            bottom,
            x_label,
            legend,
            height: legend + rows as f64 * ROW + 4.0,
            entries,
        }
    }

    fn py(&self, y: &Axis, v: f64) -> f64 {
        self.bottom - y.fraction(v) * (self.bottom - TOP)
    }
}

/// Renders `plot` as one `<svg>` element.
pub fn render(plot: &Plot) -> String {
    // Bar categories that do not fit their slot side by side stand
    // upright, and the picture grows to hold the longest.
    let longest = plot
        .categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0) as f64;
    let slot = (RIGHT - LEFT) / bar_count(plot).max(1) as f64;
    let rotated = plot.kind == PlotKind::Bar && longest * CHAR > slot - 4.0;
    let layout = Layout::new(plot, if rotated { longest * CHAR + 8.0 } else { 20.0 });
    let height = layout.height;
    let mut out = String::new();
    let title = escape(&plot.title);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" viewBox=\"0 0 {WIDTH} {height:.0}\" \
         width=\"{WIDTH}\" height=\"{height:.0}\" role=\"img\" aria-label=\"{title}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<title>{title}</title>\n\
         <rect width=\"{WIDTH}\" height=\"{height:.0}\" fill=\"#fff\"/>\n\
         <text x=\"{:.1}\" y=\"20\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">{title}</text>\n",
        WIDTH / 2.0
    );
    let drawn = match plot.kind {
        PlotKind::Line => draw_lines(&mut out, plot, &layout),
        PlotKind::Bar => draw_bars(&mut out, plot, &layout, rotated),
    };
    if !drawn {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#888\">no finite data</text>",
            (LEFT + RIGHT) / 2.0,
            (TOP + layout.bottom) / 2.0
        );
    }
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#888\"/>",
        RIGHT - LEFT,
        layout.bottom - TOP
    );
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\">{}</text>",
        (LEFT + RIGHT) / 2.0,
        layout.x_label,
        escape(&plot.x_label)
    );
    let _ = writeln!(
        out,
        "<text transform=\"translate(15 {:.1}) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">{}</text>",
        (TOP + layout.bottom) / 2.0,
        escape(&plot.y_label)
    );
    legend(&mut out, plot, &layout);
    out.push_str("</svg>");
    out
}

fn y_grid(out: &mut String, y: &Axis, layout: &Layout) {
    for &t in &y.ticks {
        let v = layout.py(y, t);
        let _ = writeln!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{v:.1}\" y2=\"{v:.1}\" stroke=\"#e6e6e6\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 6.0,
            v + 4.0,
            escape(&y.label(t))
        );
    }
}

/// Dashed guide lines with their labels, inside the plot area.
fn guides(out: &mut String, plot: &Plot, y: &Axis, layout: &Layout) {
    for g in plot.guides.iter().filter(|g| drawable(g.y, y.log)) {
        let v = layout.py(y, g.y);
        let _ = writeln!(
            out,
            "<line class=\"guide\" x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{v:.1}\" y2=\"{v:.1}\" stroke=\"#555\" stroke-width=\"1.2\" stroke-dasharray=\"5 4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\" font-size=\"10\">{}</text>",
            RIGHT - 4.0,
            v - 4.0,
            escape(&g.label)
        );
    }
}

/// Every y value a plot must show: points, their intervals, guides.
fn y_values<'a>(
    plot: &'a Plot,
    keep: impl Fn(&Point) -> bool + 'a,
) -> impl Iterator<Item = f64> + 'a {
    let log = plot.log_y;
    plot.series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(move |p| keep(p))
        .flat_map(|p| [p.y, p.lo, p.hi])
        .chain(plot.guides.iter().map(|g| g.y))
        .filter(move |&v| v.is_finite() && drawable(v, log))
}

fn error_bar(out: &mut String, x: f64, lo: f64, hi: f64, color: &str) {
    let _ = writeln!(
        out,
        "<path class=\"errorbar\" d=\"M{x:.1},{lo:.1}V{hi:.1}M{:.1},{lo:.1}H{:.1}M{:.1},{hi:.1}H{:.1}\" stroke=\"{color}\" stroke-width=\"1.2\" fill=\"none\"/>",
        x - 3.0,
        x + 3.0,
        x - 3.0,
        x + 3.0
    );
}

fn draw_lines(out: &mut String, plot: &Plot, layout: &Layout) -> bool {
    let ok = |p: &Point| drawable(p.x, plot.log_x) && drawable(p.y, plot.log_y);
    let xs = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().filter(|p| ok(p)).map(|p| p.x));
    let (Some(x), Some(y)) = (
        axis_for(xs, plot.log_x, false),
        axis_for(y_values(plot, |p| ok(p)), plot.log_y, false),
    ) else {
        return false;
    };
    y_grid(out, &y, layout);
    for &t in &x.ticks {
        let v = px(&x, t);
        let _ = writeln!(
            out,
            "<line x1=\"{v:.1}\" x2=\"{v:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"#e6e6e6\"/>\
             <text x=\"{v:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            layout.bottom,
            layout.bottom + 16.0,
            escape(&x.label(t))
        );
    }
    let in_range = |v: f64| drawable(v, plot.log_y);
    for (i, s) in plot.series.iter().enumerate() {
        let (color, dash) = style(i);
        // A band through the intervals, where consecutive points have one.
        let band: Vec<&Point> = s
            .points
            .iter()
            .filter(|p| ok(p) && p.has_interval() && in_range(p.lo) && in_range(p.hi))
            .collect();
        if band.len() >= 2 {
            let upper: Vec<String> = band
                .iter()
                .map(|p| format!("{:.1},{:.1}", px(&x, p.x), layout.py(&y, p.hi)))
                .collect();
            let lower: Vec<String> = band
                .iter()
                .rev()
                .map(|p| format!("{:.1},{:.1}", px(&x, p.x), layout.py(&y, p.lo)))
                .collect();
            let _ = writeln!(
                out,
                "<polygon class=\"band\" points=\"{} {}\" fill=\"{color}\" fill-opacity=\"0.16\" stroke=\"none\"/>",
                upper.join(" "),
                lower.join(" ")
            );
        }
        // A point that cannot be drawn breaks the line into runs.
        let mut runs: Vec<Vec<&Point>> = vec![Vec::new()];
        for p in &s.points {
            if ok(p) {
                if let Some(run) = runs.last_mut() {
                    run.push(p);
                }
            } else if runs.last().is_some_and(|r| !r.is_empty()) {
                runs.push(Vec::new());
            }
        }
        let markers = s.points.len() <= MARKER_LIMIT;
        for run in &runs {
            if run.len() >= 2 {
                let coords: Vec<String> = run
                    .iter()
                    .map(|p| format!("{:.1},{:.1}", px(&x, p.x), layout.py(&y, p.y)))
                    .collect();
                let _ = writeln!(
                    out,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"{}/>",
                    coords.join(" "),
                    dash_attr(dash)
                );
            }
            if markers || run.len() == 1 {
                for p in run {
                    let (a, b) = (px(&x, p.x), layout.py(&y, p.y));
                    if p.has_interval() && in_range(p.lo) && in_range(p.hi) {
                        error_bar(out, a, layout.py(&y, p.lo), layout.py(&y, p.hi), color);
                    }
                    let _ = writeln!(
                        out,
                        "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"2.6\" fill=\"{color}\"/>"
                    );
                }
            }
        }
    }
    guides(out, plot, &y, layout);
    true
}

fn bar_count(plot: &Plot) -> usize {
    let max_index = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.x.is_finite() && p.x >= 0.0 && p.x.fract() == 0.0)
        .map(|p| p.x as usize + 1)
        .max()
        .unwrap_or(0);
    plot.categories.len().max(max_index)
}

fn draw_bars(out: &mut String, plot: &Plot, layout: &Layout, rotate: bool) -> bool {
    let n = bar_count(plot);
    // Only bars in a category: integral, in range, with a drawable value.
    let bar = |p: &Point| {
        p.x >= 0.0 && p.x.fract() == 0.0 && (p.x as usize) < n && drawable(p.y, plot.log_y)
    };
    let Some(y) = axis_for(y_values(plot, bar), plot.log_y, true) else {
        return false;
    };
    y_grid(out, &y, layout);
    let slot = (RIGHT - LEFT) / n as f64;
    for c in 0..n {
        let label = plot
            .categories
            .get(c)
            .cloned()
            .unwrap_or_else(|| c.to_string());
        let cx = LEFT + slot * (c as f64 + 0.5);
        // Upright labels end just under the axis and read bottom to top.
        let (x, y, anchor, transform) = if rotate {
            let (x, y) = (cx + 4.0, layout.bottom + 6.0);
            (
                x,
                y,
                "end",
                format!(" transform=\"rotate(-90 {x:.1} {y:.1})\""),
            )
        } else {
            (cx, layout.bottom + 16.0, "middle", String::new())
        };
        let _ = writeln!(
            out,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{anchor}\"{transform}>{}</text>",
            escape(&label)
        );
    }
    let groups = plot.series.len().max(1) as f64;
    let width = slot * 0.8 / groups;
    let base = if y.log {
        layout.bottom
    } else {
        layout.py(&y, 0.0)
    };
    for (i, s) in plot.series.iter().enumerate() {
        let (color, _) = style(i);
        for p in s.points.iter().filter(|p| bar(p)) {
            let x0 = LEFT + slot * (p.x + 0.1) + width * i as f64;
            let top = layout.py(&y, p.y);
            let _ = writeln!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\" fill-opacity=\"0.85\"><title>{}: {}</title></rect>",
                top.min(base),
                width.max(0.5),
                (top - base).abs(),
                escape(&s.name),
                escape(&fmt_num(p.y))
            );
            if p.has_interval() && drawable(p.lo, y.log) && drawable(p.hi, y.log) {
                let mid = x0 + width / 2.0;
                error_bar(out, mid, layout.py(&y, p.lo), layout.py(&y, p.hi), "#222");
            }
        }
    }
    guides(out, plot, &y, layout);
    true
}

fn legend(out: &mut String, plot: &Plot, layout: &Layout) {
    for &(i, x, row) in &layout.entries {
        let s = &plot.series[i];
        let y = layout.legend + ROW * row as f64;
        let (color, dash) = style(i);
        let swatch = match plot.kind {
            PlotKind::Line => format!(
                "<line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"2.5\"{}/>",
                x + 22.0,
                y - 4.0,
                y - 4.0,
                dash_attr(dash)
            ),
            PlotKind::Bar => format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"16\" height=\"10\" fill=\"{color}\"/>",
                y - 9.0
            ),
        };
        let _ = writeln!(
            out,
            "<g class=\"legend-entry\">{swatch}<text x=\"{:.1}\" y=\"{y:.1}\">{}</text></g>",
            x + 28.0,
            escape(&s.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        for (raw, want) in [
            (0.13, 0.2),
            (0.2, 0.2),
            (3.0, 5.0),
            (7.0, 10.0),
            (1.0, 1.0),
            (0.0, 1.0),
        ] {
            assert!((nice_step(raw) - want).abs() < 1e-12, "nice_step({raw})");
        }
    }

    #[test]
    fn linear_axis_covers_data_with_round_ticks() {
        let a = Axis::linear(0.13, 0.97);
        assert_eq!((a.lo, a.hi), (0.0, 1.0));
        let labels: Vec<String> = a.ticks.iter().map(|&t| a.label(t)).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        // A constant series still gets a range.
        let c = Axis::linear(5.0, 5.0);
        assert!(c.lo < 5.0 && c.hi > 5.0);
        let z = Axis::linear(-3.0, 2.0);
        assert!(z.ticks.contains(&0.0));
        assert_eq!(z.label(0.0), "0");
    }

    #[test]
    fn log_axis_ticks() {
        let labels = |a: &Axis| -> Vec<String> { a.ticks.iter().map(|&t| a.label(t)).collect() };
        let a = Axis::log(3e-4, 2.0);
        assert!(a.lo < 3e-4f64.log10() && a.hi > 2f64.log10());
        assert_eq!(labels(&a), ["0.001", "0.01", "0.1", "1"]);
        // Less than two decades: 1, 2 and 5 times powers of ten.
        assert_eq!(
            labels(&Axis::log(0.09, 2.3)),
            ["0.1", "0.2", "0.5", "1", "2"]
        );
        // One value still gets a range around it.
        let one = Axis::log(2.0, 2.0);
        assert!(one.lo < 2f64.log10() && one.hi > 2f64.log10());
        assert_eq!(labels(&one), ["1", "2", "5"]);
        // Narrow ranges fall back to every digit, then to linear steps.
        assert_eq!(labels(&Axis::log(1.5, 4.5)), ["2", "3", "4"]);
        assert_eq!(labels(&Axis::log(2.1, 3.9)), ["2.5", "3", "3.5"]);
        let wide = Axis::log(1e-12, 1e12);
        assert!(
            (3..=8).contains(&wide.ticks.len()),
            "{} ticks",
            wide.ticks.len()
        );
        assert_eq!(wide.label(1e-12), "1e-12");
    }
}
