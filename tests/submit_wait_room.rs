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

/// Tasks that each hold their worker until handed a token, and say when
/// they start.
struct Held {
    token_tx: crossbeam_channel::Sender<()>,
    token_rx: crossbeam_channel::Receiver<()>,
    started_tx: crossbeam_channel::Sender<()>,
    started_rx: crossbeam_channel::Receiver<()>,
}

impl Held {
    fn new() -> Self {
        let (token_tx, token_rx) = crossbeam_channel::unbounded();
        let (started_tx, started_rx) = crossbeam_channel::unbounded();
        Held {
            token_tx,
            token_rx,
            started_tx,
            started_rx,
        }
    }

    fn task(
        &self,
    ) -> impl FnOnce(&tierpool::TaskContext) -> Result<(), Infallible> + Send + 'static {
        let (rx, started) = (self.token_rx.clone(), self.started_tx.clone());
        move |_| {
            let _ = started.send(());
            let _ = rx.recv_timeout(Duration::from_secs(30));
            Ok(())
        }
    }

    /// Waits until one more held task has started.
    fn started(&self) {
        self.started_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap();
    }

    /// One held task on the worker (started), `queued` more behind it.
    fn fill(
        &self,
        ui: &tierpool::Tier,
        queued: usize,
    ) -> Vec<tierpool::TaskHandle<(), Infallible>> {
        let mut handles = vec![ui.submit(Priority::Normal, self.task()).unwrap()];
        self.started();
        for _ in 0..queued {
            handles.push(ui.submit(Priority::Normal, self.task()).unwrap());
        }
        handles
    }

    /// Hands every task a token and checks they all completed.
    fn release_all(&self, handles: Vec<tierpool::TaskHandle<(), Infallible>>) {
        for _ in 0..handles.len() {
            self.token_tx.send(()).unwrap();
        }
        for h in handles {
            assert!(h.join().is_ok());
        }
    }
}

