//! The DatabaseClone controller on the real API server, with real SlateDB databases on `file://`
//! and on the S3-protocol test server. Assertions read the data back through SlateDB.

use crate::support::{eventually, write_sample_db, Operator, StoreKind, TestEnv, TestStore};
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseClone};
use slatedb_operator::engine::sample::sample_row;
use slatedb_operator::engine::CRASH_POINT_ENV;
use std::collections::BTreeMap;
use std::time::Duration;

pub(crate) const PARENT: &str = "prod/orders";

pub(crate) fn condition(object: &DatabaseClone, type_: &str) -> Option<(String, String, String)> {
    let status = object.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub(crate) async fn wait_clone(
    env: &TestEnv,
    name: &str,
    type_: &str,
    timeout: Duration,
) -> DatabaseClone {
    let api = env.api::<DatabaseClone>();
    // What the last probe saw, for the message when the wait runs out.
    let last_seen = std::sync::Mutex::new(String::from("no answer from the API server"));
    let found = tokio::time::timeout(
        timeout,
        eventually(timeout + Duration::from_secs(1), name, || async {
            let seen = api.get(name).await;
            let mut last = last_seen.lock().unwrap();
            match seen {
                Ok(object) => {
                    *last = format!("{:?}", object.status.as_ref().map(|s| &s.conditions));
                    (condition(&object, type_)?.0 == "True").then_some(object)
                }
                Err(error) => {
                    *last = format!("GET failed: {error}");
                    None
                }
            }
        }),
    )
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "timed out after {timeout:?} waiting for clone {name} to have {type_}=True; last seen: {}",
            last_seen.lock().unwrap()
        )
    })
}

pub(crate) async fn create(env: &TestEnv, kind: &str, name: &str, spec: Value) {
    let object: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "slatedb.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    let resource = match kind {
        "DatabaseClone" => kube::api::ApiResource::erase::<DatabaseClone>(&()),
        "DatabaseCheckpointSchedule" => {
            kube::api::ApiResource::erase::<slatedb_operator::api::DatabaseCheckpointSchedule>(&())
        }
        "DatabaseCopy" => kube::api::ApiResource::erase::<slatedb_operator::api::DatabaseCopy>(&()),
        _ => kube::api::ApiResource::erase::<DatabaseCheckpoint>(&()),
    };
    kube::Api::<kube::api::DynamicObject>::namespaced_with(
        env.client.clone(),
        &env.namespace,
        &resource,
    )
    .create(&PostParams::default(), &object)
    .await
    .unwrap_or_else(|e| panic!("creating {kind} {name}: {e}"));
}

/// A parent database and a Ready checkpoint `nightly` of it.
pub(crate) async fn parent_and_checkpoint(
    env: &TestEnv,
    store: &TestStore,
    keys: usize,
    ssts: usize,
) {
    write_sample_db(store, PARENT, keys, ssts).await;
    create(
        env,
        "DatabaseCheckpoint",
        "nightly",
        json!({"database": {"store": store.store_spec(), "path": PARENT}}),
    )
    .await;
    wait_checkpoint_ready(env, "nightly").await;
}

fn clone_spec(target: &str) -> Value {
    json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": target}})
}

/// The SST and WAL objects under `path` with their sha256.
pub(crate) async fn data_objects(store: &TestStore, path: &str) -> BTreeMap<String, String> {
    let mut objects = objects_under(store, path).await;
    objects.retain(|key, _| key.contains("/compacted/") || key.contains("/wal/"));
    objects
}

/// How many objects are under `prefix` (a listing only: objects may go while it runs).
pub(crate) async fn count_under(store: &TestStore, prefix: &str) -> usize {
    use futures::TryStreamExt;
    let listed: Vec<_> = store
        .open()
        .main
        .list(Some(&prefix.into()))
        .try_collect()
        .await
        .unwrap();
    listed.len()
}

/// Waits until the DatabaseCheckpoint `name` is Ready and returns it.
pub(crate) async fn wait_checkpoint_ready(env: &TestEnv, name: &str) -> DatabaseCheckpoint {
    let api = env.api::<DatabaseCheckpoint>();
    eventually(
        Duration::from_secs(90),
        &format!("checkpoint {name} Ready"),
        || async {
            let cp = api.get(name).await.ok()?;
            let ready = cp
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(cp)
        },
    )
    .await
}

