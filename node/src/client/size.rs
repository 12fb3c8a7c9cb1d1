//! Human sizes: [`parse_size`] reads `4096`, `512MiB`, `10GiB`, `1.5TiB`
//! (binary units; `K`/`M`/`G`/`T` are binary too, as in qemu-img;
//! `kB`/`MB`/`GB`/`TB` are decimal), and [`format_size`] writes the
//! largest binary unit that keeps the value short.

/// Why a size did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad size {text:?}: {reason} (examples: 4096, 512MiB, 10GiB)")]
pub struct SizeError {
    text: String,
    reason: &'static str,
}

const UNITS: [(&str, u64); 17] = [
    ("", 1),
    ("B", 1),
    ("K", 1 << 10),
    ("KiB", 1 << 10),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("G", 1 << 30),
    ("GiB", 1 << 30),
    ("T", 1 << 40),
    ("TiB", 1 << 40),
    ("P", 1 << 50),
    ("PiB", 1 << 50),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

/// Parses a size in bytes (see the module docs). Fractions are allowed
/// with a unit when the result is a whole number of bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let fail = |reason| SizeError {
        text: text.to_owned(),
        reason,
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(fail("no number"));
    }
    let multiplier = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, m)| *m)
        .ok_or_else(|| fail("unknown unit (use B, KiB, MiB, GiB, TiB, PiB, kB, MB, GB, TB)"))?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(fail("malformed number"));
    }
    let whole: u64 = whole.parse().map_err(|_| fail("number too large"))?;
    let mut bytes = whole
        .checked_mul(multiplier)
        .ok_or_else(|| fail("too large"))?;
    if !fraction.is_empty() {
        if fraction.len() > 12 {
            return Err(fail("too many decimals"));
        }
        let digits: u128 = fraction.parse().map_err(|_| fail("malformed number"))?;
        let scale = 10u128.pow(fraction.len() as u32);
        let part = digits * u128::from(multiplier);
        if !part.is_multiple_of(scale) {
            return Err(fail("not a whole number of bytes"));
        }
        let part = u64::try_from(part / scale).map_err(|_| fail("too large"))?;
        bytes = bytes.checked_add(part).ok_or_else(|| fail("too large"))?;
    }
    Ok(bytes)
}

/// `bytes` in the largest binary unit that divides it into a short value
/// (`10GiB`, `1.5GiB`, `4096B`).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [
        ("PiB", 50),
        ("TiB", 40),
        ("GiB", 30),
        ("MiB", 20),
        ("KiB", 10),
    ] {
        let base = 1u128 << shift;
        let wide = u128::from(bytes);
        if wide >= base {
            if wide.is_multiple_of(base) {
                return format!("{}{unit}", wide / base);
            }
            let tenths = wide * 10 / base;
            if (wide * 10).is_multiple_of(base) || wide >= base * 10 {
                return format!("{}.{}{unit}", tenths / 10, tenths % 10);
            }
            return format!("{:.2}{unit}", bytes as f64 / base as f64);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size(" 10 GiB "), Ok(10 << 30));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4KiB"), Ok(4096));
    }

    #[test]
    fn bad_sizes_say_why() {
        for bad in [
            "",
            "GiB",
            "10XB",
            "-1",
            "1.2.3GiB",
            "1.GiB",
            ".5GiB",
            "0.3B",
            "99999999999PiB",
            "18446744073709551616",
        ] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.to_string().contains("bad size"), "{err}");
        }
        assert!(parse_size("10XB").unwrap_err().to_string().contains("unit"));
    }

    #[test]
    fn sizes_format_short() {
        assert_eq!(format_size(10 << 30), "10GiB");
        assert_eq!(format_size(3 << 29), "1.5GiB");
        assert_eq!(format_size(4096), "4KiB");
        assert_eq!(format_size(512), "512B");
        assert_eq!(format_size(0), "0B");
        assert_eq!(parse_size(&format_size(5 << 40)), Ok(5 << 40));
    }
}
