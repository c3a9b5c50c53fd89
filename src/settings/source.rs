//! Where settings come from: the file (resolved at start) or an HTTP endpoint whose answers are
//! cached with a TTL in a cache with a bounded number of entries.
//!
//! Invariant: the cache never holds more than `settings_cache_entries_max` users nor more than
//! `settings_cache_bytes_max` of their settings (each entry weighs its JSON size plus a fixed
//! overhead, and at least `bytes_max / entries_max`), and an entry older than the TTL is never
//! used (it is fetched again).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{SettingsFile, UserSettings};
use crate::id::Id;

/// The configured settings source.
pub enum SettingsSource {
    /// The `file` source (or the defaults for everyone), resolved at start.
    File(SettingsFile),
    /// The `http` source (`settings_url`), fetched through egress and cached.
    Http(Arc<HttpSettings>),
}

impl SettingsSource {
    /// The user's settings if known without I/O: always for the file, on a fresh cache hit for
    /// HTTP (`None`: fetch them through egress).
    pub fn cached(&self, uid: &Id) -> Option<Arc<UserSettings>> {
        match self {
            SettingsSource::File(file) => Some(file.lookup(uid.as_str())),
            SettingsSource::Http(http) => http.cached(uid, Instant::now()),
        }
    }

    /// True when some user may be at level `enhanced` (so the encryption secret is needed):
    /// known from the file, always assumed for HTTP.
    pub fn may_encrypt(&self) -> bool {
        match self {
            SettingsSource::File(file) => file.may_encrypt(),
            SettingsSource::Http(_) => true,
        }
    }

    /// The `http` source's cache, when that is the source.
    pub fn http(&self) -> Option<&Arc<HttpSettings>> {
        match self {
            SettingsSource::File(_) => None,
            SettingsSource::Http(http) => Some(http),
        }
    }
}

/// Bytes an entry weighs beyond its JSON: the parsed settings' allocations and the cache slot.
const ENTRY_OVERHEAD_BYTES: u64 = 512;

/// A cached user's settings: when fetched, and what the entry weighs.
#[derive(Clone)]
struct Entry {
    settings: Arc<UserSettings>,
    fetched: Instant,
    weight: u64,
}

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<Id, Entry> for ByWeight {
    fn weight(&self, _uid: &Id, entry: &Entry) -> u64 {
        entry.weight
    }
}

/// The `http` source: `GET {base}/{uid}`, answers cached.
pub struct HttpSettings {
    base: String,
    ttl: Duration,
    weight_min: u64,
    cache: quick_cache::sync::Cache<Id, Entry, ByWeight>,
}

impl HttpSettings {
    /// A source fetching `{base}/{uid}` (a trailing `/` of `base` dropped) whose answers are used
    /// for `ttl`; the cache holds at most `bytes_max` bytes and, since every entry weighs at least
    /// `bytes_max / entries_max`, at most `entries_max` users.
    pub fn new(base: &str, ttl: Duration, entries_max: usize, bytes_max: u64) -> HttpSettings {
        let weight_min = (bytes_max / entries_max.max(1) as u64).max(1);
        HttpSettings {
            base: base.trim_end_matches('/').to_owned(),
            ttl,
            weight_min,
            cache: quick_cache::sync::Cache::with_weighter(entries_max, bytes_max, ByWeight),
        }
    }

    /// The URL of `uid`'s settings.
    pub fn url(&self, uid: &Id) -> String {
        format!("{}/{}", self.base, uid.as_str())
    }

    /// `uid`'s cached settings if they were fetched less than the TTL before `now`.
    pub fn cached(&self, uid: &Id, now: Instant) -> Option<Arc<UserSettings>> {
        let entry = self.cache.get(uid)?;
        (now.saturating_duration_since(entry.fetched) < self.ttl).then_some(entry.settings)
    }

    /// Caches `settings`, parsed from `json_bytes` of JSON, fetched at `fetched`.
    pub fn insert(
        &self,
        uid: Id,
        settings: Arc<UserSettings>,
        json_bytes: usize,
        fetched: Instant,
    ) {
        let weight = (json_bytes as u64 + ENTRY_OVERHEAD_BYTES).max(self.weight_min);
        let entry = Entry {
            settings,
            fetched,
            weight,
        };
        self.cache.insert(uid, entry);
    }

    /// Bytes the cached entries weigh.
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }

    /// Users cached.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// True when no user is cached.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> Id {
        Id::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let http = HttpSettings::new("http://h/settings/", Duration::from_secs(60), 10, 1 << 20);
        assert_eq!(http.url(&id("u1")), "http://h/settings/u1");
        let start = Instant::now();
        assert!(http.cached(&id("u1"), start).is_none());
        http.insert(id("u1"), Arc::new(UserSettings::default()), 100, start);
        assert!(
            http.cached(&id("u1"), start + Duration::from_secs(59))
                .is_some()
        );
        assert!(
            http.cached(&id("u1"), start + Duration::from_secs(60))
                .is_none()
        );
    }

    #[test]
    fn the_cache_stays_within_its_entry_and_byte_bounds() {
        let http = HttpSettings::new("http://h", Duration::from_secs(60), 8, 64 * 1024);
        let now = Instant::now();
        for i in 0..1000 {
            http.insert(
                id(&format!("u{i}")),
                Arc::new(UserSettings::default()),
                10,
                now,
            );
        }
        assert!(http.len() <= 8, "{} entries", http.len());
        for i in 0..1000 {
            http.insert(
                id(&format!("big{i}")),
                Arc::new(UserSettings::default()),
                20_000,
                now,
            );
        }
        assert!(http.weight() <= 64 * 1024, "{} bytes", http.weight());
        assert!(http.len() <= 3, "{} entries", http.len());
    }
}
