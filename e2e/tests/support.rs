//! Shared plumbing: connecting to the e2e cluster, installing the CRDs, a namespace per test, the
//! operator as a child process, test stores, and running the tools that check manifests.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::Value;
use slatedb_operator::crds::install_crds;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The field manager the suite installs the CRDs as.
pub const FIELD_MANAGER: &str = "slatedb-operator-e2e";

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
    /// The DatabaseStores the test made (cluster-scoped, so [`TestEnv::cleanup`] deletes them).
    stores: std::sync::Mutex<Vec<String>>,
}

/// The label that picks the DatabaseStores an e2e operator serves (`--store-selector`): its
/// namespace, so that concurrent tests' operators never touch each other's stores.
pub const STORE_LABEL: &str = "slatedb.io/e2e-operator";

/// The environment every e2e operator starts with: the cloud metadata endpoints its object-store
/// clients would ask for an ambient identity point at a loopback port nothing listens on, so no
/// test can reach a real metadata address even by mistake (a test may override them).
const NO_METADATA: [(&str, &str); 2] = [
    ("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1"),
    (
        "AZURE_MSI_ENDPOINT",
        "http://127.0.0.1:1/metadata/identity/oauth2/token",
    ),
];

impl TestEnv {
    /// Connects to the cluster named by `KUBECONFIG`, makes sure both CRDs are installed and
    /// Established, and creates a fresh namespace whose name starts with `prefix`.
    pub async fn new(prefix: &str) -> TestEnv {
        required_env("KUBECONFIG");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_default()
            .await
            .expect("connecting to the e2e kube-apiserver");
        install_crds(&client, FIELD_MANAGER)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
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
        TestEnv::existing(client, &namespace)
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A test environment in namespace `namespace`, which exists, through `client`.
    pub fn existing(client: Client, namespace: &str) -> TestEnv {
        TestEnv {
            client,
            namespace: namespace.into(),
            stores: Default::default(),
        }
    }

    /// Creates DatabaseStore `name` with `spec`, labelled for this test's operator unless
    /// `served` is false, and returns it.
    pub async fn create_store(&self, name: &str, spec: serde_json::Value, served: bool) -> String {
        let labels = match served {
            true => serde_json::json!({STORE_LABEL: self.namespace}),
            false => serde_json::json!({}),
        };
        let store: slatedb_operator::api::DatabaseStore =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseStore",
                "metadata": {"name": name, "labels": labels}, "spec": spec
            }))
            .expect("a DatabaseStore manifest");
        Api::<slatedb_operator::api::DatabaseStore>::all(self.client.clone())
            .create(&PostParams::default(), &store)
            .await
            .unwrap_or_else(|e| panic!("creating DatabaseStore {name}: {e}"));
        self.stores.lock().unwrap().push(name.to_string());
        name.to_string()
    }

    /// Deletes the namespace and the test's DatabaseStores. The test's operator stops right
    /// after, so the finalizers of what is left in the namespace are released here (teardown:
    /// tests that check deletion do so before): no namespace stays Terminating on a cluster that
    /// runs the suite again.
    pub async fn cleanup(self) {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await
            .expect("deleting the test namespace");
        let release = serde_json::json!({"metadata": {"finalizers": null}});
        let (merge, params) = (
            kube::api::Patch::Merge(&release),
            kube::api::PatchParams::default(),
        );
        let checkpoints = self.api::<slatedb_operator::api::DatabaseCheckpoint>();
        let clones = self.api::<slatedb_operator::api::DatabaseClone>();
        // Deleting first: the operator adds its finalizer back to an object that is not being
        // deleted. A few passes, as it may still be adding one to an object it reconciles now.
        let all = kube::api::ListParams::default();
        let _ = checkpoints
            .delete_collection(&DeleteParams::default(), &all)
            .await;
        let _ = clones
            .delete_collection(&DeleteParams::default(), &all)
            .await;
        for _ in 0..5 {
            let left_checkpoints = checkpoints
                .list(&all)
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            let left_clones = clones.list(&all).await.map(|l| l.items).unwrap_or_default();
            if left_checkpoints.is_empty() && left_clones.is_empty() {
                break;
            }
            for checkpoint in left_checkpoints {
                let name = checkpoint.metadata.name.unwrap_or_default();
                let _ = checkpoints.patch(&name, &params, &merge).await;
            }
            for clone in left_clones {
                let name = clone.metadata.name.unwrap_or_default();
                let _ = clones.patch(&name, &params, &merge).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let stores = Api::<slatedb_operator::api::DatabaseStore>::all(self.client.clone());
        let names = self.stores.lock().unwrap().clone();
        for name in names {
            let _ = stores.delete(&name, &DeleteParams::default()).await;
            let release = serde_json::json!({"metadata": {"finalizers": null}});
            let _ = stores
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&release),
                )
                .await;
        }
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

/// Generates a module `$scenario` with two tests that run the scenario on a `file://` store and on
/// the S3-protocol test server.
macro_rules! on_both_stores {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test]
            async fn file() {
                super::$scenario(crate::support::StoreKind::File).await
            }
            #[tokio::test]
            async fn s3() {
                super::$scenario(crate::support::StoreKind::S3).await
            }
        }
    };
}

