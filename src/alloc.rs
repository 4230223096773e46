//! An opt-in counting global allocator: bytes allocated and freed per
//! thread, so the worker running a task can attribute them to it.
//!
//! # Design
//!
//! The allocator itself knows nothing about tasks. It keeps two
//! thread-local counters (bytes allocated, bytes freed — cumulative, on
//! this thread) and a process-wide total fed in batches. A worker reads
//! the thread's counters when a task starts (`Sample::now`) and again
//! when it returns or calls [`TaskContext::checkpoint`]; the difference is
//! the task's. No pointer to the task is kept anywhere, so no lock, no
//! allocation and no lifetime question inside `alloc`.
//!
//! # Invariants
//!
//! 1. Nothing here allocates: the thread-locals are `const`-initialised
//!    `Cell<u64>`s with no destructor (no lazy registration, never torn
//!    down), and everything else is an atomic.
//! 2. The allocator only delegates to [`System`] and counts; it never
//!    changes a layout or a pointer, so it is exactly as sound as `System`.
//! 3. Allocation on a thread that is not running a task (the submitter,
//!    the watchdog) is counted on that thread and attributed to nothing.
//!
//! # Why `unsafe`
//!
//! [`GlobalAlloc`] is an `unsafe trait`: the crate denies (rather than
//! forbids) `unsafe_code` so that this file can allow it for itself, as
//! `os_priority.rs` does for its one `setpriority` call.
//!
//! [`TaskContext::checkpoint`]: crate::TaskContext::checkpoint
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A thread folds its bytes into the process-wide total every this many
/// bytes, so the total costs a shared atomic per 64 KiB, not per call
/// (a contended `fetch_add` on every `malloc` would tax every thread of
/// the application).
const FLUSH_BYTES: u64 = 64 * 1024;

thread_local! {
    /// Bytes allocated on this thread, ever (wrapping).
    static ALLOCATED: Cell<u64> = const { Cell::new(0) };
    /// Bytes freed on this thread, ever (wrapping).
    static FREED: Cell<u64> = const { Cell::new(0) };
    /// Allocated bytes not yet folded into `TOTAL_ALLOCATED`.
    static UNFLUSHED: Cell<u64> = const { Cell::new(0) };
}

static TOTAL_ALLOCATED: AtomicU64 = AtomicU64::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// A global allocator that wraps [`System`] and counts the bytes each
/// thread allocates and frees, so that tierpool can attribute them to the
/// task running on a worker.
///
/// Opt-in: install it in the application (or a test binary) with
/// `#[global_allocator]`. Without it every byte figure reads 0 and no
/// [`memory_budget`](crate::TierConfig::memory_budget) ever fires.
///
/// ```
/// #[global_allocator]
/// static ALLOC: tierpool::alloc::CountingAllocator = tierpool::alloc::CountingAllocator::new();
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tierpool::{Priority, Runtime};
/// let rt = Runtime::builder().build()?;
/// let h = rt.background().submit(Priority::Normal, |ctx| {
///     let v = vec![0u8; 1 << 20];
///     Ok::<_, tierpool::Cancelled>((v.len(), ctx.allocated_bytes()))
/// })?;
/// let (len, seen) = h.join().unwrap();
/// assert!(seen >= len as u64);
/// assert!(tierpool::alloc::CountingAllocator::is_active());
/// # Ok(()) }
/// ```
///
/// What counts: the bytes requested of the allocator (`Layout::size`), a
/// `realloc` as its growth (or, shrinking, as freed bytes). Memory freed
/// on another thread than the one that allocated it is counted where it
/// is freed.
#[derive(Debug, Default)]
pub struct CountingAllocator {
    // A private field so the type is built with `new` (stable if state is
    // ever added).
    _private: (),
}

impl CountingAllocator {
    /// The allocator, for a `static` marked `#[global_allocator]`.
    pub const fn new() -> Self {
        CountingAllocator { _private: () }
    }

