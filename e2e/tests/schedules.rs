//! DatabaseCheckpointSchedule and the per-PR workflow on the real API server: checkpoints made on
//! time and pruned by retention (never one a clone is being made from), suspend, one catch-up
//! checkpoint after an outage; a clone of "the newest checkpoint of the schedule", its
//! connection ConfigMap (only once Ready, gone with its data) and its reset.

use crate::clones::{condition, create, wait_clone, PARENT};
use crate::support::{
    eventually, server_dry_run, write_sample_db, Operator, StoreKind, TestEnv, TestStore,
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use slatedb_operator::api::{
    DatabaseCheckpoint, DatabaseCheckpointSchedule, DatabaseClone, SCHEDULED_TIME_ANNOTATION,
    SCHEDULE_LABEL,
};
use slatedb_operator::engine::sample::{append_sample_rows, sample_row};
use std::collections::BTreeMap;
use std::time::Duration;

/// The schedule's checkpoints: name → (tick, created, Ready, InUse).
async fn scheduled(
    env: &TestEnv,
    schedule: &str,
) -> BTreeMap<String, (DateTime<Utc>, DateTime<Utc>, bool, bool)> {
    let list = env
        .api::<DatabaseCheckpoint>()
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={schedule}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .map(|c| {
            let tick = DateTime::parse_from_rfc3339(
                &c.metadata.annotations.as_ref().unwrap()[SCHEDULED_TIME_ANNOTATION],
            )
            .unwrap()
            .with_timezone(&Utc);
            let created = DateTime::<Utc>::from_timestamp_millis(
                c.metadata
                    .creation_timestamp
                    .as_ref()
                    .unwrap()
                    .0
                    .as_millisecond(),
            )
            .unwrap();
            let conditions = c.status.map(|s| s.conditions).unwrap_or_default();
            let is = |t: &str| {
                conditions
                    .iter()
                    .any(|x| x.type_ == t && x.status == "True")
            };
            (
                c.metadata.name.unwrap(),
                (tick, created, is("Ready"), is("InUse")),
            )
        })
        .collect()
}

fn schedule_spec(store: &TestStore, every: &str, keep_last: Option<i32>) -> serde_json::Value {
    let mut spec = json!({
        "schedule": format!("@every {every}"),
        "checkpointTemplate": {"spec": {"database": {"store": store.store_spec(), "path": PARENT}}},
    });
    if let Some(n) = keep_last {
        spec["retention"] = json!({"keepLast": n});
    }
    spec
}

async fn patch_spec<K>(env: &TestEnv, name: &str, spec: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    env.api::<K>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .unwrap_or_else(|e| panic!("patching {name}: {e}"));
}

/// `@every 10s`, `keepLast: 2`: checkpoints within 3 s of their ticks, exactly the 2 newest Ready
/// ones kept plus one a clone is being made from; `suspend` stops it; an outage over two ticks
/// ends in exactly one catch-up checkpoint.
#[tokio::test]
async fn a_schedule_keeps_time_retention_suspend_and_catches_up_once() {
    let env = TestEnv::new("schedule").await;
    let store = TestStore::new(StoreKind::File, &env.namespace);
    write_sample_db(&store, PARENT, 200, 1).await;
    // Only the checkpoint controllers: a clone then stays "in progress" for as long as the test needs.
    let mut operator =
        Operator::start_with_args(&env.namespace, &[], &["--controllers", "checkpoint"]);
    create(
        &env,
        "DatabaseCheckpointSchedule",
        "nightly",
        schedule_spec(&store, "10s", Some(2)),
    )
    .await;

    let first = eventually(
        Duration::from_secs(40),
        "the first Ready scheduled checkpoint",
        || async {
            scheduled(&env, "nightly")
                .await
                .into_iter()
                .find(|(_, c)| c.2)
                .map(|(name, _)| name)
        },
    )
    .await;
    create(
        &env,
        "DatabaseClone",
        "pinned",
        json!({"source": {"checkpointRef": {"name": first}}, "target": {"path": "clones/pinned"}}),
    )
    .await;
    let made = eventually(
        Duration::from_secs(70),
        "four scheduled checkpoints made",
        || async {
            let schedule = env
                .api::<DatabaseCheckpointSchedule>()
                .get("nightly")
                .await
                .ok()?;
            let last = schedule.status?.last_schedule_time?;
            let all = scheduled(&env, "nightly").await;
            let first_tick = all.get(&first)?.0;
            let last = DateTime::<Utc>::from_timestamp_millis(last.0.as_millisecond())?;
            ((last - first_tick).num_seconds() >= 30 && all.values().filter(|c| c.2).count() >= 3)
                .then_some(all)
        },
    )
    .await;
    for (name, (tick, created, _, _)) in &made {
        let late = (*created - *tick).num_milliseconds();
        assert!(
            (-1000..=3000).contains(&late),
            "{name} created {late} ms after its tick"
        );
    }
    // Retention settles: the two newest Ready ones, and the one the clone is being made from.
    let kept = eventually(
        Duration::from_secs(20),
        "retention to keep 2 + the pinned one",
        || async {
            let all = scheduled(&env, "nightly").await;
            let ready: Vec<&String> = all.iter().filter(|(_, c)| c.2).map(|(n, _)| n).collect();
            (ready.len() == 3 && all.len() <= 4).then_some(all)
        },
    )
    .await;
    assert!(
        kept.contains_key(&first),
        "the checkpoint with a clone in progress was pruned: {kept:?}"
    );
    assert!(
        kept[&first].3,
        "the pinned checkpoint is not InUse: {kept:?}"
    );
    let newest: Vec<&String> = kept.keys().rev().take(2).collect();
    assert!(newest
        .iter()
        .all(|n| kept[*n].2 || kept[*n].1 > Utc::now() - chrono::Duration::seconds(5)));
    let schedule = env
        .api::<DatabaseCheckpointSchedule>()
        .get("nightly")
        .await
        .unwrap();
    let status = schedule.status.unwrap();
    let last_ok = status.last_successful_checkpoint.unwrap();
    assert!(kept.contains_key(&last_ok.name) && last_ok.checkpoint_id.is_some());
    assert!(status.next_schedule_time.is_some());
    assert!(status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True"));

    // suspend: nothing new over more than a tick.
    patch_spec::<DatabaseCheckpointSchedule>(&env, "nightly", json!({"suspend": true})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<String> = scheduled(&env, "nightly").await.into_keys().collect();
    tokio::time::sleep(Duration::from_secs(13)).await;
    let after = scheduled(&env, "nightly").await;
    assert!(
        after.keys().all(|n| before.contains(n)),
        "a suspended schedule made {after:?}"
    );

    // An outage over two ticks: exactly one catch-up checkpoint.
    operator.kill();
    patch_spec::<DatabaseCheckpointSchedule>(&env, "nightly", json!({"suspend": false})).await;
    let stopped_at = Utc::now();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let restarted_at = Utc::now();
    let _operator =
        Operator::start_with_args(&env.namespace, &[], &["--controllers", "checkpoint"]);
    let missed = eventually(
        Duration::from_secs(15),
        "the catch-up checkpoint",
        || async {
            let all = scheduled(&env, "nightly").await;
            let missed: Vec<_> = all
                .into_iter()
                .filter(|(_, c)| c.0 > stopped_at && c.0 <= restarted_at)
                .collect();
            (!missed.is_empty()).then_some(missed)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again: Vec<_> = scheduled(&env, "nightly")
        .await
        .into_iter()
        .filter(|(_, c)| c.0 > stopped_at && c.0 <= restarted_at)
        .collect();
    assert_eq!(missed.len(), 1, "{missed:?}");
    assert_eq!(
        again.len(),
        1,
        "one catch-up checkpoint per outage: {again:?}"
    );
    env.cleanup().await;
}

/// Every sample row `range`, and a row only the clone wrote, read from the database at `path`.
async fn read_rows(store: &TestStore, path: &str, keys: usize) -> (usize, Option<bytes::Bytes>) {
    let db = slatedb::Db::builder(path, store.open().main)
        .build()
        .await
        .unwrap();
    let mut present = 0;
    for i in 0..keys {
        let (key, value) = sample_row(i);
        if db.get(key.as_bytes()).await.unwrap().as_deref() == Some(value.as_bytes()) {
            present += 1;
        }
    }
    let own = db.get(b"written-by-the-test-app").await.unwrap();
    db.close().await.unwrap();
    (present, own)
}

/// A clone of `scheduleRef` waits with a clear message, then clones the newest Ready checkpoint;
/// its ConfigMap appears only after Ready with the right values and a Pod can use it; a reset
/// after new rows and a new scheduled checkpoint brings the new rows and drops the clone's own
/// writes, keeping object and ConfigMap name; ExpireData removes the ConfigMap.
#[tokio::test]
async fn a_clone_of_a_schedule_publishes_its_connection_and_resets() {
    let env = TestEnv::new("schedule-clone").await;
    let store = TestStore::new(StoreKind::S3, &env.namespace);
    store.create_secret(&env).await;
    write_sample_db(&store, PARENT, 300, 1).await;
    let _operator = Operator::start(&env.namespace, &[]);

    // Everything the API server says about the ConfigMaps and clones of the namespace, in order.
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let config_maps = {
        let events = events.clone();
        let api = env.api::<ConfigMap>();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = stream.next().await {
                if let watcher::Event::Apply(cm) | watcher::Event::InitApply(cm) = event {
                    if cm.metadata.name.as_deref() == Some("pr-7-slatedb") {
                        events.lock().unwrap().push("configmap".into());
                    }
                }
            }
        })
    };
    let clones = {
        let events = events.clone();
        let api = env.api::<DatabaseClone>();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = stream.next().await {
                if let watcher::Event::Apply(c) | watcher::Event::InitApply(c) = event {
                    let ready = condition(&c, "Ready").is_some_and(|r| r.0 == "True");
                    events.lock().unwrap().push(format!("clone ready={ready}"));
                }
            }
        })
    };

    create(
        &env,
        "DatabaseClone",
        "pr-7",
        json!({"source": {"scheduleRef": {"name": "nightly"}}, "target": {"path": "clones/pr-7"}}),
    )
    .await;
    let stalled = wait_clone(&env, "pr-7", "Stalled", Duration::from_secs(30)).await;
    let (_, reason, message) = condition(&stalled, "Stalled").unwrap();
    assert_eq!(reason, "ScheduleNotFound", "{message}");
    assert!(message.contains("nightly"), "{message}");
    create(
        &env,
        "DatabaseCheckpointSchedule",
        "nightly",
        schedule_spec(&store, "10s", None),
    )
    .await;
    let waiting = eventually(
        Duration::from_secs(20),
        "the clone to wait for a checkpoint",
        || async {
            let c = env.api::<DatabaseClone>().get("pr-7").await.ok()?;
            let (status, reason, message) = condition(&c, "Reconciling")?;
            (status == "True" && reason == "NoReadyCheckpoint").then_some(message)
        },
    )
    .await;
    assert!(waiting.contains("no Ready checkpoint yet"), "{waiting}");

    let ready = wait_clone(&env, "pr-7", "Ready", Duration::from_secs(60)).await;
    let status = ready.status.clone().unwrap();
    let first_source = status.source_checkpoint.clone().unwrap();
    assert!(first_source.starts_with("nightly-"), "{first_source}");
    assert_eq!(
        status.connection_config_map.as_deref(),
        Some("pr-7-slatedb")
    );
    let config_map = eventually(Duration::from_secs(10), "the ConfigMap", || async {
        env.api::<ConfigMap>()
            .get_opt("pr-7-slatedb")
            .await
            .unwrap()
    })
    .await;
    let data = config_map.data.clone().unwrap();
    let spec = store.store_spec();
    assert_eq!(data["SLATEDB_PATH"], "clones/pr-7");
    assert_eq!(data["SLATEDB_STORE_URL"], spec["url"].as_str().unwrap());
    assert_eq!(
        data["SLATEDB_STORE_SECRET"],
        spec["secretRef"]["name"].as_str().unwrap()
    );
    assert!(
        config_map
            .metadata
            .owner_references
            .unwrap()
            .iter()
            .any(|o| o.uid == ready.metadata.uid.clone().unwrap()),
        "the ConfigMap is not owned by its clone"
    );
    {
        let seen = events.lock().unwrap();
        let first_config_map = seen.iter().position(|e| e == "configmap").unwrap();
        let first_ready = seen.iter().position(|e| e == "clone ready=true").unwrap();
        assert!(
            first_ready < first_config_map,
            "the ConfigMap appeared before Ready: {seen:?}"
        );
    }
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: app, namespace: {ns}}}\nspec:\n  containers:\n  - name: app\n    image: app:1\n    envFrom:\n    - configMapRef: {{name: pr-7-slatedb}}\n",
        ns = env.namespace
    );
    server_dry_run(
        Some(&env.namespace),
        &pod,
        "a Pod using the clone's ConfigMap",
    );

    // The app writes to its clone; production gets new rows and a newer checkpoint.
    let clone_db = slatedb::Db::builder("clones/pr-7", store.open().main)
        .build()
        .await
        .unwrap();
    clone_db
        .put(b"written-by-the-test-app", b"1")
        .await
        .unwrap();
    clone_db.close().await.unwrap();
    append_sample_rows(&store.open(), PARENT, 300..400)
        .await
        .unwrap();
    let appended_at = Utc::now();
    eventually(
        Duration::from_secs(40),
        "a Ready checkpoint after the new rows",
        || async {
            let all = scheduled(&env, "nightly").await;
            all.values().any(|c| c.2 && c.1 > appended_at).then_some(())
        },
    )
    .await;
    let generation = ready.metadata.generation.unwrap();
    patch_spec::<DatabaseClone>(&env, "pr-7", json!({"resetToken": "after-new-rows"})).await;
    let reset = eventually(Duration::from_secs(60), "the reset clone Ready", || async {
        let c = env.api::<DatabaseClone>().get("pr-7").await.ok()?;
        let s = c.status.as_ref()?;
        let done = s.reset_token.as_deref() == Some("after-new-rows")
            && s.observed_generation == c.metadata.generation
            && condition(&c, "Ready")?.0 == "True";
        done.then_some(c)
    })
    .await;
    assert!(reset.metadata.generation.unwrap() > generation);
    let reset_status = reset.status.clone().unwrap();
    assert_ne!(
        reset_status.source_checkpoint.as_deref(),
        Some(first_source.as_str())
    );
    assert_eq!(
        reset.metadata.uid, ready.metadata.uid,
        "the object was replaced"
    );
    assert_eq!(
        reset_status.connection_config_map.as_deref(),
        Some("pr-7-slatedb")
    );
    eventually(
        Duration::from_secs(10),
        "the ConfigMap after the reset",
        || async {
            env.api::<ConfigMap>()
                .get_opt("pr-7-slatedb")
                .await
                .unwrap()
        },
    )
    .await;
    let (present, own) = read_rows(&store, "clones/pr-7", 400).await;
    assert_eq!(
        present, 400,
        "the reset clone lacks rows of the newer checkpoint"
    );
    assert_eq!(own, None, "the clone's own writes survived its reset");

    // ExpireData: the data and the ConfigMap go, the object stays.
    patch_spec::<DatabaseClone>(
        &env,
        "pr-7",
        json!({"expireAfter": "2s", "expirationPolicy": "ExpireData", "resetToken": "expiring"}),
    )
    .await;
    wait_clone(&env, "pr-7", "Expired", Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(15),
        "the ConfigMap gone with the data",
        || async {
            env.api::<ConfigMap>()
                .get_opt("pr-7-slatedb")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
    config_maps.abort();
    clones.abort();
    env.cleanup().await;
}