/// The longest one probe of [`eventually`] may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Polls `probe` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        // One probe that hangs (a request on a connection the server stopped answering) must not
        // use up the whole wait: it is abandoned and the next one goes out on another connection.
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = left.clamp(Duration::from_secs(1), PROBE_TIMEOUT);
        if let Ok(Some(value)) = tokio::time::timeout(attempt, probe()).await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value of `--namespaces` in `args` (the test namespace an operator serves), for its store
/// selector.
fn store_owner(args: &[&str]) -> String {
    args.windows(2)
        .find(|w| w[0] == "--namespaces")
        .map_or("none".into(), |w| w[1].replace(',', "."))
}

/// The operator binary running as a child process, watching one test namespace; killed on drop.
pub struct Operator {
    child: std::process::Child,
}

impl Operator {
    pub fn start(namespace: &str, extra_env: &[(&str, &str)]) -> Operator {
        Operator::start_with_args(namespace, extra_env, &[])
    }

    pub fn start_with_args(
        namespace: &str,
        extra_env: &[(&str, &str)],
        extra_args: &[&str],
    ) -> Operator {
        Operator::start_in(namespace, extra_env, extra_args, true)
    }

    /// Like [`Operator::start_with_args`]; `allow_local` passes `--allow-local-stores`.
    pub fn start_in(
        namespace: &str,
        extra_env: &[(&str, &str)],
        extra_args: &[&str],
        allow_local: bool,
    ) -> Operator {
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("operator-{namespace}.log")))
                .expect("creating the operator log");
        let child = Command::new(env!("CARGO_BIN_EXE_slatedb-operator"))
            .args([
                "--log-format",
                "json",
                "run",
                "--namespaces",
                namespace,
                "--admin-timeout-seconds",
                "10",
            ])
            .args(["--max-backoff-seconds", "5"])
            // The test stores are file:// and an S3 server on loopback.
            .args(allow_local.then_some("--allow-local-stores"))
            .args(["--operator-namespace", namespace])
            .arg(format!("--store-selector={STORE_LABEL}={namespace}"))
            .args(if extra_args.contains(&"--http-port") {
                &[][..]
            } else {
                &["--http-port", "0"][..]
            })
            .args(extra_args)
            .envs(NO_METADATA)
            .envs(extra_env.iter().copied())
            .env("RUST_LOG", "info,slatedb=warn,slatedb_operator=info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the operator");
        Operator { child }
    }

    /// Runs the operator with a kubeconfig of its own (e.g. one that impersonates a ServiceAccount),
    /// logging to `log`.
    pub fn start_as(
        kubeconfig: &std::path::Path,
        log: &std::path::Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Operator {
        let file = std::fs::File::create(log).expect("creating the operator log");
        let child = Command::new(env!("CARGO_BIN_EXE_slatedb-operator"))
            .args([
                "--log-format",
                "json",
                "run",
                "--admin-timeout-seconds",
                "10",
                "--max-backoff-seconds",
                "5",
                "--allow-local-stores",
            ])
            .args(args)
            .arg(format!("--store-selector={STORE_LABEL}={}", store_owner(args)))
            .env("KUBECONFIG", kubeconfig)
            .envs(NO_METADATA)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                "debug,slatedb=warn,slatedb_operator=debug,hyper=info,kube_client=info,tower=info,h2=info,rustls=info",
            )
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting the operator");
        Operator { child }
    }

    /// Stops the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "operator did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which object store a test runs against.
