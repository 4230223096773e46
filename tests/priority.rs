//! Priority order and anti-starvation, observed through a real tier: a
//! paused tier with one worker is filled deterministically, then resumed,
//! and the tasks record the order they start in.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tierpool::{Cancelled, Priority, Runtime, TaskHandle};

type Order = Arc<Mutex<Vec<(Priority, usize)>>>;

fn one_worker(starvation_limit: u32) -> Runtime {
    Runtime::builder()
        .background(|t| {
            t.workers(1)
                .no_memory_watermark()
                .starvation_limit(starvation_limit)
        })
        .build()
        .unwrap()
}

fn submit_all(
    rt: &Runtime,
    tasks: &[(Priority, usize)],
    order: &Order,
) -> Vec<TaskHandle<(), Cancelled>> {
    tasks
        .iter()
        .map(|&(p, seq)| {
            let o = order.clone();
            rt.background()
                .submit(p, move |ctx| {
                    assert_eq!(ctx.priority(), p);
                    o.lock().unwrap().push((p, seq));
                    Ok(())
                })
                .unwrap()
        })
        .collect()
}

#[test]
fn highest_priority_first_and_fifo_within_a_level() {
    let rt = one_worker(1000);
    let bg = rt.background();
    bg.pause();
    let mut rng = XorShift::new(7);
    let tasks: Vec<_> = (0..40)
        .map(|seq| (Priority::ALL[rng.below(4) as usize], seq))
        .collect();
    let order: Order = Arc::default();
    let hs = submit_all(&rt, &tasks, &order);
    bg.resume();
    hs.into_iter().for_each(|h| h.join().unwrap());
    let got = order.lock().unwrap().clone();
    let mut want = tasks.clone();
    // Most urgent first; stable sort keeps submission order within a level.
    want.sort_by_key(|&(p, _)| std::cmp::Reverse(p));
    assert_eq!(got, want);
    assert_quiescent(&rt);
}

#[test]
fn a_waiting_low_task_is_served_within_the_starvation_limit() {
    const LIMIT: u32 = 3;
    let rt = one_worker(LIMIT);
    let bg = rt.background();
    bg.pause();
    let mut tasks = vec![(Priority::Low, 0), (Priority::Low, 1)];
    tasks.extend((2..30).map(|seq| (Priority::Critical, seq)));
    let order: Order = Arc::default();
    let hs = submit_all(&rt, &tasks, &order);
    bg.resume();
    hs.into_iter().for_each(|h| h.join().unwrap());
    let got = order.lock().unwrap().clone();
    let lows: Vec<usize> = got
        .iter()
        .enumerate()
        .filter(|(_, (p, _))| *p == Priority::Low)
        .map(|(i, _)| i)
        .collect();
    // Each low task waits at most LIMIT critical picks.
    assert_eq!(
        lows,
        vec![LIMIT as usize, 2 * LIMIT as usize + 1],
        "{got:?}"
    );
    assert_quiescent(&rt);
}

#[test]
fn every_level_progresses_under_a_flood_of_critical_work() {
    const LIMIT: u32 = 2;
    let rt = one_worker(LIMIT);
    let bg = rt.background();
    bg.pause();
    let mut tasks = Vec::new();
    for seq in 0..60 {
        let p = match seq % 10 {
            0 => Priority::Low,
            1 => Priority::Normal,
            2 => Priority::High,
            _ => Priority::Critical,
        };
        tasks.push((p, seq));
    }
    let order: Order = Arc::default();
    let hs = submit_all(&rt, &tasks, &order);
    bg.resume();
    hs.into_iter().for_each(|h| h.join().unwrap());
    let got = order.lock().unwrap().clone();
    // While a level still has work waiting, it is served at least once in
    // every `LIMIT + 4` picks (the documented bound).
    for level in Priority::ALL {
        let last = got.iter().rposition(|(p, _)| *p == level).unwrap();
        let mut gap = 0;
        for (p, _) in &got[..=last] {
            gap = if *p == level { 0 } else { gap + 1 };
            assert!(gap < (LIMIT + 4) as usize, "{level} starved: {got:?}");
        }
    }
    assert_quiescent(&rt);
}
