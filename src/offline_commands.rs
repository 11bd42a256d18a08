//! The offline commands of the CLI (`checkpoint`, `clone`, `verify`, `sample`, `wait`): engine calls
//! against a store URL, without a cluster. Each returns a JSON-ready report; printing is the caller's.

use crate::engine::{
    initialize_clone, CheckpointSelector, CloneConfig, CloneProgress, CloneSourceCheckpoint,
    Database, EngineError, Fault, RetryPolicy, Store, StoreConfig, Verification,
    DEFAULT_ADMIN_TIMEOUT,
};
use bytes::Bytes;
use serde_json::{json, Value};
use slatedb::config::CompressionCodec;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::{Duration, Instant};

/// Process exit codes of the local commands.
pub mod exit_code {
    pub const OK: u8 = 0;
    /// An unexpected failure of the program itself.
    pub const USAGE: u8 = 1;
    // 2 is clap's code for bad arguments.
    /// A transient failure (timeout, throttling, unreachable store): retrying may help
    /// (`EX_TEMPFAIL`).
    pub const TRANSIENT: u8 = 75;
    /// A permanent failure: bad input, missing data, rejected credentials.
    pub const PERMANENT: u8 = 3;
    /// Verification found corrupt or missing data.
    pub const CORRUPT: u8 = 4;
}

/// The exit code for an engine error.
pub fn exit_code_for(error: &EngineError) -> u8 {
    match (error, error.fault()) {
        (EngineError::Corrupt { .. } | EngineError::ChecksumMismatch { .. }, _) => {
            exit_code::CORRUPT
        }
        (_, Fault::Transient) => exit_code::TRANSIENT,
        (_, Fault::Permanent) => exit_code::PERMANENT,
    }
}

/// Object-store options from the environment: every `AWS_*`, `GOOGLE_*` and `AZURE_*` variable,
/// as a Secret would give them to the operator. Unrelated variables of those prefixes are skipped.
pub fn store_from_env(url: &str) -> Result<Store, EngineError> {
    store_with_options(url, store_options_from_env())
}

/// The object-store options [`store_from_env`] takes from the environment.
pub fn store_options_from_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(key, _)| {
            ["AWS_", "GOOGLE_", "AZURE_"]
                .iter()
                .any(|prefix| key.starts_with(prefix))
        })
        .collect()
}

/// A store at `url` with `options` (unknown ones skipped) and the ambient identity of the user.
pub fn store_with_options(
    url: &str,
    options: BTreeMap<String, String>,
) -> Result<Store, EngineError> {
    Store::open(&StoreConfig {
        url: url.into(),
        options,
        wal_url: None,
        ignore_unknown_options: true,
        // A local command acts as the user who runs it, with their identity.
        ambient: true,
    })
}

fn database(url: &str, path: &str) -> Result<Database, EngineError> {
    Ok(Database::new(
        store_from_env(url)?,
        path,
        DEFAULT_ADMIN_TIMEOUT,
    ))
}

fn checkpoint_json(c: &crate::engine::CheckpointInfo) -> Value {
    json!({"id": c.id.to_string(), "manifestId": c.manifest_id, "name": c.name,
           "createTime": c.create_time.to_rfc3339(), "expireTime": c.expire_time.map(|t| t.to_rfc3339())})
}

pub async fn checkpoint_create(
    url: &str,
    path: &str,
    name: &str,
    lifetime: Option<Duration>,
) -> Result<Value, EngineError> {
    let (checkpoint, obtained) = database(url, path)?
        .obtain_checkpoint(name, lifetime)
        .await?;
    let mut report = checkpoint_json(&checkpoint);
    report["obtained"] = json!(format!("{obtained:?}"));
    Ok(report)
}

pub async fn checkpoint_list(url: &str, path: &str) -> Result<Value, EngineError> {
    let db = database(url, path)?;
    db.probe().await?;
    let all = db.list_checkpoints(None).await?;
    Ok(Value::Array(all.iter().map(checkpoint_json).collect()))
}

pub async fn checkpoint_delete(
    url: &str,
    path: &str,
    id: uuid::Uuid,
) -> Result<Value, EngineError> {
    let existed = database(url, path)?.delete_checkpoint(id).await?;
    Ok(json!({"id": id.to_string(), "deleted": existed}))
}

/// Arguments of [`clone`].
pub struct CloneArgs {
    pub url: String,
    pub source: String,
    pub checkpoint: Option<uuid::Uuid>,
    pub target: String,
    pub verify: Verification,
    pub start: Option<String>,
    pub end: Option<String>,
}

