//! Sample databases for the demo and the tests: real SlateDB databases with known keys.

use super::error::{from_slatedb, EngineError};
use super::Store;
use slatedb::config::{FlushOptions, FlushType, Settings};

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
    let err = |e| from_slatedb("write sample database", path, e);
    let db = slatedb::Db::builder(path, store.main.clone())
        .with_settings(settings_without_compaction())
        .build()
        .await
        .map_err(err)?;
    let per_sst = keys.div_ceil(ssts.max(1)).max(1);
    for i in 0..keys {
        let (key, value) = sample_row(i);
        db.put(key.as_bytes(), value.as_bytes())
            .await
            .map_err(err)?;
        if (i + 1) % per_sst == 0 || i + 1 == keys {
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
    db.close().await.map_err(err)?;
    // Reopen, flush what the close left in the WAL into L0, and close again: the database is then
    // quiesced, with no data in its WAL tail (which projected clones require).
    let db = slatedb::Db::builder(path, store.main.clone())
        .with_settings(settings_without_compaction())
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

fn settings_without_compaction() -> Settings {
    Settings {
        compactor_options: None,
        ..Default::default()
    }
}
