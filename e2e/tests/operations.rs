//! Operating the operator: the chart's RBAC is enough (the operator runs impersonating the chart's
//! ServiceAccount), metrics are served, secrets never reach the log, and leader election fails
//! over to a standby that finishes an in-flight clone.

use crate::clones::create;
use crate::support::{
    eventually, free_port, http_get, repo_path, run_tool, write_sample_db, Operator, StoreKind,
    TestEnv, TestStore,
};
use k8s_openapi::api::coordination::v1::Lease;
use serde_json::json;
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseClone};
use slatedb_operator::engine::CRASH_POINT_ENV;
use std::time::{Duration, Instant};

fn ready(object: &serde_json::Value) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

async fn wait_ready<K>(env: &TestEnv, name: &str, timeout: Duration)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let api = env.api::<K>();
    eventually(timeout, &format!("{name} Ready"), || async {
        let object = serde_json::to_value(api.get(name).await.ok()?).ok()?;
        ready(&object).then_some(())
    })
    .await;
}

/// A kubeconfig like the test's own, but acting as `user` (the admin may impersonate anyone).
fn impersonating_kubeconfig(user: &str, path: &std::path::Path) {
    let source = std::fs::read_to_string(std::env::var("KUBECONFIG").unwrap()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&source).unwrap();
    for entry in config["users"].as_sequence_mut().unwrap() {
        entry["user"]["as"] = serde_yaml::Value::from(user);
    }
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).unwrap();
}

