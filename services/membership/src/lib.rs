//! # chatpipe-membership
//!
//! The one membership cache of chatpipe, used by the edge (may this user
//! send here?), fan-out (who receives this?) and the API (which
//! conversations may this user search?).
//!
//! Membership lives in the store; the API writes it there first and then
//! publishes a membership record. Every process that caches membership
//! tails that topic and evicts what a record names as soon as it arrives,
//! so a change takes effect within the tail's latency. The cache's TTL is
//! only a safety net, which is why it can be long (minutes): on the hot path
//! a member's send or a message's fan-out costs no store read.
//!
//! [`InvalidatingCache`] adds the one rule that makes this safe: a read
//! that started before an eviction must not put its stale answer back into
//! the cache after it. Each key hashes to one of a fixed number of
//! generation counters; an eviction bumps the key's counter *before*
//! evicting, a loader reads the counter before reading the store, inserts
//! only if it did not change, and re-checks after inserting (evicting again
//! if it changed in between). Unrelated keys that share a counter only lose
//! a cache fill. Pure and engine-free: the loader is a closure.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use moka::future::Cache;

/// Generation counters per cache (more slots: fewer lost fills).
const GENERATION_SLOTS: usize = 1024;

/// Fixed-size table of generation counters, indexed by a key's hash.
#[derive(Debug)]
struct Generations {
    slots: Box<[AtomicU64]>,
    hasher: RandomState,
}

impl Generations {
    fn new() -> Self {
        Self {
            slots: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    fn slot<K: Hash>(&self, key: &K) -> &AtomicU64 {
        let index = (self.hasher.hash_one(key) as usize) % self.slots.len();
        &self.slots[index]
    }

    fn current<K: Hash>(&self, key: &K) -> u64 {
        self.slot(key).load(Ordering::Acquire)
    }

    fn bump<K: Hash>(&self, key: &K) {
        self.slot(key).fetch_add(1, Ordering::AcqRel);
    }
}

/// Where a [`InvalidatingCache::get_or_load`] answer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// From the cache.
    Hit(V),
    /// From the loader (`None`: the loader found nothing, not cached).
    Loaded(Option<V>),
}

impl<V> Lookup<V> {
    pub fn is_hit(&self) -> bool {
        matches!(self, Lookup::Hit(_))
    }

    pub fn into_value(self) -> Option<V> {
        match self {
            Lookup::Hit(value) => Some(value),
            Lookup::Loaded(value) => value,
        }
    }
}

/// A bounded cache whose entries an eviction reliably removes, even while
/// a load of the same key is in flight (see the crate doc). Cheap to clone
/// (shared state).
#[derive(Clone)]
pub struct InvalidatingCache<K, V> {
    cache: Cache<K, V>,
    generations: Arc<Generations>,
}

impl<K, V> std::fmt::Debug for InvalidatingCache<K, V> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("InvalidatingCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl<K, V> InvalidatingCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Wraps a cache built by the caller (its capacity, weigher and TTL:
    /// every bound is the caller's, and documented there).
    pub fn new(cache: Cache<K, V>) -> Self {
        Self {
            cache,
            generations: Arc::new(Generations::new()),
        }
    }

    /// The cached value, or what `load` finds (cached when it is `Some`).
    pub async fn get_or_load<E, F, Fut>(&self, key: &K, load: F) -> Result<Lookup<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
    {
        if let Some(found) = self.cache.get(key).await {
            return Ok(Lookup::Hit(found));
        }
        let generation = self.generations.current(key);
        let loaded = load().await?;
        if let Some(value) = &loaded
            && self.generations.current(key) == generation
        {
            self.cache.insert(key.clone(), value.clone()).await;
            if self.generations.current(key) != generation {
                self.cache.invalidate(key).await;
            }
        }
        Ok(Lookup::Loaded(loaded))
    }

    /// Evicts `key`; a load of it already in flight will not cache its
    /// answer.
    pub async fn invalidate(&self, key: &K) {
        self.generations.bump(key);
        self.cache.invalidate(key).await;
    }

    /// Evicts `key` and caches `value`, known to be current (e.g. the member
    /// list a `Created` record carries). A load that started earlier cannot
    /// overwrite it.
    pub async fn replace(&self, key: K, value: V) {
        self.generations.bump(&key);
        self.cache.insert(key, value).await;
    }

    /// Entries cached (approximate, as moka counts them).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::oneshot;

    use super::*;

    fn cache() -> InvalidatingCache<&'static str, u32> {
        InvalidatingCache::new(
            Cache::builder()
                .max_capacity(100)
                .time_to_live(Duration::from_secs(600))
                .build(),
        )
    }

    async fn load(value: Option<u32>) -> Result<Option<u32>, ()> {
        Ok(value)
    }

    type Loading = tokio::task::JoinHandle<Result<Lookup<u32>, ()>>;

    /// Starts a load of `"a"` (answering 1) that has read the store and
    /// waits, until the returned sender fires, before it may cache.
    async fn load_held_open(
        cache: &InvalidatingCache<&'static str, u32>,
    ) -> (Loading, oneshot::Sender<()>) {
        let (started_tx, started_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let cache = cache.clone();
        let loading = tokio::spawn(async move {
            cache
                .get_or_load(&"a", || async move {
                    let _ = started_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, ()>(Some(1))
                })
                .await
        });
        started_rx.await.unwrap();
        (loading, release_tx)
    }

    #[tokio::test]
    async fn a_found_value_is_cached_and_a_missing_one_is_not() {
        let cache = cache();
        assert_eq!(
            cache.get_or_load(&"a", || load(Some(1))).await,
            Ok(Lookup::Loaded(Some(1)))
        );
        assert_eq!(
            cache.get_or_load(&"a", || load(Some(2))).await,
            Ok(Lookup::Hit(1))
        );
        assert_eq!(
            cache.get_or_load(&"b", || load(None)).await,
            Ok(Lookup::Loaded(None))
        );
        assert_eq!(
            cache.get_or_load(&"b", || load(Some(3))).await,
            Ok(Lookup::Loaded(Some(3))),
            "the miss was not cached"
        );
        let failed: Result<Lookup<u32>, &str> = cache
            .get_or_load(&"c", || async { Err("store down") })
            .await;
        assert_eq!(failed, Err("store down"));
    }

    #[tokio::test]
    async fn an_eviction_during_a_load_keeps_the_stale_answer_out() {
        let cache = cache();
        // A read of the store that started before the eviction...
        let (loading, release_tx) = load_held_open(&cache).await;
        // ...the membership record evicts while the read is in flight...
        cache.invalidate(&"a").await;
        release_tx.send(()).unwrap();
        // ...the caller still gets what it read, but it is not cached.
        assert_eq!(loading.await.unwrap(), Ok(Lookup::Loaded(Some(1))));
        assert_eq!(
            cache.get_or_load(&"a", || load(Some(2))).await,
            Ok(Lookup::Loaded(Some(2)))
        );
        assert_eq!(
            cache.get_or_load(&"a", || load(Some(3))).await,
            Ok(Lookup::Hit(2))
        );
    }

    #[tokio::test]
    async fn a_replaced_value_wins_over_an_earlier_load() {
        let cache = cache();
        let (loading, release_tx) = load_held_open(&cache).await;
        cache.replace("a", 7).await;
        release_tx.send(()).unwrap();
        loading.await.unwrap().unwrap();
        assert_eq!(
            cache.get_or_load(&"a", || load(Some(2))).await,
            Ok(Lookup::Hit(7))
        );
    }
}
