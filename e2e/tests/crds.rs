//! The two CRDs on the real kube-apiserver: admission, defaults, status subresource, printer
//! columns, finalizers and garbage collection of owned objects.

use crate::support::{eventually, TestEnv};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use slatedb_operator::api::{
    CheckpointSourceMode, ChecksumMode, DatabaseCheckpoint, DatabaseClone, DeletionPolicy,
    ExpirationPolicy, VerifyMode,
};
use std::time::Duration;

pub(crate) fn clone_manifest(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone", "metadata": {"name": name}, "spec": spec})
}

pub(crate) fn checkpoint_manifest(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint", "metadata": {"name": name}, "spec": spec})
}

fn database() -> Value {
    json!({"store": {"url": "s3://bucket/prefix", "secretRef": {"name": "s3-credentials"}}, "path": "prod/orders"})
}

fn valid_clone_spec() -> Value {
    json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/pr-1"}})
}

pub(crate) fn dynamic_api<K>(env: &TestEnv) -> Api<DynamicObject>
where
    K: kube::Resource<DynamicType = ()>,
{
    Api::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &ApiResource::erase::<K>(&()),
    )
}

pub(crate) async fn create_raw(
    api: &Api<DynamicObject>,
    manifest: Value,
) -> Result<DynamicObject, kube::Error> {
    let object: DynamicObject = serde_json::from_value(manifest).unwrap();
    api.create(&PostParams::default(), &object).await
}

#[tokio::test]
async fn valid_objects_of_both_kinds_are_accepted_and_defaulted() {
    let env = TestEnv::new("valid").await;
    let checkpoints = dynamic_api::<DatabaseCheckpoint>(&env);
    let clones = dynamic_api::<DatabaseClone>(&env);

    create_raw(
        &checkpoints,
        checkpoint_manifest(
            "nightly",
            json!({"database": database(), "lifetime": "24h"}),
        ),
    )
    .await
    .expect("a valid checkpoint is accepted");
    create_raw(&clones, clone_manifest("pr-1", valid_clone_spec()))
        .await
        .expect("a clone of a checkpoint is accepted");
    create_raw(
        &clones,
        clone_manifest(
            "latest",
            json!({"source": {"database": database(), "keyRange": {"start": "a", "end": "base64:/w=="}},
                   "target": {"path": "clones/latest"}, "verify": "Content", "expireAfter": "2h",
                   "expirationPolicy": "ExpireData", "deletionPolicy": "Retain"}),
        ),
    )
    .await
    .expect("a clone of a database's latest state is accepted");

    // Defaults are filled in by the API server, so what is stored is typed and complete.
    let checkpoint = env
        .api::<DatabaseCheckpoint>()
        .get("nightly")
        .await
        .unwrap();
    assert_eq!(checkpoint.spec.source.mode, CheckpointSourceMode::Create);
    assert_eq!(checkpoint.spec.deletion_policy, DeletionPolicy::Delete);
    assert_eq!(checkpoint.spec.checksum, ChecksumMode::Metadata);
    let clone = env.api::<DatabaseClone>().get("pr-1").await.unwrap();
    assert_eq!(clone.spec.verify, VerifyMode::Metadata);
    assert_eq!(clone.spec.expiration_policy, ExpirationPolicy::Delete);
    assert_eq!(clone.spec.deletion_policy, DeletionPolicy::Delete);
    let latest = env.api::<DatabaseClone>().get("latest").await.unwrap();
    assert_eq!(latest.spec.deletion_policy, DeletionPolicy::Retain);
    assert_eq!(latest.spec.source.database.unwrap().path.0, "prod/orders");
    env.cleanup().await;
}

