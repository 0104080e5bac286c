//! A caller's `Range` answered from a stored whole response (RFC 9110, 14): one byte range
//! becomes a 206 with its slice of the stored body (a `Bytes` slice, not a copy), a range
//! past the end a 416. Anything else the specification lets a server ignore (another range
//! unit, several ranges, a malformed header, an `If-Range` that does not match) is answered
//! with the whole response, as a cache without range support would.

use std::ops::Range;

use http::{header, HeaderMap};

/// What the stored body of `len` bytes answers a request with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranged {
    /// The whole response (no usable `Range`).
    Whole,
    /// These bytes of it, as a 206.
    Part(Range<u64>),
    /// A 416: the range starts past the end.
    Unsatisfiable,
}

/// The answer to `req`'s `Range` from a stored 200 with header fields `stored` and a body
/// of `len` bytes.
pub fn select(req: &HeaderMap, stored: &HeaderMap, len: u64) -> Ranged {
    let mut ranges = req.get_all(header::RANGE).iter();
    let (Some(range), None) = (ranges.next(), ranges.next()) else {
        return Ranged::Whole;
    };
    if !if_range_holds(req, stored) {
        return Ranged::Whole;
    }
    let Some(spec) = range
        .to_str()
        .ok()
        .and_then(|r| r.split_once('='))
        .filter(|(unit, _)| unit.trim().eq_ignore_ascii_case("bytes"))
        .map(|(_, spec)| spec.trim())
        .filter(|spec| !spec.contains(','))
    else {
        return Ranged::Whole;
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Ranged::Whole;
    };
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // `-N`: the last N bytes.
        (true, _, Some(n)) if n == 0 || len == 0 => Ranged::Unsatisfiable,
        (true, _, Some(n)) => Ranged::Part(len.saturating_sub(n)..len),
        // `A-` and `A-B`.
        (false, Some(a), None) if last.trim().is_empty() => range_from(a, len, len),
        (false, Some(a), Some(b)) if b >= a => range_from(a, b.saturating_add(1), len),
        _ => Ranged::Whole,
    }
}

fn range_from(start: u64, end: u64, len: u64) -> Ranged {
    if start >= len {
        Ranged::Unsatisfiable
    } else {
        Ranged::Part(start..end.min(len))
    }
}

/// Whether `If-Range`, when the request has one, names the stored response: its strong
/// `ETag` exactly, or its `Last-Modified` date exactly (RFC 9110, 13.1.5).
fn if_range_holds(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(cond) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return req.get(header::IF_RANGE).is_none();
    };
    let cond = cond.trim();
    let got = |name| {
        stored
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if cond.starts_with('"') || cond.starts_with("W/") {
        return !cond.starts_with("W/") && got(header::ETAG) == Some(cond);
    }
    match (
        httpdate::parse_http_date(cond),
        got(header::LAST_MODIFIED).map(httpdate::parse_http_date),
    ) {
        (Ok(a), Some(Ok(b))) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(range: &str, len: u64) -> Ranged {
        let mut req = HeaderMap::new();
        req.insert(header::RANGE, range.parse().unwrap());
        select(&req, &HeaderMap::new(), len)
    }

    #[test]
    fn one_byte_range_of_each_form() {
        assert_eq!(ask("bytes=0-1", 11), Ranged::Part(0..2));
        assert_eq!(ask("bytes=1-", 11), Ranged::Part(1..11));
        assert_eq!(ask("bytes=-1", 11), Ranged::Part(10..11));
        assert_eq!(ask("bytes=-50", 11), Ranged::Part(0..11));
        assert_eq!(ask("bytes=5-500", 11), Ranged::Part(5..11));
        assert_eq!(ask("Bytes = 2-3", 11), Ranged::Part(2..4));
    }

    #[test]
    fn past_the_end_is_unsatisfiable() {
        assert_eq!(ask("bytes=11-", 11), Ranged::Unsatisfiable);
        assert_eq!(ask("bytes=20-30", 11), Ranged::Unsatisfiable);
        assert_eq!(ask("bytes=-0", 11), Ranged::Unsatisfiable);
        assert_eq!(ask("bytes=-3", 0), Ranged::Unsatisfiable);
    }

    #[test]
    fn what_may_be_ignored_gets_the_whole_response() {
        for r in [
            "bytes=3-1",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=a-b",
            "bytes=",
            "bytes=+1-2",
            "bytes=1",
        ] {
            assert_eq!(ask(r, 11), Ranged::Whole, "{r}");
        }
    }

    #[test]
    fn if_range_must_name_the_stored_response() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, "\"v1\"".parse().unwrap());
        stored.insert(
            header::LAST_MODIFIED,
            "Tue, 01 Dec 2026 10:00:00 GMT".parse().unwrap(),
        );
        let with = |cond: &str| {
            let mut req = HeaderMap::new();
            req.insert(header::RANGE, "bytes=0-1".parse().unwrap());
            req.insert(header::IF_RANGE, cond.parse().unwrap());
            select(&req, &stored, 11)
        };
        assert_eq!(with("\"v1\""), Ranged::Part(0..2));
        assert_eq!(with("\"v2\""), Ranged::Whole);
        assert_eq!(with("W/\"v1\""), Ranged::Whole, "a weak tag never matches");
        assert_eq!(with("Tue, 01 Dec 2026 10:00:00 GMT"), Ranged::Part(0..2));
        assert_eq!(with("Tue, 01 Dec 2026 09:00:00 GMT"), Ranged::Whole);
    }
}