#[derive(Clone, Copy, Debug)]
pub enum StoreKind {
    File,
    S3,
}

/// A store for one test: its URL and options, as a user would put them in a spec and a Secret.
pub struct TestStore {
    pub url: String,
    pub options: std::collections::BTreeMap<String, String>,
    /// Local directory holding the objects (for the S3 server, its bucket directory plus prefix).
    pub local_root: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    pub fn new(kind: StoreKind, namespace: &str) -> TestStore {
        match kind {
            StoreKind::File => {
                let dir = tempfile::tempdir().unwrap();
                TestStore {
                    url: format!("file://{}", dir.path().display()),
                    options: Default::default(),
                    local_root: dir.path().to_path_buf(),
                    _dir: Some(dir),
                }
            }
            StoreKind::S3 => {
                let bucket = required_env("E2E_S3_BUCKET");
                let options = [
                    ("AWS_ACCESS_KEY_ID", required_env("E2E_S3_ACCESS_KEY")),
                    ("AWS_SECRET_ACCESS_KEY", required_env("E2E_S3_SECRET_KEY")),
                    ("AWS_ENDPOINT", required_env("E2E_S3_ENDPOINT")),
                    ("AWS_ALLOW_HTTP", "true".to_string()),
                    ("AWS_REGION", "us-east-1".to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                TestStore {
                    url: format!("s3://{bucket}/{namespace}"),
                    options,
                    local_root: std::path::PathBuf::from(required_env("E2E_S3_ROOT"))
                        .join(bucket)
                        .join(namespace),
                    _dir: None,
                }
            }
        }
    }

    pub fn config(&self) -> slatedb_operator::engine::StoreConfig {
        slatedb_operator::engine::StoreConfig {
            url: self.url.clone(),
            options: self.options.clone(),
            ..Default::default()
        }
    }

    pub fn open(&self) -> slatedb_operator::engine::Store {
        slatedb_operator::engine::Store::open(&self.config()).expect("opening the test store")
    }

    pub fn database(&self, path: &str) -> slatedb_operator::engine::Database {
        slatedb_operator::engine::Database::new(self.open(), path, Duration::from_secs(20))
    }

    /// The `spec.database.store` of a manifest, with a Secret reference when the store needs one.
    pub fn store_spec(&self) -> serde_json::Value {
        if self.options.is_empty() {
            serde_json::json!({"url": self.url})
        } else {
            serde_json::json!({"url": self.url, "secretRef": {"name": "store-credentials"}})
        }
    }

    /// Creates the Secret named by [`TestStore::store_spec`], if this store needs one.
    pub async fn create_secret(&self, env: &TestEnv) {
        if self.options.is_empty() {
            return;
        }
        let secret: k8s_openapi::api::core::v1::Secret =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "store-credentials"}, "stringData": self.options
            }))
            .unwrap();
        env.api::<k8s_openapi::api::core::v1::Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .expect("creating the store Secret");
    }
}

/// Writes a real SlateDB database at `path` (see [`slatedb_operator::engine::sample`]).
pub async fn write_sample_db(store: &TestStore, path: &str, keys: usize, ssts: usize) {
    slatedb_operator::engine::sample::write_sample_db(&store.open(), path, keys, ssts)
        .await
        .unwrap();
}

/// Runs the program named by the environment variable `program_env` (e.g. `E2E_HELM`, `E2E_KUBECTL`,
/// `E2E_LUA`) with `args`, feeding `stdin` when given, and returns its output whatever its exit status.
pub fn run_tool(program_env: &str, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    let program = required_env(program_env);
    let mut child = Command::new(&program)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program} ({program_env}): {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        // A thread, so a child that writes a lot before reading all of its input cannot deadlock us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"))
}

