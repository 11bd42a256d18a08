//! The local commands of the CLI on a `file://` store (no cluster involved).

use serde_json::Value;
use std::process::Command;

struct Cli {
    store: String,
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        Cli {
            store: format!("file://{}", dir.path().display()),
            dir,
        }
    }

    /// Runs a command with `--output json`; returns the exit code and the JSON lines printed.
    fn run(&self, args: &[&str]) -> (i32, Vec<Value>) {
        let output = Command::new(env!("CARGO_BIN_EXE_slatedb-operator"))
            .args(args)
            .args(["--output", "json"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let lines = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (output.status.code().unwrap_or(-1), lines)
    }

    fn ok(&self, args: &[&str]) -> Value {
        let (code, lines) = self.run(args);
        assert_eq!(code, 0, "{args:?}: {lines:?}");
        lines.last().unwrap()["result"].clone()
    }
}

#[test]
fn checkpoint_clone_and_verify_commands_work_on_a_file_store() {
    let cli = Cli::new();
    let s = cli.store.as_str();
    cli.ok(&[
        "sample", "--store", s, "--path", "prod", "--keys", "1500", "--ssts", "3",
    ]);

    let created = cli.ok(&[
        "checkpoint",
        "create",
        "--store",
        s,
        "--path",
        "prod",
        "--name",
        "nightly",
        "--lifetime",
        "1h",
    ]);
    assert_eq!(created["obtained"], "Created");
    assert!(created["expireTime"].is_string());
    let again = cli.ok(&[
        "checkpoint",
        "create",
        "--store",
        s,
        "--path",
        "prod",
        "--name",
        "nightly",
    ]);
    assert_eq!(
        again["id"], created["id"],
        "a second create of the same name returns the first"
    );
    let listed = cli.ok(&["checkpoint", "list", "--store", s, "--path", "prod"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let id = created["id"].as_str().unwrap();

    let (code, lines) = cli.run(&[
        "clone",
        "--store",
        s,
        "--source",
        "prod",
        "--checkpoint",
        id,
        "--target",
        "pr-1",
        "--verify",
        "content",
    ]);
    assert_eq!(code, 0, "{lines:?}");
    let percents: Vec<u64> = lines
        .iter()
        .filter_map(|l| l["progress"]["percent"].as_u64())
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]) && percents.last() == Some(&100),
        "{percents:?}"
    );
    let report = &lines.last().unwrap()["result"];
    assert_eq!(report["sourceCheckpointId"], id);
    assert!(report["contentRoot"].is_string());

    let verified = cli.ok(&["verify", "--store", s, "--path", "pr-1", "--content"]);
    assert_eq!(verified["contentRoot"], report["contentRoot"]);
    assert!(verified["blocksChecked"].as_u64().unwrap() > 0);

    // A flipped byte in a parent SST: content verification of the clone fails with its own code.
    let sst_dir = cli.dir.path().join("prod/compacted");
    let victim = std::fs::read_dir(&sst_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[25] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let (code, lines) = cli.run(&["verify", "--store", s, "--path", "pr-1", "--content"]);
    assert_eq!(code, 4, "{lines:?}");
    let message = lines[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&victim.file_name().unwrap().to_string_lossy().to_string()),
        "{message}"
    );

    let deleted = cli.ok(&[
        "checkpoint",
        "delete",
        "--store",
        s,
        "--path",
        "prod",
        "--id",
        id,
    ]);
    assert_eq!(deleted["deleted"], true);
}

#[test]
fn failures_have_documented_exit_codes() {
    let cli = Cli::new();
    let (code, lines) = cli.run(&["verify", "--store", &cli.store, "--path", "missing"]);
    assert_eq!(code, 3, "not a database is permanent: {lines:?}");
    assert_eq!(lines[0]["error"]["reason"], "NotADatabase");
    let (code, _) = cli.run(&["checkpoint", "list", "--store", "ftp://nope", "--path", "x"]);
    assert_eq!(code, 3, "a bad URL is permanent");
    let (code, _) = cli.run(&["clone", "--store", &cli.store, "--target", "x"]);
    assert_eq!(code, 2, "a missing argument is a usage error");
}
