//! A DatabaseCopy above the Job threshold on the real node: the operator pod (installed with the
//! chart, on the pod network) launches an Indexed Job of its own image whose pods copy disjoint
//! shares under the chart's copy ServiceAccount; the manifest appears only after every share
//! succeeded; a pod deleted mid-copy is replaced and the copy still ends verified.

use crate::clones::{create, wait_checkpoint_ready, PARENT};
use crate::copies::write_l0_parent;
use crate::node::{kubectl_apply, pod_store, ready_pods, Network, Release};
use crate::support::{eventually, StoreKind, TestEnv, TestStore};
use futures::TryStreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams};
use serde_json::json;
use slatedb::{DbReader, DbReaderMode};
use slatedb_operator::api::{DatabaseCheckpoint, DatabaseCopy};
use std::time::Duration;

const ROWS: usize = 1_800;
const TARGET: &str = "copies/orders";

/// Row `i` of the parent: about 100 KB each, so that the shares take a while.
fn row(i: usize) -> (String, Vec<u8>) {
    (
        format!("key-{i:06}"),
        format!("value-{i:06}-").repeat(8_000).into_bytes(),
    )
}

/// How many manifests the target holds.
async fn manifests_at(target: &TestStore) -> usize {
    let prefix = object_store::path::Path::from(format!("{TARGET}/manifest"));
    let listed: Vec<_> = target
        .open()
        .main
        .list(Some(&prefix))
        .try_collect()
        .await
        .unwrap_or_default();
    listed.len()
}

