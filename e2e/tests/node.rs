//! The operator as a pod on the cluster's real node (`e2e/cluster.sh up` starts kubelet, containerd and
//! kube-scheduler beside the control plane). The image `e2e/build-image.sh` builds from the crate's binary
//! is imported into the node's containerd once per test run, under a tag derived from its content, and the
//! chart is installed with `helm install` as a user would (`image.pullPolicy: Never`). The operator pod
//! runs under its ServiceAccount's projected token, not a kubeconfig; it reaches the API server and the S3
//! server either with `hostNetwork` on 127.0.0.1, or over the pod network through the node's relay on the
//! bridge address (`E2E_NODE_IP`). Nothing leaves the machine: containerd pulls from no registry, pods have
//! no default route, and the operator's cloud metadata endpoints point at a closed loopback port.
//!
//! These tests fail, never skip, when the node is missing.

use crate::clones::{assert_all_rows, condition, wait_checkpoint_ready, wait_clone, PARENT};
use crate::support::{
    describe, documents, eventually, free_port, http_get, metric_value, repo_path, run_tool,
    write_sample_db, StoreKind, TestEnv, TestStore,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{EvictParams, ListParams, PostParams};
use kube::Api;
use serde_json::json;
use slatedb_operator::api::{ClonePhase, DatabaseClone};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const IMAGE_REPOSITORY: &str = "docker.io/library/slatedb-operator";
const KEYS: usize = 2_000;
/// How long the operator pods may take to become Ready (image already on the node).
const POD_READY: Duration = Duration::from_secs(120);

pub(crate) fn node_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the node tests need the e2e cluster's real node (kubelet and \
             containerd). Run them with `e2e/run-tests.sh`, or `e2e/cluster.sh up && source \
             <(e2e/cluster.sh env)` first (and not with E2E_NODE=0)"
        )
    })
}

/// The operator image on the node: built from the crate's binary and imported into the node's
/// containerd once per test run. Returns its tag.
fn image_tag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let started = Instant::now();
        let cluster_sh = node_env("E2E_CLUSTER_SH");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node-image");
        std::fs::create_dir_all(&dir).unwrap();
        // Earlier runs' images (one per binary built) are not needed again.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "tar") {
                let _ = std::fs::remove_file(path);
            }
        }
        // The binary this test run built, without its debug info: the test profile's binary is
        // ~450 MB with it, ~10 times what the image needs.
        let binary = dir.join("slatedb-operator");
        std::fs::copy(env!("CARGO_BIN_EXE_slatedb-operator"), &binary).unwrap();
        let stripped = Command::new("strip")
            .arg("--strip-debug")
            .arg(&binary)
            .output()
            .expect("running strip (binutils)");
        assert!(
            stripped.status.success(),
            "{}",
            describe("strip", &stripped)
        );
        let digest = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(&binary).unwrap()))
        };
        let tag = format!("e2e-{}", &digest[..12]);
        let archive = dir.join(format!("{tag}.tar"));
        let built = Command::new(repo_path("e2e/build-image.sh"))
            .arg(&archive)
            .env("IMAGE_BINARY", &binary)
            .env("IMAGE_NAME", format!("{IMAGE_REPOSITORY}:{tag}"))
            .output()
            .unwrap();
        assert!(
            built.status.success(),
            "{}",
            describe("e2e/build-image.sh", &built)
        );
        let imported = Command::new(&cluster_sh)
            .args(["import-image", archive.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            imported.status.success(),
            "{}",
            describe("e2e/cluster.sh import-image", &imported)
        );
        eprintln!(
            "node: image {IMAGE_REPOSITORY}:{tag} ({} MB) built and imported in {:.1}s",
            std::fs::metadata(&archive).unwrap().len() / 1_000_000,
            started.elapsed().as_secs_f64()
        );
        tag
    })
}

