//! A route's stored responses: in memory, bounded by bytes, least recently used evicted
//! first. Keyed by the request's authority and path with query; each key holds the
//! variants its responses' `Vary` told apart, by the request header values they vary on.
//!
//! One mutex over the map: a lookup or an insert is a hash probe and a few pointer moves,
//! and bodies are `Bytes` shared with the responses being served, never copied under it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::sync::watch;

use super::{directives::ResponseDirectives, Settings};
use crate::metrics::CacheMetrics;

/// A stored response.
#[derive(Debug)]
pub struct Entry {
    /// Status.
    pub status: StatusCode,
    /// Header fields, as received (hop-by-hop fields already gone).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// `Cache-Control` of `headers`.
    pub cc: ResponseDirectives,
    /// When the request that fetched it was sent.
    pub request_time: SystemTime,
    /// When its head arrived.
    pub response_time: SystemTime,
    /// The request header values its `Vary` names, as the request that fetched it had them
    /// ([`normalized`]).
    pub vary: Vary,
}

impl Entry {
    /// Bytes it is counted as: body, header fields, and a little for the bookkeeping.
    pub fn size(&self) -> u64 {
        let head: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (self.body.len() + head + 256) as u64
    }

    /// Whether `req` has the header values this variant was stored for (RFC 9111, 4.1),
    /// once both are [`normalized`].
    pub fn matches(&self, req: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, values)| normalized(name, req.get_all(name).iter()) == *values)
    }
}

/// The request header fields a variant was selected by, each with its normalized values.
pub type Vary = Vec<(HeaderName, Vec<String>)>;

/// A selecting field's values in a form where equivalent requests are equal (RFC 9111, 4.1
/// allows normalizing them): list members without the whitespace around commas, and for
/// the fields whose members are case-insensitive tokens (language tags, content codings,
/// charsets), lower-cased.
fn normalized<'a>(name: &HeaderName, values: impl Iterator<Item = &'a HeaderValue>) -> Vec<String> {
    let fold = matches!(
        name.as_str(),
        "accept-language" | "accept-encoding" | "accept-charset"
    );
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| {
            let v = v.trim();
            if fold {
                v.to_ascii_lowercase()
            } else {
                v.to_owned()
            }
        })
        .collect()
}

/// The request header values a response's `Vary` names, [`normalized`].
pub fn vary_of(resp: &HeaderMap, req: &HeaderMap) -> Vary {
    super::freshness::vary_names(resp)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .map(|n| {
            let values = normalized(&n, req.get_all(&n).iter());
            (n, values)
        })
        .collect()
}

/// A route's cache.
#[derive(Debug)]
pub struct Store {
    /// Its limits.
    pub settings: Settings,
    inner: Mutex<Inner>,
    metrics: CacheMetrics,
    /// Keys being fetched, each with the signal its fetch ends with (the sender dropped).
    pending: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// Whether a miss fetches the response itself or waits for the fetch already under way.
#[derive(Debug)]
pub enum Fetch {
    /// This request fetches; the others wait until the guard is dropped (once its
    /// response is stored, or known not to be).
    Lead(Pending),
    /// Another request is fetching: wait for it, then look again.
    Follow(watch::Receiver<()>),
}

/// A fetch under way for a key; dropping it wakes the requests waiting for it.
#[derive(Debug)]
pub struct Pending {
    store: Arc<Store>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = self.store.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(&self.key);
    }
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<Arc<str>, Slot>,
    /// Last use → key, oldest first.
    order: BTreeMap<u64, Arc<str>>,
    tick: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Slot {
    used: u64,
    variants: Vec<Arc<Entry>>,
    bytes: u64,
}

impl Store {
    /// An empty cache.
    pub fn new(settings: Settings, metrics: CacheMetrics) -> Self {
        metrics.bytes.set(0);
        Self {
            settings,
            inner: Mutex::default(),
            metrics,
            pending: Mutex::default(),
        }
    }

    /// Leads the fetch of `key`, or follows the one under way (concurrent misses for one
    /// key become one upstream request).
    pub fn fetch(self: &Arc<Self>, key: &str) -> Fetch {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = pending.get(key) {
            return Fetch::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        pending.insert(key.to_owned(), rx);
        Fetch::Lead(Pending {
            store: self.clone(),
            key: key.to_owned(),
            _done: tx,
        })
    }

    /// The route's cache counters.
    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored variant of `key` that matches `req`, marked as just used.
    pub fn get(&self, key: &str, req: &HeaderMap) -> Option<Arc<Entry>> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let slot = inner.keys.get_mut(key)?;
        let found = slot.variants.iter().find(|e| e.matches(req))?.clone();
        inner.tick += 1;
        if let Some(k) = inner.order.remove(&slot.used) {
            inner.order.insert(inner.tick, k);
        }
        slot.used = inner.tick;
        Some(found)
    }

