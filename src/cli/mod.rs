//! Argument parsing and dispatch for the `tierpool` binary.

mod bench;
mod demo;
mod logtap;

use std::time::Duration;

const HELP: &str = "\
tierpool — structured background work for synchronous Rust

USAGE:
    tierpool demo [OPTIONS]
    tierpool bench [--quick] [--out DIR] [--only SECTION]...
    tierpool help

demo
    Simulates the application tierpool was designed from (EVE DMV):
      ui          many users look up characters (some slow, some failing;
                  per-user limits reject a user's bursts beyond its share)
      realtime    killmail events arrive in bursts; critical ones preempt
      background  heavy analyses, some past their 1.5 s timeout, one that
                  ignores cancellation and becomes a zombie
      analysis    character-intel requests (cached, de-duplicated) and CPU
                  batches of killmail valuations
    plus two workers against a simulated external API (ESI) that is slow
    (2-8 ms a call), rate limited (50 calls/s), fails ~10% of calls and goes
    fully down for 2 s every 12 s (first at 2.5 s), behind one circuit
    breaker (it opens, probes and closes again):
      re-enricher   a sample of the killmails is fetched again in batches,
                    with retries, backoff and dead letters (ids the API
                    does not know are dead at once: not retryable)
      cache-warmer  on the runtime's scheduler, regular keys every 2 s and
                    critical keys every 1 s; cycles are skipped while the
                    background tier is more than 80% busy

    A live dashboard is refreshed every second: per tier queued, running,
    done, failed, timed out and run-time p99; the breaker's state and
    transitions; the re-enricher's pending items and dead letters; the
    cache warmer's runs and skips; health with its reasons. On a terminal it
    redraws in place; otherwise (pipes, CI) it prints one line a second.
    With --format json or prometheus the live view goes to stderr, so
    stdout holds only the final output.

    At the end (or on Ctrl-C; a second Ctrl-C exits at once) the runtime
    shuts down gracefully, prints its drain report and a summary.

OPTIONS:
    -d, --duration <TIME>   how long to run: 10s, 1500ms, 2m   [default: 8s]
    -u, --users <N>         simulated ui users (1-10000)       [default: 40]
    -l, --load <FACTOR>     scales every arrival rate (0.1-20) [default: 1.0]
    -f, --format <FORMAT>   final output: table | json | prometheus
                            (table: stats, workers, health, drain report;
                            json: the stats object plus a \"demo\" object;
                            prometheus: text exposition)  [default: table]
    -q, --quiet             no live dashboard (and, with json/prometheus,
                            no drain report on stderr)
    -h, --help              this text

Logs go to stderr through env_logger (default level warn; while the
dashboard redraws in place on a terminal, its last lines show under the
tables instead, and the count of all of them): RUST_LOG=info
shows timeouts, zombies, breaker transitions and dead letters as they
happen; RUST_LOG=off silences them.

bench
    tierpool side by side with the threadpool crate, rayon and a bare
    crossbeam-channel pool, in one process: tiny-task dispatch, head-of-line
    isolation, timeout enforcement (10,000 concurrent deadlines), idle CPU,
    a 1,000-item CPU batch. Prints markdown tables with the issue-5 targets
    met or missed; writes DIR/report.md and DIR/isolation.svg. Build with
    --release. A full run takes about a minute here.

    --quick                 smaller sizes for a CI smoke run (< 40 s)
    -o, --out <DIR>         where to write    [default: target/tierpool-bench]
    --only <SECTION>        run only this section (repeatable): dispatch,
                            isolation, timeouts, idle, batch
";

/// Options of `tierpool demo`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DemoOptions {
    pub(crate) duration: Duration,
    pub(crate) users: usize,
    pub(crate) load: f64,
    pub(crate) format: Format,
    pub(crate) quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Json,
    Prometheus,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(8),
            users: 40,
            load: 1.0,
            format: Format::Table,
            quiet: false,
        }
    }
}

