//! The analysis result cache: a bounded `quick_cache` of type-erased
//! values, each with an expiry on the runtime's clock.
//!
//! quick_cache gives the size bound and eviction (CLOCK-Pro, lock-sharded);
//! the TTL is ours because it must read the runtime's clock (a manual
//! clock in tests), which a cache with its own timer (moka) cannot.

use std::any::Any;
use std::time::Instant;

use crate::clock::Clock;
use crate::sync::Arc;

#[derive(Clone)]
struct Entry {
    value: Arc<dyn Any + Send + Sync>,
    expires: Option<Instant>,
}

pub(crate) struct ResultCache {
    inner: quick_cache::sync::Cache<String, Entry>,
    clock: Clock,
}

/// What a lookup found.
pub(crate) enum Lookup<T> {
    Fresh(T),
    /// Present but past its TTL (removed), or absent.
    Miss,
}

impl ResultCache {
    pub(crate) fn new(capacity: usize, clock: Clock) -> Self {
        ResultCache {
            inner: quick_cache::sync::Cache::new(capacity.max(1)),
            clock,
        }
    }

    pub(crate) fn get<T: Clone + 'static>(&self, key: &str) -> Lookup<T> {
        let Some(e) = self.inner.get(key) else {
            return Lookup::Miss;
        };
        if e.expires.is_some_and(|t| self.clock.now() >= t) {
            self.inner.remove(key);
            return Lookup::Miss;
        }
        match e.value.downcast_ref::<T>() {
            Some(v) => Lookup::Fresh(v.clone()),
            // Same key, another type: not ours to return.
            None => Lookup::Miss,
        }
    }

    pub(crate) fn insert<T: Send + Sync + 'static>(
        &self,
        key: String,
        value: T,
        ttl: Option<std::time::Duration>,
    ) {
        let expires = ttl.and_then(|t| self.clock.now().checked_add(t));
        self.inner.insert(
            key,
            Entry {
                value: Arc::new(value),
                expires,
            },
        );
    }

    pub(crate) fn invalidate(&self, key: &str) -> bool {
        self.inner.remove(key).is_some()
    }

    pub(crate) fn clear(&self) {
        self.inner.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}
