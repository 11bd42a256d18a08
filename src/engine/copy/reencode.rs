//! Re-encoding: [`reencode_checkpoint`] reads every row of a source checkpoint through SlateDB's
//! reader and writes it, in key order, into a new database at the target whose writer uses the
//! chosen compression codec and SST block size. The bytes differ from the source's; the rows do
//! not. Unlike the byte copy, a source that is a clone is fine (its reader resolves the parents'
//! SSTs: rows are rows, and the target is a flat database of its own), and so is a source that
//! keeps its WAL in another store (the reader is given that store).
//!
//! The protocol:
//!
//! 1. **Pin** the checkpoint as the byte copy does (refreshed while the run lasts; `Latest`
//!    makes a temporary one). The source is only read: a reader pinned to a checkpoint writes
//!    nothing.
//! 2. **Classify the target** from one listing and the records under
//!    `<target>/.slatedb-operator/reencode/`: empty (fresh), an unfinished or finished re-encode
//!    of this same source, checkpoint, codec and block size (resume, or a no-op), or anything
//!    else (`Diverged`, nothing touched). A fresh target gets `started.json` (create-if-absent)
//!    before anything else is written there.
//! 3. **Rewrite**: rows are read after the recorded resume key and put in batches (each row with
//!    its absolute expiry time, so TTLs survive). Every `record_every_bytes` (or
//!    `record_interval`) the WAL is flushed and a progress record written (create-if-absent, one
//!    object per sequence number): the last key now durable, and the digest of the rows up to it.
//!    A restarted run opens the same target database (SlateDB replays its WAL) and continues
//!    after that key; rows it had written beyond it are put again with the same values. At the
//!    end the memtable is flushed into L0 SSTs and a final record says the rewrite is complete.
//! 4. **Verify**: the writer closed, a fresh reader scans the target and digests its rows the
//!    same way; the two digests must agree (`ChecksumMismatch` otherwise), and every SST of the
//!    target's manifest must use the codec.
//! 5. **Commit**: `done.json` (create-if-absent) is written last; then the progress records go.
//!
//! A SlateDB reader can open the target as soon as the first L0 SST or WAL flush is there, long
//! before `done.json`, and then sees a prefix of the rows (unlike the byte copy, whose manifest is
//! written last so that a reader never sees a half-made copy): callers tell a finished re-encode
//! by `done.json` (the report's `committed`), not by the database opening.
//!
//! The target's writer runs without compaction or garbage collection, so the rows stay in the L0
//! SSTs it wrote (with non-overlapping key ranges, as the rows are written in key order). A
//! writer that later opens the target compacts them with its own settings: give it the same
//! `compression_codec`, or compaction rewrites the data with another one.
//!
//! A permanent failure removes everything at a target that was fresh when the run started (and
//! releases its claim); at a target an earlier run had started it leaves the work for the next
//! run to resume, except after a digest mismatch, when the work is known wrong and goes too. A
//! transient failure leaves everything. A source that uses a merge operator is not supported (its
//! reader is given none, so unmerged operands fail the read).

use super::records::{create_object, delete_objects, read_object, relative_to, under};
use super::{normalized_label, refuse_overlap, while_pinned, AbortOnDrop, OnLost};
use crate::engine::checkpoint::CheckpointInfo;
use crate::engine::clone::CloneSourceCheckpoint;
use crate::engine::crash_point::crash_point;
use crate::engine::error::{from_slatedb, EngineError, Fault};
use crate::engine::manifest_guard::CODECS;
use crate::engine::ownership::Owner;
use crate::engine::Database;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slatedb::config::{
    CompressionCodec, DbReaderOptions, FlushOptions, FlushType, PutOptions, ScanOptions, Settings,
    SstBlockSize, Ttl,
};
use slatedb::{CloseReason, DbIterator, DbReader, DbReaderMode, ErrorKind, KeyValue, WriteBatch};
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The directory of the re-encode's records, relative to the database root.
pub(super) const REENCODE_DIR: &str = ".slatedb-operator/reencode";

/// The format of the records written here.
const FORMAT: u32 = 1;

/// The directories a SlateDB writer writes into under its root.
const DATA_DIRS: [&str; 3] = ["manifest/", "compacted/", "wal/"];

/// The L0 SST limits of the target's writer, which runs without compaction: never reached
/// (1 000 000 SSTs of 64 MiB are 64 TiB), yet far from any overflow in SlateDB's arithmetic.
const L0_WITHOUT_COMPACTION: usize = 1_000_000;

/// How a re-encode runs.
#[derive(Clone, Debug)]
pub struct ReencodeOptions {
    /// The codec of the target's SSTs (`None`: uncompressed).
    pub compression: Option<CompressionCodec>,
    pub block_size: SstBlockSize,
    /// Rows put in one write batch, by bytes of keys and values.
    pub batch_bytes: usize,
    /// A resume point is recorded (after a WAL flush) once this many bytes of rows were written
    /// since the last one, or once `record_interval` has passed: a restarted run writes at most
    /// about this much again.
    pub record_every_bytes: u64,
    pub record_interval: Duration,
    /// Size of the target writer's memtable, and so of each L0 SST before compression.
    pub l0_sst_size_bytes: usize,
    /// The source checkpoint is kept alive at least this long ahead while the run lasts.
    pub checkpoint_lifetime: Duration,
    /// What identifies the source in the target's records (default: its path); a target holding
    /// a re-encode of another source is refused. Set it to the store URL and path.
    pub source_label: Option<String>,
    /// Who claims the target before the first write (see `ownership.rs`).
    pub owner: Option<Owner>,
}

impl Default for ReencodeOptions {
    fn default() -> Self {
        ReencodeOptions {
            compression: None,
            block_size: SstBlockSize::default(),
            batch_bytes: 1 << 20,
            record_every_bytes: 64 << 20,
            record_interval: Duration::from_secs(10),
            l0_sst_size_bytes: 64 << 20,
            checkpoint_lifetime: Duration::from_secs(600),
            source_label: None,
            owner: None,
        }
    }
}

