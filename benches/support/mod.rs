//! The harness both benchmarks share: the contenders behind one
//! [`contenders::Executor`] trait, the workloads, and the report tables.
//!
//! Everything here uses tierpool's public API only, so it can later move
//! into the `tierpool bench` report (issue 5) unchanged: a new scenario is
//! a function in `workload.rs` plus a table in the caller; a new contender
//! is one more `Executor` impl.

// Each bench binary uses a different part of the harness.
#![allow(dead_code)]

pub mod contenders;
pub mod report;
pub mod workload;
