//! `slatedb-operator wait`, as an application's init container runs it, on a `file://` store (no
//! cluster involved): it waits out a path with no database and a clone that is not initialized yet,
//! returns 0 once the database is there, and fails with its own exit code on timeout and bad input.

use serde_json::Value;
use slatedb_operator::engine::{Database, Store, StoreConfig, CRASH_POINT_ENV, FAULTS_ENV};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_slatedb-operator");

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .args(["--output", "json"])
        .env_remove("RUST_LOG")
        .env_remove(CRASH_POINT_ENV)
        .env_remove(FAULTS_ENV);
    command
}

/// The exit code and the one JSON line a command printed.
fn report(output: &Output) -> (i32, Value) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no output; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    (output.status.code().unwrap_or(-1), value)
}

fn wait_args<'a>(store: &'a str, path: &'a str, timeout: &'a str) -> Vec<&'a str> {
    vec![
        "wait",
        "--store",
        store,
        "--path",
        path,
        "--timeout",
        timeout,
    ]
}

/// Starts a `wait` in the background, its output piped.
fn spawn_wait(store: &str, path: &str, timeout: &str) -> Child {
    command(&wait_args(store, path, timeout))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Asserts that the background `wait` is still running after `delay`.
fn assert_still_waiting(child: &mut Child, delay: Duration) {
    std::thread::sleep(delay);
    assert!(
        child.try_wait().unwrap().is_none(),
        "wait returned before the database was ready"
    );
}

fn sample(store: &str, path: &str) {
    let output = command(&["sample", "--store", store, "--path", path, "--keys", "300"])
        .output()
        .unwrap();
    assert_eq!(report(&output).0, 0, "{:?}", report(&output).1);
}

#[test]
fn wait_times_out_on_an_empty_path_and_returns_once_a_database_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());

    let started = Instant::now();
    let output = command(&wait_args(&store, "apps/orders", "2s"))
        .output()
        .unwrap();
    let (code, line) = report(&output);
    assert_eq!(code, 75, "a timeout is transient (EX_TEMPFAIL): {line}");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(line["error"]["reason"], "NotReadyInTime");
    let message = line["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"apps/orders\"") && message.contains("no manifest found"),
        "{message}"
    );

    // A database written while it waits: 0, and it says how long it waited.
    let mut child = spawn_wait(&store, "apps/orders", "60s");
    assert_still_waiting(&mut child, Duration::from_secs(3));
    sample(&store, "apps/orders");
    let (code, line) = report(&child.wait_with_output().unwrap());
    assert_eq!(code, 0, "{line}");
    assert_eq!(line["result"]["initialized"], true);
    assert_eq!(line["result"]["path"], "apps/orders");
    assert!(
        line["result"]["waitedSeconds"].as_f64().unwrap() >= 3.0,
        "{line}"
    );
}

#[test]
fn wait_waits_for_an_unfinished_clone_to_be_initialized() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    sample(&store, "prod");
    let clone_args = [
        "clone", "--store", &store, "--source", "prod", "--target", "pr-1",
    ];
    // The clone stops once its manifest is written and before it is marked initialized (slow
    // requests let the clone's progress see the first manifest before the last).
    let crashed = command(&clone_args)
        .env(CRASH_POINT_ENV, "clone-WriteManifest")
        .env(FAULTS_ENV, "latency=100ms")
        .output()
        .unwrap();
    assert_eq!(crashed.status.code(), Some(86), "{crashed:?}");
    let config = StoreConfig::with_options(&store, &[]);
    let target = Database::new(
        Store::open(&config).unwrap(),
        "pr-1",
        Duration::from_secs(10),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let description = runtime.block_on(target.describe()).unwrap();
    assert!(
        !description.initialized,
        "the interrupted clone is already initialized: nothing to wait for"
    );

    let (code, line) = report(&command(&wait_args(&store, "pr-1", "2s")).output().unwrap());
    assert_eq!(code, 75, "{line}");
    let message = line["error"]["message"].as_str().unwrap();
    assert!(message.contains("not initialized"), "{message}");

    let mut child = spawn_wait(&store, "pr-1", "60s");
    assert_still_waiting(&mut child, Duration::from_secs(2));
    let resumed = command(&clone_args).output().unwrap();
    assert_eq!(report(&resumed).0, 0, "{:?}", report(&resumed).1);
    let (code, line) = report(&child.wait_with_output().unwrap());
    assert_eq!(code, 0, "{line}");
    assert_eq!(line["result"]["initialized"], true);
}

#[test]
fn wait_refuses_bad_input_at_once() {
    let started = Instant::now();
    let (code, line) = report(
        &command(&wait_args("ftp://host/x", "db", "1m"))
            .output()
            .unwrap(),
    );
    assert_eq!(code, 3, "a bad URL is permanent: {line}");
    assert_eq!(line["error"]["reason"], "InvalidStoreUrl");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a bad URL was waited on"
    );
    for args in [
        wait_args("file:///tmp", "db", "5 minutes"),
        vec!["wait", "--store", "file:///tmp"],
    ] {
        let output = command(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
}
