//! Shared plumbing: connecting to the e2e cluster, installing the CRDs, a namespace per test.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt};
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseClone};
use std::future::Future;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const FIELD_MANAGER: &str = "slatedb-operator-e2e";

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the e2e tests need the real control plane. Run them with \
             `e2e/run-tests.sh`, or `e2e/cluster.sh up && source <(e2e/cluster.sh env)` first"
        )
    })
}

/// A test's view of the cluster: a client and a namespace of its own.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
}

impl TestEnv {
    /// Connects to the cluster named by `KUBECONFIG`, makes sure both CRDs are installed and
    /// Established, and creates a fresh namespace whose name starts with `prefix`.
    pub async fn new(prefix: &str) -> TestEnv {
        required_env("KUBECONFIG");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_default()
            .await
            .expect("connecting to the e2e kube-apiserver");
        install_crds(&client).await;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let namespace = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"slatedb.io/e2e": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        TestEnv { client, namespace }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Deletes the namespace; the namespace controller removes what is left in it.
    pub async fn cleanup(self) {
        Api::<Namespace>::all(self.client)
            .delete(&self.namespace, &DeleteParams::default())
            .await
            .expect("deleting the test namespace");
    }

    /// Runs the cluster's kubectl in this test's namespace and returns its standard output.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let kubectl = required_env("E2E_KUBECTL");
        let output = Command::new(&kubectl)
            .args(["--namespace", &self.namespace])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {kubectl}: {e}"));
        assert!(
            output.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// Server-side applies both CRDs generated from the Rust types and waits until they serve.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [DatabaseCheckpoint::crd(), DatabaseClone::crd()] {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
        .unwrap();
    }
}

/// Polls `probe` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
