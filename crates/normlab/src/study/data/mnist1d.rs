//! MNIST-1D (Greydanus 2020), generated from its templates.

use super::rng::SplitMix64;
use super::{invalid, mean_std, DataError, Dataset, Split};

// ---------------------------------------------------------------------------
// MNIST-1D
// ---------------------------------------------------------------------------

/// The ten MNIST-1D digit templates (Greydanus 2020, "Scaling down deep
/// learning"): 12-point 1-D strokes, one per digit, before whitening.
const MNIST1D_TEMPLATES: [[f64; 12]; 10] = [
    [5.0, 6.0, 6.5, 6.75, 7.0, 7.0, 7.0, 7.0, 6.75, 6.5, 6.0, 5.0],
    [5.0, 3.0, 3.0, 3.4, 3.8, 4.2, 4.6, 5.0, 5.4, 5.8, 5.0, 5.0],
    [5.0, 6.0, 6.5, 6.5, 6.0, 5.25, 4.75, 4.0, 3.5, 3.5, 4.0, 5.0],
    [5.0, 6.0, 6.5, 6.5, 6.0, 5.0, 5.0, 6.0, 6.5, 6.5, 6.0, 5.0],
    [5.0, 4.4, 3.8, 3.2, 2.6, 2.6, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
    [5.0, 3.0, 3.0, 3.0, 3.0, 5.0, 6.0, 6.5, 6.5, 6.0, 4.5, 5.0],
    [5.0, 4.0, 3.5, 3.25, 3.0, 3.0, 3.0, 3.0, 3.25, 3.5, 4.0, 5.0],
    [5.0, 7.0, 7.0, 6.6, 6.2, 5.8, 5.4, 5.0, 4.6, 4.2, 5.0, 5.0],
    [5.0, 4.0, 3.5, 3.5, 4.0, 5.0, 5.0, 4.0, 3.5, 3.5, 4.0, 5.0],
    [5.0, 4.0, 3.5, 3.5, 4.0, 5.0, 5.0, 5.0, 5.0, 4.7, 4.3, 5.0],
];

/// Points per template.
pub const MNIST1D_TEMPLATE_LEN: usize = 12;

/// MNIST-1D's generator settings; the defaults are the original's, which
/// give 4,000 training and 1,000 test sequences of 40 points.
///
/// Each example is its digit's template, whitened, then: padded with
/// `padding` zeros (a random count), stretched to `12 + padding.1` points,
/// scaled by `1 + scale_coeff·(u − ½)`, rotated right by up to
/// `max_translation − 1`, its padding replaced by Gaussian-smoothed noise
/// (σ = 2 samples) of scale `corr_noise_scale`, plus white noise of scale
/// `iid_noise_scale`, sheared by a line of slope `shear_scale·(u − ½)`, and
/// resampled to `final_seq_length` points. The whole set is then shuffled,
/// standardized with one mean and std, and split.
#[derive(Debug, Clone, PartialEq)]
pub struct Mnist1dConfig {
    pub num_samples: usize,
    pub train_split: f64,
    pub padding: (usize, usize),
    pub scale_coeff: f64,
    pub max_translation: usize,
    pub corr_noise_scale: f64,
    pub iid_noise_scale: f64,
    pub shear_scale: f64,
    pub final_seq_length: usize,
    pub seed: u64,
}

impl Default for Mnist1dConfig {
    fn default() -> Self {
        Self {
            num_samples: 5000,
            train_split: 0.8,
            padding: (36, 60),
            scale_coeff: 0.4,
            max_translation: 48,
            corr_noise_scale: 0.25,
            iid_noise_scale: 2e-2,
            shear_scale: 0.75,
            final_seq_length: 40,
            seed: 42,
        }
    }
}

impl Mnist1dConfig {
    fn check(&self) -> Result<(), DataError> {
        let bad = |reason: String| Err(invalid("MNIST-1D config", reason));
        if self.num_samples < 10 {
            return bad(format!(
                "num_samples = {} gives no example of some digit",
                self.num_samples
            ));
        }
        if !(self.train_split > 0.0 && self.train_split < 1.0) {
            return bad(format!(
                "train_split = {} must lie in (0, 1)",
                self.train_split
            ));
        }
        if self.padding.0 > self.padding.1 {
            return bad(format!("padding {:?} must be (low, high)", self.padding));
        }
        if self.max_translation == 0 || self.final_seq_length < 2 {
            return bad(format!(
                "max_translation = {} and final_seq_length = {} must be at least 1 and 2",
                self.max_translation, self.final_seq_length
            ));
        }
        for (name, v) in [
            ("scale_coeff", self.scale_coeff),
            ("corr_noise_scale", self.corr_noise_scale),
            ("iid_noise_scale", self.iid_noise_scale),
            ("shear_scale", self.shear_scale),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} = {v} must be finite and non-negative"));
            }
        }
        Ok(())
    }
}

