//! Issue 6, benchmark 3 (operator on the e2e control plane): N DatabaseClones of one checkpoint
//! created at once, against the API server's own throughput measured in the same run (N plain
//! ConfigMaps, and the same N DatabaseClone creates with no operator watching).
//!
//! Measures the time until all clones are Ready, clones/s, the API server's write requests per
//! clone (deltas of `apiserver_request_total` from the API server's `/metrics`, broken down by
//! resource, verb and code) and the operator's peak RSS (`VmHWM`) and CPU time.
//!
//! Needs the e2e cluster's environment (`source <(e2e/cluster.sh env)`: `KUBECONFIG`,
//! `E2E_KUBECTL`, `E2E_S3_*`); `benches/run.sh` starts a private cluster when none is given.
//! Prints markdown on stdout and progress on stderr.
//!
//! First, benchmark 1 through the operator: one DatabaseClone at a time, create→Ready, against
//! `cp -r` of the same parent (10 MiB and 100 MiB; 1 GiB with `BENCH_FULL=1`; `BENCH_APPLY_REPS`).
//!
//! Knobs: `BENCH_CLONES` (default 100, 500 with `BENCH_FULL=1`), `BENCH_STORES` (`file,s3`),
//! `BENCH_CREATE_CONCURRENCY` (creates in flight, default 16), `BENCH_CLONE_CONCURRENCY` (the
//! operator's `--clone-concurrency`, default its own 8), `BENCH_READY_TIMEOUT_SECS` (default 900),
//! `BENCH_OPERATOR_BIN` (default the release binary cargo built with the bench),
//! `BENCH_SKIP_CLEANUP=1` (leave the namespaces; for a throw-away cluster), `BENCH_DEADLINE_SECS`,
//! `BENCH_RESTART_CLONES` (Ready clones an operator is restarted with; default 1 000, 10 000 with
//! `BENCH_FULL=1`, 0 skips it), `BENCH_RESTART_PARENTS` (databases they are spread over; default one
//! per 100 clones), `BENCH_OPERATOR_LOG` (the operator's `RUST_LOG`, e.g. with `kube_client=debug`
//! for a timeline of its API requests; the work directory is kept when `BENCH_KEEP_WORK=1`).

#[path = "common/mod.rs"]
mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseClone};
use slatedb_operator::crds::install_crds;
use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const PARENT_PATH: &str = "prod/orders";
const PARENT_KEYS: usize = 10_000;
const PARENT_SSTS: usize = 5;
const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "APPLY",
    "DELETECOLLECTION",
];

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: this bench needs the e2e control plane. Run it through \
             benches/run.sh, or `e2e/cluster.sh up && source <(e2e/cluster.sh env)` first"
        )
    })
}

// ---- the API server's request counters ------------------------------------------------------

/// `(resource[/subresource], verb, code)` → count, write verbs only.
type Counters = BTreeMap<(String, String, String), u64>;

fn scrape_writes() -> Counters {
    scrape(&WRITE_VERBS)
}

/// The API server's read requests (GET, LIST), by resource.
fn scrape_reads() -> Counters {
    scrape(&["GET", "LIST"])
}

/// The API server's `/metrics` text.
fn apiserver_metrics() -> String {
    let output = Command::new(required_env("E2E_KUBECTL"))
        .args(["get", "--raw", "/metrics"])
        .output()
        .expect("running kubectl get --raw /metrics");
    assert!(
        output.status.success(),
        "kubectl get --raw /metrics: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn scrape(verbs: &[&str]) -> Counters {
    let text = apiserver_metrics();
    let mut counters = Counters::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let mut map = HashMap::new();
        for pair in labels.split("\",") {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k, v.trim_end_matches('"'));
            }
        }
        let verb = map.get("verb").copied().unwrap_or("");
        if !verbs.contains(&verb) {
            continue;
        }
        let mut resource = map.get("resource").copied().unwrap_or("").to_string();
        if let Some(group) = map.get("group").filter(|g| !g.is_empty()) {
            resource = format!("{resource}.{group}");
        }
        if let Some(sub) = map.get("subresource").filter(|s| !s.is_empty()) {
            resource = format!("{resource}/{sub}");
        }
        let code = map.get("code").copied().unwrap_or("").to_string();
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *counters
            .entry((resource, verb.to_string(), code))
            .or_default() += value as u64;
    }
    counters
}

fn delta(before: &Counters, after: &Counters) -> Counters {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(*before.get(k).unwrap_or(&0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Resources the clone workload writes (ours, and events); anything else (leases the API server
/// renews, …) is background and listed apart.
fn is_ours(resource: &str) -> bool {
    [
        "databaseclones",
        "databasecheckpoints",
        "events",
        "configmaps",
    ]
    .iter()
    .any(|r| resource.starts_with(r))
}

fn total(counters: &Counters, ours: bool) -> u64 {
    counters
        .iter()
        .filter(|((r, _, _), _)| is_ours(r) == ours)
        .map(|(_, v)| v)
        .sum()
}

/// Scrapes until the write counters of our resources have not moved for `quiet`, at most `max`.
fn scrape_when_quiet(quiet: Duration, max: Duration) -> (Counters, f64) {
    let started = Instant::now();
    let mut last = scrape_writes();
    let mut last_change = Instant::now();
    while started.elapsed() < max {
        std::thread::sleep(Duration::from_millis(500));
        let now = scrape_writes();
        if total(&now, true) != total(&last, true) {
            last_change = Instant::now();
        }
        last = now;
        if last_change.elapsed() >= quiet {
            break;
        }
    }
    (last, started.elapsed().as_secs_f64())
}

// ---- the operator's identity -----------------------------------------------------------------

/// The kubeconfig every operator this bench starts uses (see [`operator_identity`]).
static OPERATOR_KUBECONFIG: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Whether the operator runs in the chart's API priority level (`BENCH_APF`, default 1).
fn apf_enabled() -> bool {
    std::env::var("BENCH_APF").as_deref() != Ok("0")
}

/// Names of the cluster-scoped objects [`operator_identity`] makes, for [`cleanup`].
fn identity_name(tag: &str) -> String {
    format!("bench-slatedb-operator-{tag}")
}

/// The operator's identity as the chart deploys it: its own ServiceAccount in namespace `ns`
/// (bound to cluster-admin here; the e2e tests check the chart's RBAC), and, unless `BENCH_APF=0`,
/// the chart's API Priority and Fairness objects (`helm template --show-only
/// templates/flowcontrol.yaml`). The bench's own requests stay the cluster admin's. Returns a
/// kubeconfig holding a token of the account.
async fn operator_identity(
    client: &Client,
    ns: &str,
    tag: &str,
    work: &std::path::Path,
) -> std::path::PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
    let account = "slatedb-operator";
    let name = identity_name(tag);
    create_namespace(client, ns).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": account}})).unwrap();
    accounts
        .create(&PostParams::default(), &sa)
        .await
        .unwrap_or_else(|e| panic!("creating the operator's ServiceAccount: {e}"));
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"slatedb.io/bench": "operator-scale"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap_or_else(|e| panic!("binding the operator's ServiceAccount: {e}"));
    if apf_enabled() {
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/slatedb-operator");
        let rendered = Command::new(required_env("E2E_HELM"))
            .args(["template", "bench", chart, "--namespace", ns])
            .args(["--show-only", "templates/flowcontrol.yaml"])
            .args(["--set", &format!("fullnameOverride={name}")])
            .args(["--set", &format!("serviceAccount.name={account}")])
            .output()
            .expect("running helm template");
        assert!(
            rendered.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let mut apply = Command::new(required_env("E2E_KUBECTL"))
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("running kubectl apply");
        use std::io::Write;
        apply
            .stdin
            .take()
            .unwrap()
            .write_all(&rendered.stdout)
            .unwrap();
        assert!(
            apply.wait().unwrap().success(),
            "kubectl apply of the chart's flowcontrol objects failed"
        );
        OPERATOR_LEVEL
            .set(name.clone())
            .expect("one operator identity");
    }
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 6 * 3600}})).unwrap();
    let token = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for the operator's ServiceAccount: {e}"))
        .status
        .and_then(|status| status.token)
        .expect("a TokenRequest answer holds a token");
    let mut kubeconfig = kube::config::Kubeconfig::read_from(required_env("KUBECONFIG"))
        .expect("reading KUBECONFIG");
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    let path = work.join("operator.kubeconfig");
    std::fs::write(&path, serde_json::to_vec(&kubeconfig).unwrap()).unwrap();
    path
}

/// Deletes what [`operator_identity`] made outside its namespace.
fn delete_identity(tag: &str, ns: &str) {
    let name = identity_name(tag);
    for (kind, names) in [
        ("namespace", vec![ns.to_string()]),
        ("clusterrolebinding", vec![name.clone()]),
        (
            "flowschema",
            vec![name.clone(), format!("{name}-leader-election")],
        ),
        ("prioritylevelconfiguration", vec![name.clone()]),
    ] {
        let _ = Command::new(required_env("E2E_KUBECTL"))
            .args(["delete", "--ignore-not-found", kind])
            .args(names)
            .stdout(Stdio::null())
            .status();
    }
}

