//! Verdicts from numbers: small pure functions that say whether a measured
//! result supports a published claim, and why, so no report section's
//! verdict is ever written by hand.
//!
//! Every function returns a [`Judgement`]: a [`Verdict`] and a reason that
//! quotes the numbers it was decided on. Input that cannot decide anything
//! (no measurements, invalid thresholds) gives [`Verdict::Inconclusive`]
//! rather than a guess.

use super::report::fmt_num;
use serde::Serialize;
use std::fmt;

/// How far a measurement supports a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Reproduced,
    Partly,
    NotReproduced,
    /// Nothing to judge: the experiment did not run or gave no usable
    /// numbers.
    Inconclusive,
}

impl Verdict {
    /// The word the report prints.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Partly => "partly",
            Verdict::NotReproduced => "not reproduced",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// A CSS-friendly name.
    pub fn slug(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Partly => "partly",
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

/// A verdict and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub reason: String,
}

impl Judgement {
    pub fn new(verdict: Verdict, reason: impl Into<String>) -> Self {
        Self {
            verdict,
            reason: reason.into(),
        }
    }

    /// Puts what was compared in front of the reason: `"BN vs none: …"`.
    pub fn prefixed(mut self, what: &str) -> Self {
        self.reason = format!("{what}: {}", self.reason);
        self
    }
}

fn inconclusive(reason: impl Into<String>) -> Judgement {
    Judgement::new(Verdict::Inconclusive, reason)
}

fn valid_threshold(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// Median; `None` for no values. NaN must be mapped away first.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        // Halving each first keeps two huge values from overflowing.
        v[m - 1] / 2.0 + v[m] / 2.0
    })
}

/// Whether the runs of one method beat the runs of a baseline on a metric
/// where higher is better (accuracy), comparing medians.
///
/// - reproduced: the claimed-better median exceeds the baseline's by at
///   least `margin` (and by more than 0);
/// - partly: it is higher, but by less than `margin`;
/// - not reproduced: it is not higher.
///
/// A non-finite value (a diverged run) counts as the worst possible result,
/// so it pulls its side down; the median keeps one bad run from deciding.
/// Inconclusive when a side has no runs, the margin is not a finite
/// non-negative number, or both medians are diverged runs.
pub fn compare_higher_is_better(
    claimed_better: &[f64],
    baseline: &[f64],
    margin: f64,
) -> Judgement {
    compare(claimed_better, baseline, margin, true)
}

/// [`compare_higher_is_better`] for metrics where lower is better (loss,
/// error rate): the claimed-better median must be lower by `margin`.
pub fn compare_lower_is_better(claimed_better: &[f64], baseline: &[f64], margin: f64) -> Judgement {
    compare(claimed_better, baseline, margin, false)
}

fn compare(claimed: &[f64], baseline: &[f64], margin: f64, higher_is_better: bool) -> Judgement {
    if claimed.is_empty() || baseline.is_empty() {
        return inconclusive(format!(
            "no measurements to compare ({} vs {} runs)",
            claimed.len(),
            baseline.len()
        ));
    }
    if !valid_threshold(margin) {
        return inconclusive(format!(
            "margin must be finite and non-negative, got {margin}"
        ));
    }
    let worst = if higher_is_better {
        f64::NEG_INFINITY
    } else {
        f64::INFINITY
    };
    let clean = |xs: &[f64]| -> (Vec<f64>, usize) {
        let bad = xs.iter().filter(|x| !x.is_finite()).count();
        let v = xs
            .iter()
            .map(|&x| if x.is_finite() { x } else { worst })
            .collect();
        (v, bad)
    };
    let (c, c_bad) = clean(claimed);
    let (b, b_bad) = clean(baseline);
    let (mc, mb) = (median(&c).unwrap_or(worst), median(&b).unwrap_or(worst));
    let runs = format!("{} vs {} runs", c.len(), b.len());
    let diverged = if c_bad + b_bad > 0 {
        format!(", non-finite: {c_bad} vs {b_bad}, counted as worst")
    } else {
        String::new()
    };
    if mc.is_infinite() && mb.is_infinite() {
        return inconclusive(format!(
            "the median run diverged on both sides ({runs}{diverged})"
        ));
    }
    let gain = if higher_is_better { mc - mb } else { mb - mc };
    let word = if higher_is_better { "higher" } else { "lower" };
    let numbers = format!(
        "median {} vs {} ({runs}{diverged})",
        fmt_num(mc),
        fmt_num(mb)
    );
    if gain > 0.0 && gain >= margin {
        Judgement::new(
            Verdict::Reproduced,
            format!(
                "{numbers}: {word} by {}, at least the margin {}",
                fmt_num(gain),
                fmt_num(margin)
            ),
        )
    } else if gain > 0.0 {
        Judgement::new(
            Verdict::Partly,
            format!(
                "{numbers}: {word} by {}, less than the margin {}",
                fmt_num(gain),
                fmt_num(margin)
            ),
        )
    } else {
        Judgement::new(Verdict::NotReproduced, format!("{numbers}: not {word}"))
    }
}

