//! The `tierpool` command line: the demo workload (placeholder until the demo lands).
fn main() {}
