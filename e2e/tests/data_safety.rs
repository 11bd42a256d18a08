//! Data safety on the real control plane, file and S3: no object's deletion destroys another's
//! data (a clone of a clone holds its parent clone; one target, one owner), and Ready never lies
//! (a Ready clone whose data breaks behind its back turns Stalled).

use crate::argocd::run_health_check;
use crate::clones::{
    assert_all_rows, condition, count_under, create, data_objects, wait_checkpoint_ready,
    wait_clone, wait_gone, PARENT,
};
use crate::support::{eventually, repo_path, Operator, StoreKind, TestEnv, TestStore};
use kube::api::DeleteParams;
use serde_json::json;
use slatedb::config::{FlushOptions, FlushType};
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseClone};
use slatedb_operator::engine::sample::sample_row;
use std::time::Duration;

const KEYS: usize = 2_000;
/// Rows the application writes into the first clone, into SSTs of its own.
const OWN_KEYS: usize = 500;

/// A prod database with checkpoint `nightly`, and a Ready clone `c1` of it.
async fn prod_and_first_clone(env: &TestEnv, store: &TestStore, c1: serde_json::Value) {
    crate::support::write_sample_db(store, PARENT, KEYS, 3).await;
    create(
        env,
        "DatabaseCheckpoint",
        "nightly",
        json!({"database": {"store": store.store_spec(), "path": PARENT}}),
    )
    .await;
    wait_checkpoint_ready(env, "nightly").await;
    create(env, "DatabaseClone", "c1", c1).await;
    wait_clone(env, "c1", "Ready", Duration::from_secs(90)).await;
}

/// The application writes `OWN_KEYS` rows into `path` and flushes them into SSTs of its own.
async fn write_own_rows(store: &TestStore, path: &str) {
    let db = slatedb::Db::builder(path, store.open().main)
        .build()
        .await
        .unwrap();
    for i in 0..OWN_KEYS {
        db.put(format!("own-{i:05}").as_bytes(), b"c1")
            .await
            .unwrap();
    }
    db.flush_with_options(FlushOptions {
        flush_type: FlushType::MemTable,
    })
    .await
    .unwrap();
    db.close().await.unwrap();
}

async fn assert_own_rows(store: &TestStore, path: &str) {
    let db = slatedb::Db::builder(path, store.open().main)
        .build()
        .await
        .unwrap();
    for i in (0..OWN_KEYS).step_by(7) {
        let key = format!("own-{i:05}");
        assert!(
            db.get(key.as_bytes()).await.unwrap().is_some(),
            "{path}: {key}"
        );
    }
    for i in (0..KEYS).step_by(101) {
        let (key, value) = sample_row(i);
        let got = db.get(key.as_bytes()).await.unwrap();
        assert_eq!(got.as_deref(), Some(value.as_bytes()), "{path}: {key}");
    }
    db.close().await.unwrap();
}

fn events_for(env: &TestEnv, name: &str, reason: &str) -> usize {
    let selector = format!("involvedObject.name={name},reason={reason}");
    let names = env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &selector,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    names.split_whitespace().count()
}

