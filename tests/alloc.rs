//! The counting allocator, installed as this test binary's global
//! allocator: bytes are attributed to the task that allocated them, and a
//! task over its memory budget is cancelled (reason: memory).

mod common;

use std::hint::black_box;
use std::time::Duration;

use tierpool::alloc::CountingAllocator;
use tierpool::{CancelReason, Cancelled, Priority, Runtime};

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator::new();

const MIB: u64 = 1024 * 1024;
/// What a run allocates besides the test's buffer (the harness's
/// bookkeeping, a formatted message): far below a MiB.
const SLACK: u64 = 256 * 1024;

fn allocate(bytes: u64) -> Vec<u8> {
    black_box(vec![1u8; bytes as usize])
}

#[test]
fn bytes_are_attributed_to_the_task_that_allocated_them() {
    // One worker: both tasks run on the same thread, one after the other,
    // so a per-thread count that leaked from one run into the next shows.
    let rt = common::one_background_worker();
    let run = |bytes: u64| {
        rt.background()
            .submit(Priority::Normal, move |ctx| {
                let v = allocate(bytes);
                let seen = ctx.allocated_bytes();
                let held = ctx.held_bytes();
                drop(v);
                Ok::<_, Cancelled>((seen, held, ctx.held_bytes()))
            })
            .unwrap()
            .join()
            .unwrap()
    };
    let (small, small_held, small_after) = run(MIB);
    let (big, big_held, big_after) = run(10 * MIB);
    assert!(
        (MIB..MIB + SLACK).contains(&small),
        "1 MiB task saw {small} B"
    );
    assert!(
        (10 * MIB..10 * MIB + SLACK).contains(&big),
        "10 MiB task saw {big} B"
    );
    assert!(small_held >= MIB && big_held >= 10 * MIB);
    assert!(
        small_after < SLACK && big_after < SLACK,
        "freed buffers still held: {small_after} / {big_after} B"
    );

    // The worker records a run's bytes after the closure returns, and the
    // handle may resolve first: wait for the second record.
    common::wait_until("both runs recorded", common::WAIT, || {
        rt.background().stats().task_bytes.count == 2
    });
    let s = rt.background().stats();
    assert_eq!(s.task_bytes.count, 2);
    assert!(
        (10 * MIB..10 * MIB + SLACK).contains(&s.task_bytes.max),
        "{:?}",
        s.task_bytes
    );
    assert!(
        (11 * MIB..11 * MIB + 2 * SLACK).contains(&s.bytes_allocated),
        "tier total {} B",
        s.bytes_allocated
    );
    // Other tiers ran nothing: nothing attributed to them.
    assert_eq!(rt.ui().stats().bytes_allocated, 0);
    // The human table shows the bytes, for the tier that allocated only.
    let table = rt.stats().to_string();
    let row = table
        .lines()
        .skip_while(|l| !l.starts_with("allocated"))
        .find(|l| l.starts_with("background"))
        .unwrap_or_else(|| panic!("no bytes row for background in:\n{table}"));
    assert!(row.contains("MiB"), "{row}");
    assert!(
        !table
            .lines()
            .skip_while(|l| !l.starts_with("allocated"))
            .any(|l| l.starts_with("ui ")),
        "{table}"
    );
    assert!(CountingAllocator::is_active());
    assert!(CountingAllocator::total_allocated() >= 11 * MIB);
    rt.shutdown(Duration::from_secs(5));
}

#[test]
fn a_context_read_off_its_worker_thread_reads_zero() {
    let rt = common::one_background_worker();
    let h = rt
        .background()
        .submit(Priority::Normal, |ctx| {
            let _v = allocate(MIB);
            let off = std::thread::scope(|s| s.spawn(|| ctx.allocated_bytes()).join().unwrap());
            Ok::<_, Cancelled>(off)
        })
        .unwrap();
    assert_eq!(h.join().unwrap(), 0);
    rt.shutdown(Duration::from_secs(5));
}

