//! rtmd: the per-board dispatcher daemon. Each module below is one part of
//! `docs/architecture.md`; `board` wires them together.

pub mod config;
pub mod power;
