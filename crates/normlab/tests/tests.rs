//! normlab's integration tests, one module per command or area.
//!
//! Filters: `study` runs every study test; `fashion_mnist` only those
//! needing Debian's dataset-fashion-mnist; `chromium` only those needing
//! headless Chromium. Both fail when their resource is missing unless
//! `NORMKIT_SKIP` names it (`NORMKIT_SKIP=chromium,fashion_mnist`).

mod bench;
mod conform;
mod conform_hostile;
mod study;
mod study_chromium;
mod study_e2e;
mod study_fashion_mnist;
mod study_report;
mod study_resources;
