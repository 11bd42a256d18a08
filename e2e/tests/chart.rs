//! The Helm chart: its CRD copies match `crds/`, it passes `helm lint` and its values schema, it renders
//! what each set of values asks for, the operator accepts every flag it passes, and its output passes a
//! server-side dry run (`kubectl apply --dry-run=server`) against the real kube-apiserver.

use crate::support::{
    describe, documents, find, get, repo_path, run_tool, server_dry_run, yaml_files, TestEnv,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::runtime::wait::{await_condition, conditions};
use kube::Api;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

pub(crate) const CHART: &str = "charts/slatedb-operator";
const ALL_OPTIONS: &str = "charts/slatedb-operator/ci/all-options-values.yaml";

fn chart_dir() -> String {
    repo_path(CHART).display().to_string()
}

fn all_options_values() -> String {
    repo_path(ALL_OPTIONS).display().to_string()
}

/// `helm template <release> <chart> --namespace <namespace> <extra...>`, whatever its outcome.
fn helm_template_output(namespace: &str, extra: &[&str]) -> Output {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "slatedb",
        chart.as_str(),
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    run_tool("E2E_HELM", &args, None)
}

/// Renders the chart and returns its YAML; panics when helm fails.
fn helm_template(namespace: &str, extra: &[&str]) -> String {
    let output = helm_template_output(namespace, extra);
    assert!(
        output.status.success(),
        "{}",
        describe(&format!("helm template {extra:?}"), &output)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn render(namespace: &str, extra: &[&str]) -> Vec<Value> {
    documents(&helm_template(namespace, extra))
}

fn kinds(docs: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for d in docs {
        *counts
            .entry(d["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

fn container_args(docs: &[Value], deployment: &str) -> Vec<String> {
    get(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("the operator container has args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Every namespaced object the chart renders names its namespace, so `helm template | kubectl apply`
/// never lands in the kubeconfig's default namespace.
fn assert_namespaced_objects_name_their_namespace(docs: &[Value]) {
    const CLUSTER_SCOPED: [&str; 5] = [
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "FlowSchema",
        "PriorityLevelConfiguration",
    ];
    for d in docs {
        let kind = d["kind"].as_str().unwrap();
        let namespace = d["metadata"]["namespace"].as_str();
        if CLUSTER_SCOPED.contains(&kind) {
            assert!(
                namespace.is_none(),
                "{kind} {} is cluster-scoped",
                d["metadata"]["name"]
            );
        } else {
            assert!(
                namespace.is_some_and(|n| !n.is_empty()),
                "{kind} {} has no metadata.namespace",
                d["metadata"]["name"]
            );
        }
    }
}

/// A test namespace whose Pod Security admission warns about anything short of `restricted`.
async fn restricted_env(prefix: &str) -> TestEnv {
    let env = TestEnv::new(prefix).await;
    env.kubectl(&[
        "label",
        "namespace",
        &env.namespace,
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/warn-version=latest",
    ]);
    env
}

fn assert_no_pod_security_warnings(stderr: &str, what: &str) {
    assert!(
        !stderr.contains("PodSecurity"),
        "{what} violates the restricted Pod Security Standard:\n{stderr}"
    );
}

// --- CRD copies ----------------------------------------------------------------------------------

#[test]
fn chart_crd_copies_are_byte_identical_to_crds_dir() {
    let source = yaml_files(&repo_path("crds"));
    let copies = yaml_files(&repo_path(&format!("{CHART}/files/crds")));
    assert!(!source.is_empty(), "crds/ holds no CRDs");
    assert_eq!(
        source.keys().collect::<Vec<_>>(),
        copies.keys().collect::<Vec<_>>(),
        "{CHART}/files/crds/ must hold exactly the files of crds/ (`cargo run -- crdgen` writes both)"
    );
    for (file, bytes) in &source {
        assert!(
            copies[file] == *bytes,
            "{CHART}/files/crds/{file} differs from crds/{file}; run `cargo run -- crdgen`"
        );
    }
}

#[test]
fn chart_renders_the_crds_unchanged_apart_from_labels_and_keep() {
    let source: BTreeMap<String, Value> = yaml_files(&repo_path("crds"))
        .values()
        .flat_map(|bytes| documents(std::str::from_utf8(bytes).unwrap()))
        .map(|crd| (crd["metadata"]["name"].as_str().unwrap().to_string(), crd))
        .collect();

    let rendered = render("slatedb-system", &[]);
    let crds: Vec<&Value> = rendered
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    assert_eq!(crds.len(), source.len(), "every CRD is rendered once");
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name} is kept on uninstall by default"
        );
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/name"],
            "slatedb-operator"
        );
        // fromYaml | toYaml must not change a single field of the CRD itself.
        let mut stripped = crd.clone();
        let metadata = stripped["metadata"].as_object_mut().unwrap();
        metadata.remove("labels");
        metadata.remove("annotations");
        assert!(
            stripped == source[name],
            "the rendered CRD {name} differs from crds/ beyond labels and annotations"
        );
    }

    let not_kept = render("slatedb-system", &["--set", "crds.keep=false"]);
    for crd in not_kept
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
    {
        assert!(
            crd["metadata"]["annotations"]
                .get("helm.sh/resource-policy")
                .is_none(),
            "crds.keep=false drops the keep annotation"
        );
    }
    let without = render("slatedb-system", &["--set", "crds.enabled=false"]);
    assert!(
        !without
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition"),
        "crds.enabled=false renders no CRDs"
    );
}

// --- lint, schema and rendering ------------------------------------------------------------------

#[test]
fn helm_lint_passes_with_default_and_all_options_values() {
    let chart = chart_dir();
    let values = all_options_values();
    for extra in [vec![], vec!["--values", values.as_str()]] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend(extra.iter().copied());
        let output = run_tool("E2E_HELM", &args, None);
        assert!(
            output.status.success(),
            "{}",
            describe(&format!("helm {args:?}"), &output)
        );
    }
}

#[test]
fn values_schema_rejects_wrong_types_and_unknown_keys() {
    let rejected: &[(&[&str], &str)] = &[
        (&["--set", "replicaCount=notanumber"], "/replicaCount"),
        (&["--set-json", r#"resources="x""#], "/resources"),
        (&["--set", "notAValue=1"], "notAValue"),
        (
            &["--set", "leaderElection.enabled=maybe"],
            "/leaderElection/enabled",
        ),
        (
            &["--set", "leaderElection.leaseDuration=15s"],
            "/leaderElection/leaseDuration",
        ),
        (&["--set", "image.tag=123"], "/image/tag"),
        (
            &["--set", "apiPriority.concurrencyShares=0"],
            "/apiPriority/concurrencyShares",
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (
            &["--set-json", r#"watchNamespaces=["Not_A_Namespace"]"#],
            "/watchNamespaces/0",
        ),
        (
            &["--set-json", r#"watchNamespaces="team-a""#],
            "/watchNamespaces",
        ),
        (
            &["--set-json", r#"controllers=["checkpoint","backup"]"#],
            "/controllers/1",
        ),
        (&["--set", "logging.format=xml"], "/logging/format"),
        (&["--set", "metrics.port=70000"], "/metrics/port"),
        (&["--set", "clone.concurrency=0"], "/clone/concurrency"),
        (
            &["--set", "clone.timeouts.adminSeconds=soon"],
            "/clone/timeouts/adminSeconds",
        ),
        (&["--set", "crds.keep=yes please"], "/crds/keep"),
        (
            &["--set", "podDisruptionBudget.minAvailable=most"],
            "/podDisruptionBudget/minAvailable",
        ),
    ];
    for (args, path) in rejected {
        let output = helm_template_output("slatedb-system", args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("schema") && stderr.contains(path),
            "values.schema.json should reject {args:?} at {path}; {}",
            describe("helm template", &output)
        );
    }

    // Combinations the schema cannot express fail in the templates, with a message.
    let template_errors: &[(&[&str], &str)] = &[
        (
            &["--set", "metrics.serviceMonitor.enabled=true"],
            "needs metrics.enabled",
        ),
        (
            &["--set", "leaderElection.renewDeadline=15"],
            "renewDeadline",
        ),
        (&["--set", "leaderElection.retryPeriod=20"], "retryPeriod"),
    ];
    for (args, message) in template_errors {
        let output = helm_template_output("slatedb-system", args);
        assert!(
            !output.status.success() && String::from_utf8_lossy(&output.stderr).contains(message),
            "helm template {args:?} should fail with {message:?}; {}",
            describe("helm template", &output)
        );
    }

    let accepted: &[&[&str]] = &[
        &[],
        &["--set-string", "image.tag=123"],
        &["--set", "image.tag=0.2.0"],
        &["--set", "replicaCount=3"],
        &["--set-json", r#"watchNamespaces=["team-a","team-b"]"#],
        &["--set", "podDisruptionBudget.minAvailable=50%"],
        &[
            "--set-json",
            r#"resources={"requests":{"cpu":"1","memory":"1Gi"}}"#,
        ],
    ];
    for args in accepted {
        let output = helm_template_output("slatedb-system", args);
        assert!(
            output.status.success(),
            "{}",
            describe(&format!("helm template {args:?}"), &output)
        );
    }
}

/// The operator's permissions, exactly (conventions §13): least privilege.
fn expected_operator_rules() -> Value {
    json!([
        {"apiGroups": ["slatedb.io"], "resources": ["databasecheckpoints"],
         "verbs": ["get", "list", "watch", "patch", "update", "create", "delete"]},
        {"apiGroups": ["slatedb.io"], "resources": ["databasecheckpointschedules"],
         "verbs": ["get", "list", "watch", "patch", "update"]},
        {"apiGroups": ["slatedb.io"], "resources": ["databaseclones"],
         "verbs": ["get", "list", "watch", "patch", "update", "delete"]},
        {"apiGroups": ["slatedb.io"], "resources": ["databasecopies"],
         "verbs": ["get", "list", "watch", "patch", "update"]},
        {"apiGroups": ["slatedb.io"], "resources": ["databasecheckpoints/status", "databasecheckpointschedules/status", "databaseclones/status", "databasecopies/status"],
         "verbs": ["get", "patch", "update"]},
        {"apiGroups": ["slatedb.io"], "resources": ["databasecheckpoints/finalizers", "databasecheckpointschedules/finalizers", "databaseclones/finalizers", "databasecopies/finalizers"],
         "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch", "delete"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    ])
}

#[test]
fn default_values_render_a_cluster_wide_restricted_operator() {
    let docs = render("slatedb-system", &[]);
    // Release "slatedb" does not contain the chart name, so the full name is <release>-<chart>.
    let full = "slatedb-slatedb-operator";

    // Cluster-wide RBAC with exactly the operator's rules, bound to the chart's ServiceAccount.
    assert_eq!(
        get(&docs, "ClusterRole", full)["rules"],
        expected_operator_rules()
    );
    let binding = get(&docs, "ClusterRoleBinding", full);
    assert_eq!(binding["roleRef"]["name"], full);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": full, "namespace": "slatedb-system"}])
    );
    assert!(find(&docs, "ServiceAccount", full).is_some());
    assert!(
        !kinds(&docs).contains_key("Service"),
        "metrics are off by default"
    );
    assert!(!kinds(&docs).contains_key("ServiceMonitor"));
    assert!(!kinds(&docs).contains_key("PodDisruptionBudget"));

    // Aggregated user roles.
    let view = get(&docs, "ClusterRole", &format!("{full}-view"));
    assert_eq!(
        view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    assert_eq!(
        view["rules"],
        json!([{"apiGroups": ["slatedb.io"], "resources": ["databasecheckpoints", "databasecheckpointschedules", "databaseclones", "databasecopies"],
                "verbs": ["get", "list", "watch"]}])
    );
    let edit = get(&docs, "ClusterRole", &format!("{full}-edit"));
    for label in ["aggregate-to-edit", "aggregate-to-admin"] {
        assert_eq!(
            edit["metadata"]["labels"][format!("rbac.authorization.k8s.io/{label}")],
            "true"
        );
    }
    assert_eq!(
        edit["rules"][0]["verbs"],
        json!(["get", "list", "watch", "create", "update", "patch", "delete"])
    );

    // Leader election is on by default, with a Role on its one Lease in the release namespace.
    let args = container_args(&docs, full);
    for expected in [
        "--log-format=json",
        "--http-port=8080",
        "--controllers=checkpoint,clone,copy",
        "--clone-concurrency=8",
        "--admin-timeout-seconds=30",
        "--max-backoff-seconds=300",
        "--health-check-seconds=600",
        "--inline-stores=with-credentials",
        "--leader-election",
        "--lease-name=slatedb-slatedb-operator",
        "--lease-namespace=slatedb-system",
        "--lease-duration-seconds=15",
        "--lease-grace-seconds=5",
    ] {
        assert!(
            args.iter().any(|a| a == expected),
            "{expected} missing from {args:?}"
        );
    }
    assert!(
        !args
            .iter()
            .any(|a| a == "run" || a.starts_with("--namespaces")),
        "the image's entrypoint already says `run`, and no --namespaces means all: {args:?}"
    );
    let lease_role = get(&docs, "Role", &format!("{full}-leader-election"));
    assert_eq!(lease_role["metadata"]["namespace"], "slatedb-system");
    assert_eq!(
        lease_role["rules"],
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
             "resourceNames": ["slatedb-slatedb-operator"], "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ])
    );

    // API Priority and Fairness: the operator's own level, a few seats and no borrowing; its Lease
    // requests in the built-in leader-election level, matched first.
    let level = &get(&docs, "PriorityLevelConfiguration", full)["spec"];
    assert_eq!(level["type"], "Limited");
    assert_eq!(level["limited"]["nominalConcurrencyShares"], 1);
    assert_eq!(level["limited"]["borrowingLimitPercent"], 0);
    let account = json!([{"kind": "ServiceAccount",
                          "serviceAccount": {"name": full, "namespace": "slatedb-system"}}]);
    let leases = &get(&docs, "FlowSchema", &format!("{full}-leader-election"))["spec"];
    assert_eq!(
        leases["priorityLevelConfiguration"]["name"],
        "leader-election"
    );
    assert_eq!(leases["rules"][0]["subjects"], account);
    assert_eq!(
        leases["rules"][0]["resourceRules"][0]["namespaces"],
        json!(["slatedb-system"])
    );
    let rest = &get(&docs, "FlowSchema", full)["spec"];
    assert_eq!(rest["priorityLevelConfiguration"]["name"], full);
    assert_eq!(rest["rules"][0]["subjects"], account);
    assert!(
        leases["matchingPrecedence"].as_i64() < rest["matchingPrecedence"].as_i64(),
        "the Lease schema must match first"
    );
    let without = kinds(&render(
        "slatedb-system",
        &["--set", "apiPriority.enabled=false"],
    ));
    assert!(
        !without.contains_key("FlowSchema") && !without.contains_key("PriorityLevelConfiguration")
    );

    // The pod: downward API, probes on the named port, restricted security contexts.
    let pod = &get(&docs, "Deployment", full)["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/slatedb/slatedb-operator:0.1.0");
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    assert_eq!(env["RUST_LOG"]["value"], "info");
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(container["ports"][0]["name"], "http");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "http"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http"})
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
}

#[test]
fn leader_election_follows_values_and_replica_count() {
    let full = "slatedb-slatedb-operator";
    let lease_role = format!("{full}-leader-election");

    let off = render("ops", &["--set", "leaderElection.enabled=false"]);
    assert!(!container_args(&off, full)
        .iter()
        .any(|a| a.starts_with("--lease") || a == "--leader-election"));
    assert!(find(&off, "Role", &lease_role).is_none());

    // Two replicas without leader election would both reconcile: replicaCount > 1 forces it on.
    let forced = render(
        "ops",
        &[
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "replicaCount=2",
        ],
    );
    assert!(container_args(&forced, full)
        .iter()
        .any(|a| a == "--leader-election"));
    assert!(find(&forced, "Role", &lease_role).is_some());

    // leaseDuration -> duration; grace = max(leaseDuration - renewDeadline, retryPeriod).
    let tuned = render(
        "ops",
        &[
            "--set",
            "leaderElection.leaseDuration=60",
            "--set",
            "leaderElection.renewDeadline=40",
            "--set",
            "leaderElection.retryPeriod=15",
            "--set",
            "leaderElection.namespace=kube-system",
            "--set",
            "leaderElection.leaseName=slatedb-leader",
        ],
    );
    let args = container_args(&tuned, full);
    for expected in [
        "--lease-duration-seconds=60",
        "--lease-grace-seconds=20",
        "--lease-namespace=kube-system",
        "--lease-name=slatedb-leader",
    ] {
        assert!(
            args.iter().any(|a| a == expected),
            "{expected} missing from {args:?}"
        );
    }
    assert_eq!(
        get(&tuned, "Role", &lease_role)["metadata"]["namespace"],
        "kube-system"
    );
    assert_eq!(
        get(&tuned, "Role", &lease_role)["rules"][0]["resourceNames"],
        json!(["slatedb-leader"])
    );
    let floor = render(
        "ops",
        &[
            "--set",
            "leaderElection.leaseDuration=10",
            "--set",
            "leaderElection.renewDeadline=9",
            "--set",
            "leaderElection.retryPeriod=3",
        ],
    );
    assert!(container_args(&floor, full)
        .iter()
        .any(|a| a == "--lease-grace-seconds=3"));
}

#[test]
fn watch_namespaces_get_roles_instead_of_a_cluster_role() {
    let docs = render(
        "ops",
        &["--set-json", r#"watchNamespaces=["team-a","team-b"]"#],
    );
    let full = "slatedb-slatedb-operator";
    assert!(
        find(&docs, "ClusterRole", full).is_none(),
        "no cluster-wide grant"
    );
    assert!(find(&docs, "ClusterRoleBinding", full).is_none());
    for namespace in ["team-a", "team-b"] {
        let role = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == namespace)
            .unwrap_or_else(|| panic!("no Role in {namespace}"));
        assert_eq!(role["rules"], expected_operator_rules());
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == namespace)
            .unwrap_or_else(|| panic!("no RoleBinding in {namespace}"));
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["namespace"], "ops");
    }
    assert!(container_args(&docs, full)
        .iter()
        .any(|a| a == "--namespaces=team-a,team-b"));
}

#[test]
fn stores_are_read_cluster_wide_and_secrets_only_where_they_are_named() {
    let full = "slatedb-slatedb-operator";
    let docs = render("slatedb-system", &[]);
    assert_eq!(
        get(&docs, "ClusterRole", &format!("{full}-stores"))["rules"],
        json!([
            {"apiGroups": ["slatedb.io"], "resources": ["databasestores"],
             "verbs": ["get", "list", "watch", "patch", "update"]},
            {"apiGroups": ["slatedb.io"], "resources": ["databasestores/status"],
             "verbs": ["get", "patch", "update"]},
            {"apiGroups": ["slatedb.io"], "resources": ["databasestores/finalizers"], "verbs": ["update"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]},
        ])
    );
    let binding = get(&docs, "ClusterRoleBinding", &format!("{full}-stores"));
    assert_eq!(binding["subjects"][0]["name"], full);
    // DatabaseStores' credentials: get, in the operator's own namespace only.
    let credentials = get(&docs, "Role", &format!("{full}-store-credentials"));
    assert_eq!(credentials["metadata"]["namespace"], "slatedb-system");
    assert_eq!(
        credentials["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}])
    );
    // No Secret is ever listed or watched, anywhere.
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in doc["rules"].as_array().unwrap() {
            if rule["resources"]
                .as_array()
                .unwrap()
                .contains(&json!("secrets"))
            {
                assert_eq!(rule["verbs"], json!(["get"]), "{}", doc["metadata"]["name"]);
            }
        }
    }
    // Without inline stores the operator reads no Secret of any namespace it watches.
    let deny = render("slatedb-system", &["--set", "inlineStores=Deny"]);
    let rules = get(&deny, "ClusterRole", full)["rules"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        rules.iter().all(|r| !r["resources"]
            .as_array()
            .unwrap()
            .contains(&json!("secrets"))),
        "{rules:?}"
    );
    assert!(container_args(&deny, full).contains(&"--inline-stores=deny".to_string()));
    let selected = render(
        "slatedb-system",
        &["--set-json", r#"storeSelector={"team":"a","env":"prod"}"#],
    );
    assert!(
        container_args(&selected, full).contains(&"--store-selector=env=prod,team=a".to_string())
    );
}

#[test]
fn the_operator_accepts_every_flag_the_chart_passes() {
    // The image's ENTRYPOINT is `slatedb-operator run` and the chart's args follow it: clap parses every
    // argument before it acts on a trailing --help, so an unknown flag or a bad value fails here.
    let values = all_options_values();
    let renders = [
        render("ops", &[]),
        render("ops", &["--values", &values]),
        render(
            "ops",
            &[
                "--set",
                "leaderElection.enabled=false",
                "--set",
                "logging.format=text",
            ],
        ),
    ];
    for docs in &renders {
        let deployment = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("a Deployment");
        let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_slatedb-operator"))
            .arg("run")
            .args(&args)
            .arg("--help")
            .output()
            .expect("running slatedb-operator");
        assert!(
            output.status.success(),
            "{}",
            describe(&format!("slatedb-operator run {args:?} --help"), &output)
        );
    }
}

// --- server-side validation ----------------------------------------------------------------------

/// A minimal `servicemonitors.monitoring.coreos.com` CRD (prometheus-operator is not installed in the
/// e2e cluster), typed for the fields the chart sets so that strict field validation still applies.
async fn ensure_service_monitor_crd(env: &TestEnv) {
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let name = "servicemonitors.monitoring.coreos.com";
    if crds.get_opt(name).await.unwrap().is_none() {
        let string = json!({"type": "string"});
        let label_selector = json!({"type": "object", "properties": {
            "matchLabels": {"type": "object", "additionalProperties": string},
            "matchExpressions": {"type": "array", "items": {"type": "object",
                "x-kubernetes-preserve-unknown-fields": true}}}});
        let crd: CustomResourceDefinition = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": name, "labels": {"slatedb.io/e2e": "true"}},
            "spec": {
                "group": "monitoring.coreos.com",
                "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                          "plural": "servicemonitors", "singular": "servicemonitor"},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "required": ["selector"],
                        "properties": {
                            "jobLabel": string,
                            "selector": label_selector,
                            "namespaceSelector": {"type": "object", "properties": {
                                "any": {"type": "boolean"},
                                "matchNames": {"type": "array", "items": string}}},
                            "endpoints": {"type": "array", "items": {"type": "object", "properties": {
                                "port": string, "path": string, "scheme": string,
                                "interval": string, "scrapeTimeout": string,
                                "honorLabels": {"type": "boolean"}}}}
                        }
                    }}
                }}}]
            }
        }))
        .unwrap();
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => panic!("creating the ServiceMonitor CRD: {e}"),
        }
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, name, conditions::is_crd_established()),
    )
    .await
    .expect("the ServiceMonitor CRD is not Established within 30s")
    .unwrap();
    // Established is reported before discovery serves the new group to kubectl; wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let output = run_tool(
            "E2E_KUBECTL",
            &[
                "get",
                "servicemonitors.monitoring.coreos.com",
                "--all-namespaces",
            ],
            None,
        );
        if output.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            describe("kubectl get servicemonitors", &output)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn default_values_pass_server_side_dry_run() {
    let env = restricted_env("chart-default").await;
    let yaml = helm_template(&env.namespace, &[]);
    assert_namespaced_objects_name_their_namespace(&documents(&yaml));
    let stderr = server_dry_run(None, &yaml, "the chart with default values");
    assert_no_pod_security_warnings(&stderr, "the chart with default values");
    env.cleanup().await;
}

#[tokio::test]
async fn all_options_values_pass_server_side_dry_run() {
    let env = restricted_env("chart-all").await;
    // The watched namespaces must exist for their Roles; use fresh ones instead of the file's e2e-a, e2e-b.
    let watched_a = TestEnv::new("chart-all-a").await;
    let watched_b = TestEnv::new("chart-all-b").await;
    ensure_service_monitor_crd(&env).await;

    let values = all_options_values();
    let watch = format!(
        r#"watchNamespaces=["{}","{}"]"#,
        watched_a.namespace, watched_b.namespace
    );
    let yaml = helm_template(&env.namespace, &["--values", &values, "--set-json", &watch]);
    let docs = documents(&yaml);

    // Every optional resource is there.
    let counts = kinds(&docs);
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "ClusterRole",
        "Role",
        "RoleBinding",
        "FlowSchema",
        "PriorityLevelConfiguration",
    ] {
        assert!(counts.contains_key(kind), "no {kind} rendered: {counts:?}");
    }
    assert_eq!(
        counts["Role"], 5,
        "one per watched namespace, the lease Role, the store-credentials Role and the copy Jobs' Role"
    );
    // The one cluster-wide grant is for the cluster-scoped DatabaseStores (and the labels of the
    // namespaces that use them): nothing on checkpoints, clones or Secrets.
    assert_eq!(counts["ClusterRoleBinding"], 1, "{counts:?}");
    let stores = get(&docs, "ClusterRole", "slatedb-operator-all-stores");
    for rule in stores["rules"].as_array().unwrap() {
        for resource in rule["resources"].as_array().unwrap() {
            let resource = resource.as_str().unwrap();
            assert!(
                resource.starts_with("databasestores") || resource == "namespaces",
                "{resource} granted cluster-wide"
            );
        }
    }
    let args = container_args(&docs, "slatedb-operator-all");
    assert!(args.contains(&format!(
        "--namespaces={},{}",
        watched_a.namespace, watched_b.namespace
    )));
    assert!(args.iter().any(|a| a == "--leader-election"));
    assert!(args.iter().any(|a| a == "--http-port=9090"));

    assert_namespaced_objects_name_their_namespace(&docs);
    let stderr = server_dry_run(None, &yaml, "the chart with all options");
    assert_no_pod_security_warnings(&stderr, "the chart with all options");

    watched_a.cleanup().await;
    watched_b.cleanup().await;
    env.cleanup().await;
}
