//! Plots as standalone SVG elements, written by hand: axes with readable
//! tick numbers, optional log scales, a legend, colour-blind-safe colours
//! (Okabe & Ito) and dash patterns once the colours run out. Text is drawn
//! as `<text>`, so no font files are needed; the viewer's sans-serif font
//! renders it.

use super::report::{escape, fmt_num, Plot, PlotKind};
use std::fmt::Write as _;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 380.0;
/// The plot area; the legend sits to the right of it.
const LEFT: f64 = 64.0;
const RIGHT: f64 = WIDTH - 176.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = HEIGHT - 60.0;

const COLORS: [&str; 8] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#999999",
];
const DASHES: [&str; 4] = ["", "6 3", "2 3", "8 3 2 3"];

/// Series with at most this many points get a marker at each point.
const MARKER_LIMIT: usize = 40;

fn style(i: usize) -> (&'static str, &'static str) {
    (
        COLORS[i % COLORS.len()],
        DASHES[(i / COLORS.len()) % DASHES.len()],
    )
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

fn py(y: &Axis, v: f64) -> f64 {
    BOTTOM - y.fraction(v) * (BOTTOM - TOP)
}

/// Renders `plot` as one `<svg>` element.
pub fn render(plot: &Plot) -> String {
    let mut out = String::new();
    let title = escape(&plot.title);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{title}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<title>{title}</title>\n\
         <rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#fff\"/>\n\
         <text x=\"{:.1}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{title}</text>\n",
        (LEFT + RIGHT) / 2.0
    );
    let drawn = match plot.kind {
        PlotKind::Line => draw_lines(&mut out, plot),
        PlotKind::Bar => draw_bars(&mut out, plot),
    };
    if !drawn {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#888\">no finite data</text>",
            (LEFT + RIGHT) / 2.0,
            (TOP + BOTTOM) / 2.0
        );
    }
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#888\"/>",
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"12\">{}</text>",
        (LEFT + RIGHT) / 2.0,
        HEIGHT - 12.0,
        escape(&plot.x_label)
    );
    let _ = writeln!(
        out,
        "<text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">{}</text>",
        (TOP + BOTTOM) / 2.0,
        escape(&plot.y_label)
    );
    legend(&mut out, plot);
    out.push_str("</svg>");
    out
}

