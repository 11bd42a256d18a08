//! Issue 17 (library level): the throughput of an independent copy (`copy_checkpoint`) of a
//! checkpoint from one `file://` store to another, against `rclone copy` of the same objects
//! (`--files-from-raw`, the same number of parallel transfers) between the same two directories
//! in the same run; and an incremental copy after 5% more data against a full copy.
//!
//! Then the re-encode (`reencode_checkpoint`: every row read and written into a new database
//! with a codec) of the same checkpoint, against its byte copy (`Content`), alternating, in the
//! same run.
//!
//! Prints markdown (tables and goal verdicts) on stdout and progress on stderr. `BENCH_FULL=1`
//! copies a ~1 GiB checkpoint (160 SSTs) instead of ~100 MiB (16 SSTs). `BENCH_REPS` (default 5)
//! sets the repetitions, `BENCH_COPY_PARALLELISM` (default 16) the transfers at once, `BENCH_RCLONE`
//! the rclone binary (default `rclone` on `PATH`; the Debian package), `BENCH_REENCODE_CODECS`
//! (default `none,zstd`) the codecs re-encoded to.

#[path = "common/mod.rs"]
mod common;

use common::*;
use slatedb::config::{FlushOptions, FlushType, Settings};
use slatedb_operator::engine::sample::codec_named;
use slatedb_operator::engine::{
    copy_checkpoint, reencode_checkpoint, CheckpointInfo, CloneSourceCheckpoint, CopyOptions,
    CopyReport, CopyVerification, Database, ReencodeOptions, ReencodeReport, Store,
};
use std::process::Command;
use std::time::Instant;

#[derive(Default)]
struct Samples {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Samples {
    fn push(&mut self, (wall, cpu): (f64, f64)) {
        self.wall.push(wall);
        self.cpu.push(cpu);
    }
}

/// One copy of `checkpoint` into a fresh path of `target`; wall and CPU seconds.
async fn timed_copy(
    source: &Database,
    checkpoint: &CheckpointInfo,
    target: &Database,
    options: &CopyOptions,
) -> (f64, f64, CopyReport) {
    let cpu0 = self_cpu();
    let started = Instant::now();
    let id = CloneSourceCheckpoint::Id(checkpoint.id);
    let report = copy_checkpoint(source, &id, target, options, |_| {})
        .await
        .expect("copy");
    (started.elapsed().as_secs_f64(), self_cpu() - cpu0, report)
}

/// One re-encode of `checkpoint` into a fresh path of `target`; wall and CPU seconds.
async fn timed_reencode(
    source: &Database,
    checkpoint: &CheckpointInfo,
    target: &Database,
    options: &ReencodeOptions,
) -> (f64, f64, ReencodeReport) {
    let cpu0 = self_cpu();
    let started = Instant::now();
    let id = CloneSourceCheckpoint::Id(checkpoint.id);
    let report = reencode_checkpoint(source, &id, target, options, |_| {})
        .await
        .expect("re-encode");
    (started.elapsed().as_secs_f64(), self_cpu() - cpu0, report)
}

/// `rclone copy` of the listed files from `from` into `to`; wall and CPU seconds.
fn timed_rclone(
    rclone: &str,
    list: &std::path::Path,
    from: &std::path::Path,
    to: &std::path::Path,
    transfers: usize,
) -> (f64, f64) {
    let cpu0 = children_cpu();
    let wall = run_timed(
        Command::new(rclone)
            .args(["copy", "--quiet", "--no-traverse", "--files-from-raw"])
            .arg(list)
            .args(["--transfers", &transfers.to_string()])
            .args(["--checkers", &transfers.to_string()])
            .arg(from)
            .arg(to)
            .env("RCLONE_CONFIG", "/dev/null"),
    );
    (wall, children_cpu() - cpu0)
}

/// Adds `rows` more rows (~1 KiB each) to the parent in one new SST, then checkpoints it.
async fn grow(parent: &Parent, rows: u64) -> CheckpointInfo {
    // As the parent was written: nothing compacts, and its many L0 SSTs do not stall writes.
    let settings = Settings {
        compactor_options: None,
        garbage_collector_options: None,
        l0_max_ssts: 1_000_000,
        l0_max_ssts_per_key: 1_000_000,
        ..Default::default()
    };
    let db = slatedb::Db::builder(PARENT, parent.store.main.clone())
        .with_settings(settings)
        .build()
        .await
        .expect("open parent");
    let mut rng = XorShift::new(17);
    let mut value = vec![0u8; VALUE_BYTES];
    for i in 0..rows {
        rng.fill(&mut value);
        let key = format!("key-{:012}", parent.rows + i);
        db.put(key.as_bytes(), &value).await.expect("put");
    }
    // Seal the WAL first, so that the memtable flush moves the replay point past it (as the
    // parent was written): the new rows are in one new SST, not also in the checkpoint's WAL.
    for flush_type in [FlushType::Wal, FlushType::MemTable] {
        let flush = FlushOptions { flush_type };
        db.flush_with_options(flush).await.expect("flush");
    }
    db.close().await.expect("close parent");
    let (checkpoint, _) = parent
        .database()
        .obtain_checkpoint("bench-copy-grown", None)
        .await
        .expect("checkpoint");
    checkpoint
}

async fn run() {
    let rclone = std::env::var("BENCH_RCLONE").unwrap_or_else(|_| "rclone".into());
    let reps = env_usize("BENCH_REPS", 5);
    let parallelism = env_usize("BENCH_COPY_PARALLELISM", 16);
    let (label, bytes, ssts) = if full() {
        ("1 GiB", GIB, 160)
    } else {
        ("100 MiB", 100 * MIB, 16)
    };
    eprintln!("copy_throughput: building a {label} parent of {ssts} SSTs");
    let parent = build_parent(bytes, ssts).await;
    let source = parent.database();
    let (checkpoint, _) = source
        .obtain_checkpoint("bench-copy", None)
        .await
        .expect("checkpoint");
    let objects = source
        .pinned_objects(checkpoint.manifest_id)
        .await
        .expect("pinned objects");
    let closure_bytes: u64 = objects.iter().map(|o| o.size).sum();
    let relative: Vec<String> = objects
        .iter()
        .map(|o| o.path.as_ref().trim_start_matches("parent/").to_string())
        .collect();
    // The manifest too, as the copy writes it.
    let manifest = format!("manifest/{:020}.manifest", checkpoint.manifest_id);
    let list_dir = tempfile::tempdir().expect("tempdir");
    let list = list_dir.path().join("files");
    let mut files = relative.clone();
    files.push(manifest);
    std::fs::write(&list, files.join("\n") + "\n").expect("file list");

    let target_dir = tempfile::Builder::new()
        .prefix("slatedb-bench-copy-")
        .tempdir()
        .expect("tempdir");
    let target_store: Store = file_store(target_dir.path());
    let target = |path: &str| Database::new(target_store.clone(), path, ADMIN_TIMEOUT);
    let remove = |path: &str| {
        let _ = std::fs::remove_dir_all(target_dir.path().join(path));
        sync();
    };
    let options = |verify| CopyOptions {
        parallelism,
        verify,
        ..CopyOptions::default()
    };
    let version = Command::new(&rclone)
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|e| panic!("running {rclone}: {e} (install the Debian package rclone)"));

