//! The seed's two long-running workers, built from the general pieces:
//! [`CacheWarmer`] (a [`Scheduler`](crate::Scheduler) feeding a
//! [`BatchProcessor`](crate::BatchProcessor)) and [`ReEnricher`] (a batch
//! processor with retry and rate-limit defaults). The application gives
//! them closures; they own no mechanism of their own.

mod cache_warmer;
mod re_enricher;

pub use cache_warmer::{CacheWarmer, CacheWarmerBuilder, CacheWarmerStats};
pub use re_enricher::{ReEnricher, ReEnricherBuilder};
