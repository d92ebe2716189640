//! The plots' data model: series of points, each with an optional 95%
//! interval, and guide lines (the margins a verdict reads).

use crate::study::stats::{interval, mean};
use serde::Serialize;

/// How a plot draws its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlotKind {
    /// Lines through `(x, y)` points; intervals as bands and error bars.
    Line,
    /// Grouped bars: point `(i, y)` of each series is a bar in category
    /// `i`; the x axis shows `categories`; intervals as error bars.
    Bar,
}

/// A point and its 95% interval (`lo`, `hi` NaN when it has none).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Point {
    pub fn plain(x: f64, y: f64) -> Self {
        Self {
            x,
            y,
            lo: f64::NAN,
            hi: f64::NAN,
        }
    }

    /// The mean of the finite per-seed values at `x`, with their interval
    /// when every value is finite.
    pub fn from_seeds(x: f64, values: &[f64]) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        match interval(values) {
            Some(i) => Self {
                x,
                y: i.mean,
                lo: i.lo,
                hi: i.hi,
            },
            None => Self::plain(x, mean(&finite)),
        }
    }

    pub fn has_interval(&self) -> bool {
        self.lo.is_finite() && self.hi.is_finite()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// A horizontal line across a plot: a margin or a reference value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guide {
    pub y: f64,
    pub label: String,
}

/// A chart. Points that are not finite, beyond ±1e300, or not positive on
/// a log axis are skipped and break the line there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plot {
    pub title: String,
    pub kind: PlotKind,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    /// Category names of a bar plot; empty for line plots.
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    pub guides: Vec<Guide>,
}

impl Plot {
    pub fn line(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            kind: PlotKind::Line,
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_x: false,
            log_y: false,
            categories: Vec::new(),
            series: Vec::new(),
            guides: Vec::new(),
        }
    }

    pub fn bars<S: Into<String>>(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
        categories: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            kind: PlotKind::Bar,
            categories: categories.into_iter().map(Into::into).collect(),
            ..Self::line(title, x_label, y_label)
        }
    }

    pub fn log_x(mut self) -> Self {
        self.log_x = true;
        self
    }

    pub fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    /// A horizontal guide line (a verdict's margin, say).
    pub fn guide(mut self, y: f64, label: impl Into<String>) -> Self {
        self.guides.push(Guide {
            y,
            label: label.into(),
        });
        self
    }

    /// Adds a series of points without intervals.
    pub fn series(mut self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.series.push(Series {
            name: name.into(),
            points: points
                .into_iter()
                .map(|(x, y)| Point::plain(x, y))
                .collect(),
        });
        self
    }

    /// Adds a series whose every point is the mean of per-seed values,
    /// with its 95% interval.
    pub fn seeded_series(mut self, name: impl Into<String>, points: Vec<(f64, Vec<f64>)>) -> Self {
        self.series.push(Series {
            name: name.into(),
            points: points
                .iter()
                .map(|(x, v)| Point::from_seeds(*x, v))
                .collect(),
        });
        self
    }

    /// Adds a bar series: per-seed values per category, in order.
    pub fn seeded_bars(self, name: impl Into<String>, per_category: &[Vec<f64>]) -> Self {
        let points = per_category
            .iter()
            .enumerate()
            .map(|(i, v)| (i as f64, v.clone()))
            .collect();
        self.seeded_series(name, points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_points_carry_their_interval() {
        let p = Point::from_seeds(1.0, &[1.0, 2.0, 3.0]);
        assert_eq!(p.y, 2.0);
        assert!(p.has_interval() && p.lo < 2.0 && p.hi > 2.0);
        let q = Point::from_seeds(1.0, &[1.0, f64::NAN, 3.0]);
        assert_eq!(q.y, 2.0);
        assert!(!q.has_interval());
        let plot = Plot::bars("t", "x", "y", ["a", "b"])
            .seeded_bars("s", &[vec![1.0, 1.0], vec![2.0, 4.0]]);
        assert_eq!(plot.series[0].points[1].x, 1.0);
        assert_eq!(plot.series[0].points[1].y, 3.0);
    }
}