/// The SST block size of `bytes`: one of the sizes SlateDB offers (1 KiB to 64 KiB, powers of 2).
pub fn sst_block_size(bytes: usize) -> Result<SstBlockSize, EngineError> {
    use SstBlockSize::*;
    let sizes = [
        Block1Kib, Block2Kib, Block4Kib, Block8Kib, Block16Kib, Block32Kib, Block64Kib,
    ];
    sizes
        .into_iter()
        .find(|size| size.as_bytes() == bytes)
        .ok_or_else(|| {
            let known: Vec<String> = sizes.iter().map(|s| s.as_bytes().to_string()).collect();
            EngineError::StoreConfig(format!(
                "SST block size {bytes}: SlateDB offers {} bytes",
                known.join(", ")
            ))
        })
}

/// The name of a codec (`none`, `snappy`, …), as the CLI and the records spell it.
pub fn codec_name(codec: Option<CompressionCodec>) -> &'static str {
    CODECS
        .iter()
        .find(|(_, known, _)| *known == codec)
        .map_or("unknown", |(_, _, name)| name)
}

/// The phases of a re-encode, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReencodePhase {
    Prepare,
    /// Rows read from the source and written to the target.
    Rewrite,
    /// The target read back.
    Verify,
    Commit,
    Done,
}

impl ReencodePhase {
    pub fn name(self) -> &'static str {
        match self {
            ReencodePhase::Prepare => "Prepare",
            ReencodePhase::Rewrite => "Rewrite",
            ReencodePhase::Verify => "Verify",
            ReencodePhase::Commit => "Commit",
            ReencodePhase::Done => "Done",
        }
    }
}

/// Progress of a re-encode. Totals are estimates from the checkpoint's SST statistics (rows and
/// raw bytes of keys and values per SST, which count a row once per SST that holds a version of
/// it) plus the size of its WAL objects: the rewrite may end below them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReencodeProgress {
    pub phase: ReencodePhase,
    /// Rows (and bytes of keys and values) written in `Rewrite`, read back in `Verify`,
    /// including those an earlier run recorded.
    pub rows_done: u64,
    pub bytes_done: u64,
    /// Rows durably written and recorded at the target: what a restarted run would not write
    /// again.
    pub rows_recorded: u64,
    pub rows_total: Option<u64>,
    pub bytes_total: u64,
}

impl ReencodeProgress {
    /// Overall completion in percent, never decreasing over a run: the rewrite is 0–89 (by
    /// bytes), the read-back 90–98 (by rows), the commit 99.
    pub fn percent(&self) -> u32 {
        let fraction = |done: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                (done as f64 / total as f64).min(1.0)
            }
        };
        match self.phase {
            ReencodePhase::Prepare => 0,
            ReencodePhase::Rewrite => (fraction(self.bytes_done, self.bytes_total) * 89.0) as u32,
            ReencodePhase::Verify => {
                let total = self.rows_total.unwrap_or(self.rows_recorded);
                90 + (fraction(self.rows_done, total) * 8.0) as u32
            }
            ReencodePhase::Commit => 99,
            ReencodePhase::Done => 100,
        }
    }
}

/// What a finished re-encode did.
#[derive(Clone, Debug, PartialEq)]
pub struct ReencodeReport {
    pub checkpoint_id: Uuid,
    /// The source manifest the checkpoint pins.
    pub manifest_id: u64,
    pub compression: Option<CompressionCodec>,
    pub block_size: usize,
    /// Rows of the checkpoint, and bytes of their keys and values.
    pub rows: u64,
    pub bytes: u64,
    /// Rows this run wrote, and rows an earlier run had recorded (not written again).
    pub rows_written: u64,
    pub rows_skipped: u64,
    /// The rows' digest (see [`RowDigest`]), as read at the source and read back at the target.
    pub digest: String,
    /// Rows with a TTL that expired between being read at the source and being read back (not
    /// found at the target, which is right); 0 unless the checkpoint holds expiring rows.
    pub rows_expired: u64,
    /// Stored bytes of the checkpoint's SSTs and WAL objects, and of the target's SSTs.
    pub source_bytes: u64,
    pub target_bytes: u64,
    /// SSTs in the target's manifest, all of them with the codec.
    pub target_ssts: u64,
    pub target_manifest_id: u64,
    /// The target held this re-encode, finished, already.
    pub already_complete: bool,
    /// An earlier run's work was found and continued.
    pub resumed: bool,
    /// `done.json` is at the target.
    pub committed: bool,
    pub duration: Duration,
}

/// Re-encodes `checkpoint` of `source` into a new database at `target` with the codec and
/// block size of `options` (see the module doc), calling `progress` as it goes. Re-running after
/// any failure resumes; re-running after success is a cheap no-op.
pub async fn reencode_checkpoint(
    source: &Database,
    checkpoint: &CloneSourceCheckpoint,
    target: &Database,
    options: &ReencodeOptions,
    progress: impl Fn(ReencodeProgress) + Send + Sync,
) -> Result<ReencodeReport, EngineError> {
    let started = Instant::now();
    if target.store.wal.is_some() {
        // Cleaning up and classifying a target look in its main store only.
        return Err(EngineError::StoreConfig(
            "a re-encode target cannot keep its WAL in a separate store".into(),
        ));
    }
    refuse_overlap(source, target)?;
    progress(ReencodeProgress {
        phase: ReencodePhase::Prepare,
        rows_done: 0,
        bytes_done: 0,
        rows_recorded: 0,
        rows_total: None,
        bytes_total: 0,
    });
    source.probe().await?;
    target
        .ensure_not_owned_by_another(options.owner.as_ref())
        .await?;
    let lifetime = options.checkpoint_lifetime;
    // A lost checkpoint stops the run between batches, so that it closes the target's writer
    // (a dropped one would write on) and cleans up like any other permanent failure.
    let on_lost = OnLost::Stop;
    let mut report = while_pinned(
        source,
        checkpoint,
        lifetime,
        on_lost,
        |pinned, lost| async move {
            tracing::info!(source = %source.path, target = %target.path,
                checkpoint = %pinned.id, manifest = pinned.manifest_id,
                codec = codec_name(options.compression),
                block_size = options.block_size.as_bytes(), "re-encoding a checkpoint");
            reencode_pinned(source, &pinned, target, options, &lost, &progress).await
        },
    )
    .await?;
    report.duration = started.elapsed();
    tracing::info!(target = %target.path, rows = report.rows, written = report.rows_written,
        skipped = report.rows_skipped, already_complete = report.already_complete,
        seconds = report.duration.as_secs_f64(), "re-encode committed");
    Ok(report)
}

