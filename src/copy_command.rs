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
    codec_name, copy_checkpoint, promote_copy, reencode_checkpoint, source_label, sst_block_size,
    CloneSourceCheckpoint, CopyOptions, CopyProgress, CopyShare, CopyVerification, Database,
    EngineError, Owner, ReencodeOptions, ReencodeProgress, DEFAULT_ADMIN_TIMEOUT,
};
use crate::offline_commands::{store_options_from_env, store_with_options};
use serde_json::{json, Value};
use slatedb::config::CompressionCodec;

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

/// The compression codecs of a re-encoded target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    None,
    Snappy,
    Lz4,
    Zlib,
    Zstd,
}

impl CompressionArg {
    pub fn codec(self) -> Option<CompressionCodec> {
        match self {
            CompressionArg::None => None,
            CompressionArg::Snappy => Some(CompressionCodec::Snappy),
            CompressionArg::Lz4 => Some(CompressionCodec::Lz4),
            CompressionArg::Zlib => Some(CompressionCodec::Zlib),
            CompressionArg::Zstd => Some(CompressionCodec::Zstd),
        }
    }
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
    /// Rewrite the rows instead of copying the bytes: every row of the checkpoint is read and
    /// written into a new database at the target with --compression and --block-size, verified by
    /// a digest of the rows. Resumable like a copy; a clone may be the source.
    #[arg(long, conflicts_with_all = [
        "shares", "parallelism", "verify", "max_retransmissions", "multipart_threshold_mib",
    ])]
    pub reencode: bool,
    /// Compression codec of the re-encoded target's SSTs.
    #[arg(long, value_enum, requires = "reencode")]
    pub compression: Option<CompressionArg>,
    /// SST block size of the re-encoded target, in bytes: 1024, 2048, 4096 (SlateDB's default),
    /// 8192, 16384, 32768 or 65536.
    #[arg(long, requires = "reencode")]
    pub block_size: Option<usize>,
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
    if args.reencode {
        return reencode(args, &source, &target, json, bar).await;
    }
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

