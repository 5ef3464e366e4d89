//! rtmd: the per-board dispatcher daemon. Each module below is one part of
//! `docs/architecture.md`; `board` wires them together.

// Unit tests may slice strings, as clippy.toml lets them unwrap and index (clippy has no
// test switch for this lint). Only the test build: the library itself is still checked.
#![cfg_attr(test, allow(clippy::string_slice))]

pub mod access;
pub mod board;
pub mod bus;
pub mod capture;
pub mod config;
pub mod console;
pub mod daemon;
pub mod demo;
pub mod gadget;
pub mod images;
pub mod mutate;
pub mod nbd;
pub mod pdu;
pub mod power;
pub mod sim;
pub mod systemd;
