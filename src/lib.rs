//! tierpool: structured background work for synchronous Rust.
#![forbid(unsafe_code)]

mod clock;
mod sync;

pub use clock::{Clock, ManualClock};
