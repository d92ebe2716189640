//! normkit layers for burn.