#[tokio::test]
async fn a_copy_above_the_job_threshold_runs_as_an_indexed_job_that_survives_a_pod_deletion() {
    let env = TestEnv::new("node-copy").await;
    let source = pod_store(&env).await;
    // The target: another prefix of the S3 server, as the test reads it (loopback endpoint).
    let target = TestStore::new(StoreKind::S3, &format!("{}-dr", env.namespace));
    // 180 L0 SSTs of about 1 MB.
    write_l0_parent(&source, ROWS, row).await;
    let release = Release::install(&env, "c", Network::Pod, &[], &[]);
    ready_pods(&env, &release, 1).await;
    // Jobs copy between DatabaseStores: their pods mount the stores' credentials Secret, which
    // lives in the operator's namespace (here the test's, where the chart is installed).
    let pod_options = json!({
        "AWS_ENDPOINT": crate::node::node_env("E2E_POD_S3_ENDPOINT"),
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": "us-east-1",
    });
    let admin_store = |url: &str, read: &str, write: &str| {
        json!({"url": url, "credentials": {"secretRef": {"name": "store-credentials"}},
               "options": pod_options, "namespaces": {"names": [env.namespace]},
               "readPrefixes": [read], "writePrefixes": [write]})
    };
    let source_store = env
        .create_store(
            &format!("{}-src", env.namespace),
            admin_store(&source.url, "prod", "prod"),
            true,
        )
        .await;
    let target_store = env
        .create_store(
            &format!("{}-dr", env.namespace),
            admin_store(&target.url, "copies", "copies"),
            true,
        )
        .await;
    kubectl_apply(
        &env,
        &format!(
            "apiVersion: slatedb.io/v1alpha1\nkind: DatabaseCheckpoint\nmetadata: {{name: nightly}}\n\
             spec:\n  database: {{store: {{ref: {source_store}}}, path: {PARENT}}}\n  checksum: Content\n"
        ),
    );
    let checkpoint: DatabaseCheckpoint = wait_checkpoint_ready(&env, "nightly").await;

    create(
        &env,
        "DatabaseCopy",
        "dr",
        json!({
            "source": {"checkpointRef": {"name": "nightly"}},
            "target": {
                "store": {"ref": target_store},
                "path": TARGET
            },
            "parallelism": 1,
            "job": {"thresholdBytes": 0, "shares": 3, "resources": {"requests": {"cpu": "10m"}}}
        }),
    )
    .await;
    let copies = env.api::<DatabaseCopy>();
    let copy = eventually(Duration::from_secs(60), "the copy's Job", || async {
        let copy = copies.get("dr").await.ok()?;
        copy.status.as_ref()?.job.as_ref()?;
        Some(copy)
    })
    .await;
    let job_name = format!("slatedb-copy-{}", copy.metadata.uid.clone().unwrap());
    let jobs = env.api::<Job>();
    // The status records the Job just before the operator creates it.
    let job = eventually(Duration::from_secs(30), "the Job created", || async {
        jobs.get_opt(&job_name).await.ok()?
    })
    .await;
    let spec = job.spec.clone().unwrap();
    assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
    assert_eq!(spec.completions, Some(3));
    let pod_spec = spec.template.spec.unwrap();
    let copy_account = format!("{}-copy", release.fullname);
    assert_eq!(
        pod_spec.service_account_name.as_deref(),
        Some(copy_account.as_str())
    );
    assert_eq!(pod_spec.automount_service_account_token, Some(false));

    // Delete one share's pod once it runs; meanwhile no manifest may appear before every share
    // has succeeded.
    let pods = env.api::<Pod>();
    let by_job = ListParams::default().labels(&format!("job-name={job_name}"));
    let victim = eventually(Duration::from_secs(120), "a running copy pod", || async {
        let list = pods.list(&by_job).await.ok()?;
        list.items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    let victim_name = victim.metadata.name.clone().unwrap();
    assert_eq!(
        victim
            .spec
            .as_ref()
            .unwrap()
            .service_account_name
            .as_deref(),
        Some(copy_account.as_str())
    );
    let started = std::time::Instant::now();
    // At once, as a node failure would: no grace period to finish the share in.
    pods.delete(&victim_name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let mut early_manifests = Vec::new();
    let mut pods_seen = std::collections::BTreeSet::new();
    let ready = loop {
        let job = jobs.get_opt(&job_name).await.unwrap();
        let succeeded = job
            .as_ref()
            .and_then(|j| j.status.as_ref()?.succeeded)
            .unwrap_or(0);
        let manifests = manifests_at(&target).await;
        if job.is_some() && succeeded < 3 && manifests > 0 {
            early_manifests.push((succeeded, manifests));
        }
        for pod in pods.list(&by_job).await.unwrap().items {
            pods_seen.insert(pod.metadata.name.unwrap());
        }
        let copy = copies.get("dr").await.unwrap();
        let ready = copy.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            eprintln!(
                "node-copy: Ready {:.1}s after the pod deletion",
                started.elapsed().as_secs_f64()
            );
            break copy;
        }
        let stalled = copy.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Stalled" && c.status == "True")
                .map(|c| c.message.clone())
        });
        assert!(stalled.is_none(), "the copy stalled: {stalled:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        early_manifests.is_empty(),
        "a manifest appeared before every share finished: {early_manifests:?}"
    );
    assert!(
        pods_seen.len() >= 4,
        "the deleted pod was replaced by another of its index: {pods_seen:?}"
    );
    let status = ready.status.unwrap();
    let run = status.last_run.unwrap();
    assert!(run.by_job, "{run:?}");
    assert!(
        run.objects_skipped >= run.objects_total - 1,
        "the operator's commit transferred only the manifest: {run:?}"
    );
    assert_eq!(
        status.checksum.and_then(|c| c.content_root),
        checkpoint
            .status
            .and_then(|s| s.checksum)
            .and_then(|c| c.content_root),
        "the copy's content root is the source checkpoint's"
    );
    // The Job and its Secret go once the copy is committed.
    eventually(
        Duration::from_secs(60),
        "the Job and Secret removed",
        || async {
            let job = jobs.get_opt(&job_name).await.ok()?;
            let secret = env.api::<Secret>().get_opt(&job_name).await.ok()?;
            (job.is_none() && secret.is_none()).then_some(())
        },
    )
    .await;

    let reader = DbReader::builder(TARGET, target.open().main)
        .with_reader_mode(DbReaderMode::FollowLatest)
        .build()
        .await
        .unwrap();
    for i in 0..ROWS {
        let (key, value) = row(i);
        let found = reader.get(key.as_bytes()).await.unwrap();
        assert!(
            found.as_deref() == Some(&value[..]),
            "row {i} at the target"
        );
    }
    reader.close().await.unwrap();

    // The DatabaseStore that holds the copy is not deleted under it: DeletionBlocked names it.
    env.kubectl(&["delete", "databasestore", &target_store, "--wait=false"]);
    let stores = kube::Api::<slatedb_operator::api::DatabaseStore>::all(env.client.clone());
    eventually(
        Duration::from_secs(30),
        "the store's DeletionBlocked",
        || async {
            let store = stores.get(&target_store).await.ok()?;
            store.status?.conditions.into_iter().find(|c| {
                c.type_ == "DeletionBlocked"
                    && c.status == "True"
                    && c.message
                        .contains(&format!("DatabaseCopy {}/dr", env.namespace))
            })
        },
    )
    .await;
    env.kubectl(&[
        "delete",
        "databasecopy",
        "dr",
        "--wait=true",
        "--timeout=60s",
    ]);
    eventually(
        Duration::from_secs(60),
        "the store gone with its copy",
        || async {
            stores
                .get_opt(&target_store)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    release.uninstall();
    env.cleanup().await;
}