fn ratio_inputs(
    value: f64,
    reference: f64,
    reproduced_at: f64,
    partly_at: f64,
) -> Result<f64, Judgement> {
    if !(value.is_finite() && reference.is_finite()) || reference == 0.0 {
        return Err(inconclusive(format!(
            "cannot form the ratio {} / {}",
            fmt_num(value),
            fmt_num(reference)
        )));
    }
    if !(reproduced_at.is_finite() && partly_at.is_finite()) {
        return Err(inconclusive(format!(
            "ratio thresholds must be finite, got {reproduced_at} and {partly_at}"
        )));
    }
    Ok(value / reference)
}

/// Whether `value / reference` reaches `reproduced_at` (a speed-up, say):
/// reproduced at or above it, partly at or above `partly_at`, not
/// reproduced below. Needs `partly_at ≤ reproduced_at`; inconclusive for
/// a non-finite or zero reference, non-finite value or thresholds.
pub fn ratio_at_least(value: f64, reference: f64, reproduced_at: f64, partly_at: f64) -> Judgement {
    let r = match ratio_inputs(value, reference, reproduced_at, partly_at) {
        Ok(r) => r,
        Err(j) => return j,
    };
    if partly_at > reproduced_at {
        return inconclusive(format!(
            "partly threshold {partly_at} is above the reproduced threshold {reproduced_at}"
        ));
    }
    let head = format!(
        "ratio {} / {} = {}",
        fmt_num(value),
        fmt_num(reference),
        fmt_num(r)
    );
    if r >= reproduced_at {
        Judgement::new(
            Verdict::Reproduced,
            format!("{head}, at least {}", fmt_num(reproduced_at)),
        )
    } else if r >= partly_at {
        Judgement::new(
            Verdict::Partly,
            format!(
                "{head}, below {} but at least {}",
                fmt_num(reproduced_at),
                fmt_num(partly_at)
            ),
        )
    } else {
        Judgement::new(
            Verdict::NotReproduced,
            format!("{head}, below {}", fmt_num(partly_at)),
        )
    }
}

/// Whether `value / reference` stays at or below `reproduced_at` (a cost
/// overhead, a degradation factor): reproduced at or below it, partly at or
/// below `partly_at`, not reproduced above. Needs `partly_at ≥
/// reproduced_at`; inconclusive cases as for [`ratio_at_least`].
pub fn ratio_at_most(value: f64, reference: f64, reproduced_at: f64, partly_at: f64) -> Judgement {
    let r = match ratio_inputs(value, reference, reproduced_at, partly_at) {
        Ok(r) => r,
        Err(j) => return j,
    };
    if partly_at < reproduced_at {
        return inconclusive(format!(
            "partly threshold {partly_at} is below the reproduced threshold {reproduced_at}"
        ));
    }
    let head = format!(
        "ratio {} / {} = {}",
        fmt_num(value),
        fmt_num(reference),
        fmt_num(r)
    );
    if r <= reproduced_at {
        Judgement::new(
            Verdict::Reproduced,
            format!("{head}, at most {}", fmt_num(reproduced_at)),
        )
    } else if r <= partly_at {
        Judgement::new(
            Verdict::Partly,
            format!(
                "{head}, above {} but at most {}",
                fmt_num(reproduced_at),
                fmt_num(partly_at)
            ),
        )
    } else {
        Judgement::new(
            Verdict::NotReproduced,
            format!("{head}, above {}", fmt_num(partly_at)),
        )
    }
}

/// The direction a trend should take along its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Increasing,
    Decreasing,
}

/// Whether `values` (in order along some axis, e.g. batch size from large
/// to small) move in `direction`.
///
/// Two tests: the trend is *monotone* when no step goes against the
/// direction by more than `slack`, and *large* when last − first, taken in
/// the direction, is positive and at least `min_change`. Reproduced when
/// both hold, partly when one does (a large but bumpy trend, or a monotone
/// but small one that still moves), not reproduced otherwise.
/// Inconclusive for fewer than two values, a non-finite value (map a
/// diverged run to a stand-in such as chance accuracy first, if that is
/// what it means), or invalid thresholds.
pub fn monotonic_trend(
    values: &[f64],
    direction: Direction,
    min_change: f64,
    slack: f64,
) -> Judgement {
    if values.len() < 2 {
        return inconclusive(format!("a trend needs two values, got {}", values.len()));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return inconclusive(format!("value {i} is {}", fmt_num(values[i])));
    }
    if !(valid_threshold(min_change) && valid_threshold(slack)) {
        return inconclusive(format!(
            "min_change and slack must be finite and non-negative, got {min_change} and {slack}"
        ));
    }
    let sign = match direction {
        Direction::Increasing => 1.0,
        Direction::Decreasing => -1.0,
    };
    let against = values
        .windows(2)
        .filter(|w| sign * (w[1] - w[0]) < -slack)
        .count();
    let net = sign * (values[values.len() - 1] - values[0]);
    let monotone = against == 0;
    let large = net > 0.0 && net >= min_change;
    let word = match direction {
        Direction::Increasing => "rise",
        Direction::Decreasing => "fall",
    };
    let reason = format!(
        "{} values go from {} to {}: a net {word} of {} (needs {}); {against} of {} steps go against it by more than {}",
        values.len(),
        fmt_num(values[0]),
        fmt_num(values[values.len() - 1]),
        fmt_num(net),
        fmt_num(min_change),
        values.len() - 1,
        fmt_num(slack)
    );
    let verdict = match (monotone, large) {
        (true, true) => Verdict::Reproduced,
        (false, true) => Verdict::Partly,
        (true, false) if net > 0.0 => Verdict::Partly,
        _ => Verdict::NotReproduced,
    };
    Judgement::new(verdict, reason)
}

