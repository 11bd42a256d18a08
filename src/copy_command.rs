//! The `copy` and `promote` commands of the CLI: an independent copy of a database's checkpoint
//! in another store (or path), and turning such a copy into a writable database. Like the other
//! local commands they need no cluster, print a JSON-ready report (the caller prints it), show
//! progress as a bar or JSON lines, and fail with the exit codes of [`crate::offline_commands`].
//!
//! Credentials come from the environment: the `AWS_*`, `GOOGLE_*` and `AZURE_*` variables serve
//! both stores, and the same variables prefixed `SLATEDB_COPY_FROM_` or `SLATEDB_COPY_TO_` (as a
//! Kubernetes `envFrom` with a `prefix` gives them) serve only the source or only the target, so
//! that two buckets with different keys can be copied between.

use crate::engine::{
    copy_checkpoint, promote_copy, source_label, CloneSourceCheckpoint, CopyOptions, CopyProgress,
    CopyShare, CopyVerification, Database, EngineError, Owner, DEFAULT_ADMIN_TIMEOUT,
};
use crate::offline_commands::{store_options_from_env, store_with_options};
use serde_json::{json, Value};

/// Prefix of the variables that configure only the source store.
pub const FROM_PREFIX: &str = "SLATEDB_COPY_FROM_";
/// Prefix of the variables that configure only the target store.
pub const TO_PREFIX: &str = "SLATEDB_COPY_TO_";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyArg {
    /// Sizes only; the content root from the hashes taken while reading the source.
    Metadata,
    /// Read back every object no earlier copy of this target verified.
    Content,
    /// Read back every object.
    Full,
}

/// Arguments of `slatedb-operator copy`.
#[derive(Clone, Debug, clap::Args)]
pub struct CopyArgs {
    /// Object-store URL of the source, e.g. s3://bucket/prefix.
    #[arg(long)]
    pub from_store: String,
    /// Path of the source database in its store.
    #[arg(long)]
    pub from: String,
    /// Checkpoint to copy; default: the latest state, through a temporary checkpoint that is
    /// deleted once the copy is committed.
    #[arg(long)]
    pub checkpoint: Option<uuid::Uuid>,
    /// Object-store URL of the target (another bucket or provider, or the same one).
    #[arg(long)]
    pub to_store: String,
    /// Path of the copy in the target store.
    #[arg(long)]
    pub to: String,
    /// Objects transferred at once.
    #[arg(long, default_value_t = CopyOptions::default().parallelism)]
    pub parallelism: usize,
    #[arg(long, value_enum, default_value_t = VerifyArg::Content)]
    pub verify: VerifyArg,
    /// Rounds of transferring again objects that failed verification.
    #[arg(long, default_value_t = CopyOptions::default().max_retransmissions)]
    pub max_retransmissions: u32,
    /// Objects of at least this many MiB are uploaded in parts.
    #[arg(long, default_value_t = CopyOptions::default().multipart_threshold >> 20)]
    pub multipart_threshold_mib: u64,
    /// Split the objects into this many disjoint shares and copy (and verify) only one of them,
    /// committing nothing: for the completions of an Indexed Job. A run without --shares then
    /// commits the copy, transferring only what no share finished. Needs --checkpoint.
    #[arg(long, requires = "checkpoint")]
    pub shares: Option<u32>,
    /// Which share this run copies (default: the Indexed Job's completion index).
    #[arg(long, env = "JOB_COMPLETION_INDEX", default_value_t = 0)]
    pub share_index: u32,
    /// Bound on each SlateDB and object-store call, in seconds.
    #[arg(long, default_value_t = DEFAULT_ADMIN_TIMEOUT.as_secs())]
    pub timeout_seconds: u64,
    /// The owner of the target, `NAMESPACE/NAME/UID` (a DatabaseCopy, for its Job): the target is
    /// claimed for it, and one claimed by anyone else is refused.
    #[arg(long, value_parser = parse_owner)]
    pub owner: Option<Owner>,
}

