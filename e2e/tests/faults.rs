//! The fault suite: the operator on a store that fails (the `SLATEDB_OPERATOR_FAULTS` test hook
//! wraps every store the operator opens), and an operator killed at random points. Assertions
//! read the outcome back through a fault-free store and from the API server.

use crate::clones::{assert_all_rows, condition, create, objects_under, wait_clone, PARENT};
use crate::support::{
    eventually, free_port, http_get, metric_value, write_sample_db, Operator, StoreKind, TestEnv,
    TestStore,
};
use serde_json::json;
use slatedb_operator::api::{ClonePhase, DatabaseCheckpoint, DatabaseClone};
use slatedb_operator::engine::FAULTS_ENV;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KEYS: usize = 2_000;

fn checkpoint_ready(object: &DatabaseCheckpoint) -> bool {
    object.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn operator_metrics(port: &str) -> String {
    http_get(&format!("http://127.0.0.1:{port}/metrics")).await
}

/// A seed that differs between runs, printed so a failing run can be replayed.
fn run_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

/// 5% of the operator's store requests fail with a transient error (503, throttling, timeout):
/// 5 checkpoints and 20 clones still end Ready, their checksums equal what a fault-free read
/// computes, the data reads back, and the retries show in status and metrics.
async fn transient_faults_on_every_request_are_survived(kind: StoreKind) {
    let env = TestEnv::new("faults-transient").await;
    let store = TestStore::new(kind, &env.namespace);
    store.create_secret(&env).await;
    write_sample_db(&store, PARENT, KEYS, 3).await;
    let seed = run_seed();
    let plan = format!("transient=0.05,seed={seed}");
    println!("fault plan: {plan}");
    let port = free_port().to_string();
    let _operator = Operator::start_with_args(
        &env.namespace,
        &[(FAULTS_ENV, &plan)],
        &["--http-port", &port],
    );

    for i in 0..5 {
        let checksum = if i % 2 == 0 { "Content" } else { "Metadata" };
        create(
            &env,
            "DatabaseCheckpoint",
            &format!("cp-{i}"),
            json!({"database": {"store": store.store_spec(), "path": PARENT}, "checksum": checksum}),
        )
        .await;
    }
    let checkpoints = env.api::<DatabaseCheckpoint>();
    for i in 0..5 {
        let name = format!("cp-{i}");
        eventually(
            Duration::from_secs(120),
            &format!("{name} Ready"),
            || async { checkpoints.get(&name).await.ok().filter(checkpoint_ready) },
        )
        .await;
    }
    for i in 0..20 {
        let verify = ["Content", "Metadata", "None"][i % 3];
        create(
            &env,
            "DatabaseClone",
            &format!("clone-{i}"),
            json!({
                "source": {"checkpointRef": {"name": format!("cp-{}", i % 5)}},
                "target": {"path": format!("clones/c{i}")},
                "verify": verify
            }),
        )
        .await;
    }
    let mut clones = Vec::new();
    for i in 0..20 {
        clones.push(
            wait_clone(
                &env,
                &format!("clone-{i}"),
                "Ready",
                Duration::from_secs(180),
            )
            .await,
        );
    }

    // Checksums: what the operator recorded under faults equals a fault-free computation.
    for i in 0..5 {
        let object = checkpoints.get(&format!("cp-{i}")).await.unwrap();
        let status = object.status.unwrap();
        let recorded = status.checksum.expect("checkpoint checksum");
        let manifest_id = status.manifest_id.expect("manifest id") as u64;
        let content = i % 2 == 0;
        let expected = store
            .database(PARENT)
            .fingerprint(manifest_id, content)
            .await
            .unwrap();
        assert_eq!(recorded.metadata_digest, expected.metadata_digest, "cp-{i}");
        assert_eq!(recorded.content_root, expected.content_root, "cp-{i}");
    }
    let mut store_retries = 0;
    for (i, clone) in clones.iter().enumerate() {
        let target = format!("clones/c{i}");
        let status = clone.status.clone().unwrap();
        let recorded = status.checksum.expect("clone checksum");
        let db = store.database(&target);
        let manifest = db.latest_manifest().await.unwrap();
        let expected = db
            .fingerprint(manifest.id(), recorded.content_root.is_some())
            .await
            .unwrap();
        assert_eq!(
            recorded.metadata_digest, expected.metadata_digest,
            "{target}"
        );
        assert_eq!(recorded.content_root, expected.content_root, "{target}");
        assert_eq!(i % 3 == 0, recorded.content_root.is_some(), "{target}");
        store_retries += status.store_retries.unwrap_or(0);
    }
    for i in 0..20 {
        assert_all_rows(&store, &format!("clones/c{i}"), KEYS).await;
    }

    let metrics = operator_metrics(&port).await;
    let injected = metric_value(
        &metrics,
        "slatedb_operator_store_injected_faults_total{fault=\"transient\"}",
    );
    let retried = metric_value(&metrics, "slatedb_operator_store_retries_total");
    let requests = metric_value(&metrics, "slatedb_operator_store_requests_total");
    println!(
        "transient faults ({kind:?}): {requests} store requests, {injected} faults injected, \
         {retried} retries; storeRetries summed over the clones' status: {store_retries}"
    );
    let rate = injected / requests;
    assert!(
        (0.03..=0.08).contains(&rate),
        "{injected} faults in {requests} requests is not about 5%:\n{metrics}"
    );
    assert!(
        retried >= injected * 0.5,
        "faults were not retried:\n{metrics}"
    );
    assert!(
        store_retries > 0,
        "the clones' status shows no retried request"
    );
    env.cleanup().await;
}
on_both_stores!(transient_faults_on_every_request_are_survived);

/// The store refuses every request under the parent (403): the clone goes Stalled with a reason
/// a user can act on, quickly, after a bounded number of requests, and leaves nothing behind.
#[tokio::test]
async fn a_parent_the_store_refuses_stalls_quickly_without_a_hot_loop() {
    let env = TestEnv::new("faults-denied").await;
    let store = TestStore::new(StoreKind::File, &env.namespace);
    write_sample_db(&store, PARENT, 500, 1).await;
    let parent_before = objects_under(&store, PARENT).await;
    let port = free_port().to_string();
    let plan = format!("deny={PARENT}/");
    let _operator = Operator::start_with_args(
        &env.namespace,
        &[(FAULTS_ENV, &plan)],
        &["--http-port", &port],
    );
    eventually(Duration::from_secs(30), "operator metrics", || async {
        let port = port.clone();
        tokio::task::spawn(async move { operator_metrics(&port).await })
            .await
            .ok()
            .filter(|m| m.contains("slatedb_operator_store_requests_total"))
    })
    .await;

    let started = Instant::now();
    create(
        &env,
        "DatabaseClone",
        "denied",
        json!({
            "source": {"database": {"store": store.store_spec(), "path": PARENT}},
            "target": {"path": "clones/denied"}
        }),
    )
    .await;
    create(
        &env,
        "DatabaseCheckpoint",
        "denied",
        json!({"database": {"store": store.store_spec(), "path": PARENT}}),
    )
    .await;
    let stalled = wait_clone(&env, "denied", "Stalled", Duration::from_secs(60)).await;
    let took = started.elapsed();
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(reason, "CredentialsRejected", "{message}");
    assert!(
        message.contains(PARENT),
        "the message names the path: {message}"
    );
    let checkpoints = env.api::<DatabaseCheckpoint>();
    let checkpoint_reason = eventually(Duration::from_secs(60), "checkpoint Stalled", || async {
        let object = checkpoints.get("denied").await.ok()?;
        let stalled = object
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True")?;
        Some(stalled.reason)
    })
    .await;
    assert_eq!(checkpoint_reason, "CredentialsRejected");

    // No hot loop: once Stalled, the store hears from the operator rarely.
    let at_stall = metric_value(
        &operator_metrics(&port).await,
        "slatedb_operator_store_requests_total",
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let metrics = operator_metrics(&port).await;
    let later = metric_value(&metrics, "slatedb_operator_store_requests_total");
    let denied = metric_value(
        &metrics,
        "slatedb_operator_store_injected_faults_total{fault=\"denied\"}",
    );
    println!(
        "403 on the parent: Stalled after {took:?} and {at_stall} store requests ({denied} refused \
         so far); {} more requests in the next 10 s",
        later - at_stall
    );
    assert!(
        took < Duration::from_secs(30),
        "Stalled only after {took:?}"
    );
    assert!(at_stall < 200.0, "{at_stall} store requests before Stalled");
    assert!(
        later - at_stall <= 40.0,
        "{} store requests in 10 s while Stalled",
        later - at_stall
    );
    assert!(
        objects_under(&store, "clones/denied").await.is_empty(),
        "nothing is left under the target"
    );
    assert_eq!(
        objects_under(&store, PARENT).await,
        parent_before,
        "the parent is untouched"
    );
    env.cleanup().await;
}

/// The operator is SIGKILLed at random moments while 20 clones are in flight, then restarted,
/// several times. Every clone ends Ready (its data reads back) or cleanly Stalled (nothing under
/// its target); nothing is written under any other path; the parent's data objects are
/// byte-for-byte what they were.
#[tokio::test]
async fn random_operator_kills_lose_nothing_and_leave_no_orphans() {
    let env = TestEnv::new("faults-kill").await;
    let store = TestStore::new(StoreKind::File, &env.namespace);
    write_sample_db(&store, PARENT, KEYS, 3).await;
    let mut operator = Operator::start(&env.namespace, &[]);
    create(
        &env,
        "DatabaseCheckpoint",
        "nightly",
        json!({"database": {"store": store.store_spec(), "path": PARENT}}),
    )
    .await;
    let checkpoints = env.api::<DatabaseCheckpoint>();
    eventually(Duration::from_secs(60), "nightly Ready", || async {
        checkpoints
            .get("nightly")
            .await
            .ok()
            .filter(checkpoint_ready)
    })
    .await;
    operator.kill();
    let data_objects = |objects: BTreeMap<String, String>| -> BTreeMap<String, String> {
        objects
            .into_iter()
            .filter(|(path, _)| path.contains("/compacted/") || path.contains("/wal/"))
            .collect()
    };
    let parent_before = data_objects(objects_under(&store, PARENT).await);
    assert!(!parent_before.is_empty());

    for i in 0..20 {
        create(
            &env,
            "DatabaseClone",
            &format!("clone-{i}"),
            json!({
                "source": {"checkpointRef": {"name": "nightly"}},
                "target": {"path": format!("clones/c{i}")},
                "verify": if i % 2 == 0 { "Content" } else { "Metadata" }
            }),
        )
        .await;
    }
    // Latency on every request stretches each clone over many kill points.
    let slow = [(FAULTS_ENV, "latency=3ms")];
    let mut seed = run_seed();
    println!("kill schedule seed: {seed}");
    let clones = env.api::<DatabaseClone>();
    let mut kills = Vec::new();
    for _ in 0..8 {
        let mut operator = Operator::start(&env.namespace, &slow);
        let started = Instant::now();
        // Kill at a random moment once clone work runs, so each kill can interrupt a clone.
        eventually(Duration::from_secs(60), "a clone at work", || async {
            let list = clones.list(&Default::default()).await.ok()?;
            let working = |c: &DatabaseClone| {
                let phase = c.status.as_ref().and_then(|s| s.phase);
                matches!(phase, Some(ClonePhase::Cloning | ClonePhase::Verifying))
            };
            let all_done = list.items.iter().all(|c| {
                condition(c, "Ready").is_some_and(|r| r.0 == "True")
                    || condition(c, "Stalled").is_some()
            });
            (all_done || list.items.iter().any(working)).then_some(())
        })
        .await;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(seed % 400)).await;
        operator.kill();
        kills.push(started.elapsed().as_millis());
    }
    println!("SIGKILLed the operator after {kills:?} ms of each run");
    let _operator = Operator::start(&env.namespace, &[]);

    let finals = eventually(
        Duration::from_secs(180),
        "every clone Ready or Stalled",
        || async {
            let mut finals = Vec::new();
            for i in 0..20 {
                let object = clones.get(&format!("clone-{i}")).await.ok()?;
                let ready = condition(&object, "Ready").is_some_and(|c| c.0 == "True");
                let stalled = condition(&object, "Stalled").filter(|c| c.0 == "True");
                if !ready && stalled.is_none() {
                    return None;
                }
                finals.push((object, ready, stalled));
            }
            Some(finals)
        },
    )
    .await;
    let mut resumed = 0;
    for (i, (object, ready, stalled)) in finals.iter().enumerate() {
        let target = format!("clones/c{i}");
        if *ready {
            assert_all_rows(&store, &target, KEYS).await;
        } else {
            let (_, reason, message) = stalled.clone().unwrap();
            assert!(!reason.is_empty() && !message.is_empty(), "{target}");
            assert!(
                objects_under(&store, &target).await.is_empty(),
                "{target} is Stalled ({reason}) but objects remain"
            );
        }
        if object.status.as_ref().and_then(|s| s.attempts).unwrap_or(0) > 1 {
            resumed += 1;
        }
    }
    let ready = finals.iter().filter(|f| f.1).count();
    println!("after the kills: {ready} of 20 clones Ready, the rest Stalled; {resumed} needed more than one attempt");
    assert!(
        resumed > 0,
        "no kill interrupted a clone: the test proves nothing"
    );

    // Nothing outside the parent and the clones' own targets.
    let root = std::fs::read_dir(store.local_root.join("clones")).unwrap();
    for entry in root {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        // object_store's local filesystem writes `<name>#<n>` and renames it into place: a process
        // killed between the two leaves the staging file, which no listing of the store shows
        // (an object store has no such thing).
        let name = match name.rsplit_once('#') {
            Some((staged, n)) if n.chars().all(|c| c.is_ascii_digit()) => staged.to_string(),
            _ => name,
        };
        // A target, or the record of its owner beside it.
        let target = name.strip_suffix(".owner").unwrap_or(&name);
        let index: usize = target.trim_start_matches('c').parse().unwrap_or(usize::MAX);
        assert!(index < 20, "unexpected path clones/{name}");
    }
    assert_eq!(
        data_objects(objects_under(&store, PARENT).await),
        parent_before,
        "the parent's data objects changed"
    );
    env.cleanup().await;
}