    // Warm-up (page cache, and the cross-check that rclone copies the same bytes).
    let (_, _, warm) = timed_copy(
        &source,
        &checkpoint,
        &target("warm-copy"),
        &options(CopyVerification::Content),
    )
    .await;
    timed_rclone(
        &rclone,
        &list,
        &parent.parent_dir(),
        &target_dir.path().join("warm-rclone"),
        parallelism,
    );
    for file in &files {
        let ours = std::fs::read(target_dir.path().join("warm-copy").join(file)).expect("ours");
        let theirs =
            std::fs::read(target_dir.path().join("warm-rclone").join(file)).expect("rclone's");
        assert_eq!(ours, theirs, "{file}");
    }
    remove("warm-copy");
    remove("warm-rclone");
    eprintln!(
        "copy_throughput: {} objects, {}; both copies byte-identical",
        warm.objects_total,
        human_bytes(warm.bytes_total)
    );

    let (mut metadata, mut content, mut baseline) =
        (Samples::default(), Samples::default(), Samples::default());
    for rep in 0..reps {
        for k in 0..3 {
            match (rep + k) % 3 {
                0 => {
                    let path = format!("rclone-{rep}");
                    let to = target_dir.path().join(&path);
                    let timed =
                        timed_rclone(&rclone, &list, &parent.parent_dir(), &to, parallelism);
                    baseline.push(timed);
                    remove(&path);
                }
                k => {
                    let (verify, samples) = match k {
                        1 => (CopyVerification::Metadata, &mut metadata),
                        _ => (CopyVerification::Content, &mut content),
                    };
                    let path = format!("copy-{rep}-{}", verify.name());
                    let (wall, cpu, report) =
                        timed_copy(&source, &checkpoint, &target(&path), &options(verify)).await;
                    assert_eq!(report.objects_transferred, report.objects_total);
                    samples.push((wall, cpu));
                    remove(&path);
                }
            }
        }
        eprintln!(
            "copy_throughput:   rep {rep}: rclone {:.0} ms, copy (metadata) {:.0} ms, copy (content) {:.0} ms",
            baseline.wall[rep] * 1e3,
            metadata.wall[rep] * 1e3,
            content.wall[rep] * 1e3
        );
    }

