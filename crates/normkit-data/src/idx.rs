//! IDX arrays of unsigned bytes, the format MNIST and Fashion-MNIST ship
//! in: a big-endian magic number `0x0000_08NN` with `NN` dimensions, the
//! dimensions as big-endian `u32`, then the data, row-major. Files may be
//! gzipped (told apart by the gzip magic bytes, not the name).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Why an IDX file could not be read. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not found (looked for {name} and {name}.gz)", dir.join(name).display())]
    Missing { dir: PathBuf, name: String },
    #[error("{}: corrupt gzip data: {source}", path.display())]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: wrong magic number {found:#010x}, expected {expected:#010x} (IDX, unsigned bytes, {} dimensions)", path.display(), expected & 0xff)]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{}: truncated: {expected} bytes expected from its header, found {found}", path.display())]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{}: {found} bytes where its header implies {expected}: trailing data", path.display())]
    TrailingData {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{} has {images} images but {} has {labels} labels", images_path.display(), labels_path.display())]
    CountMismatch {
        images_path: PathBuf,
        labels_path: PathBuf,
        images: usize,
        labels: usize,
    },
    #[error("{}: label {label} at index {index} is not one of the {classes} classes", path.display())]
    BadLabel {
        path: PathBuf,
        index: usize,
        label: usize,
        classes: usize,
    },
    #[error("{}: images are {rows}x{cols}", path.display())]
    EmptyImages {
        path: PathBuf,
        rows: usize,
        cols: usize,
    },
}

/// Reads an IDX file of unsigned bytes with `ndims` dimensions, gzipped or
/// not.
pub fn read_idx(path: &Path, ndims: u8) -> Result<Idx, IdxError> {
    let raw = fs::read(path).map_err(|source| IdxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|source| IdxError::Gzip {
                path: path.to_path_buf(),
                source,
            })?;
        out
    } else {
        raw
    };
    let header = 4 + 4 * usize::from(ndims);
    let truncated = |expected: u64| IdxError::Truncated {
        path: path.to_path_buf(),
        expected,
        found: bytes.len() as u64,
    };
    if bytes.len() < 4 {
        return Err(truncated(header as u64));
    }
    let expected_magic = 0x0800 | u32::from(ndims);
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != expected_magic {
        return Err(IdxError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
            expected: expected_magic,
        });
    }
    if bytes.len() < header {
        return Err(truncated(header as u64));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    // Saturating in u128: a hostile header cannot wrap the expected size.
    let data_len = dims
        .iter()
        .fold(1u128, |acc, &d| acc.saturating_mul(d as u128));
    let expected = (header as u128).saturating_add(data_len);
    let expected = u64::try_from(expected).unwrap_or(u64::MAX);
    match (bytes.len() as u64).cmp(&expected) {
        std::cmp::Ordering::Less => Err(truncated(expected)),
        std::cmp::Ordering::Greater => Err(IdxError::TrailingData {
            path: path.to_path_buf(),
            expected,
            found: bytes.len() as u64,
        }),
        std::cmp::Ordering::Equal => Ok(Idx {
            dims,
            data: bytes[header..].to_vec(),
        }),
    }
}

/// `dir/name`, or `dir/name.gz` if only that exists.
pub fn locate(dir: &Path, name: &str) -> Result<PathBuf, IdxError> {
    let plain = dir.join(name);
    if plain.is_file() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    Err(IdxError::Missing {
        dir: dir.to_path_buf(),
        name: name.to_string(),
    })
}

/// Labelled images: `count` images of `rows × cols` bytes, one label each.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    /// `count · rows · cols` pixels, image-major.
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

