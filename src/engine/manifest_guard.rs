//! The guard that keeps the operator from ever writing a manifest that lost information.
//!
//! SlateDB writes a database's manifest by decoding the latest one into its in-memory model and
//! encoding that model again. Whatever this build's decoder cannot represent is silently dropped
//! in the new version: an SST compressed with a codec the build lacks is decoded as uncompressed
//! (`_ => None`), and flatbuffers fields a newer SlateDB added are skipped. So before every call
//! that makes SlateDB write a manifest on the operator's behalf, [`Database::ensure_manifest_preserved`]
//! reads the latest manifest's bytes with its own bounds-checked flatbuffers reader and refuses
//! (a permanent [`EngineError::ManifestNotPreserved`], nothing written) when:
//!
//! - the format version is not the one this build writes (2): a version-1 manifest would be
//!   rewritten as version 2, dropping `wal_object_store_uri`;
//! - any table holds a field the SlateDB 0.18 schema does not know (a newer writer's field);
//! - a field SlateDB 0.18 decodes but never writes back is set (the manifest-level
//!   `manifest_id`, a checkpoint's `metadata`);
//! - an enum holds a value this build does not know (a future compression codec, SST type,
//!   filter format or bound type: SlateDB maps the first to "none" and panics on the others), or
//!   a key bound or sequence tracker is malformed (SlateDB panics on those while decoding);
//! - what SlateDB, as built here, decoded differs from the bytes: every SST's compression codec
//!   and the number of SSTs, views, sorted runs, segments, checkpoints and external databases.
//!
//! The schema below is SlateDB 0.18's `ManifestV2` (its `root.fbs`); a test checks it against
//! manifests SlateDB writes, so a SlateDB upgrade that adds a field fails the tests until the
//! field is described here and carried over.

use super::error::EngineError;
use super::fingerprint::manifest_path;
use super::Database;
use bytes::Bytes;
use object_store::ObjectStoreExt;
use slatedb::config::CompressionCodec;
use slatedb::VersionedManifest;
use std::collections::HashMap;

/// The manifest format version SlateDB 0.18 writes.
const WRITTEN_FORMAT_VERSION: u16 = 2;

/// Sequence-tracker encodings SlateDB 0.18 decodes.
const SEQUENCE_TRACKER_VERSIONS: [u8; 2] = [1, 2];

