//! weft CLI (being built).
