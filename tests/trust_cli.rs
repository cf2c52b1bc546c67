//! What outside testing found in the CLI, one test per defect and its
//! class: keys in every form a person writes them, output that came from
//! the file or the user, and what the table printer must survive.

mod common;

use common::{assert_one_error_line, chmod_private, cli, run, stdout, tempdir};

fn init(dir: &std::path::Path) {
    let out = run(dir, &["init"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
}

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
    assert!(out.status.success(), "{}", common::stderr(&out));

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
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(stdout(&out).contains(&"x".repeat(70000)));

    let big = format!(r#"{{"note": "{}"}}"#, "y".repeat(130_000));
    let out = run(dir.path(), &["prefs", "set", "alice", &big]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let out = run(
        dir.path(),
        &["sql", "select user_id, document from preferences"],
    );
    assert!(out.status.success(), "{}", common::stderr(&out));

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
