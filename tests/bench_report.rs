//! `tierpool bench --quick` runs end to end: the report has its five
//! sections and the plot is a well-formed SVG document.
#![cfg(feature = "cli")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(180);

#[test]
fn quick_bench_writes_report_and_plot() {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierpool"))
        .args(["bench", "--quick", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tierpool bench");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bench") {
            break status;
        }
        if started.elapsed() > BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tierpool bench --quick took more than {BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut stdout);
    }
    assert!(status.success(), "bench failed ({status}):\n{stdout}");
    println!("bench --quick took {:?}", started.elapsed());

    let report = std::fs::read_to_string(out.join("report.md")).expect("report.md written");
    for section in [
        "## Tiny-task dispatch",
        "## Head-of-line isolation",
        "## Timeout enforcement",
        "## Idle CPU",
        "## CPU batch",
        "## Targets",
    ] {
        assert!(report.contains(section), "report.md lacks {section:?}");
        assert!(stdout.contains(section), "stdout lacks {section:?}");
    }
    assert!(report.contains("| --- |"), "report.md has no tables");
    for name in [
        "bare crossbeam pool",
        "threadpool",
        "rayon",
        "tierpool",
        "two bare pools",
    ] {
        assert!(report.contains(name), "report.md never mentions {name:?}");
    }

    let svg = std::fs::read_to_string(out.join("isolation.svg")).expect("isolation.svg written");
    let svg = svg.trim();
    assert!(
        svg.starts_with("<svg"),
        "svg start: {:?}",
        &svg[..40.min(svg.len())]
    );
    assert!(svg.ends_with("</svg>"), "svg does not end with </svg>");
    assert_eq!(svg.matches("<svg").count(), 1);
    assert!(
        svg.matches("<polyline").count() >= 5,
        "one curve per contender"
    );
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
    let _ = std::fs::remove_dir_all(&out);
}
