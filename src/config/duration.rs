//! Human durations in the control file: `250ms`, `2s`, `1.5s`, `1m`, `1h`, or `0`.

use std::{fmt, time::Duration};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way people write them in YAML (`250ms`, `2s`, `1m`, `1h`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// A duration of whole seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// A duration of whole milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `0.3ms`, `1m`, `1h`, `0`, exactly: the decimal is read as
/// written, to the nanosecond, never through a float.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("invalid duration {text:?}: missing unit (ms, s, m or h)"))?;
    let (num, unit) = t.split_at(split);
    let nanos_per: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ))
        }
    };
    let bad = || format!("invalid duration {text:?}: expected a number followed by ms, s, m or h");
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') || whole.len() > 20 {
        return Err(bad());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| bad())?
    };
    let mut nanos = whole * nanos_per;
    let mut scale = nanos_per;
    for digit in frac.bytes() {
        if scale % 10 != 0 {
            return Err(format!(
                "invalid duration {text:?}: finer than a nanosecond"
            ));
        }
        scale /= 10;
        nanos += u128::from(digit - b'0') * scale;
    }
    let secs = u64::try_from(nanos / 1_000_000_000)
        .map_err(|_| format!("invalid duration {text:?}: out of range"))?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

impl fmt::Display for HumanDuration {
    /// The largest unit that shows the duration whole, or milliseconds with as many decimals
    /// as it needs: what is printed parses back to the same duration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        const MS: u128 = 1_000_000;
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (unit, per) in [("h", 3_600_000 * MS), ("m", 60_000 * MS), ("s", 1000 * MS)] {
            if nanos % per == 0 {
                return write!(f, "{}{unit}", nanos / per);
            }
        }
        if nanos % MS == 0 {
            return write!(f, "{}ms", nanos / MS);
        }
        let frac = format!("{:06}", nanos % MS);
        write!(f, "{}.{}ms", nanos / MS, frac.trim_end_matches('0'))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 250ms, 2s or 1m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse(v).map(HumanDuration).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                if v == 0 {
                    Ok(HumanDuration(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: missing unit (ms, s, m or h)"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_u64(
                    u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative"))?,
                )
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: a number and a unit, ms, s, m or h (250ms, 1.5s, 1m), or 0.",
            "oneOf": [
                { "type": "string", "pattern": "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ms|s|m|h)$" },
                { "const": 0 },
                { "const": "0" }
            ]
        })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0.3ms"), Ok(Duration::from_micros(300)));
        assert_eq!(parse(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1.1s"), Ok(Duration::from_millis(1100)));
    }

    #[test]
    fn rejects_bad_forms() {
        assert!(parse("2").unwrap_err().contains("missing unit"));
        assert!(parse("2x").unwrap_err().contains("unknown unit"));
        assert!(parse("ms").is_err());
        assert!(parse("").is_err());
        assert!(parse("0.0000001ms").unwrap_err().contains("nanosecond"));
        assert!(parse("1..5s").is_err());
        assert!(parse(".s").is_err());
    }

    #[test]
    fn displays_round_trip() {
        for s in [
            "250ms",
            "2s",
            "1m",
            "1h",
            "0s",
            "1500ms",
            "0.3ms",
            "1.5ms",
            "0.000001ms",
        ] {
            let d = parse(s).unwrap();
            assert_eq!(HumanDuration(d).to_string(), s);
        }
    }
}
