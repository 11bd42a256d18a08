//! The DatabaseCheckpoint controller against the real API server and real SlateDB databases, on a
//! `file://` store and on the S3-protocol test server. Assertions read SlateDB's own view.

use crate::support::{eventually, write_sample_db, Operator, StoreKind, TestEnv, TestStore};
use kube::api::{DeleteParams, PostParams};
use serde_json::{json, Value};
use slatedb_operator::api::DatabaseCheckpoint;
use slatedb_operator::engine::CheckpointSelector;
use slatedb_operator::engine::CRASH_POINT_ENV;
use std::time::Duration;

const DB_PATH: &str = "prod/orders";

async fn create_checkpoint(env: &TestEnv, name: &str, spec: Value) {
    let object: DatabaseCheckpoint = serde_json::from_value(json!({
        "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCheckpoint", "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    env.api::<DatabaseCheckpoint>()
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
}

fn condition(object: &DatabaseCheckpoint, type_: &str) -> Option<(String, String, String)> {
    object
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_condition(
    env: &TestEnv,
    name: &str,
    type_: &str,
    timeout: Duration,
) -> DatabaseCheckpoint {
    let api = env.api::<DatabaseCheckpoint>();
    eventually(timeout, &format!("{name} to have {type_}=True"), || async {
        let object = api.get(name).await.ok()?;
        (condition(&object, type_)?.0 == "True").then_some(object)
    })
    .await
}

async fn wait_gone(env: &TestEnv, name: &str) {
    let api = env.api::<DatabaseCheckpoint>();
    eventually(
        Duration::from_secs(30),
        &format!("{name} to be deleted"),
        || async { api.get_opt(name).await.unwrap().is_none().then_some(()) },
    )
    .await;
}

async fn setup(prefix: &str, kind: StoreKind) -> (TestEnv, TestStore) {
    let env = TestEnv::new(prefix).await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    (env, store)
}

on_both_stores!(checkpoint_is_ready_and_matches_slatedb_and_deletion_policy_holds);
async fn checkpoint_is_ready_and_matches_slatedb_and_deletion_policy_holds(kind: StoreKind) {
    let (env, store) = setup("cp-ready", kind).await;
    write_sample_db(&store, DB_PATH, 10_000, 5).await;
    let db = store.database(DB_PATH);
    let description = db.describe().await.unwrap();
    assert!(description.sst_count >= 5, "{description:?}");
    let _operator = Operator::start(&env.namespace, &[]);

    create_checkpoint(
        &env,
        "nightly",
        json!({"database": {"store": store.store_spec(), "path": DB_PATH}}),
    )
    .await;
    env.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=90s",
        "databasecheckpoint/nightly",
    ]);
    let object = env
        .api::<DatabaseCheckpoint>()
        .get("nightly")
        .await
        .unwrap();
    let status = object.status.clone().unwrap();
    let in_slatedb = db.list_checkpoints(None).await.unwrap();
    assert_eq!(in_slatedb.len(), 1, "{in_slatedb:?}");
    assert_eq!(
        status.checkpoint_id.as_deref(),
        Some(in_slatedb[0].id.to_string().as_str())
    );
    assert_eq!(status.manifest_id, Some(in_slatedb[0].manifest_id as i64));
    assert_eq!(status.observed_generation, object.metadata.generation);
    assert!(status.object_count.unwrap() >= 5, "{status:?}");
    assert!(status.size_bytes.unwrap() > 0);
    let checksum = status.checksum.unwrap();
    assert_eq!(checksum.metadata_digest.len(), 64);
    // The digest is SlateDB's state, recomputed independently here.
    let fingerprint = db
        .fingerprint(in_slatedb[0].manifest_id, false)
        .await
        .unwrap();
    assert_eq!(fingerprint.metadata_digest, checksum.metadata_digest);

    // deletionPolicy: Delete (the default) removes the SlateDB checkpoint with the object.
    env.api::<DatabaseCheckpoint>()
        .delete("nightly", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&env, "nightly").await;
    assert!(db.list_checkpoints(None).await.unwrap().is_empty());

    // deletionPolicy: Retain keeps it.
    create_checkpoint(
        &env,
        "kept",
        json!({"database": {"store": store.store_spec(), "path": DB_PATH}, "deletionPolicy": "Retain"}),
    )
    .await;
    let kept = wait_condition(&env, "kept", "Ready", Duration::from_secs(60)).await;
    env.api::<DatabaseCheckpoint>()
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&env, "kept").await;
    let remaining = db.list_checkpoints(None).await.unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(
        Some(remaining[0].id.to_string()),
        kept.status.unwrap().checkpoint_id
    );
    env.cleanup().await;
}

on_both_stores!(a_crash_between_create_and_status_adopts_the_checkpoint);
async fn a_crash_between_create_and_status_adopts_the_checkpoint(kind: StoreKind) {
    let (env, store) = setup("cp-crash", kind).await;
    write_sample_db(&store, DB_PATH, 2_000, 2).await;
    let db = store.database(DB_PATH);
    create_checkpoint(
        &env,
        "crashy",
        json!({"database": {"store": store.store_spec(), "path": DB_PATH}}),
    )
    .await;

    let mut crashing = Operator::start(
        &env.namespace,
        &[(CRASH_POINT_ENV, "after-checkpoint-create")],
    );
    assert_eq!(crashing.wait_exit(Duration::from_secs(60)).await, Some(86));
    let after_crash = db.list_checkpoints(None).await.unwrap();
    assert_eq!(
        after_crash.len(),
        1,
        "the crashed run wrote its checkpoint: {after_crash:?}"
    );
    let object = env.api::<DatabaseCheckpoint>().get("crashy").await.unwrap();
    assert!(
        object.status.and_then(|s| s.checkpoint_id).is_none(),
        "the crash came before the status"
    );

    let _operator = Operator::start(&env.namespace, &[]);
    let ready = wait_condition(&env, "crashy", "Ready", Duration::from_secs(60)).await;
    let after_restart = db.list_checkpoints(None).await.unwrap();
    assert_eq!(
        after_restart.len(),
        1,
        "adopted, not duplicated: {after_restart:?}"
    );
    assert_eq!(
        ready.status.unwrap().checkpoint_id,
        Some(after_crash[0].id.to_string())
    );
    env.cleanup().await;
}

on_both_stores!(an_application_checkpoint_is_adopted_by_name);
async fn an_application_checkpoint_is_adopted_by_name(kind: StoreKind) {
    let (env, store) = setup("cp-adopt", kind).await;
    write_sample_db(&store, DB_PATH, 1_000, 1).await;
    // The application takes a WAL-consistent checkpoint through its open writer.
    let writer = slatedb::Db::builder(DB_PATH, store.open().main)
        .build()
        .await
        .unwrap();
    writer.put(b"wal-only", b"tail").await.unwrap();
    let options = slatedb::config::CheckpointOptions {
        name: Some("app-nightly".into()),
        ..Default::default()
    };
    let made = writer
        .create_checkpoint(slatedb::config::CheckpointScope::Durable, &options)
        .await
        .unwrap();
    writer.close().await.unwrap();

    let _operator = Operator::start(&env.namespace, &[]);
    create_checkpoint(
        &env,
        "adopted",
        json!({"database": {"store": store.store_spec(), "path": DB_PATH},
               "source": {"mode": "Adopt", "adopt": {"name": "app-nightly"}}, "deletionPolicy": "Retain"}),
    )
    .await;
    let ready = wait_condition(&env, "adopted", "Ready", Duration::from_secs(60)).await;
    assert_eq!(
        ready.status.unwrap().checkpoint_id,
        Some(made.id.to_string())
    );
    let found = store
        .database(DB_PATH)
        .find_checkpoint(&CheckpointSelector::Name("app-nightly".into()))
        .await;
    assert_eq!(found.unwrap().id, made.id);
    env.cleanup().await;
}

on_both_stores!(bad_input_stalls_with_a_distinct_reason_while_others_reconcile);
async fn bad_input_stalls_with_a_distinct_reason_while_others_reconcile(kind: StoreKind) {
    let (env, store) = setup("cp-bad", kind).await;
    write_sample_db(&store, DB_PATH, 500, 1).await;
    let _operator = Operator::start(&env.namespace, &[]);
    let secrets = env.api::<k8s_openapi::api::core::v1::Secret>();
    let mut unknown_option = store.options.clone();
    unknown_option.insert("AWS_NO_SUCH_OPTION".into(), "1".into());
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
        json!({"metadata": {"name": "unknown-option"}, "stringData": unknown_option}),
    )
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let mut cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "not-a-db",
            json!({"store": store.store_spec(), "path": "nothing/here"}),
            "NotADatabase",
            "no SlateDB database",
        ),
        (
            "bad-url",
            json!({"store": {"url": "s3://bad bucket/x"}, "path": DB_PATH}),
            "InvalidStoreUrl",
            "invalid object-store URL",
        ),
        (
            "unknown-option",
            json!({"store": {"url": store.url, "secretRef": {"name": "unknown-option"}}, "path": DB_PATH}),
            "UnknownStoreOption",
            "AWS_NO_SUCH_OPTION",
        ),
    ];
    if matches!(kind, StoreKind::S3) {
        let mut wrong = store.options.clone();
        wrong.insert("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into());
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(
            json!({"metadata": {"name": "wrong-credentials"}, "stringData": wrong}),
        )
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        cases.push((
            "wrong-credentials",
            json!({"store": {"url": store.url, "secretRef": {"name": "wrong-credentials"}}, "path": DB_PATH}),
            "CredentialsRejected",
            "403 Forbidden",
        ));
    }
    for (name, database, _, _) in &cases {
        create_checkpoint(&env, name, json!({"database": database})).await;
    }
    // A good checkpoint next to the bad ones still becomes Ready.
    create_checkpoint(
        &env,
        "good",
        json!({"database": {"store": store.store_spec(), "path": DB_PATH}}),
    )
    .await;
    wait_condition(&env, "good", "Ready", Duration::from_secs(60)).await;
    for (name, _, reason, message) in cases {
        let stalled = wait_condition(&env, name, "Stalled", Duration::from_secs(60)).await;
        let (_, actual_reason, actual_message) = condition(&stalled, "Stalled").unwrap();
        assert_eq!(actual_reason, reason, "{name}: {actual_message}");
        assert!(actual_message.contains(message), "{name}: {actual_message}");
        assert_eq!(condition(&stalled, "Ready").unwrap().0, "False");
    }
    // A missing Secret is transient: Reconciling, and it recovers by itself once the Secret exists.
    create_checkpoint(
        &env,
        "late-secret",
        json!({"database": {"store": {"url": store.url, "secretRef": {"name": "late"}}, "path": DB_PATH}}),
    )
    .await;
    let waiting = wait_condition(&env, "late-secret", "Reconciling", Duration::from_secs(30)).await;
    assert_eq!(
        condition(&waiting, "Reconciling").unwrap().1,
        "SecretNotFound"
    );
    let late: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "late"}, "stringData": store.options}))
            .unwrap();
    secrets.create(&PostParams::default(), &late).await.unwrap();
    wait_condition(&env, "late-secret", "Ready", Duration::from_secs(30)).await;
    env.cleanup().await;
}