/// The templates as the generator uses them: each whitened to zero mean
/// and unit (population) std, shifted to start at 0 (every template starts
/// and ends at the same level, so it also ends at 0), and divided by 6.
pub fn mnist1d_templates() -> [[f64; MNIST1D_TEMPLATE_LEN]; 10] {
    MNIST1D_TEMPLATES.map(|t| {
        let (mean, std) = mean_std(t.iter().copied());
        let w = t.map(|v| (v - mean) / std);
        w.map(|v| (v - w[0]) / 6.0)
    })
}

/// Builds MNIST-1D from its templates; deterministic in `config.seed`.
///
/// # Shapes
/// - `train`, `test`: examples of shape `[final_seq_length]`, 10 classes.
///   `num_samples / 10` examples per digit in all, split after shuffling.
pub fn mnist1d(config: &Mnist1dConfig) -> Result<Split, DataError> {
    config.check()?;
    let templates = mnist1d_templates();
    let per_class = config.num_samples / templates.len();
    let total = per_class * templates.len();
    let seq = config.final_seq_length;
    let mut rng = SplitMix64::new(config.seed);
    let mut xs = Vec::with_capacity(total * seq);
    let mut ys = Vec::with_capacity(total);
    for (label, template) in templates.iter().enumerate() {
        for _ in 0..per_class {
            xs.extend(mnist1d_example(template, config, &mut rng));
            ys.push(label);
        }
    }
    let order = rng.permutation(total);
    let (mean, std) = mean_std(xs.iter().copied());
    let std = if std > 0.0 { std } else { 1.0 };
    let mut features = Vec::with_capacity(total * seq);
    let mut labels = Vec::with_capacity(total);
    for &i in &order {
        features.extend(
            xs[i * seq..(i + 1) * seq]
                .iter()
                .map(|&v| ((v - mean) / std) as f32),
        );
        labels.push(ys[i]);
    }
    let n_train = ((total as f64 * config.train_split) as usize).clamp(1, total - 1);
    let test_features = features.split_off(n_train * seq);
    let test_labels = labels.split_off(n_train);
    Ok(Split {
        train: Dataset::new(features, labels, vec![seq], 10)?,
        test: Dataset::new(test_features, test_labels, vec![seq], 10)?,
    })
}

/// One transformed template; the random draws come in the original's order.
fn mnist1d_example(template: &[f64], c: &Mnist1dConfig, rng: &mut SplitMix64) -> Vec<f64> {
    // A tiny offset keeps the stroke nonzero everywhere, so after stretching
    // the exact zeros are the padding and nothing else.
    const EPS: f64 = 1e-8;
    let (low, high) = c.padding;
    let pad = low + (rng.next_f64() * (high - low + 1) as f64) as usize;
    let mut x: Vec<f64> = template.iter().map(|v| v + EPS).collect();
    x.resize(template.len() + pad, 0.0);
    let mut x = interpolate(&x, template.len() + high);
    let n = x.len();

    let scale = 1.0 + c.scale_coeff * (rng.next_f64() - 0.5);
    x.iter_mut().for_each(|v| *v *= scale);

    let shift = rng.below(c.max_translation as u64) as usize % n;
    x.rotate_right(shift);

    let noise: Vec<f64> = (0..n).map(|_| c.corr_noise_scale * rng.normal()).collect();
    let noise = gaussian_smooth(&noise, 2.0);
    for (v, z) in x.iter_mut().zip(noise) {
        if *v == 0.0 {
            *v = z;
        }
    }
    for v in x.iter_mut() {
        *v += c.iid_noise_scale * rng.normal();
    }

    let shear = c.shear_scale * (rng.next_f64() - 0.5);
    for (i, v) in x.iter_mut().enumerate() {
        *v -= shear * (i as f64 / (n - 1) as f64 - 0.5);
    }
    interpolate(&x, c.final_seq_length)
}