    /// Whether a `CountingAllocator` is the global allocator (it has served
    /// at least one allocation).
    ///
    /// ```
    /// // Not installed in this doc test: every figure reads 0.
    /// assert!(!tierpool::alloc::CountingAllocator::is_active());
    /// ```
    pub fn is_active() -> bool {
        ACTIVE.load(Ordering::Relaxed)
    }

    /// Bytes allocated by the whole process so far, as far as threads have
    /// reported them (each thread folds its count in every 64 KiB, so this
    /// lags by at most that much per thread).
    ///
    /// ```
    /// let total = tierpool::alloc::CountingAllocator::total_allocated();
    /// assert_eq!(total, 0); // not installed in this doc test
    /// ```
    pub fn total_allocated() -> u64 {
        TOTAL_ALLOCATED.load(Ordering::Relaxed)
    }

    /// Bytes allocated and freed so far on the calling thread.
    ///
    /// ```
    /// let (allocated, freed) = tierpool::alloc::CountingAllocator::thread_counts();
    /// assert!(allocated >= freed || allocated == 0);
    /// ```
    pub fn thread_counts() -> (u64, u64) {
        let s = Sample::now();
        (s.allocated, s.freed)
    }
}

#[inline]
fn count_alloc(bytes: u64) {
    if !ACTIVE.load(Ordering::Relaxed) {
        ACTIVE.store(true, Ordering::Relaxed);
    }
    // `try_with`: never panic inside the allocator, even on a thread that
    // is being torn down (these cells have no destructor, so it does not
    // happen today).
    let _ = ALLOCATED.try_with(|c| c.set(c.get().wrapping_add(bytes)));
    let _ = UNFLUSHED.try_with(|c| {
        let n = c.get().wrapping_add(bytes);
        if n >= FLUSH_BYTES {
            TOTAL_ALLOCATED.fetch_add(n, Ordering::Relaxed);
            c.set(0);
        } else {
            c.set(n);
        }
    });
}

#[inline]
fn count_free(bytes: u64) {
    let _ = FREED.try_with(|c| c.set(c.get().wrapping_add(bytes)));
}

// SAFETY: every method delegates to `System` with the caller's own
// arguments, unchanged, and returns its result unchanged; the only extra
// work is updating thread-local `Cell<u64>`s and atomics, which neither
// allocates (so no re-entrancy) nor unwinds. The contract of `GlobalAlloc`
// is therefore exactly `System`'s.
unsafe impl GlobalAlloc for CountingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract
        // (non-zero size), which is `System::alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count_alloc(layout.size() as u64);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count_alloc(layout.size() as u64);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, that is by
        // `System`, with `layout` (the caller's contract).
        unsafe { System.dealloc(ptr, layout) };
        count_free(layout.size() as u64);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`, and `new_size`
        // meets `realloc`'s contract (the caller's).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let (old, new) = (layout.size() as u64, new_size as u64);
            if new >= old {
                count_alloc(new - old);
            } else {
                count_free(old - new);
            }
        }
        p
    }
}

/// The calling thread's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) allocated: u64,
    pub(crate) freed: u64,
}

impl Sample {
    #[inline]
    pub(crate) fn now() -> Sample {
        Sample {
            allocated: ALLOCATED.try_with(Cell::get).unwrap_or(0),
            freed: FREED.try_with(Cell::get).unwrap_or(0),
        }
    }

    /// Bytes allocated since `self` (on the same thread).
    #[inline]
    pub(crate) fn allocated_since(self) -> u64 {
        Sample::now().allocated.wrapping_sub(self.allocated)
    }

    /// Bytes allocated minus bytes freed since `self` (0 if more was freed
    /// than allocated: the task released memory it did not allocate).
    #[inline]
    pub(crate) fn held_since(self) -> u64 {
        let now = Sample::now();
        let allocated = now.allocated.wrapping_sub(self.allocated);
        let freed = now.freed.wrapping_sub(self.freed);
        allocated.saturating_sub(freed)
    }
}

/// An address unique to the calling thread while it lives, to tell
/// whether a context is read on the thread that sampled it.
#[inline]
pub(crate) fn thread_marker() -> usize {
    ALLOCATED.with(|c| c as *const Cell<u64> as usize)
}
