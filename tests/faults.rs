//! Fault injection (issue 6 item 5): a log sink that panics must not stall
//! the runtime. (Worker deaths, zombies and memory pressure are covered in
//! panics.rs, timeouts.rs and watermark.rs.)

mod common;

use std::time::Duration;

use common::*;
use tierpool::{Cancelled, ManualClock, Priority, Runtime};

struct PanickingLogger;

impl log::Log for PanickingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        // Fails on tierpool's own threads; a sink failing on the
        // application's thread is the application's panic.
        let on_ours = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("tierpool-"));
        if on_ours && r.target().starts_with("tierpool") {
            panic!("log sink failure: {}", r.args());
        }
    }
    fn flush(&self) {}
}

/// Regression: the watchdog thread died on the first timeout it logged,
/// leaving that task uncancelled and every later deadline unenforced.
#[test]
fn a_panicking_log_sink_does_not_stall_timeouts() {
    let _ = log::set_boxed_logger(Box::new(PanickingLogger));
    log::set_max_level(log::LevelFilter::Trace);
    let m = ManualClock::new();
    let rt = Runtime::builder()
        .clock(m.clock())
        .background(|t| t.workers(1).no_memory_watermark())
        .build()
        .unwrap();
    let far = m.now() + Duration::from_secs(3600);
    for round in 0..3 {
        let h = rt
            .background()
            .task(move |ctx| ctx.sleep_until(far))
            .timeout(Duration::from_secs(1))
            .submit()
            .unwrap();
        wait_running(&h);
        m.advance(Duration::from_secs(1));
        let h = match h.join_timeout(Duration::ZERO) {
            Ok(r) => {
                assert!(r.unwrap_err().is_timeout());
                continue;
            }
            Err(h) => h,
        };
        wait_until(
            &format!("timeout {round} despite the log sink"),
            WAIT,
            || h.is_finished(),
        );
    }
    let ok = rt
        .background()
        .submit(Priority::Normal, |_| Ok::<_, Cancelled>(1))
        .unwrap();
    assert_eq!(ok.join().unwrap(), 1);
}