fn parse_owner(text: &str) -> Result<Owner, String> {
    match text.splitn(3, '/').collect::<Vec<_>>()[..] {
        [namespace, name, uid] if !namespace.is_empty() && !name.is_empty() && !uid.is_empty() => {
            Ok(Owner {
                namespace: namespace.into(),
                name: name.into(),
                uid: uid.into(),
            })
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME/UID")),
    }
}

/// Arguments of `slatedb-operator promote`.
#[derive(Clone, Debug, clap::Args)]
pub struct PromoteArgs {
    /// Object-store URL of the copy.
    #[arg(long)]
    pub store: String,
    /// Path of the copy in the store.
    #[arg(long)]
    pub path: String,
}

/// A database in a store configured by the environment, `prefix`ed variables first.
fn database(url: &str, path: &str, prefix: &str, timeout: u64) -> Result<Database, EngineError> {
    let mut options = store_options_from_env();
    options.extend(
        std::env::vars()
            .filter_map(|(key, value)| Some((key.strip_prefix(prefix)?.to_string(), value))),
    );
    let store = store_with_options(url, options)?;
    Ok(Database::new(
        store,
        path,
        std::time::Duration::from_secs(timeout),
    ))
}

/// Runs the copy, showing progress as JSON lines (`json`) or on `bar`.
pub async fn copy(
    args: CopyArgs,
    json: bool,
    bar: indicatif::ProgressBar,
) -> Result<Value, EngineError> {
    let source = database(
        &args.from_store,
        &args.from,
        FROM_PREFIX,
        args.timeout_seconds,
    )?;
    let target = database(&args.to_store, &args.to, TO_PREFIX, args.timeout_seconds)?;
    let checkpoint = match args.checkpoint {
        Some(id) => CloneSourceCheckpoint::Id(id),
        None => CloneSourceCheckpoint::Latest {
            name: format!(
                "slatedb-operator-cli:copy:{}",
                source_label(&args.to_store, &args.to)
            ),
        },
    };
    let options = CopyOptions {
        parallelism: args.parallelism.max(1),
        verify: match args.verify {
            VerifyArg::Metadata => CopyVerification::Metadata,
            VerifyArg::Content => CopyVerification::Content,
            VerifyArg::Full => CopyVerification::Full,
        },
        max_retransmissions: args.max_retransmissions,
        multipart_threshold: args.multipart_threshold_mib << 20,
        source_label: Some(source_label(&args.from_store, &args.from)),
        owner: args.owner,
        share: args.shares.map(|count| CopyShare {
            index: args.share_index,
            count,
        }),
        ..CopyOptions::default()
    };
    let shown = bar.clone();
    let report = copy_checkpoint(&source, &checkpoint, &target, &options, move |p| {
        show_progress(json, &shown, &p)
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    Ok(json!({
        "checkpointId": report.checkpoint_id.to_string(), "manifestId": report.manifest_id,
        "objectsTotal": report.objects_total, "bytesTotal": report.bytes_total,
        "objectsTransferred": report.objects_transferred, "bytesTransferred": report.bytes_transferred,
        "objectsSkipped": report.objects_skipped, "bytesSkipped": report.bytes_skipped,
        "objectsRetransmitted": report.objects_retransmitted,
        "bytesRetransmitted": report.bytes_retransmitted,
        "objectsReadBack": report.objects_read_back, "blocksChecked": report.blocks_checked,
        "verify": options.verify.name(), "contentRoot": report.content_root,
        "manifestSha256": report.manifest_sha256, "alreadyComplete": report.already_complete,
        "resumed": report.resumed, "committed": report.committed,
        "seconds": report.duration.as_secs_f64(),
    }))
}

/// Promotes the copy at `--store`/`--path` into an independent writable database.
pub async fn promote(args: PromoteArgs) -> Result<Value, EngineError> {
    let timeout = DEFAULT_ADMIN_TIMEOUT.as_secs();
    let target = database(&args.store, &args.path, TO_PREFIX, timeout)?;
    let report = promote_copy(&target, None).await?;
    let deleted: Vec<String> = report
        .checkpoints_deleted
        .iter()
        .map(|id| id.to_string())
        .collect();
    Ok(json!({
        "copyManifestId": report.copy_manifest_id, "checkpointsDeleted": deleted,
        "objectsRemoved": report.objects_removed, "manifestId": report.manifest_id,
    }))
}

fn show_progress(json: bool, bar: &indicatif::ProgressBar, p: &CopyProgress) {
    if json {
        println!(
            "{}",
            json!({"progress": {"phase": p.phase.name(), "percent": p.percent(),
                "objectsDone": p.objects_done, "objectsTotal": p.objects_total,
                "bytesDone": p.bytes_done, "bytesTotal": p.bytes_total}})
        );
    } else {
        bar.set_position(u64::from(p.percent()));
        bar.set_message(format!(
            "{} {}/{} objects, {}/{} MiB",
            p.phase.name(),
            p.objects_done,
            p.objects_total,
            p.bytes_done >> 20,
            p.bytes_total >> 20
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sample::write_sample_db;
    use crate::engine::{Store, StoreConfig};

    fn args(from_store: &str, to_store: &str, checkpoint: Option<uuid::Uuid>) -> CopyArgs {
        CopyArgs {
            from_store: from_store.into(),
            from: "db".into(),
            checkpoint,
            to_store: to_store.into(),
            to: "backup/db".into(),
            parallelism: 4,
            verify: VerifyArg::Content,
            max_retransmissions: 1,
            multipart_threshold_mib: 64,
            shares: None,
            share_index: 0,
            timeout_seconds: 20,
            owner: None,
        }
    }

    #[test]
    fn an_owner_is_namespace_name_and_uid() {
        let owner = parse_owner("team-a/dr/1234").unwrap();
        assert_eq!(
            (
                owner.namespace.as_str(),
                owner.name.as_str(),
                owner.uid.as_str()
            ),
            ("team-a", "dr", "1234")
        );
        assert!(parse_owner("team-a/dr").is_err());
        assert!(parse_owner("//x").is_err());
    }

    #[tokio::test]
    async fn the_copy_command_copies_resumes_as_a_no_op_and_promotes() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from_url = format!("file://{}", from.path().display());
        let to_url = format!("file://{}/", to.path().display());
        let store = Store::open(&StoreConfig::with_options(&from_url, &[])).unwrap();
        write_sample_db(&store, "db", 300, 2).await.unwrap();

        let hidden = indicatif::ProgressBar::hidden;
        let first = copy(args(&from_url, &to_url, None), false, hidden())
            .await
            .unwrap();
        assert_eq!(
            first["objectsTransferred"], first["objectsTotal"],
            "{first}"
        );
        assert_eq!(first["verify"], "content");
        let checkpoint: uuid::Uuid = first["checkpointId"].as_str().unwrap().parse().unwrap();
        // The temporary checkpoint is gone from the source, so name it again: a no-op now.
        let source = Database::new(store.clone(), "db", DEFAULT_ADMIN_TIMEOUT);
        assert!(source.list_checkpoints(None).await.unwrap().is_empty());
        let (made, _) = source.obtain_checkpoint("cli", None).await.unwrap();
        assert_ne!(made.id, checkpoint);
        let second = copy(args(&from_url, &to_url, Some(made.id)), true, hidden())
            .await
            .unwrap();
        assert_eq!(second["alreadyComplete"], false, "{second}");
        assert_eq!(
            second["objectsTransferred"], 1,
            "only the new manifest: {second}"
        );

        let promoted = promote(PromoteArgs {
            store: to_url.clone(),
            path: "backup/db".into(),
        })
        .await
        .unwrap();
        assert_eq!(promoted["checkpointsDeleted"].as_array().unwrap().len(), 1);

        let missing = copy(
            args(&from_url, &to_url, Some(uuid::Uuid::nil())),
            false,
            hidden(),
        )
        .await
        .unwrap_err();
        assert_eq!(crate::offline_commands::exit_code_for(&missing), 3);
    }

    #[tokio::test]
    async fn shares_of_the_copy_command_then_a_commit() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from_url = format!("file://{}", from.path().display());
        let to_url = format!("file://{}", to.path().display());
        let store = Store::open(&StoreConfig::with_options(&from_url, &[])).unwrap();
        write_sample_db(&store, "db", 300, 4).await.unwrap();
        let source = Database::new(store.clone(), "db", DEFAULT_ADMIN_TIMEOUT);
        let (checkpoint, _) = source.obtain_checkpoint("cli", None).await.unwrap();
        let mut sent = 0;
        for share_index in 0..2 {
            let share = CopyArgs {
                shares: Some(2),
                share_index,
                ..args(&from_url, &to_url, Some(checkpoint.id))
            };
            let report = copy(share, false, indicatif::ProgressBar::hidden())
                .await
                .unwrap();
            assert_eq!(report["committed"], false, "{report}");
            sent += report["objectsTransferred"].as_u64().unwrap();
        }
        let all = copy(
            args(&from_url, &to_url, Some(checkpoint.id)),
            false,
            indicatif::ProgressBar::hidden(),
        )
        .await
        .unwrap();
        assert_eq!(all["committed"], true);
        assert_eq!(all["objectsTransferred"], 1, "{all}");
        assert_eq!(sent + 1, all["objectsTotal"].as_u64().unwrap());
    }
}