/// Whether `values` stay within `tolerance` of each other (max − min):
/// reproduced within it, partly within twice it, not reproduced beyond.
/// A non-finite value is not flat (a diverged run broke the series);
/// inconclusive for no values or an invalid tolerance.
pub fn stays_flat(values: &[f64], tolerance: f64) -> Judgement {
    if values.is_empty() {
        return inconclusive("no values");
    }
    if !valid_threshold(tolerance) {
        return inconclusive(format!(
            "tolerance must be finite and non-negative, got {tolerance}"
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Judgement::new(
            Verdict::NotReproduced,
            format!("value {i} of {} is {}", values.len(), fmt_num(values[i])),
        );
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let spread = hi - lo;
    let head = format!(
        "{} values span {} to {} (spread {}, tolerance {})",
        values.len(),
        fmt_num(lo),
        fmt_num(hi),
        fmt_num(spread),
        fmt_num(tolerance)
    );
    let verdict = if spread <= tolerance {
        Verdict::Reproduced
    } else if spread <= 2.0 * tolerance {
        Verdict::Partly
    } else {
        Verdict::NotReproduced
    };
    Judgement::new(verdict, head)
}

/// Whether `measured` lands within `tolerance` of a published `expected`
/// value: reproduced within it, partly within twice it, not reproduced
/// beyond or when `measured` is not finite. Inconclusive for a non-finite
/// `expected` or an invalid tolerance.
pub fn close_to(measured: f64, expected: f64, tolerance: f64) -> Judgement {
    if !expected.is_finite() || !valid_threshold(tolerance) {
        return inconclusive(format!(
            "expected value and tolerance must be finite (tolerance non-negative), got {expected} and {tolerance}"
        ));
    }
    let head = format!(
        "measured {} vs expected {} ± {}",
        fmt_num(measured),
        fmt_num(expected),
        fmt_num(tolerance)
    );
    let off = (measured - expected).abs();
    let verdict = if !measured.is_finite() {
        Verdict::NotReproduced
    } else if off <= tolerance {
        Verdict::Reproduced
    } else if off <= 2.0 * tolerance {
        Verdict::Partly
    } else {
        Verdict::NotReproduced
    };
    Judgement::new(verdict, format!("{head} (off by {})", fmt_num(off)))
}

/// One verdict for a claim made of parts ("BN degrades as the batch
/// shrinks *and* GN stays flat"): reproduced or not reproduced when every
/// judged part agrees, partly when they disagree. Inconclusive parts do not
/// count for or against, but a claim with one cannot be fully reproduced
/// (it is then at most partly); all inconclusive, or no parts, is
/// inconclusive. The reason lists every part's.
pub fn all_of(parts: &[Judgement]) -> Judgement {
    let count = |v: Verdict| parts.iter().filter(|j| j.verdict == v).count();
    let (yes, no, unknown) = (
        count(Verdict::Reproduced),
        count(Verdict::NotReproduced),
        count(Verdict::Inconclusive),
    );
    let verdict = if parts.len() == unknown {
        Verdict::Inconclusive
    } else if yes == parts.len() {
        Verdict::Reproduced
    } else if no + unknown == parts.len() {
        Verdict::NotReproduced
    } else {
        Verdict::Partly
    };
    let reasons: Vec<String> = parts
        .iter()
        .map(|j| format!("[{}] {}", j.verdict, j.reason))
        .collect();
    let reason = if parts.is_empty() {
        "no parts to judge".to_string()
    } else {
        format!(
            "{yes} of {} parts reproduced: {}",
            parts.len(),
            reasons.join("; ")
        )
    };
    Judgement::new(verdict, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_infinite() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NEG_INFINITY, 1.0, 2.0]), Some(1.0));
        assert_eq!(median(&[f64::MAX, f64::MAX]), Some(f64::MAX));
    }

    #[test]
    fn prefixed_reason() {
        let j = Judgement::new(Verdict::Partly, "x").prefixed("BN vs none");
        assert_eq!(j.reason, "BN vs none: x");
    }
}
