//! `statevault check` on a file that other processes are writing and
//! backing up: it judges the file, not the moment, so it never raises a
//! false alarm (an operator's cron check would page people for nothing).

mod common;

use std::process::{Child, Stdio};

use common::{cli, stderr, stdout, tempdir};
use statevault::{Vault, VaultOptions};

/// Kills the writers when the test ends, passed or not.
struct Writers(Vec<Child>);

impl Drop for Writers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A shell loop of `statevault` runs in `dir`, in the background.
fn loop_of(dir: &std::path::Path, times: u32, args: &str) -> Child {
    let bin = env!("CARGO_BIN_EXE_statevault");
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1 {times}); do \"{bin}\" {args} >/dev/null 2>&1; rm -f b$i.db; done"
        ))
        .current_dir(dir)
        .env_remove("STATEVAULT_KEY")
        .env_remove("STATEVAULT_DB")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// 100 checks while two loops of demos write the file (their
/// auto-checkpoints move pages from the WAL into it) and a loop takes
/// backups (each ends by closing its vault: a checkpoint too). Before the
/// fix, `cipher_integrity` failed now and then with "HMAC verification
/// failed for page N": it reads the file's bytes while checkpoints write them.
#[tokio::test]
async fn check_raises_no_false_alarm_beside_writers_and_backups() {
    let dir = tempdir();
    let init = cli(dir.path()).arg("init").output().unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let mut writers = Writers(vec![
        loop_of(dir.path(), 200, "demo --users 10 --requests 1000"),
        loop_of(dir.path(), 200, "demo --users 10 --requests 1000"),
        loop_of(dir.path(), 400, "backup --out b$i.db"),
    ]);
    let db = dir.path().join("statevault.db");
    let options = VaultOptions::new(&db);
    // Start once the demos have written a few MB, and spread the checks
    // over the load (this paces the test; no TTL waits on it).
    let pause = std::time::Duration::from_millis(10);
    while std::fs::metadata(&db).map_or(0, |m| m.len()) < 2 << 20 {
        std::thread::sleep(pause);
    }
    let mut extra_passes = 0;
    for i in 0..100 {
        std::thread::sleep(pause);
        let report = Vault::check_file(&options).await.unwrap();
        assert!(
            report.ok(),
            "check {i} raised an alarm on a healthy file: {report:?}"
        );
        extra_passes += report.checks.iter().map(|c| c.passes - 1).sum::<u32>();
    }
    for child in &mut writers.0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "a writer loop ended early: the load was not there the whole time"
        );
    }
    drop(writers);
    // And the CLI, once the load is gone.
    let out = cli(dir.path()).args(["check"]).output().unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    println!(
        "100 checks beside 2 demo loops and a backup loop: {extra_passes} extra cipher_integrity passes to settle torn reads"
    );
}
