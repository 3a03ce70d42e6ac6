//! Sizes with units ("4k", "2G", "1MiB") and byte ranges ("0..2G"), as users type them.

use thiserror::Error;

/// A size or range that could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UnitError {
    /// Not a number with an optional unit.
    #[error("invalid size {0:?}: expected a number with an optional unit k, M, G, T (binary)")]
    BadSize(String),
    /// The value does not fit in 64 bits.
    #[error("size {0:?} overflows 64 bits")]
    Overflow(String),
    /// Not `START..END` with START <= END.
    #[error("invalid range {0:?}: expected START..END with START <= END, e.g. 0..2G")]
    BadRange(String),
}

/// Parses a byte size: a decimal number with an optional binary unit (k/K, m/M, g/G, t/T,
/// optionally followed by `iB` or `B`). "4k" = 4096, "2G" = 2 GiB, "512" = 512.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(UnitError::BadSize(text.to_string()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::Overflow(text.to_string()))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(UnitError::BadSize(text.to_string())),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| UnitError::Overflow(text.to_string()))
}

/// Parses `START..END` (each a size with units) into `(start, end)`, end exclusive.
pub fn parse_range(text: &str) -> Result<(u64, u64), UnitError> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| UnitError::BadRange(text.to_string()))?;
    let start = parse_size(a)?;
    let end = parse_size(b)?;
    if start > end {
        return Err(UnitError::BadRange(text.to_string()));
    }
    Ok((start, end))
}

/// Formats a byte count with the largest binary unit that divides it exactly ("4k", "2G").
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "k")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A byte count for people: `512 B`, `8.0 MiB`, `1.46 GiB` (three significant digits).
pub fn format_amount(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in ["KiB", "MiB", "GiB", "TiB", "PiB"] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(format_amount(0), "0 B");
        assert_eq!(format_amount(1023), "1023 B");
        assert_eq!(format_amount(8196 * 1024), "8.00 MiB");
        assert_eq!(format_amount(16392 * 1024), "16.0 MiB");
        assert_eq!(format_amount(847_744 * 1024), "828 MiB");
        assert_eq!(format_amount(3 << 40), "3.00 TiB");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("3t"), Ok(3 << 40));
        assert!(matches!(parse_size(""), Err(UnitError::BadSize(_))));
        assert!(matches!(parse_size("k"), Err(UnitError::BadSize(_))));
        assert!(matches!(parse_size("4x"), Err(UnitError::BadSize(_))));
        assert!(matches!(parse_size("-1"), Err(UnitError::BadSize(_))));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(UnitError::Overflow(_))
        ));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("0..2G"), Ok((0, 2 << 30)));
        assert_eq!(parse_range("4k..8k"), Ok((4096, 8192)));
        assert!(matches!(parse_range("8k..4k"), Err(UnitError::BadRange(_))));
        assert!(matches!(parse_range("8k"), Err(UnitError::BadRange(_))));
    }

    #[test]
    fn format_round_trips() {
        for v in [0, 1, 512, 4096, 1 << 20, 3 << 30, 5 << 40, 4097] {
            assert_eq!(parse_size(&format_size(v)), Ok(v));
        }
    }
}
