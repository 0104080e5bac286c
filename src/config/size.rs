//! Byte sizes in the control file: `64MiB`, `512KiB`, `1GiB`, `1MB`, or a plain number of
//! bytes.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ByteSize(pub u64);

const UNITS: [(&str, u64); 7] = [
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
    ("B", 1),
];

/// Parses `64MiB`, `1.5GiB`, `100kB`, `4096`.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, scale) = UNITS
        .iter()
        .find_map(|(unit, scale)| t.strip_suffix(unit).map(|n| (n.trim(), *scale)))
        .unwrap_or((t, 1));
    let bad = || {
        format!("invalid size {text:?}: expected a number and KiB, MiB, GiB, kB, MB, GB or B, e.g. 64MiB")
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = value * scale as f64;
    if !(0.0..=u64::MAX as f64).contains(&bytes) || bytes.fract() != 0.0 {
        return Err(format!(
            "invalid size {text:?}: not a whole number of bytes"
        ));
    }
    Ok(bytes as u64)
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that shows the size whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in &UNITS[..3] {
            if self.0 >= *scale && self.0 % scale == 0 {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 64MiB, 512KiB or 1GiB")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: a number and KiB, MiB, GiB, kB, MB, GB or B (64MiB), or bytes.",
            "oneOf": [
                { "type": "string", "pattern": "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+) *(GiB|MiB|KiB|GB|MB|kB|B)?$" },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print_back() {
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("1.5KiB"), Ok(1536));
        assert_eq!(parse("100kB"), Ok(100_000));
        assert_eq!(parse("4096"), Ok(4096));
        assert!(parse("lots").is_err());
        assert!(parse("1.5B").is_err());
        assert!(parse("-1MiB").is_err());
        for s in ["64MiB", "1GiB", "1536B", "3KiB"] {
            assert_eq!(ByteSize(parse(s).unwrap()).to_string(), s);
        }
    }
}
