//! SlateDB and object-store work: checkpoints, clones, fingerprints and deletion. Knows nothing of
//! Kubernetes, so the CLI and tests use it directly.
//!
//! Where each behaviour lives:
//!
//! - `database.rs`: [`Database`], one database (a store and a path); the timeout every call on it
//!   runs under, probing it, reading its latest manifest, deleting it.
//! - `checkpoint.rs`: describing a database; listing, creating or adopting, finding, refreshing
//!   and deleting its checkpoints.
//! - `clone.rs`: [`initialize_clone`], a copy-on-write clone step by step: resolving the source,
//!   running SlateDB's clone builder, resuming, verifying, removing partial work.
//! - `copy/`: [`copy_checkpoint`], an independent byte copy of a checkpoint to another store or
//!   path (incremental, resumable, verified, parallel), [`promote_copy`], which makes a copy
//!   a writable database of its own, and [`reencode_checkpoint`], which rewrites a checkpoint's
//!   rows into a new database with another compression codec or SST block size.
//! - `fingerprint.rs`: the objects a checkpoint pins, its metadata digest, and the content check
//!   (hashes, Merkle root, SST block CRCs).
//! - `manifest_guard.rs`: refuses any write that would lose a field of a database's manifest.
//! - `health.rs`: the periodic check that a finished clone's data is all there, with the reads
//!   shared per round ([`HealthRounds`]).
//! - `lineage.rs`: a database's parents, and the checkpoints that make others depend on it.
//! - `ownership.rs`: the record by which one clone owns its target path.
//! - `store.rs`: [`Store`], an object store opened from a URL and options.
//! - `store_layers.rs`: the layers every opened store goes through: retrying transient failures,
//!   counting requests ([`store_stats`]) and, for tests, injecting faults ([`FAULTS_ENV`]).
//! - `backoff.rs`: [`Backoff`], the delay before each retry of a transient failure.
//! - `crash_point.rs`: [`crash_point`], the test hook that exits where [`CRASH_POINT_ENV`] says.
//! - `error.rs`: [`EngineError`], and whether retrying can help ([`Fault`]).
//! - `sample.rs`: sample databases for the demo and the tests.
//! - `source_invariants.rs` (tests only): every engine write leaves a source's data untouched.

mod backoff;
mod checkpoint;
mod clone;
mod copy;
mod crash_point;
mod database;
mod error;
mod fingerprint;
mod health;
mod lineage;
pub mod manifest_guard;
mod manifest_writes;
mod ownership;
pub mod sample;
#[cfg(test)]
mod source_invariants;
mod store;
mod store_layers;

pub use backoff::Backoff;
pub use checkpoint::{CheckpointInfo, CheckpointSelector, Coverage, Obtained};
pub use clone::{
    initialize_clone, CloneConfig, CloneProgress, CloneReport, CloneSourceCheckpoint, CloneStep,
    RetryPolicy, Verification,
};
pub use copy::{
    codec_name, copy_checkpoint, delete_copy, promote_copy, reencode_checkpoint, source_label,
    sst_block_size, transferred_so_far, CopyDeletion, CopyOptions, CopyPhase, CopyProgress,
    CopyReport, CopyShare, CopyVerification, PromoteReport, ReencodeOptions, ReencodePhase,
    ReencodeProgress, ReencodeReport, RowDigest,
};
pub use crash_point::{crash_point, CRASH_POINT_ENV};
pub use database::Database;
pub use error::{EngineError, Fault};
pub use fingerprint::{Fingerprint, PinnedObject};
pub use health::HealthRounds;
pub use lineage::ParentLink;
pub use ownership::Owner;
pub use store::{Store, StoreConfig};
pub use store_layers::{store_stats, Operation, FAULTS_ENV};

use std::time::Duration;

/// Default bound on one SlateDB admin call; SlateDB's admin retries store errors for ever.
pub const DEFAULT_ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