#[test]
fn a_task_over_its_memory_budget_is_cancelled_at_its_checkpoint() {
    let rt = Runtime::builder()
        .background(|t| t.workers(1).no_memory_watermark().memory_budget(4 * MIB))
        .build()
        .unwrap();
    let h = rt
        .background()
        .submit(Priority::Normal, |ctx| {
            let mut held = Vec::new();
            for _ in 0..16 {
                ctx.checkpoint()?;
                held.push(allocate(MIB));
            }
            Ok::<_, Cancelled>(held.len())
        })
        .unwrap();
    let e = h.join().unwrap_err();
    assert_eq!(e.cancel_reason(), Some(CancelReason::Memory), "{e}");

    // Gross allocation far over the budget, but never holding more than
    // 1 MiB: the budget is on what a task holds, so it completes.
    let h = rt
        .background()
        .submit(Priority::Normal, |ctx| {
            for _ in 0..16 {
                ctx.checkpoint()?;
                drop(allocate(MIB));
            }
            Ok::<_, Cancelled>(ctx.allocated_bytes())
        })
        .unwrap();
    assert!(h.join().unwrap() >= 16 * MIB);

    let s = rt.background().stats();
    assert_eq!(s.cancelled.memory, 1);
    assert_eq!(s.completed, 1);
    rt.shutdown(Duration::from_secs(5));
}

#[test]
fn the_budget_is_checked_before_sleeping() {
    let rt = Runtime::builder()
        .background(|t| t.workers(1).no_memory_watermark().memory_budget(MIB))
        .build()
        .unwrap();
    let h = rt
        .background()
        .submit(Priority::Normal, |ctx| {
            let _v = allocate(2 * MIB);
            // Would sleep for an hour if the budget were not checked.
            ctx.sleep(Duration::from_secs(3600))?;
            Ok::<_, Cancelled>(())
        })
        .unwrap();
    let e = h.join().unwrap_err();
    assert_eq!(e.cancel_reason(), Some(CancelReason::Memory));
    rt.shutdown(Duration::from_secs(5));
}

/// A task's own budget overrides its tier's, both ways: tighter on a tier
/// with a loose one, none at all on a tier with a tight one, and a budget
/// on a tier that has none.
#[test]
fn a_task_budget_overrides_the_tier_budget() {
    let rt = Runtime::builder()
        .background(|t| t.workers(1).no_memory_watermark().memory_budget(64 * MIB))
        .ui(|t| t.workers(1))
        .build()
        .unwrap();
    // Holds 4 MiB, then checks: over a task budget of 2 MiB.
    let hold_four = |ctx: &tierpool::TaskContext| {
        let _v = allocate(4 * MIB);
        ctx.checkpoint()?;
        Ok::<_, Cancelled>(ctx.memory_budget())
    };
    let tighter = rt
        .background()
        .task(hold_four)
        .memory_budget(2 * MIB)
        .submit()
        .unwrap();
    let e = tighter.join().unwrap_err();
    assert_eq!(e.cancel_reason(), Some(CancelReason::Memory), "{e}");

    let tier_default = rt.background().task(hold_four).submit().unwrap();
    assert_eq!(tier_default.join().unwrap(), Some(64 * MIB));

    let rt_tight = Runtime::builder()
        .background(|t| t.workers(1).no_memory_watermark().memory_budget(MIB))
        .build()
        .unwrap();
    let unlimited = rt_tight
        .background()
        .task(hold_four)
        .no_memory_budget()
        .submit()
        .unwrap();
    assert_eq!(unlimited.join().unwrap(), None);

    // The ui tier has no budget by default; a task may bring its own.
    let on_ui = rt.ui().task(hold_four).memory_budget(MIB).submit().unwrap();
    let e = on_ui.join().unwrap_err();
    assert_eq!(e.cancel_reason(), Some(CancelReason::Memory), "{e}");

    assert_eq!(rt.background().stats().cancelled.memory, 1);
    assert_eq!(rt.ui().stats().cancelled.memory, 1);
    rt_tight.shutdown(Duration::from_secs(5));
    rt.shutdown(Duration::from_secs(5));
}

/// The task's budget survives `.restartable()` (set before it) and holds
/// on a restartable run like on any other.
#[test]
fn a_restartable_task_keeps_its_budget() {
    let rt = common::one_background_worker();
    // Bound first: a closure written in `.task(..)` takes its kind from
    // that FnOnce bound, and `.restartable()` needs an FnMut.
    let hold_four = |ctx: &tierpool::TaskContext| {
        let _v = allocate(4 * MIB);
        ctx.checkpoint()?;
        Ok::<_, Cancelled>(())
    };
    let h = rt
        .background()
        .task(hold_four)
        .memory_budget(2 * MIB)
        .restartable()
        .submit()
        .unwrap();
    let e = h.join().unwrap_err();
    assert_eq!(e.cancel_reason(), Some(CancelReason::Memory), "{e}");
    rt.shutdown(Duration::from_secs(5));
}
