mod common;

use std::time::Duration;

use common::{wait_until, Gate, WAIT};
use tierpool::{ManualClock, Priority, Runtime};

#[test]
fn smoke() {
    let rt = Runtime::builder().build().unwrap();
    let hs: Vec<_> = (0..100)
        .map(|i| {
            rt.realtime()
                .submit(Priority::Normal, move |_| Ok::<_, String>(i))
                .unwrap()
        })
        .collect();
    let sum: i32 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sum, 4950);
    println!("{}", rt.stats());
    let r = rt.shutdown(Duration::from_secs(1));
    println!("{r}");
}

#[test]
fn timeout_ignored() {
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .realtime(|t| t.workers(2).reserved_slots(1))
        .build()
        .unwrap();
    // The body ignores its timeout: it returns only once the gate opens
    // (not after a real-time sleep, which under load could end before the
    // timeout or after the zombie checks below).
    let gate = Gate::new();
    let g2 = gate.clone();
    let h = rt
        .realtime()
        .task(move |_| {
            g2.wait();
            Ok::<_, String>(1)
        })
        .timeout(Duration::from_secs(1))
        .submit()
        .unwrap();
    // Not a real-time sleep (nor `wait_running`): the body must be running
    // before time moves, or it is timed out unstarted and never a zombie.
    gate.wait_entered(1);
    m.advance(Duration::from_secs(2));
    let e = h.join().unwrap_err();
    assert!(e.is_timeout());
    m.advance(Duration::from_secs(2));
    wait_until("zombie declared", WAIT, || {
        rt.stats().tier("realtime").unwrap().zombies == 1
    });
    let s = rt.stats();
    println!("{s}");
    let t = s.tier("realtime").unwrap();
    assert_eq!(t.zombies, 1);
    assert_eq!(t.late_results, 0, "still running");
    gate.open();
    wait_until("zombie returned", WAIT, || {
        let s = rt.stats();
        let t = s.tier("realtime").unwrap();
        t.late_results == 1 && t.zombie_threads == 0
    });
    let s = rt.stats();
    let t = s.tier("realtime").unwrap();
    println!("{s} late {}", t.late_results);
    assert_eq!(t.late_results, 1);
    assert_eq!(t.zombie_threads, 0);
    println!("{}", rt.shutdown(Duration::from_secs(1)));
}
