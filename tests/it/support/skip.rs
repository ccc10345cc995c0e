//! A test that cannot run here says so one way: a `SKIPPED` line on
//! stderr and a line in `target/tmp/skipped-tests.txt`, which `make
//! test-rust` prints after the suite, so that a skip never passes as a run.
//! In CI (`CI` set) a missing tool fails the test instead.

use std::io::Write as _;

/// Where each skip is written (the file `make test-rust` prints).
const SKIPPED: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt");

/// Records that the running test stops here, and why.
pub fn skip(why: &str) {
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map_or_else(|| "a test".to_owned(), str::to_owned);
    eprintln!("SKIPPED {test}: {why}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(SKIPPED)
    {
        let _ = writeln!(f, "{test}: {why}");
    }
}

/// Whether `what`, which the test needs, is here: when it is not, the
/// test is skipped (and fails in CI, which installs everything).
pub fn needs(what: &str, found: bool, install: &str) -> bool {
    if found {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is required in CI: {install}"
    );
    skip(&format!("{what} is missing ({install})"));
    false
}

/// The test virtualenv's `bin/<tool>` (moto_server, python), when it is
/// installed; otherwise the test is skipped (a failure in CI).
pub fn venv_tool(tool: &str) -> Option<String> {
    let path = format!("{}/.venv/bin/{tool}", env!("CARGO_MANIFEST_DIR"));
    needs(
        &format!(".venv/bin/{tool}"),
        std::path::Path::new(&path).exists(),
        "`make .venv/bin/moto_server` installs tests/requirements.txt into .venv",
    )
    .then_some(path)
}

/// Whether `redis-server` can be started here.
pub fn redis_server() -> bool {
    needs(
        "redis-server",
        std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok(),
        "apt-get install redis-server; .ci/run installs it",
    )
}
