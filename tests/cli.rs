//! The `tierpool` binary: `demo` runs and prints what `--format` asks
//! for; bad input fails with a message and a non-zero exit.
#![cfg(feature = "cli")]

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long any one run of the binary may take.
const LIMIT: Duration = Duration::from_secs(60);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args`, killing it if it outlives [`LIMIT`].
fn tierpool(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierpool"))
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the tierpool binary");
    // Read both pipes while waiting, so a full pipe cannot stall the child.
    let reader = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tierpool {args:?} still running after {LIMIT:?}: killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Just enough JSON to check the output: a strict parser into a tree.
#[derive(Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(s: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: s.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing input at byte {}", p.i));
        }
        Ok(v)
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(&format!("expected {:?}", c as char))
        }
    }

    fn lit(&mut self, word: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            Ok(v)
        } else {
            self.err("bad literal")
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut m = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    m.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return self.err("expected , or }"),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return self.err("expected , or ]"),
                    }
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.lit("true", Json::Bool(true)),
            Some(b'f') => self.lit("false", Json::Bool(false)),
            Some(b'n') => self.lit("null", Json::Null),
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len() && b"+-.eE0123456789".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                // JSON has no leading zeros, "+" or bare ".5".
                let digits = text.trim_start_matches('-');
                if digits.starts_with('.')
                    || (digits.len() > 1
                        && digits.starts_with('0')
                        && !digits[1..].starts_with('.'))
                {
                    return self.err("bad number");
                }
                text.parse()
                    .map(Json::Num)
                    .or_else(|_| self.err("bad number"))
            }
            _ => self.err("expected a value"),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return self.err("expected a string");
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).or_else(|_| self.err("bad UTF-8"));
                }
                Some(b'\\') => {
                    let esc = self.s.get(self.i + 1).copied();
                    self.i += 2;
                    match esc {
                        Some(b'"') => out.push(b'"'),
                        Some(b'\\') => out.push(b'\\'),
                        Some(b'/') => out.push(b'/'),
                        Some(b'n') => out.push(b'\n'),
                        Some(b't') => out.push(b'\t'),
                        Some(b'r') => out.push(b'\r'),
                        Some(b'b') => out.push(8),
                        Some(b'f') => out.push(12),
                        Some(b'u') => {
                            let hex = self
                                .s
                                .get(self.i..self.i + 4)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok());
                            let Some(c) = hex.and_then(char::from_u32) else {
                                return self.err("bad \\u escape");
                            };
                            self.i += 4;
                            out.extend_from_slice(c.to_string().as_bytes());
                        }
                        _ => return self.err("bad escape"),
                    }
                }
                Some(c) if *c < 0x20 => return self.err("control character in string"),
                Some(c) => {
                    out.push(*c);
                    self.i += 1;
                }
            }
        }
    }
}

#[test]
fn the_json_checker_is_strict() {
    assert!(Json::parse(r#"{"a":[1,-2.5e3,true,null,"x\"\u00e9"],"b":{}}"#).is_ok());
    for bad in [
        "",
        "{",
        "{\"a\":1,}",
        "[1 2]",
        "{\"a\" 1}",
        "01",
        "\"\n\"",
        "{} x",
        "nul",
    ] {
        assert!(Json::parse(bad).is_err(), "{bad:?} accepted");
    }
}

const TIERS: [&str; 4] = ["ui", "background", "realtime", "analysis"];

#[test]
fn demo_prints_valid_json_with_every_tier() {
    let r = tierpool(&["demo", "--duration", "2s", "--format", "json", "--quiet"]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let json = Json::parse(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    let Some(Json::Arr(tiers)) = json.get("tiers") else {
        panic!("no tiers array: {}", r.stdout);
    };
    let names: Vec<&str> = tiers
        .iter()
        .filter_map(|t| match t.get("name") {
            Some(Json::Str(s)) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    for tier in TIERS {
        assert!(names.contains(&tier), "{tier} missing from {names:?}");
    }
    // Work was done, and the demo's workers report too.
    let Some(Json::Num(ui_done)) = tiers[0].get("completed") else {
        panic!("no completed count");
    };
    assert!(*ui_done > 0.0);
    let demo = json.get("demo").expect("a demo object");
    for key in [
        "breaker",
        "re_enricher",
        "cache_warmer",
        "health",
        "shutdown",
    ] {
        assert!(demo.get(key).is_some(), "demo.{key} missing");
    }
}

#[test]
fn demo_prints_prometheus_text() {
    let r = tierpool(&["demo", "-d", "1500ms", "-f", "prometheus", "-q", "-u", "5"]);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    let mut samples = 0;
    for line in r.stdout.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        // name{labels} value, or name value (labels are optional)
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name: {line:?}"
        );
        let labels = labels
            .strip_suffix('}')
            .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("bad label {pair:?}: {line:?}"));
            assert!(
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad label name: {line:?}"
            );
            assert!(
                v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                "unquoted label value: {line:?}"
            );
        }
        assert!(value.parse::<f64>().is_ok(), "value not a number: {line:?}");
        samples += 1;
    }
    assert!(samples > 0, "no samples in {:?}", r.stdout);
    for tier in TIERS {
        let series = format!("tierpool_tasks_submitted_total{{tier=\"{tier}\"}} ");
        assert!(r.stdout.contains(&series), "no {series}");
    }
}

#[test]
fn bad_input_fails_with_a_message() {
    for (args, mentions) in [
        (&["demo", "--bogus"][..], "--bogus"),
        (&["demo", "--duration", "0s"][..], "duration"),
        (&["demo", "--format", "xml"][..], "xml"),
        (&["demo", "--duration"][..], "needs a value"),
        (&["frobnicate"][..], "frobnicate"),
    ] {
        let r = tierpool(args);
        assert_ne!(r.code, Some(0), "{args:?} succeeded");
        assert!(r.code.is_some(), "{args:?} died by a signal");
        assert!(
            r.stderr.contains("error:") && r.stderr.contains(mentions),
            "{args:?}: unclear error {:?}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{args:?} printed {:?}", r.stdout);
    }
}

#[test]
fn help_explains_the_demo() {
    for args in [&["--help"][..], &["help"][..], &["demo", "-h"][..]] {
        let r = tierpool(args);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        assert!(r.stdout.contains("demo"), "{args:?}: {}", r.stdout);
        assert!(r.stdout.contains("--format"), "{args:?}");
        assert!(r.stdout.contains("prometheus"), "{args:?}");
    }
}