on_both_stores!(a_lifetime_expires_the_checkpoint_on_time);
async fn a_lifetime_expires_the_checkpoint_on_time(kind: StoreKind) {
    let (env, store) = setup("cp-ttl", kind).await;
    write_sample_db(&store, DB_PATH, 500, 1).await;
    let _operator = Operator::start(&env.namespace, &[]);
    create_checkpoint(
        &env,
        "short",
        json!({"database": {"store": store.store_spec(), "path": DB_PATH}, "lifetime": "10s"}),
    )
    .await;
    let ready = wait_condition(&env, "short", "Ready", Duration::from_secs(30)).await;
    let status = ready.status.unwrap();
    let created = status.create_time.unwrap().0;
    let expires = status.expiration_time.unwrap().0;
    assert_eq!((expires - created).get_seconds(), 10);
    let expired = wait_condition(&env, "short", "Expired", Duration::from_secs(30)).await;
    let seen_at = expired
        .status
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Expired")
        .unwrap()
        .last_transition_time
        .0;
    let late_by = (seen_at - expires).get_seconds();
    assert!(
        (0..=3).contains(&late_by),
        "expired {late_by}s after its expiration time"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn content_root_is_stable_and_a_flipped_byte_is_named() {
    let store = TestStore::new(StoreKind::File, "unused");
    write_sample_db(&store, DB_PATH, 3_000, 3).await;
    let db = store.database(DB_PATH);
    let (checkpoint, _) = db.obtain_checkpoint("content-test", None).await.unwrap();
    let first = db.fingerprint(checkpoint.manifest_id, true).await.unwrap();
    let second = db.fingerprint(checkpoint.manifest_id, true).await.unwrap();
    assert!(first.content_root.is_some());
    assert_eq!(first.content_root, second.content_root);
    assert!(first.blocks_checked.is_some_and(|blocks| blocks > 0));

    let sst_dir = store.local_root.join(DB_PATH).join("compacted");
    let victim = std::fs::read_dir(&sst_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let metadata_only = db.fingerprint(checkpoint.manifest_id, false).await.unwrap();
    assert!(metadata_only.content_root.is_none());
    let error = db
        .fingerprint(checkpoint.manifest_id, true)
        .await
        .expect_err("the flipped byte must be found");
    let file_name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(error.to_string().contains(&file_name), "{error}");
}

/// Source protection: while a clone made from the checkpoint is not yet initialized, deleting the
/// checkpoint waits (and the SlateDB checkpoint stays); once the clone is initialized, it proceeds.
#[tokio::test]
async fn deletion_waits_for_clones_being_initialized_from_the_checkpoint() {
    let (env, store) = setup("cp-protect", StoreKind::File).await;
    write_sample_db(&store, DB_PATH, 500, 1).await;
    let db = store.database(DB_PATH);
    // Only the checkpoint controller runs, so the clone stays uninitialized until the test says so.
    let _operator =
        Operator::start_with_args(&env.namespace, &[], &["--controllers", "checkpoint"]);
    create_checkpoint(
        &env,
        "source",
        json!({"database": {"store": store.store_spec(), "path": DB_PATH}}),
    )
    .await;
    wait_condition(&env, "source", "Ready", Duration::from_secs(60)).await;

    let clone: slatedb_operator::api::DatabaseClone = serde_json::from_value(json!({
        "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone", "metadata": {"name": "pr-1"},
        "spec": {"source": {"checkpointRef": {"name": "source"}}, "target": {"path": "clones/pr-1"}}
    }))
    .unwrap();
    let clones = env.api::<slatedb_operator::api::DatabaseClone>();
    clones.create(&PostParams::default(), &clone).await.unwrap();
    let in_use = wait_condition(&env, "source", "InUse", Duration::from_secs(30)).await;
    assert_eq!(in_use.status.as_ref().unwrap().dependents, Some(1));
    assert!(in_use
        .metadata
        .finalizers
        .unwrap()
        .contains(&"slatedb.io/clone-source-protection".to_string()));

    env.api::<DatabaseCheckpoint>()
        .delete("source", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = env
        .api::<DatabaseCheckpoint>()
        .get("source")
        .await
        .expect("deletion is held");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        db.list_checkpoints(None).await.unwrap().len(),
        1,
        "the SlateDB checkpoint stays"
    );
    let events = env.kubectl(&["get", "events", "-o", "jsonpath={.items[*].reason}"]);
    assert!(events.contains("DeletionBlocked"), "{events}");
    assert!(events.contains("Created"), "{events}");

    // The clone reports Initialized: the checkpoint is no longer needed and goes, data and all.
    let status = json!({"apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseClone", "status": {
        "conditions": [{"type": "Initialized", "status": "True", "reason": "Initialized", "message": "",
                        "lastTransitionTime": "2026-11-26T00:00:00Z"}]}});
    clones
        .patch_status(
            "pr-1",
            &kube::api::PatchParams::apply("e2e").force(),
            &kube::api::Patch::Apply(&status),
        )
        .await
        .unwrap();
    wait_gone(&env, "source").await;
    assert!(db.list_checkpoints(None).await.unwrap().is_empty());
    env.cleanup().await;
}

/// A detached checkpoint of a database whose writer made rows durable only in its WAL says so
/// (`IncludesDurableWrites=False`, the WAL objects it misses), and a clone of it lacks them; a
/// checkpoint the application takes through its writer, adopted, has them, and so has its clone.
#[tokio::test]
async fn a_checkpoint_of_a_live_writer_says_what_it_misses() {
    let (env, store) = setup("cp-coverage", StoreKind::File).await;
    write_sample_db(&store, DB_PATH, 100, 1).await;
    let writer = slatedb::Db::builder(DB_PATH, store.open().main)
        .build()
        .await
        .unwrap();
    writer.put(b"wal-only", b"tail").await.unwrap();
    writer
        .flush_with_options(slatedb::config::FlushOptions {
            flush_type: slatedb::config::FlushType::Wal,
        })
        .await
        .unwrap();
    let _operator = Operator::start(&env.namespace, &[]);
    let database = json!({"store": store.store_spec(), "path": DB_PATH});
    create_checkpoint(&env, "detached", json!({"database": database})).await;
    let detached = wait_condition(&env, "detached", "Ready", Duration::from_secs(60)).await;
    let status = detached.status.clone().unwrap();
    let includes = status
        .conditions
        .iter()
        .find(|c| c.type_ == "IncludesDurableWrites")
        .expect("an IncludesDurableWrites condition");
    assert_eq!(includes.status, "False", "{includes:?}");
    assert!(
        includes.message.contains("Db::create_checkpoint"),
        "{}",
        includes.message
    );
    assert!(status.coverage.unwrap().wal_objects_not_included >= 1);

    let options = slatedb::config::CheckpointOptions {
        name: Some("app-complete".into()),
        ..Default::default()
    };
    writer
        .create_checkpoint(slatedb::config::CheckpointScope::Durable, &options)
        .await
        .unwrap();
    create_checkpoint(
        &env,
        "adopted",
        json!({"database": database, "source": {"mode": "Adopt", "adopt": {"name": "app-complete"}},
               "deletionPolicy": "Retain"}),
    )
    .await;
    let adopted = wait_condition(&env, "adopted", "Ready", Duration::from_secs(60)).await;
    let includes = adopted
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "IncludesDurableWrites")
        .unwrap();
    assert_eq!(includes.status, "True", "{includes:?}");

    for (checkpoint, target) in [
        ("detached", "clones/detached"),
        ("adopted", "clones/adopted"),
    ] {
        crate::clones::create(
            &env,
            "DatabaseClone",
            target.trim_start_matches("clones/"),
            json!({"source": {"checkpointRef": {"name": checkpoint}}, "target": {"path": target}}),
        )
        .await;
        crate::clones::wait_clone(
            &env,
            target.trim_start_matches("clones/"),
            "Ready",
            Duration::from_secs(60),
        )
        .await;
    }
    writer.close().await.unwrap();
    let read = |path: &'static str| {
        let main = store.open().main;
        async move {
            let db = slatedb::Db::builder(path, main).build().await.unwrap();
            let value = db.get(b"wal-only").await.unwrap();
            db.close().await.unwrap();
            value
        }
    };
    assert_eq!(
        read("clones/detached").await,
        None,
        "the detached checkpoint has the WAL-only row"
    );
    assert_eq!(read("clones/adopted").await.as_deref(), Some(&b"tail"[..]));
    env.cleanup().await;
}
