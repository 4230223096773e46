use std::time::Duration;
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
    let h = rt
        .realtime()
        .task(|_| {
            std::thread::sleep(Duration::from_millis(300));
            Ok::<_, String>(1)
        })
        .timeout(Duration::from_secs(1))
        .submit()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    m.advance(Duration::from_secs(2));
    let e = h.join().unwrap_err();
    assert!(e.is_timeout());
    m.advance(Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(50));
    let s = rt.stats();
    println!("{s}");
    let t = s.tier("realtime").unwrap();
    assert_eq!(t.zombies, 1);
    std::thread::sleep(Duration::from_millis(400));
    let s = rt.stats();
    let t = s.tier("realtime").unwrap();
    println!("{s} late {}", t.late_results);
    assert_eq!(t.late_results, 1);
    assert_eq!(t.zombie_threads, 0);
    println!("{}", rt.shutdown(Duration::from_secs(1)));
}
