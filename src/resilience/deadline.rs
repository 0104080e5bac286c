//! Caller deadlines: an incoming `grpc-timeout` (or `x-remora-timeout`, a duration such as
//! `250ms`) shortens the route's timeout for that request, and the time left is passed
//! upstream in `grpc-timeout`, so every hop works to the caller's budget. `x-remora-timeout`
//! is Remora's own and is not forwarded.

use std::time::Duration;

use http::{header::HeaderName, HeaderMap, HeaderValue};

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const REMORA_TIMEOUT: HeaderName = HeaderName::from_static("x-remora-timeout");

/// The request's timeout: the configured one, shortened by a caller's deadline.
pub fn effective(configured: Duration, headers: &HeaderMap) -> Duration {
    let grpc = headers
        .get(&GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let own = headers
        .get(&REMORA_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_remora_timeout);
    [Some(configured), grpc, own]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(configured)
}

/// Rewrites the forwarded request's deadline headers: `grpc-timeout` (when the caller sent
/// one) becomes the time left; `x-remora-timeout` is removed.
pub fn propagate(headers: &mut HeaderMap, left: Duration) {
    headers.remove(&REMORA_TIMEOUT);
    if headers.contains_key(&GRPC_TIMEOUT) {
        headers.insert(GRPC_TIMEOUT, format_grpc_timeout(left));
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `x-remora-timeout`: whole milliseconds, seconds, minutes or hours (`250ms`, `2s`, `1m`,
/// `1h`), at most 24 hours. A wire format of its own: the control file's durations may
/// change without changing what callers send.
pub fn parse_remora_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = v.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (d <= Duration::from_secs(24 * 3600)).then_some(d)
}

/// `left` as `grpc-timeout`, in milliseconds (seconds when too large for 8 digits).
pub fn format_grpc_timeout(left: Duration) -> HeaderValue {
    let ms = left.as_millis();
    let text = if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&text).expect("digits and a unit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5000u"), Some(Duration::from_millis(5)));
        assert_eq!(parse_grpc_timeout("123456789m"), None, "more than 8 digits");
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250m");
    }

    #[test]
    fn parses_remora_timeouts() {
        assert_eq!(
            parse_remora_timeout("250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_remora_timeout(" 2s "), Some(Duration::from_secs(2)));
        assert_eq!(parse_remora_timeout("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_remora_timeout("25h"), None, "more than a day");
        for bad in ["", "ms", "1.5s", "10", "10x", "-1s", "999999999ms"] {
            assert_eq!(parse_remora_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shortest_deadline_wins() {
        let mut h = HeaderMap::new();
        assert_eq!(
            effective(Duration::from_secs(2), &h),
            Duration::from_secs(2)
        );
        h.insert("grpc-timeout", HeaderValue::from_static("500m"));
        assert_eq!(
            effective(Duration::from_secs(2), &h),
            Duration::from_millis(500)
        );
        h.insert("x-remora-timeout", HeaderValue::from_static("100ms"));
        assert_eq!(
            effective(Duration::from_secs(2), &h),
            Duration::from_millis(100)
        );
        assert_eq!(
            effective(Duration::from_millis(50), &h),
            Duration::from_millis(50)
        );
        propagate(&mut h, Duration::from_millis(42));
        assert_eq!(h["grpc-timeout"], "42m");
        assert!(!h.contains_key("x-remora-timeout"));
    }
}
