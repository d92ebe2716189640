//! Means and 95% confidence intervals over replicates.
//!
//! Every judged number in the study is the mean of one value per seed
//! (usually a paired difference between two arms that shared the seed's
//! initialization and batch order), with a two-sided 95% interval by
//! Student's t: `mean ± t(0.975, n − 1) · s / √n`, `s` the sample
//! standard deviation.

use serde::Serialize;

/// Student's t 0.975 quantiles for 1 to 30 degrees of freedom (standard
/// tables, e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2, to 4 decimals).
const T975: [f64; 30] = [
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
    2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687,
    2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
];

/// The standard normal 0.975 quantile.
const Z975: f64 = 1.959_963_984_540_054;

/// Student's t 0.975 quantile with `df` degrees of freedom: the table up
/// to 30, beyond it the Cornish–Fisher expansion around the normal
/// quantile (error below 1e-4 there). NaN for `df = 0`.
pub fn t975(df: usize) -> f64 {
    match df {
        0 => f64::NAN,
        1..=30 => T975[df - 1],
        _ => {
            let (z, v) = (Z975, df as f64);
            z + (z.powi(3) + z) / (4.0 * v)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        }
    }
}

/// A mean and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
    /// Sample standard deviation.
    pub sd: f64,
    pub n: usize,
}

pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation (divides by `n − 1`); NaN below two values.
pub fn sample_sd(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return f64::NAN;
    }
    let m = mean(values);
    let ss: f64 = values.iter().map(|v| (v - m) * (v - m)).sum();
    (ss / (values.len() - 1) as f64).sqrt()
}

/// The mean of `values` with its Student-t 95% interval; `None` with fewer
/// than two values or any non-finite one (a caller maps diverged runs to
/// a stated stand-in first).
pub fn interval(values: &[f64]) -> Option<Interval> {
    if values.len() < 2 || values.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let (m, sd, n) = (mean(values), sample_sd(values), values.len());
    let half = t975(n - 1) * sd / (n as f64).sqrt();
    Some(Interval {
        mean: m,
        lo: m - half,
        hi: m + half,
        sd,
        n,
    })
}

/// `a[i] − b[i]`, seed by seed.
pub fn paired(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_table_and_join_the_expansion() {
        assert_eq!(t975(1), 12.7062);
        assert_eq!(t975(4), 2.7764);
        assert!(t975(0).is_nan());
        // The expansion at 30 agrees with the table, and it falls toward
        // the normal quantile.
        let v = 30.0;
        let z = Z975;
        let at30 = z
            + (z.powi(3) + z) / (4.0 * v)
            + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v);
        assert!((at30 - t975(30)).abs() < 2e-4, "{at30}");
        assert!((t975(60) - 2.0003).abs() < 2e-4, "{}", t975(60));
        assert!((t975(120) - 1.9799).abs() < 2e-4);
        assert!(t975(31) < t975(30) && t975(1000) > Z975);
    }

    #[test]
    fn interval_of_known_samples() {
        // 1, 2, 3: mean 2, s = 1, half-width 4.3027 / √3.
        let i = interval(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(i.mean, 2.0);
        assert!((i.sd - 1.0).abs() < 1e-12);
        let half = 4.3027 / 3f64.sqrt();
        assert!((i.lo - (2.0 - half)).abs() < 1e-12 && (i.hi - (2.0 + half)).abs() < 1e-12);
        // Equal values give a point.
        let p = interval(&[0.5; 4]).unwrap();
        assert_eq!((p.lo, p.hi), (0.5, 0.5));
        assert!(interval(&[1.0]).is_none());
        assert!(interval(&[1.0, f64::NAN]).is_none());
        assert_eq!(paired(&[3.0, 5.0], &[1.0, 1.0]), vec![2.0, 4.0]);
    }
}