/// Waits until the object `name` is gone from the API server.
pub(crate) async fn wait_gone<K>(api: &kube::Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(timeout, &format!("{name} gone"), || async {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// Every object under `prefix` with its size and sha256, read through the store.
pub(crate) async fn objects_under(store: &TestStore, prefix: &str) -> BTreeMap<String, String> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use sha2::Digest;
    let main = store.open().main;
    let listed: Vec<_> = main.list(Some(&prefix.into())).try_collect().await.unwrap();
    let mut out = BTreeMap::new();
    for meta in listed {
        let bytes = main
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        out.insert(
            meta.location.to_string(),
            hex::encode(sha2::Sha256::digest(&bytes)),
        );
    }
    out
}

/// Every row of the database at `path`, read with one scan.
async fn rows(db: &slatedb::Db) -> Vec<(String, String)> {
    let mut iterator = db.scan(..).await.unwrap();
    let mut rows = Vec::new();
    while let Some(row) = iterator.next().await.unwrap() {
        rows.push((
            String::from_utf8_lossy(&row.key).into(),
            String::from_utf8_lossy(&row.value).into(),
        ));
    }
    rows
}

/// Opens the database at `path` and checks it holds exactly the sample rows `range`.
async fn assert_rows(store: &TestStore, path: &str, range: std::ops::Range<usize>) {
    let db = slatedb::Db::builder(path, store.open().main)
        .build()
        .await
        .unwrap();
    let expected: Vec<(String, String)> = range.map(sample_row).collect();
    let actual = rows(&db).await;
    assert_eq!(actual.len(), expected.len(), "{path}: row count");
    assert!(actual == expected, "{path}: rows differ from the sample");
    db.close().await.unwrap();
}

pub(crate) async fn assert_all_rows(store: &TestStore, path: &str, keys: usize) {
    assert_rows(store, path, 0..keys).await;
}

on_both_stores!(a_clone_reads_back_is_isolated_and_copies_no_sst);
async fn a_clone_reads_back_is_isolated_and_copies_no_sst(kind: StoreKind) {
    let env = TestEnv::new("clone-read").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    parent_and_checkpoint(&env, &store, 10_000, 5).await;
    create(&env, "DatabaseClone", "pr-1", clone_spec("clones/pr-1")).await;
    env.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=90s",
        "databaseclone/pr-1",
    ]);
    let ready = env.api::<DatabaseClone>().get("pr-1").await.unwrap();
    assert_eq!(condition(&ready, "Initialized").unwrap().0, "True");
    assert_eq!(condition(&ready, "Verified").unwrap().0, "True");
    let status = ready.status.clone().unwrap();
    assert_eq!(status.progress.unwrap().percent, "100%");
    assert_eq!(status.checksum.unwrap().metadata_digest.len(), 64);
    assert_eq!(status.attempts, Some(1));
    // The start went on record with the cleanup finalizer, in one patch, and the status holds all
    // the record does.
    let record = ready
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(slatedb_operator::api::START_RECORD_ANNOTATION))
        .expect("the start record");
    let record: slatedb_operator::api::DatabaseCloneStatus =
        serde_json::from_str(record).expect("a start record that parses");
    assert!(record.store.is_some(), "{record:?}");
    assert_eq!(
        (&record.store, record.attempts, &record.start_time),
        (&status.store, status.attempts, &status.start_time)
    );
    assert!(record.conditions.is_empty(), "{record:?}");

    // Copy-on-write: the parent has its SSTs, the clone none of its own — only manifests and WAL.
    let parent_objects = objects_under(&store, PARENT).await;
    let clone_objects = objects_under(&store, "clones/pr-1").await;
    let parent_ssts = parent_objects
        .keys()
        .filter(|k| k.contains("/compacted/"))
        .count();
    assert!(parent_ssts >= 5, "{parent_objects:?}");
    assert!(
        clone_objects
            .keys()
            .all(|k| k.contains("/manifest/") || k.contains("/wal/")),
        "{clone_objects:?}"
    );

    assert_all_rows(&store, "clones/pr-1", 10_000).await;
    // Writes are isolated both ways.
    let clone = slatedb::Db::builder("clones/pr-1", store.open().main)
        .build()
        .await
        .unwrap();
    clone.put(b"only-in-clone", b"1").await.unwrap();
    let parent = slatedb::Db::builder(PARENT, store.open().main)
        .build()
        .await
        .unwrap();
    parent.put(b"only-in-parent", b"1").await.unwrap();
    assert_eq!(parent.get(b"only-in-clone").await.unwrap(), None);
    assert_eq!(clone.get(b"only-in-parent").await.unwrap(), None);
    assert!(clone.get(b"only-in-clone").await.unwrap().is_some());
    clone.close().await.unwrap();
    parent.close().await.unwrap();
    env.cleanup().await;
}

