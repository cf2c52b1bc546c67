//! What the criterion benches share.

use std::path::Path;

use statevault::default_key_file;

/// A rusqlite connection to the vault at `path`, keyed from its key file and
/// set up as the vault sets up its own: WAL, `synchronous = NORMAL`, a
/// 64 MiB page cache. The physical limit each bench compares with.
pub fn raw(path: &Path) -> rusqlite::Connection {
    let key = std::fs::read_to_string(default_key_file(path)).unwrap();
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA key = \"{}\"; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536;",
        key.trim()
    ))
    .unwrap();
    conn
}
