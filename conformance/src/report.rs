//! Reporters: each turns the event stream into one format, written to any `io::Write`.

use std::io::{self, Write};

use crate::check::Verdict;
use crate::event::{CheckResult, Event, RunInfo, SCHEMA_VERSION};

pub trait Reporter {
    fn event(&mut self, event: &Event) -> io::Result<()>;
}

/// One JSON object per line, written as events happen: for machines that follow a run live.
pub struct JsonLines<W> {
    w: W,
}

impl<W: Write> JsonLines<W> {
    pub fn new(w: W) -> Self {
        Self { w }
    }
}

impl<W: Write> Reporter for JsonLines<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut self.w, event)?;
        self.w.write_all(b"\n")?;
        self.w.flush()
    }
}

/// TAP version 14, streamed: the plan comes first from `RunStarted`.
pub struct Tap<W> {
    w: W,
    n: u32,
}

impl<W: Write> Tap<W> {
    pub fn new(w: W) -> Self {
        Self { w, n: 0 }
    }
}

/// TAP descriptions end at a `#` (which starts a directive) and at a newline.
fn tap_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('#', "\\#")
        .replace('\n', " ")
}

impl<W: Write> Reporter for Tap<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted { run, planned, .. } => {
                writeln!(self.w, "TAP version 14")?;
                writeln!(
                    self.w,
                    "# bootyard conformance {} profile {} on {}",
                    run.catalogue_version,
                    run.profile,
                    tap_text(&run.subject)
                )?;
                writeln!(self.w, "1..{planned}")?;
            }
            Event::CheckFinished { result } => {
                self.n += 1;
                let desc = format!("{} - {}", result.id, tap_text(&result.title));
                match &result.verdict {
                    Verdict::Pass => writeln!(self.w, "ok {} {desc}", self.n)?,
                    Verdict::Skip { reason } => {
                        writeln!(self.w, "ok {} {desc} # SKIP {}", self.n, tap_text(reason))?
                    }
                    Verdict::Fail { reason } | Verdict::Error { reason } => {
                        writeln!(self.w, "not ok {} {desc}", self.n)?;
                        writeln!(self.w, "  ---")?;
                        writeln!(self.w, "  verdict: {}", result.verdict.name())?;
                        writeln!(self.w, "  reason: {}", serde_json::to_string(reason)?)?;
                        writeln!(self.w, "  duration_ms: {}", result.duration_ms)?;
                        writeln!(self.w, "  ...")?;
                    }
                }
            }
            Event::RunFinished { summary } => {
                writeln!(
                    self.w,
                    "# {} passed, {} failed, {} skipped, {} errored",
                    summary.passed, summary.failed, summary.skipped, summary.errored
                )?;
            }
        }
        self.w.flush()
    }
}

/// JUnit XML, as CI systems read it. Written whole at `RunFinished`, since the root element
/// carries the totals. Checks are grouped into one testsuite per area.
pub struct Junit<W> {
    w: W,
    run: Option<RunInfo>,
    results: Vec<CheckResult>,
}