/// The chart's priority level the bench's operator runs in, when it does.
static OPERATOR_LEVEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// `(dispatched, rejected)` requests of the operator's priority level so far, from the API
/// server's `/metrics`; `None` without one (`BENCH_APF=0`).
fn apf_counts() -> Option<(u64, u64)> {
    let level = OPERATOR_LEVEL.get()?;
    let metrics = apiserver_metrics();
    let level = format!("priority_level=\"{level}\"");
    let mut counts = (0, 0);
    for line in metrics.lines() {
        if !line.contains(&level) {
            continue;
        }
        let value = line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if line.starts_with("apiserver_flowcontrol_dispatched_requests_total{") {
            counts.0 += value;
        } else if line.starts_with("apiserver_flowcontrol_rejected_requests_total{") {
            counts.1 += value;
        }
    }
    Some(counts)
}

// ---- the operator process --------------------------------------------------------------------

struct Operator {
    child: Child,
    log: std::path::PathBuf,
}

impl Operator {
    fn start(namespaces: &str, log: std::path::PathBuf) -> Operator {
        Operator::start_with(namespaces, log, &[])
    }

    /// Like [`Operator::start`], with `extra` arguments (among them perhaps `--http-port`, which
    /// is off otherwise).
    fn start_with(namespaces: &str, log: std::path::PathBuf, extra: &[&str]) -> Operator {
        let bin = std::env::var("BENCH_OPERATOR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_slatedb-operator").to_string());
        let file = std::fs::File::create(&log).expect("operator log");
        let mut cmd = Command::new(&bin);
        cmd.args(["--log-format", "json", "run", "--namespaces", namespaces])
            .args(["--admin-timeout-seconds", "30", "--allow-local-stores"]);
        if !extra.contains(&"--http-port") {
            cmd.args(["--http-port", "0"]);
        }
        if let Ok(c) = std::env::var("BENCH_CLONE_CONCURRENCY") {
            cmd.args(["--clone-concurrency", &c]);
        }
        cmd.args(extra);
        if let Some(kubeconfig) = OPERATOR_KUBECONFIG.get() {
            cmd.env("KUBECONFIG", kubeconfig);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("BENCH_OPERATOR_LOG")
                    .unwrap_or_else(|_| "info,slatedb=warn,slatedb_operator=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        Operator { child, log }
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// User + system CPU seconds of the operator so far.
    fn cpu_secs(&self) -> f64 {
        cpu_secs_of(&self.child.id().to_string())
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- cluster helpers -------------------------------------------------------------------------

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"slatedb.io/bench": "operator-scale"}}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

fn clone_object(name: &str) -> DatabaseClone {
    serde_json::from_value(json!({
        "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
        "metadata": {"name": name},
        "spec": {"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": format!("clones/{name}")}}
    }))
    .unwrap()
}

/// Whether DatabaseCheckpoint `name` is Ready now.
async fn checkpoint_ready(checkpoints: &Api<DatabaseCheckpoint>, name: &str) -> bool {
    checkpoints
        .get(name)
        .await
        .ok()
        .and_then(|c| c.status)
        .is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Whether the operator is done with checkpoint `name`'s side of its clones: its status counts
/// `dependents` and it holds no protection finalizer (which it holds while a clone is being made).
async fn checkpoint_settled(
    checkpoints: &Api<DatabaseCheckpoint>,
    name: &str,
    dependents: i32,
) -> bool {
    checkpoints.get(name).await.ok().is_some_and(|c| {
        !c.finalizers()
            .iter()
            .any(|f| f == slatedb_operator::controller::checkpoint::PROTECTION_FINALIZER)
            && c.status.and_then(|s| s.dependents) == Some(dependents)
    })
}

fn is_condition(status: Option<&slatedb_operator::api::DatabaseCloneStatus>, type_: &str) -> bool {
    status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

/// Creates `n` objects with `make(i)` through `create`, `concurrency` in flight; returns the wall
/// seconds and the instant each create returned.
async fn create_all<K, F>(
    api: &Api<K>,
    n: usize,
    concurrency: usize,
    make: F,
) -> (f64, Vec<Instant>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    F: Fn(usize) -> K,
{
    let started = Instant::now();
    let objects: Vec<K> = (0..n).map(make).collect();
    let done: Vec<Instant> = futures::stream::iter(objects)
        .map(|object| async move {
            api.create(&PostParams::default(), &object)
                .await
                .unwrap_or_else(|e| panic!("create: {e}"));
            Instant::now()
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (started.elapsed().as_secs_f64(), done)
}

// ---- one measured run ------------------------------------------------------------------------

struct Baseline {
    label: String,
    n: usize,
    create_secs: f64,
    writes: Counters,
}

/// User + system CPU seconds of process `pid` (or `self`) so far (`/proc/<pid>/stat`, 100 Hz
/// ticks); 0 once it is gone.
fn cpu_secs_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // After the name: state is field 0, utime field 11, stime field 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// The processes that share the machine during a burst, besides the operator: the test bed's
/// (from the pid files `e2e/cluster.sh` keeps in `E2E_STATE_DIR`) and this bench.
const BURST_PROCESSES: [&str; 5] = ["kube-apiserver", "etcd", "s3s-fs", "e2e-s3-gate", "bench"];

/// CPU seconds so far of each of [`BURST_PROCESSES`].
fn burst_cpu() -> Vec<f64> {
    let state = std::env::var("E2E_STATE_DIR").unwrap_or_default();
    BURST_PROCESSES
        .iter()
        .map(|name| match *name {
            "bench" => cpu_secs_of("self"),
            _ => std::fs::read_to_string(format!("{state}/{name}.pid"))
                .map(|pid| cpu_secs_of(pid.trim()))
                .unwrap_or(0.0),
        })
        .collect()
}

struct OperatorRun {
    store: &'static str,
    n: usize,
    create_secs: f64,
    first_ready: f64,
    all_ready: Option<f64>,
    ready: usize,
    stalled: Vec<String>,
    latency: Option<(f64, f64, f64)>,
    writes_at_ready: Counters,
    writes: Counters,
    settle_secs: f64,
    idle_rss_mib: f64,
    peak_rss_mib: f64,
    cpu_secs: f64,
    /// Checkpoints the parent accepted per second, made one after another from this process
    /// after the clones were Ready: the rate at which its manifest takes writes (the floor of a
    /// design in which each clone writes the parent's manifest once).
    parent_checkpoints_per_sec: f64,
    /// From the first create until every clone was Ready (or the wait ended): wall seconds, the
    /// operator's CPU seconds, and those of each of [`BURST_PROCESSES`].
    burst: (f64, f64, Vec<f64>),
    /// The operator's requests its priority level dispatched and rejected during the burst.
    apf: Option<(u64, u64)>,
    /// Seconds from deleting every clone at once until the last is gone (`None`: not all within
    /// the timeout), and how many were gone.
    delete_secs: Option<f64>,
    deleted: usize,
    /// Admin calls the operator's log reports as timed out during the deletion.
    delete_timeouts: usize,
    /// Per clone phase (as the operator logs them on finishing), the milliseconds of each run.
    phases: Vec<(String, Vec<f64>)>,
    log: std::path::PathBuf,
}

/// The API server's floor for a controller: one in this process that sets `Ready` on every
/// DatabaseClone it sees, at once (create, watch event, one status write).
struct NoopRun {
    /// apply→Ready of one object at a time, seconds, seen by the same 10 ms poll as the
    /// operator's.
    single_secs: Vec<f64>,
    /// Where each single apply→Ready went: (create sent → the watch delivered it, → its status
    /// write answered, → the poll saw Ready), seconds.
    single_steps: Vec<[f64; 3]>,
    /// `n` objects created at once (same creates in flight as the operator runs): seconds until
    /// the last Ready is seen by a watch.
    all_ready_secs: f64,
    n: usize,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn baseline_configmaps(client: &Client, ns: &str, n: usize, conc: usize) -> Baseline {
    create_namespace(client, ns).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = scrape_writes();
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let (secs, _) = create_all(&api, n, conc, |i| {
        serde_json::from_value(
            json!({"metadata": {"name": format!("cm-{i:04}")}, "data": {"k": "v"}}),
        )
        .unwrap()
    })
    .await;
    let after = scrape_writes();
    Baseline {
        label: format!("{n} ConfigMap creates"),
        n,
        create_secs: secs,
        writes: delta(&before, &after),
    }
}

async fn baseline_clones(client: &Client, ns: &str, n: usize, conc: usize) -> Baseline {
    create_namespace(client, ns).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = scrape_writes();
    let api: Api<DatabaseClone> = Api::namespaced(client.clone(), ns);
    let (secs, _) = create_all(&api, n, conc, |i| clone_object(&format!("c-{i:04}"))).await;
    let after = scrape_writes();
    Baseline {
        label: format!("{n} DatabaseClone creates, no operator"),
        n,
        create_secs: secs,
        writes: delta(&before, &after),
    }
}

async fn operator_run(
    client: &Client,
    ns: &str,
    store_kind: &'static str,
    n: usize,
    conc: usize,
    work: &std::path::Path,
) -> OperatorRun {
    create_namespace(client, ns).await;
    // The store: a directory of its own, or a prefix of the S3 test server's bucket.
    let (url, options) = match store_kind {
        "file" => {
            let dir = work.join(format!("store-{ns}"));
            std::fs::create_dir_all(&dir).unwrap();
            (format!("file://{}", dir.display()), BTreeMap::new())
        }
        _ => {
            let options: BTreeMap<String, String> = [
                ("AWS_ACCESS_KEY_ID", required_env("E2E_S3_ACCESS_KEY")),
                ("AWS_SECRET_ACCESS_KEY", required_env("E2E_S3_SECRET_KEY")),
                ("AWS_ENDPOINT", required_env("E2E_S3_ENDPOINT")),
                ("AWS_ALLOW_HTTP", "true".to_string()),
                ("AWS_REGION", "us-east-1".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            (
                format!("s3://{}/{ns}", required_env("E2E_S3_BUCKET")),
                options,
            )
        }
    };
    let store_spec = if options.is_empty() {
        json!({"url": url})
    } else {
        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": "store-credentials"}, "stringData": options}),
        )
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .expect("creating the store Secret");
        json!({"url": url, "secretRef": {"name": "store-credentials"}})
    };
    let store = slatedb_operator::engine::Store::open(&slatedb_operator::engine::StoreConfig {
        url: url.clone(),
        options: options.clone(),
        ..Default::default()
    })
    .expect("opening the store");
    slatedb_operator::engine::sample::write_sample_db(
        &store,
        PARENT_PATH,
        PARENT_KEYS,
        PARENT_SSTS,
    )
    .await
    .expect("writing the parent database");

    let mut operator = Operator::start(ns, work.join(format!("operator-{ns}.log")));
    let checkpoints: Api<DatabaseCheckpoint> = Api::namespaced(client.clone(), ns);
    let checkpoint: DatabaseCheckpoint = serde_json::from_value(json!({
        "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint",
        "metadata": {"name": "nightly"},
        "spec": {"database": {"store": store_spec, "path": PARENT_PATH}}
    }))
    .unwrap();
    checkpoints
        .create(&PostParams::default(), &checkpoint)
        .await
        .expect("creating the checkpoint");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if checkpoint_ready(&checkpoints, "nightly").await {
            break;
        }
        assert!(
            operator.alive(),
            "the operator exited; see {}",
            operator.log.display()
        );
        assert!(
            Instant::now() < deadline,
            "checkpoint nightly not Ready within 120 s; see {}",
            operator.log.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let the operator settle (its watches synced, the checkpoint's last status written).
    let (before, _) = scrape_when_quiet(Duration::from_secs(3), Duration::from_secs(20));
    let idle_rss_mib = operator.status_kib("VmRSS:") as f64 / 1024.0;
    let cpu_before = operator.cpu_secs();

    // Watch the clones, so Ready is seen when it is written (not at the next poll).
    let clones: Api<DatabaseClone> = Api::namespaced(client.clone(), ns);
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, bool, Instant)>();
    let watch_api = clones.clone();
    let watch = tokio::spawn(async move {
        let mut stream = watcher(watch_api, watcher::Config::default()).boxed();
        while let Ok(Some(event)) = stream.try_next().await {
            let object = match event {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => o,
                _ => continue,
            };
            let status = object.status.as_ref();
            if is_condition(status, "Ready") {
                let _ = ready_tx.send((object.name_any(), true, Instant::now()));
            } else if is_condition(status, "Stalled") {
                let _ = ready_tx.send((object.name_any(), false, Instant::now()));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    eprintln!("operator_scale: {store_kind}: creating {n} DatabaseClones");
    let (burst_operator_before, burst_before) = (operator.cpu_secs(), burst_cpu());
    let apf_before = apf_counts();
    let started = Instant::now();
    let (create_secs, created_at) =
        create_all(&clones, n, conc, |i| clone_object(&format!("c-{i:04}"))).await;
    // Creates complete in an unknown order: take each clone's creation as the median return.
    let mut created_sorted: Vec<f64> = created_at
        .iter()
        .map(|t| t.duration_since(started).as_secs_f64())
        .collect();
    created_sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());

    let timeout = Duration::from_secs(env_usize("BENCH_READY_TIMEOUT_SECS", 900) as u64);
    let mut ready_at: HashMap<String, f64> = HashMap::new();
    let mut stalled: HashMap<String, f64> = HashMap::new();
    while ready_at.len() + stalled.len() < n && started.elapsed() < timeout {
        match tokio::time::timeout(Duration::from_secs(5), ready_rx.recv()).await {
            Ok(Some((name, ok, at))) => {
                let t = at.duration_since(started).as_secs_f64();
                if ok {
                    stalled.remove(&name);
                    ready_at.entry(name).or_insert(t);
                } else if !ready_at.contains_key(&name) {
                    stalled.entry(name).or_insert(t);
                }
            }
            Ok(None) => break,
            Err(_) => {
                if !operator.alive() {
                    eprintln!("operator_scale: the operator exited");
                    break;
                }
                eprintln!(
                    "operator_scale: {store_kind}: {} Ready, {} Stalled after {:.0} s",
                    ready_at.len(),
                    stalled.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    let burst = (
        started.elapsed().as_secs_f64(),
        operator.cpu_secs() - burst_operator_before,
        burst_cpu()
            .iter()
            .zip(&burst_before)
            .map(|(after, before)| after - before)
            .collect(),
    );
    let apf = apf_counts()
        .zip(apf_before)
        .map(|(after, before)| (after.0 - before.0, after.1 - before.1));
    let writes_at_ready = delta(&before, &scrape_writes());
    let all_ready = (ready_at.len() == n).then(|| ready_at.values().cloned().fold(0.0, f64::max));
    let first_ready = ready_at.values().cloned().fold(f64::INFINITY, f64::min);
    watch.abort();
    eprintln!(
        "operator_scale: {store_kind}: {} Ready, {} Stalled; waiting for the writes to stop",
        ready_at.len(),
        stalled.len()
    );
    let (after, settle_secs) = scrape_when_quiet(Duration::from_secs(10), Duration::from_secs(90));
    let peak_rss_mib = operator.status_kib("VmHWM:") as f64 / 1024.0;
    let cpu_secs = operator.cpu_secs() - cpu_before;

    // Latency from creation to Ready: clone i's create returned at created_at[?]; the creates
    // complete in an unknown order, so pair the k-th Ready with the k-th create return.
    let mut ready_sorted: Vec<f64> = ready_at.values().cloned().collect();
    ready_sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let latency = (!ready_sorted.is_empty()).then(|| {
        let mut per: Vec<f64> = ready_sorted
            .iter()
            .zip(created_sorted.iter())
            .map(|(r, c)| (r - c).max(0.0))
            .collect();
        per.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (pct(&per, 0.5), pct(&per, 0.99), pct(&per, 1.0))
    });
    let mut stalled_names: Vec<String> = stalled.into_keys().collect();
    stalled_names.sort();
    if !stalled_names.is_empty() {
        for name in stalled_names.iter().take(3) {
            if let Ok(o) = clones.get(name).await {
                eprintln!("operator_scale: stalled {name}: {:?}", o.status);
            }
        }
    }
    let parent_checkpoints_per_sec = sequential_checkpoint_rate(&store).await;
    let log = work.join(format!("operator-{ns}.log"));
    let phases = phase_profile(&log);
    let timeouts_before = timeouts_in(&log);
    let (delete_secs, deleted) =
        delete_all_at_once(&clones, n, deletion_wait(n, parent_checkpoints_per_sec)).await;
    let delete_timeouts = timeouts_in(&log).saturating_sub(timeouts_before);
    drop(operator);
    OperatorRun {
        store: store_kind,
        n,
        create_secs,
        first_ready,
        all_ready,
        ready: ready_at.len(),
        stalled: stalled_names,
        latency,
        writes_at_ready,
        writes: delta(&before, &after),
        settle_secs,
        idle_rss_mib,
        peak_rss_mib,
        cpu_secs,
        parent_checkpoints_per_sec,
        burst,
        apf,
        delete_secs,
        deleted,
        delete_timeouts,
        phases,
        log,
    }
}

/// The phases of every clone run the operator's log reports (`clone work finished`,
/// `phases_ms="name=ms,..."`), in the order they run.
fn phase_profile(log: &std::path::Path) -> Vec<(String, Vec<f64>)> {
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if entry["message"] != "clone work finished" {
            continue;
        }
        for pair in entry["phases_ms"].as_str().unwrap_or_default().split(',') {
            let Some((name, ms)) = pair.split_once('=') else {
                continue;
            };
            let Ok(ms) = ms.parse::<f64>() else { continue };
            match phases.iter_mut().find(|(n, _)| n == name) {
                Some((_, all)) => all.push(ms),
                None => phases.push((name.to_string(), vec![ms])),
            }
        }
    }
    phases
}

/// The engine's time of every clone run the operator's log reports (`clone work finished`,
/// `duration_ms`), seconds, in the order they finished.
fn work_durations(log: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["message"] == "clone work finished")
        .filter_map(|entry| entry["duration_ms"].as_f64())
        .map(|ms| ms / 1e3)
        .collect()
}

/// When the operator logged each line with `message`, in the log's order.
fn logged_at(log: &std::path::Path, message: &str) -> Vec<SystemTime> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry["message"] == message)
        .filter_map(|entry| {
            chrono::DateTime::parse_from_rfc3339(entry["timestamp"].as_str()?)
                .ok()
                .map(SystemTime::from)
        })
        .collect()
}

/// Seconds from `earlier` to `later` on the wall clock (negative when `later` came first).
fn secs_between(earlier: SystemTime, later: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// Checkpoints per second the parent accepts one after another (each writes its manifest once),
/// each deleted again: the manifest-write floor, in the same run as the clones.
async fn sequential_checkpoint_rate(store: &slatedb_operator::engine::Store) -> f64 {
    const ROUNDS: usize = 20;
    let parent = slatedb_operator::engine::Database::new(
        store.clone(),
        PARENT_PATH,
        Duration::from_secs(30),
    );
    let started = Instant::now();
    for i in 0..ROUNDS {
        let (checkpoint, _) = parent
            .obtain_checkpoint(&format!("bench-floor-{i}"), None)
            .await
            .expect("a checkpoint of the parent");
        parent
            .delete_checkpoint(checkpoint.id)
            .await
            .expect("deleting the bench checkpoint");
    }
    // Each round writes the manifest twice (add, remove).
    (2 * ROUNDS) as f64 / started.elapsed().as_secs_f64()
}

/// A client with the operator's identity ([`operator_identity`]).
async fn operator_client() -> Client {
    let path = OPERATOR_KUBECONFIG
        .get()
        .expect("the operator's identity is made first");
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("the operator's kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a client config from the operator's kubeconfig");
    Client::try_from(config).expect("a client with the operator's identity")
}

/// Runs the no-op controller in namespace `ns`, as `identity` (its watch and status writes; the
/// creates and polls are `client`'s), and measures it: `reps` single applies, then `n` at once
/// (none when `n` is 0).
async fn noop_controller(
    client: &Client,
    identity: Client,
    ns: &str,
    reps: usize,
    n: usize,
    conc: usize,
) -> NoopRun {
    create_namespace(client, ns).await;
    let clones: Api<DatabaseClone> = Api::namespaced(client.clone(), ns);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    // (name, when the watch delivered it, when its status write answered)
    let (wrote_tx, mut wrote_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, SystemTime, SystemTime)>();
    let writer: Api<DatabaseClone> = Api::namespaced(identity, ns);
    let controller = tokio::spawn(async move {
        let mut stream = watcher(writer.clone(), watcher::Config::default()).boxed();
        while let Ok(Some(event)) = stream.try_next().await {
            let (watcher::Event::Apply(object) | watcher::Event::InitApply(object)) = event else {
                continue;
            };
            if is_condition(object.status.as_ref(), "Ready") {
                let _ = ready_tx.send(Instant::now());
                continue;
            }
            let seen = SystemTime::now();
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let status = json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
                "status": {"observedGeneration": object.metadata.generation,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                                    "message": "no-op", "lastTransitionTime": now}]}});
            let (writer, wrote_tx) = (writer.clone(), wrote_tx.clone());
            // Concurrent, as a controller's reconciles are.
            tokio::spawn(async move {
                let _ = writer
                    .patch_status(
                        &object.name_any(),
                        &PatchParams::apply("noop-controller").force(),
                        &Patch::Apply(&status),
                    )
                    .await;
                let _ = wrote_tx.send((object.name_any(), seen, SystemTime::now()));
            });
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut single_secs = Vec::new();
    let mut single_steps = Vec::new();
    for rep in 0..reps {
        let name = format!("single-{rep}");
        let created = SystemTime::now();
        let started = Instant::now();
        clones
            .create(&PostParams::default(), &clone_object(&name))
            .await
            .expect("creating a clone");
        loop {
            let ready = clones
                .get(&name)
                .await
                .is_ok_and(|c| is_condition(c.status.as_ref(), "Ready"));
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the no-op controller is stuck"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        single_secs.push(started.elapsed().as_secs_f64());
        let ready_seen = SystemTime::now();
        while let Ok((written_name, seen, written)) = wrote_rx.try_recv() {
            if written_name == name {
                single_steps.push([
                    secs_between(created, seen),
                    secs_between(seen, written),
                    secs_between(written, ready_seen),
                ]);
            }
        }
    }
    while ready_rx.try_recv().is_ok() {}
    let started = Instant::now();
    if n > 0 {
        create_all(&clones, n, conc, |i| clone_object(&format!("c-{i:04}"))).await;
    }
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await {
            Ok(Some(_)) => seen += 1,
            _ => panic!("the no-op controller saw {seen} of {n} Ready"),
        }
    }
    let all_ready_secs = started.elapsed().as_secs_f64();
    controller.abort();
    NoopRun {
        single_secs,
        single_steps,
        all_ready_secs,
        n,
    }
}

/// An operator restarted with `n` Ready clones (issue 14): what it writes and reads while it
/// settles, how long that takes, its memory and CPU, and how soon every clone is re-checked.
struct RestartRun {
    n: usize,
    /// The databases (each with one checkpoint) the clones are spread over.
    parents: usize,
    /// Seconds from the first create until all `n` were Ready (the first operator).
    all_ready_secs: f64,
    /// Seconds from the new process's start until it had reconciled every clone and then
    /// nothing for 3 s (its own `reconciles_total`).
    settle_secs: f64,
    /// API-server writes on our resources between the restart and settling.
    writes: Counters,
    /// API-server reads (GET, LIST) of DatabaseClones and of everything, per clone, meanwhile.
    clone_reads_per_clone: f64,
    reads_per_clone: f64,
    peak_rss_mib: f64,
    cpu_secs: f64,
    /// The health-check period and the seconds after the restart until every clone had been
    /// checked once (`None`: not within the period plus 30 s).
    period_secs: u64,
    rechecked_secs: Option<f64>,
    /// Reads of DatabaseClones, per clone, caused by one change of the checkpoint they were all
    /// made from: an annotation, then a status change.
    reads_per_annotation: f64,
    reads_per_status_change: f64,
}

/// One counter of the operator's `/metrics` on `port` (0 when absent).
fn operator_metric(port: u16, series: &str) -> f64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0.0;
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn sum_of(counters: &Counters, resource: Option<&str>) -> u64 {
    counters
        .iter()
        .filter(|((r, _, _), _)| resource.is_none_or(|want| r == want))
        .map(|(_, v)| v)
        .sum()
}

async fn restart_run(
    client: &Client,
    ns: &str,
    n: usize,
    conc: usize,
    work: &std::path::Path,
) -> RestartRun {
    const PERIOD: u64 = 60;
    create_namespace(client, ns).await;
    let dir = work.join(format!("store-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("file://{}", dir.display());
    let store = slatedb_operator::engine::Store::open(&slatedb_operator::engine::StoreConfig {
        url: url.clone(),
        ..Default::default()
    })
    .expect("opening the store");
    // The clones are spread over `parents` databases: each clone holds a final checkpoint in its
    // parent's manifest, so 10 000 clones of one parent make every manifest read and write of that
    // parent 10 000 checkpoints long (SlateDB's design; the issue-14 notes in RESULTS.md).
    let parents = env_usize("BENCH_RESTART_PARENTS", n.div_ceil(100)).clamp(1, n.max(1));
    for p in 0..parents {
        slatedb_operator::engine::sample::write_sample_db(&store, &format!("prod/db-{p}"), 100, 1)
            .await
            .expect("writing a parent database");
    }
    let period = PERIOD.to_string();
    let checks = ["--health-check-seconds", period.as_str()];
    let first = Operator::start_with(ns, work.join(format!("operator-{ns}-first.log")), &checks);
    let checkpoints: Api<DatabaseCheckpoint> = Api::namespaced(client.clone(), ns);
    for p in 0..parents {
        let checkpoint: DatabaseCheckpoint = serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint",
            "metadata": {"name": format!("nightly-{p}")},
            "spec": {"database": {"store": {"url": url}, "path": format!("prod/db-{p}")}}
        }))
        .unwrap();
        checkpoints
            .create(&PostParams::default(), &checkpoint)
            .await
            .expect("creating a checkpoint");
    }
    let clones: Api<DatabaseClone> = Api::namespaced(client.clone(), ns);
    // Counted page by page: one LIST of 10 000 clones is tens of MB.
    let all_ready = |clones: Api<DatabaseClone>| async move {
        let mut ready = 0;
        let mut params = ListParams::default().limit(500);
        loop {
            let page = match clones.list(&params).await {
                Ok(page) => page,
                Err(error) => {
                    eprintln!("operator_scale: restart: listing the clones: {error}");
                    return None;
                }
            };
            ready += page
                .items
                .iter()
                .filter(|c| is_condition(c.status.as_ref(), "Ready"))
                .count();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Some(ready),
            }
        }
    };
    for p in 0..parents {
        while !checkpoint_ready(&checkpoints, &format!("nightly-{p}")).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("operator_scale: restart: creating {n} clones of {parents} checkpoints");
    let started = Instant::now();
    create_all(&clones, n, conc, |i| {
        let mut clone = clone_object(&format!("c-{i:05}"));
        clone.spec.source.checkpoint_ref = Some(slatedb_operator::api::CheckpointRef {
            name: format!("nightly-{}", i % parents),
        });
        clone
    })
    .await;
    let timeout = Duration::from_secs(env_usize("BENCH_READY_TIMEOUT_SECS", 1800) as u64);
    let mut ready = 0;
    while ready < n {
        ready = all_ready(clones.clone()).await.unwrap_or(ready);
        assert!(
            started.elapsed() < timeout,
            "restart: only {ready} of {n} clones Ready"
        );
        eprintln!(
            "operator_scale: restart: {ready} of {n} Ready after {:.0} s",
            started.elapsed().as_secs_f64()
        );
        if ready < n {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
    let all_ready_secs = started.elapsed().as_secs_f64();
    drop(first);
    tokio::time::sleep(Duration::from_secs(3)).await;

    eprintln!("operator_scale: restart: restarting the operator with {n} Ready clones");
    let (writes_before, reads_before) = (scrape_writes(), scrape_reads());
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let port_text = port.to_string();
    let mut args = checks.to_vec();
    args.extend(["--http-port", port_text.as_str()]);
    let restarted_at = Instant::now();
    let mut second =
        Operator::start_with(ns, work.join(format!("operator-{ns}-second.log")), &args);
    let reconciles = "slatedb_operator_reconciles_total{kind=\"DatabaseClone\"}";
    let (mut last, mut last_change) = (0.0, Instant::now());
    let settle_secs = loop {
        let now = operator_metric(port, reconciles);
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        if now >= n as f64 && last_change.elapsed() >= Duration::from_secs(3) {
            break last_change.duration_since(restarted_at).as_secs_f64();
        }
        assert!(second.alive(), "the restarted operator exited");
        assert!(
            restarted_at.elapsed() < timeout,
            "the restarted operator reconciled {now} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let writes = delta(&writes_before, &scrape_writes());
    let reads = delta(&reads_before, &scrape_reads());
    let (peak_rss_mib, cpu_secs) = (
        second.status_kib("VmHWM:") as f64 / 1024.0,
        second.cpu_secs(),
    );
    let rechecked_secs = loop {
        if operator_metric(port, "slatedb_operator_health_checks_total") >= n as f64 {
            break Some(restarted_at.elapsed().as_secs_f64());
        }
        if restarted_at.elapsed() > Duration::from_secs(PERIOD + 30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Read amplification of one change of the first checkpoint (its clones are n / parents), in a
    // window no health-check round starts in (rounds start at wall-clock multiples of PERIOD).
    let into_round = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % PERIOD);
    if into_round > PERIOD - 20 {
        tokio::time::sleep(Duration::from_secs(PERIOD - into_round + 5)).await;
    } else if into_round < 5 {
        tokio::time::sleep(Duration::from_secs(5 - into_round)).await;
    }
    // Per clone of the changed checkpoint.
    let of_first = n.div_ceil(parents);
    let clone_reads = |counters: &Counters| {
        sum_of(counters, Some("databaseclones.slatedb.io")) as f64 / of_first as f64
    };
    let before = scrape_reads();
    let annotate = json!({"metadata": {"annotations": {"bench/touched": "1"}}});
    checkpoints
        .patch(
            "nightly-0",
            &PatchParams::default(),
            &Patch::Merge(&annotate),
        )
        .await
        .expect("annotating the checkpoint");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reads_per_annotation = clone_reads(&delta(&before, &scrape_reads()));
    let before = scrape_reads();
    let size = json!({"status": {"sizeBytes": 1}});
    checkpoints
        .patch_status("nightly-0", &PatchParams::default(), &Patch::Merge(&size))
        .await
        .expect("changing the checkpoint's status");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reads_per_status_change = clone_reads(&delta(&before, &scrape_reads()));
    drop(second);
    RestartRun {
        n,
        parents,
        all_ready_secs,
        settle_secs,
        clone_reads_per_clone: sum_of(&reads, Some("databaseclones.slatedb.io")) as f64 / n as f64,
        reads_per_clone: sum_of(&reads, None) as f64 / n as f64,
        writes,
        peak_rss_mib,
        cpu_secs,
        period_secs: PERIOD,
        rechecked_secs,
        reads_per_annotation,
        reads_per_status_change,
    }
}

fn report_restart(run: &RestartRun) {
    let ours = total(&run.writes, true);
    println!(
        "\n### Operator restart with {} Ready clones of {} checkpoints (`file` store)\n",
        run.n, run.parents
    );
    println!(
        "{} DatabaseClones (spread over {} databases, one checkpoint each) made Ready by one operator (in {:.0} s), the operator \
         killed, and a new one started (`--health-check-seconds {}`). Settled: its \
         `reconciles_total{{kind=\"DatabaseClone\"}}` reached {} and then did not move for 3 s. Writes and \
         reads are the API server's `apiserver_request_total` between the restart and settling. Then \
         one change of checkpoint nightly-0 (its own clones counted) (an annotation; a status \
         field), and the DatabaseClone reads in the 5 s after each.\n",
        run.n, run.parents, run.all_ready_secs, run.period_secs, run.n
    );
    println!("| settle s | writes on our resources | DatabaseClone reads per clone | all reads per clone | peak RSS (VmHWM) MiB | CPU s | CPU ms per clone | every clone re-checked after s | clone reads per checkpoint annotation | per checkpoint status change |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {:.1} | {ours} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} | {} | {:.3} | {:.3} |",
        run.settle_secs,
        run.clone_reads_per_clone,
        run.reads_per_clone,
        run.peak_rss_mib,
        run.cpu_secs,
        run.cpu_secs * 1000.0 / run.n as f64,
        run.rechecked_secs.map_or(
            format!("not within {} s", run.period_secs + 30),
            |t| format!("{t:.0}")
        ),
        run.reads_per_annotation,
        run.reads_per_status_change,
    );
    if ours > 0 {
        println!("\nWrites between the restart and settling:\n");
        print!("{}", breakdown(&run.writes, run.n));
    }
    println!(
        "\n- **Goal: settles with 0 API writes — {}** ({ours}).\n- **Goal: RSS < 150 MiB — {}** ({:.1} MiB).\n- **Goal: all re-checked within one period — {}.**\n- **Goal: reads per clone per checkpoint change O(1) — {}** ({:.3} and {:.3}).\n",
        verdict(ours == 0),
        verdict(run.peak_rss_mib < 150.0),
        run.peak_rss_mib,
        verdict(run.rechecked_secs.is_some_and(|t| t <= run.period_secs as f64)),
        verdict(run.reads_per_annotation <= 1.0 && run.reads_per_status_change <= 1.0),
        run.reads_per_annotation,
        run.reads_per_status_change,
    );
}

/// Deletes every clone at once and waits until all are gone (at most 300 s); returns the time
/// it took (when all went) and how many went.
/// How long the bench waits for `n` deletions: as long as the goal allows (half the parent's
/// manifest-write rate, with a margin), at least 300 s and at most 1 200 s. A fixed 300 s could
/// not tell on a slow store (one manifest write a second: 500 deletions take 1 000 s at the goal).
fn deletion_wait(n: usize, parent_writes_per_sec: f64) -> Duration {
    let at_goal = n as f64 / (0.5 * parent_writes_per_sec.max(f64::MIN_POSITIVE));
    Duration::from_secs_f64((1.2 * at_goal).clamp(300.0, 1200.0))
}

async fn delete_all_at_once(
    clones: &Api<DatabaseClone>,
    n: usize,
    wait: Duration,
) -> (Option<f64>, usize) {
    eprintln!(
        "operator_scale: deleting the {n} clones at once (waiting up to {} s)",
        wait.as_secs()
    );
    let started = Instant::now();
    let _ = clones
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let deadline = started + wait;
    loop {
        let left = clones
            .list(&ListParams::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(n);
        if left == 0 {
            return (Some(started.elapsed().as_secs_f64()), n);
        }
        if Instant::now() > deadline {
            return (None, n.saturating_sub(left));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many admin calls the operator's log reports as timed out so far.
fn timeouts_in(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("did not finish within")
        .count()
}

// ---- report --------------------------------------------------------------------------------

fn breakdown(counters: &Counters, per: usize) -> String {
    let mut out = String::from(
        "| resource | verb | code | requests | per clone |\n|---|---|---:|---:|---:|\n",
    );
    let mut rows: Vec<_> = counters.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for ((resource, verb, code), count) in rows {
        let note = if is_ours(resource) {
            ""
        } else {
            " (background)"
        };
        out.push_str(&format!(
            "| `{resource}`{note} | {verb} | {code} | {count} | {:.2} |\n",
            *count as f64 / per as f64
        ));
    }
    out
}

fn count(counters: &Counters, resource: &str, verb: &str) -> u64 {
    counters
        .iter()
        .filter(|((r, v, _), _)| r == resource && v == verb)
        .map(|(_, c)| c)
        .sum()
}

fn main() {
    start_watchdog(3 * 3600);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = env_usize("BENCH_CLONES", if full() { 500 } else { 100 });
    let conc = env_usize("BENCH_CREATE_CONCURRENCY", 16);
    let s3_available = std::env::var("E2E_S3_ENDPOINT").is_ok();
    let stores: Vec<&'static str> = std::env::var("BENCH_STORES")
        .unwrap_or_else(|_| "file,s3".into())
        .split(',')
        .filter_map(|s| match s.trim() {
            "file" => Some("file"),
            "s3" if s3_available => Some("s3"),
            _ => None,
        })
        .collect();
    let rt = runtime();
    let keep_work = std::env::var("BENCH_KEEP_WORK").is_ok_and(|v| v == "1");
    let work = tempfile::Builder::new()
        .prefix("slatedb-bench-scale-")
        .disable_cleanup(keep_work)
        .tempdir()
        .expect("tempdir");
    if keep_work {
        eprintln!(
            "operator_scale: keeping the work directory {}",
            work.path().display()
        );
    }
    let tag = format!("{}", std::process::id());
    let ns = |what: &str| format!("bench-scale-{what}-{tag}");
    let mut namespaces = Vec::new();

    let (baselines, noop, runs, apply_rows, restart) = rt.block_on(async {
        let client = Client::try_default()
            .await
            .expect("connecting to the kube-apiserver named by KUBECONFIG");
        install_crds(&client, "slatedb-operator-bench")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let kubeconfig = operator_identity(&client, &ns("operator"), &tag, work.path()).await;
        OPERATOR_KUBECONFIG
            .set(kubeconfig)
            .expect("the operator's identity is made once");
        let mut baselines = Vec::new();
        eprintln!("operator_scale: baseline: {n} ConfigMaps");
        namespaces.push(ns("cm"));
        baselines.push(baseline_configmaps(&client, &ns("cm"), n, conc).await);
        eprintln!("operator_scale: baseline: {n} DatabaseClones, no operator");
        namespaces.push(ns("noop"));
        baselines.push(baseline_clones(&client, &ns("noop"), n, conc).await);
        eprintln!("operator_scale: baseline: a no-op controller");
        namespaces.push(ns("noop-controller"));
        let reps = env_usize("BENCH_APPLY_REPS", 5);
        let noop = noop_controller(
            &client,
            client.clone(),
            &ns("noop-controller"),
            reps,
            n,
            conc,
        )
        .await;
        // The same, as the operator authenticates (a ServiceAccount token, RBAC, and the chart's
        // priority level unless `BENCH_APF=0`), where the cluster admin skips all three.
        eprintln!("operator_scale: baseline: a no-op controller as the operator's ServiceAccount");
        namespaces.push(ns("noop-controller-sa"));
        let noop_as_operator = noop_controller(
            &client,
            operator_client().await,
            &ns("noop-controller-sa"),
            reps,
            0,
            conc,
        )
        .await;
        let apply_ns = ns("apply");
        namespaces.push(apply_ns.clone());
        let (apply_rows, parents) = apply_to_ready_vs_cp(&client, &apply_ns, work.path()).await;
        let mut runs = Vec::new();
        for store in &stores {
            let name = ns(store);
            namespaces.push(name.clone());
            runs.push(operator_run(&client, &name, store, n, conc, work.path()).await);
        }
        let restart_n = env_usize("BENCH_RESTART_CLONES", if full() { 10_000 } else { 1_000 });
        let restart = if restart_n > 0 {
            namespaces.push(ns("restart"));
            Some(restart_run(&client, &ns("restart"), restart_n, conc, work.path()).await)
        } else {
            None
        };
        if std::env::var("BENCH_SKIP_CLEANUP").as_deref() != Ok("1") {
            cleanup(&client, &namespaces, work.path()).await;
        }
        delete_identity(&tag, &ns("operator"));
        drop(parents);
        (
            baselines,
            (noop, noop_as_operator),
            runs,
            apply_rows,
            restart,
        )
    });
    let (noop, noop_as_operator) = noop;
    report_apply_to_ready(&apply_rows, &noop, &noop_as_operator);
    report(n, conc, &baselines, &runs);
    report_floors(&runs, &noop);
    if let Some(restart) = &restart {
        report_restart(restart);
    }
}

/// Creation and deletion of the clones against the parent's manifest-write floor and the no-op
/// controller.
fn report_floors(runs: &[OperatorRun], noop: &NoopRun) {
    let noop_rate = noop.n as f64 / noop.all_ready_secs;
    println!("\n### Clones against the parent's manifest-write floor and a no-op controller\n");
    println!(
        "Every clone created and every clone deleted writes the parent's manifest once. The floor: \
         checkpoints added to and removed from the same parent one after another from the bench \
         process after the clones were Ready (20 of each; manifest writes/s). Then every clone is \
         deleted at once (`deletecollection`) and the bench waits until all are gone (at most 300 s); \
         timeouts are the operator's \"did not finish within\" log lines meanwhile. The no-op \
         controller made {} objects Ready at once in {:.2} s ({noop_rate:.0}/s).\n",
        noop.n, noop.all_ready_secs
    );
    for r in runs {
        let total: f64 = r
            .phases
            .iter()
            .map(|(_, all)| all.iter().sum::<f64>())
            .sum();
        println!(
            "Where a clone's work went (`{}` store, {} runs, from the operator's `clone work finished` \
             log lines; the API round trips around the work are not in it):\n",
            r.store,
            r.phases.first().map_or(0, |(_, all)| all.len())
        );
        println!("| phase | median ms | p99 ms | max ms | share of all work |");
        println!("|---|---:|---:|---:|---:|");
        for (name, all) in &r.phases {
            let mut sorted = all.clone();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "| {name} | {:.1} | {:.1} | {:.1} | {:.0}% |",
                pct(&sorted, 0.5),
                pct(&sorted, 0.99),
                pct(&sorted, 1.0),
                all.iter().sum::<f64>() / total.max(f64::MIN_POSITIVE) * 100.0
            );
        }
        println!();
    }
    println!("| store | parent manifest writes/s (floor) | clones Ready/s | Ready/s ÷ floor | Ready/s ÷ no-op controller | delete all s | deleted/s | deleted/s ÷ floor | timeouts |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in runs {
        let floor = r.parent_checkpoints_per_sec;
        let ready = r.all_ready.map(|t| r.n as f64 / t);
        let deleted = r.delete_secs.map(|t| r.n as f64 / t);
        let show = |rate: Option<f64>| rate.map_or("–".to_string(), |x| format!("{x:.1}"));
        let ratio =
            |rate: Option<f64>| rate.map_or("–".to_string(), |x| format!("{:.2}", x / floor));
        println!(
            "| `{}` | {floor:.1} | {} | {} | {} | {} | {} | {} | {} |",
            r.store,
            show(ready),
            ratio(ready),
            ready.map_or("–".to_string(), |x| format!("{:.3}", x / noop_rate)),
            r.delete_secs
                .map_or(format!("not all ({} of {})", r.deleted, r.n), |t| format!(
                    "{t:.1}"
                )),
            show(deleted),
            ratio(deleted),
            r.delete_timeouts
        );
    }
    println!();
    for r in runs {
        let floor = r.parent_checkpoints_per_sec;
        let waited = deletion_wait(r.n, floor).as_secs_f64();
        let (met, detail) = match r.delete_secs {
            Some(t) => {
                let ratio = r.n as f64 / t / floor;
                (
                    ratio >= 0.5 && r.delete_timeouts == 0,
                    format!(
                        "all {} in {t:.1} s = {:.2}× the floor, {} timeouts",
                        r.n, ratio, r.delete_timeouts
                    ),
                )
            }
            None => (
                false,
                format!(
                    "{} of {} in the {waited:.0} s the bench waits ({:.2}× the floor){}, {} timeouts",
                    r.deleted,
                    r.n,
                    r.deleted as f64 / waited / floor,
                    if waited >= 1200.0 {
                        "; the wait is capped below what the goal allows"
                    } else {
                        ""
                    },
                    r.delete_timeouts
                ),
            ),
        };
        println!(
            "- **Goal (`{}` store): all deleted at ≥ 0.5× the parent's manifest-write rate, no timeout — {}.** {detail}.",
            r.store,
            verdict(met)
        );
    }
}

/// Benchmark 1 through the operator: one DatabaseClone at a time, from the user's create until
/// the operator reports Ready, against `cp -r` of the same parent directory in the same run.
struct ApplyRow {
    label: &'static str,
    ssts: usize,
    bytes: u64,
    files: u64,
    cp: Vec<f64>,
    apply_to_ready: Vec<f64>,
    /// The engine's part of each (the operator's `clone work finished` log line).
    work: Vec<f64>,
    /// Where each went, from the bench's clock and the operator's log timestamps (one machine,
    /// one clock): (create sent → `starting clone work`, → `clone work finished`, → the poll saw
    /// Ready), seconds.
    steps: Vec<[f64; 3]>,
}

async fn apply_to_ready_vs_cp(
    client: &Client,
    ns: &str,
    work: &std::path::Path,
) -> (Vec<ApplyRow>, Vec<Parent>) {
    // (label, bytes, SSTs): sizes at 10 SSTs, then SST counts at 10 MiB.
    let mut sizes = vec![
        ("10 MiB", 10 * MIB, 10),
        ("100 MiB", 100 * MIB, 10),
        ("10 MiB", 10 * MIB, 1000),
    ];
    if full() {
        sizes.push(("1 GiB", GIB, 10));
        sizes.push(("10 MiB", 10 * MIB, 10_000));
    }
    let reps = env_usize("BENCH_APPLY_REPS", 5);
    create_namespace(client, ns).await;
    let log = work.join(format!("operator-{ns}.log"));
    let mut operator = Operator::start(ns, log.clone());
    let mut runs_logged = 0;
    let checkpoints: Api<DatabaseCheckpoint> = Api::namespaced(client.clone(), ns);
    let clones: Api<DatabaseClone> = Api::namespaced(client.clone(), ns);
    let wait_ready = |name: String| {
        let clones = clones.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                if let Ok(clone) = clones.get(&name).await {
                    if is_condition(clone.status.as_ref(), "Ready") {
                        return;
                    }
                }
                assert!(Instant::now() < deadline, "{name} not Ready within 120 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let mut rows = Vec::new();
    let mut parents = Vec::new();
    for (index, (label, bytes, ssts)) in sizes.into_iter().enumerate() {
        eprintln!("operator_scale: apply→Ready vs cp -r: building a {label} parent of {ssts} SSTs");
        let parent = build_parent(bytes, ssts).await;
        let store_spec = json!({"url": format!("file://{}", parent.root().display())});
        let checkpoint: DatabaseCheckpoint = serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint",
            "metadata": {"name": format!("size-{index}")},
            "spec": {"database": {"store": store_spec, "path": PARENT}}
        }))
        .unwrap();
        checkpoints
            .create(&PostParams::default(), &checkpoint)
            .await
            .expect("creating the checkpoint");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !checkpoint_ready(&checkpoints, &format!("size-{index}")).await {
            assert!(
                operator.alive() && Instant::now() < deadline,
                "checkpoint size-{index} not Ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut row = ApplyRow {
            label,
            ssts,
            bytes: parent.bytes,
            files: parent.files,
            cp: Vec::new(),
            apply_to_ready: Vec::new(),
            work: Vec::new(),
            steps: Vec::new(),
        };
        let mut created_and_ready = Vec::new();
        for rep in 0..reps {
            let copy = parent.root().join("cp-copy");
            row.cp.push(run_timed(
                Command::new("cp")
                    .arg("-r")
                    .arg(parent.parent_dir())
                    .arg(&copy),
            ));
            std::fs::remove_dir_all(&copy).expect("removing the copy");
            sync();
            let name = format!("size-{index}-{rep}");
            let clone: DatabaseClone = serde_json::from_value(json!({
                "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
                "metadata": {"name": name},
                "spec": {"source": {"checkpointRef": {"name": format!("size-{index}")}},
                         "target": {"path": format!("clones/{name}")}}
            }))
            .unwrap();
            let created = SystemTime::now();
            let started = Instant::now();
            clones
                .create(&PostParams::default(), &clone)
                .await
                .expect("creating the clone");
            wait_ready(name).await;
            row.apply_to_ready.push(started.elapsed().as_secs_f64());
            created_and_ready.push((created, SystemTime::now()));
            // The clone alone, as the no-op controller's objects are: the checkpoint's bookkeeping
            // of this clone (a moment after it, see the checkpoint controller) is over before the
            // next one is made. Back to back, it landed in the next clone's status writes.
            let settled_by = Instant::now() + Duration::from_secs(10);
            let dependents = i32::try_from(rep + 1).unwrap_or(i32::MAX);
            while !checkpoint_settled(&checkpoints, &format!("size-{index}"), dependents).await
                && Instant::now() < settled_by
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sync();
        }
        // The log line comes before the Ready status write, so this row's are all in.
        let logged = work_durations(&log);
        row.work = logged.get(runs_logged..).unwrap_or_default().to_vec();
        let starts = logged_at(&log, "starting clone work");
        let finishes = logged_at(&log, "clone work finished");
        let starts = starts.get(runs_logged..).unwrap_or_default();
        let finishes = finishes.get(runs_logged..).unwrap_or_default();
        for (((created, ready), start), finish) in
            created_and_ready.iter().zip(starts).zip(finishes)
        {
            row.steps.push([
                secs_between(*created, *start),
                secs_between(*start, *finish),
                secs_between(*finish, *ready),
            ]);
        }
        runs_logged = logged.len();
        eprintln!(
            "operator_scale: {label}, {ssts} SSTs: cp -r {:.0} ms, apply→Ready {:.0} ms (medians)",
            Stats::of(&row.cp).median * 1e3,
            Stats::of(&row.apply_to_ready).median * 1e3
        );
        rows.push(row);
        parents.push(parent);
    }
    (rows, parents)
}

fn report_apply_to_ready(rows: &[ApplyRow], noop: &NoopRun, noop_as_operator: &NoopRun) {
    println!("### Clone cost through the operator: apply→Ready vs `cp -r` and vs a no-op controller (e2e control plane, `file://` store)\n");
    println!(
        "One DatabaseClone at a time (`verify: Metadata`) of a checkpoint of a parent of the size and \
         SST count given: from the create request until a 10 ms poll of the API server sees \
         `Ready=True`, against `cp -r` of the parent's directory (warm page cache, `sync` untimed \
         after each), alternating, {} repetitions, each clone once the operator is done with the \
         previous one (its checkpoint counts it, without protection); median (min–max) ms. The API floor, in the same \
         run: a no-op controller in the bench process that writes `Ready=True` as soon as its watch \
         sees the object (create, watch event, one status write, the same poll): {} ms as the \
         cluster admin (the bench's own identity); {} ms with the operator's identity (its \
         ServiceAccount's token, RBAC{}).\n",
        rows.first().map_or(0, |r| r.cp.len()),
        Stats::of(&noop.single_secs).ms(),
        Stats::of(&noop_as_operator.single_secs).ms(),
        if apf_enabled() { ", the chart's priority level" } else { "" },
    );
    println!(
        "| parent | SSTs | bytes on disk | files | `cp -r` ms | apply→Ready ms | of which clone work ms | apply→Ready / `cp -r` | apply→Ready ÷ no-op controller | ÷ no-op as the operator's identity |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let floor = Stats::of(&noop.single_secs).median;
    let floor_as_operator = Stats::of(&noop_as_operator.single_secs).median;
    let median = |row: &ApplyRow| Stats::of(&row.apply_to_ready).median;
    for row in rows {
        let (cp, apply) = (Stats::of(&row.cp), Stats::of(&row.apply_to_ready));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1}% | {:.2}× | {:.2}× |",
            row.label,
            row.ssts,
            human_bytes(row.bytes),
            row.files,
            cp.ms(),
            apply.ms(),
            if row.work.is_empty() {
                "–".into()
            } else {
                Stats::of(&row.work).ms()
            },
            apply.median / cp.median * 100.0,
            apply.median / floor,
            apply.median / floor_as_operator,
        );
    }
    report_apply_steps(rows, noop, noop_as_operator);
    if let Some(worst) = rows.iter().max_by(|a, b| median(a).total_cmp(&median(b))) {
        let ratio = median(worst) / floor;
        println!(
            "\n- **Goal: apply→Ready ≤ 2× the no-op controller at every size — {}; the slowest, {} of {} SSTs: {ratio:.2}×.**",
            verdict(ratio <= 2.0),
            worst.label,
            worst.ssts,
        );
    }
    let fewest = rows.iter().find(|r| r.ssts == 10 && r.label == "10 MiB");
    let most = rows
        .iter()
        .filter(|r| r.label == "10 MiB")
        .max_by_key(|r| r.ssts);
    if let (Some(fewest), Some(most)) = (fewest, most.filter(|m| m.ssts > 10)) {
        let ratio = median(most) / median(fewest);
        println!(
            "- **Goal: apply→Ready at 10 000 SSTs ≤ 2× at 10 SSTs — {}{}: {} SSTs {:.1} ms vs 10 SSTs {:.1} ms = {ratio:.2}×.**",
            verdict(ratio <= 2.0),
            if most.ssts < 10_000 { " at the largest count measured (10 000 SSTs run only with `BENCH_FULL=1`)" } else { "" },
            most.ssts,
            median(most) * 1e3,
            median(fewest) * 1e3,
        );
    }
    println!();
}

/// Where the time of one apply→Ready went, the operator's beside the no-op controller's.
fn report_apply_steps(rows: &[ApplyRow], noop: &NoopRun, noop_as_operator: &NoopRun) {
    let step_median = |steps: &[[f64; 3]], i: usize| -> String {
        let values: Vec<f64> = steps.iter().map(|s| s[i]).collect();
        if values.is_empty() {
            "–".into()
        } else {
            format!("{:.1}", Stats::of(&values).median * 1e3)
        }
    };
    println!(
        "\nWhere each apply→Ready went (medians, ms; the bench's clock and the operator's log \
         timestamps, one machine). Operator: create sent → `starting clone work` logged (the \
         create, the watch event, resolving the source, the finalizer patch carrying the start \
         record) → `clone work finished` logged (the engine's work, then the finished job's \
         trip back into a reconcile: for a clone done within 100 ms, the reconcile that started \
         it) → the poll sees Ready (the Ready status write, the poll). No-op controller: create sent → its watch delivers the object → its \
         status write answers → the poll sees Ready.\n"
    );
    println!("| run | SSTs | create → work starts | → work finished (of which engine work) | → Ready seen |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| operator, {} | {} | {} | {} ({}) | {} |",
            row.label,
            row.ssts,
            step_median(&row.steps, 0),
            step_median(&row.steps, 1),
            if row.work.is_empty() {
                "–".into()
            } else {
                format!("{:.1}", Stats::of(&row.work).median * 1e3)
            },
            step_median(&row.steps, 2),
        );
    }
    for (who, run) in [
        ("admin", noop),
        ("the operator's identity", noop_as_operator),
    ] {
        println!(
            "| no-op controller as {who} | – | {} (watch delivers) | {} (status write) | {} |",
            step_median(&run.single_steps, 0),
            step_median(&run.single_steps, 1),
            step_median(&run.single_steps, 2),
        );
    }
}

/// Deletes the bench's namespaces, with an operator running so the finalizers are served: first the
/// DatabaseClones and DatabaseCheckpoints (while the store Secret still exists — deleting the
/// namespace first removes the Secret before the clones' cleanup can read it), then the namespaces.
async fn cleanup(client: &Client, namespaces: &[String], work: &std::path::Path) {
    eprintln!("operator_scale: deleting the namespaces {namespaces:?}");
    let _operator = Operator::start(&namespaces.join(","), work.join("operator-cleanup.log"));
    let deadline = Instant::now() + Duration::from_secs(300);
    for name in namespaces {
        let clones: Api<DatabaseClone> = Api::namespaced(client.clone(), name);
        let checkpoints: Api<DatabaseCheckpoint> = Api::namespaced(client.clone(), name);
        let _ = clones
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        let _ = checkpoints
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        while Instant::now() < deadline {
            let left = clones
                .list(&ListParams::default())
                .await
                .map(|l| l.items.len())
                .unwrap_or(0)
                + checkpoints
                    .list(&ListParams::default())
                    .await
                    .map(|l| l.items.len())
                    .unwrap_or(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let api = Api::<Namespace>::all(client.clone());
    for name in namespaces {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    while Instant::now() < deadline {
        let left = api
            .list(&ListParams::default().labels("slatedb.io/bench=operator-scale"))
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|n| namespaces.contains(&n.name_any()))
                    .count()
            })
            .unwrap_or(usize::MAX);
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "operator_scale: bench objects or namespaces still present after 300 s; left as they are"
    );
}

fn report(n: usize, conc: usize, baselines: &[Baseline], runs: &[OperatorRun]) {
    let cm = &baselines[0];
    let cm_rate = cm.n as f64 / cm.create_secs;
    println!("### Operator scale ({n} DatabaseClones at once, e2e control plane)\n");
    println!(
        "One DatabaseCheckpoint `nightly` of a sample parent ({PARENT_KEYS} keys in {PARENT_SSTS} SSTs); \
         {n} DatabaseClones of it (`verify: Metadata`, the default) created through the API with {conc} creates in flight, \
         then watched until every one is Ready. The operator is the release binary (`run --namespaces <ns> \
         --admin-timeout-seconds 30`, clone concurrency {}), one process per store, started before the checkpoint. \
         Baselines in the same run, same client and concurrency: {n} ConfigMap creates, and the same {n} \
         DatabaseClone creates in a namespace no operator watches. Writes = the API server's \
         `apiserver_request_total` (verbs POST, PUT, PATCH, DELETE, APPLY) after − before, read with \
         `kubectl get --raw /metrics`; \"after\" is taken once no write on our resources has been seen for 10 s. \
         The user's own {n} creates are counted in \"all\" and left out of \"by the operator\".\n",
        std::env::var("BENCH_CLONE_CONCURRENCY").unwrap_or_else(|_| "8".into())
    );
    println!("| run | objects | creates wall s | creates/s | creates/s vs ConfigMaps | all Ready s | clones Ready/s | Ready/s vs ConfigMap creates/s | first Ready s | create→Ready p50 / p99 / max s | writes all (per object) | writes by the operator per clone | operator idle RSS MiB | operator peak RSS (VmHWM) MiB | operator CPU s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for b in baselines {
        let writes = total(&b.writes, true);
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | – | – | – | – | – | {} ({:.2}) | – | – | – | – |",
            b.label,
            b.n,
            b.create_secs,
            b.n as f64 / b.create_secs,
            (b.n as f64 / b.create_secs) / cm_rate,
            writes,
            writes as f64 / b.n as f64
        );
    }
    for r in runs {
        let writes = total(&r.writes, true);
        let by_operator =
            writes.saturating_sub(count(&r.writes, "databaseclones.slatedb.io", "POST"));
        let (all_ready, rate, ratio) = match r.all_ready {
            Some(t) => (
                format!("{t:.1}"),
                format!("{:.1}", r.n as f64 / t),
                format!("{:.3}", (r.n as f64 / t) / cm_rate),
            ),
            None => (
                format!("not all ({} of {})", r.ready, r.n),
                "–".into(),
                "–".into(),
            ),
        };
        let latency = r
            .latency
            .map(|(p50, p99, max)| format!("{p50:.1} / {p99:.1} / {max:.1}"))
            .unwrap_or_else(|| "–".into());
        println!(
            "| operator, `{}` store | {} | {:.2} | {:.0} | {:.2} | {all_ready} | {rate} | {ratio} | {:.1} | {latency} | {writes} ({:.2}) | {:.2} | {:.1} | {:.1} | {:.1} |",
            r.store,
            r.n,
            r.create_secs,
            r.n as f64 / r.create_secs,
            (r.n as f64 / r.create_secs) / cm_rate,
            r.first_ready,
            writes as f64 / r.n as f64,
            by_operator as f64 / r.n as f64,
            r.idle_rss_mib,
            r.peak_rss_mib,
            r.cpu_secs
        );
    }
    println!();
    for b in baselines {
        let background = total(&b.writes, false);
        println!(
            "- {}: {} writes on the created resource, {} background writes (other resources) in the same window.",
            b.label,
            total(&b.writes, true),
            background
        );
    }
    println!();
    for r in runs {
        println!(
            "Write requests during the `{}` run ({} clones; at all-Ready: {} on our resources; settled {:.0} s later: {}):\n",
            r.store,
            r.n,
            total(&r.writes_at_ready, true),
            r.settle_secs,
            total(&r.writes, true)
        );
        println!("{}", breakdown(&r.writes, r.n));
        if !r.stalled.is_empty() {
            println!(
                "Stalled: {} clones (first: {}); the operator's log was {}.\n",
                r.stalled.len(),
                r.stalled
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                r.log.display()
            );
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "CPU seconds during the burst (first create → all Ready), by process; the machine has {cores:.0} cores:\n"
    );
    println!(
        "| store | wall s | operator | {} | all | cores busy of {cores:.0} |",
        BURST_PROCESSES.join(" | ")
    );
    println!(
        "|---|---:|---:|{}---:|---:|",
        "---:|".repeat(BURST_PROCESSES.len())
    );
    for r in runs {
        let (wall, operator, others) = &r.burst;
        let all = operator + others.iter().sum::<f64>();
        let each: Vec<String> = others.iter().map(|c| format!("{c:.1}")).collect();
        println!(
            "| `{}` | {wall:.1} | {operator:.1} | {} | {all:.1} | {:.2} |",
            r.store,
            each.join(" | "),
            all / wall
        );
    }
    println!();
    for r in runs {
        match (r.apf, OPERATOR_LEVEL.get()) {
            (Some((dispatched, rejected)), Some(level)) => println!(
                "The operator ran as its own ServiceAccount in the chart's API priority level `{level}` \
                 (`apiPriority` defaults): during the `{}` burst it dispatched {dispatched} of the operator's \
                 requests and rejected {rejected}. The bench's creates are the cluster admin's (exempt).\n",
                r.store
            ),
            _ => println!(
                "The operator ran as its own ServiceAccount without the chart's priority level \
                 (`BENCH_APF=0`: the built-in `service-accounts` flow, level `workload-low`).\n"
            ),
        }
    }
    let unwatched_rate = baselines
        .iter()
        .find(|b| b.label.contains("no operator"))
        .map(|b| b.n as f64 / b.create_secs);
    for r in runs {
        if let Some(unwatched) = unwatched_rate {
            let ratio = (r.n as f64 / r.create_secs) / unwatched;
            println!(
                "- **Goal (`{}` store): the user's creates not slowed below 0.5× — {}.** {:.0} creates/s while the operator works = {ratio:.2}× the same creates with no operator ({unwatched:.0}/s).",
                r.store,
                verdict(ratio >= 0.5),
                r.n as f64 / r.create_secs,
            );
        }
        let by_operator = total(&r.writes, true).saturating_sub(count(
            &r.writes,
            "databaseclones.slatedb.io",
            "POST",
        )) as f64
            / r.n as f64;
        let all = r.ready == r.n;
        println!(
            "- **Goal (`{}` store): all {} Ready — {}.** {} Ready, {} Stalled{}.",
            r.store,
            r.n,
            verdict(all),
            r.ready,
            r.stalled.len(),
            r.all_ready
                .map(|t| format!(
                    ", all within {t:.1} s ({:.1} clones/s; ConfigMap creates: {cm_rate:.0}/s)",
                    r.n as f64 / t
                ))
                .unwrap_or_default()
        );
        println!(
            "- **Goal (`{}` store): ≤ 6 writes per clone — {}.** {by_operator:.2} API-server writes per clone by the operator ({:.2} with the user's create); the ConfigMap baseline costs {:.2} per object.",
            r.store,
            verdict(by_operator <= 6.0),
            total(&r.writes, true) as f64 / r.n as f64,
            total(&cm.writes, true) as f64 / cm.n as f64
        );
        println!(
            "- **Goal (`{}` store): operator RSS < 100 MiB — {}.** Peak (VmHWM) {:.1} MiB ({:.1} MiB idle before the burst).",
            r.store,
            verdict(r.peak_rss_mib < 100.0),
            r.peak_rss_mib,
            r.idle_rss_mib
        );
    }
    println!();
}