/// Every codec SlateDB offers, by its flatbuffers `CompressionFormat` value. Naming each variant
/// here is what keeps a build without one from compiling: they exist only with their cargo
/// features.
pub const CODECS: [(i8, Option<CompressionCodec>, &str); 5] = [
    (0, None, "none"),
    (1, Some(CompressionCodec::Snappy), "snappy"),
    (2, Some(CompressionCodec::Zlib), "zlib"),
    (3, Some(CompressionCodec::Lz4), "lz4"),
    (4, Some(CompressionCodec::Zstd), "zstd"),
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A fixed-width scalar SlateDB decodes and writes back as it is.
    Scalar,
    /// A one-byte enum; the values this build knows.
    Enum(&'static [i8]),
    /// A scalar of this many bytes that SlateDB decodes but never writes back: only its default
    /// (0) is safe.
    Dropped(usize),
    /// A string or byte vector.
    Bytes,
    /// The sequence tracker: bytes whose first byte is their encoding version.
    SequenceTracker,
    Table(&'static Table),
    Tables(&'static Table),
    /// A key bound: a table whose key must match its type.
    Bound,
    /// A union's table SlateDB decodes but never writes back: must be absent.
    DroppedTable,
}

#[derive(Debug)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

#[derive(Debug)]
struct Table {
    name: &'static str,
    fields: &'static [Field],
}

const fn field(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const fn required(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

/// Bound types SlateDB 0.18 decodes (`Unknown`, 0, makes it panic).
const BOUND_TYPES: &[i8] = &[1, 2, 3];
const UNBOUNDED: i8 = 1;

static ID: Table = Table {
    name: "Ulid/Uuid",
    fields: &[field("high", Kind::Scalar), field("low", Kind::Scalar)],
};

static BYTES_BOUND: Table = Table {
    name: "BytesBound",
    fields: &[
        field("key", Kind::Bytes),
        field("bound_type", Kind::Enum(BOUND_TYPES)),
    ],
};

static BYTES_RANGE: Table = Table {
    name: "BytesRange",
    fields: &[
        required("start_bound", Kind::Bound),
        required("end_bound", Kind::Bound),
    ],
};

static SST_INFO: Table = Table {
    name: "SsTableInfo",
    fields: &[
        field("first_entry", Kind::Bytes),
        field("index_offset", Kind::Scalar),
        field("index_len", Kind::Scalar),
        field("filter_offset", Kind::Scalar),
        field("filter_len", Kind::Scalar),
        field("compression_format", Kind::Enum(&[0, 1, 2, 3, 4])),
        field("sst_type", Kind::Enum(&[0, 1])),
        field("last_entry", Kind::Bytes),
        field("stats_offset", Kind::Scalar),
        field("stats_len", Kind::Scalar),
        field("filter_format", Kind::Enum(&[0, 1])),
    ],
};
const COMPRESSION_FORMAT_SLOT: usize = 5;

static SST: Table = Table {
    name: "CompactedSsTableV2",
    fields: &[
        required("id", Kind::Table(&ID)),
        required("info", Kind::Table(&SST_INFO)),
        field("format_version", Kind::Scalar),
    ],
};

static SST_VIEW: Table = Table {
    name: "CompactedSsTableView",
    fields: &[
        required("id", Kind::Table(&ID)),
        required("sst_id", Kind::Table(&ID)),
        field("visible_range", Kind::Table(&BYTES_RANGE)),
    ],
};

static SORTED_RUN: Table = Table {
    name: "SortedRunV2",
    fields: &[
        field("id", Kind::Scalar),
        required("ssts", Kind::Tables(&SST_VIEW)),
    ],
};

static EXTERNAL_DB: Table = Table {
    name: "ExternalDb",
    fields: &[
        required("path", Kind::Bytes),
        required("source_checkpoint_id", Kind::Table(&ID)),
        field("final_checkpoint_id", Kind::Table(&ID)),
        required("sst_ids", Kind::Tables(&ID)),
    ],
};

static CHECKPOINT: Table = Table {
    name: "Checkpoint",
    fields: &[
        required("id", Kind::Table(&ID)),
        field("manifest_id", Kind::Scalar),
        field("checkpoint_expire_time_s", Kind::Scalar),
        field("checkpoint_create_time_s", Kind::Scalar),
        field("metadata_type", Kind::Dropped(1)),
        field("metadata", Kind::DroppedTable),
        field("name", Kind::Bytes),
    ],
};

static SEGMENT: Table = Table {
    name: "Segment",
    fields: &[
        required("prefix", Kind::Bytes),
        field("last_compacted_l0_sst_view_id", Kind::Table(&ID)),
        required("l0", Kind::Tables(&SST_VIEW)),
        required("compacted", Kind::Tables(&SORTED_RUN)),
    ],
};

static MANIFEST: Table = Table {
    name: "ManifestV2",
    fields: &[
        field("manifest_id", Kind::Dropped(8)),
        field("external_dbs", Kind::Tables(&EXTERNAL_DB)),
        field("initialized", Kind::Scalar),
        field("writer_epoch", Kind::Scalar),
        field("compactor_epoch", Kind::Scalar),
        field("replay_after_wal_id", Kind::Scalar),
        field("wal_id_last_seen", Kind::Scalar),
        field("last_compacted_l0_sst_view_id", Kind::Table(&ID)),
        required("ssts", Kind::Tables(&SST)),
        required("l0", Kind::Tables(&SST_VIEW)),
        required("compacted", Kind::Tables(&SORTED_RUN)),
        field("last_l0_clock_tick", Kind::Scalar),
        required("checkpoints", Kind::Tables(&CHECKPOINT)),
        field("last_l0_seq", Kind::Scalar),
        field("recent_snapshot_min_seq", Kind::Scalar),
        field("sequence_tracker", Kind::SequenceTracker),
        field("segments", Kind::Tables(&SEGMENT)),
        field("segment_extractor_name", Kind::Bytes),
    ],
};

/// Field slots of the tables the comparison reads directly.
mod slot {
    pub const MANIFEST_EXTERNAL_DBS: usize = 1;
    pub const MANIFEST_SSTS: usize = 8;
    pub const MANIFEST_L0: usize = 9;
    pub const MANIFEST_COMPACTED: usize = 10;
    pub const MANIFEST_CHECKPOINTS: usize = 12;
    pub const MANIFEST_SEGMENTS: usize = 16;
    pub const SST_ID: usize = 0;
    pub const SST_INFO: usize = 1;
    pub const SORTED_RUN_SSTS: usize = 1;
    pub const SEGMENT_L0: usize = 2;
    pub const SEGMENT_COMPACTED: usize = 3;
    pub const ID_HIGH: usize = 0;
    pub const ID_LOW: usize = 1;
    pub const BOUND_KEY: usize = 0;
    pub const BOUND_TYPE: usize = 1;
}

/// Why a manifest cannot be carried over: the field (a path such as
/// `ssts[3].info.compression_format`) and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub field: String,
    pub detail: String,
}

fn loss(field: impl std::fmt::Display, detail: impl Into<String>) -> Loss {
    Loss {
        field: field.to_string(),
        detail: detail.into(),
    }
}

/// Where in the manifest a check is (`ssts[3].info.compression_format`). Built up as the check
/// descends and formatted only for a [`Loss`]: formatting every field's path made checking a
/// manifest of 10 000 SSTs cost more than decoding it.
#[derive(Clone, Copy)]
enum At<'a> {
    Root(&'static str),
    Field(&'a At<'a>, &'static str),
    Index(&'a At<'a>, usize),
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Root(name) => f.write_str(name),
            At::Field(parent, name) => write!(f, "{parent}.{name}"),
            At::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A bounds-checked reader of one flatbuffer: every offset is checked against the buffer, so a
/// malformed manifest is an error, never a panic or an out-of-bounds read.
struct Flat<'a> {
    buf: &'a [u8],
}

#[derive(Clone, Copy)]
struct TableRef {
    pos: usize,
    vtable: usize,
    slots: usize,
}

impl<'a> Flat<'a> {
    fn bytes<const N: usize>(&self, pos: usize, at: &At<'_>) -> Result<[u8; N], Loss> {
        pos.checked_add(N)
            .and_then(|end| self.buf.get(pos..end))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| loss(at, format!("offset {pos} is outside the manifest")))
    }

    fn u16(&self, pos: usize, at: &At<'_>) -> Result<u16, Loss> {
        Ok(u16::from_le_bytes(self.bytes(pos, at)?))
    }

    fn u32(&self, pos: usize, at: &At<'_>) -> Result<u32, Loss> {
        Ok(u32::from_le_bytes(self.bytes(pos, at)?))
    }

    fn table(&self, pos: usize, at: &At<'_>) -> Result<TableRef, Loss> {
        let back = i32::from_le_bytes(self.bytes(pos, at)?);
        let vtable = i64::try_from(pos)
            .ok()
            .and_then(|p| p.checked_sub(i64::from(back)))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| loss(at, "its vtable offset points outside the manifest"))?;
        let vtable_len = usize::from(self.u16(vtable, at)?);
        if vtable_len < 4 || vtable_len % 2 != 0 {
            return Err(loss(at, format!("malformed vtable of {vtable_len} bytes")));
        }
        self.bytes::<0>(vtable + vtable_len, at)?;
        Ok(TableRef {
            pos,
            vtable,
            slots: (vtable_len - 4) / 2,
        })
    }

    /// Where the field's value is, or `None` when the field is absent.
    fn field(&self, table: TableRef, slot: usize, at: &At<'_>) -> Result<Option<usize>, Loss> {
        if slot >= table.slots {
            return Ok(None);
        }
        match self.u16(table.vtable + 4 + 2 * slot, at)? {
            0 => Ok(None),
            offset => Ok(Some(table.pos + usize::from(offset))),
        }
    }

    /// Follows the offset stored at `pos`.
    fn follow(&self, pos: usize, at: &At<'_>) -> Result<usize, Loss> {
        let offset = self.u32(pos, at)? as usize;
        pos.checked_add(offset)
            .filter(|&p| p < self.buf.len())
            .ok_or_else(|| loss(at, "an offset points outside the manifest"))
    }

    /// A vector's element count and the position of its first element.
    fn vector(&self, pos: usize, element_size: usize, at: &At<'_>) -> Result<(usize, usize), Loss> {
        let start = self.follow(pos, at)?;
        let len = self.u32(start, at)? as usize;
        let first = start + 4;
        let fits = len
            .checked_mul(element_size)
            .and_then(|bytes| first.checked_add(bytes))
            .is_some_and(|end| end <= self.buf.len());
        if !fits {
            return Err(loss(
                at,
                format!("a vector of {len} elements overruns the manifest"),
            ));
        }
        Ok((len, first))
    }

    fn sub_table(
        &self,
        table: TableRef,
        slot: usize,
        at: &At<'_>,
    ) -> Result<Option<TableRef>, Loss> {
        match self.field(table, slot, at)? {
            Some(pos) => Ok(Some(self.table(self.follow(pos, at)?, at)?)),
            None => Ok(None),
        }
    }

    fn tables(&self, table: TableRef, slot: usize, at: &At<'_>) -> Result<Vec<TableRef>, Loss> {
        let Some(pos) = self.field(table, slot, at)? else {
            return Ok(Vec::new());
        };
        let (len, first) = self.vector(pos, 4, at)?;
        (0..len)
            .map(|i| {
                let element = first + 4 * i;
                self.table(self.follow(element, at)?, &At::Index(at, i))
            })
            .collect()
    }

    fn u64_field(&self, table: TableRef, slot: usize, at: &At<'_>) -> Result<u64, Loss> {
        match self.field(table, slot, at)? {
            Some(pos) => Ok(u64::from_le_bytes(self.bytes(pos, at)?)),
            None => Ok(0),
        }
    }

    fn i8_field(&self, table: TableRef, slot: usize, at: &At<'_>) -> Result<i8, Loss> {
        match self.field(table, slot, at)? {
            Some(pos) => Ok(i8::from_le_bytes(self.bytes(pos, at)?)),
            None => Ok(0),
        }
    }

    fn id(&self, table: TableRef, at: &At<'_>) -> Result<u128, Loss> {
        let high = self.u64_field(table, slot::ID_HIGH, at)?;
        let low = self.u64_field(table, slot::ID_LOW, at)?;
        Ok((u128::from(high) << 64) | u128::from(low))
    }

    /// Checks one table and everything under it against the schema.
    fn check(&self, table: TableRef, schema: &Table, at: &At<'_>) -> Result<(), Loss> {
        for unknown in schema.fields.len()..table.slots {
            if self.field(table, unknown, at)?.is_some() {
                return Err(loss(
                    format!("{at}.<field #{unknown}>"),
                    format!(
                        "a field of {} that SlateDB 0.18 does not know (written by a newer SlateDB)",
                        schema.name
                    ),
                ));
            }
        }
        for (slot, field) in schema.fields.iter().enumerate() {
            let here = At::Field(at, field.name);
            let Some(pos) = self.field(table, slot, &here)? else {
                if field.required {
                    return Err(loss(here, "required but absent"));
                }
                if let Kind::Enum(known) = field.kind {
                    if !known.contains(&0) {
                        return Err(loss(here, "absent (0), a value SlateDB 0.18 cannot decode"));
                    }
                }
                continue;
            };
            match field.kind {
                Kind::Scalar => {}
                Kind::Enum(known) => {
                    let value = i8::from_le_bytes(self.bytes(pos, &here)?);
                    if !known.contains(&value) {
                        return Err(loss(
                            here,
                            format!("{value}, a value SlateDB 0.18 does not know"),
                        ));
                    }
                }
                Kind::Dropped(size) => {
                    let value = pos
                        .checked_add(size)
                        .and_then(|end| self.buf.get(pos..end))
                        .ok_or_else(|| loss(here, "outside the manifest"))?;
                    if value.iter().any(|&b| b != 0) {
                        return Err(loss(
                            here,
                            "set, but SlateDB 0.18 does not write this field back",
                        ));
                    }
                }
                Kind::DroppedTable => {
                    return Err(loss(
                        here,
                        "set, but SlateDB 0.18 does not write this field back",
                    ))
                }
                Kind::Bytes => {
                    self.vector(pos, 1, &here)?;
                }
                Kind::SequenceTracker => {
                    let (len, first) = self.vector(pos, 1, &here)?;
                    let version = if len == 0 { None } else { self.buf.get(first) };
                    match version {
                        Some(v) if SEQUENCE_TRACKER_VERSIONS.contains(v) => {}
                        Some(v) => {
                            return Err(loss(
                                here,
                                format!("encoding version {v}, which SlateDB 0.18 cannot decode"),
                            ))
                        }
                        None => return Err(loss(here, "empty, which SlateDB 0.18 cannot decode")),
                    }
                }
                Kind::Table(sub) => {
                    let child = self.table(self.follow(pos, &here)?, &here)?;
                    self.check(child, sub, &here)?;
                }
                Kind::Bound => {
                    let bound = self.table(self.follow(pos, &here)?, &here)?;
                    self.check(bound, &BYTES_BOUND, &here)?;
                    self.check_bound(bound, &here)?;
                }
                Kind::Tables(sub) => {
                    for (i, child) in self.tables(table, slot, &here)?.into_iter().enumerate() {
                        self.check(child, sub, &At::Index(&here, i))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// SlateDB panics on a bound whose key does not match its type.
    fn check_bound(&self, bound: TableRef, at: &At<'_>) -> Result<(), Loss> {
        let unbounded = self.i8_field(bound, slot::BOUND_TYPE, at)? == UNBOUNDED;
        let has_key = self.field(bound, slot::BOUND_KEY, at)?.is_some();
        if unbounded == has_key {
            return Err(loss(
                at,
                if unbounded {
                    "an unbounded bound with a key"
                } else {
                    "a bound without its key"
                },
            ));
        }
        Ok(())
    }
}

/// What the raw bytes hold that the comparison with SlateDB's decoding needs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RawSummary {
    /// Compression format value of each SST, by ULID.
    pub codecs: HashMap<u128, i8>,
    pub views: usize,
    pub sorted_runs: usize,
    pub segments: usize,
    pub checkpoints: usize,
    pub external_dbs: usize,
}

/// Checks the bytes of a manifest object against what SlateDB 0.18 can carry over, and
/// summarises them for the comparison with the decoded manifest.
pub fn check_bytes(bytes: &[u8]) -> Result<RawSummary, Loss> {
    let version = match bytes {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => {
            return Err(loss(
                "format version",
                "the manifest is shorter than its header",
            ))
        }
    };
    if version != WRITTEN_FORMAT_VERSION {
        return Err(loss(
            "format version",
            format!(
                "{version}; SlateDB 0.18 writes version {WRITTEN_FORMAT_VERSION} and would convert \
                 this one (dropping what the new version does not have)"
            ),
        ));
    }
    let flat = Flat { buf: &bytes[2..] };
    let root_at = At::Root("manifest");
    let root = flat.table(flat.follow(0, &root_at)?, &root_at)?;
    flat.check(root, &MANIFEST, &root_at)?;

    let mut summary = RawSummary::default();
    for (i, sst) in flat
        .tables(root, slot::MANIFEST_SSTS, &At::Root("ssts"))?
        .into_iter()
        .enumerate()
    {
        let at = At::Index(&At::Root("ssts"), i);
        let id = flat
            .sub_table(sst, slot::SST_ID, &at)?
            .ok_or_else(|| loss(At::Field(&at, "id"), "required but absent"))?;
        let info = flat
            .sub_table(sst, slot::SST_INFO, &at)?
            .ok_or_else(|| loss(At::Field(&at, "info"), "required but absent"))?;
        let codec = flat.i8_field(info, COMPRESSION_FORMAT_SLOT, &at)?;
        summary.codecs.insert(flat.id(id, &at)?, codec);
    }
    let mut trees = vec![root_trees(&flat, root)?];
    for segment in flat.tables(root, slot::MANIFEST_SEGMENTS, &At::Root("segments"))? {
        summary.segments += 1;
        trees.push((
            flat.tables(segment, slot::SEGMENT_L0, &At::Root("segments.l0"))?,
            flat.tables(
                segment,
                slot::SEGMENT_COMPACTED,
                &At::Root("segments.compacted"),
            )?,
        ));
    }
    for (l0, runs) in trees {
        summary.views += l0.len();
        summary.sorted_runs += runs.len();
        for run in runs {
            summary.views += flat
                .tables(run, slot::SORTED_RUN_SSTS, &At::Root("compacted.ssts"))?
                .len();
        }
    }
    summary.checkpoints = flat
        .tables(root, slot::MANIFEST_CHECKPOINTS, &At::Root("checkpoints"))?
        .len();
    summary.external_dbs = flat
        .tables(root, slot::MANIFEST_EXTERNAL_DBS, &At::Root("external_dbs"))?
        .len();
    Ok(summary)
}

type Tree = (Vec<TableRef>, Vec<TableRef>);

fn root_trees(flat: &Flat<'_>, root: TableRef) -> Result<Tree, Loss> {
    Ok((
        flat.tables(root, slot::MANIFEST_L0, &At::Root("l0"))?,
        flat.tables(root, slot::MANIFEST_COMPACTED, &At::Root("compacted"))?,
    ))
}

/// Compares the raw summary with what SlateDB, as built here, decoded from the same object.
pub fn compare_decoded(raw: &RawSummary, decoded: &slatedb::VersionedManifest) -> Result<(), Loss> {
    for view in decoded.all_sst_views() {
        let ulid = view.sst.id.value();
        let Some(&format) = raw.codecs.get(&ulid.0) else {
            return Err(loss(
                format!("SST {ulid}"),
                "decoded by SlateDB but absent from the manifest's SST table",
            ));
        };
        let expected = CODECS.iter().find(|(value, _, _)| *value == format);
        match expected {
            Some((_, codec, _)) if *codec == view.sst.info.compression_codec => {}
            Some((_, _, name)) => {
                return Err(loss(
                    format!("SST {ulid} compression_format"),
                    format!(
                        "{name} in the manifest, but this build decoded it as {:?}",
                        view.sst.info.compression_codec
                    ),
                ))
            }
            None => {
                return Err(loss(
                    format!("SST {ulid} compression_format"),
                    format!("{format}, a codec this build does not have"),
                ))
            }
        }
    }
    let views: usize = decoded.l0().len()
        + decoded
            .compacted()
            .iter()
            .map(|r| r.sst_views().len())
            .sum::<usize>()
        + decoded
            .segments()
            .iter()
            .map(|s| {
                s.l0().len()
                    + s.compacted()
                        .iter()
                        .map(|r| r.sst_views().len())
                        .sum::<usize>()
            })
            .sum::<usize>();
    let sorted_runs = decoded.compacted().len()
        + decoded
            .segments()
            .iter()
            .map(|s| s.compacted().len())
            .sum::<usize>();
    let counts = [
        ("SST views", raw.views, views),
        ("sorted runs", raw.sorted_runs, sorted_runs),
        ("segments", raw.segments, decoded.segments().len()),
        ("checkpoints", raw.checkpoints, decoded.checkpoints().len()),
        (
            "external_dbs",
            raw.external_dbs,
            decoded.external_dbs().len(),
        ),
    ];
    for (what, in_bytes, in_decoded) in counts {
        if in_bytes != in_decoded {
            return Err(loss(
                what,
                format!("{in_bytes} in the manifest, but this build decoded {in_decoded}"),
            ));
        }
    }
    Ok(())
}

impl Database {
    /// Fails closed, before anything is written, when SlateDB as built here would lose part of
    /// this database's latest manifest in the next manifest it writes. Call it right before every
    /// SlateDB call that writes this database's manifest. A path without a manifest passes.
    ///
    /// The bytes are checked before SlateDB decodes them, since SlateDB panics on some malformed
    /// fields.
    ///
    /// Returns the id of the manifest it checked, for [`Database::confirm_manifest_preserved`]
    /// after the write (`None` when there is no database at the path).
    pub async fn ensure_manifest_preserved(&self) -> Result<Option<u64>, EngineError> {
        self.ensure_manifest_preserved_since(None).await
    }

    /// [`Database::ensure_manifest_preserved`] when manifest `known` was the latest a moment ago:
    /// only the manifests after it are listed, and when none is, `known` is the decoding compared
    /// with the bytes (decoding a manifest of many SSTs costs as much as checking it).
    pub async fn ensure_manifest_preserved_since(
        &self,
        known: Option<&VersionedManifest>,
    ) -> Result<Option<u64>, EngineError> {
        let Some(id) = self
            .latest_manifest_id_since(known.map(VersionedManifest::id))
            .await?
        else {
            return Ok(None);
        };
        let path = manifest_path(&self.path, id);
        let refuse = |Loss { field, detail }| EngineError::ManifestNotPreserved {
            path: self.path.to_string(),
            manifest: path.to_string(),
            field,
            detail,
        };
        let bytes: Bytes = self
            .bounded_store("read manifest bytes", async {
                self.store.main.get(&path).await?.bytes().await
            })
            .await?;
        let raw = check_bytes(&bytes).map_err(refuse)?;
        match known.filter(|known| known.id() == id) {
            Some(decoded) => compare_decoded(&raw, decoded).map_err(refuse)?,
            None => {
                let decoded = self
                    .bounded("read_manifest", self.admin().read_manifest(Some(id)))
                    .await?
                    .ok_or_else(|| EngineError::NotADatabase {
                        path: self.path.to_string(),
                    })?;
                compare_decoded(&raw, &decoded).map_err(refuse)?;
            }
        }
        Ok(Some(id))
    }

    /// After a write the guard allowed: every manifest written since the one it checked passes the
    /// byte checks. One that does not was written by another (newer) writer in the moment between
    /// the check and the write, and the write may have dropped what it added; nothing can undo
    /// that, but the caller hears of it instead of reporting success.
    pub async fn confirm_manifest_preserved(
        &self,
        checked: Option<u64>,
    ) -> Result<(), EngineError> {
        let since = checked.unwrap_or(0);
        let mut newer: Vec<u64> = self
            .manifest_ids_after(checked)
            .await?
            .into_iter()
            .filter(|&id| id > since)
            .collect();
        newer.sort_unstable();
        for id in newer {
            let path = manifest_path(&self.path, id);
            let bytes: Bytes = self
                .bounded_store("read manifest bytes", async {
                    self.store.main.get(&path).await?.bytes().await
                })
                .await?;
            if let Err(Loss { field, detail }) = check_bytes(&bytes) {
                return Err(EngineError::ManifestNotPreserved {
                    path: self.path.to_string(),
                    manifest: path.to_string(),
                    field,
                    detail: format!(
                        "{detail} (written by another writer while the operator changed this \
                         database; the operator's write may have dropped it)"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sample::write_compressed_sample_db;
    use crate::engine::{Store, StoreConfig};
    use flatbuffers::{FlatBufferBuilder, WIPOffset};
    use std::time::Duration;

    fn file_store(dir: &tempfile::TempDir) -> Store {
        Store::open(&StoreConfig {
            url: format!("file://{}", dir.path().display()),
            ..Default::default()
        })
        .unwrap()
    }

    fn database(store: &Store, path: &str) -> Database {
        Database::new(store.clone(), path, Duration::from_secs(20))
    }

    /// Listing after a known manifest finds what a whole listing finds: the same latest id from
    /// every earlier starting point, and exactly the ids after it; a file in a directory below
    /// the manifests is not one of them.
    #[tokio::test]
    async fn listing_after_a_known_manifest_agrees_with_a_whole_listing() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        crate::engine::sample::write_sample_db(&store, "db", 200, 2)
            .await
            .unwrap();
        let db = database(&store, "db");
        for i in 0..3 {
            let name = format!("c{i}");
            db.obtain_checkpoint(&name, None).await.unwrap();
        }
        std::fs::create_dir_all(dir.path().join("db/manifest/nested")).unwrap();
        std::fs::write(
            dir.path()
                .join("db/manifest/nested/99999999999999999999.manifest"),
            b"not a manifest of this database",
        )
        .unwrap();
        let all = db.manifest_ids_after(None).await.unwrap();
        let latest = db.latest_manifest_id().await.unwrap().unwrap();
        assert_eq!(Some(&latest), all.iter().max());
        assert!(all.len() >= 4, "{all:?}");
        for known in all.iter().copied() {
            assert_eq!(
                db.latest_manifest_id_since(Some(known)).await.unwrap(),
                Some(latest),
                "from {known}"
            );
            let mut after = db.manifest_ids_after(Some(known)).await.unwrap();
            after.sort_unstable();
            let expected: Vec<u64> = {
                let mut e: Vec<u64> = all.iter().copied().filter(|&id| id > known).collect();
                e.sort_unstable();
                e
            };
            assert_eq!(after, expected, "after {known}");
        }
        // A known manifest that was collected since: the newer ones answer.
        let first = *all.iter().min().unwrap();
        std::fs::remove_file(dir.path().join(format!("db/manifest/{first:020}.manifest"))).unwrap();
        assert_eq!(
            db.latest_manifest_id_since(Some(first)).await.unwrap(),
            Some(latest)
        );
    }

    /// The manifest objects under `db` on disk, with their bytes.
    fn manifest_files(dir: &tempfile::TempDir, db: &str) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir.path().join(db).join("manifest"))
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().path())
                    .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    fn latest_manifest_file(dir: &tempfile::TempDir, db: &str) -> (String, Vec<u8>) {
        manifest_files(dir, db).pop().expect("a manifest")
    }

    /// Where, in a whole manifest object, the first SST's compression format byte is.
    fn first_codec_byte(bytes: &[u8]) -> usize {
        let flat = Flat { buf: &bytes[2..] };
        let at = &At::Root("manifest");
        let root = flat.table(flat.follow(0, at).unwrap(), at).unwrap();
        let sst = flat.tables(root, slot::MANIFEST_SSTS, at).unwrap()[0];
        let info = flat.sub_table(sst, slot::SST_INFO, at).unwrap().unwrap();
        2 + flat
            .field(info, COMPRESSION_FORMAT_SLOT, at)
            .unwrap()
            .expect("a compressed SST stores its format")
    }

    /// slatedb features that are not compression codecs. A feature of a newer slatedb that is
    /// in neither this list nor [`CODECS`] fails the test below until someone decides which it is.
    const NOT_CODECS: [&str; 13] = [
        "all",
        "default",
        "aws",
        "azure",
        "gcp",
        "foyer",
        "moka",
        "test-util",
        "wal_disable",
        "bench-internal",
        "bencher",
        "compaction_filters",
        "compression",
    ];

    #[test]
    fn every_codec_slatedb_offers_is_in_the_build() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = std::process::Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--offline",
                "--manifest-path",
            ])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let slatedb = metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "slatedb")
            .expect("slatedb in the dependency graph");
        let offered: Vec<&str> = slatedb["features"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let node = metadata["resolve"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == slatedb["id"])
            .unwrap();
        let enabled: Vec<&str> = node["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let codec_names: Vec<&str> = CODECS.iter().skip(1).map(|c| c.2).collect();
        for feature in offered {
            assert!(
                codec_names.contains(&feature) || NOT_CODECS.contains(&feature),
                "slatedb offers the feature {feature:?}, which this test does not know: if it is a \
                 compression codec, enable it in Cargo.toml and add it to CODECS"
            );
        }
        for codec in codec_names {
            assert!(
                enabled.contains(&codec),
                "the build lacks slatedb's {codec} codec"
            );
        }
    }

    #[tokio::test]
    async fn every_codec_is_read_from_the_bytes_and_agrees_with_the_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        for (value, codec, name) in CODECS {
            write_compressed_sample_db(&store, name, 400, 2, codec)
                .await
                .unwrap();
            let db = database(&store, name);
            db.ensure_manifest_preserved().await.unwrap();
            let (_, bytes) = latest_manifest_file(&dir, name);
            let raw = check_bytes(&bytes).unwrap();
            assert_eq!(raw.codecs.len(), 2, "{name}: {raw:?}");
            assert!(raw.codecs.values().all(|&v| v == value), "{name}: {raw:?}");
            let decoded = db.latest_manifest().await.unwrap();
            assert!(decoded
                .all_sst_views()
                .all(|v| v.sst.info.compression_codec == codec));
        }
    }

    #[tokio::test]
    async fn a_codec_this_build_decodes_as_another_is_refused() {
        // The bug this guard exists for: the bytes say lz4, a build without lz4 decodes "none".
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        write_compressed_sample_db(&store, "db", 300, 2, None)
            .await
            .unwrap();
        let decoded = database(&store, "db").latest_manifest().await.unwrap();
        let (_, bytes) = latest_manifest_file(&dir, "db");
        let mut raw = check_bytes(&bytes).unwrap();
        compare_decoded(&raw, &decoded).unwrap();
        raw.codecs.values_mut().for_each(|v| *v = 3);
        let refused = compare_decoded(&raw, &decoded).unwrap_err();
        assert!(refused.field.ends_with("compression_format"), "{refused:?}");
        assert!(
            refused.detail.starts_with("lz4 in the manifest"),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn an_unknown_codec_fails_every_write_closed_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        write_compressed_sample_db(&store, "db", 300, 2, Some(CompressionCodec::Lz4))
            .await
            .unwrap();
        let db = database(&store, "db");
        let (checkpoint, _) = db.obtain_checkpoint("before", None).await.unwrap();
        let (file, mut bytes) = latest_manifest_file(&dir, "db");
        let at = first_codec_byte(&bytes);
        assert_eq!(bytes[at], 3, "lz4");
        bytes[at] = 9;
        std::fs::write(&file, &bytes).unwrap();
        let before = manifest_files(&dir, "db");

        let refusals = [
            db.obtain_checkpoint("nightly", None).await.map(|_| ()),
            db.refresh_checkpoint(checkpoint.id, Some(Duration::from_secs(60)))
                .await
                .map(|_| ()),
            db.delete_checkpoint(checkpoint.id).await.map(|_| ()),
        ];
        for refused in refusals {
            let error = refused.unwrap_err();
            assert_eq!(error.reason(), "ManifestNotPreserved", "{error}");
            assert_eq!(error.fault(), crate::engine::Fault::Permanent);
            let text = error.to_string();
            assert!(text.contains("\"db\""), "{text}");
            assert!(
                text.contains("manifest.ssts[0].info.compression_format = 9"),
                "{text}"
            );
        }
        assert_eq!(
            manifest_files(&dir, "db"),
            before,
            "no manifest was written"
        );
    }

    #[tokio::test]
    async fn other_format_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        write_compressed_sample_db(&store, "db", 100, 1, None)
            .await
            .unwrap();
        let (_, bytes) = latest_manifest_file(&dir, "db");
        for version in [1u16, 3] {
            let mut other = bytes.clone();
            other[..2].copy_from_slice(&version.to_be_bytes());
            let refused = check_bytes(&other).unwrap_err();
            assert_eq!(refused.field, "format version");
            assert!(
                refused.detail.starts_with(&version.to_string()),
                "{refused:?}"
            );
        }
        assert!(check_bytes(&bytes[..1]).is_err());
    }

    /// What to put into a hand-built manifest beyond the fields SlateDB requires.
    #[derive(Default)]
    struct Extras {
        unknown_root_field: bool,
        checkpoint_metadata: bool,
        sequence_tracker: Option<Vec<u8>>,
        unknown_bound_type: bool,
    }

    fn vt(slot: usize) -> u16 {
        4 + 2 * slot as u16
    }

    /// A version-2 manifest built by hand: an initialized, empty database with one checkpoint,
    /// plus what `extras` asks for.
    fn hand_built_manifest(extras: &Extras) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        let id = |fbb: &mut FlatBufferBuilder, high: u64, low: u64| {
            let start = fbb.start_table();
            fbb.push_slot::<u64>(vt(slot::ID_HIGH), high, 0);
            fbb.push_slot::<u64>(vt(slot::ID_LOW), low, 0);
            fbb.end_table(start)
        };
        let checkpoint_id = id(&mut fbb, 7, 11);
        let metadata = extras.checkpoint_metadata.then(|| {
            let start = fbb.start_table();
            fbb.push_slot::<u64>(4, 5, 0);
            fbb.end_table(start)
        });
        let start = fbb.start_table();
        fbb.push_slot_always::<WIPOffset<_>>(vt(0), checkpoint_id);
        fbb.push_slot::<u64>(vt(1), 1, 0);
        fbb.push_slot::<u32>(vt(3), 1_700_000_000, 0);
        if let Some(metadata) = metadata {
            fbb.push_slot::<u8>(vt(4), 1, 0);
            fbb.push_slot_always::<WIPOffset<_>>(vt(5), metadata);
        }
        let checkpoint = fbb.end_table(start);
        let checkpoints = fbb.create_vector(&[checkpoint]);
        let mut views = Vec::new();
        if extras.unknown_bound_type {
            // An L0 view projected to a range whose start bound has type 0 ("Unknown").
            let view_id = id(&mut fbb, 1, 2);
            let sst_id = id(&mut fbb, 1, 2);
            let key = fbb.create_vector(b"k".as_slice());
            let start = fbb.start_table();
            fbb.push_slot_always::<WIPOffset<_>>(vt(slot::BOUND_KEY), key);
            let bad = fbb.end_table(start);
            let start = fbb.start_table();
            fbb.push_slot::<i8>(vt(slot::BOUND_TYPE), UNBOUNDED, 0);
            let unbounded = fbb.end_table(start);
            let start = fbb.start_table();
            fbb.push_slot_always::<WIPOffset<_>>(vt(0), bad);
            fbb.push_slot_always::<WIPOffset<_>>(vt(1), unbounded);
            let range = fbb.end_table(start);
            let start = fbb.start_table();
            fbb.push_slot_always::<WIPOffset<_>>(vt(0), view_id);
            fbb.push_slot_always::<WIPOffset<_>>(vt(1), sst_id);
            fbb.push_slot_always::<WIPOffset<_>>(vt(2), range);
            views.push(fbb.end_table(start));
        }
        let l0 = fbb.create_vector(&views);
        let no_tables: [WIPOffset<flatbuffers::TableFinishedWIPOffset>; 0] = [];
        let ssts = fbb.create_vector(&no_tables);
        let compacted = fbb.create_vector(&no_tables);
        let tracker = extras
            .sequence_tracker
            .as_ref()
            .map(|bytes| fbb.create_vector(bytes.as_slice()));
        let start = fbb.start_table();
        fbb.push_slot::<bool>(vt(2), true, false);
        fbb.push_slot_always::<WIPOffset<_>>(vt(slot::MANIFEST_SSTS), ssts);
        fbb.push_slot_always::<WIPOffset<_>>(vt(slot::MANIFEST_L0), l0);
        fbb.push_slot_always::<WIPOffset<_>>(vt(slot::MANIFEST_COMPACTED), compacted);
        fbb.push_slot_always::<WIPOffset<_>>(vt(slot::MANIFEST_CHECKPOINTS), checkpoints);
        if let Some(tracker) = tracker {
            fbb.push_slot_always::<WIPOffset<_>>(vt(15), tracker);
        }
        if extras.unknown_root_field {
            fbb.push_slot::<u64>(vt(MANIFEST.fields.len()), 42, 0);
        }
        let root = fbb.end_table(start);
        fbb.finish(root, None);
        let mut bytes = WRITTEN_FORMAT_VERSION.to_be_bytes().to_vec();
        bytes.extend_from_slice(fbb.finished_data());
        bytes
    }

    #[test]
    fn fields_slatedb_does_not_know_or_does_not_write_back_are_refused() {
        assert_eq!(
            check_bytes(&hand_built_manifest(&Extras::default())).map(|r| r.checkpoints),
            Ok(1)
        );
        let cases = [
            (
                Extras {
                    unknown_root_field: true,
                    ..Default::default()
                },
                "manifest.<field #18>",
            ),
            (
                Extras {
                    checkpoint_metadata: true,
                    ..Default::default()
                },
                "manifest.checkpoints[0].metadata_type",
            ),
            (
                Extras {
                    sequence_tracker: Some(vec![9, 0, 0, 0, 0]),
                    ..Default::default()
                },
                "manifest.sequence_tracker",
            ),
            (
                Extras {
                    sequence_tracker: Some(Vec::new()),
                    ..Default::default()
                },
                "manifest.sequence_tracker",
            ),
            (
                Extras {
                    unknown_bound_type: true,
                    ..Default::default()
                },
                "manifest.l0[0].visible_range.start_bound.bound_type",
            ),
        ];
        for (extras, field) in cases {
            let refused = check_bytes(&hand_built_manifest(&extras)).unwrap_err();
            assert_eq!(refused.field, field, "{refused:?}");
        }
    }

    #[tokio::test]
    async fn a_field_of_a_newer_slatedb_would_be_dropped_without_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        let manifest_dir = dir.path().join("db").join("manifest");
        std::fs::create_dir_all(&manifest_dir).unwrap();
        let newer = hand_built_manifest(&Extras {
            unknown_root_field: true,
            ..Default::default()
        });
        std::fs::write(manifest_dir.join("00000000000000000001.manifest"), &newer).unwrap();
        let db = database(&store, "db");

        let error = db.obtain_checkpoint("nightly", None).await.unwrap_err();
        assert_eq!(error.reason(), "ManifestNotPreserved", "{error}");
        assert!(error.to_string().contains("<field #18>"), "{error}");
        assert_eq!(manifest_files(&dir, "db").len(), 1, "nothing was written");

        // What the guard prevents: SlateDB itself decodes the manifest, writes the next one, and
        // the newer field is gone from it.
        db.admin()
            .create_detached_checkpoint(&Default::default())
            .await
            .unwrap();
        let (_, written) = latest_manifest_file(&dir, "db");
        assert_ne!(written, newer);
        assert_eq!(check_bytes(&written).map(|r| r.checkpoints), Ok(2));
    }

    #[tokio::test]
    async fn a_newer_manifest_written_between_the_check_and_the_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        write_compressed_sample_db(&store, "db", 100, 1, None)
            .await
            .unwrap();
        let db = database(&store, "db");
        let checked = db.ensure_manifest_preserved().await.unwrap().unwrap();
        db.confirm_manifest_preserved(Some(checked)).await.unwrap();
        let newer = hand_built_manifest(&Extras {
            unknown_root_field: true,
            ..Default::default()
        });
        let next = dir
            .path()
            .join("db/manifest")
            .join(format!("{:020}.manifest", checked + 1));
        std::fs::write(next, newer).unwrap();
        let error = db
            .confirm_manifest_preserved(Some(checked))
            .await
            .unwrap_err();
        assert_eq!(error.reason(), "ManifestNotPreserved");
        assert!(error.to_string().contains("another writer"), "{error}");
        db.confirm_manifest_preserved(Some(checked + 1))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn damaged_manifests_are_refused_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir);
        write_compressed_sample_db(&store, "db", 300, 3, Some(CompressionCodec::Zstd))
            .await
            .unwrap();
        let (_, bytes) = latest_manifest_file(&dir, "db");
        let mut runner = proptest::test_runner::TestRunner::default();
        let damage = (0..bytes.len(), proptest::num::u8::ANY, 0..=bytes.len());
        runner
            .run(&damage, |(at, byte, keep)| {
                let mut damaged = bytes.clone();
                damaged[at] = byte;
                let _ = check_bytes(&damaged);
                let _ = check_bytes(&damaged[..keep]);
                Ok(())
            })
            .unwrap();
    }
}