/// Reads an image file (3 dimensions) and its label file (1 dimension),
/// keeping the first `limit` examples, and checks the labels are below
/// `classes`.
pub fn read_images(
    images_path: &Path,
    labels_path: &Path,
    classes: usize,
    limit: Option<usize>,
) -> Result<Images, IdxError> {
    let images = read_idx(images_path, 3)?;
    let labels = read_idx(labels_path, 1)?;
    let (count, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
    if count != labels.dims[0] {
        return Err(IdxError::CountMismatch {
            images_path: images_path.to_path_buf(),
            labels_path: labels_path.to_path_buf(),
            images: count,
            labels: labels.dims[0],
        });
    }
    if rows == 0 || cols == 0 {
        return Err(IdxError::EmptyImages {
            path: images_path.to_path_buf(),
            rows,
            cols,
        });
    }
    let keep = limit.map_or(count, |l| l.min(count));
    let labels = labels.data[..keep].to_vec();
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| usize::from(l) >= classes)
    {
        return Err(IdxError::BadLabel {
            path: labels_path.to_path_buf(),
            index,
            label: label.into(),
            classes,
        });
    }
    let mut pixels = images.data;
    pixels.truncate(keep * rows * cols);
    Ok(Images {
        count: keep,
        rows,
        cols,
        pixels,
        labels,
    })
}

/// Fashion-MNIST's training and test sets from `dir` (default
/// [`FASHION_MNIST_DIR`]) under their usual file names, each plain or
/// gzipped, at most `limit` examples each (in file order).
///
/// # Shapes
/// - train: 60000 images of 28 × 28, test: 10000; 10 classes.
pub fn fashion_mnist(dir: Option<&Path>, limit: Option<usize>) -> Result<[Images; 2], IdxError> {
    let dir = dir.unwrap_or(Path::new(FASHION_MNIST_DIR));
    let part = |images: &str, labels: &str| {
        read_images(
            &locate(dir, images)?,
            &locate(dir, labels)?,
            FASHION_MNIST_CLASSES.len(),
            limit,
        )
    };
    Ok([
        part("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        part("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    fn header(ndims: u8, dims: &[u32]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, ndims];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("normkit-data-{name}-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_images_with_labels_and_refuses_corrupt_files() {
        let dir = scratch("idx");
        let mut img = header(3, &[2, 2, 3]);
        img.extend(0u8..12);
        let mut lab = header(1, &[2]);
        lab.extend([3u8, 9]);
        let (i, l) = (write(&dir, "i", &img), write(&dir, "l", &lab));
        let got = read_images(&i, &l, 10, None).unwrap();
        assert_eq!((got.count, got.rows, got.cols), (2, 2, 3));
        assert_eq!(got.pixels, (0u8..12).collect::<Vec<_>>());
        assert_eq!(got.labels, [3, 9]);
        let one = read_images(&i, &l, 10, Some(1)).unwrap();
        assert_eq!((one.pixels.len(), one.labels.len()), (6, 1));
        assert!(matches!(
            read_images(&i, &l, 5, None),
            Err(IdxError::BadLabel { index: 1, .. })
        ));
        let short = write(&dir, "short", &img[..img.len() - 1]);
        assert!(matches!(
            read_idx(&short, 3),
            Err(IdxError::Truncated { .. })
        ));
        let mut long = img.clone();
        long.push(0);
        let long = write(&dir, "long", &long);
        assert!(matches!(
            read_idx(&long, 3),
            Err(IdxError::TrailingData { .. })
        ));
        assert!(matches!(read_idx(&l, 3), Err(IdxError::BadMagic { .. })));
        // A hostile header with huge dimensions is a clean error.
        let huge = write(&dir, "huge", &header(3, &[u32::MAX, u32::MAX, u32::MAX]));
        assert!(matches!(
            read_idx(&huge, 3),
            Err(IdxError::Truncated { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn gzipped_files_read_as_their_contents_and_locate_finds_them() {
        use std::io::Write;
        let dir = scratch("gz");
        let mut lab = header(1, &[3]);
        lab.extend([1u8, 2, 0]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&lab).unwrap();
        write(&dir, "labels.gz", &gz.finish().unwrap());
        let path = locate(&dir, "labels").unwrap();
        assert_eq!(read_idx(&path, 1).unwrap().data, [1, 2, 0]);
        assert!(matches!(
            locate(&dir, "absent"),
            Err(IdxError::Missing { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
