//! Dispatch benchmark (placeholder).
fn main() {}
