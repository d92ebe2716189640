//! Fashion-MNIST as the study's [`Dataset`]s, read through the one IDX
//! reader, `normkit_data::idx`.

use super::{DataError, Dataset, Split};
use normkit_data::idx::{self, Images};
use std::path::Path;

pub use normkit_data::idx::{FASHION_MNIST_CLASSES, FASHION_MNIST_DIR};

/// The training set's pixel mean and standard deviation over all 60,000
/// images, pixels in `[0, 1]` (the values PyTorch tutorials normalize
/// Fashion-MNIST with): the batch-size arm's `x = (p/255 − 0.2860)/0.3530`.
pub const FASHION_MEAN: f64 = 0.2860;
pub const FASHION_STD: f64 = 0.3530;

/// How much of Fashion-MNIST a study arm takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FashionArm {
    /// The first this many training images, in file order.
    pub train: usize,
    /// The first this many test images, in file order.
    pub test: usize,
}

fn dataset(images: Images) -> Result<Dataset, DataError> {
    let features = images
        .pixels
        .iter()
        .map(|&p| ((f64::from(p) / 255.0 - FASHION_MEAN) / FASHION_STD) as f32)
        .collect();
    let labels = images.labels.iter().map(|&l| usize::from(l)).collect();
    Dataset::new(
        features,
        labels,
        vec![1, images.rows, images.cols],
        FASHION_MNIST_CLASSES.len(),
    )
}

/// Fashion-MNIST from `dir` (default [`FASHION_MNIST_DIR`]): the first
/// `arm.train` training and `arm.test` test images in file order, each
/// pixel `x = (p/255 − 0.2860)/0.3530`.
///
/// # Shapes
/// - `train`: `[arm.train, 1, 28, 28]`, `test`: `[arm.test, 1, 28, 28]`,
///   10 classes (fewer examples if the files hold fewer).
pub fn fashion_mnist(dir: Option<&Path>, arm: FashionArm) -> Result<Split, DataError> {
    let dir = dir.unwrap_or(Path::new(FASHION_MNIST_DIR));
    let part = |images: &str, labels: &str, limit: usize| -> Result<Dataset, DataError> {
        let read = idx::read_images(
            &idx::locate(dir, images)?,
            &idx::locate(dir, labels)?,
            FASHION_MNIST_CLASSES.len(),
            Some(limit),
        )?;
        dataset(read)
    };
    Ok(Split {
        train: part(
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            arm.train,
        )?,
        test: part("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", arm.test)?,
    })
}
