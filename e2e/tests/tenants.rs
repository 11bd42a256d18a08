//! Stores belong to administrators: two tenants, each a user holding the chart's aggregated edit
//! role in their own namespace, reach only the DatabaseStores and paths they were given; inline
//! stores never reach the operator's files, loopback or identity; and the operator's ambient
//! identity (here a fake instance-metadata endpoint on loopback) is used only by a DatabaseStore
//! that says `ambient`.

use crate::clones::{assert_all_rows, objects_under, wait_checkpoint_ready, wait_clone, wait_gone};
use crate::support::{
    eventually, repo_path, run_tool, write_sample_db, Operator, StoreKind, TestEnv, TestStore,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseClone, DatabaseStore};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A client of the test's cluster acting as `user`.
async fn client_as(user: &str) -> Client {
    let mut config = kube::Config::infer().await.expect("the test's kubeconfig");
    config.auth_info.impersonate = Some(user.into());
    Client::try_from(config).expect("an impersonating client")
}

/// Installs the chart's aggregated user roles (release `release`) and waits until the built-in
/// `edit` role has aggregated them.
async fn install_user_roles(admin: &Client, release: &str) {
    let rendered = run_tool(
        "E2E_HELM",
        &[
            "template",
            release,
            repo_path("charts/slatedb-operator").to_str().unwrap(),
            "--set",
            "crds.enabled=false",
        ],
        None,
    );
    assert!(rendered.status.success(), "helm template failed");
    let roles = Api::<ClusterRole>::all(admin.clone());
    for doc in crate::support::documents(&String::from_utf8_lossy(&rendered.stdout)) {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if doc["kind"] != "ClusterRole" || !(name.ends_with("-edit") || name.ends_with("-view")) {
            continue;
        }
        let role: ClusterRole = serde_json::from_value(doc).unwrap();
        roles
            .patch(
                &name,
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&role),
            )
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "edit aggregates the chart's rules",
        || async {
            let edit = roles.get("edit").await.ok()?;
            edit.rules?
                .iter()
                .any(|r| {
                    r.resources
                        .as_ref()
                        .is_some_and(|rs| rs.iter().any(|x| x == "databaseclones"))
                })
                .then_some(())
        },
    )
    .await;
}