on_both_stores!(a_key_range_clone_holds_exactly_the_range);
async fn a_key_range_clone_holds_exactly_the_range(kind: StoreKind) {
    let env = TestEnv::new("clone-range").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    parent_and_checkpoint(&env, &store, 1_000, 2).await;
    let mut spec = clone_spec("clones/range");
    spec["source"]["keyRange"] = json!({"start": "key-000100", "end": "key-000300"});
    create(&env, "DatabaseClone", "range", spec).await;
    wait_clone(&env, "range", "Ready", Duration::from_secs(60)).await;
    assert_rows(&store, "clones/range", 100..300).await;
    env.cleanup().await;
}

/// SIGKILL-equivalent exits at each step of the clone; a restarted operator finishes it.
#[tokio::test]
async fn a_crash_at_each_clone_step_resumes_to_the_same_clone() {
    let env = TestEnv::new("clone-crash").await;
    let store = TestStore::new(StoreKind::File, &env.namespace);
    {
        let _operator = Operator::start(&env.namespace, &[]);
        parent_and_checkpoint(&env, &store, 2_000, 2).await;
    }
    let parent = store.database(PARENT);
    for step in [
        "ResolveSource",
        "WriteManifest",
        "PinParent",
        "MarkInitialized",
        "Verify",
    ] {
        let name = format!("crash-{}", step.to_lowercase());
        let target = format!("clones/{name}");
        create(&env, "DatabaseClone", &name, clone_spec(&target)).await;
        let mut crashing = Operator::start(
            &env.namespace,
            &[(CRASH_POINT_ENV, &format!("clone-{step}"))],
        );
        assert_eq!(
            crashing.wait_exit(Duration::from_secs(60)).await,
            Some(86),
            "{step}"
        );
        drop(crashing);
        let _operator = Operator::start(&env.namespace, &[]);
        let ready = wait_clone(&env, &name, "Ready", Duration::from_secs(60)).await;
        assert!(
            ready.status.unwrap().attempts.unwrap() >= 2,
            "{step}: the restart resumed the work"
        );
        // No stray objects: the clone holds only its manifests and WAL, before anything opens it.
        let objects = objects_under(&store, &target).await;
        assert!(
            objects
                .keys()
                .all(|k| k.contains("/manifest/") || k.contains("/wal/")),
            "{step}: {objects:?}"
        );
        assert_all_rows(&store, &target, 2_000).await;
    }
    // One final checkpoint per clone on the parent (unnamed, no expiry), plus the user's checkpoint.
    let finals = parent.list_checkpoints(Some("")).await.unwrap();
    assert_eq!(finals.len(), 5, "{finals:?}");
    assert!(finals.iter().all(|c| c.expire_time.is_none()));
    env.cleanup().await;
}

