//! `kubectl slatedb …` run through the real kubectl, which finds the binary on PATH as
//! `kubectl-slatedb`: `tree` shows the lineage of a schedule with two clones and a clone of a clone,
//! as text and as JSON; `reset` changes a clone's token and the clone is Ready again with it.

use crate::clones::{create, wait_clone, PARENT};
use crate::support::{
    describe, eventually, write_sample_db, Operator, StoreKind, TestEnv, TestStore,
};
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseClone, SCHEDULE_LABEL};
use std::process::{Command, Output};
use std::time::Duration;

/// kubectl with a PATH on which the operator's binary is the plugin `kubectl-slatedb`.
struct Kubectl {
    plugins: tempfile::TempDir,
}

impl Kubectl {
    fn with_plugin() -> Kubectl {
        let plugins = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_slatedb-operator"),
            plugins.path().join("kubectl-slatedb"),
        )
        .unwrap();
        Kubectl { plugins }
    }

    /// `kubectl slatedb <args>`.
    fn slatedb(&self, args: &[&str]) -> Output {
        let kubectl =
            std::env::var("E2E_KUBECTL").expect("E2E_KUBECTL (run under e2e/run-tests.sh)");
        let path = format!(
            "{}:{}",
            self.plugins.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new(kubectl)
            .arg("slatedb")
            .args(args)
            .env("PATH", path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    /// `kubectl slatedb <args>`, which must succeed; its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.slatedb(args);
        assert!(
            output.status.success(),
            "{}",
            describe(&format!("kubectl slatedb {args:?}"), &output)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `kubectl slatedb <args> -o json`: its one JSON line's `result`.
    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(&[args, &["-o", "json"]].concat());
        let line: Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("not one JSON line ({e}): {text}"));
        line["result"].clone()
    }
}

/// The text tree as (depth, `kind/name`) per line: the depth from where the name starts (three
/// columns per level), the name the line's first word.
fn tree_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .map(|line| {
            let start = line
                .find("db")
                .unwrap_or_else(|| panic!("no object on {line:?}"));
            let depth = line[..start].chars().count() / 3;
            let name = line[start..].split_whitespace().next().unwrap().to_string();
            (depth, name)
        })
        .collect()
}

/// The line above `name` one level up: its parent in the tree.
fn parent_of<'a>(lines: &'a [(usize, String)], name: &str) -> &'a str {
    let at = lines
        .iter()
        .position(|(_, n)| n == name)
        .unwrap_or_else(|| panic!("{name} is not in the tree {lines:?}"));
    let depth = lines[at].0;
    assert!(depth > 0, "{name} is a root: {lines:?}");
    lines[..at]
        .iter()
        .rev()
        .find(|(d, _)| *d == depth - 1)
        .map(|(_, n)| n.as_str())
        .unwrap()
}

/// The node of `kind` named `name` anywhere under `nodes`.
fn find_node<'a>(nodes: &'a Value, kind: &str, name: &str) -> Option<&'a Value> {
    nodes.as_array()?.iter().find_map(|node| {
        if node["kind"] == kind && node["name"] == name {
            Some(node)
        } else {
            find_node(&node["children"], kind, name)
        }
    })
}