/// Binds the built-in `edit` role to `user` in `namespace`.
async fn grant_edit(admin: &Client, namespace: &str, user: &str) {
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{user}-edit")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// Creates an object of `kind` in `namespace` through `client` (a tenant's).
async fn create_as(client: &Client, namespace: &str, kind: &str, name: &str, spec: Value) {
    let resource = match kind {
        "DatabaseClone" => ApiResource::erase::<DatabaseClone>(&()),
        _ => ApiResource::erase::<DatabaseCheckpoint>(&()),
    };
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "slatedb.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("{kind} {namespace}/{name}: {e}"));
}

/// Waits until `name` in `namespace` is Stalled and returns (reason, message).
async fn wait_stalled(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> (String, String) {
    let resource = match kind {
        "DatabaseClone" => ApiResource::erase::<DatabaseClone>(&()),
        _ => ApiResource::erase::<DatabaseCheckpoint>(&()),
    };
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource);
    eventually(
        Duration::from_secs(60),
        &format!("{kind} {namespace}/{name} Stalled"),
        || async {
            let object = api.get(name).await.ok()?;
            let conditions = object.data["status"]["conditions"].as_array()?.clone();
            let stalled = conditions
                .iter()
                .find(|c| c["type"] == "Stalled" && c["status"] == "True")?;
            Some((
                stalled["reason"].as_str()?.to_string(),
                stalled["message"].as_str()?.to_string(),
            ))
        },
    )
    .await
}

/// Waits until DatabaseStore `name` has condition `type_` True and returns its reason.
async fn wait_store_condition(admin: &Client, name: &str, type_: &str) -> String {
    let stores = Api::<DatabaseStore>::all(admin.clone());
    eventually(
        Duration::from_secs(60),
        &format!("DatabaseStore {name} {type_}"),
        || async {
            let store = stores.get(name).await.ok()?;
            store
                .status?
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
                .map(|c| c.reason.clone())
        },
    )
    .await
}

async fn create_secret(env: &TestEnv, name: &str, data: Value) {
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

#[tokio::test]
async fn tenants_reach_only_the_stores_and_paths_an_administrator_gave_them() {
    // The operator's namespace (where DatabaseStore credentials live) and two tenants.
    let ops = TestEnv::new("tenants-op").await;
    let a = TestEnv::new("tenant-a").await;
    let b = TestEnv::new("tenant-b").await;
    let admin = ops.client.clone();
    install_user_roles(&admin, &format!("tenants{}", std::process::id())).await;
    let (alice, bob) = (
        format!("alice-{}", a.namespace),
        format!("bob-{}", b.namespace),
    );
    grant_edit(&admin, &a.namespace, &alice).await;
    grant_edit(&admin, &b.namespace, &bob).await;
    let (alice_client, bob_client) = (client_as(&alice).await, client_as(&bob).await);
    // Tenant A is picked by label, tenant B by name.
    let tenant_label = format!("{}/tenant", "slatedb.io");
    Api::<Namespace>::all(admin.clone())
        .patch(
            &a.namespace,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {&tenant_label: &ops.namespace}}})),
        )
        .await
        .unwrap();

    // An operator without --allow-local-stores serving both tenants.
    let store = TestStore::new(StoreKind::S3, &ops.namespace);
    let watched = format!("{},{},{}", ops.namespace, a.namespace, b.namespace);
    let _operator = Operator::start_in(&ops.namespace, &[], &["--namespaces", &watched], false);

    // The administrator's stores: credentials in the operator's namespace, the endpoint in spec.
    let keys: serde_json::Map<String, Value> = store
        .options
        .iter()
        .filter(|(k, _)| k.contains("ACCESS_KEY"))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    create_secret(&ops, "shared-credentials", Value::Object(keys)).await;
    create_secret(
        &ops,
        "wrong-credentials",
        json!({"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": "wrong"}),
    )
    .await;
    let endpoint: serde_json::Map<String, Value> = store
        .options
        .iter()
        .filter(|(k, _)| !k.contains("ACCESS_KEY"))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let admin_store = |secret: &str, namespaces: Value, write: &str| {
        json!({"url": store.url, "credentials": {"secretRef": {"name": secret}},
               "options": endpoint, "namespaces": namespaces,
               "readPrefixes": ["{namespace}"], "writePrefixes": [write]})
    };
    let shared = ops
        .create_store(
            &format!("{}-shared", ops.namespace),
            admin_store(
                "shared-credentials",
                json!({"selector": {"matchLabels": {&tenant_label: &ops.namespace}}}),
                "{namespace}/clones",
            ),
            true,
        )
        .await;
    let b_store = ops
        .create_store(
            &format!("{}-b", ops.namespace),
            admin_store(
                "shared-credentials",
                json!({"names": [b.namespace]}),
                "{namespace}",
            ),
            true,
        )
        .await;
    let rejected = ops
        .create_store(
            &format!("{}-rejected", ops.namespace),
            admin_store(
                "wrong-credentials",
                json!({"names": [a.namespace]}),
                "{namespace}",
            ),
            true,
        )
        .await;
    assert_eq!(
        wait_store_condition(&admin, &shared, "Ready").await,
        "Succeeded"
    );
    assert_eq!(
        wait_store_condition(&admin, &rejected, "Stalled").await,
        "CredentialsRejected"
    );

    // Tenant A's production database, and everything in the store before tenant B tries.
    let prod = format!("{}/prod", a.namespace);
    write_sample_db(&store, &prod, 300, 2).await;
    let before = objects_under(&store, "").await;

    // Tenant B may not make stores, and every way of reaching A's data is refused.
    let stores_as_bob = Api::<DatabaseStore>::all(bob_client.clone());
    let own_store: DatabaseStore = serde_json::from_value(json!({
        "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseStore",
        "metadata": {"name": format!("{}-bobs", ops.namespace)},
        "spec": {"url": store.url, "credentials": {"ambient": true}, "namespaces": {"names": [b.namespace]}}
    }))
    .unwrap();
    match stores_as_bob
        .create(&PostParams::default(), &own_store)
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("tenant B created a DatabaseStore: {other:?}"),
    }
    create_secret(
        &b,
        "identity",
        json!({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
               "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"}),
    )
    .await;
    create_secret(&b, "no-keys", json!({"AWS_REGION": "us-east-1"})).await;
    let attempts: [(&str, &str, Value, &str); 7] = [
        (
            "names-a-store",
            "DatabaseCheckpoint",
            json!({"database": {"store": {"ref": shared}, "path": prod}}),
            &format!("does not allow namespace {}", b.namespace),
        ),
        (
            "outside-subtree",
            "DatabaseCheckpoint",
            json!({"database": {"store": {"ref": b_store}, "path": prod}}),
            "(spec.readPrefixes)",
        ),
        (
            "clone-from-a",
            "DatabaseClone",
            json!({"source": {"database": {"store": {"ref": b_store}, "path": prod}},
                "target": {"path": format!("{}/stolen", b.namespace)}}),
            "(spec.readPrefixes)",
        ),
        (
            "file-url",
            "DatabaseCheckpoint",
            json!({"database": {"store": {"url": format!("file://{}", store.local_root.display())}, "path": prod}}),
            "--allow-local-stores",
        ),
        (
            "inline-without-credentials",
            "DatabaseCheckpoint",
            json!({"database": {"store": {"url": store.url, "secretRef": {"name": "no-keys"}}, "path": prod}}),
            "needs explicit credentials",
        ),
        (
            "identity-option",
            "DatabaseCheckpoint",
            json!({"database": {"store": {"url": "s3://e2e-bucket/x", "secretRef": {"name": "identity"}}, "path": prod}}),
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ),
        (
            "loopback-endpoint",
            "DatabaseCheckpoint",
            json!({"database": {"store": {"url": store.url, "secretRef": {"name": "store-credentials"}}, "path": prod}}),
            "operator's own loopback",
        ),
    ];
    store.create_secret(&b).await;
    for (name, kind, spec, _) in &attempts {
        create_as(&bob_client, &b.namespace, kind, name, spec.clone()).await;
    }
    for (name, kind, _, expected) in &attempts {
        let (reason, message) = wait_stalled(&bob_client, &b.namespace, kind, name).await;
        assert_eq!(reason, "StoreNotAllowed", "{name}: {message}");
        assert!(
            message.contains(expected),
            "{name}: {message:?} lacks {expected:?}"
        );
        eprintln!("tenants: {name}: {message}");
    }
    assert_eq!(
        objects_under(&store, "").await,
        before,
        "a refused use wrote to the store"
    );

    // Tenant A's own use works: a checkpoint of its database and a clone in its clones subtree,
    // which reads back every row; a target outside that subtree is refused.
    create_as(
        &alice_client,
        &a.namespace,
        "DatabaseCheckpoint",
        "nightly",
        json!({"database": {"store": {"ref": shared}, "path": prod}}),
    )
    .await;
    wait_checkpoint_ready(&a, "nightly").await;
    let target = format!("{}/clones/pr-1", a.namespace);
    create_as(
        &alice_client,
        &a.namespace,
        "DatabaseClone",
        "pr-1",
        json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": target}}),
    )
    .await;
    wait_clone(&a, "pr-1", "Ready", Duration::from_secs(90)).await;
    assert_all_rows(&store, &target, 300).await;
    create_as(
        &alice_client,
        &a.namespace,
        "DatabaseClone",
        "outside",
        json!({"source": {"checkpointRef": {"name": "nightly"}},
               "target": {"path": format!("{}/elsewhere", a.namespace)}}),
    )
    .await;
    let (reason, message) =
        wait_stalled(&alice_client, &a.namespace, "DatabaseClone", "outside").await;
    assert_eq!(reason, "StoreNotAllowed");
    assert!(message.contains("(spec.writePrefixes)"), "{message}");
    assert!(objects_under(&store, &format!("{}/elsewhere", a.namespace))
        .await
        .is_empty());

    // The store in use is not deleted under its users: DeletionBlocked names the objects that
    // hold data through it; it goes with them.
    let stores = Api::<DatabaseStore>::all(admin.clone());
    stores.delete(&shared, &Default::default()).await.unwrap();
    let blocked = eventually(Duration::from_secs(30), "DeletionBlocked", || async {
        let store = stores.get(&shared).await.ok()?;
        store
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "DeletionBlocked" && c.status == "True")
            .map(|c| c.message)
    })
    .await;
    assert!(
        blocked.contains(&format!("DatabaseClone {}/pr-1", a.namespace)),
        "{blocked}"
    );
    for clone in ["pr-1", "outside"] {
        a.api::<DatabaseClone>()
            .delete(clone, &Default::default())
            .await
            .unwrap();
        wait_gone(&a.api::<DatabaseClone>(), clone, Duration::from_secs(60)).await;
    }
    a.api::<DatabaseCheckpoint>()
        .delete("nightly", &Default::default())
        .await
        .unwrap();
    wait_gone(
        &a.api::<DatabaseCheckpoint>(),
        "nightly",
        Duration::from_secs(60),
    )
    .await;
    wait_gone(&stores, &shared, Duration::from_secs(30)).await;

    b.cleanup().await;
    a.cleanup().await;
    ops.cleanup().await;
}