/// Fills `rt`'s ui tier (one held task running, four queued at normal),
/// blocks a `submit_wait` at `priority`, then lets exactly one place come
/// free — the worker takes the next task, which holds it again — and checks
/// the blocked submitter takes it.
fn blocked_submitter_takes_the_first_place(rt: Runtime, priority: Priority, refused_by: &str) {
    let ui = rt.ui().clone();
    let held = Held::new();
    let mut handles = held.fill(&ui, 4);
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let waiter = {
        let (ui, task) = (ui.clone(), held.task());
        std::thread::spawn(move || {
            let r = ui.submit_wait(priority, task, Duration::from_secs(60));
            let _ = done_tx.send(r.is_ok());
            r.ok()
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        done_rx.try_recv().is_err(),
        "{refused_by} is reached: it must wait"
    );
    held.token_tx.send(()).unwrap();
    held.started();
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "the blocked submitter should take the place given up"
    );
    handles.extend(waiter.join().unwrap());
    held.release_all(handles);
}

/// One place given up by a full queue is enough: the blocked submitter
/// gets it, though the queue never drains further. (A waiter used to be
/// woken only once half the queue had drained, so with slow tasks a
/// `submit_wait` could time out while a place had been free for most of
/// its wait.)
#[test]
fn submit_wait_gets_the_first_place_a_full_queue_gives_up() {
    let rt = Runtime::builder()
        .ui(|t| t.workers(1).queue_capacity(4).max_in_flight(None))
        .build()
        .unwrap();
    blocked_submitter_takes_the_first_place(rt, Priority::Normal, "the queue's capacity");
}

/// Runs `waiters` threads each making one blocking submit with `submit`
/// (a 1 s wait that can only end at its deadline) and checks every one
/// timed out without spinning: under 200 ms of its own CPU in the second.
#[cfg(target_os = "linux")]
fn each_waits_out_its_deadline_without_spinning<S>(waiters: usize, submit: S)
where
    S: Fn() -> Option<tierpool::RejectReason> + Clone + Send + 'static,
{
    let threads: Vec<_> = (0..waiters)
        .map(|_| {
            let submit = submit.clone();
            std::thread::spawn(move || {
                let cpu0 = thread_cpu();
                let reason = submit();
                (reason, thread_cpu() - cpu0)
            })
        })
        .collect();
    for t in threads {
        let (reason, spent) = t.join().unwrap();
        assert!(
            matches!(reason, Some(tierpool::RejectReason::DeadlineElapsed)),
            "{reason:?}"
        );
        assert!(spent < Duration::from_millis(200), "spun for {spent:?}");
    }
}

/// `waiters` blocked submitters at the in-flight limit with one queue
/// place free (one task holds the only worker, three wait: four in flight,
/// three of the level's four places taken). Each try takes the place, is
/// refused a permit and hands the place back; that wakes the submitters
/// waiting for a place, but they then wait for a permit, and a place handed
/// back does not end that wait. None of them spins until its deadline.
#[cfg(target_os = "linux")]
fn refused_permits_do_not_spin(waiters: usize) {
    let rt = Runtime::builder()
        .ui(|t| {
            t.workers(1)
                .queue_capacity(4)
                .max_in_flight(4)
                .per_user_limit(None)
        })
        .build()
        .unwrap();
    let ui = rt.ui().clone();
    let held = Held::new();
    let handles = held.fill(&ui, 3);
    each_waits_out_its_deadline_without_spinning(waiters, move || {
        let r = ui.submit_wait(Priority::Normal, ok, Duration::from_secs(1));
        r.err().map(|e| e.reason().clone())
    });
    held.release_all(handles);
}

/// A blocked submitter whose own retry takes the queue's last place and is
/// then refused a permit does not wake itself by handing the place back:
/// it used to, and so retried at full speed until its deadline.
#[cfg(target_os = "linux")]
#[test]
fn a_refused_permit_does_not_wake_its_own_submitter() {
    refused_permits_do_not_spin(1);
}

/// Two such submitters do not wake each other either (with one
/// notification for both kinds of room, each place handed back woke the
/// other, 600–800 ms of CPU in the 1 s wait).
#[cfg(target_os = "linux")]
#[test]
fn two_submitters_refused_permits_do_not_wake_each_other() {
    refused_permits_do_not_spin(2);
}

/// The same for the tier-wide `max_queued`: a submitter refused by the
/// total (its level has room; it submits at another level) gets the first
/// place a pick gives up.
#[test]
fn submit_wait_gets_the_first_place_max_queued_gives_up() {
    let rt = Runtime::builder()
        .ui(|t| {
            t.workers(1)
                .queue_capacity(8)
                .max_queued(4)
                .max_in_flight(None)
        })
        .build()
        .unwrap();
    blocked_submitter_takes_the_first_place(rt, Priority::Low, "max_queued");
}

/// A submitter refused by its user's limit while the tier is one permit
/// below its own limit does not wake itself: its try used to take the
/// tier's last permit, be refused by the user limit, and give the permit
/// back from the limit, which notified every submitter waiting for a permit
/// — itself included (870–950 ms of CPU in a 1 s wait; found by a review).
/// Both limits are now checked before anything is taken.
#[cfg(target_os = "linux")]
#[test]
fn a_user_limited_submitter_does_not_wake_itself_one_below_the_tier_limit() {
    let rt = Runtime::builder()
        .ui(|t| {
            t.workers(2)
                .queue_capacity(4)
                .max_in_flight(2)
                .per_user_limit(1)
        })
        .build()
        .unwrap();
    let ui = rt.ui().clone();
    let held = Held::new();
    let handle = ui.task(held.task()).user("u").submit().unwrap();
    held.started();
    each_waits_out_its_deadline_without_spinning(1, move || {
        let r = ui.task(ok).user("u").submit_wait(Duration::from_secs(1));
        r.err().map(|e| e.reason().clone())
    });
    held.release_all(vec![handle]);
}

/// A blocked submitter refused by a full level while the tier is one place
/// below `max_queued` does not wake itself: its try takes the last
/// `max_queued` place, finds its level full and hands that place back,
/// which notifies the submitters waiting for a `max_queued` place — not
/// this one, which waits for a place at its level.
#[cfg(target_os = "linux")]
#[test]
fn a_level_refused_submitter_does_not_wake_itself_with_its_roll_back() {
    let rt = Runtime::builder()
        .ui(|t| {
            t.workers(1)
                .queue_capacity(2)
                .max_queued(3)
                .max_in_flight(None)
                .per_user_limit(None)
        })
        .build()
        .unwrap();
    let ui = rt.ui().clone();
    // One held task running, two queued: normal is full, 2 of 3 in all.
    let held = Held::new();
    let handles = held.fill(&ui, 2);
    each_waits_out_its_deadline_without_spinning(1, move || {
        let r = ui.submit_wait(Priority::Normal, ok, Duration::from_secs(1));
        r.err().map(|e| e.reason().clone())
    });
    held.release_all(handles);
}

/// The other side of that roll-back: a submitter refused by `max_queued`
/// only because another try held the last place for a moment is woken when
/// it is handed back. The normal level is full and the tier one place
/// below `max_queued`; one thread keeps trying to submit at normal (each
/// try takes the last place, finds its level full and hands the place
/// back), while high-priority `submit_wait`s, which have room at their
/// level, come and go. Before, the roll-back notified nobody, and a high
/// submit refused during one waited out its whole deadline with a place
/// free (found by a review: within about a second, every run).
#[test]
fn a_submitter_refused_during_a_roll_back_gets_the_place() {
    let rt = Runtime::builder()
        .ui(|t| {
            // The second worker only takes high and critical work, so the
            // held normal tasks stay queued while high ones run.
            t.workers(2)
                .reserved_slots(1)
                .queue_capacity(2)
                .max_queued(3)
                .max_in_flight(None)
                .per_user_limit(None)
        })
        .build()
        .unwrap();
    let ui = rt.ui().clone();
    let held = Held::new();
    let handles = held.fill(&ui, 2);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trier = {
        let (ui, stop) = (ui.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Refused: normal is full (each try takes and hands back
                // the last `max_queued` place).
                let _ = ui.submit(Priority::Normal, ok);
            }
        })
    };
    let began = std::time::Instant::now();
    let mut admitted = 0;
    while began.elapsed() < Duration::from_secs(3) {
        match ui.submit_wait(Priority::High, ok, Duration::from_secs(1)) {
            Ok(h) => {
                admitted += 1;
                assert!(h.join().is_ok());
            }
            Err(e) => panic!(
                "a high submit with a place free waited out its deadline ({:?}) after {admitted} got in",
                e.reason()
            ),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trier.join().unwrap();
    assert!(admitted > 0);
    held.release_all(handles);
}