/// The API server's port (it listens on 127.0.0.1, and the node's relay on the bridge address).
fn apiserver_port() -> String {
    let url = node_env("E2E_APISERVER_URL");
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

/// How the operator pod reaches the API server and the S3 server.
#[derive(Clone, Copy)]
pub(crate) enum Network {
    /// `hostNetwork: true`: the API server on 127.0.0.1; the HTTP port is a port of the node.
    Host { http_port: u16 },
    /// The pod network: both through the relay on the bridge address.
    Pod,
}

/// The S3 test store, with the Secret the operator reads: the endpoint as pods reach it.
pub(crate) async fn pod_store(env: &TestEnv) -> TestStore {
    let store = TestStore::new(StoreKind::S3, &env.namespace);
    let mut options = store.options.clone();
    options.insert("AWS_ENDPOINT".into(), node_env("E2E_POD_S3_ENDPOINT"));
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "store-credentials"}, "stringData": options
    }))
    .unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the store Secret");
    store
}

/// A Helm release of the local chart in the test's namespace, watching that namespace only.
/// A failed test uninstalls it on drop, so that no operator pod outlives its test.
pub(crate) struct Release {
    name: String,
    namespace: String,
    pub(crate) fullname: String,
    uninstalled: std::cell::Cell<bool>,
}