    // Incremental: 5% more data in a new SST, then a copy of the new checkpoint to a target that
    // holds the old one, against a full copy of the new checkpoint.
    let grown = grow(&parent, parent.rows / 20).await;
    let (mut full_copy, mut incremental) = (Samples::default(), Samples::default());
    let mut transferred = (0, 0);
    for rep in 0..reps {
        let path = format!("incremental-{rep}");
        let content = options(CopyVerification::Content);
        timed_copy(&source, &checkpoint, &target(&path), &content).await;
        sync();
        let (wall, cpu, report) = timed_copy(&source, &grown, &target(&path), &content).await;
        incremental.push((wall, cpu));
        transferred = (report.objects_transferred, report.bytes_transferred);
        remove(&path);
        let path = format!("full-{rep}");
        let (wall, cpu, _) = timed_copy(&source, &grown, &target(&path), &content).await;
        full_copy.push((wall, cpu));
        remove(&path);
        eprintln!(
            "copy_throughput:   rep {rep}: incremental {:.0} ms, full {:.0} ms",
            incremental.wall[rep] * 1e3,
            full_copy.wall[rep] * 1e3
        );
    }

    let mib = closure_bytes as f64 / MIB as f64;
    let base = Stats::of(&baseline.wall).median;
    println!("### Copy throughput (library, `file://` → `file://`)\n");
    println!(
        "Checkpoint of a {label} parent: {} objects, {} (the manifest included), from one \
         directory (store) to another on the same disk, page cache warm; {reps} repetitions, order \
         rotated; median (min–max) wall ms. Baseline: `{version}` (`rclone copy --files-from-raw \
         --no-traverse --transfers {parallelism} --checkers {parallelism}` of the same files; \
         rclone checks each copied file's size and MD5). The copy: `copy_checkpoint` with \
         `parallelism` {parallelism}, to a fresh target each time. CPU = user + system seconds \
         (`getrusage`).\n",
        warm.objects_total,
        human_bytes(warm.bytes_total),
    );
    println!("| method | wall ms | MiB/s | CPU s | throughput vs rclone | note |");
    println!("|---|---:|---:|---:|---:|---|");
    let row = |name: &str, s: &Samples, note: &str| {
        let wall = Stats::of(&s.wall);
        println!(
            "| {name} | {} | {:.0} | {:.2} | {:.2} | {note} |",
            wall.ms(),
            mib / wall.median,
            Stats::of(&s.cpu).median,
            base / wall.median,
        );
    };
    row("`rclone copy`", &baseline, "baseline");
    row(
        "`copy_checkpoint`, `Metadata`",
        &metadata,
        "sha256 while streaming, no read-back",
    );
    row(
        "`copy_checkpoint`, `Content`",
        &content,
        "+ every object read back (sha256 and SST block CRCs) before the commit",
    );
    println!();
    let ratio = |s: &Samples| base / Stats::of(&s.wall).median;
    println!(
        "- **Goal: copy throughput ≥ 0.9× `rclone copy` — {} with `Content` ({:.2}×), {} with `Metadata` ({:.2}×).** \
         `Content` reads every object twice (once to send, once back from the target); rclone reads it once and hashes both copies.",
        verdict(ratio(&content) >= 0.9),
        ratio(&content),
        verdict(ratio(&metadata) >= 0.9),
        ratio(&metadata),
    );
    let inc = Stats::of(&incremental.wall);
    let full_stats = Stats::of(&full_copy.wall);
    let share = inc.median / full_stats.median;
    println!();
    println!(
        "| copy of the checkpoint after 5% more rows (`Content`) | wall ms | objects / bytes transferred |"
    );
    println!("|---|---:|---|");
    println!("| full, to a fresh target | {} | all |", full_stats.ms());
    println!(
        "| incremental, to the target holding the previous copy | {} | {} / {} |",
        inc.ms(),
        transferred.0,
        human_bytes(transferred.1)
    );
    println!();
    println!(
        "- **Goal: incremental copy ≤ 10% of the full copy's time — {} ({:.1}%).**",
        verdict(share <= 0.10),
        share * 100.0
    );
    println!();

    reencode_section(&source, &checkpoint, &target, &remove, &options, reps, mib).await;
}

