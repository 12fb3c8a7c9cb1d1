//! The Prometheus text exposition format (version 0.0.4), written by hand:
//! [`Exposition`] writes metric families (`# HELP`, `# TYPE`, samples) and
//! [`check_exposition`] validates a whole scrape line by line (used by the
//! tests, and cheap enough to assert on in debug builds).
//!
//! Contract: every family is announced once (`HELP` then `TYPE`) before its
//! samples; names match `[a-zA-Z_:][a-zA-Z0-9_:]*`; label values are
//! escaped (`\\`, `\"`, `\n`); values are finite numbers or `+Inf`/`-Inf`/
//! `NaN` as Prometheus spells them.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The kind of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A scrape being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    announced: BTreeSet<String>,
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as Prometheus spells it.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Announces family `name` (once; later calls do nothing).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(valid_name(name), "metric name {name:?}");
        if self.announced.insert(name.to_owned()) {
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        }
    }

    /// One sample of a family announced before (for a histogram, `name`
    /// carries the `_bucket`/`_sum`/`_count` suffix).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
    }

    /// The scrape.
    pub fn finish(self) -> String {
        self.out
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    valid_name(name) && !name.contains(':')
}

fn valid_value(text: &str) -> bool {
    matches!(text, "+Inf" | "-Inf" | "NaN") || text.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Parses `{k="v",...}` starting after the `{`; returns the rest after `}`.
fn parse_labels(mut rest: &str) -> Result<&str, String> {
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let key = &rest[..eq];
        if !valid_label_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            match (escaped, c) {
                (true, '\\' | '"' | 'n') => escaped = false,
                (true, other) => return Err(format!("bad escape \\{other}")),
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, _) => {}
            }
        }
        let end = end.ok_or("unterminated label value")?;
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample name belongs to, given the announced families.
fn family_of<'a>(name: &'a str, families: &BTreeSet<String>) -> Option<&'a str> {
    if families.contains(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| families.contains(*base))
}

/// Checks a whole scrape: every line a `# HELP`, a `# TYPE` (once per
/// family, before its samples) or a sample of an announced family with a
/// valid value. Returns the first problem with its line number.
pub fn check_exposition(text: &str) -> Result<usize, String> {
    let mut families = BTreeSet::new();
    let mut samples = 0;
    for (number, line) in text.lines().enumerate() {
        let fail = |why: String| format!("line {}: {why}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), _) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some(kind)) if valid_name(name) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(fail(format!("unknown type {kind}")));
                    }
                    if !families.insert(name.to_owned()) {
                        return Err(fail("family announced twice".into()));
                    }
                }
                _ => return Err(fail("malformed comment".into())),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| fail("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(fail("bad metric name".into()));
        }
        if family_of(name, &families).is_none() {
            return Err(fail("sample before its # TYPE".into()));
        }
        let mut rest = &line[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            rest = parse_labels(labels).map_err(fail)?;
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| fail("no space before the value".into()))?;
        let value = value.split(' ').next().unwrap_or_default();
        if !valid_value(value) {
            return Err(fail(format!("bad value {value:?}")));
        }
        samples += 1;
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_scrapes_check_and_broken_lines_do_not() {
        let mut e = Exposition::new();
        e.family("metro_x_total", Kind::Counter, "Things.\nDone.");
        e.sample("metro_x_total", &[("volume", "a\"b\\c\nd")], 3.0);
        e.family("metro_lat_seconds", Kind::Histogram, "Latency.");
        e.sample("metro_lat_seconds_bucket", &[("le", "+Inf")], 1.0);
        e.sample("metro_lat_seconds_sum", &[], 0.25);
        e.family("metro_x_total", Kind::Counter, "again");
        let text = e.finish();
        assert_eq!(check_exposition(&text), Ok(3), "{text}");
        for bad in [
            "metro_y 1",
            "# TYPE m counter\nm{a=\"1\" 2",
            "# TYPE m counter\nm{a=1} 2",
            "# TYPE m counter\nm one",
            "# TYPE m counter\n# TYPE m counter",
            "# TYPE m blob",
            "# TYPE m gauge\n9m 1",
        ] {
            assert!(check_exposition(bad).is_err(), "{bad:?} passed");
        }
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(0.5), "0.5");
    }
}