/// The digest of a set of rows: the sum modulo 2^256 of each row's sha256 over its
/// length-prefixed key, length-prefixed value and expiry time, kept apart for rows with and
/// without an expiry time.
///
/// Why a sum: it is the same whatever order the rows are added in and whatever runs they are
/// split across, so its state is just these few numbers: a resumed run continues from the
/// recorded state, and the read-back could be split by key range. A chained hash (sha256 over
/// the stream) would need the hasher's internal state saved, which the `sha2` crate does not
/// expose. Unlike XOR, a sum does not cancel a row counted twice. It detects accidents (lost,
/// altered, duplicated or extra rows), not an adversary who picks rows to collide; the lengths
/// keep `("ab", "c")` and `("a", "bc")` apart.
///
/// Why two parts: a row whose TTL passes between being read at the source and being read back
/// is rightly absent from the target. The rows without an expiry time must agree exactly; those
/// with one must too, unless some of them could have expired by the read-back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowDigest {
    pub rows: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
    /// Sum over rows without an expiry time.
    pub lasting: [u8; 32],
    pub expiring_rows: u64,
    /// Sum over rows with an expiry time.
    pub expiring: [u8; 32],
    /// The earliest expiry time of those rows (Unix milliseconds).
    pub earliest_expiry: Option<i64>,
}

impl RowDigest {
    pub fn add(&mut self, key: &[u8], value: &[u8], expire_ts: Option<i64>) {
        let mut hasher = Sha256::new();
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key);
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value);
        match expire_ts {
            None => hasher.update([0u8]),
            Some(at) => {
                hasher.update([1u8]);
                hasher.update(at.to_be_bytes());
            }
        }
        let hash: [u8; 32] = hasher.finalize().into();
        self.rows += 1;
        self.bytes += (key.len() + value.len()) as u64;
        match expire_ts {
            None => add_256(&mut self.lasting, &hash),
            Some(at) => {
                add_256(&mut self.expiring, &hash);
                self.expiring_rows += 1;
                self.earliest_expiry = Some(self.earliest_expiry.map_or(at, |e| e.min(at)));
            }
        }
    }

    /// Adds the rows of `other` (a digest of other rows).
    pub fn merge(&mut self, other: &RowDigest) {
        self.rows += other.rows;
        self.bytes += other.bytes;
        add_256(&mut self.lasting, &other.lasting);
        self.expiring_rows += other.expiring_rows;
        add_256(&mut self.expiring, &other.expiring);
        self.earliest_expiry = match (self.earliest_expiry, other.earliest_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The digest of every row: both sums added, in hex.
    pub fn hex(&self) -> String {
        let mut all = self.lasting;
        add_256(&mut all, &self.expiring);
        hex::encode(all)
    }

    /// Whether `target` (the rows read back) holds the rows of `self` (the rows read at the
    /// source); `Ok` with the number of expiring rows missing because their TTL passed by `now`
    /// (Unix milliseconds), else what differs.
    pub fn compare(&self, target: &RowDigest, now: i64) -> Result<u64, String> {
        let lasting = |d: &RowDigest| (d.rows - d.expiring_rows, d.lasting);
        if lasting(self) != lasting(target) {
            return Err(format!(
                "the rows read back ({} rows, digest {}) are not the rows read at the source ({} \
                 rows, digest {})",
                target.rows,
                target.hex(),
                self.rows,
                self.hex()
            ));
        }
        if (self.expiring_rows, self.expiring) == (target.expiring_rows, target.expiring) {
            return Ok(0);
        }
        let could_expire = self.earliest_expiry.is_some_and(|at| at <= now);
        if could_expire && target.expiring_rows < self.expiring_rows {
            return Ok(self.expiring_rows - target.expiring_rows);
        }
        Err(format!(
            "the {} rows with a TTL read back (digest {}) are not the {} read at the source \
             (digest {})",
            target.expiring_rows,
            hex::encode(target.expiring),
            self.expiring_rows,
            hex::encode(self.expiring)
        ))
    }
}

/// `into += addend` modulo 2^256, both big-endian.
fn add_256(into: &mut [u8; 32], addend: &[u8; 32]) {
    let mut carry = 0u16;
    for i in (0..32).rev() {
        let sum = u16::from(into[i]) + u16::from(addend[i]) + carry;
        into[i] = sum as u8;
        carry = sum >> 8;
    }
}

/// What identifies one re-encode: the same at every run of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    source: String,
    checkpoint_id: String,
    manifest_id: u64,
    compression: String,
    block_size: usize,
}

impl Identity {
    /// How `other` (found at the target) differs from this run's, if it does.
    fn differs_from(&self, other: &Identity) -> Option<String> {
        if normalized_label(&other.source) != normalized_label(&self.source) {
            Some(format!(
                "it holds a re-encode of another source, {:?}",
                other.source
            ))
        } else if other.checkpoint_id != self.checkpoint_id {
            Some(format!(
                "it holds a re-encode of another checkpoint, {}",
                other.checkpoint_id
            ))
        } else if (&other.compression, other.block_size) != (&self.compression, self.block_size) {
            Some(format!(
                "it holds a re-encode with codec {} and block size {}, not {} and {}",
                other.compression, other.block_size, self.compression, self.block_size
            ))
        } else {
            None
        }
    }
}

/// `started.json`: written (create-if-absent) before anything else at a fresh target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRecord {
    format: u32,
    #[serde(flatten)]
    identity: Identity,
    started_at: DateTime<Utc>,
}