fn y_grid(out: &mut String, y: &Axis) {
    for &t in &y.ticks {
        let v = py(y, t);
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

fn draw_lines(out: &mut String, plot: &Plot) -> bool {
    let ok = |&&(x, y): &&(f64, f64)| drawable(x, plot.log_x) && drawable(y, plot.log_y);
    let points = || plot.series.iter().flat_map(|s| s.points.iter().filter(ok));
    let (Some(x), Some(y)) = (
        axis_for(points().map(|p| p.0), plot.log_x, false),
        axis_for(points().map(|p| p.1), plot.log_y, false),
    ) else {
        return false;
    };
    y_grid(out, &y);
    for &t in &x.ticks {
        let v = px(&x, t);
        let _ = writeln!(
            out,
            "<line x1=\"{v:.1}\" x2=\"{v:.1}\" y1=\"{TOP}\" y2=\"{BOTTOM}\" stroke=\"#e6e6e6\"/>\
             <text x=\"{v:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            BOTTOM + 16.0,
            escape(&x.label(t))
        );
    }
    for (i, s) in plot.series.iter().enumerate() {
        let (color, dash) = style(i);
        let dash_attr = if dash.is_empty() {
            String::new()
        } else {
            format!(" stroke-dasharray=\"{dash}\"")
        };
        // A point that cannot be drawn breaks the line into runs.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for p in &s.points {
            if ok(&p) {
                if let Some(run) = runs.last_mut() {
                    run.push((px(&x, p.0), py(&y, p.1)));
                }
            } else if runs.last().is_some_and(|r| !r.is_empty()) {
                runs.push(Vec::new());
            }
        }
        let markers = s.points.len() <= MARKER_LIMIT;
        for run in &runs {
            if run.len() >= 2 {
                let coords: Vec<String> =
                    run.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
                let _ = writeln!(
                    out,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"{dash_attr}/>",
                    coords.join(" ")
                );
            }
            if markers || run.len() == 1 {
                for (a, b) in run {
                    let _ = writeln!(
                        out,
                        "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"2.6\" fill=\"{color}\"/>"
                    );
                }
            }
        }
    }
    true
}

fn draw_bars(out: &mut String, plot: &Plot) -> bool {
    let max_index = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.0.is_finite() && p.0 >= 0.0 && p.0.fract() == 0.0)
        .map(|p| p.0 as usize + 1)
        .max()
        .unwrap_or(0);
    let n = plot.categories.len().max(max_index);
    // Only bars in a category: integral, in range, with a drawable value.
    let bar = |&&(x, v): &&(f64, f64)| {
        x >= 0.0 && x.fract() == 0.0 && (x as usize) < n && drawable(v, plot.log_y)
    };
    let values = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().filter(bar).map(|p| p.1));
    let Some(y) = axis_for(values, plot.log_y, true) else {
        return false;
    };
    y_grid(out, &y);
    let slot = (RIGHT - LEFT) / n as f64;
    let rotate = n > 8;
    for c in 0..n {
        let label = plot
            .categories
            .get(c)
            .cloned()
            .unwrap_or_else(|| c.to_string());
        let cx = LEFT + slot * (c as f64 + 0.5);
        let cy = BOTTOM + 16.0;
        let transform = if rotate {
            format!(" transform=\"rotate(-35 {cx:.1} {cy:.1})\"")
        } else {
            String::new()
        };
        let anchor = if rotate { "end" } else { "middle" };
        let _ = writeln!(
            out,
            "<text x=\"{cx:.1}\" y=\"{cy:.1}\" text-anchor=\"{anchor}\"{transform}>{}</text>",
            escape(&label)
        );
    }
    let groups = plot.series.len().max(1) as f64;
    let width = slot * 0.8 / groups;
    let base = if y.log { BOTTOM } else { py(&y, 0.0) };
    for (i, s) in plot.series.iter().enumerate() {
        let (color, _) = style(i);
        for &(c, v) in s.points.iter().filter(bar) {
            let x0 = LEFT + slot * (c + 0.1) + width * i as f64;
            let top = py(&y, v);
            let _ = writeln!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}: {}</title></rect>",
                top.min(base),
                width.max(0.5),
                (top - base).abs(),
                escape(&s.name),
                escape(&fmt_num(v))
            );
        }
    }
    true
}

fn legend(out: &mut String, plot: &Plot) {
    const MAX_CHARS: usize = 21;
    let x = RIGHT + 12.0;
    for (i, s) in plot.series.iter().enumerate() {
        let y = TOP + 10.0 + 18.0 * i as f64;
        if y > HEIGHT - 8.0 {
            let _ = writeln!(
                out,
                "<text x=\"{x:.1}\" y=\"{y:.1}\" fill=\"#666\">… {} more</text>",
                plot.series.len() - i
            );
            break;
        }
        let (color, dash) = style(i);
        let swatch = match plot.kind {
            PlotKind::Line => {
                let dash_attr = if dash.is_empty() {
                    String::new()
                } else {
                    format!(" stroke-dasharray=\"{dash}\"")
                };
                format!(
                    "<line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"2.5\"{dash_attr}/>",
                    x + 20.0,
                    y - 4.0,
                    y - 4.0
                )
            }
            PlotKind::Bar => format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"16\" height=\"10\" fill=\"{color}\"/>",
                y - 9.0
            ),
        };
        let name: String = if s.name.chars().count() > MAX_CHARS {
            s.name.chars().take(MAX_CHARS - 1).chain(['…']).collect()
        } else {
            s.name.clone()
        };
        let _ = writeln!(
            out,
            "{swatch}<text x=\"{:.1}\" y=\"{y:.1}\">{}<title>{}</title></text>",
            x + 26.0,
            escape(&name),
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
