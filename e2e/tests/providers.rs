//! The stores the README promises besides `file://` and S3, on the test bed's servers for their
//! protocols: GCS (fake-gcs-server, e2e/gcs-server) and Azure Blob (Azurite). On each, a
//! checkpoint and a clone through the operator, with the store's options in a Secret, and a copy
//! from the S3 server with the CLI; everything is read back row for row with SlateDB.

use crate::clones::{assert_all_rows, create, wait_checkpoint_ready, wait_clone, PARENT};
use crate::support::{describe, write_sample_db, Operator, StoreKind, TestEnv, TestStore};
use serde_json::{json, Value};
use slatedb::{DbReader, DbReaderMode};
use slatedb_operator::copy_command::{FROM_PREFIX, TO_PREFIX};
use slatedb_operator::engine::sample::sample_row;
use std::time::{Duration, Instant};

const KEYS: usize = 3_000;
const SSTS: usize = 3;

/// The environment of every process these tests start: the metadata addresses the object-store
/// clients would ask for an ambient identity point at a loopback port nothing listens on (the
/// operator's default environment covers AWS and Azure, not GCS), so no test can reach a metadata
/// server even by mistake.
const NO_METADATA: [(&str, &str); 4] = [
    ("GCE_METADATA_HOST", "127.0.0.1:1"),
    ("GCE_METADATA_IP", "127.0.0.1:1"),
    ("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1"),
    (
        "AZURE_MSI_ENDPOINT",
        "http://127.0.0.1:1/metadata/identity/oauth2/token",
    ),
];

