//! Resources some study tests need that a machine may lack (Debian's
//! `dataset-fashion-mnist`, `chromium`): a test that needs one fails with
//! a message saying how to install it, unless `NORMKIT_SKIP` names it
//! (comma-separated, e.g. `NORMKIT_SKIP=chromium,fashion_mnist`), in which
//! case it passes after saying so.

use std::path::{Path, PathBuf};

/// Whether `NORMKIT_SKIP` names `resource`.
fn skipped(resource: &str) -> bool {
    std::env::var("NORMKIT_SKIP")
        .map(|v| v.split(',').any(|s| s.trim() == resource))
        .unwrap_or(false)
}

/// `Some(path)` when `found` holds; `None` when it does not and the
/// resource is skipped on purpose; otherwise a panic naming the fix.
pub fn require(resource: &str, found: Option<PathBuf>, install: &str) -> Option<PathBuf> {
    match found {
        Some(p) => Some(p),
        None if skipped(resource) => {
            eprintln!("NORMKIT_SKIP={resource}: skipping a test that needs {resource}");
            None
        }
        None => panic!(
            "this test needs {resource}, which is missing: {install} \
             (or set NORMKIT_SKIP={resource} to skip it on purpose)"
        ),
    }
}

/// Fashion-MNIST's directory, when its four files are there.
pub fn fashion_mnist() -> Option<PathBuf> {
    let dir = Path::new(normlab::study::data::FASHION_MNIST_DIR);
    let names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    let present = |n: &str| dir.join(n).is_file() || dir.join(format!("{n}.gz")).is_file();
    require(
        "fashion_mnist",
        names.iter().all(|n| present(n)).then(|| dir.to_path_buf()),
        "apt-get install dataset-fashion-mnist",
    )
}

/// The Chromium binary.
pub fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    });
    require("chromium", found, "apt-get install chromium")
}