/// A [`RowDigest`] as records hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DigestRecord {
    rows: u64,
    bytes: u64,
    lasting: String,
    expiring_rows: u64,
    expiring: String,
    earliest_expiry: Option<i64>,
}

impl From<&RowDigest> for DigestRecord {
    fn from(d: &RowDigest) -> Self {
        DigestRecord {
            rows: d.rows,
            bytes: d.bytes,
            lasting: hex::encode(d.lasting),
            expiring_rows: d.expiring_rows,
            expiring: hex::encode(d.expiring),
            earliest_expiry: d.earliest_expiry,
        }
    }
}

impl DigestRecord {
    fn digest(&self) -> Option<RowDigest> {
        let sum = |text: &str| -> Option<[u8; 32]> { hex::decode(text).ok()?.try_into().ok() };
        Some(RowDigest {
            rows: self.rows,
            bytes: self.bytes,
            lasting: sum(&self.lasting)?,
            expiring_rows: self.expiring_rows,
            expiring: sum(&self.expiring)?,
            earliest_expiry: self.earliest_expiry,
        })
    }
}

/// `progress/<seq:010>.json`: the resume point after a WAL flush.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProgressRecord {
    format: u32,
    seq: u64,
    /// The last key written and durable (hex); every row up to it is in `digest`.
    last_key: Option<String>,
    digest: DigestRecord,
    /// Every row is written and flushed into L0 SSTs: what is left is the read-back.
    rewritten: bool,
    recorded_at: DateTime<Utc>,
}

/// `done.json`: written last, once the target was read back and found equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DoneRecord {
    format: u32,
    #[serde(flatten)]
    identity: Identity,
    digest: DigestRecord,
    rows_expired: u64,
    source_bytes: u64,
    target_bytes: u64,
    target_ssts: u64,
    target_manifest_id: u64,
    finished_at: DateTime<Utc>,
}

fn record_path(target: &Database, name: &str) -> Result<object_store::path::Path, EngineError> {
    under(&target.path, &format!("{REENCODE_DIR}/{name}"))
}

fn progress_name(seq: u64) -> String {
    format!("progress/{seq:010}.json")
}

/// What the target holds.
enum TargetState {
    Empty,
    /// A re-encode of this source and checkpoint, with its latest progress record.
    Unfinished(Option<ProgressRecord>),
    Finished(Box<DoneRecord>),
}