/// A path inside the repository (the crate root).
pub fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A TCP port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tiny HTTP GET over a TCP socket (the operator's endpoints answer one request per
/// connection); returns the body.
pub async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The value of a Prometheus sample whose line starts with `series` (name and labels), summed
/// over every line that matches.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// --- manifests and the tools that check them ----------------------------------------------------

/// What ran and how it ended, with its output, for an assertion message.
pub fn describe(what: &str, output: &Output) -> String {
    format!(
        "{what}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The documents of a multi-document YAML stream, as JSON values (empty documents dropped).
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("parsing YAML: {e}\n{yaml}"));
            serde_json::to_value(value).unwrap()
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// The object of `kind` named `name` among `docs`, if there is one.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

/// The object of `kind` named `name` among `docs`; panics, listing what there is, when it is missing.
pub fn get<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(docs, kind, name).unwrap_or_else(|| {
        let present: Vec<String> = docs
            .iter()
            .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
            .collect();
        panic!("no {kind} {name} among the documents; they are {present:?}")
    })
}

/// `kubectl apply --dry-run=server -f -` of `yaml`, in `namespace` when given (kubectl refuses objects
/// of other namespaces then); returns stderr (warnings).
pub fn server_dry_run(namespace: Option<&str>, yaml: &str, what: &str) -> String {
    let mut args = vec!["apply", "--dry-run=server", "-f", "-"];
    if let Some(namespace) = namespace {
        args.extend(["--namespace", namespace]);
    }
    let output = run_tool("E2E_KUBECTL", &args, Some(yaml.as_bytes()));
    assert!(
        output.status.success(),
        "{}",
        describe(
            &format!("kubectl apply --dry-run=server of {what}"),
            &output
        )
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The `.yaml`/`.yml` files directly in `dir`, by file name.
pub fn yaml_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|path| {
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            )
        })
        .collect()
}

// --- the GCS- and Azure-protocol test servers ---------------------------------------------------

impl TestStore {
    /// A store under `prefix` on the GCS-protocol test server, with the options a Secret gives
    /// it: the server's base URL and a service-account key with `disable_oauth` (no token or
    /// metadata server is ever asked). Its objects are in the server's memory: `local_root` is
    /// empty.
    pub fn gcs(prefix: &str) -> TestStore {
        let bucket = required_env("E2E_GCS_BUCKET");
        TestStore::remote(
            format!("gs://{bucket}/{prefix}"),
            [
                (
                    "GOOGLE_SERVICE_ACCOUNT_KEY",
                    required_env("E2E_GCS_SERVICE_ACCOUNT_KEY"),
                ),
                ("GOOGLE_BASE_URL", required_env("E2E_GCS_ENDPOINT")),
                ("GOOGLE_ALLOW_HTTP", "true".to_string()),
            ],
        )
    }

    /// A store under `prefix` on the Azure-Blob-protocol test server (Azurite), with the options
    /// a Secret gives it: the account, its key and the account's path-style endpoint. Its objects
    /// are in Azurite's own files: `local_root` is empty.
    pub fn azure(prefix: &str) -> TestStore {
        let container = required_env("E2E_AZURE_CONTAINER");
        TestStore::remote(
            format!("az://{container}/{prefix}"),
            [
                (
                    "AZURE_STORAGE_ACCOUNT_NAME",
                    required_env("E2E_AZURE_ACCOUNT"),
                ),
                ("AZURE_STORAGE_ACCESS_KEY", required_env("E2E_AZURE_KEY")),
                ("AZURE_ENDPOINT", required_env("E2E_AZURE_ENDPOINT")),
                ("AZURE_ALLOW_HTTP", "true".to_string()),
            ],
        )
    }

    fn remote<const N: usize>(url: String, options: [(&str, String); N]) -> TestStore {
        TestStore {
            url,
            options: options
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            local_root: std::path::PathBuf::new(),
            _dir: None,
        }
    }
}