/// The re-encode of the first checkpoint against its byte copy (`Content`), alternating.
async fn reencode_section(
    source: &Database,
    checkpoint: &CheckpointInfo,
    target: &impl Fn(&str) -> Database,
    remove: &impl Fn(&str),
    options: &impl Fn(CopyVerification) -> CopyOptions,
    reps: usize,
    mib: f64,
) {
    let names = std::env::var("BENCH_REENCODE_CODECS").unwrap_or_else(|_| "none,zstd".into());
    let codecs: Vec<(String, ReencodeOptions)> = names
        .split(',')
        .map(|name| {
            let codec = codec_named(name.trim()).expect("BENCH_REENCODE_CODECS");
            let options = ReencodeOptions {
                compression: codec,
                ..ReencodeOptions::default()
            };
            (name.trim().to_string(), options)
        })
        .collect();
    let mut byte_copy = Samples::default();
    let mut reencoded: Vec<Samples> = codecs.iter().map(|_| Samples::default()).collect();
    let mut reports: Vec<Option<ReencodeReport>> = codecs.iter().map(|_| None).collect();
    let methods = codecs.len() + 1;
    for rep in 0..reps {
        for k in 0..methods {
            match (rep + k) % methods {
                0 => {
                    let path = format!("reencode-copy-{rep}");
                    let content = options(CopyVerification::Content);
                    let (wall, cpu, _) =
                        timed_copy(source, checkpoint, &target(&path), &content).await;
                    byte_copy.push((wall, cpu));
                    remove(&path);
                }
                m => {
                    let (name, reencode) = &codecs[m - 1];
                    let path = format!("reencode-{name}-{rep}");
                    let (wall, cpu, report) =
                        timed_reencode(source, checkpoint, &target(&path), reencode).await;
                    assert!(report.committed && report.rows_written == report.rows);
                    if let Some(first) = &reports[m - 1] {
                        assert_eq!(first.digest, report.digest);
                    }
                    reencoded[m - 1].push((wall, cpu));
                    reports[m - 1] = Some(report);
                    remove(&path);
                }
            }
        }
        let times: Vec<String> = codecs
            .iter()
            .zip(&reencoded)
            .map(|((name, _), s)| format!("re-encode ({name}) {:.0} ms", s.wall[rep] * 1e3))
            .collect();
        eprintln!(
            "copy_throughput:   rep {rep}: byte copy {:.0} ms, {}",
            byte_copy.wall[rep] * 1e3,
            times.join(", ")
        );
    }

    let base = Stats::of(&byte_copy.wall).median;
    let rows = reports.iter().flatten().map(|r| r.rows).next().unwrap_or(0);
    println!("### Re-encode against the byte copy (library, `file://` → `file://`)\n");
    println!(
        "The same checkpoint ({rows} rows of ~1 KiB incompressible values) as above: \
         `reencode_checkpoint` (every row read through a `DbReader` at the checkpoint, written in \
         1 MiB batches into a new database with the codec, a resume point every 64 MiB, the \
         target read back and digested) against `copy_checkpoint` with `Content` verification, \
         alternating, {reps} repetitions, fresh targets; median (min–max) wall ms. MiB/s is of \
         the checkpoint's stored bytes.\n"
    );
    println!("| method | wall ms | MiB/s | rows/s | CPU s | time vs byte copy | target bytes |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let copy_wall = Stats::of(&byte_copy.wall);
    println!(
        "| `copy_checkpoint`, `Content` | {} | {:.0} | {:.0} | {:.2} | 1.00× | (as the source) |",
        copy_wall.ms(),
        mib / copy_wall.median,
        rows as f64 / copy_wall.median,
        Stats::of(&byte_copy.cpu).median,
    );
    for (((name, _), samples), report) in codecs.iter().zip(&reencoded).zip(&reports) {
        let wall = Stats::of(&samples.wall);
        let target_bytes = report.as_ref().map_or(0, |r| r.target_bytes);
        println!(
            "| `reencode_checkpoint`, {name} | {} | {:.0} | {:.0} | {:.2} | {:.2}× | {} |",
            wall.ms(),
            mib / wall.median,
            rows as f64 / wall.median,
            Stats::of(&samples.cpu).median,
            wall.median / base,
            human_bytes(target_bytes),
        );
    }
    println!();
    let ratios: Vec<String> = codecs
        .iter()
        .zip(&reencoded)
        .map(|((name, _), s)| format!("{:.2}× ({name})", Stats::of(&s.wall).median / base))
        .collect();
    println!(
        "- **Re-encode vs byte copy: {} the byte copy's time.** The re-encode decodes and \
         re-encodes every block, writes every row twice (WAL, then L0 SST) and reads the \
         target back through SlateDB; the byte copy streams the objects and reads them back.",
        ratios.join(", ")
    );
    println!();
}

fn main() {
    start_watchdog(if full() { 3600 } else { 900 });
    runtime().block_on(run());
}