on_both_stores!(a_clone_others_depend_on_is_kept_until_they_go);
async fn a_clone_others_depend_on_is_kept_until_they_go(kind: StoreKind) {
    let env = TestEnv::new("lineage").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    let c1 =
        json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/c1"}});
    prod_and_first_clone(&env, &store, c1).await;
    write_own_rows(&store, "clones/c1").await;
    create(
        &env,
        "DatabaseCheckpoint",
        "c1-snap",
        json!({"database": {"store": store.store_spec(), "path": "clones/c1"}}),
    )
    .await;
    wait_checkpoint_ready(&env, "c1-snap").await;
    create(
        &env,
        "DatabaseClone",
        "c2",
        json!({"source": {"checkpointRef": {"name": "c1-snap"}}, "target": {"path": "clones/c2"},
               "verify": "Content"}),
    )
    .await;
    let c2 = wait_clone(&env, "c2", "Ready", Duration::from_secs(90)).await;
    let lineage: Vec<String> = c2
        .status
        .unwrap()
        .lineage
        .into_iter()
        .map(|l| l.path)
        .collect();
    assert!(lineage.contains(&"clones/c1".to_string()), "{lineage:?}");
    assert!(lineage.contains(&PARENT.to_string()), "{lineage:?}");
    assert_own_rows(&store, "clones/c2").await;
    let parent_before = data_objects(&store, PARENT).await;

    // Both at once: the checkpoint goes, the clone others depend on stays, saying why.
    let clones = env.api::<DatabaseClone>();
    let checkpoints = env.api::<DatabaseCheckpoint>();
    checkpoints
        .delete("c1-snap", &DeleteParams::default())
        .await
        .unwrap();
    clones.delete("c1", &DeleteParams::default()).await.unwrap();
    wait_gone(&checkpoints, "c1-snap", Duration::from_secs(60)).await;
    let blocked = eventually(
        Duration::from_secs(60),
        "c1 DeletionBlocked by c2",
        || async {
            let c1 = clones.get("c1").await.ok()?;
            let (status, reason, message) = condition(&c1, "DeletionBlocked")?;
            let by_c2 = message.contains(&format!("DatabaseClone {}/c2", env.namespace));
            (status == "True" && by_c2 && !message.contains("c1-snap")).then_some((reason, message))
        },
    )
    .await;
    assert_eq!(blocked.0, "DependentsExist", "{}", blocked.1);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(clones.get("c1").await.is_ok(), "c1 is held while c2 exists");
    assert_eq!(events_for(&env, "c1", "DeletionBlocked"), 1, "one Event");
    assert_own_rows(&store, "clones/c2").await;

    // c2 goes: then c1 goes too, and nothing is left under either path.
    clones.delete("c2", &DeleteParams::default()).await.unwrap();
    wait_gone(&clones, "c2", Duration::from_secs(60)).await;
    wait_gone(&clones, "c1", Duration::from_secs(60)).await;
    assert_eq!(
        count_under(&store, "clones").await,
        0,
        "nothing under clones/"
    );
    assert!(
        data_objects(&store, PARENT).await == parent_before,
        "the parent's SST and WAL objects are byte-identical"
    );
    assert_all_rows(&store, PARENT, KEYS).await;
    env.cleanup().await;
}

on_both_stores!(the_expiry_of_a_clone_others_depend_on_waits_for_them);
async fn the_expiry_of_a_clone_others_depend_on_waits_for_them(kind: StoreKind) {
    let env = TestEnv::new("lineage-ttl").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &[]);
    let c1 = json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/c1"},
                    "expireAfter": "6s", "expirationPolicy": "Delete"});
    prod_and_first_clone(&env, &store, c1).await;
    write_own_rows(&store, "clones/c1").await;
    create(
        &env,
        "DatabaseClone",
        "c2",
        json!({"source": {"database": {"store": store.store_spec(), "path": "clones/c1"}},
               "target": {"path": "clones/c2"}}),
    )
    .await;
    wait_clone(&env, "c2", "Ready", Duration::from_secs(90)).await;

    let clones = env.api::<DatabaseClone>();
    let held = eventually(Duration::from_secs(60), "c1 ExpiryBlocked", || async {
        let c1 = clones.get("c1").await.ok()?;
        let (status, _, message) = condition(&c1, "ExpiryBlocked")?;
        (status == "True").then_some((c1, message))
    })
    .await;
    assert!(
        held.1
            .contains(&format!("DatabaseClone {}/c2", env.namespace)),
        "{}",
        held.1
    );
    assert_eq!(
        condition(&held.0, "Ready").unwrap().0,
        "True",
        "its data is still there"
    );
    assert!(held.0.metadata.deletion_timestamp.is_none());
    assert_own_rows(&store, "clones/c1").await;
    assert_own_rows(&store, "clones/c2").await;

    clones.delete("c2", &DeleteParams::default()).await.unwrap();
    wait_gone(&clones, "c2", Duration::from_secs(60)).await;
    wait_gone(&clones, "c1", Duration::from_secs(90)).await;
    assert_eq!(
        count_under(&store, "clones").await,
        0,
        "nothing under clones/"
    );
    env.cleanup().await;
}

