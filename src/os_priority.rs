//! Lower OS scheduling priority for a tier's threads (Linux `nice`).
//!
//! GCD's QoS classes, for plain threads: the background tier's workers run
//! at a higher nice value, so under CPU contention the kernel gives the ui
//! and realtime tiers' threads the CPU first. This is the only `unsafe`
//! besides the counting allocator: one `setpriority(2)` call on the calling
//! thread, which the standard library does not offer. Elsewhere (and if the
//! call fails) it does nothing: priorities are an optimisation, never a
//! correctness requirement.
#![allow(unsafe_code)]

/// Sets the calling thread's nice value (-20..=19; raising it needs no
/// privilege). Returns whether it took effect.
pub(crate) fn set_current_thread_nice(nice: i32) -> bool {
    imp::set(nice.clamp(-20, 19))
}

#[cfg(target_os = "linux")]
mod imp {
    pub(super) fn set(nice: i32) -> bool {
        // SAFETY: `gettid` takes no arguments and cannot fail; on Linux
        // `setpriority(PRIO_PROCESS, tid, nice)` changes only that thread.
        // No memory is passed to either call.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice) == 0
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn set(_nice: i32) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn raising_nice_on_a_thread_works_without_privilege() {
        let ok = std::thread::spawn(|| super::set_current_thread_nice(5))
            .join()
            .unwrap();
        assert_eq!(ok, cfg!(target_os = "linux"));
    }
}