    /// Stores `entry` under `key`, in place of a variant for the same request header
    /// values, then evicts the least recently used keys until the cache fits.
    pub fn insert(&self, key: &str, entry: Entry) {
        let size = entry.size();
        if size > self.settings.max_size {
            return;
        }
        let entry = Arc::new(entry);
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.tick += 1;
        let tick = inner.tick;
        let key: Arc<str> = match inner.keys.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        let slot = inner.keys.entry(key.clone()).or_insert_with(|| Slot {
            used: tick,
            variants: Vec::new(),
            bytes: 0,
        });
        inner.order.remove(&slot.used);
        slot.used = tick;
        inner.order.insert(tick, key.clone());
        if let Some(i) = slot.variants.iter().position(|e| e.vary == entry.vary) {
            let old = slot.variants.remove(i);
            slot.bytes -= old.size();
            inner.bytes -= old.size();
        }
        slot.variants.push(entry);
        slot.bytes += size;
        inner.bytes += size;
        while inner.bytes > self.settings.max_size {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some(gone) = inner.keys.remove(&oldest) {
                inner.bytes -= gone.bytes;
                self.metrics.evictions.inc_by(gone.variants.len() as u64);
            }
        }
        self.metrics.bytes.set(inner.bytes as i64);
    }

    /// Drops every variant of `key` (an unsafe request changed what it names).
    pub fn remove(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(gone) = inner.keys.remove(key) {
            inner.order.remove(&gone.used);
            inner.bytes -= gone.bytes;
            self.metrics.bytes.set(inner.bytes as i64);
        }
    }

    /// Drops every stored response whose path starts with `prefix` (all of them for "");
    /// how many keys went.
    pub fn purge(&self, prefix: &str) -> usize {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let path = |k: &str| k.find('/').map_or("", |i| &k[i..]).to_owned();
        let gone: Vec<Arc<str>> = inner
            .keys
            .keys()
            .filter(|k| path(k).starts_with(prefix))
            .cloned()
            .collect();
        for k in &gone {
            if let Some(slot) = inner.keys.remove(k) {
                inner.order.remove(&slot.used);
                inner.bytes -= slot.bytes;
            }
        }
        self.metrics.bytes.set(inner.bytes as i64);
        gone.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn entry(body: &str, vary: Vary) -> Entry {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
            cc: ResponseDirectives::default(),
            request_time: SystemTime::UNIX_EPOCH,
            response_time: SystemTime::UNIX_EPOCH,
            vary,
        }
    }

    fn store(max: u64) -> Store {
        Store::new(
            Settings {
                max_size: max,
                max_object_size: max,
            },
            crate::metrics::Metrics::new().cache("r"),
        )
    }

    #[test]
    fn least_recently_used_goes_first_and_bytes_stay_bounded() {
        let one = entry(&"x".repeat(1000), Vec::new()).size();
        let s = store(one * 2);
        s.insert("a", entry(&"x".repeat(1000), Vec::new()));
        s.insert("b", entry(&"x".repeat(1000), Vec::new()));
        assert!(s.get("a", &HeaderMap::new()).is_some());
        s.insert("c", entry(&"x".repeat(1000), Vec::new()));
        assert!(
            s.get("b", &HeaderMap::new()).is_none(),
            "b was the least recently used"
        );
        assert!(s.get("a", &HeaderMap::new()).is_some());
        assert!(s.bytes() <= one * 2);
        assert_eq!(s.metrics().evictions.get(), 1);
        // Too big for the whole cache: not stored, nothing evicted.
        s.insert("d", entry(&"x".repeat(5000), Vec::new()));
        assert!(s.get("d", &HeaderMap::new()).is_none());
        assert_eq!(s.purge(""), 2);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn variants_by_the_headers_vary_names() {
        let s = store(1 << 20);
        let lang = HeaderName::from_static("accept-language");
        let v = |l: &str| vec![(lang.clone(), vec![l.to_owned()])];
        s.insert("k", entry("en", v("en")));
        s.insert("k", entry("de", v("de")));
        let mut req = HeaderMap::new();
        req.insert(&lang, "de".parse().unwrap());
        assert_eq!(s.get("k", &req).unwrap().body, "de");
        req.insert(&lang, "fr".parse().unwrap());
        assert!(s.get("k", &req).is_none());
        // Replacing a variant keeps one per value.
        s.insert("k", entry("en2", v("en")));
        req.insert(&lang, "en".parse().unwrap());
        assert_eq!(s.get("k", &req).unwrap().body, "en2");
        // Language tags are case-insensitive; whitespace around commas is not a difference.
        let mut stored = HeaderMap::new();
        stored.insert(header::VARY, "Accept-Language".parse().unwrap());
        stored.insert(&lang, "en-GB, de".parse().unwrap());
        s.insert("l", entry("gb", vary_of(&stored, &stored)));
        req.insert(&lang, " EN-gb ,DE".parse().unwrap());
        assert_eq!(s.get("l", &req).unwrap().body, "gb");
        req.insert(&lang, "de, en-GB".parse().unwrap());
        assert!(s.get("l", &req).is_none(), "order may be a preference");
    }
}
