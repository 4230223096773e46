//! Where the CLI's log lines go. Normally stderr. While the demo's
//! dashboard redraws in place, a line written to stderr would be wiped by
//! the next redraw a second later, so the tap keeps the last few lines
//! instead and the dashboard shows them under its tables.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Lines kept while capturing (the dashboard shows them all).
const KEPT: usize = 6;
/// Longer lines are cut, so one long message cannot push the tables off
/// the screen.
const WIDTH: usize = 160;

#[derive(Default)]
pub(crate) struct LogTap {
    capturing: AtomicBool,
    state: Mutex<TapState>,
}

#[derive(Default)]
struct TapState {
    /// Bytes of a line not yet ended by a newline.
    partial: Vec<u8>,
    lines: VecDeque<String>,
    /// Lines captured in all (shown lines plus those dropped off the top).
    seen: u64,
}

impl LogTap {
    /// The process's tap (env_logger writes through it).
    pub(crate) fn global() -> &'static Arc<LogTap> {
        static TAP: OnceLock<Arc<LogTap>> = OnceLock::new();
        TAP.get_or_init(Arc::default)
    }

    /// Keep lines (`true`) or pass them straight to stderr (`false`).
    pub(crate) fn capture(&self, on: bool) {
        self.capturing.store(on, Ordering::SeqCst);
    }

    /// The kept lines, oldest first, and how many were captured in all.
    pub(crate) fn recent(&self) -> (Vec<String>, u64) {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (st.lines.iter().cloned().collect(), st.seen)
    }

    fn keep(&self, buf: &[u8]) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.partial.extend_from_slice(buf);
        while let Some(end) = st.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = st.partial.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..end]);
            let text: String = text.trim_end_matches('\r').chars().take(WIDTH).collect();
            st.lines.push_back(text);
            st.seen += 1;
            if st.lines.len() > KEPT {
                st.lines.pop_front();
            }
        }
    }

    /// A writer for `env_logger::Target::Pipe`.
    pub(crate) fn writer(self: &Arc<Self>) -> TapWriter {
        TapWriter(self.clone())
    }
}

/// Writes to the tap while it captures, to stderr otherwise.
pub(crate) struct TapWriter(Arc<LogTap>);

impl Write for TapWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.capturing.load(Ordering::SeqCst) {
            self.0.keep(buf);
            Ok(buf.len())
        } else {
            std::io::stderr().write(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_whole_and_counts_them_all() {
        let tap = Arc::new(LogTap::default());
        tap.capture(true);
        let mut w = tap.writer();
        // A line may arrive in pieces; only whole lines are kept.
        w.write_all(b"first ").unwrap();
        assert_eq!(tap.recent(), (vec![], 0));
        w.write_all(b"line\nsecond\r\n").unwrap();
        assert_eq!(
            tap.recent(),
            (vec!["first line".to_string(), "second".to_string()], 2)
        );
        for i in 0..10 {
            writeln!(w, "line {i}").unwrap();
        }
        let (lines, seen) = tap.recent();
        assert_eq!(seen, 12);
        assert_eq!(lines.len(), KEPT);
        assert_eq!(lines.first().map(String::as_str), Some("line 4"));
        assert_eq!(lines.last().map(String::as_str), Some("line 9"));
        writeln!(w, "{}", "x".repeat(500)).unwrap();
        assert_eq!(tap.recent().0.last().map(String::len), Some(WIDTH));
    }

    #[test]
    fn passes_through_when_not_capturing() {
        let tap = Arc::new(LogTap::default());
        let mut w = tap.writer();
        writeln!(w, "to stderr").unwrap();
        assert_eq!(tap.recent(), (vec![], 0), "nothing kept");
    }
}