/// The `--reencode` form of the copy: rows rewritten with the chosen codec and block size.
async fn reencode(
    args: CopyArgs,
    source: &Database,
    target: &Database,
    json: bool,
    bar: indicatif::ProgressBar,
) -> Result<Value, EngineError> {
    let checkpoint = match args.checkpoint {
        Some(id) => CloneSourceCheckpoint::Id(id),
        None => CloneSourceCheckpoint::Latest {
            name: format!(
                "slatedb-operator-cli:reencode:{}",
                source_label(&args.to_store, &args.to)
            ),
        },
    };
    let defaults = ReencodeOptions::default();
    let options = ReencodeOptions {
        compression: args.compression.and_then(CompressionArg::codec),
        block_size: match args.block_size {
            Some(bytes) => sst_block_size(bytes)?,
            None => defaults.block_size,
        },
        source_label: Some(source_label(&args.from_store, &args.from)),
        owner: args.owner.clone(),
        ..defaults
    };
    let shown = bar.clone();
    let report = reencode_checkpoint(source, &checkpoint, target, &options, move |p| {
        show_reencode_progress(json, &shown, &p)
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    Ok(json!({
        "reencode": true,
        "checkpointId": report.checkpoint_id.to_string(), "manifestId": report.manifest_id,
        "compression": codec_name(report.compression), "blockSize": report.block_size,
        "rows": report.rows, "bytes": report.bytes,
        "rowsWritten": report.rows_written, "rowsSkipped": report.rows_skipped,
        "rowsExpired": report.rows_expired, "digest": report.digest,
        "sourceBytes": report.source_bytes, "targetBytes": report.target_bytes,
        "targetSsts": report.target_ssts, "targetManifestId": report.target_manifest_id,
        "alreadyComplete": report.already_complete, "resumed": report.resumed,
        "committed": report.committed, "seconds": report.duration.as_secs_f64(),
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

fn show_reencode_progress(json: bool, bar: &indicatif::ProgressBar, p: &ReencodeProgress) {
    if json {
        println!(
            "{}",
            json!({"progress": {"phase": p.phase.name(), "percent": p.percent(),
                "rowsDone": p.rows_done, "rowsTotal": p.rows_total,
                "rowsRecorded": p.rows_recorded,
                "bytesDone": p.bytes_done, "bytesTotal": p.bytes_total}})
        );
    } else {
        let total = p.rows_total.map_or("?".to_string(), |t| t.to_string());
        bar.set_position(u64::from(p.percent()));
        bar.set_message(format!(
            "{} {}/{total} rows, {}/{} MiB",
            p.phase.name(),
            p.rows_done,
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
            reencode: false,
            compression: None,
            block_size: None,
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

    #[tokio::test]
    async fn the_copy_command_reencodes_resumes_as_a_no_op_and_refuses_a_bad_block_size() {
        let (from, to) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let from_url = format!("file://{}", from.path().display());
        let to_url = format!("file://{}", to.path().display());
        let store = Store::open(&StoreConfig::with_options(&from_url, &[])).unwrap();
        write_sample_db(&store, "db", 300, 2).await.unwrap();
        let reencode = |block_size| CopyArgs {
            reencode: true,
            compression: Some(CompressionArg::Zstd),
            block_size: Some(block_size),
            ..args(&from_url, &to_url, None)
        };
        let hidden = indicatif::ProgressBar::hidden;
        let first = copy(reencode(8192), true, hidden()).await.unwrap();
        assert_eq!(first["rows"], 300, "{first}");
        assert_eq!(first["rowsWritten"], 300, "{first}");
        assert_eq!(
            (&first["compression"], &first["blockSize"]),
            (&json!("zstd"), &json!(8192))
        );
        assert_eq!(first["digest"].as_str().map(str::len), Some(64), "{first}");
        let source = Database::new(store.clone(), "db", DEFAULT_ADMIN_TIMEOUT);
        assert!(
            source.list_checkpoints(None).await.unwrap().is_empty(),
            "the temporary checkpoint is deleted"
        );
        // Of a named checkpoint, twice: the second run is a no-op.
        let (made, _) = source.obtain_checkpoint("cli", None).await.unwrap();
        let of_checkpoint = || CopyArgs {
            checkpoint: Some(made.id),
            to: "reencoded".into(),
            ..reencode(8192)
        };
        let once = copy(of_checkpoint(), false, hidden()).await.unwrap();
        let twice = copy(of_checkpoint(), false, hidden()).await.unwrap();
        assert_eq!(
            (&once["alreadyComplete"], &twice["alreadyComplete"]),
            (&json!(false), &json!(true))
        );
        assert_eq!(once["digest"], first["digest"], "the same rows");
        assert_eq!(twice["digest"], first["digest"]);

        let bad = copy(reencode(3000), false, hidden()).await.unwrap_err();
        assert!(bad.to_string().contains("block size 3000"), "{bad}");
        assert_eq!(crate::offline_commands::exit_code_for(&bad), 3);
    }

    #[test]
    fn compression_and_block_size_need_reencode() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            copy: CopyArgs,
        }
        let base = ["copy", "--from-store", "file:///a", "--from", "db"];
        let to = ["--to-store", "file:///b", "--to", "c"];
        let parse = |extra: &[&str]| {
            let all = base.iter().chain(&to).chain(extra).copied();
            Cli::try_parse_from(all).map(|c| c.copy)
        };
        assert!(parse(&["--compression", "zstd"]).is_err());
        assert!(parse(&["--block-size", "8192"]).is_err());
        assert!(
            parse(&["--reencode", "--verify", "full"]).is_err(),
            "a byte copy's flag"
        );
        assert!(parse(&[
            "--reencode",
            "--shares",
            "2",
            "--checkpoint",
            &uuid::Uuid::nil().to_string()
        ])
        .is_err());
        let ok = parse(&[
            "--reencode",
            "--compression",
            "lz4",
            "--block-size",
            "16384",
        ])
        .unwrap();
        assert_eq!(
            ok.compression.and_then(CompressionArg::codec),
            Some(CompressionCodec::Lz4)
        );
        assert_eq!(ok.block_size, Some(16384));
        assert!(!parse(&[]).unwrap().reencode, "a byte copy by default");
    }
}
