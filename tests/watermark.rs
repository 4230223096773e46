//! The background tier's memory watermark, with a fake probe: above the
//! high mark it starts nothing new (running work continues), it resumes
//! only below the low mark, and stats show it (issue 6 item 5: memory
//! pressure pauses background and resumes).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tierpool::{Cancelled, ManualClock, Priority, Runtime, TaskStatus};

const INTERVAL: Duration = Duration::from_secs(1);

#[test]
fn above_high_pauses_new_work_and_below_low_resumes() {
    let m = ManualClock::new();
    let rss = Arc::new(AtomicU64::new(10));
    let probe = rss.clone();
    let rt = Runtime::builder()
        .clock(m.clock())
        .memory_probe(move || Some(probe.load(Ordering::SeqCst)))
        .background(|t| {
            t.workers(2)
                .memory_watermark(100, 50)
                .memory_sample_interval(INTERVAL)
        })
        .build()
        .unwrap();
    let bg = rt.background();
    bg.submit(Priority::Normal, |_| Ok::<_, Cancelled>(()))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(bg.stats().last_rss, Some(10));

    // A task already running when memory climbs keeps running.
    let far = m.now() + Duration::from_secs(3600);
    let running = bg
        .task(move |ctx| ctx.sleep_until(far).map(|_| "running"))
        .submit()
        .unwrap();
    wait_running(&running);

    rss.store(150, Ordering::SeqCst);
    m.advance(INTERVAL);
    let queued = bg
        .submit(Priority::Critical, |_| Ok::<_, Cancelled>("queued"))
        .unwrap();
    wait_until("memory pause", WAIT, || bg.stats().memory_paused);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(queued.status(), TaskStatus::Queued);
    assert_eq!(running.status(), TaskStatus::Running);
    let s = bg.stats();
    assert_eq!((s.memory_pauses, s.last_rss), (1, Some(150)));
    // Other tiers are not affected.
    rt.ui()
        .submit(Priority::Low, |_| Ok::<_, Cancelled>(()))
        .unwrap()
        .join()
        .unwrap();

    // Between the marks: still paused (no flapping).
    rss.store(70, Ordering::SeqCst);
    m.advance(INTERVAL);
    wait_until("resampled", WAIT, || bg.stats().last_rss == Some(70));
    assert!(bg.stats().memory_paused);
    assert_eq!(queued.status(), TaskStatus::Queued);

    // Below the low mark: resumes on the next sample.
    rss.store(40, Ordering::SeqCst);
    m.advance(INTERVAL);
    assert_eq!(queued.join().unwrap(), "queued");
    let s = bg.stats();
    assert!(!s.memory_paused);
    assert_eq!(s.memory_pauses, 1);
    running.cancel();
    assert_quiescent(&rt);
}

#[test]
fn an_unreadable_probe_never_pauses() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .memory_probe(|| None)
        .background(|t| t.memory_watermark(1, 0).memory_sample_interval(INTERVAL))
        .build()
        .unwrap();
    for _ in 0..3 {
        m.advance(INTERVAL);
        rt.background()
            .submit(Priority::Normal, |_| Ok::<_, Cancelled>(()))
            .unwrap()
            .join()
            .unwrap();
    }
    let s = rt.background().stats();
    assert!(!s.memory_paused);
    assert_eq!(s.last_rss, None);
}