#[tokio::test]
async fn the_chart_rbac_suffices_metrics_are_served_and_secrets_stay_out_of_the_log() {
    let env = TestEnv::new("ops-rbac").await;
    let release_ns = format!("{}-op", env.namespace);
    let store = TestStore::new(StoreKind::S3, &env.namespace);
    store.create_secret(&env).await;
    let chart = repo_path("charts/slatedb-operator");
    // Cluster-scoped objects of the chart carry the release name: one per run.
    let release = format!("op{}", std::process::id());
    let installed = run_tool(
        "E2E_HELM",
        &[
            "install",
            &release,
            chart.to_str().unwrap(),
            "--namespace",
            &release_ns,
            "--create-namespace",
            "--set",
            &format!("watchNamespaces={{{}}}", env.namespace),
            "--set",
            "crds.enabled=false",
        ],
        None,
    );
    assert!(
        installed.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&installed.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    impersonating_kubeconfig(
        &format!("system:serviceaccount:{release_ns}:{release}-slatedb-operator"),
        &kubeconfig,
    );
    let lease_name = format!("{release}-slatedb-operator");
    let log = dir.path().join("operator.log");
    let port = free_port().to_string();
    let _operator = Operator::start_as(
        &kubeconfig,
        &log,
        &[("POD_NAME", "op-0"), ("POD_NAMESPACE", &release_ns)],
        &[
            "--namespaces",
            &env.namespace,
            "--leader-election",
            "--lease-name",
            &lease_name,
            "--http-port",
            &port,
        ],
    );

    write_sample_db(&store, "prod", 2_000, 2).await;
    create(
        &env,
        "DatabaseCheckpoint",
        "nightly",
        json!({"database": {"store": store.store_spec(), "path": "prod"}}),
    )
    .await;
    wait_ready::<DatabaseCheckpoint>(&env, "nightly", Duration::from_secs(60)).await;
    create(
        &env,
        "DatabaseClone",
        "pr-1",
        json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/pr-1"}}),
    )
    .await;
    wait_ready::<DatabaseClone>(&env, "pr-1", Duration::from_secs(60)).await;
    // Deleting exercises the finalizers, events and the Secret read on the way out.
    env.api::<DatabaseClone>()
        .delete("pr-1", &Default::default())
        .await
        .unwrap();
    let clones = env.api::<DatabaseClone>();
    eventually(Duration::from_secs(30), "clone deleted", || async {
        clones
            .get_opt("pr-1")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    let metrics = http_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    for series in [
        "slatedb_operator_reconciles_total{kind=\"DatabaseClone\"}",
        "slatedb_operator_leader 1",
        "slatedb_operator_clone_duration_seconds_count 1",
        "slatedb_operator_store_retries_total ",
        "slatedb_operator_store_requests_total{operation=\"list\"} ",
    ] {
        assert!(metrics.contains(series), "missing {series} in:\n{metrics}");
    }
    assert!(http_get(&format!("http://127.0.0.1:{port}/readyz"))
        .await
        .starts_with("ready"));

    // The chart's API Priority and Fairness objects classify the operator's requests: its Lease
    // requests in the built-in leader-election level, everything else in the release's own level.
    let apiserver_metrics = run_tool("E2E_KUBECTL", &["get", "--raw", "/metrics"], None);
    assert!(apiserver_metrics.status.success());
    let apiserver_metrics = String::from_utf8_lossy(&apiserver_metrics.stdout);
    let full = format!("{release}-slatedb-operator");
    for (schema, level) in [
        (
            format!("{full}-leader-election"),
            "leader-election".to_string(),
        ),
        (full.clone(), full.clone()),
    ] {
        let series = format!(
            "apiserver_flowcontrol_dispatched_requests_total{{flow_schema=\"{schema}\",priority_level=\"{level}\"}} "
        );
        let dispatched: f64 = apiserver_metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        assert!(
            dispatched > 0.0,
            "no operator request dispatched by flow schema {schema} in level {level}"
        );
    }

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("forbidden"),
        "an RBAC rule is missing:\n{}",
        text.lines()
            .filter(|l| l.contains("forbidden"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for line in text.lines().take(5) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
    }
    assert!(
        text.lines()
            .any(|l| l.contains("\"namespace\"") && l.contains("\"name\"")),
        "log lines name the object"
    );
    let secret = &store.options["AWS_SECRET_ACCESS_KEY"];
    let key_id = &store.options["AWS_ACCESS_KEY_ID"];
    assert!(
        !text.contains(secret.as_str()) && !text.contains(key_id.as_str()),
        "a credential reached the log"
    );
    let uninstalled = run_tool(
        "E2E_HELM",
        &["uninstall", &release, "--namespace", &release_ns],
        None,
    );
    assert!(uninstalled.status.success());
    env.cleanup().await;
}

#[tokio::test]
async fn a_standby_takes_over_within_the_lease_and_finishes_an_in_flight_clone() {
    let env = TestEnv::new("ops-leader").await;
    let store = TestStore::new(StoreKind::File, &env.namespace);
    write_sample_db(&store, "prod", 2_000, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = std::path::PathBuf::from(std::env::var("KUBECONFIG").unwrap());
    let election = [
        "--namespaces",
        &env.namespace,
        "--leader-election",
        "--lease-name",
        "op",
        "--lease-duration-seconds",
        "6",
        "--lease-grace-seconds",
        "2",
        "--http-port",
        "0",
    ];
    let lease_ns = [("POD_NAMESPACE", env.namespace.as_str())];
    // The first replica dies (SIGKILL-like exit) in the middle of its first clone.
    let mut first = Operator::start_as(
        &kubeconfig,
        &dir.path().join("a.log"),
        &[
            lease_ns[0],
            ("POD_NAME", "op-a"),
            (CRASH_POINT_ENV, "clone-PinParent"),
        ],
        &election,
    );
    let leases = env.api::<Lease>();
    eventually(
        Duration::from_secs(30),
        "op-a to hold the lease",
        || async {
            let lease = leases.get_opt("op").await.ok()??;
            (lease.spec?.holder_identity? == "op-a").then_some(())
        },
    )
    .await;
    let _second = Operator::start_as(
        &kubeconfig,
        &dir.path().join("b.log"),
        &[lease_ns[0], ("POD_NAME", "op-b")],
        &election,
    );

    create(
        &env,
        "DatabaseCheckpoint",
        "nightly",
        json!({"database": {"store": store.store_spec(), "path": "prod"}}),
    )
    .await;
    wait_ready::<DatabaseCheckpoint>(&env, "nightly", Duration::from_secs(60)).await;
    create(
        &env,
        "DatabaseClone",
        "pr-1",
        json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/pr-1"}}),
    )
    .await;
    assert_eq!(
        first.wait_exit(Duration::from_secs(60)).await,
        Some(86),
        "the leader died mid-clone"
    );
    let died = Instant::now();
    first.kill();

    wait_ready::<DatabaseClone>(&env, "pr-1", Duration::from_secs(60)).await;
    let took = died.elapsed();
    let lease = leases.get("op").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("op-b"));
    assert!(
        took <= Duration::from_secs(6 + 2 + 5),
        "the standby took over and finished in {took:?}"
    );
    let clone = env.api::<DatabaseClone>().get("pr-1").await.unwrap();
    assert!(
        clone.status.unwrap().attempts.unwrap() >= 2,
        "the standby resumed the leader's attempt"
    );
    env.cleanup().await;
}
