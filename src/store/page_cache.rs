//! One page cache budget for all of a vault's connections, and how it is
//! split between them.
//!
//! SQLite gives each connection its own page cache, and each fills with the
//! pages that connection reads, up to its limit: a limit sized for the whole
//! working set on every connection holds that set once per connection, and
//! a vault opens up to `2 × readers + 2` of them. So the vault has one
//! budget ([`crate::VaultOptions::page_cache_budget`]), split by how much
//! each kind of connection gains from a warm cache. SQLCipher decrypts and
//! checks every page it reads from the OS, so a page found in the cache
//! saves that work:
//! - the hot readers, half between those open: every request's point
//!   lookups. Readers open only under contention, so one caller's lookups
//!   get the whole half; as more open, each one's cache shrinks to its
//!   share ([`PageCache::hot_reader_kib`]);
//! - the hot writer, a quarter: the writes a request waits on (session
//!   creates, revokes, limit checks) walk the b-trees they change, at
//!   random places in the token and user indexes;
//! - the writer, an eighth: its batched flushes mostly append (audit,
//!   metrics, the change feed) or touch rows the readers just read;
//! - the sqlx readers, an eighth between them: occasional scans, which
//!   mostly read what the others have just read (and the OS keeps the
//!   file's pages too).
//!
//! A cache only grows as pages are read, so a budget larger than the file
//! costs no more than the file.

/// What a connection is for, which decides its share of the page cache
/// budget (see [`PageCache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The sqlx writer: every batched flush, migration and sweep.
    Writer,
    /// A rusqlite writer for the short writes a request waits on.
    HotWriter,
    /// One of the hot-path rusqlite readers.
    HotReader,
    /// One of the sqlx readers (scans, admin queries).
    Reader,
    /// A short-lived connection: a backup's, a restore's.
    Other,
}

/// The page caches of all of a vault's connections, as one budget (see
/// the module docs for the split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageCache {
    /// The whole vault's budget, in bytes.
    pub(crate) budget: u64,
    /// How many hot readers (and sqlx readers) share their part.
    pub(crate) readers: usize,
}

/// The smallest page cache a connection gets, in KiB: a few pages of each
/// b-tree level, whatever the budget.
const MIN_CACHE_KIB: u64 = 64;

impl PageCache {
    /// The page cache of one connection of kind `role`, in KiB (for a hot
    /// reader: the first one's).
    pub(crate) fn kib(self, role: Role) -> u64 {
        let readers = u64::try_from(self.readers.max(1)).unwrap_or(u64::MAX);
        let share = match role {
            Role::HotWriter => self.budget / 4,
            Role::HotReader => return self.hot_reader_kib(1),
            Role::Writer | Role::Other => self.budget / 8,
            Role::Reader => self.budget / 8 / readers,
        };
        (share / 1024).max(MIN_CACHE_KIB)
    }

    /// The page cache of each hot reader while `open` of them are open, in
    /// KiB.
    pub(crate) fn hot_reader_kib(self, open: usize) -> u64 {
        let open = u64::try_from(open.max(1)).unwrap_or(u64::MAX);
        (self.budget / 2 / open / 1024).max(MIN_CACHE_KIB)
    }
}

#[cfg(test)]
mod tests {
    use super::{PageCache, Role};

    #[test]
    fn the_split_stays_within_the_budget() {
        let cache = PageCache {
            budget: 32 << 20,
            readers: 4,
        };
        assert_eq!(cache.kib(Role::Writer), 4 << 10);
        assert_eq!(cache.kib(Role::HotReader), 16 << 10);
        assert_eq!(cache.hot_reader_kib(4), 4 << 10);
        assert_eq!(cache.kib(Role::HotWriter), 8 << 10);
        assert_eq!(cache.kib(Role::Reader), 1 << 10);
        for open in 1..=4 {
            let all = cache.kib(Role::Writer)
                + cache.kib(Role::HotWriter)
                + open as u64 * cache.hot_reader_kib(open)
                + 4 * cache.kib(Role::Reader);
            // within the budget, give or take the rounding of each share
            assert!(all <= 32 << 10 && all + 4 > 32 << 10, "{open}: {all}");
        }
    }

    #[test]
    fn every_connection_keeps_a_floor() {
        let cache = PageCache {
            budget: 1 << 20,
            readers: 64,
        };
        assert_eq!(cache.kib(Role::Reader), 64);
        assert_eq!(cache.kib(Role::HotWriter), 256);
    }

    /// Each kind of connection a store opens has its share, as
    /// `PRAGMA cache_size` (negative: KiB) shows.
    #[tokio::test]
    async fn each_connection_gets_its_share() {
        use crate::key::KeySource;
        use crate::store::{OpenSpec, Store, Synchronous};

        let dir = tempfile::tempdir().unwrap();
        let budget = 16 << 20;
        let store = Store::open(OpenSpec {
            path: &dir.path().join("v.db"),
            key: &KeySource::None,
            create_if_missing: true,
            synchronous: Synchronous::Normal,
            page_cache_budget: budget,
            busy_timeout: std::time::Duration::from_secs(5),
            readers: 2,
        })
        .await
        .unwrap();
        let cache = PageCache { budget, readers: 2 };
        let want = |role| -i64::try_from(cache.kib(role)).unwrap();
        let pragma = "PRAGMA cache_size";
        let size = |c: &rusqlite::Connection| c.query_row(pragma, [], |r| r.get::<_, i64>(0));
        assert_eq!(store.read_here(size).unwrap(), want(Role::HotReader));
        let hot_writer = store.write_here(|c| Ok(size(c)?)).await.unwrap();
        assert_eq!(hot_writer, want(Role::HotWriter));
        let sqlx_size =
            async |pool| -> i64 { sqlx::query_scalar(pragma).fetch_one(pool).await.unwrap() };
        assert_eq!(sqlx_size(store.sqlx_writer()).await, want(Role::Writer));
        assert_eq!(sqlx_size(store.sqlx_reader()).await, want(Role::Reader));
        store.close().await;
    }
}