/// Lists the target and reads its records; refuses (`Diverged`) anything but nothing or a
/// re-encode with `identity`.
async fn classify(target: &Database, identity: &Identity) -> Result<TargetState, EngineError> {
    let listing = target
        .bounded_store(
            "list re-encode target",
            target
                .store
                .main
                .list(Some(&target.path))
                .try_collect::<Vec<_>>(),
        )
        .await?;
    let relative: Vec<String> = listing
        .iter()
        .filter_map(|meta| relative_to(&meta.location, &target.path))
        .collect();
    if relative.is_empty() {
        return Ok(TargetState::Empty);
    }
    let diverged = |detail: String| EngineError::Diverged {
        path: target.path.to_string(),
        detail,
    };
    let ours = |p: &str| p.starts_with(&format!("{REENCODE_DIR}/"));
    let started = read_record::<StartRecord>(target, "started.json").await?;
    let Some(started) = started else {
        let example = relative.iter().find(|p| !ours(p)).unwrap_or(&relative[0]);
        return Err(diverged(format!(
            "it holds objects no re-encode wrote, e.g. {example:?}"
        )));
    };
    if let Some(detail) = identity.differs_from(&started.identity) {
        return Err(diverged(detail));
    }
    // A finished re-encode is the target's own database from then on (a writer may have opened
    // it since): the no-op looks at nothing else.
    if let Some(done) = read_record::<DoneRecord>(target, "done.json").await? {
        if let Some(detail) = identity.differs_from(&done.identity) {
            return Err(diverged(detail));
        }
        return Ok(TargetState::Finished(Box::new(done)));
    }
    if let Some(foreign) = relative
        .iter()
        .find(|p| !ours(p) && !DATA_DIRS.iter().any(|d| p.starts_with(d)))
    {
        return Err(diverged(format!(
            "it holds objects no re-encode wrote, e.g. {foreign:?}"
        )));
    }
    let latest = relative
        .iter()
        .filter_map(|p| {
            let name = p.strip_prefix(&format!("{REENCODE_DIR}/"))?;
            name.strip_prefix("progress/")?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max();
    let progress = match latest {
        Some(seq) => read_record::<ProgressRecord>(target, &progress_name(seq)).await?,
        None => None,
    };
    Ok(TargetState::Unfinished(progress))
}

/// A record under [`REENCODE_DIR`], or `None` when it does not exist.
async fn read_record<T: for<'de> Deserialize<'de>>(
    target: &Database,
    name: &str,
) -> Result<Option<T>, EngineError> {
    let relative = format!("{REENCODE_DIR}/{name}");
    let Some(bytes) = read_object(target, &relative).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| EngineError::Corrupt {
            object: format!("{}/{relative}", target.path),
            detail: format!("not a re-encode record: {e}"),
        })
}

/// Writes a record with create-if-absent; returns the bytes already there when there was one.
async fn create_record<T: Serialize>(
    target: &Database,
    name: &str,
    record: &T,
) -> Result<Option<Bytes>, EngineError> {
    let body =
        serde_json::to_vec_pretty(record).map_err(|e| EngineError::StoreConfig(e.to_string()))?;
    create_object(target, &record_path(target, name)?, body.into()).await
}

/// Errors that mean the target is not (only) ours: nothing there may be removed.
fn is_refusal(error: &EngineError) -> bool {
    matches!(
        error,
        EngineError::Diverged { .. } | EngineError::TargetOwned { .. }
    )
}

async fn reencode_pinned(
    source: &Database,
    checkpoint: &CheckpointInfo,
    target: &Database,
    options: &ReencodeOptions,
    lost: &AtomicBool,
    progress: &(dyn Fn(ReencodeProgress) + Send + Sync),
) -> Result<ReencodeReport, EngineError> {
    let label = normalized_label(
        options
            .source_label
            .as_deref()
            .unwrap_or(source.path.as_ref()),
    );
    let identity = Identity {
        source: label,
        checkpoint_id: checkpoint.id.to_string(),
        manifest_id: checkpoint.manifest_id,
        compression: codec_name(options.compression).to_string(),
        block_size: options.block_size.as_bytes(),
    };
    let state = classify(target, &identity).await?;
    let fresh = matches!(state, TargetState::Empty);
    let resume = match state {
        TargetState::Finished(done) => return finished_report(checkpoint, options, &done),
        TargetState::Empty => None,
        TargetState::Unfinished(resume) => resume,
    };
    if let Some(owner) = &options.owner {
        target.claim(owner).await?;
    }
    if fresh {
        let record = StartRecord {
            format: FORMAT,
            identity: identity.clone(),
            started_at: Utc::now(),
        };
        if let Some(existing) = create_record(target, "started.json", &record).await? {
            // Another run started it between our listing and our write: the same re-encode, or
            // someone else's.
            let theirs: StartRecord =
                serde_json::from_slice(&existing).map_err(|e| EngineError::Diverged {
                    path: target.path.to_string(),
                    detail: format!("its started.json is not a re-encode's: {e}"),
                })?;
            if let Some(detail) = identity.differs_from(&theirs.identity) {
                return Err(EngineError::Diverged {
                    path: target.path.to_string(),
                    detail,
                });
            }
        }
    }
    let run = Run {
        source,
        checkpoint,
        target,
        options,
        progress,
        identity,
        lost,
    };
    let result = run.execute(resume, !fresh).await;
    match result {
        Err(error) if error.fault() == Fault::Permanent && !is_refusal(&error) => {
            let known_wrong = matches!(error, EngineError::ChecksumMismatch { .. });
            if fresh || known_wrong {
                tracing::warn!(%error, target = %target.path, "re-encode failed for good; removing what it wrote");
                match remove_everything(target).await {
                    Ok(removed) => tracing::info!(removed, "re-encode target cleaned up"),
                    Err(cleanup) => {
                        tracing::warn!(%cleanup, target = %target.path, "cleaning up the re-encode target failed")
                    }
                }
                if let (true, Some(owner)) = (fresh, &options.owner) {
                    target.release(owner).await?;
                }
            }
            Err(error)
        }
        other => other,
    }
}

/// Deletes every object under the target (only ever one that held nothing but this re-encode).
async fn remove_everything(target: &Database) -> Result<usize, EngineError> {
    let listing = target
        .bounded_store(
            "list re-encode target",
            target
                .store
                .main
                .list(Some(&target.path))
                .try_collect::<Vec<_>>(),
        )
        .await?;
    let relative: Vec<String> = listing
        .iter()
        .filter_map(|meta| relative_to(&meta.location, &target.path))
        .collect();
    delete_objects(target, &relative).await
}

fn finished_report(
    checkpoint: &CheckpointInfo,
    options: &ReencodeOptions,
    done: &DoneRecord,
) -> Result<ReencodeReport, EngineError> {
    let digest = done.digest.digest().ok_or_else(|| EngineError::Corrupt {
        object: format!("{REENCODE_DIR}/done.json"),
        detail: "its digest is not hex of 32 bytes".into(),
    })?;
    Ok(ReencodeReport {
        checkpoint_id: checkpoint.id,
        manifest_id: checkpoint.manifest_id,
        compression: options.compression,
        block_size: options.block_size.as_bytes(),
        rows: digest.rows,
        bytes: digest.bytes,
        rows_written: 0,
        rows_skipped: digest.rows,
        digest: digest.hex(),
        rows_expired: done.rows_expired,
        source_bytes: done.source_bytes,
        target_bytes: done.target_bytes,
        target_ssts: done.target_ssts,
        target_manifest_id: done.target_manifest_id,
        already_complete: true,
        resumed: false,
        committed: true,
        duration: Duration::ZERO,
    })
}

/// One run of a re-encode.
struct Run<'a> {
    source: &'a Database,
    checkpoint: &'a CheckpointInfo,
    target: &'a Database,
    options: &'a ReencodeOptions,
    progress: &'a (dyn Fn(ReencodeProgress) + Send + Sync),
    identity: Identity,
    /// Set when the source checkpoint could not be kept alive: the run stops at its next batch.
    lost: &'a AtomicBool,
}

/// Where a rewrite stands.
struct Position {
    /// The last key written (durable only up to the last record).
    last_key: Option<Bytes>,
    digest: RowDigest,
    /// The next progress record's sequence number.
    seq: u64,
    rows_recorded: u64,
}