impl<W: Write> Junit<W> {
    pub fn new(w: W) -> Self {
        Self {
            w,
            run: None,
            results: Vec::new(),
        }
    }
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 cannot carry most control characters at all.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

impl<W: Write> Reporter for Junit<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted { run, .. } => self.run = Some(run.clone()),
            Event::CheckFinished { result } => self.results.push(result.clone()),
            Event::RunFinished { summary } => {
                let run = self.run.clone().unwrap_or(RunInfo {
                    catalogue_version: "?".into(),
                    profile: "?".into(),
                    subject: "?".into(),
                });
                let mut areas: std::collections::BTreeMap<&str, Vec<&CheckResult>> =
                    std::collections::BTreeMap::new();
                for r in &self.results {
                    areas.entry(r.id.area()).or_default().push(r);
                }
                writeln!(self.w, r#"<?xml version="1.0" encoding="UTF-8"?>"#)?;
                writeln!(
                    self.w,
                    r#"<testsuites name="bootyard conformance {}" tests="{}" failures="{}" errors="{}" skipped="{}" time="{}">"#,
                    xml(&run.catalogue_version),
                    summary.total(),
                    summary.failed,
                    summary.errored,
                    summary.skipped,
                    secs(summary.duration_ms)
                )?;
                writeln!(
                    self.w,
                    r#"  <properties><property name="schema_version" value="{SCHEMA_VERSION}"/><property name="profile" value="{}"/><property name="subject" value="{}"/></properties>"#,
                    xml(&run.profile),
                    xml(&run.subject)
                )?;
                for (area, results) in areas {
                    let count =
                        |f: fn(&Verdict) -> bool| results.iter().filter(|r| f(&r.verdict)).count();
                    let time: u64 = results.iter().map(|r| r.duration_ms).sum();
                    writeln!(
                        self.w,
                        r#"  <testsuite name="{}" tests="{}" failures="{}" errors="{}" skipped="{}" time="{}">"#,
                        xml(area),
                        results.len(),
                        count(|v| matches!(v, Verdict::Fail { .. })),
                        count(|v| matches!(v, Verdict::Error { .. })),
                        count(|v| matches!(v, Verdict::Skip { .. })),
                        secs(time)
                    )?;
                    for r in results {
                        write!(
                            self.w,
                            r#"    <testcase classname="{}" name="{} {}" time="{}""#,
                            xml(area),
                            r.id,
                            xml(&r.title),
                            secs(r.duration_ms)
                        )?;
                        match &r.verdict {
                            Verdict::Pass => writeln!(self.w, "/>")?,
                            Verdict::Fail { reason } => writeln!(
                                self.w,
                                ">\n      <failure message=\"{}\"/>\n    </testcase>",
                                xml(reason)
                            )?,
                            Verdict::Error { reason } => writeln!(
                                self.w,
                                ">\n      <error message=\"{}\"/>\n    </testcase>",
                                xml(reason)
                            )?,
                            Verdict::Skip { reason } => writeln!(
                                self.w,
                                ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                                xml(reason)
                            )?,
                        }
                    }
                    writeln!(self.w, "  </testsuite>")?;
                }
                writeln!(self.w, "</testsuites>")?;
            }
        }
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Summary;

    fn events() -> Vec<Event> {
        let run = RunInfo {
            catalogue_version: "0.1.0".into(),
            profile: "standard".into(),
            subject: "oci-layout:/img:v1 <&>".into(),
        };
        let results = vec![
            CheckResult {
                id: "IMG-001".parse().unwrap(),
                title: "has /etc/os-release".into(),
                verdict: Verdict::Pass,
                duration_ms: 12,
            },
            CheckResult {
                id: "IMG-002".parse().unwrap(),
                title: "exactly one kernel".into(),
                verdict: Verdict::Fail {
                    reason: "found 2 under /lib/modules: 6.1 & 6.6".into(),
                },
                duration_ms: 3,
            },
            CheckResult {
                id: "BOOT-001".parse().unwrap(),
                title: "boots # in QEMU".into(),
                verdict: Verdict::Skip {
                    reason: "profile has no QEMU".into(),
                },
                duration_ms: 0,
            },
            CheckResult {
                id: "BOOT-002".parse().unwrap(),
                title: "rolls back".into(),
                verdict: Verdict::Error {
                    reason: "qemu-system-x86_64 not found".into(),
                },
                duration_ms: 1,
            },
        ];
        let mut summary = Summary {
            duration_ms: 1016,
            ..Default::default()
        };
        let mut out = vec![Event::RunStarted {
            schema_version: SCHEMA_VERSION,
            run,
            planned: results.len() as u32,
        }];
        for r in results {
            summary.count(&r.verdict);
            out.push(Event::CheckFinished { result: r });
        }
        out.push(Event::RunFinished { summary });
        out
    }

    fn render(mut r: impl Reporter, buf: &std::cell::RefCell<Vec<u8>>) -> String {
        for e in events() {
            r.event(&e).unwrap();
        }
        drop(r);
        String::from_utf8(buf.borrow().clone()).unwrap()
    }

    struct Shared<'a>(&'a std::cell::RefCell<Vec<u8>>);
    impl Write for Shared<'_> {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.borrow_mut().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_snapshot_and_round_trip() {
        let buf = std::cell::RefCell::new(Vec::new());
        let out = render(JsonLines::new(Shared(&buf)), &buf);
        insta::assert_snapshot!(out);
        let back: Vec<Event> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, events());
    }

    #[test]
    fn tap_snapshot() {
        let buf = std::cell::RefCell::new(Vec::new());
        insta::assert_snapshot!(render(Tap::new(Shared(&buf)), &buf));
    }

    #[test]
    fn junit_snapshot() {
        let buf = std::cell::RefCell::new(Vec::new());
        insta::assert_snapshot!(render(Junit::new(Shared(&buf)), &buf));
    }
}
