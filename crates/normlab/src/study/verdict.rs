//! Verdicts from intervals.
//!
//! A [`Claim`] says, before any number is seen, what is measured (the
//! effect, one value per seed), in which direction the literature says it
//! goes, the margin it must clear and where that margin comes from. [`judge`]
//! then reads the 95% interval of the per-seed values:
//!
//! - **reproduced**: the interval clears the margin in the claimed
//!   direction;
//! - **not reproduced**: the interval excludes the claimed effect;
//! - **inconclusive**: it straddles the margin (or there are too few
//!   finite values to form an interval).
//!
//! Nothing here averages verdicts: a section's headline is its primary
//! claim's verdict, and its secondary claims are listed under it.

use super::fmt::{fmt_num, signed};
use super::stats::{interval, Interval};
use serde::Serialize;
use std::fmt;

/// What the interval says about a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Reproduced,
    NotReproduced,
    Inconclusive,
}

impl Verdict {
    /// The word the report prints.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::NotReproduced => "not reproduced",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// A CSS-friendly name.
    pub fn slug(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::NotReproduced => "not-reproduced",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The direction of a claimed effect relative to its margin `m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The effect is at least `m`.
    AtLeast,
    /// The effect is at most `m`.
    AtMost,
    /// The effect lies within `±m` (an equivalence: "matches", "stays
    /// flat").
    Within,
}

impl Direction {
    fn symbol(self) -> &'static str {
        match self {
            Direction::AtLeast => "≥",
            Direction::AtMost => "≤",
            Direction::Within => "within ±",
        }
    }
}

/// A claim as the study tests it, stated before its numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Claim {
    /// Short key, unique in its section ("bn-vs-none/sigmoid/d32").
    pub key: String,
    /// The claim in words, with its source.
    pub statement: String,
    /// The effect measured, one value per seed ("BN − none, test accuracy,
    /// paired by seed").
    pub measure: String,
    /// Unit of the effect ("points", "decades", "nats").
    pub unit: String,
    pub direction: Direction,
    pub margin: f64,
    /// Where the margin comes from: a paper's figure, or a practical
    /// threshold said as such.
    pub margin_source: String,
    /// What the literature expects here when it is not the claim itself
    /// (a known exception), said before the number.
    pub expected: Option<String>,
}

impl Claim {
    pub fn new(
        key: impl Into<String>,
        statement: impl Into<String>,
        measure: impl Into<String>,
        unit: impl Into<String>,
        direction: Direction,
        margin: f64,
        margin_source: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            statement: statement.into(),
            measure: measure.into(),
            unit: unit.into(),
            direction,
            margin,
            margin_source: margin_source.into(),
            expected: None,
        }
    }

    /// A known exception the literature expects for this comparison.
    pub fn expecting(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    /// "effect ≥ 2 points".
    pub fn threshold(&self) -> String {
        let m = fmt_num(self.margin);
        match self.direction {
            Direction::Within => format!("{} within ±{m} {}", self.measure, self.unit),
            d => format!("{} {} {m} {}", self.measure, d.symbol(), self.unit),
        }
    }
}

/// A claim with its per-seed values, interval and verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judged {
    pub claim: Claim,
    /// One value per seed, in seed order (NaN where a run is missing).
    pub per_seed: Vec<f64>,
    pub interval: Option<Interval>,
    pub verdict: Verdict,
    /// The numbers the verdict was read from, in words.
    pub reason: String,
}

impl Judged {
    /// "+3.1 [1.2, 5.0] points" or "n/a".
    pub fn interval_text(&self) -> String {
        match self.interval {
            Some(i) => format!(
                "{} [{}, {}] {}",
                signed(i.mean),
                fmt_num(i.lo),
                fmt_num(i.hi),
                self.claim.unit
            ),
            None => "n/a".into(),
        }
    }
}

/// Judges `claim` from one value per seed.
pub fn judge(claim: Claim, per_seed: Vec<f64>) -> Judged {
    let finite = per_seed.iter().filter(|v| v.is_finite()).count();
    let Some(iv) = interval(&per_seed) else {
        let reason = if per_seed.len() < 2 {
            format!(
                "{} value{}: an interval needs two seeds at least",
                per_seed.len(),
                if per_seed.len() == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "{} of {} seeds gave no finite value (a run failed or is missing)",
                per_seed.len() - finite,
                per_seed.len()
            )
        };
        return Judged {
            claim,
            per_seed,
            interval: None,
            verdict: Verdict::Inconclusive,
            reason,
        };
    };
    let m = claim.margin;
    let (verdict, how) = match claim.direction {
        Direction::AtLeast if iv.lo > m => (Verdict::Reproduced, "lies above"),
        Direction::AtLeast if iv.hi < m => (Verdict::NotReproduced, "lies below"),
        Direction::AtMost if iv.hi < m => (Verdict::Reproduced, "lies below"),
        Direction::AtMost if iv.lo > m => (Verdict::NotReproduced, "lies above"),
        Direction::Within if iv.lo > -m && iv.hi < m => (Verdict::Reproduced, "lies inside"),
        Direction::Within if iv.lo > m || iv.hi < -m => (Verdict::NotReproduced, "lies outside"),
        _ => (Verdict::Inconclusive, "straddles"),
    };
    let bound = match claim.direction {
        Direction::Within => format!("±{}", fmt_num(m)),
        _ => fmt_num(m),
    };
    let reason = format!(
        "mean {} over {} seeds, 95% interval [{}, {}] {}: it {how} the margin {bound}",
        signed(iv.mean),
        iv.n,
        fmt_num(iv.lo),
        fmt_num(iv.hi),
        claim.unit
    );
    Judged {
        claim,
        per_seed,
        interval: Some(iv),
        verdict,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(direction: Direction, margin: f64) -> Claim {
        Claim::new("k", "s", "effect", "points", direction, margin, "practical")
    }

    #[test]
    fn at_least_reads_the_lower_and_upper_bounds() {
        let v = |xs: &[f64]| judge(claim(Direction::AtLeast, 1.0), xs.to_vec()).verdict;
        assert_eq!(v(&[3.0, 3.1, 2.9]), Verdict::Reproduced);
        assert_eq!(v(&[0.1, 0.2, 0.0]), Verdict::NotReproduced);
        assert_eq!(v(&[0.0, 2.0, 4.0]), Verdict::Inconclusive);
        // Exactly at the margin is not clearing it.
        assert_eq!(v(&[1.0, 1.0]), Verdict::Inconclusive);
    }

    #[test]
    fn at_most_and_within() {
        let at_most = |xs: &[f64]| judge(claim(Direction::AtMost, 0.0), xs.to_vec()).verdict;
        assert_eq!(at_most(&[-1.0, -1.1, -0.9]), Verdict::Reproduced);
        assert_eq!(at_most(&[1.0, 1.1, 0.9]), Verdict::NotReproduced);
        let within = |xs: &[f64]| judge(claim(Direction::Within, 0.5), xs.to_vec()).verdict;
        assert_eq!(within(&[0.1, -0.1, 0.0]), Verdict::Reproduced);
        assert_eq!(within(&[2.0, 2.1, 1.9]), Verdict::NotReproduced);
        assert_eq!(within(&[-2.0, -2.1, -1.9]), Verdict::NotReproduced);
        assert_eq!(within(&[0.0, 1.0, 2.0]), Verdict::Inconclusive);
    }

    #[test]
    fn too_few_or_broken_values_are_inconclusive() {
        let j = judge(claim(Direction::AtLeast, 0.0), vec![5.0]);
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert!(j.reason.contains("two seeds"), "{}", j.reason);
        let j = judge(claim(Direction::AtLeast, 0.0), vec![5.0, f64::NAN, 6.0]);
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert!(j.reason.contains("1 of 3"), "{}", j.reason);
        assert_eq!(j.interval_text(), "n/a");
    }

    #[test]
    fn reasons_quote_the_interval_and_margin() {
        let j = judge(claim(Direction::AtLeast, 1.0), vec![1.0, 2.0, 3.0]);
        assert!(j.reason.contains("mean +2 over 3 seeds"), "{}", j.reason);
        assert!(j.reason.contains("straddles the margin 1"), "{}", j.reason);
        assert!(
            j.interval_text().starts_with("+2 ["),
            "{}",
            j.interval_text()
        );
        assert_eq!(
            claim(Direction::Within, 0.05).threshold(),
            "effect within ±0.05 points"
        );
        assert_eq!(
            claim(Direction::AtLeast, 2.0).threshold(),
            "effect ≥ 2 points"
        );
    }
}