impl Release {
    fn helm(args: &[&str]) -> String {
        let output = run_tool("E2E_HELM", args, None);
        assert!(
            output.status.success(),
            "{}",
            describe(&format!("helm {args:?}"), &output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `helm install` with the image on the node, the network settings and `extra` arguments;
    /// `extra_env` goes to the container after the network's variables.
    pub(crate) fn install(
        env: &TestEnv,
        suffix: &str,
        network: Network,
        extra_env: &[(&str, &str)],
        extra: &[&str],
    ) -> Release {
        // Cluster-scoped objects (the stores ClusterRole, the aggregated roles) carry the release
        // name: one per run and test.
        let name = format!("n{}{suffix}", std::process::id());
        let apiserver_host = match network {
            Network::Host { .. } => "127.0.0.1".to_string(),
            Network::Pod => node_env("E2E_NODE_IP"),
        };
        let mut container_env = vec![
            json!({"name": "KUBERNETES_SERVICE_HOST", "value": apiserver_host}),
            json!({"name": "KUBERNETES_SERVICE_PORT", "value": apiserver_port()}),
            // No object-store client may ask a cloud metadata service for an identity.
            json!({"name": "AWS_METADATA_ENDPOINT", "value": "http://127.0.0.1:1"}),
            json!({"name": "AZURE_MSI_ENDPOINT", "value": "http://127.0.0.1:1/metadata/identity/oauth2/token"}),
        ];
        container_env.extend(
            extra_env
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value})),
        );
        let values = [
            format!("image.repository={IMAGE_REPOSITORY}"),
            format!("image.tag={}", image_tag()),
            "image.pullPolicy=Never".into(),
            // The suite installs the CRDs (the install test has the chart take them over).
            "crds.enabled=false".into(),
            format!("watchNamespaces={{{}}}", env.namespace),
            "clone.maxBackoffSeconds=5".into(),
            "clone.timeouts.adminSeconds=10".into(),
        ];
        let json_values = [
            format!("extraEnv={}", serde_json::Value::from(container_env)),
            // Only this test's DatabaseStores (other tests' operators serve theirs).
            format!(
                "storeSelector={}",
                json!({crate::support::STORE_LABEL: env.namespace})
            ),
        ];
        let mut args: Vec<String> = vec![
            "install".into(),
            name.clone(),
            repo_path("charts/slatedb-operator").display().to_string(),
            "--namespace".into(),
            env.namespace.clone(),
        ];
        for value in values {
            args.extend(["--set".into(), value]);
        }
        for value in json_values {
            args.extend(["--set-json".into(), value]);
        }
        if let Network::Host { http_port } = network {
            args.extend(["--set".into(), "hostNetwork=true".into()]);
            args.extend(["--set".into(), format!("metrics.port={http_port}")]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Release::helm(&args);
        Release {
            fullname: format!("{name}-slatedb-operator"),
            name,
            namespace: env.namespace.clone(),
            uninstalled: Default::default(),
        }
    }

    fn selector(&self) -> String {
        format!("app.kubernetes.io/instance={}", self.name)
    }

    pub(crate) fn uninstall(&self) -> String {
        self.uninstalled.set(true);
        Release::helm(&["uninstall", &self.name, "--namespace", &self.namespace])
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.uninstalled.get() {
            let args = ["uninstall", &self.name, "--namespace", &self.namespace];
            let output = run_tool("E2E_HELM", &args, None);
            eprintln!("{}", describe("helm uninstall (test failed)", &output));
        }
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The release's `count` pods, once exactly that many exist and all are Ready, sorted by name.
pub(crate) async fn ready_pods(env: &TestEnv, release: &Release, count: usize) -> Vec<Pod> {
    let pods = env.api::<Pod>();
    let params = ListParams::default().labels(&release.selector());
    eventually(
        POD_READY,
        &format!("{count} Ready operator pod(s)"),
        || async {
            let mut list = pods.list(&params).await.ok()?.items;
            (list.len() == count && list.iter().all(pod_ready)).then(|| {
                list.sort_by_key(|p| p.metadata.name.clone());
                list
            })
        },
    )
    .await
}

pub(crate) fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap()
}

async fn lease_holder(env: &TestEnv, release: &Release) -> Option<String> {
    let lease = env.api::<Lease>().get_opt(&release.fullname).await.ok()??;
    lease.spec?.holder_identity
}

/// `kubectl apply` of `yaml` in the test's namespace.
pub(crate) fn kubectl_apply(env: &TestEnv, yaml: &str) {
    let output = run_tool(
        "E2E_KUBECTL",
        &["apply", "--namespace", &env.namespace, "-f", "-"],
        Some(yaml.as_bytes()),
    );
    assert!(
        output.status.success(),
        "{}",
        describe("kubectl apply", &output)
    );
}

fn checkpoint_yaml(store: &TestStore, name: &str) -> String {
    let store = serde_json::to_string(&store.store_spec()).unwrap();
    format!(
        "apiVersion: slatedb.io/v1alpha1\nkind: DatabaseCheckpoint\nmetadata: {{name: {name}}}\n\
         spec:\n  database: {{store: {store}, path: {PARENT}}}\n"
    )
}

fn clone_yaml(name: &str, checkpoint: &str) -> String {
    format!(
        "apiVersion: slatedb.io/v1alpha1\nkind: DatabaseClone\nmetadata: {{name: {name}}}\n\
         spec:\n  source: {{checkpointRef: {{name: {checkpoint}}}}}\n  target: {{path: clones/{name}}}\n"
    )
}

/// `/metrics` of `pod`, through the API server's pod proxy (API server → kubelet's node → pod IP).
fn metrics_through_the_api_server(env: &TestEnv, pod: &str, port: u16) -> String {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{pod}:{port}/proxy/metrics",
        env.namespace
    );
    let output = run_tool("E2E_KUBECTL", &["get", "--raw", &path], None);
    assert!(output.status.success(), "{}", describe(&path, &output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The pod's IP is on the node's bridge: the route to it never leaves the machine.
fn assert_routed_through_the_bridge(pod: &Pod) {
    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    let output = Command::new("ip")
        .args(["route", "get", &ip])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&output.stdout);
    let bridge = node_env("E2E_NODE_BRIDGE");
    assert!(
        route.contains(&format!("dev {bridge} ")),
        "the route to pod IP {ip} is not the node's bridge {bridge}: {route}"
    );
}

/// The host PID of `pod`'s first container (containerd's task of that container).
fn container_pid(pod: &Pod) -> u32 {
    let status = &pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let id = status.container_id.as_deref().unwrap();
    let id = id.strip_prefix("containerd://").unwrap();
    let output = Command::new(node_env("E2E_CTR"))
        .args(["--address", &node_env("E2E_CONTAINERD_ADDRESS")])
        .args(["--namespace", "k8s.io", "tasks", "ls"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        describe("ctr tasks ls", &output)
    );
    let tasks = String::from_utf8_lossy(&output.stdout);
    tasks
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == id).then(|| fields.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no containerd task for container {id}:\n{tasks}"))
}

/// The node marked unschedulable (`kubectl cordon`) while this lives.
struct Cordoned(String);

impl Cordoned {
    fn new(node: &str) -> Cordoned {
        let output = run_tool("E2E_KUBECTL", &["cordon", node], None);
        assert!(
            output.status.success(),
            "{}",
            describe("kubectl cordon", &output)
        );
        Cordoned(node.to_string())
    }
}

impl Drop for Cordoned {
    fn drop(&mut self) {
        let output = run_tool("E2E_KUBECTL", &["uncordon", &self.0], None);
        if !output.status.success() {
            eprintln!("{}", describe("kubectl uncordon", &output));
        }
    }
}

/// What the kernel enforces on the operator's process, read from /proc on the node: the chart's
/// securityContext as runc applied it.
fn assert_process_is_confined(pid: u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid"), ["65532"; 4], "runs as uid 65532:\n{status}");
    assert_eq!(field("Gid"), ["65532"; 4], "runs as gid 65532:\n{status}");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps}: no capability");
    }
    assert_eq!(field("NoNewPrivs"), ["1"], "no privilege escalation");
    assert_eq!(
        field("Seccomp"),
        ["2"],
        "a seccomp filter (RuntimeDefault) is on"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no root mount in /proc/{pid}/mountinfo"));
    let options = root.split_whitespace().nth(5).unwrap();
    assert!(
        options.split(',').any(|o| o == "ro"),
        "the root filesystem is mounted read-only: {root}"
    );
}

#[test]
fn the_chart_renders_host_network_and_its_dns_policy() {
    let chart = repo_path("charts/slatedb-operator");
    let render = |args: &[&str]| {
        let mut all = vec!["template", "t", chart.to_str().unwrap()];
        all.extend(args);
        let output = run_tool("E2E_HELM", &all, None);
        assert!(
            output.status.success(),
            "{}",
            describe("helm template", &output)
        );
        let docs = documents(&String::from_utf8_lossy(&output.stdout));
        let deployment = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .unwrap()
            .clone();
        deployment
    };
    let default = render(&[]);
    let spec = &default["spec"]["template"]["spec"];
    assert!(spec.get("hostNetwork").is_none() && spec.get("dnsPolicy").is_none());
    assert!(default["spec"].get("strategy").is_none());
    let host = render(&["--set", "hostNetwork=true"]);
    assert_eq!(host["spec"]["template"]["spec"]["hostNetwork"], true);
    assert_eq!(
        host["spec"]["template"]["spec"]["dnsPolicy"],
        "ClusterFirstWithHostNet"
    );
    let explicit = render(&["--set", "hostNetwork=true", "--set", "dnsPolicy=Default"]);
    assert_eq!(explicit["spec"]["template"]["spec"]["dnsPolicy"], "Default");
    let recreate = render(&["--set", "strategy.type=Recreate"]);
    assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
    for (args, path) in [
        (["--set", "hostNetwork=sometimes"], "/hostNetwork"),
        (["--set", "dnsPolicy=Cluster"], "/dnsPolicy"),
        (["--set", "strategy.type=BlueGreen"], "/strategy/type"),
    ] {
        let mut all = vec!["template", "t", chart.to_str().unwrap()];
        all.extend(args);
        let output = run_tool("E2E_HELM", &all, None);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(path),
            "the schema should reject {args:?}: {}",
            describe("helm template", &output)
        );
    }
}

/// `helm install` → the operator pod Ready through its readiness probe, confined as the chart says;
/// a checkpoint and a clone applied with kubectl become Ready (the clone reads back); `/metrics` on
/// the pod's host port shows the clone; `helm uninstall` removes the operator and keeps the CRDs.
#[tokio::test]
async fn helm_install_runs_the_operator_pod_which_reconciles_and_uninstall_keeps_the_crds() {
    let env = TestEnv::new("node-install").await;
    let store = pod_store(&env).await;
    write_sample_db(&store, PARENT, KEYS, 2).await;
    let _ = image_tag();
    let http_port = free_port();
    let started = Instant::now();
    // The chart's own CRDs this time (crds.enabled, kept on uninstall). The suite installed the same
    // CRDs already: Helm takes them over, with the suite's field manager's fields.
    let release = Release::install(
        &env,
        "i",
        Network::Host { http_port },
        &[],
        &[
            "--set",
            "crds.enabled=true",
            "--take-ownership",
            "--force-conflicts",
        ],
    );
    let pods = ready_pods(&env, &release, 1).await;
    eprintln!(
        "node: helm install → operator pod Ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let pod = &pods[0];
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.node_name.as_deref(),
        Some(node_env("E2E_NODE_NAME").as_str())
    );
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(release.fullname.as_str())
    );
    // The securityContext as the API has it, and as the kernel enforces it on the running process.
    let container = &spec.containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_process_is_confined(container_pid(pod));
    // The pod's own port on the node. Ready flips back to false for a moment when the pod wins the
    // lease and starts its controllers (until their caches sync).
    eventually(
        Duration::from_secs(30),
        "/readyz on the host port",
        || async {
            let body = http_get(&format!("http://127.0.0.1:{http_port}/readyz")).await;
            body.starts_with("ready").then_some(())
        },
    )
    .await;

    kubectl_apply(&env, &checkpoint_yaml(&store, "nightly"));
    wait_checkpoint_ready(&env, "nightly").await;
    kubectl_apply(&env, &clone_yaml("pr-1", "nightly"));
    env.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=90s",
        "databaseclone/pr-1",
    ]);
    assert_all_rows(&store, "clones/pr-1", KEYS).await;

