//! The classroom pair exercise, rehearsed on one machine: `scripts/pair-exercise.sh` puts
//! chatd in one network namespace and a classmate in another, joined by a veth pair, and
//! checks that the classmate can register, send and read messages over it, and that chatd
//! listens only on the interface it was given.
//!
//! Creating namespaces needs root and iproute2; without them the test prints `SKIPPED: ...`
//! and passes.

use std::path::Path;
use std::process::Command;

/// What the script exits with when it cannot run here (the automake convention for "skip").
const SCRIPT_SKIPPED: i32 = 77;

#[test]
fn pair_exercise_over_a_veth_pair() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("not running as root, and creating network namespaces needs root");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        skip("the ip command (iproute2) is not installed");
        return;
    }

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = repo.join("scripts/pair-exercise.sh");
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(repo)
        .env("CHATD_BIN", env!("CARGO_BIN_EXE_chatd"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    if output.status.code() == Some(SCRIPT_SKIPPED) {
        skip(stderr.trim().trim_start_matches("SKIPPED: "));
        return;
    }
    assert!(
        output.status.success(),
        "{} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        script.display(),
        output.status,
    );
    println!("{stdout}");
}

fn skip(reason: &str) {
    eprintln!("SKIPPED: pair_exercise_over_a_veth_pair: {reason}");
}
