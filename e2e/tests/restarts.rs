//! Fault suite: kube-apiserver is killed (SIGKILL) and restarted while clones are in flight; the
//! operator must stay up, reconnect and finish every clone.
//!
//! The other e2e tests share one cluster and run in parallel, so this test never touches it: it
//! starts a private cluster of its own (`e2e/cluster.sh up` under a private state directory, on
//! free ports), restarts that cluster's apiserver with `e2e/cluster.sh restart-apiserver`, and
//! always stops the cluster at the end.

use crate::clones::{assert_all_rows, condition, create, parent_and_checkpoint};
use crate::support::{
    eventually, repo_path, Operator, StoreKind, TestEnv, TestStore, FIELD_MANAGER,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use slatedb_operator::api::{ClonePhase, DatabaseClone};
use slatedb_operator::crds::install_crds;
use slatedb_operator::engine::FAULTS_ENV;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "restarts";
const KEYS: usize = 10_000;
/// Clones created before the apiserver is killed, and after it is back.
const CLONES_BEFORE: usize = 10;
const CLONES_AFTER: usize = 3;
/// How long the apiserver stays down.
const DOWN_SECONDS: &str = "5";

/// A control plane of this test's own; `cluster.sh down` on drop, whatever happened.
struct PrivateCluster {
    state: PathBuf,
    ports: [(&'static str, u16); 7],
    env: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

impl PrivateCluster {
    async fn start() -> PrivateCluster {
        let dir = tempfile::Builder::new()
            .prefix("restarts-cluster-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("creating the private cluster's directory");
        let mut cluster = PrivateCluster {
            state: dir.path().join("state"),
            ports: [
                ("E2E_ETCD_PORT", 0),
                ("E2E_ETCD_PEER_PORT", 0),
                ("E2E_APISERVER_PORT", 0),
                ("E2E_S3_PORT", 0),
                ("E2E_S3_BACKEND_PORT", 0),
                ("E2E_GCS_PORT", 0),
                ("E2E_AZURITE_PORT", 0),
            ],
            env: BTreeMap::new(),
            _dir: dir,
        };
        // A free port can be taken between the probe and `up`: then `up` refuses it; try again.
        for attempt in 1..=3 {
            cluster.pick_ports();
            let started = Instant::now();
            let up = cluster.run(&["up"], Duration::from_secs(600)).await;
            if up.status.success() {
                eprintln!(
                    "restarts: private cluster up in {:.1}s ({:?})",
                    started.elapsed().as_secs_f64(),
                    cluster.ports
                );
                break;
            }
            let stderr = String::from_utf8_lossy(&up.stderr);
            assert!(
                attempt < 3 && stderr.contains("already in use"),
                "the private cluster did not start (e2e/cluster.sh up, {:?}): {stderr}",
                cluster.ports
            );
        }
        let env = cluster.run(&["env"], Duration::from_secs(30)).await;
        assert!(env.status.success(), "e2e/cluster.sh env failed");
        cluster.env = parse_env_file(&String::from_utf8_lossy(&env.stdout));
        cluster
    }

    fn pick_ports(&mut self) {
        // Hold all the listeners at once, so the ports differ.
        let listeners: Vec<_> = (0..self.ports.len())
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        for (slot, listener) in self.ports.iter_mut().zip(&listeners) {
            slot.1 = listener.local_addr().unwrap().port();
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(repo_path("e2e/cluster.sh"));
        // The fault under test is the API server's: a node of its own would only add minutes.
        command
            .args(args)
            .env("E2E_STATE_DIR", &self.state)
            .env("E2E_NODE", "0");
        for (name, port) in self.ports {
            command.env(name, port.to_string());
        }
        command
    }

    /// Runs `e2e/cluster.sh ARGS` for this cluster; stderr goes to the test's output as well.
    async fn run(&self, args: &[&str], timeout: Duration) -> std::process::Output {
        let mut command = tokio::process::Command::from(self.command(args));
        command.kill_on_drop(true);
        let output = tokio::time::timeout(timeout, command.output())
            .await
            .unwrap_or_else(|_| panic!("e2e/cluster.sh {args:?} did not finish within {timeout:?}"))
            .expect("running e2e/cluster.sh");
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        output
    }

    fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(&self.env["KUBECONFIG"])
    }

    async fn client(&self) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("reading the kubeconfig");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("loading the private cluster's kubeconfig");
        Client::try_from(config).expect("a client for the private cluster")
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        match self.command(&["down"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "restarts: e2e/cluster.sh down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("restarts: running e2e/cluster.sh down: {e}"),
        }
    }
}

/// `export NAME=VALUE` lines (values as bash's `%q` prints them; ours need no unquoting beyond
/// quotes) into a map.
fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['\'', '"']).to_string()))
        .collect()
}

async fn create_clone(env: &TestEnv, name: &str) {
    let spec = serde_json::json!({"source": {"checkpointRef": {"name": "nightly"}},
        "target": {"path": format!("clones/{name}")}, "verify": "Content"});
    create(env, "DatabaseClone", name, spec).await;
}

fn is_ready(clone: &DatabaseClone) -> bool {
    condition(clone, "Ready").is_some_and(|c| c.0 == "True")
}

/// Names of the clones not Ready yet, or `None` when the apiserver does not answer.
async fn not_ready(env: &TestEnv) -> Option<Vec<String>> {
    let list = env
        .api::<DatabaseClone>()
        .list(&ListParams::default())
        .await
        .ok()?;
    Some(
        list.items
            .iter()
            .filter(|c| !is_ready(c))
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect(),
    )
}

/// Whether the operator process is still running (it never exits by itself unless it failed).
async fn still_running(operator: &mut Operator) -> bool {
    tokio::time::timeout(
        Duration::from_millis(500),
        operator.wait_exit(Duration::from_secs(3600)),
    )
    .await
    .is_err()
}

/// The lines of `log` that contain every one of `needles`.
fn log_lines_matching<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

#[tokio::test]
async fn a_killed_and_restarted_apiserver_does_not_stop_the_clones() {
    let cluster = PrivateCluster::start().await;
    let client = cluster.client().await;
    install_crds(&client, FIELD_MANAGER)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": NAMESPACE}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("creating the test namespace");
    let env = TestEnv::existing(client, NAMESPACE);
    let store = TestStore::new(StoreKind::File, NAMESPACE);
    let log_path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("restarts-operator-{}.log", std::process::id()));
    eprintln!("restarts: operator log {}", log_path.display());
    let mut operator = Operator::start_as(
        &cluster.kubeconfig(),
        &log_path,
        // Slow store requests keep the clones in flight while the apiserver is down.
        &[(FAULTS_ENV, "latency=20ms")],
        &["--namespaces", NAMESPACE, "--http-port", "0"],
    );
    parent_and_checkpoint(&env, &store, KEYS, 5).await;

    for i in 0..CLONES_BEFORE {
        create_clone(&env, &format!("before-{i}")).await;
    }
    // Kill once clone work runs (so the outage hits work in progress, not only reconciles).
    let working = eventually(
        Duration::from_secs(60),
        "a clone Cloning or Verifying",
        || async {
            let list = env
                .api::<DatabaseClone>()
                .list(&ListParams::default())
                .await
                .ok()?;
            let working = list
                .items
                .iter()
                .filter(|c| {
                    let phase = c.status.as_ref().and_then(|s| s.phase);
                    matches!(phase, Some(ClonePhase::Cloning | ClonePhase::Verifying))
                })
                .count();
            (working > 0).then_some(working)
        },
    )
    .await;
    let in_flight = not_ready(&env).await.expect("listing the clones");
    eprintln!(
        "restarts: {} of {CLONES_BEFORE} clones in flight ({working} working) when the apiserver is killed",
        in_flight.len()
    );
    assert!(
        !in_flight.is_empty(),
        "every clone was Ready before the kill: the test no longer tests anything"
    );
    let restart = cluster
        .run(
            &["restart-apiserver", DOWN_SECONDS],
            Duration::from_secs(180),
        )
        .await;
    assert!(
        restart.status.success(),
        "e2e/cluster.sh restart-apiserver failed"
    );
    let back = Instant::now();
    assert!(
        still_running(&mut operator).await,
        "the operator exited while the apiserver was down (log: {})",
        log_path.display()
    );

    for i in 0..CLONES_AFTER {
        create_clone(&env, &format!("after-{i}")).await;
    }
    let total = CLONES_BEFORE + CLONES_AFTER;
    // The watches resume within a few seconds (their backoff is capped at 3 s; with kube's
    // default, 30 s steps, this took 25-65 s).
    eventually(
        Duration::from_secs(60),
        &format!("all {total} clones Ready after the apiserver restart"),
        || async {
            let pending = not_ready(&env).await?;
            pending.is_empty().then_some(())
        },
    )
    .await;
    let all_ready = back.elapsed();
    let count = env
        .api::<DatabaseClone>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(count, total);
    eprintln!(
        "restarts: all {total} clones Ready {:.1}s after the apiserver was back ({} in flight at the kill, down {DOWN_SECONDS}s)",
        all_ready.as_secs_f64(),
        in_flight.len()
    );
    assert!(
        still_running(&mut operator).await,
        "the operator exited (log: {})",
        log_path.display()
    );

    assert_all_rows(&store, &format!("clones/{}", in_flight[0]), KEYS).await;
    assert_all_rows(&store, "clones/after-0", KEYS).await;

    // The log shows the connection lost (refused while the apiserver was down, the watches broken)
    // and regained: a clone created only after the restart reaches the operator through its watch.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let refused = log_lines_matching(&log, &["client error (Connect)"]);
    let watch_lost = log_lines_matching(&log, &["\"kind\":\"DatabaseClone\"", "event queue error"]);
    let regained = log_lines_matching(&log, &["starting clone work", "clones/after-"]);
    eprintln!(
        "restarts: operator log: {} requests refused, {} clone-watch errors, {} clones started after the restart",
        refused.len(),
        watch_lost.len(),
        regained.len()
    );
    let shown = log_path.display();
    assert!(!refused.is_empty(), "no refused request in {shown}");
    assert!(!watch_lost.is_empty(), "no broken clone watch in {shown}");
    assert_eq!(
        regained.len(),
        CLONES_AFTER,
        "clones started after the restart, in {shown}"
    );
    drop(operator);
    drop(cluster);
    let _ = std::fs::remove_file(&log_path); // kept only when the test fails
}