pub(crate) fn main(args: Vec<String>) -> i32 {
    let parsed = parse(&args);
    // Through the tap: while the demo's dashboard redraws in place, the
    // lines are kept and shown under its tables instead of being wiped by
    // the next redraw (see `logtap`).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .target(env_logger::Target::Pipe(Box::new(
            logtap::LogTap::global().writer(),
        )))
        .init();
    match parsed {
        Ok(Command::Help) => {
            print!("{HELP}");
            0
        }
        Ok(Command::Demo(opts)) => demo::run(&opts),
        Ok(Command::Bench(opts)) => bench::run(&opts),
        Err(msg) => {
            eprintln!("error: {msg}\n\nRun `tierpool --help` for usage.");
            2
        }
    }
}

#[derive(Debug, PartialEq)]
enum Command {
    Help,
    Demo(DemoOptions),
    Bench(bench::BenchOptions),
}

/// The subcommands, for the error message.
const COMMANDS: &str = "`demo`, `bench` or `help`";

fn parse(args: &[String]) -> Result<Command, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Ok(Command::Help);
    };
    match cmd.as_str() {
        "help" | "-h" | "--help" => Ok(Command::Help),
        "demo" => parse_demo(rest),
        "bench" => Ok(bench::parse(rest)?.map_or(Command::Help, Command::Bench)),
        other => Err(format!("unknown command {other:?} (expected {COMMANDS})")),
    }
}

/// `tierpool demo`'s flags (`--help` among them gives the help).
fn parse_demo(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter();
    let mut o = DemoOptions::default();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-q" | "--quiet" => o.quiet = true,
            "-d" | "--duration" => o.duration = parse_duration(&value(flag)?)?,
            "-u" | "--users" => {
                let v = value(flag)?;
                o.users = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| {
                        format!("--users {v:?}: expected a whole number from 1 to 10000")
                    })?;
            }
            "-l" | "--load" => {
                let v = value(flag)?;
                o.load = v
                    .parse()
                    .ok()
                    .filter(|x: &f64| (0.1..=20.0).contains(x))
                    .ok_or_else(|| format!("--load {v:?}: expected a number from 0.1 to 20"))?;
            }
            "-f" | "--format" => {
                let v = value(flag)?;
                o.format = match v.as_str() {
                    "table" => Format::Table,
                    "json" => Format::Json,
                    "prometheus" => Format::Prometheus,
                    _ => {
                        return Err(format!(
                            "--format {v:?}: expected table, json or prometheus"
                        ))
                    }
                };
            }
            other => return Err(format!("unknown option {other:?} for `demo`")),
        }
    }
    Ok(Command::Demo(o))
}

/// `10s`, `1500ms`, `2m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("duration {s:?}: expected e.g. 10s, 1500ms or 2m (at most 1h)");
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    if !(0.0..=3600.0).contains(&secs) || secs == 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_demo_flags() {
        let Ok(Command::Demo(o)) =
            parse(&args("demo --duration 2s -u 5 --load 2.5 --format json -q"))
        else {
            panic!("did not parse");
        };
        assert_eq!(o.duration, Duration::from_secs(2));
        assert_eq!(
            (o.users, o.load, o.format, o.quiet),
            (5, 2.5, Format::Json, true)
        );
    }

    #[test]
    fn formats() {
        for (flag, want) in [
            ("table", Format::Table),
            ("json", Format::Json),
            ("prometheus", Format::Prometheus),
        ] {
            let Ok(Command::Demo(o)) = parse(&args(&format!("demo -f {flag}"))) else {
                panic!("{flag} did not parse");
            };
            assert_eq!(o.format, want);
        }
        assert_eq!(parse(&args("demo --help")), Ok(Command::Help));
        assert_eq!(parse(&[]), Ok(Command::Help));
    }

    #[test]
    fn rejects_bad_input_with_a_message() {
        for bad in [
            "demo --duration 0s",
            "demo --duration x",
            "demo -u 0",
            "demo --load 99",
            "demo --bogus",
            "frobnicate",
            "demo -f xml",
            "demo -d",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    }
}