fn child_names(node: &Value) -> Vec<String> {
    node["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

async fn source_checkpoint(env: &TestEnv, clone: &str) -> String {
    let object = env.api::<DatabaseClone>().get(clone).await.unwrap();
    object.status.unwrap().source_checkpoint.unwrap()
}

/// Waits until clone `name` is Ready for its current generation with `token` as its reset token.
async fn wait_reset(env: &TestEnv, name: &str, token: &str) {
    eventually(
        Duration::from_secs(90),
        &format!("{name} Ready again after its reset to {token:?}"),
        || async {
            let clone = env.api::<DatabaseClone>().get(name).await.ok()?;
            let status = clone.status.as_ref()?;
            let ready = status.conditions.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "True"
                    && c.observed_generation == clone.metadata.generation
            });
            (ready
                && status.reset_token.as_deref() == Some(token)
                && status.observed_generation == clone.metadata.generation)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn kubectl_slatedb_tree_shows_the_lineage_and_reset_renews_a_clone() {
    let env = TestEnv::new("plugin").await;
    let ns = env.namespace.clone();
    let store = TestStore::new(StoreKind::File, &ns);
    write_sample_db(&store, PARENT, 300, 1).await;
    let _operator = Operator::start(&ns, &[]);
    let kubectl = Kubectl::with_plugin();

    // A schedule; once it has a Ready checkpoint it is suspended, so the tree holds still.
    create(
        &env,
        "DatabaseCheckpointSchedule",
        "nightly",
        json!({"schedule": "@every 10s",
               "checkpointTemplate": {"spec": {"database": {"store": store.store_spec(), "path": PARENT}}}}),
    )
    .await;
    eventually(
        Duration::from_secs(40),
        "a Ready scheduled checkpoint",
        || async {
            let list = env
                .api::<DatabaseCheckpoint>()
                .list(
                    &kube::api::ListParams::default().labels(&format!("{SCHEDULE_LABEL}=nightly")),
                )
                .await
                .ok()?;
            list.items
                .iter()
                .any(|c| {
                    c.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .then_some(())
        },
    )
    .await;
    env.api::<slatedb_operator::api::DatabaseCheckpointSchedule>()
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();

    // Two clones of the schedule's newest checkpoint, and a clone of the first one's latest state.
    for pr in ["pr-1", "pr-2"] {
        create(
            &env,
            "DatabaseClone",
            pr,
            json!({"source": {"scheduleRef": {"name": "nightly"}}, "target": {"path": format!("clones/{pr}")},
                   "expireAfter": "24h", "expirationPolicy": "ExpireData"}),
        )
        .await;
    }
    for pr in ["pr-1", "pr-2"] {
        wait_clone(&env, pr, "Ready", Duration::from_secs(90)).await;
    }
    create(
        &env,
        "DatabaseClone",
        "pr-1-debug",
        json!({"source": {"database": {"store": store.store_spec(), "path": "clones/pr-1"}},
               "target": {"path": "clones/pr-1-debug"}}),
    )
    .await;
    wait_clone(&env, "pr-1-debug", "Ready", Duration::from_secs(90)).await;
    let (from_1, from_2) = (
        source_checkpoint(&env, "pr-1").await,
        source_checkpoint(&env, "pr-2").await,
    );

    // The text tree: schedule → checkpoint → clones → the clone of a clone.
    let text = kubectl.ok(&["tree", "-n", &ns]);
    let lines = tree_lines(&text);
    assert_eq!(lines[0], (0, "dbcps/nightly".to_string()), "\n{text}");
    assert_eq!(
        parent_of(&lines, &format!("dbcp/{from_1}")),
        "dbcps/nightly",
        "\n{text}"
    );
    assert_eq!(
        parent_of(&lines, "dbclone/pr-1"),
        format!("dbcp/{from_1}"),
        "\n{text}"
    );
    assert_eq!(
        parent_of(&lines, "dbclone/pr-2"),
        format!("dbcp/{from_2}"),
        "\n{text}"
    );
    assert_eq!(
        parent_of(&lines, "dbclone/pr-1-debug"),
        "dbclone/pr-1",
        "\n{text}"
    );
    for clone in ["pr-1", "pr-2", "pr-1-debug"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("dbclone/{clone} ")))
            .unwrap();
        assert!(line.contains("  Ready  age "), "{line}");
        assert!(line.contains(&format!("→ clones/{clone}")), "{line}");
    }
    let pr_1 = text.lines().find(|l| l.contains("dbclone/pr-1 ")).unwrap();
    assert!(pr_1.contains("expires in 23h"), "{pr_1}");
    assert!(
        text.lines().next().unwrap().contains("Suspended"),
        "\n{text}"
    );
    assert!(text.contains("├─ ") && text.contains("└─ "), "\n{text}");

    // The same as JSON.
    let tree = kubectl.json(&["tree", "-n", &ns]);
    assert_eq!(tree["namespace"], ns.as_str());
    let items = &tree["items"];
    assert_eq!(items.as_array().unwrap().len(), 1, "{tree:#}");
    let schedule = &items[0];
    assert_eq!(schedule["kind"], "DatabaseCheckpointSchedule");
    assert_eq!(schedule["schedule"], "@every 10s");
    assert_eq!(schedule["suspended"], true);
    let checkpoint = find_node(&schedule["children"], "DatabaseCheckpoint", &from_1).unwrap();
    assert_eq!(
        checkpoint["dependsOn"],
        "DatabaseCheckpointSchedule/nightly"
    );
    assert_eq!(checkpoint["phase"], "Ready");
    assert_eq!(checkpoint["database"], PARENT);
    assert!(checkpoint["checkpointId"].is_string(), "{checkpoint:#}");
    assert!(
        child_names(checkpoint).contains(&"pr-1".to_string()),
        "{checkpoint:#}"
    );
    let pr_1 = find_node(items, "DatabaseClone", "pr-1").unwrap();
    assert_eq!(pr_1["dependsOn"], format!("DatabaseCheckpoint/{from_1}"));
    assert_eq!(pr_1["source"], "scheduleRef nightly");
    assert_eq!(pr_1["sourceCheckpoint"], from_1.as_str());
    assert_eq!(pr_1["connectionConfigMap"], "pr-1-slatedb");
    assert!(pr_1["expirationTime"].is_string(), "{pr_1:#}");
    assert_eq!(child_names(pr_1), ["pr-1-debug"]);
    let debug = &pr_1["children"][0];
    assert_eq!(debug["dependsOn"], "DatabaseClone/pr-1");
    assert_eq!(debug["source"], "database clones/pr-1");
    let parents: Vec<&str> = debug["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        parents.contains(&"clones/pr-1") && parents.contains(&PARENT),
        "{parents:?}"
    );
    assert!(find_node(items, "DatabaseClone", "pr-2").is_some());

    // reset with a token of one's own, then with the default one (the current time).
    let said = kubectl.ok(&["reset", "pr-2", "-n", &ns, "--token", "renew-1"]);
    assert!(
        said.contains("dbclone/pr-2 reset") && said.contains("\"renew-1\""),
        "{said}"
    );
    assert_eq!(
        env.api::<DatabaseClone>()
            .get("pr-2")
            .await
            .unwrap()
            .spec
            .reset_token
            .as_deref(),
        Some("renew-1")
    );
    wait_reset(&env, "pr-2", "renew-1").await;
    let reset = kubectl.json(&["reset", "pr-2", "-n", &ns]);
    assert_eq!(reset["previousToken"], "renew-1");
    let token = reset["resetToken"].as_str().unwrap().to_string();
    chrono::DateTime::parse_from_rfc3339(&token).unwrap_or_else(|e| panic!("{token}: {e}"));
    wait_reset(&env, "pr-2", &token).await;
    let tree = kubectl.json(&["tree", "-n", &ns]);
    let pr_2 = find_node(&tree["items"], "DatabaseClone", "pr-2").unwrap();
    assert_eq!(
        (pr_2["phase"].as_str(), pr_2["resetToken"].as_str()),
        (Some("Ready"), Some(token.as_str()))
    );

    // The same token again, or a clone that is not there: refused, with exit code 3.
    let again = kubectl.slatedb(&["reset", "pr-2", "-n", &ns, "--token", &token]);
    assert_eq!(
        again.status.code(),
        Some(3),
        "{}",
        describe("reset again", &again)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("TokenUnchanged"));
    let missing = kubectl.slatedb(&["reset", "pr-404", "-n", &ns, "-o", "json"]);
    assert_eq!(
        missing.status.code(),
        Some(3),
        "{}",
        describe("reset pr-404", &missing)
    );
    let line: Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(line["error"]["reason"], "NotFound");
    env.cleanup().await;
}