/// A fake instance-metadata service on loopback (IMDSv2: a session token, the role, then the
/// role's credentials), handing out the S3 server's keys and counting every request.
struct FakeMetadata {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl FakeMetadata {
    async fn start(access_key: String, secret_key: String) -> FakeMetadata {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let counted = counted.clone();
                let (access_key, secret_key) = (access_key.clone(), secret_key.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8_lossy(&request);
                    let path = text.split_whitespace().nth(1).unwrap_or_default();
                    let expiry = chrono::Utc::now() + chrono::TimeDelta::hours(1);
                    let body = match path {
                        "/latest/api/token" => "e2e-session-token".to_string(),
                        "/latest/meta-data/iam/security-credentials/" => "e2e-role".to_string(),
                        "/latest/meta-data/iam/security-credentials/e2e-role" => json!({
                            "AccessKeyId": access_key, "SecretAccessKey": secret_key,
                            "Token": "e2e-token", "Expiration": expiry.to_rfc3339(),
                        })
                        .to_string(),
                        _ => String::new(),
                    };
                    let status = if body.is_empty() {
                        "404 Not Found"
                    } else {
                        "200 OK"
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        FakeMetadata { port, requests }
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn only_an_ambient_database_store_uses_the_operators_identity() {
    let env = TestEnv::new("ambient").await;
    let store = TestStore::new(StoreKind::S3, &env.namespace);
    let metadata = FakeMetadata::start(
        store.options["AWS_ACCESS_KEY_ID"].clone(),
        store.options["AWS_SECRET_ACCESS_KEY"].clone(),
    )
    .await;
    let endpoint = format!("http://127.0.0.1:{}", metadata.port);
    // The operator's ambient identity is the fake endpoint; inline stores may even go without
    // credentials (--inline-stores=allow), and still never ask it.
    let _operator = Operator::start_in(
        &env.namespace,
        &[("AWS_METADATA_ENDPOINT", &endpoint)],
        &["--inline-stores", "allow"],
        true,
    );
    write_sample_db(&store, "prod", 200, 1).await;
    let location: serde_json::Map<String, Value> = store
        .options
        .iter()
        .filter(|(k, _)| !k.contains("ACCESS_KEY"))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    create_secret(&env, "no-keys", Value::Object(location.clone())).await;
    crate::clones::create(
        &env,
        "DatabaseCheckpoint",
        "inline",
        json!({"database": {"store": {"url": store.url, "secretRef": {"name": "no-keys"}}, "path": "prod"}}),
    )
    .await;
    let checkpoints = env.api::<DatabaseCheckpoint>();
    let settled = eventually(
        Duration::from_secs(60),
        "the inline checkpoint settles",
        || async {
            let checkpoint = checkpoints.get("inline").await.ok()?;
            let conditions = checkpoint.status?.conditions;
            conditions
                .iter()
                .find(|c| (c.type_ == "Stalled" || c.type_ == "Ready") && c.status == "True")
                .map(|c| format!("{} {}: {}", c.type_, c.reason, c.message))
        },
    )
    .await;
    eprintln!("ambient: the inline store without credentials: {settled}");
    assert_eq!(
        metadata.count(),
        0,
        "an inline store asked the operator's metadata endpoint"
    );

    let ambient = env
        .create_store(
            &format!("{}-ambient", env.namespace),
            json!({"url": store.url, "credentials": {"ambient": true}, "options": location,
                   "namespaces": {"names": [env.namespace]}, "readPrefixes": ["prod"]}),
            true,
        )
        .await;
    assert_eq!(
        wait_store_condition(&env.client, &ambient, "Ready").await,
        "Succeeded"
    );
    crate::clones::create(
        &env,
        "DatabaseCheckpoint",
        "ambient",
        json!({"database": {"store": {"ref": ambient}, "path": "prod"}}),
    )
    .await;
    wait_checkpoint_ready(&env, "ambient").await;
    assert!(
        metadata.count() >= 3,
        "the ambient store got its credentials elsewhere: {} metadata requests",
        metadata.count()
    );
    env.cleanup().await;
}