impl Run<'_> {
    /// Runs the re-encode from `resume` (the latest progress record of an earlier run), on a
    /// target an earlier run had started when `resumed`.
    async fn execute(
        &self,
        resume: Option<ProgressRecord>,
        resumed: bool,
    ) -> Result<ReencodeReport, EngineError> {
        let corrupt = |detail: &str| EngineError::Corrupt {
            object: format!("{}/{REENCODE_DIR}/progress", self.target.path),
            detail: detail.into(),
        };
        let (position, rewritten) = match resume {
            None => (
                Position {
                    last_key: None,
                    digest: RowDigest::default(),
                    seq: 0,
                    rows_recorded: 0,
                },
                false,
            ),
            Some(record) => {
                let digest = record
                    .digest
                    .digest()
                    .ok_or_else(|| corrupt("its digest is not hex of 32 bytes"))?;
                let last_key = match &record.last_key {
                    Some(key) => Some(Bytes::from(
                        hex::decode(key).map_err(|_| corrupt("its last key is not hex"))?,
                    )),
                    None => None,
                };
                tracing::info!(target = %self.target.path, rows = digest.rows,
                    rewritten = record.rewritten, "resuming a re-encode");
                let rows_recorded = digest.rows;
                (
                    Position {
                        last_key,
                        digest,
                        seq: record.seq + 1,
                        rows_recorded,
                    },
                    record.rewritten,
                )
            }
        };
        let rows_skipped = position.rows_recorded;
        let objects = self
            .source
            .pinned_objects(self.checkpoint.manifest_id)
            .await?;
        let source_bytes: u64 = objects.iter().map(|o| o.size).sum();
        let position = if rewritten {
            position
        } else {
            let totals = estimate_rows(self.source, self.checkpoint, &objects).await;
            self.rewrite(position, totals).await?
        };
        let source_digest = position.digest;

        let (rows_total, bytes_total) = (Some(source_digest.rows), source_digest.bytes);
        let report = |phase, rows_done, bytes_done| ReencodeProgress {
            phase,
            rows_done,
            bytes_done,
            rows_recorded: source_digest.rows,
            rows_total,
            bytes_total,
        };
        (self.progress)(report(ReencodePhase::Verify, 0, 0));
        let read_back = self
            .read_back(&|rows, bytes| (self.progress)(report(ReencodePhase::Verify, rows, bytes)))
            .await?;
        let rows_expired = source_digest
            .compare(&read_back, Utc::now().timestamp_millis())
            .map_err(|detail| EngineError::ChecksumMismatch {
                path: self.target.path.to_string(),
                objects: vec![detail],
                rounds: 0,
            })?;
        if rows_expired > 0 {
            tracing::warn!(rows_expired, "rows with a TTL expired during the re-encode");
        }
        let (target_manifest_id, target_ssts, target_bytes) = self.check_target_codec().await?;
        crash_point("reencode-verified");

        (self.progress)(report(
            ReencodePhase::Commit,
            source_digest.rows,
            source_digest.bytes,
        ));
        let done = DoneRecord {
            format: FORMAT,
            identity: self.identity.clone(),
            digest: DigestRecord::from(&source_digest),
            rows_expired,
            source_bytes,
            target_bytes,
            target_ssts,
            target_manifest_id,
            finished_at: Utc::now(),
        };
        if let Some(existing) = create_record(self.target, "done.json", &done).await? {
            let theirs: Option<DoneRecord> = serde_json::from_slice(&existing).ok();
            if theirs.is_none_or(|t| t.identity != done.identity || t.digest != done.digest) {
                return Err(EngineError::Diverged {
                    path: self.target.path.to_string(),
                    detail: "another run wrote a different done.json meanwhile".into(),
                });
            }
        }
        crash_point("reencode-committed");
        self.remove_progress_records().await;
        (self.progress)(report(
            ReencodePhase::Done,
            source_digest.rows,
            source_digest.bytes,
        ));
        Ok(ReencodeReport {
            checkpoint_id: self.checkpoint.id,
            manifest_id: self.checkpoint.manifest_id,
            compression: self.options.compression,
            block_size: self.options.block_size.as_bytes(),
            rows: source_digest.rows,
            bytes: source_digest.bytes,
            rows_written: source_digest.rows - rows_skipped,
            rows_skipped,
            digest: source_digest.hex(),
            rows_expired,
            source_bytes,
            target_bytes,
            target_ssts,
            target_manifest_id,
            already_complete: false,
            resumed,
            committed: true,
            duration: Duration::ZERO,
        })
    }

    /// Opens the target's writer, writes every row after the resume point, flushes them into L0
    /// SSTs, records that, and closes the writer (also after a failure, so that nothing of it
    /// writes on after the run is over).
    async fn rewrite(
        &self,
        position: Position,
        totals: (Option<u64>, u64),
    ) -> Result<Position, EngineError> {
        let settings = Settings {
            compression_codec: self.options.compression,
            // The rows stay in the L0 SSTs written here (see the module doc); with nothing to
            // compact them, the L0 limits must not stall the writes.
            compactor_options: None,
            garbage_collector_options: None,
            l0_sst_size_bytes: self.options.l0_sst_size_bytes,
            max_unflushed_bytes: self.options.l0_sst_size_bytes.saturating_mul(4),
            l0_max_ssts: L0_WITHOUT_COMPACTION,
            l0_max_ssts_per_key: L0_WITHOUT_COMPACTION,
            ..Settings::default()
        };
        let db = writer_call(
            self.target,
            "open the re-encode target",
            slatedb::Db::builder(self.target.path.clone(), self.target.store.main.clone())
                .with_settings(settings)
                .with_sst_block_size(self.options.block_size)
                .build(),
        )
        .await?;
        let result = self.write_rows(&db, position, totals).await;
        let closed = writer_call(self.target, "close the re-encode target", db.close()).await;
        match (result, closed) {
            (Ok(position), Ok(())) => Ok(position),
            (Ok(_), Err(error)) => Err(error),
            (Err(error), closed) => {
                if let Err(close) = closed {
                    tracing::debug!(%close, "closing the re-encode target after a failure failed");
                }
                Err(error)
            }
        }
    }

    async fn write_rows(
        &self,
        db: &slatedb::Db,
        mut position: Position,
        (rows_total, bytes_total): (Option<u64>, u64),
    ) -> Result<Position, EngineError> {
        let reader = self.source_reader().await?;
        let start = match &position.last_key {
            Some(key) => Bound::Excluded(key.clone()),
            None => Bound::Unbounded,
        };
        let (mut batches, reading) =
            read_ahead(self.source.clone(), reader, start, self.options.batch_bytes);
        let report = |position: &Position| ReencodeProgress {
            phase: ReencodePhase::Rewrite,
            rows_done: position.digest.rows,
            bytes_done: position.digest.bytes,
            rows_recorded: position.rows_recorded,
            rows_total,
            bytes_total,
        };
        (self.progress)(report(&position));
        let (mut unrecorded, mut recorded_at) = (0u64, Instant::now());
        loop {
            self.stop_if_lost()?;
            let batch = match batches.recv().await {
                Some(batch) => batch?,
                // The reading task ended without saying so: it panicked.
                None => {
                    let ended = reading.await.err();
                    return Err(EngineError::Store {
                        operation: "read rows",
                        source: object_store::Error::Generic {
                            store: "reader",
                            source: format!("the reading task ended: {ended:?}").into(),
                        },
                    });
                }
            };
            let Some(last) = batch.rows.last() else { break };
            position.last_key = Some(last.key.clone());
            let mut write = WriteBatch::new();
            for row in batch.rows {
                let ttl = row.expire_ts.map_or(Ttl::NoExpiry, Ttl::ExpireAtMillis);
                write.put_bytes_with_options(row.key, row.value, &PutOptions { ttl });
            }
            writer_call(self.target, "write rows", db.write(write)).await?;
            position.digest.merge(&batch.digest);
            unrecorded += batch.digest.bytes;
            if unrecorded >= self.options.record_every_bytes
                || recorded_at.elapsed() >= self.options.record_interval
            {
                let wal = FlushOptions {
                    flush_type: FlushType::Wal,
                };
                writer_call(self.target, "flush the WAL", db.flush_with_options(wal)).await?;
                self.record(&mut position, false).await?;
                crash_point("reencode-recorded");
                (unrecorded, recorded_at) = (0, Instant::now());
            }
            (self.progress)(report(&position));
        }
        // The reader is closed by its task, at the end of the rows.
        drop(batches);
        if let Err(error) = reading.await {
            tracing::debug!(%error, "the reading task failed after the last row");
        }
        let memtable = FlushOptions {
            flush_type: FlushType::MemTable,
        };
        writer_call(
            self.target,
            "flush into L0",
            db.flush_with_options(memtable),
        )
        .await?;
        self.record(&mut position, true).await?;
        (self.progress)(report(&position));
        crash_point("reencode-rewritten");
        Ok(position)
    }

    fn stop_if_lost(&self) -> Result<(), EngineError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(EngineError::CheckpointMissing {
                path: self.source.path.to_string(),
                selector: format!("with id {} (lost during the re-encode)", self.checkpoint.id),
            });
        }
        Ok(())
    }

    /// Writes the next progress record, then removes the one before it (a leftover only costs a
    /// listing entry: the latest counts).
    async fn record(&self, position: &mut Position, rewritten: bool) -> Result<(), EngineError> {
        let record = ProgressRecord {
            format: FORMAT,
            seq: position.seq,
            last_key: position.last_key.as_ref().map(hex::encode),
            digest: DigestRecord::from(&position.digest),
            rewritten,
            recorded_at: Utc::now(),
        };
        if create_record(self.target, &progress_name(position.seq), &record)
            .await?
            .is_some()
        {
            return Err(EngineError::Diverged {
                path: self.target.path.to_string(),
                detail: format!(
                    "progress record {} was written by another run of the re-encode at the same \
                     time",
                    position.seq
                ),
            });
        }
        if position.seq > 0 {
            let previous = format!("{REENCODE_DIR}/{}", progress_name(position.seq - 1));
            if let Err(error) = delete_objects(self.target, &[previous]).await {
                tracing::debug!(%error, "could not remove the previous progress record");
            }
        }
        position.seq += 1;
        position.rows_recorded = position.digest.rows;
        Ok(())
    }

    /// A reader of the source pinned to the checkpoint (it writes nothing to the source).
    async fn source_reader(&self) -> Result<DbReader, EngineError> {
        let builder = DbReader::builder(self.source.path.clone(), self.source.store.main.clone())
            .with_reader_mode(DbReaderMode::Checkpoint(self.checkpoint.id));
        let builder = match &self.source.store.wal {
            Some(wal) => builder.with_wal_object_store(wal.clone()),
            None => builder,
        };
        self.source
            .bounded("open a reader at the checkpoint", builder.build())
            .await
    }

    /// Reads the target back with a fresh reader (following its latest manifest, which writes
    /// nothing), digesting its rows.
    async fn read_back(
        &self,
        on_rows: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<RowDigest, EngineError> {
        let options = DbReaderOptions {
            // Nothing else writes the target meanwhile: no need to look for newer manifests.
            manifest_poll_interval: Duration::from_secs(3600),
            ..DbReaderOptions::default()
        };
        let reader = self
            .target
            .bounded(
                "open a reader at the re-encode target",
                DbReader::builder(self.target.path.clone(), self.target.store.main.clone())
                    .with_reader_mode(DbReaderMode::FollowLatest)
                    .with_options(options)
                    .build(),
            )
            .await?;
        let result = async {
            let mut rows = scan(self.target, &reader, (Bound::Unbounded, Bound::Unbounded)).await?;
            let mut digest = RowDigest::default();
            loop {
                self.stop_if_lost()?;
                let batch = next_batch(self.target, &mut rows, self.options.batch_bytes).await?;
                if batch.is_empty() {
                    return Ok(digest);
                }
                for row in &batch {
                    digest.add(&row.key, &row.value, row.expire_ts);
                }
                on_rows(digest.rows, digest.bytes);
            }
        }
        .await;
        close_reader(self.target, reader).await;
        result
    }

    /// The target's latest manifest: its id, its SSTs (each must use the codec) and their bytes.
    async fn check_target_codec(&self) -> Result<(u64, u64, u64), EngineError> {
        let manifest = self.target.latest_manifest().await?;
        let wanted = self.options.compression;
        if let Some(view) = manifest
            .all_sst_views()
            .find(|v| v.sst.info.compression_codec != wanted)
        {
            return Err(EngineError::Corrupt {
                object: format!("{}/compacted/{}.sst", self.target.path, view.sst.id.value()),
                detail: format!(
                    "the re-encode wrote it with codec {}, not {}",
                    codec_name(view.sst.info.compression_codec),
                    codec_name(wanted)
                ),
            });
        }
        let objects = self.target.pinned_objects(manifest.id()).await?;
        let ssts: Vec<_> = objects
            .iter()
            .filter(|o| o.key.starts_with("sst/"))
            .collect();
        let bytes = ssts.iter().map(|o| o.size).sum();
        Ok((manifest.id(), ssts.len() as u64, bytes))
    }

    /// Removes the progress records once `done.json` is written (best effort: they no longer
    /// count).
    async fn remove_progress_records(&self) {
        let prefix = format!("{REENCODE_DIR}/progress/");
        let removed = async {
            let directory = under(&self.target.path, &prefix)?;
            let listing = self
                .target
                .bounded_store(
                    "list progress records",
                    self.target
                        .store
                        .main
                        .list(Some(&directory))
                        .try_collect::<Vec<_>>(),
                )
                .await?;
            let relative: Vec<String> = listing
                .iter()
                .filter_map(|meta| relative_to(&meta.location, &self.target.path))
                .collect();
            delete_objects(self.target, &relative).await
        };
        if let Err(error) = removed.await {
            tracing::warn!(%error, target = %self.target.path, "the re-encode is committed, but removing its progress records failed");
        }
    }
}