on_both_stores!(one_target_has_one_owner_in_one_namespace_and_across_two);
async fn one_target_has_one_owner_in_one_namespace_and_across_two(kind: StoreKind) {
    let env = TestEnv::new("owner").await;
    let other = TestEnv::new("owner-other").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    store.create_secret(&other).await;
    let _operator = Operator::start(&env.namespace, &[]);
    let _other_operator = Operator::start(&other.namespace, &[]);
    let own_a = json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/shared"}});
    prod_and_first_clone(&env, &store, own_a.clone()).await;
    let clones = env.api::<DatabaseClone>();
    let owner = format!("{}/c1", env.namespace);

    // The same checkpoint and target in the same namespace.
    create(&env, "DatabaseClone", "own-b", own_a).await;
    // The same target from another namespace, through a checkpoint of its own.
    create(
        &other,
        "DatabaseCheckpoint",
        "nightly",
        json!({"database": {"store": store.store_spec(), "path": PARENT}}),
    )
    .await;
    wait_checkpoint_ready(&other, "nightly").await;
    create(
        &other,
        "DatabaseClone",
        "intruder",
        json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/shared"}}),
    )
    .await;
    for (env, name) in [(&env, "own-b"), (&other, "intruder")] {
        let stalled = wait_clone(env, name, "Stalled", Duration::from_secs(60)).await;
        let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
        assert_eq!(reason, "TargetOwned", "{name}: {message}");
        assert!(message.contains(&owner), "{name}: {message}");
        assert_ne!(condition(&stalled, "Ready").unwrap().0, "True");
    }
    clones
        .delete("own-b", &DeleteParams::default())
        .await
        .unwrap();
    let intruders = other.api::<DatabaseClone>();
    intruders
        .delete("intruder", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&clones, "own-b", Duration::from_secs(60)).await;
    wait_gone(&intruders, "intruder", Duration::from_secs(60)).await;
    assert_all_rows(&store, "clones/shared", KEYS).await;
    let c1 = clones.get("c1").await.unwrap();
    assert_eq!(condition(&c1, "Ready").unwrap().0, "True");
    // The owner's own deletion removes its data and its record.
    clones.delete("c1", &DeleteParams::default()).await.unwrap();
    wait_gone(&clones, "c1", Duration::from_secs(60)).await;
    assert_eq!(count_under(&store, "clones").await, 0);
    other.cleanup().await;
    env.cleanup().await;
}

on_both_stores!(a_ready_clone_whose_data_breaks_turns_stalled);
async fn a_ready_clone_whose_data_breaks_turns_stalled(kind: StoreKind) {
    const PERIOD: u64 = 3;
    let env = TestEnv::new("health").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    let period = PERIOD.to_string();
    let _operator =
        Operator::start_with_args(&env.namespace, &[], &["--health-check-seconds", &period]);
    let c1 =
        json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/c1"}});
    prod_and_first_clone(&env, &store, c1).await;
    let checkpoints = env.api::<DatabaseCheckpoint>();
    let nightly = checkpoints.get("nightly").await.unwrap();
    let manifest_id = nightly.status.unwrap().manifest_id.unwrap() as u64;
    let pinned = store
        .database(PARENT)
        .pinned_objects(manifest_id)
        .await
        .unwrap();
    let victim = pinned
        .iter()
        .find(|o| o.key.starts_with("sst/"))
        .unwrap()
        .path
        .clone();
    // Healthy rounds change nothing.
    tokio::time::sleep(Duration::from_secs(2 * PERIOD)).await;
    let clones = env.api::<DatabaseClone>();
    assert_eq!(
        condition(&clones.get("c1").await.unwrap(), "Ready")
            .unwrap()
            .0,
        "True"
    );

    {
        use object_store::ObjectStoreExt;
        store.open().main.delete(&victim).await.unwrap();
    }
    let removed = std::time::Instant::now();
    let stalled = wait_clone(&env, "c1", "Stalled", Duration::from_secs(30)).await;
    let took = removed.elapsed();
    assert!(
        took <= Duration::from_secs(PERIOD + 2),
        "Stalled {took:?} after the SST went (period {PERIOD} s)"
    );
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(reason, "SourceDataMissing", "{message}");
    assert!(message.contains(victim.filename().unwrap()), "{message}");
    assert_eq!(condition(&stalled, "Ready").unwrap().0, "False");
    // kstatus computes Failed from Stalled=True; Argo CD's health check says Degraded.
    let object = serde_json::to_value(&stalled).unwrap();
    let script = repo_path("charts/slatedb-operator/argocd/slatedb.io/DatabaseClone/health.lua");
    let (health, _) = run_health_check(&script, &object);
    assert_eq!(health, "Degraded");
    // The checkpoint that pins the same object says so too.
    let nightly = eventually(Duration::from_secs(30), "nightly Stalled", || async {
        let cp = checkpoints.get("nightly").await.ok()?;
        let stalled = cp
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled")?;
        (stalled.reason == "SourceDataMissing").then_some(cp)
    })
    .await;
    let ready = nightly.status.unwrap().conditions;
    assert!(ready
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "False"));
    env.cleanup().await;
}