/// A sample database on `store`, a DatabaseCheckpoint of it with a content checksum (the
/// operator's content root is the one the engine computes from the store), and a DatabaseClone
/// of that checkpoint that holds every row.
async fn checkpoint_and_clone(prefix: &str, store: fn(&str) -> TestStore) {
    let started = Instant::now();
    let env = TestEnv::new(prefix).await;
    let store = store(&env.namespace);
    store.create_secret(&env).await;
    let _operator = Operator::start(&env.namespace, &NO_METADATA);
    write_sample_db(&store, PARENT, KEYS, SSTS).await;
    create(
        &env,
        "DatabaseCheckpoint",
        "nightly",
        json!({"database": {"store": store.store_spec(), "path": PARENT}, "checksum": "Content"}),
    )
    .await;
    let status = wait_checkpoint_ready(&env, "nightly").await.status.unwrap();
    let manifest_id = u64::try_from(status.manifest_id.unwrap()).unwrap();
    let fingerprint = store
        .database(PARENT)
        .fingerprint(manifest_id, true)
        .await
        .unwrap();
    let content_root = status.checksum.unwrap().content_root;
    assert!(content_root.is_some(), "{}: no content root", store.url);
    assert_eq!(content_root, fingerprint.content_root, "{}", store.url);

    create(
        &env,
        "DatabaseClone",
        "pr-1",
        json!({"source": {"checkpointRef": {"name": "nightly"}}, "target": {"path": "clones/pr-1"},
               "verify": "Content"}),
    )
    .await;
    let ready = wait_clone(&env, "pr-1", "Ready", Duration::from_secs(90)).await;
    let checksum = ready.status.unwrap().checksum.unwrap();
    assert_eq!(checksum.content_root.map(|r| r.len()), Some(64));
    assert_all_rows(&store, "clones/pr-1", KEYS).await;
    println!(
        "{}: checkpoint and clone ready and read back in {:?}",
        store.url,
        started.elapsed()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_checkpoint_and_a_clone_on_gcs_read_back_row_for_row() {
    checkpoint_and_clone("prov-gcs", TestStore::gcs).await
}

#[tokio::test]
async fn a_checkpoint_and_a_clone_on_azure_read_back_row_for_row() {
    checkpoint_and_clone("prov-azure", TestStore::azure).await
}

/// `options` as the variables `slatedb-operator copy` reads for one side: each key behind
/// `prefix`.
fn prefixed(prefix: &str, store: &TestStore) -> Vec<(String, String)> {
    store
        .options
        .iter()
        .map(|(key, value)| (format!("{prefix}{key}"), value.clone()))
        .collect()
}

/// Runs `slatedb-operator copy ARGS --output json` with `env` and returns its result.
fn copy_command(args: &[&str], env: Vec<(String, String)>) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_slatedb-operator"))
        .arg("copy")
        .args(args)
        .args(["--output", "json"])
        .env_remove("RUST_LOG")
        .envs(NO_METADATA)
        .envs(env)
        .output()
        .unwrap();
    let what = format!("slatedb-operator copy {args:?}");
    assert!(output.status.success(), "{}", describe(&what, &output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let line: Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    line["result"].clone()
}

/// A name no earlier run used: the S3 server keeps its objects between runs.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Every row of the copy at `path`, read with a reader (a copy is a checkpoint's state, not a
/// database anyone writes), checked against the sample.
async fn assert_copy_rows(store: &TestStore, path: &str, keys: usize) {
    let reader = DbReader::builder(path, store.open().main)
        .with_reader_mode(DbReaderMode::FollowLatest)
        .build()
        .await
        .unwrap();
    let mut iterator = reader.scan(..).await.unwrap();
    let mut count = 0;
    while let Some(row) = iterator.next().await.unwrap() {
        let (key, value) = sample_row(count);
        assert_eq!(
            (row.key.as_ref(), row.value.as_ref()),
            (key.as_bytes(), value.as_bytes()),
            "{}/{path}: row {count}",
            store.url
        );
        count += 1;
    }
    assert_eq!(count, keys, "{}/{path}: row count", store.url);
    reader.close().await.unwrap();
}

/// A checkpoint of a sample database on the S3 server, copied with the CLI to the store `target`
/// makes: the copy holds every row, and its content root (from the copy's own objects) is the
/// source checkpoint's.
async fn copy_from_s3(prefix: &str, target: fn(&str) -> TestStore) {
    let prefix = unique(prefix);
    let source = TestStore::new(StoreKind::S3, &prefix);
    let target = target(&prefix);
    write_sample_db(&source, PARENT, KEYS, SSTS).await;
    let database = source.database(PARENT);
    let (checkpoint, _) = database
        .obtain_checkpoint("copy-to-provider", None)
        .await
        .unwrap();
    let at_source = database
        .fingerprint(checkpoint.manifest_id, true)
        .await
        .unwrap();

    let mut env = prefixed(FROM_PREFIX, &source);
    env.extend(prefixed(TO_PREFIX, &target));
    let id = checkpoint.id.to_string();
    let started = Instant::now();
    let report = copy_command(
        &[
            "--from-store",
            &source.url,
            "--from",
            PARENT,
            "--checkpoint",
            &id,
            "--to-store",
            &target.url,
            "--to",
            "copies/orders",
            "--verify",
            "full",
            // Every object in parts: the protocol's multipart upload (SlateDB's own writes of
            // these small SSTs are single uploads).
            "--multipart-threshold-mib",
            "0",
        ],
        env,
    );
    println!(
        "copy {} -> {}: {} objects, {} bytes in {:?}",
        source.url,
        target.url,
        report["objectsTotal"],
        report["bytesTotal"],
        started.elapsed()
    );
    assert_eq!(report["committed"], true, "{report}");
    assert_eq!(report["checkpointId"], id.as_str(), "{report}");
    assert_eq!(
        report["objectsTransferred"], report["objectsTotal"],
        "{report}"
    );
    assert_eq!(
        report["contentRoot"].as_str(),
        at_source.content_root.as_deref(),
        "{report}"
    );
    let manifest_id = report["manifestId"].as_u64().unwrap();
    let at_target = target
        .database("copies/orders")
        .fingerprint(manifest_id, true)
        .await
        .unwrap();
    assert_eq!(at_target.content_root, at_source.content_root);
    assert_copy_rows(&target, "copies/orders", KEYS).await;
}

#[tokio::test]
async fn a_copy_from_s3_to_gcs_reads_back_row_for_row_with_the_source_content_root() {
    copy_from_s3("copy-gcs", TestStore::gcs).await
}

#[tokio::test]
async fn a_copy_from_s3_to_azure_reads_back_row_for_row_with_the_source_content_root() {
    copy_from_s3("copy-azure", TestStore::azure).await
}

/// What SlateDB's manifest compare-and-swap needs from a store: of writers that put one new key
/// at once, each only if it is absent, exactly one succeeds and the others are refused, and the
/// object holds the winner's bytes. s3s-fs alone fails this (it checks, then writes); the test
/// bed's S3 endpoint is its gate (e2e/s3-gate), and GCS and Azure decide atomically themselves.
async fn racing_creates_of_one_key_have_one_winner(store: TestStore) {
    use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
    let main = store.open().main;
    let (rounds, writers) = (25, 8);
    let run = uuid::Uuid::new_v4();
    for round in 0..rounds {
        let key = object_store::path::Path::from(format!(
            "race-{run}/{round}/00000000000000000002.manifest"
        ));
        let attempts = (0..writers).map(|writer| {
            let (main, key) = (main.clone(), key.clone());
            tokio::spawn(async move {
                let body = PutPayload::from(format!("writer {writer}").into_bytes());
                let options = PutOptions::from(PutMode::Create);
                main.put_opts(&key, body, options).await.map(|_| writer)
            })
        });
        let results = futures::future::join_all(attempts).await;
        let (mut winners, mut failures) = (Vec::new(), Vec::new());
        for joined in results {
            match joined.expect("writer task") {
                Ok(writer) => winners.push(writer),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(other) => failures.push(other.to_string()),
            }
        }
        assert!(failures.is_empty(), "round {round}: {failures:?}");
        assert_eq!(
            winners.len(),
            1,
            "round {round}: writers {winners:?} all created the key"
        );
        let stored = main.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(
            stored,
            format!("writer {}", winners[0]).as_bytes(),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn racing_creates_of_one_key_have_one_winner_on_every_test_store() {
    racing_creates_of_one_key_have_one_winner(TestStore::new(StoreKind::S3, "race-s3")).await;
    racing_creates_of_one_key_have_one_winner(TestStore::gcs("race-gcs")).await;
    racing_creates_of_one_key_have_one_winner(TestStore::azure("race-azure")).await;
}