/// Linear resampling of `x` (taken as evenly spaced over [0, 1]) to `n`
/// evenly spaced points, endpoints included.
pub(crate) fn interpolate(x: &[f64], n: usize) -> Vec<f64> {
    match (x.len(), n) {
        (_, 0) => Vec::new(),
        (0, _) => vec![0.0; n],
        (1, _) | (_, 1) => vec![x[0]; n],
        (m, _) => (0..n)
            .map(|j| {
                let pos = j as f64 * (m - 1) as f64 / (n - 1) as f64;
                let i = (pos.floor() as usize).min(m - 2);
                let t = pos - i as f64;
                x[i] * (1.0 - t) + x[i + 1] * t
            })
            .collect(),
    }
}

/// Gaussian smoothing with standard deviation `sigma` samples, the kernel
/// cut at 4σ and normalized to sum 1, edges mirrored (`d c b a | a b c d |
/// d c b a`).
fn gaussian_smooth(x: &[f64], sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as isize;
    let kernel: Vec<f64> = (-radius..=radius)
        .map(|k| (-0.5 * (k as f64 / sigma).powi(2)).exp())
        .collect();
    let total: f64 = kernel.iter().sum();
    let n = x.len() as isize;
    let mirror = |mut i: isize| {
        // Reflection has period 2n; fold into one period, then mirror.
        i = i.rem_euclid(2 * n);
        if i >= n {
            2 * n - 1 - i
        } else {
            i
        }
    };
    (0..n)
        .map(|i| {
            kernel
                .iter()
                .zip(-radius..=radius)
                .map(|(w, k)| w * x[mirror(i + k) as usize])
                .sum::<f64>()
                / total
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolate_keeps_endpoints_and_lines() {
        let x = [0.0, 1.0, 2.0, 3.0];
        let y = interpolate(&x, 7);
        for (j, v) in y.iter().enumerate() {
            assert!((v - j as f64 * 0.5).abs() < 1e-12, "{y:?}");
        }
        assert_eq!(interpolate(&[0.0, 0.0, 0.0], 5), vec![0.0; 5]);
        assert_eq!(interpolate(&[4.0], 3), vec![4.0; 3]);
    }

    #[test]
    fn gaussian_smooth_preserves_constants_and_mass() {
        let c = gaussian_smooth(&[2.5; 30], 2.0);
        assert!(c.iter().all(|v| (v - 2.5).abs() < 1e-12));
        // A centred impulse spreads with std 2: weights at ±2 are e^-0.5
        // times the peak.
        let mut x = vec![0.0; 41];
        x[20] = 1.0;
        let y = gaussian_smooth(&x, 2.0);
        assert!((y.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((y[22] / y[20] - (-0.5f64).exp()).abs() < 1e-12);
        assert_eq!(y[11], 0.0, "cut at radius 8");
        // Mirrored edges: an impulse at the first sample reflects onto
        // index 0 itself, so the output there is twice the one-sided weight.
        let mut e = vec![0.0; 20];
        e[0] = 1.0;
        let z = gaussian_smooth(&e, 2.0);
        assert!((z[0] - (y[20] + y[21])).abs() < 1e-12);
    }

    #[test]
    fn templates_start_and_end_at_zero() {
        for t in mnist1d_templates() {
            assert!(t[0].abs() < 1e-12);
            assert!(t[11].abs() < 1e-12);
            let (_, std) = mean_std(t.iter().copied());
            assert!((std - 1.0 / 6.0).abs() < 1e-12);
        }
    }
}
