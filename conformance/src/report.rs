//! Reporters: each turns the event stream into one format, written to any `io::Write`.

use std::io::{self, Write};

use crate::check::Verdict;
use crate::event::{CheckResult, Event, Outcome, RunInfo, SCHEMA_VERSION};

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

/// TAP version 13 (with YAML diagnostics), streamed: the plan comes first from `RunStarted`.
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
        .replace(['\n', '\r'], " ")
}

impl<W: Write> Reporter for Tap<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted { run, planned, .. } => {
                writeln!(self.w, "TAP version 13")?;
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
                    Verdict::Fail { reason }
                    | Verdict::Error { reason }
                    | Verdict::Warn { reason } => {
                        // A warning does not fail the run: `ok`, with the reason attached.
                        let ok = if matches!(result.verdict, Verdict::Warn { .. }) {
                            "ok"
                        } else {
                            "not ok"
                        };
                        writeln!(self.w, "{ok} {} {desc}", self.n)?;
                        writeln!(self.w, "  ---")?;
                        writeln!(self.w, "  verdict: {}", result.verdict.name())?;
                        writeln!(self.w, "  level: {}", result.level)?;
                        writeln!(self.w, "  reason: {}", serde_json::to_string(reason)?)?;
                        writeln!(self.w, "  duration_ms: {}", result.duration_ms)?;
                        if !result.attachments.is_empty() {
                            writeln!(self.w, "  attachments:")?;
                            for a in &result.attachments {
                                writeln!(self.w, "    - {}", serde_json::to_string(a)?)?;
                            }
                        }
                        writeln!(self.w, "  ...")?;
                    }
                }
            }
            Event::Property { name, value } => {
                writeln!(self.w, "# {}: {}", tap_text(name), tap_text(value))?;
            }
            Event::RunFinished { summary } => {
                writeln!(
                    self.w,
                    "# {} passed, {} failed, {} warned, {} skipped, {} errored",
                    summary.passed,
                    summary.failed,
                    summary.warned,
                    summary.skipped,
                    summary.errored
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
    properties: std::collections::BTreeMap<String, String>,
}

impl<W: Write> Junit<W> {
    pub fn new(w: W) -> Self {
        Self {
            w,
            run: None,
            results: Vec::new(),
            properties: std::collections::BTreeMap::new(),
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
            // XML 1.0 cannot carry most control characters, nor U+FFFE and U+FFFF.
            c if ((c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t'))
                || matches!(c, '\u{fffe}' | '\u{ffff}') =>
            {
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
            Event::Property { name, value } => {
                self.properties.insert(name.clone(), value.clone());
            }
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
                write!(
                    self.w,
                    r#"  <properties><property name="schema_version" value="{SCHEMA_VERSION}"/><property name="profile" value="{}"/><property name="subject" value="{}"/>"#,
                    xml(&run.profile),
                    xml(&run.subject)
                )?;
                for (name, value) in &self.properties {
                    write!(
                        self.w,
                        r#"<property name="{}" value="{}"/>"#,
                        xml(name),
                        xml(value)
                    )?;
                }
                writeln!(self.w, "</properties>")?;
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
                        let element = match &r.verdict {
                            Verdict::Pass | Verdict::Warn { .. } => None,
                            Verdict::Fail { reason } => Some(("failure", reason)),
                            Verdict::Error { reason } => Some(("error", reason)),
                            Verdict::Skip { reason } => Some(("skipped", reason)),
                        };
                        // Warnings and attachments go to system-out; `[[ATTACHMENT|path]]` is
                        // how Jenkins and GitLab pick up files.
                        let mut out = String::new();
                        if let Verdict::Warn { reason } = &r.verdict {
                            out.push_str(&format!("WARN ({}): {}\n", r.level, reason));
                        }
                        for a in &r.attachments {
                            out.push_str(&format!("[[ATTACHMENT|{a}]]\n"));
                        }
                        if element.is_none() && out.is_empty() {
                            writeln!(self.w, "/>")?;
                            continue;
                        }
                        writeln!(self.w, ">")?;
                        if let Some((name, reason)) = element {
                            writeln!(self.w, "      <{name} message=\"{}\"/>", xml(reason))?;
                        }
                        if !out.is_empty() {
                            writeln!(self.w, "      <system-out>{}</system-out>", xml(&out))?;
                        }
                        writeln!(self.w, "    </testcase>")?;
                    }
                    writeln!(self.w, "  </testsuite>")?;
                }
                writeln!(self.w, "</testsuites>")?;
            }
        }
        self.w.flush()
    }
}

/// The terminal summary: a line per check as it finishes (the reason under anything but a
/// pass), then the totals and what they mean for a gate.
pub struct Console<W> {
    w: W,
    results: Vec<CheckResult>,
}

impl<W: Write> Console<W> {
    pub fn new(w: W) -> Self {
        Self {
            w,
            results: Vec::new(),
        }
    }
}

impl<W: Write> Reporter for Console<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        match event {
            Event::RunStarted { run, planned, .. } => writeln!(
                self.w,
                "bootyard conformance (catalogue {}), profile {}: {planned} checks on {}",
                run.catalogue_version, run.profile, run.subject
            )?,
            Event::CheckFinished { result } => {
                writeln!(
                    self.w,
                    "{:<5} {:<8} {:<6} {}",
                    result.verdict.name().to_uppercase(),
                    result.id,
                    result.level,
                    result.title
                )?;
                if let Some(reason) = result.verdict.reason() {
                    writeln!(self.w, "      {}", reason.replace('\n', "\n      "))?;
                }
                for a in &result.attachments {
                    writeln!(self.w, "      log: {a}")?;
                }
                self.results.push(result.clone());
            }
            Event::Property { name, value } => writeln!(self.w, "{name}: {value}")?,
            Event::RunFinished { summary } => {
                let outcome = Outcome::of(&self.results);
                writeln!(
                    self.w,
                    "{} passed, {} failed, {} warned, {} skipped, {} errored in {} s: {} (exit {})",
                    summary.passed,
                    summary.failed,
                    summary.warned,
                    summary.skipped,
                    summary.errored,
                    secs(summary.duration_ms),
                    match outcome {
                        Outcome::Passed => "PASSED",
                        Outcome::Failed => "FAILED: a MUST check failed",
                        Outcome::Errored => "ERROR: a check could not reach a verdict",
                        Outcome::Incomplete => "INCOMPLETE: a MUST check was skipped",
                    },
                    outcome.exit_code()
                )?;
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
            catalogue_version: "1".into(),
            profile: "image,boot".into(),
            subject: "oci-layout:/img:v1 <&>".into(),
        };
        let result = |id: &str, verdict: Verdict, duration_ms: u64, attachments: &[&str]| {
            let def = crate::catalogue::find(id).unwrap();
            CheckResult {
                id: def.check_id(),
                title: def.title.into(),
                level: def.level,
                verdict,
                duration_ms,
                attachments: attachments.iter().map(|a| a.to_string()).collect(),
            }
        };
        let results = vec![
            result("IMG-001", Verdict::Pass, 12, &[]),
            result(
                "IMG-004",
                Verdict::Fail {
                    reason: "2 module trees (6.1 & 6.6); exactly one, 6.6, is wanted".into(),
                },
                3,
                &[],
            ),
            result(
                "IMG-013",
                Verdict::Warn {
                    reason: "the root filesystem takes 4000 MiB, over 3072 MiB".into(),
                },
                40,
                &[],
            ),
            result(
                "IMG-012",
                Verdict::Skip {
                    reason: "no image config # a directory".into(),
                },
                0,
                &[],
            ),
            result(
                "BOOT-001",
                Verdict::Error {
                    reason: "qemu-system-x86_64 not found".into(),
                },
                1,
                &["reports/BOOT-001/console.log"],
            ),
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
            if r.id.area() == "BOOT" {
                for (name, value) in [
                    ("accelerator", "tcg"),
                    ("accelerator_reason", "/dev/kvm opens, but the probe kernel did not reach userspace under KVM # <nested>"),
                ] {
                    out.push(Event::Property {
                        name: name.into(),
                        value: value.into(),
                    });
                }
            }
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
    fn console_snapshot() {
        let buf = std::cell::RefCell::new(Vec::new());
        insta::assert_snapshot!(render(Console::new(Shared(&buf)), &buf));
    }

    #[test]
    fn junit_snapshot() {
        let buf = std::cell::RefCell::new(Vec::new());
        insta::assert_snapshot!(render(Junit::new(Shared(&buf)), &buf));
    }
}