on_both_stores!(a_corrupt_source_stalls_and_leaves_nothing);
async fn a_corrupt_source_stalls_and_leaves_nothing(kind: StoreKind) {
    let env = TestEnv::new("clone-corrupt").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    parent_and_checkpoint(&env, &store, 2_000, 2).await;
    let parent = store.database(PARENT);
    let checkpoints_before = parent.list_checkpoints(None).await.unwrap();
    // Flip a byte in a pinned SST through the store itself.
    let manifest_id = checkpoints_before[0].manifest_id;
    let pinned = parent.pinned_objects(manifest_id).await.unwrap();
    let victim = pinned
        .iter()
        .find(|o| o.key.starts_with("sst/"))
        .unwrap()
        .path
        .clone();
    {
        use object_store::ObjectStoreExt;
        let main = store.open().main;
        let mut bytes = main
            .get(&victim)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        bytes[30] ^= 0xff;
        main.put(&victim, bytes.into()).await.unwrap();
    }
    let parent_before = objects_under(&store, PARENT).await;

    let mut spec = clone_spec("clones/bad");
    spec["verify"] = json!("Content");
    create(&env, "DatabaseClone", "bad", spec).await;
    let stalled = wait_clone(&env, "bad", "Stalled", Duration::from_secs(60)).await;
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(reason, "ChecksumMismatch", "{message}");
    let file_name = victim.filename().unwrap().to_string();
    assert!(message.contains(&file_name), "{message}");
    assert_eq!(
        stalled.status.unwrap().last_failure.unwrap().reason,
        "ChecksumMismatch"
    );
    assert!(
        objects_under(&store, "clones/bad").await.is_empty(),
        "nothing is left under the target"
    );
    assert_eq!(
        parent.list_checkpoints(None).await.unwrap(),
        checkpoints_before,
        "the parent's pins are as before"
    );
    // Every parent object is byte-for-byte as before; the only new ones are manifest versions
    // written by SlateDB's checkpoint pin and unpin.
    let parent_after = objects_under(&store, PARENT).await;
    for (object, digest) in &parent_before {
        assert_eq!(parent_after.get(object), Some(digest), "{object} changed");
    }
    let added: Vec<_> = parent_after
        .keys()
        .filter(|k| !parent_before.contains_key(*k))
        .collect();
    assert!(added.iter().all(|k| k.contains("/manifest/")), "{added:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn deleting_the_source_checkpoint_mid_clone_waits_then_completes() {
    let env = TestEnv::new("clone-inuse").await;
    let store = TestStore::new(StoreKind::File, &env.namespace);
    {
        let _operator = Operator::start(&env.namespace, &[]);
        parent_and_checkpoint(&env, &store, 1_000, 1).await;
    }
    create(&env, "DatabaseClone", "pr-9", clone_spec("clones/pr-9")).await;
    // The operator dies after pinning the parent: the clone is half made.
    let mut crashing = Operator::start(&env.namespace, &[(CRASH_POINT_ENV, "clone-PinParent")]);
    assert_eq!(crashing.wait_exit(Duration::from_secs(60)).await, Some(86));
    drop(crashing);
    let checkpoints = env.api::<DatabaseCheckpoint>();
    checkpoints
        .delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    let held = checkpoints
        .get("nightly")
        .await
        .expect("the clone-cleanup and protection finalizers hold it");
    assert!(held.metadata.deletion_timestamp.is_some());

    let _operator = Operator::start(&env.namespace, &[]);
    wait_clone(&env, "pr-9", "Ready", Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(30),
        "the checkpoint to be deleted",
        || async {
            checkpoints
                .get_opt("nightly")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    // The user checkpoint is gone from SlateDB; the clone's final checkpoint keeps the data readable.
    let remaining = store.database(PARENT).list_checkpoints(None).await.unwrap();
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    assert!(remaining[0].name.is_none());
    assert_all_rows(&store, "clones/pr-9", 1_000).await;
    env.cleanup().await;
}

on_both_stores!(expire_after_deletes_or_expires_data_on_time);
async fn expire_after_deletes_or_expires_data_on_time(kind: StoreKind) {
    let env = TestEnv::new("clone-ttl").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    parent_and_checkpoint(&env, &store, 500, 1).await;
    for (name, policy) in [("gone", "Delete"), ("kept", "ExpireData")] {
        let mut spec = clone_spec(&format!("clones/{name}"));
        spec["expireAfter"] = json!("15s");
        spec["expirationPolicy"] = json!(policy);
        create(&env, "DatabaseClone", name, spec).await;
    }
    let clones = env.api::<DatabaseClone>();
    let mut deadlines = BTreeMap::new();
    for name in ["gone", "kept"] {
        let ready = wait_clone(&env, name, "Ready", Duration::from_secs(60)).await;
        let status = ready.status.unwrap();
        let expires = status.expiration_time.unwrap().0;
        let completed = status.completion_time.unwrap().0;
        assert_eq!((expires - completed).get_seconds(), 15);
        deadlines.insert(name, expires);
    }
    let kept = wait_clone(&env, "kept", "Expired", Duration::from_secs(40)).await;
    let expired_at = kept
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Expired")
        .unwrap()
        .last_transition_time
        .0;
    let late = (expired_at - deadlines["kept"]).get_seconds();
    assert!((0..=3).contains(&late), "ExpireData {late}s late");
    assert_eq!(condition(&kept, "Ready").unwrap().0, "False");
    assert!(
        objects_under(&store, "clones/kept").await.is_empty(),
        "ExpireData deletes the data"
    );
    eventually(
        Duration::from_secs(10),
        "the Delete-policy clone to be gone",
        || async {
            clones
                .get_opt("gone")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    let now = k8s_openapi::jiff::Timestamp::now();
    assert!(
        (now - deadlines["gone"]).get_seconds() <= 5,
        "Delete policy acted within a few seconds"
    );
    assert!(
        objects_under(&store, "clones/gone").await.is_empty(),
        "deleting the object deleted the data"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn fifty_clones_at_once_all_become_ready_while_other_objects_are_served() {
    let env = TestEnv::new("clone-fifty").await;
    let store = TestStore::new(StoreKind::File, &env.namespace);
    let _operator = Operator::start(&env.namespace, &[]);
    parent_and_checkpoint(&env, &store, 1_000, 2).await;
    for i in 0..50 {
        create(
            &env,
            "DatabaseClone",
            &format!("pr-{i}"),
            clone_spec(&format!("clones/pr-{i}")),
        )
        .await;
    }
    // Meanwhile, another checkpoint is served.
    create(
        &env,
        "DatabaseCheckpoint",
        "meanwhile",
        json!({"database": {"store": store.store_spec(), "path": PARENT}}),
    )
    .await;
    let clones = env.api::<DatabaseClone>();
    eventually(Duration::from_secs(180), "50 clones Ready", || async {
        let list = clones.list(&ListParams::default()).await.ok()?;
        let ready = list
            .items
            .iter()
            .filter(|c| condition(c, "Ready").is_some_and(|r| r.0 == "True"))
            .count();
        (ready == 50).then_some(())
    })
    .await;
    let checkpoint = env
        .api::<DatabaseCheckpoint>()
        .get("meanwhile")
        .await
        .unwrap();
    assert!(checkpoint
        .status
        .unwrap()
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));
    assert_all_rows(&store, "clones/pr-49", 1_000).await;
    env.cleanup().await;
}

/// Deleting a namespace deletes the store's Secret along with the clones and checkpoints that
/// need it to delete their data: their cleanup waits a grace period for the Secret, then leaves
/// the data behind (with a Warning event) rather than hang the namespace in Terminating.
#[tokio::test]
async fn deleting_the_namespace_with_the_store_secret_does_not_hang() {
    use k8s_openapi::api::core::v1::Namespace;
    let env = TestEnv::new("clone-nsdelete").await;
    let store = TestStore::new(StoreKind::S3, &env.namespace);
    store.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    parent_and_checkpoint(&env, &store, 200, 1).await;
    for i in 0..3 {
        let name = format!("pr-{i}");
        create(
            &env,
            "DatabaseClone",
            &name,
            clone_spec(&format!("clones/{name}")),
        )
        .await;
    }
    for i in 0..3 {
        wait_clone(&env, &format!("pr-{i}"), "Ready", Duration::from_secs(60)).await;
    }
    let namespaces = kube::Api::<Namespace>::all(env.client.clone());
    let started = std::time::Instant::now();
    namespaces
        .delete(&env.namespace, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(150),
        "the namespace to be gone",
        || async {
            namespaces
                .get_opt(&env.namespace)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    println!(
        "namespace with Secret-backed clones deleted in {:?}",
        started.elapsed()
    );
}