    let metrics = http_get(&format!("http://127.0.0.1:{http_port}/metrics")).await;
    assert_eq!(
        metric_value(&metrics, "slatedb_operator_clone_duration_seconds_count"),
        1.0
    );
    assert!(
        metric_value(
            &metrics,
            "slatedb_operator_reconciles_total{kind=\"DatabaseClone\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric_value(&metrics, "slatedb_operator_leader "),
        1.0,
        "{metrics}"
    );

    let uninstalled = release.uninstall();
    assert!(
        uninstalled.contains("kept due to the resource policy"),
        "{uninstalled}"
    );
    let deployments = env.api::<Deployment>();
    assert!(deployments
        .get_opt(&release.fullname)
        .await
        .unwrap()
        .is_none());
    assert!(env
        .api::<ServiceAccount>()
        .get_opt(&release.fullname)
        .await
        .unwrap()
        .is_none());
    let pods = env.api::<Pod>();
    let params = ListParams::default().labels(&release.selector());
    eventually(Duration::from_secs(60), "the operator pod gone", || async {
        pods.list(&params)
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let crds = Api::<CustomResourceDefinition>::all(env.client.clone());
    for crd in [
        "databasecheckpoints.slatedb.io",
        "databaseclones.slatedb.io",
        "databasestores.slatedb.io",
    ] {
        let crd = crds
            .get(crd)
            .await
            .unwrap_or_else(|e| panic!("{crd} after uninstall: {e}"));
        assert_eq!(
            crd.metadata.annotations.unwrap()["helm.sh/resource-policy"],
            "keep"
        );
    }
    assert!(env
        .api::<DatabaseClone>()
        .get_opt("pr-1")
        .await
        .unwrap()
        .is_some());
    env.cleanup().await;
}

/// Two replicas on the pod network: both Running, one holds the Lease; the leader pod deleted
/// mid-clone, the other takes the lease and finishes the clone within a bound derived from the lease;
/// `/metrics` through the API server's pod proxy; the PodDisruptionBudget lets one eviction through
/// and refuses the second.
#[tokio::test]
async fn two_replicas_fail_over_mid_clone_serve_metrics_and_keep_their_disruption_budget() {
    const LEASE: u64 = 6;
    const GRACE: u64 = 2;
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("node-ha: {what} at {:.1}s", t0.elapsed().as_secs_f64());
    let env = TestEnv::new("node-ha").await;
    let store = pod_store(&env).await;
    write_sample_db(&store, PARENT, KEYS, 2).await;
    let lease = LEASE.to_string();
    let renew = (LEASE - GRACE).to_string();
    let release = Release::install(
        &env,
        "h",
        Network::Pod,
        // Every store request of the operator 100 ms slower, so that a clone is still under way
        // when its leader goes.
        &[("SLATEDB_OPERATOR_FAULTS", "latency=100ms")],
        &[
            "--set",
            "replicaCount=2",
            "--set",
            "podDisruptionBudget.enabled=true",
            "--set",
            &format!("leaderElection.leaseDuration={lease}"),
            "--set",
            &format!("leaderElection.renewDeadline={renew}"),
            "--set",
            &format!("leaderElection.retryPeriod={GRACE}"),
        ],
    );
    phase("installed");
    let pods = ready_pods(&env, &release, 2).await;
    let names: Vec<String> = pods.iter().map(name_of).collect();
    for pod in &pods {
        assert_eq!(pod.spec.as_ref().unwrap().host_network, None);
        assert_routed_through_the_bridge(pod);
    }
    let leader = eventually(Duration::from_secs(30), "a leader", || async {
        lease_holder(&env, &release)
            .await
            .filter(|h| names.contains(h))
    })
    .await;
    phase("pods ready");
    let standby = names.iter().find(|n| **n != leader).unwrap().clone();

    kubectl_apply(&env, &checkpoint_yaml(&store, "nightly"));
    wait_checkpoint_ready(&env, "nightly").await;
    phase("checkpoint ready");
    kubectl_apply(&env, &clone_yaml("pr-1", "nightly"));
    let clones = env.api::<DatabaseClone>();
    eventually(Duration::from_secs(60), "the clone under way", || async {
        let phase = clones.get("pr-1").await.ok()?.status?.phase?;
        assert_ne!(
            phase,
            ClonePhase::Ready,
            "the clone finished before the leader was deleted"
        );
        matches!(phase, ClonePhase::Cloning | ClonePhase::Verifying).then_some(())
    })
    .await;
    // The node cordoned while the leader goes, so that the ReplicaSet's replacement cannot start
    // and race the standby for the expired lease: the standby must take over by itself.
    phase("clone under way");
    let cordoned = Cordoned::new(&node_env("E2E_NODE_NAME"));
    let deleted = Instant::now();
    env.kubectl(&["delete", "pod", &leader, "--wait=false"]);
    let holder = eventually(Duration::from_secs(60), "a new lease holder", || async {
        lease_holder(&env, &release).await.filter(|h| *h != leader)
    })
    .await;
    let took_over = deleted.elapsed();
    drop(cordoned);
    assert_eq!(holder, standby, "the standby took the lease");
    phase("took over");
    let ready = wait_clone(&env, "pr-1", "Ready", Duration::from_secs(90)).await;
    let finished = deleted.elapsed();
    eprintln!(
        "node: leader pod deleted mid-clone; the standby held the lease after {:.1}s, the clone was \
         Ready after {:.1}s",
        took_over.as_secs_f64(),
        finished.as_secs_f64()
    );
    // The deleted leader stops on SIGTERM and its lease is taken at the latest one lease duration
    // plus the grace after its last renewal; a few seconds for the standby's next look.
    let bound = Duration::from_secs(LEASE + GRACE + 5);
    assert!(
        took_over <= bound,
        "the standby took the lease after {took_over:?} (bound {bound:?})"
    );
    assert_eq!(condition(&ready, "Ready").unwrap().0, "True");
    assert_all_rows(&store, "clones/pr-1", KEYS).await;

    phase("clone ready and read");
    // The ReplicaSet replaced the deleted pod.
    let pods = ready_pods(&env, &release, 2).await;
    let replacement = pods.iter().map(name_of).find(|n| *n != standby).unwrap();
    assert_ne!(replacement, leader);
    phase("replacement ready");
    let port = 8080;
    let metrics = metrics_through_the_api_server(&env, &standby, port);
    assert_eq!(
        metric_value(&metrics, "slatedb_operator_leader "),
        1.0,
        "{metrics}"
    );
    assert!(metric_value(&metrics, "slatedb_operator_clone_duration_seconds_count") >= 1.0);
    assert!(
        metric_value(
            &metrics,
            "slatedb_operator_reconciles_total{kind=\"DatabaseClone\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric_value(&metrics, "slatedb_operator_clones_in_flight "),
        0.0
    );
    let metrics = metrics_through_the_api_server(&env, &replacement, port);
    assert_eq!(
        metric_value(&metrics, "slatedb_operator_leader "),
        0.0,
        "{metrics}"
    );

    phase("metrics read");
    // The PodDisruptionBudget: minAvailable 1 of 2, so one voluntary eviction and not two.
    let budgets = env.api::<PodDisruptionBudget>();
    let budget = budgets.get(&release.fullname).await.unwrap();
    assert_eq!(
        serde_json::to_value(&budget.spec.as_ref().unwrap().min_available).unwrap(),
        json!(1)
    );
    eventually(
        Duration::from_secs(30),
        "the budget to allow one disruption",
        || async {
            let status = budgets.get(&release.fullname).await.ok()?.status?;
            (status.current_healthy == Some(2) && status.disruptions_allowed == Some(1))
                .then_some(())
        },
    )
    .await;
    phase("budget allows one");
    // A drain's order: cordon, then evict. The node cordoned, the ReplicaSet's replacement for the
    // first evicted pod cannot become Ready before the second eviction (on this node it would be
    // Ready within seconds, and the budget would rightly allow a second disruption).
    let node = node_env("E2E_NODE_NAME");
    let cordoned = Cordoned::new(&node);
    // A client that does not retry: kube's default one retries a 429 with backoff, and the retried
    // eviction goes through once the replacement pod is Ready.
    let mut config = kube::Config::infer().await.unwrap();
    config.default_retry = false;
    let pod_api = Api::<Pod>::namespaced(kube::Client::try_from(config).unwrap(), &env.namespace);
    pod_api
        .evict(&replacement, &EvictParams::default())
        .await
        .unwrap_or_else(|e| panic!("evicting {replacement}: {e}"));
    match pod_api.evict(&standby, &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 429, "{status:?}"),
        other => panic!(
            "the second eviction should be refused (429), got {other:?}; budget: {:?}",
            budgets.get(&release.fullname).await.unwrap().status
        ),
    }
    drop(cordoned);
    assert!(
        pod_ready(&pod_api.get(&standby).await.unwrap()),
        "the leader still runs"
    );

    phase("evictions done");
    release.uninstall();
    phase("uninstalled");
    env.cleanup().await;
}

/// `helm upgrade` with a changed value rolls the Deployment to a new ReplicaSet, and the new pod
/// keeps reconciling.
#[tokio::test]
async fn helm_upgrade_rolls_the_deployment_and_the_operator_keeps_reconciling() {
    let env = TestEnv::new("node-upgrade").await;
    let store = pod_store(&env).await;
    write_sample_db(&store, PARENT, KEYS, 2).await;
    let release = Release::install(&env, "u", Network::Pod, &[], &[]);
    let before = ready_pods(&env, &release, 1).await;
    let hash = |pod: &Pod| pod.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    kubectl_apply(&env, &checkpoint_yaml(&store, "nightly"));
    wait_checkpoint_ready(&env, "nightly").await;
    kubectl_apply(&env, &clone_yaml("pr-1", "nightly"));
    wait_clone(&env, "pr-1", "Ready", Duration::from_secs(90)).await;

    let started = Instant::now();
    Release::helm(&[
        "upgrade",
        &release.name,
        repo_path("charts/slatedb-operator").to_str().unwrap(),
        "--namespace",
        &env.namespace,
        "--reuse-values",
        "--set",
        "logging.level=debug",
    ]);
    let pods = env.api::<Pod>();
    let params = ListParams::default().labels(&release.selector());
    let after = eventually(
        POD_READY,
        "the rolled pod Ready and the old one gone",
        || async {
            let list = pods.list(&params).await.ok()?.items;
            (list.len() == 1 && pod_ready(&list[0]) && hash(&list[0]) != hash(&before[0]))
                .then_some(list)
        },
    )
    .await;
    eprintln!(
        "node: helm upgrade rolled the operator in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let container = &after[0].spec.as_ref().unwrap().containers[0];
    let rust_log = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "RUST_LOG")
        .and_then(|e| e.value.clone());
    assert_eq!(rust_log.as_deref(), Some("debug"));
    let deployment = env
        .api::<Deployment>()
        .get(&release.fullname)
        .await
        .unwrap();
    assert_eq!(
        deployment.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"],
        "2"
    );
    let sets = env
        .api::<ReplicaSet>()
        .list(&ListParams::default().labels(&release.selector()))
        .await
        .unwrap()
        .items;
    assert_eq!(sets.len(), 2, "the old ReplicaSet and the new one");
    let old = sets
        .iter()
        .find(|s| s.metadata.labels.as_ref().unwrap()["pod-template-hash"] == hash(&before[0]))
        .unwrap();
    assert_eq!(old.spec.replicas, Some(0));

    kubectl_apply(&env, &clone_yaml("pr-2", "nightly"));
    wait_clone(&env, "pr-2", "Ready", Duration::from_secs(90)).await;
    assert_all_rows(&store, "clones/pr-2", KEYS).await;
    release.uninstall();
    env.cleanup().await;
}