pub async fn clone(
    args: CloneArgs,
    progress: impl Fn(CloneProgress) + Send + Sync + 'static,
) -> Result<Value, EngineError> {
    let store = store_from_env(&args.url)?;
    let source_checkpoint = match args.checkpoint {
        Some(id) => CloneSourceCheckpoint::Id(id),
        None => CloneSourceCheckpoint::Latest {
            name: format!("slatedb-operator-cli:clone:{}", args.target),
        },
    };
    let key_range = match (&args.start, &args.end) {
        (None, None) => None,
        (start, end) => Some((
            start
                .clone()
                .map_or(Bound::Unbounded, |s| Bound::Included(Bytes::from(s))),
            end.clone()
                .map_or(Bound::Unbounded, |e| Bound::Excluded(Bytes::from(e))),
        )),
    };
    let config = CloneConfig {
        store,
        source_path: args.source,
        source_checkpoint,
        key_range,
        target_path: args.target,
        verify: args.verify,
        admin_timeout: DEFAULT_ADMIN_TIMEOUT,
        retry: RetryPolicy::default(),
        owner: None,
    };
    let report = initialize_clone(config, progress).await?;
    Ok(json!({
        "sourceCheckpointId": report.source_checkpoint_id.to_string(),
        "objectsReferenced": report.objects_referenced, "bytesReferenced": report.bytes_referenced,
        "objectsCopied": report.objects_copied, "bytesCopied": report.bytes_copied,
        "metadataDigest": report.metadata_digest, "contentRoot": report.content_root,
        "resumed": report.resumed, "attempts": report.attempts, "seconds": report.duration.as_secs_f64(),
    }))
}

/// Fingerprints a checkpoint (or the database's latest manifest); `content` also hashes every
/// object and checks every SST block's CRC.
pub async fn verify(
    url: &str,
    path: &str,
    checkpoint: Option<uuid::Uuid>,
    content: bool,
) -> Result<Value, EngineError> {
    let db = database(url, path)?;
    db.probe().await?;
    let manifest_id = match checkpoint {
        Some(id) => {
            db.find_checkpoint(&CheckpointSelector::Id(id))
                .await?
                .manifest_id
        }
        None => db.latest_manifest().await?.id(),
    };
    let fingerprint = db.fingerprint(manifest_id, content).await?;
    Ok(json!({
        "manifestId": manifest_id, "objects": fingerprint.object_count, "bytes": fingerprint.size_bytes,
        "metadataDigest": fingerprint.metadata_digest, "contentRoot": fingerprint.content_root,
        "blocksChecked": fingerprint.blocks_checked,
    }))
}

/// Writes a sample database (for the demo and for trying the commands).
pub async fn sample(
    url: &str,
    path: &str,
    keys: usize,
    ssts: usize,
    compression: Option<CompressionCodec>,
) -> Result<Value, EngineError> {
    let store = store_from_env(url)?;
    crate::engine::sample::write_compressed_sample_db(&store, path, keys, ssts, compression)
        .await?;
    Ok(json!({"path": path, "keys": keys, "ssts": ssts, "compression": format!("{compression:?}")}))
}

/// How often [`wait`] looks at the path again.
const WAIT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Waits until `path` holds an initialized SlateDB database (its manifest present and marked
/// `initialized`), for an application's init container; looks again every second for at most
/// `timeout`. No database yet, one still being cloned and transient store failures are waited
/// out; bad input and rejected credentials end the wait at once.
pub async fn wait(url: &str, path: &str, timeout: Duration) -> Result<Value, EngineError> {
    let db = database(url, path)?;
    let started = Instant::now();
    let mut last_seen = String::from("nothing (the store was not read yet)");
    let polling = async {
        loop {
            let seen = match db.describe().await {
                Ok(description) if description.initialized => return Ok(description),
                Ok(_) => EngineError::Uninitialized { path: path.into() }.to_string(),
                Err(
                    error @ (EngineError::NotADatabase { .. } | EngineError::Uninitialized { .. }),
                ) => error.to_string(),
                Err(error) if error.fault() == Fault::Transient => error.to_string(),
                Err(error) => return Err(error),
            };
            if seen != last_seen {
                tracing::info!(path, "waiting for an initialized database: {seen}");
                last_seen = seen;
            }
            tokio::time::sleep(WAIT_POLL_INTERVAL).await;
        }
    };
    let outcome = tokio::time::timeout(timeout, polling).await;
    match outcome {
        Ok(Ok(description)) => Ok(json!({
            "path": path, "initialized": true, "manifestId": description.manifest_id,
            "waitedSeconds": started.elapsed().as_secs_f64(),
        })),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(EngineError::NotReadyInTime {
            path: path.into(),
            waited: timeout,
            last_seen,
        }),
    }
}