#[tokio::test]
async fn invalid_manifests_are_rejected_with_a_message_naming_the_problem() {
    let env = TestEnv::new("invalid").await;
    let clones = dynamic_api::<DatabaseClone>(&env);
    let checkpoints = dynamic_api::<DatabaseCheckpoint>(&env);
    let with = |key: &str, value: Value| {
        let mut spec = valid_clone_spec();
        spec[key] = value;
        spec
    };
    let clone_cases: Vec<(&str, Value, &str)> = vec![
        (
            "both-sources",
            with(
                "source",
                json!({"checkpointRef": {"name": "a"}, "database": database()}),
            ),
            "exactly one of checkpointRef, scheduleRef or database",
        ),
        (
            "no-source",
            with("source", json!({})),
            "exactly one of checkpointRef, scheduleRef or database",
        ),
        (
            "dotdot",
            with("target", json!({"path": "clones/../prod"})),
            "must not contain '..' segments",
        ),
        (
            "absolute",
            with("target", json!({"path": "/clones/x"})),
            "no leading '/'",
        ),
        (
            "empty-path",
            with("target", json!({"path": ""})),
            "path must not be empty",
        ),
        (
            "same-path",
            json!({"source": {"database": database()}, "target": {"path": "prod/orders"}}),
            "must differ from the source database path",
        ),
        (
            "bad-duration",
            with("expireAfter", json!("3 days")),
            "must be a duration such as 30m",
        ),
        (
            "short-duration",
            with("expireAfter", json!("900ms")),
            "between 1s and 87600h",
        ),
        (
            "bad-enum",
            with("verify", json!("Everything")),
            "Unsupported value: \"Everything\"",
        ),
        (
            "bad-type",
            with("expireAfter", json!(3600)),
            "must be of type string",
        ),
        (
            "no-target",
            json!({"source": {"checkpointRef": {"name": "a"}}}),
            "spec.target: Required value",
        ),
        (
            "bad-base64",
            with(
                "source",
                json!({"checkpointRef": {"name": "a"}, "keyRange": {"start": "base64:not base64"}}),
            ),
            "standard padded base64",
        ),
        (
            "bad-url",
            json!({"source": {"database": {"store": {"url": "ftp://host/x"}, "path": "p"}}, "target": {"path": "q"}}),
            "must be an object-store URL",
        ),
        (
            "huge-path",
            with("target", json!({"path": "a".repeat(5000)})),
            "may not be more than 1024 bytes",
        ),
    ];
    let checkpoint_cases: Vec<(&str, Value, &str)> = vec![
        (
            "adopt-without-ref",
            json!({"database": database(), "source": {"mode": "Adopt"}}),
            "source.adopt must be set when, and only when, source.mode is Adopt",
        ),
        (
            "adopt-id-and-name",
            json!({"database": database(), "source": {"mode": "Adopt", "adopt": {"id": "0195d7a2-3c4f-7e21-9a0b-1c2d3e4f5a6b", "name": "n"}}}),
            "exactly one of id or name",
        ),
        (
            "bad-lifetime",
            json!({"database": database(), "lifetime": "1y"}),
            "must be a duration",
        ),
        (
            "bad-policy",
            json!({"database": database(), "deletionPolicy": "Keep"}),
            "Unsupported value: \"Keep\"",
        ),
    ];
    let mut checked = 0;
    for (api, make, cases) in [
        (
            &clones,
            clone_manifest as fn(&str, Value) -> Value,
            clone_cases,
        ),
        (&checkpoints, checkpoint_manifest, checkpoint_cases),
    ] {
        for (name, spec, expected) in cases {
            match create_raw(api, make(name, spec)).await {
                Ok(_) => panic!("{name}: the API server accepted an invalid manifest"),
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422, "{name}: {status:?}");
                    assert!(
                        status.message.contains(expected),
                        "{name}: expected {expected:?} in {:?}",
                        status.message
                    );
                }
                Err(other) => panic!("{name}: unexpected error {other}"),
            }
            checked += 1;
        }
    }
    assert!(checked >= 10);

    // Immutable fields: the object is accepted once, then changes to source or target are refused.
    create_raw(&clones, clone_manifest("immutable", valid_clone_spec()))
        .await
        .unwrap();
    for (field, value, expected) in [
        (
            "target",
            json!({"path": "clones/elsewhere"}),
            "spec.target is immutable",
        ),
        (
            "source",
            json!({"checkpointRef": {"name": "other"}}),
            "spec.source is immutable",
        ),
    ] {
        let patch = json!({"spec": {field: value}});
        let err = clones
            .patch("immutable", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("changing an immutable field must fail");
        assert!(err.to_string().contains(expected), "{field}: {err}");
    }
    // A mutable field may change.
    clones
        .patch(
            "immutable",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"verify": "Content"}})),
        )
        .await
        .expect("verify is mutable");

    create_raw(
        &checkpoints,
        checkpoint_manifest("moves", json!({"database": database()})),
    )
    .await
    .unwrap();
    let err = checkpoints
        .patch(
            "moves",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"database": {"path": "other"}}})),
        )
        .await
        .expect_err("changing the database must fail");
    assert!(
        err.to_string().contains("spec.database is immutable"),
        "{err}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn status_goes_through_the_subresource_and_kubectl_shows_the_columns() {
    let env = TestEnv::new("status").await;
    let clones = env.api::<DatabaseClone>();
    create_raw(
        &dynamic_api::<DatabaseClone>(&env),
        clone_manifest("pr-7", valid_clone_spec()),
    )
    .await
    .unwrap();

    // Status written through the main resource is ignored...
    clones
        .patch(
            "pr-7",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(clones.get("pr-7").await.unwrap().status, None);

    // ...and through the status subresource it sticks (server-side apply, as the operator does).
    let status = json!({
        "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone",
        "status": {
            "phase": "Cloning", "observedGeneration": 1, "attempts": 1,
            "progress": {"step": "CopyWal", "stepsDone": 3, "stepsTotal": 6, "objectsDone": 4, "objectsTotal": 10,
                         "bytesDone": 4096, "bytesTotal": 10240, "percent": "42%"},
            "conditions": [{"type": "Ready", "status": "False", "reason": "Cloning", "message": "copying WAL",
                            "lastTransitionTime": "2026-11-26T00:00:00Z", "observedGeneration": 1}]
        }
    });
    clones
        .patch_status(
            "pr-7",
            &PatchParams::apply("slatedb-operator").force(),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    let stored = clones.get("pr-7").await.unwrap().status.unwrap();
    assert_eq!(stored.progress.unwrap().percent, "42%");
    assert_eq!(stored.conditions[0].reason, "Cloning");

    let table = env.kubectl(&["get", "dbclone", "pr-7"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "PROGRESS", "SOURCE", "TARGET", "EXPIRES", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["pr-7", "Cloning", "42%", "nightly", "clones/pr-1"],
        "{table}"
    );

    // The category and the short names reach kubectl too.
    assert!(env
        .kubectl(&["get", "slatedb", "-o", "name"])
        .contains("databaseclone.slatedb.io/pr-7"));
    let checkpoint_header = env.kubectl(&["get", "dbcp"]);
    assert!(
        checkpoint_header.is_empty() || checkpoint_header.starts_with("NAME"),
        "{checkpoint_header}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_finalizer_holds_deletion_until_it_is_removed() {
    let env = TestEnv::new("finalizer").await;
    let clones = env.api::<DatabaseClone>();
    let mut manifest = clone_manifest("held", valid_clone_spec());
    manifest["metadata"]["finalizers"] = json!(["slatedb.io/clone-cleanup"]);
    create_raw(&dynamic_api::<DatabaseClone>(&env), manifest)
        .await
        .unwrap();

    clones
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = clones
        .get("held")
        .await
        .expect("the finalizer keeps the object");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.finalizers(), ["slatedb.io/clone-cleanup"]);

    let remove = json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "slatedb.io/clone-cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]);
    clones
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(remove).unwrap()),
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the clone to disappear",
        || async {
            clones
                .get_opt("held")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn objects_owned_by_a_clone_are_garbage_collected_with_it() {
    let env = TestEnv::new("gc").await;
    let clones = env.api::<DatabaseClone>();
    let created = create_raw(
        &dynamic_api::<DatabaseClone>(&env),
        clone_manifest("owner", valid_clone_spec()),
    )
    .await
    .unwrap();
    let config_maps = env.api::<ConfigMap>();
    let owned: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone", "name": "owner",
            "uid": created.uid().unwrap(), "controller": true, "blockOwnerDeletion": true}]},
        "data": {"k": "v"}
    }))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    // An owned object with a live owner stays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(config_maps.get_opt("owned").await.unwrap().is_some());

    clones
        .delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    // kube-controller-manager's garbage collector removes the dependent.
    eventually(
        Duration::from_secs(90),
        "the owned ConfigMap to be garbage-collected",
        || async {
            config_maps
                .get_opt("owned")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    env.cleanup().await;
}