/// Runs a call on the target's writer under the timeout. A writer fenced by another one that
/// opened the target meanwhile means someone else writes there: `Diverged`, so that nothing is
/// removed.
async fn writer_call<T>(
    target: &Database,
    operation: &'static str,
    call: impl Future<Output = Result<T, slatedb::Error>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(target.timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) if error.kind() == ErrorKind::Closed(CloseReason::Fenced) => {
            Err(EngineError::Diverged {
                path: target.path.to_string(),
                detail: format!("another writer opened it during the re-encode ({error})"),
            })
        }
        Ok(Err(error)) => Err(from_slatedb(operation, target.path.as_ref(), error)),
        Err(_) => Err(EngineError::Timeout {
            operation,
            after: target.timeout,
        }),
    }
}

/// Rows read ahead of the writer, with their digest.
struct Batch {
    rows: Vec<KeyValue>,
    digest: RowDigest,
}

/// Reads the rows from `start` on in a task of its own, in batches of about `batch_bytes`,
/// digesting each on the way, so that reading and decoding the source overlaps writing the
/// target (two batches are held ahead at most). An empty batch ends the rows; an error ends them
/// too. The task closes the reader when it ends, and stops when the receiver is dropped (and is
/// aborted with the handle).
fn read_ahead(
    source: Database,
    reader: DbReader,
    start: Bound<Bytes>,
    batch_bytes: usize,
) -> (
    tokio::sync::mpsc::Receiver<Result<Batch, EngineError>>,
    AbortOnDrop<()>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let task = tokio::spawn(async move {
        let read = async {
            let mut rows = scan(&source, &reader, (start, Bound::Unbounded)).await?;
            loop {
                let rows = next_batch(&source, &mut rows, batch_bytes).await?;
                let mut digest = RowDigest::default();
                for row in &rows {
                    digest.add(&row.key, &row.value, row.expire_ts);
                }
                let last = rows.is_empty();
                if sender.send(Ok(Batch { rows, digest })).await.is_err() || last {
                    return Ok(());
                }
            }
        };
        if let Err(error) = read.await {
            // The receiver may be gone already: then nobody needs the error.
            let _ = sender.send(Err(error)).await;
        }
        close_reader(&source, reader).await;
    });
    (receiver, AbortOnDrop(task))
}

