//! What outside testing found in the CLI, one test per defect and its
//! class: keys in every form a person writes them, output that came from
//! the file or the user, and what the table printer must survive.

mod common;

use common::{assert_one_error_line, chmod_private, cli, init, run, stderr, stdout, tempdir};

/// A raw key with multi-byte characters between `x'` and `'`: the parser
/// sliced the text by byte offsets and panicked. Every malformed raw key
/// is one line naming what is wrong.
#[test]
fn malformed_raw_keys_are_errors_not_panics() {
    let dir = tempdir();
    let keys = [
        format!("x'a{}b'", "é".repeat(31)),
        format!("x'{}'", "é".repeat(32)),
        format!("x'{}'", "0".repeat(63)),
        format!("x'{}\u{1}'", "0".repeat(63)),
        "x''".to_owned(),
        format!("X'{}Z'", "f".repeat(63)),
    ];
    for key in keys {
        let out = cli(dir.path())
            .env("STATEVAULT_KEY", &key)
            .args(["--db", "k.db", "init"])
            .output()
            .unwrap();
        let err = assert_one_error_line(&out);
        assert!(err.contains("invalid key"), "{key:?}: {err}");
    }
    assert!(!dir.path().join("k.db").exists(), "nothing was created");
}

/// A key file saved by an editor (byte-order mark, a blank line first,
/// spaces after) still holds the raw key; a key that does not open the file
/// says which form it was read as and where from.
#[test]
fn key_files_are_trimmed_and_a_wrong_key_says_what_was_read() {
    let dir = tempdir();
    init(dir.path());
    let key = common::key_text(&dir.path().join("statevault.db"));
    let edited = dir.path().join("edited.key");
    std::fs::write(&edited, format!("\u{feff}\n{key}  \r\n\n")).unwrap();
    chmod_private(&edited);
    let out = run(dir.path(), &["--key-file", "edited.key", "info"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let other = dir.path().join("other.key");
    std::fs::write(&other, format!("x'{}'\n", "ab".repeat(32))).unwrap();
    chmod_private(&other);
    let err = assert_one_error_line(&run(dir.path(), &["--key-file", "other.key", "info"]));
    assert!(err.contains("the raw key from other.key"), "{err}");

    let out = cli(dir.path())
        .env("STATEVAULT_KEY", "hunter2")
        .arg("info")
        .output()
        .unwrap();
    let err = assert_one_error_line(&out);
    assert!(
        err.contains("passphrase from STATEVAULT_KEY") && !err.contains("hunter2"),
        "{err}"
    );
}

/// `format!`'s width stops at 65535: a wider cell panicked the table
/// printer. Control characters in a cell reach the terminal escaped.
#[test]
fn sql_prints_any_width_and_escapes_control_characters() {
    let dir = tempdir();
    init(dir.path());
    let out = run(
        dir.path(),
        &["sql", "select printf('%.*c', 70000, 'x') as wide"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&"x".repeat(70000)));

    let big = format!(r#"{{"note": "{}"}}"#, "y".repeat(130_000));
    let out = run(dir.path(), &["prefs", "set", "alice", &big]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        dir.path(),
        &["sql", "select user_id, document from preferences"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = run(
        dir.path(),
        &[
            "sql",
            "select 'a' || char(27) || '[31m' || char(10) || 'b' as \"col\u{7}\"",
        ],
    );
    let text = stdout(&out);
    assert!(out.status.success());
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(text.contains(r"a\u{1b}[31m\nb"), "{text}");
}

/// Every command that takes a user or a subject refuses the same ids:
/// `limits status ''`, `limits reset ''` and `cache clear --user ''` exited
/// 0, and `prefs set $'user\x01x'` stored the control character.
#[test]
fn every_command_refuses_the_same_user_ids() {
    let dir = tempdir();
    init(dir.path());
    for bad in ["", "user\u{1}x", "a\nb"] {
        let commands: [&[&str]; 10] = [
            &["limits", "status", bad],
            &["limits", "reset", bad],
            &["cache", "clear", "--user", bad],
            &["prefs", "set", bad, "{}"],
            &["prefs", "get", bad],
            &["session", "list", bad],
            &["session", "revoke", "--user", bad],
            &["user", "export", bad],
            &["user", "erase", bad],
            &["limits", "status", "--json", bad],
        ];
        for args in commands {
            let err = assert_one_error_line(&run(dir.path(), args));
            assert!(err.contains("invalid "), "{args:?}: {err}");
            assert!(!err.contains('\u{1}'), "{args:?}: {err}");
        }
    }
    let out = run(dir.path(), &["sql", "select count(*) from preferences"]);
    assert!(stdout(&out).contains("\n0"), "{}", stdout(&out));
}

/// Text from the file or the command line reaches the terminal escaped,
/// whichever command prints it: `session revoke` and `limits status`
/// echoed a user id's escape sequences raw.
#[test]
fn every_command_escapes_what_it_echoes() {
    let dir = tempdir();
    init(dir.path());
    let raw = common::raw_connection(&dir.path().join("statevault.db"));
    raw.execute(
        "INSERT INTO audit_events (seq, id, occurred_at, user_id, kind, action, details,
                                   gdpr_category, content_digest, chain_digest)
         SELECT 1, 'e', '2026-01-01T00:00:00Z', 'evil' || char(27) || '[2J', 'auth',
                'x' || char(7), '{}', 'necessary', x'00', x'00'",
        [],
    )
    .unwrap();
    drop(raw);
    let id = "\u{1b}[2Jsession";
    let outputs = [
        run(dir.path(), &["session", "revoke", id]),
        run(dir.path(), &["limits", "status", "\u{202e}ok"]),
        run(dir.path(), &["cache", "invalidate", "--tag", "t"]),
        run(dir.path(), &["audit", "tail"]),
    ];
    for out in &outputs {
        let text = stdout(out) + &stderr(out);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
    }
    assert!(
        stdout(&outputs[0]).contains(r"\u{1b}[2Jsession"),
        "{}",
        stdout(&outputs[0])
    );
}

/// `user export --out FILE` kept an existing file's mode (0644 stayed
/// 0644) and wrote through a symlink to its target. It now only creates a
/// new file, mode 0600, and refuses anything already at the path, as
/// `backup --out` does.
#[test]
fn user_export_creates_a_new_private_file_or_refuses() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = tempdir();
    init(dir.path());
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("shared.json"), "old").unwrap();
    std::fs::set_permissions(path("shared.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(path("target.txt"), "keep").unwrap();
    symlink(path("target.txt"), path("link.json")).unwrap();
    symlink(path("nowhere.txt"), path("dangling.json")).unwrap();
    for name in ["shared.json", "link.json", "dangling.json"] {
        let err =
            assert_one_error_line(&run(dir.path(), &["user", "export", "ann", "--out", name]));
        assert!(err.contains("exists already"), "{name}: {err}");
    }
    assert_eq!(std::fs::read_to_string(path("shared.json")).unwrap(), "old");
    assert_eq!(common::file_mode(&path("shared.json")), 0o644);
    assert_eq!(std::fs::read_to_string(path("target.txt")).unwrap(), "keep");
    assert!(!path("nowhere.txt").exists());

    let out = run(dir.path(), &["user", "export", "ann", "--out", "new.json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(common::file_mode(&path("new.json")), 0o600);
    let export: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path("new.json")).unwrap()).unwrap();
    assert_eq!(export["user_id"], "ann");
}

/// A 0-byte file "does not exist" to `info`, yet `init` said "exists,
/// schema up to date" as it made a vault in it.
#[test]
fn an_empty_file_is_called_empty_and_init_says_it_created_the_vault() {
    let dir = tempdir();
    std::fs::write(dir.path().join("statevault.db"), "").unwrap();
    let err = assert_one_error_line(&run(dir.path(), &["info"]));
    assert!(
        err.contains("is empty") && !err.contains("does not exist"),
        "{err}"
    );
    let out = run(dir.path(), &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("created, encrypted"),
        "{}",
        stdout(&out)
    );
    assert!(run(dir.path(), &["info"]).status.success());
}

/// `backup verify` and `restore` of a file that is not there suggested
/// `statevault init`, as if the vault were missing.
#[test]
fn a_missing_backup_is_named_as_the_backup() {
    let dir = tempdir();
    init(dir.path());
    std::fs::write(dir.path().join("empty.db"), "").unwrap();
    for args in [
        &["backup", "verify", "nope.db"][..],
        &["restore", "nope.db"],
        &["backup", "verify", "empty.db"],
        &["restore", "empty.db"],
    ] {
        let err = assert_one_error_line(&run(dir.path(), args));
        assert!(!err.contains("init"), "{args:?}: {err}");
        assert!(err.contains("backup"), "{args:?}: {err}");
    }
}

/// A page-aligned cut said "corrupt".
#[test]
fn a_page_aligned_truncation_says_truncated() {
    let dir = tempdir();
    init(dir.path());
    let db = dir.path().join("statevault.db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 4096 / 2 * 4096)
        .unwrap();
    for args in [&["info"][..], &["sql", "select 1"]] {
        let err = assert_one_error_line(&run(dir.path(), args));
        assert!(err.contains("is truncated"), "{err}");
    }
}

/// `prefs set u 'nojson'` said `invalid preference : the patch is not JSON`.
#[test]
fn a_patch_that_is_not_json_says_so_without_an_empty_field() {
    let dir = tempdir();
    init(dir.path());
    let err = assert_one_error_line(&run(dir.path(), &["prefs", "set", "u", "nojson"]));
    assert!(err.contains("invalid patch: not JSON"), "{err}");
    assert!(!err.contains(" :"), "{err}");
}

/// `sql` is read-only: a write said `(code: 8) attempt to write a readonly
/// database`, `PRAGMA rekey='x'` printed `ok`, and `VACUUM INTO 'f'` left
/// a 0-byte 0644 file. Each is now refused before it runs, saying why.
#[test]
fn sql_refuses_writes_pragmas_and_files_saying_why() {
    let dir = tempdir();
    init(dir.path());
    for sql in [
        "DELETE FROM preferences",
        "delete from preferences",
        "WITH x AS (SELECT 1) DELETE FROM preferences",
        "PRAGMA rekey='x'",
        "pragma main.key = 'x'",
        "PRAGMA hexrekey = '00'",
        "PRAGMA cipher_compatibility = 3",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA journal_mode(DELETE)",
        "PRAGMA user_version = 7",
        "PRAGMA wal_checkpoint",
        "PRAGMA optimize",
        "VACUUM INTO 'f.db'",
        "vacuum",
        "ATTACH 'other.db' AS o",
        "SELECT 1; PRAGMA rekey = 'x'",
        "EXPLAIN PRAGMA rekey = 'x'",
        "/* hi */ PRAGMA rekey='x'",
    ] {
        let out = run(dir.path(), &["sql", sql]);
        let err = assert_one_error_line(&out);
        assert!(err.contains("read-only"), "{sql}: {err}");
        assert!(!err.contains("code:"), "{sql}: {err}");
    }
    for file in ["f.db", "other.db"] {
        assert!(!dir.path().join(file).exists(), "{file} was created");
    }
    for sql in [
        "SELECT count(*) FROM preferences",
        "  select 1 -- a comment; with a semicolon",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "PRAGMA table_info(preferences)",
        "PRAGMA main.page_count",
        "PRAGMA journal_mode",
        "PRAGMA integrity_check",
        "EXPLAIN QUERY PLAN SELECT * FROM sessions",
        "VALUES (1), (2)",
        "SELECT 1;",
    ] {
        let out = run(dir.path(), &["sql", sql]);
        assert!(out.status.success(), "{sql}: {}", stderr(&out));
    }
    assert!(run(dir.path(), &["check"]).status.success());
}

/// `init --key-file new.key` failed on a new vault ("No such file"),
/// though `init` creates the key file: it now makes it there, mode 0600.
#[test]
fn init_creates_the_key_file_it_is_given() {
    let dir = tempdir();
    let out = run(
        dir.path(),
        &["--db", "n.db", "--key-file", "new.key", "init"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("key in new.key"), "{}", stdout(&out));
    assert_eq!(common::file_mode(&dir.path().join("new.key")), 0o600);
    assert!(!dir.path().join("n.db.key").exists());
    let out = run(
        dir.path(),
        &["--db", "n.db", "--key-file", "new.key", "info"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // An existing vault is never given a new key file.
    let err = assert_one_error_line(&run(
        dir.path(),
        &["--db", "n.db", "--key-file", "other.key", "init"],
    ));
    assert!(err.contains("other.key"), "{err}");
    assert!(!dir.path().join("other.key").exists());
}

/// Read commands that used the read-only pool left 0-byte `-wal` and
/// 32 KiB `-shm` files behind (the last connection to close was a
/// read-only one, which cannot remove them).
#[test]
fn read_commands_leave_no_wal_or_shm_behind() {
    let dir = tempdir();
    init(dir.path());
    let commands: [&[&str]; 8] = [
        &["info"],
        &["sql", "select 1"],
        &["audit", "tail"],
        &["audit", "verify"],
        &["cache", "stats"],
        &["metrics"],
        &["check"],
        &["session", "list", "u"],
    ];
    for args in commands {
        let out = run(dir.path(), args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        for suffix in ["-wal", "-shm"] {
            let file = dir.path().join(format!("statevault.db{suffix}"));
            assert!(!file.exists(), "{args:?} left {}", file.display());
        }
    }
}

/// `statevault info | head -1` panicked ("failed printing to stdout:
/// Broken pipe") with a backtrace. A reader that goes away ends the
/// command quietly, the vault closed.
#[test]
fn a_closed_stdout_is_no_panic() {
    let dir = tempdir();
    init(dir.path());
    for args in [
        &[
            "sql",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000) SELECT x FROM c",
        ][..],
        &[
            "sql",
            "--json",
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200000) SELECT x FROM c",
        ],
        &["info"],
        &["demo", "--users", "3", "--requests", "50"],
    ] {
        let mut child = cli(dir.path())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
        assert_ne!(out.status.code(), Some(101), "{args:?}");
    }
    for suffix in ["-wal", "-shm"] {
        assert!(!dir.path().join(format!("statevault.db{suffix}")).exists());
    }
}

/// Makes `dir` one the CLI may read but not write: as the user this runs
/// as, or, when that is root (whom permissions do not stop), as `nobody`
/// through `setpriv`. `None` when that cannot be arranged; else how to run
/// the CLI there.
fn reader_of(dir: &std::path::Path) -> Option<ReadOnlyCli<'_>> {
    use std::os::unix::fs::PermissionsExt;
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        common::tool("setpriv")?;
        let owned = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !owned {
            return None;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    Some(ReadOnlyCli { dir, root })
}

/// The CLI run by a user who cannot write `dir`.
struct ReadOnlyCli<'a> {
    dir: &'a std::path::Path,
    root: bool,
}

impl ReadOnlyCli<'_> {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = if self.root {
            let mut cmd = std::process::Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_statevault"));
            cmd
        } else {
            std::process::Command::new(env!("CARGO_BIN_EXE_statevault"))
        };
        cmd.current_dir(self.dir)
            .env_remove("STATEVAULT_KEY")
            .env_remove("STATEVAULT_DB")
            .args(args)
            .output()
            .unwrap()
    }
}

/// In a directory the user cannot write, every read command failed with
/// "attempt to write a readonly database", naming no file: SQLite could
/// not create the -wal and -shm files. Reads now open the file read-only
/// as it is; a write names the file and why it cannot be written.
#[test]
fn a_read_only_directory_still_reads_and_a_write_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempdir();
    let vault = dir.path().join("v");
    std::fs::create_dir(&vault).unwrap();
    init(&vault);
    assert!(
        run(&vault, &["prefs", "set", "ann", r#"{"theme": "dark"}"#])
            .status
            .success()
    );
    let Some(reader) = reader_of(&vault) else {
        return;
    };
    let reads: [&[&str]; 7] = [
        &["info"],
        &["sql", "select document from preferences"],
        &["prefs", "get", "ann"],
        &["audit", "verify"],
        &["session", "list", "ann"],
        &["limits", "status", "ann"],
        &["check"],
    ];
    for args in reads {
        let out = reader.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    }
    assert!(stdout(&reader.run(&["prefs", "get", "ann"])).contains("dark"));
    let err = assert_one_error_line(&reader.run(&["prefs", "set", "ann", "{}"]));
    assert!(
        err.contains("statevault.db") && err.contains("read-only"),
        "{err}"
    );
    std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o755)).unwrap();
    let names: Vec<_> = std::fs::read_dir(&vault)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
