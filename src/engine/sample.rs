//! Sample databases for the demo and the tests: real SlateDB databases with known keys.

use super::error::{from_slatedb, EngineError};
use super::Store;
use slatedb::config::{CompressionCodec, FlushOptions, FlushType, Settings};

/// The key and value of row `i` of a sample database.
pub fn sample_row(i: usize) -> (String, String) {
    (format!("key-{i:06}"), format!("value-{i}"))
}

/// Writes `keys` rows into a new database at `path`, flushed as `ssts` separate L0 SSTs
/// (compaction off, so they stay separate), and closes it cleanly.
pub async fn write_sample_db(
    store: &Store,
    path: &str,
    keys: usize,
    ssts: usize,
) -> Result<(), EngineError> {
    write_compressed_sample_db(store, path, keys, ssts, None).await
}

/// [`write_sample_db`] with its SSTs compressed by `codec`, as an application configured with
/// `Settings { compression_codec, .. }` writes them.
pub async fn write_compressed_sample_db(
    store: &Store,
    path: &str,
    keys: usize,
    ssts: usize,
    codec: Option<CompressionCodec>,
) -> Result<(), EngineError> {
    let err = |e| from_slatedb("write sample database", path, e);
    let db = slatedb::Db::builder(path, store.main.clone())
        .with_settings(sample_settings(codec))
        .build()
        .await
        .map_err(err)?;
    put_rows(&db, 0..keys, ssts, path).await?;
    db.close().await.map_err(err)?;
    // Reopen, flush what the close left in the WAL into L0, and close again: the database is then
    // quiesced, with no data in its WAL tail (which projected clones require).
    let db = slatedb::Db::builder(path, store.main.clone())
        .with_settings(sample_settings(codec))
        .build()
        .await
        .map_err(err)?;
    db.flush_with_options(FlushOptions {
        flush_type: FlushType::MemTable,
    })
    .await
    .map_err(err)?;
    db.close().await.map_err(err)
}

/// Adds sample rows `rows` to the database at `path` (as its writer would, then flushed into one
/// L0 SST and closed), e.g. to give a later checkpoint new rows.
pub async fn append_sample_rows(
    store: &Store,
    path: &str,
    rows: std::ops::Range<usize>,
) -> Result<(), EngineError> {
    let err = |e| from_slatedb("append sample rows", path, e);
    let db = slatedb::Db::builder(path, store.main.clone())
        .with_settings(sample_settings(None))
        .build()
        .await
        .map_err(err)?;
    put_rows(&db, rows, 1, path).await?;
    db.close().await.map_err(err)
}

/// Puts sample rows `rows`, flushing them as `ssts` L0 SSTs.
async fn put_rows(
    db: &slatedb::Db,
    rows: std::ops::Range<usize>,
    ssts: usize,
    path: &str,
) -> Result<(), EngineError> {
    let err = |e| from_slatedb("write sample rows", path, e);
    let per_sst = rows.len().div_ceil(ssts.max(1)).max(1);
    let last = rows.end;
    for (n, i) in rows.enumerate() {
        let (key, value) = sample_row(i);
        db.put(key.as_bytes(), value.as_bytes())
            .await
            .map_err(err)?;
        if (n + 1) % per_sst == 0 || i + 1 == last {
            // Seal the WAL first, so the memtable flush can move the replay point past it.
            db.flush_with_options(FlushOptions {
                flush_type: FlushType::Wal,
            })
            .await
            .map_err(err)?;
            db.flush_with_options(FlushOptions {
                flush_type: FlushType::MemTable,
            })
            .await
            .map_err(err)?;
        }
    }
    Ok(())
}

/// The codec named `name` (`none`, `snappy`, `zlib`, `lz4`, `zstd`), for the CLI.
pub fn codec_named(name: &str) -> Result<Option<CompressionCodec>, String> {
    super::manifest_guard::CODECS
        .iter()
        .find(|(_, _, known)| known.eq_ignore_ascii_case(name))
        .map(|(_, codec, _)| *codec)
        .ok_or_else(|| {
            let names: Vec<&str> = super::manifest_guard::CODECS.iter().map(|c| c.2).collect();
            format!("unknown codec {name:?}; one of {}", names.join(", "))
        })
}

/// The settings of the sample writer: no compaction, and the given codec.
pub fn sample_settings(codec: Option<CompressionCodec>) -> Settings {
    Settings {
        compactor_options: None,
        compression_codec: codec,
        ..Default::default()
    }
}
