//! Blocking submits on a full tier: woken when room comes back, and
//! blocked meanwhile rather than spinning (a rejected attempt used to take
//! and drop an admission permit, which counted as a release and woke the
//! waiter itself, so `submit_wait` busy-looped at 100 % CPU).

use std::convert::Infallible;
use std::time::Duration;

use tierpool::{Priority, Runtime};

fn ok(_: &tierpool::TaskContext) -> Result<(), Infallible> {
    Ok(())
}

/// This thread's CPU time (user + system), from /proc (Linux only).
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the parenthesised name: utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10) // USER_HZ is 100 on Linux
}

#[test]
fn submit_wait_on_a_full_queue_blocks_then_gets_in() {
    let rt = Runtime::builder()
        .ui(|t| t.workers(1).queue_capacity(4).max_in_flight(None))
        .build()
        .unwrap();
    let ui = rt.ui().clone();
    ui.pause();
    for _ in 0..4 {
        ui.submit(Priority::Normal, ok).unwrap();
    }
    let waiter = {
        let ui = ui.clone();
        std::thread::spawn(move || {
            #[cfg(target_os = "linux")]
            let cpu0 = thread_cpu();
            let r = ui.submit_wait(Priority::Normal, ok, Duration::from_secs(30));
            #[cfg(target_os = "linux")]
            {
                let spent = thread_cpu() - cpu0;
                assert!(spent < Duration::from_millis(200), "spun for {spent:?}");
            }
            r.map(|h| h.join())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(!waiter.is_finished(), "the queue is full: it must wait");
    ui.resume();
    let joined = waiter
        .join()
        .unwrap()
        .expect("admitted once room came back");
    assert!(joined.is_ok());
}

#[test]
fn submit_wait_at_the_tier_limit_gets_in_when_a_task_ends() {
    let rt = Runtime::builder()
        .ui(|t| t.workers(2).max_in_flight(1).per_user_limit(None))
        .build()
        .unwrap();
    let ui = rt.ui().clone();
    let first = ui
        .submit(Priority::Normal, |ctx| {
            let _ = ctx.sleep(Duration::from_millis(300));
            Ok::<_, Infallible>(())
        })
        .unwrap();
    let second = ui
        .submit_wait(Priority::Normal, ok, Duration::from_secs(30))
        .expect("admitted when the first task released its permit");
    assert!(first.join().is_ok());
    assert!(second.join().is_ok());
}