/// Scans `range` of a reader: blocks are not cached (each is read once), and fetched ahead.
async fn scan(
    database: &Database,
    reader: &DbReader,
    range: (Bound<Bytes>, Bound<Bytes>),
) -> Result<DbIterator, EngineError> {
    let options = ScanOptions {
        cache_blocks: false,
        read_ahead_bytes: 1 << 20,
        max_fetch_tasks: 4,
        ..ScanOptions::default()
    };
    database
        .bounded("scan rows", reader.scan_with_options(range, &options))
        .await
}

/// The next rows of a scan, up to about `bytes` of keys and values; empty at its end. The whole
/// batch is read under one timeout.
async fn next_batch(
    database: &Database,
    rows: &mut DbIterator,
    bytes: usize,
) -> Result<Vec<KeyValue>, EngineError> {
    database
        .bounded("read rows", async {
            let mut batch = Vec::new();
            let mut size = 0;
            while size < bytes {
                let Some(row) = rows.next().await? else { break };
                size += row.key.len() + row.value.len();
                batch.push(row);
            }
            Ok(batch)
        })
        .await
}

async fn close_reader(database: &Database, reader: DbReader) {
    if let Err(error) = database.bounded("close a reader", reader.close()).await {
        tracing::debug!(%error, path = %database.path, "closing a reader failed");
    }
}

/// Estimated rows and bytes of keys and values of the checkpoint, for progress: SST statistics
/// (one small read per SST), plus the WAL objects' sizes. Falls back to the stored sizes when
/// the statistics cannot be read (SSTs older than them, or a failed read): only progress uses it.
async fn estimate_rows(
    source: &Database,
    checkpoint: &CheckpointInfo,
    objects: &[crate::engine::PinnedObject],
) -> (Option<u64>, u64) {
    let stored: u64 = objects.iter().map(|o| o.size).sum();
    // Owned, so that the reads below are `Send` futures whatever the caller's lifetimes.
    let ssts: Vec<String> = objects
        .iter()
        .filter(|o| o.key.starts_with("sst/"))
        .map(|o| o.path.to_string())
        .collect();
    let wal: u64 = objects
        .iter()
        .filter(|o| o.key.starts_with("wal/"))
        .map(|o| o.size)
        .sum();
    let (store, timeout) = (source.store.main.clone(), source.timeout);
    let stats = futures::stream::iter(ssts)
        .map(|path| {
            let store = store.clone();
            async move {
                let (owner, file) = path.rsplit_once("/compacted/")?;
                let ulid = file.strip_suffix(".sst")?.parse().ok()?;
                let owner = object_store::path::Path::from(owner);
                let reader = slatedb::SstReader::new(owner, store, None, None);
                let read = async { reader.open(ulid).await?.stats().await };
                let stats = tokio::time::timeout(timeout, read).await.ok()?.ok()??;
                Some((stats.num_puts, stats.raw_key_size + stats.raw_val_size))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    match stats.into_iter().collect::<Option<Vec<_>>>() {
        Some(stats) => {
            let rows = stats.iter().map(|s| s.0).sum();
            let bytes: u64 = stats.iter().map(|s| s.1).sum();
            (Some(rows), bytes + wal)
        }
        None => {
            tracing::debug!(checkpoint = %checkpoint.id, "no SST statistics; progress estimated from stored sizes");
            (None, stored)
        }
    }
}
