//! Issue 6, benchmark 2 (library level): `Content` verification throughput of a checkpoint —
//! `Database::fingerprint(manifest_id, true)`, which reads every pinned object once, hashes it
//! (sha256) and checks the CRC of every SST block through SlateDB's reader — against
//! `sha256sum` over the same files in the same run: one process (single-threaded) and
//! `xargs -P<nproc>` (multi-threaded).
//!
//! Throughput is reported per wall second and per CPU second (user + system, from `getrusage`
//! of this process or of the waited-for children), the latter being the "per core" figure.
//! `BENCH_FULL=1` uses a ~1 GiB checkpoint (160 SSTs) instead of ~100 MiB (16 SSTs).

#[path = "common/mod.rs"]
mod common;

use common::*;
use slatedb_operator::engine::{
    initialize_clone, CloneConfig, CloneSourceCheckpoint, Database, RetryPolicy, Verification,
};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Default)]
struct Samples {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Samples {
    fn push(&mut self, wall: f64, cpu: f64) {
        self.wall.push(wall);
        self.cpu.push(cpu);
    }
}

fn sha256sum_single(files: &[std::path::PathBuf], stdout: Stdio) -> (f64, f64, Vec<u8>) {
    let cpu0 = children_cpu();
    let started = Instant::now();
    let out = Command::new("sha256sum")
        .args(files)
        .stdout(stdout)
        .output()
        .expect("sha256sum");
    let wall = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "sha256sum failed");
    (wall, children_cpu() - cpu0, out.stdout)
}

fn sha256sum_parallel(files: &[std::path::PathBuf], jobs: usize) -> (f64, f64) {
    let cpu0 = children_cpu();
    let started = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-0", "-n1", "-P"])
        .arg(jobs.to_string())
        .arg("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("xargs");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for f in files {
            stdin
                .write_all(f.as_os_str().as_encoded_bytes())
                .expect("write list");
            stdin.write_all(b"\0").expect("write list");
        }
    }
    let status = child.wait().expect("wait xargs");
    let wall = started.elapsed().as_secs_f64();
    assert!(status.success(), "xargs sha256sum failed");
    (wall, children_cpu() - cpu0)
}

async fn in_process<F, T>(f: F) -> (f64, f64, T)
where
    F: std::future::Future<Output = T>,
{
    let cpu0 = self_cpu();
    let started = Instant::now();
    let value = f.await;
    (started.elapsed().as_secs_f64(), self_cpu() - cpu0, value)
}

fn clone_config(
    db_store: &slatedb_operator::engine::Store,
    checkpoint: uuid::Uuid,
    target: &str,
    verify: Verification,
) -> CloneConfig {
    CloneConfig {
        store: db_store.clone(),
        source_path: PARENT.into(),
        source_checkpoint: CloneSourceCheckpoint::Id(checkpoint),
        key_range: None,
        target_path: target.into(),
        verify,
        admin_timeout: ADMIN_TIMEOUT,
        retry: RetryPolicy::default(),
        owner: None,
    }
}

/// Blocks in the pinned SSTs, from their indexes (one read each).
async fn sst_blocks(db: &Database, objects: &[slatedb_operator::engine::PinnedObject]) -> u64 {
    let mut blocks = 0;
    for object in objects.iter().filter(|o| o.key.starts_with("sst/")) {
        let (owner, file) = object
            .path
            .as_ref()
            .rsplit_once("/compacted/")
            .expect("compacted SST");
        let reader = slatedb::SstReader::new(owner, db.store().main.clone(), None, None);
        let sst = reader
            .open(file.trim_end_matches(".sst").parse().expect("ULID"))
            .await
            .expect("open SST");
        blocks += sst.index().await.expect("index").len() as u64;
    }
    blocks
}

/// The same bytes in one SST and in 16: the CRC walk against `sha256sum` for each (one
/// repetition each; a profile in numbers of why the walk misses its goal).
async fn crc_walk_vs_sst_size() {
    let bytes = env_usize("BENCH_SCALING_MIB", 32) as u64 * MIB;
    println!(
        "CRC walk vs SST size (the same {} in 16 SSTs and in 1; one repetition each, `sha256sum` in \
         the same run):\n",
        human_bytes(bytes)
    );
    println!(
        "| SSTs | blocks | blocks per SST | `fingerprint(id, true)` ms | `sha256sum` ms | \
         content check / sha256sum | CPU µs per block |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for ssts in [16usize, 1] {
        let parent = build_parent(bytes, ssts).await;
        let db = parent.database();
        let (checkpoint, _) = db
            .obtain_checkpoint("bench", None)
            .await
            .expect("checkpoint");
        let objects = db
            .pinned_objects(checkpoint.manifest_id)
            .await
            .expect("pinned");
        let files: Vec<std::path::PathBuf> = objects
            .iter()
            .map(|o| parent.root().join(o.path.as_ref()))
            .collect();
        let blocks = sst_blocks(&db, &objects).await;
        sync();
        let (sha_wall, _, _) = sha256sum_single(&files, Stdio::null());
        let (wall, cpu, result) = in_process(db.fingerprint(checkpoint.manifest_id, true)).await;
        assert_eq!(result.expect("fingerprint").blocks_checked, Some(blocks));
        eprintln!(
            "verify_throughput: scaling, {ssts} SSTs: walk {:.0} ms, sha256sum {:.0} ms",
            wall * 1e3,
            sha_wall * 1e3
        );
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.1}× | {:.0} |",
            parent.ssts,
            blocks,
            blocks / parent.ssts.max(1) as u64,
            wall * 1e3,
            sha_wall * 1e3,
            wall / sha_wall,
            cpu * 1e6 / blocks as f64
        );
    }
    println!();
}

async fn run() {
    let (target_bytes, label) = if full() {
        (GIB, "1 GiB")
    } else {
        (100 * MIB, "100 MiB")
    };
    // ~6.4 MiB SSTs in both modes, so that the per-byte figures compare (the CRC walk's cost per
    // byte grows with the SST's size; see the second table).
    let ssts = env_usize("BENCH_VERIFY_SSTS", if full() { 160 } else { 16 });
    let reps = env_usize("BENCH_REPS", if full() { 3 } else { 5 });
    let jobs = nproc();
    eprintln!("verify_throughput: building a {label} parent with {ssts} SSTs");
    let parent = build_parent(target_bytes, ssts).await;
    eprintln!(
        "verify_throughput: parent built in {:.1} s: {} SSTs, {}",
        parent.build_secs,
        parent.ssts,
        human_bytes(parent.bytes)
    );
    let db = parent.database();
    let (checkpoint, _) = db
        .obtain_checkpoint("bench", None)
        .await
        .expect("checkpoint");
    let objects = db
        .pinned_objects(checkpoint.manifest_id)
        .await
        .expect("pinned objects");
    let bytes: u64 = objects.iter().map(|o| o.size).sum();
    let files: Vec<std::path::PathBuf> = objects
        .iter()
        .map(|o| parent.root().join(o.path.as_ref()))
        .collect();
    sync();

    // Warm-up and cross-check: sha256sum's digests equal the engine's per-object hashes.
    let (_, _, listing) = sha256sum_single(&files, Stdio::piped());
    let listing = String::from_utf8(listing).expect("utf8");
    let checked = db
        .check_content(&objects, &|_| {})
        .await
        .expect("content check");
    for c in &checked {
        let (object, hash) = (&c.object, &c.sha256);
        let file = parent.root().join(object.path.as_ref());
        let expected = listing
            .lines()
            .find(|l| l.ends_with(&*file.to_string_lossy()))
            .and_then(|l| l.split_whitespace().next())
            .expect("sha256sum line");
        assert_eq!(expected, hex::encode(hash), "digest of {}", file.display());
    }
    let blocks = sst_blocks(&db, &objects).await;
    eprintln!(
        "verify_throughput: {} objects, {}, {} blocks; engine hashes equal sha256sum's",
        objects.len(),
        human_bytes(bytes),
        blocks
    );

    let (mut fp, mut metadata_fp, mut single, mut multi) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    for rep in 0..reps {
        for k in 0..4 {
            match (rep + k) % 4 {
                0 => {
                    let (wall, cpu, result) =
                        in_process(db.fingerprint(checkpoint.manifest_id, true)).await;
                    let fingerprint = result.expect("fingerprint");
                    assert!(fingerprint.content_root.is_some());
                    assert_eq!(fingerprint.blocks_checked, Some(blocks));
                    fp.push(wall, cpu);
                }
                1 => {
                    let (wall, cpu, result) =
                        in_process(db.fingerprint(checkpoint.manifest_id, false)).await;
                    assert!(result.expect("fingerprint").content_root.is_none());
                    metadata_fp.push(wall, cpu);
                }
                2 => {
                    let (wall, cpu, _) = sha256sum_single(&files, Stdio::null());
                    single.push(wall, cpu);
                }
                _ => {
                    let (wall, cpu) = sha256sum_parallel(&files, jobs);
                    multi.push(wall, cpu);
                }
            }
        }
        eprintln!(
            "verify_throughput:   rep {rep}: content {:.0} ms, metadata {:.0} ms, sha256sum {:.0} ms, xargs -P{jobs} {:.0} ms",
            fp.wall[rep] * 1e3,
            metadata_fp.wall[rep] * 1e3,
            single.wall[rep] * 1e3,
            multi.wall[rep] * 1e3
        );
    }

    // The clone's own Content verification (reads every object the clone pins once):
    // the extra time of a Content clone over a Metadata clone.
    let clone_reps = env_usize("BENCH_CLONE_REPS", if full() { 1 } else { 3 });
    let (mut content, mut metadata) = (Samples::default(), Samples::default());
    for rep in 0..clone_reps {
        for (verify, samples) in [
            (Verification::Metadata, &mut metadata),
            (Verification::Content, &mut content),
        ] {
            let target = format!("clones/{rep}-{verify:?}");
            let (wall, cpu, result) = in_process(initialize_clone(
                clone_config(&parent.store, checkpoint.id, &target, verify),
                |_| {},
            ))
            .await;
            result.expect("clone");
            samples.push(wall, cpu);
            Database::new(parent.store.clone(), &target, ADMIN_TIMEOUT)
                .delete_database()
                .await
                .expect("delete clone");
            sync();
        }
    }

    let mib = bytes as f64 / MIB as f64;
    let single_wall = Stats::of(&single.wall).median;
    let single_cpu = Stats::of(&single.cpu).median;
    let per_core_base = mib / single_cpu;
    let row = |name: &str, s: &Samples, note: &str| {
        let wall = Stats::of(&s.wall);
        let cpu = Stats::of(&s.cpu).median;
        let per_core = mib / cpu;
        println!(
            "| {name} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {note} |",
            wall.ms(),
            mib / wall.median,
            cpu,
            cpu / wall.median,
            per_core,
            per_core / per_core_base,
        );
    };
    println!("### Content verification throughput (library, `file://` store)\n");
    println!(
        "Checkpoint of a {label} parent: {} objects, {} ({} SST blocks), page cache warm; {} repetitions, \
         order rotated; median (min–max) wall ms. CPU = user + system seconds (median) from `getrusage` \
         (this process, or the waited-for children). \"Per core\" = MiB per CPU second; the ratio is \
         against single-process `sha256sum` (GNU coreutils). `nproc` = {jobs}; the engine hashes/walks \
         up to 8 objects at once on a {jobs}-worker tokio runtime.\n",
        objects.len(),
        human_bytes(bytes),
        blocks,
        reps
    );
    println!("| method | wall ms | MiB/s (wall) | CPU s | cores busy | MiB per CPU-s | per-core ratio vs `sha256sum` | note |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    row("`sha256sum` (1 process)", &single, "baseline");
    row(
        &format!("`xargs -0 -n1 -P{jobs} sha256sum`"),
        &multi,
        "multi-threaded baseline",
    );
    row(
        "`fingerprint(id, true)`",
        &fp,
        "= Content verification of the checkpoint: each object read once, sha256 + CRC of every SST block",
    );
    row(
        "`fingerprint(id, false)`",
        &metadata_fp,
        "metadata digest only (listings, no content read)",
    );
    let extra = Samples {
        wall: content
            .wall
            .iter()
            .zip(&metadata.wall)
            .map(|(c, m)| (c - m).max(1e-6))
            .collect(),
        cpu: content
            .cpu
            .iter()
            .zip(&metadata.cpu)
            .map(|(c, m)| (c - m).max(1e-6))
            .collect(),
    };
    row(
        "clone `Content` − clone `Metadata`",
        &extra,
        &format!("the clone's Content step (reads what the clone pins once); {clone_reps} pairs",),
    );
    println!();

    let content_per_core = mib / Stats::of(&fp.cpu).median;
    let ratio = content_per_core / per_core_base;
    let multi_wall = Stats::of(&multi.wall).median;
    let both_wall = Stats::of(&fp.wall).median;
    println!(
        "- **Goal: Content verification ≥ 0.8× `sha256sum` per core — {}.** Measured on {} ({}): `fingerprint(id, true)` {:.0} MiB per CPU-s vs `sha256sum` {:.0} = {:.2}×. Wall: {:.0} MiB/s vs {:.0} MiB/s single-process ({:.2}×) and {:.0} MiB/s with {jobs} processes ({:.2}×).",
        verdict(ratio >= 0.8),
        label,
        human_bytes(bytes),
        content_per_core,
        per_core_base,
        ratio,
        mib / both_wall,
        mib / single_wall,
        single_wall / both_wall,
        mib / multi_wall,
        multi_wall / both_wall,
    );
    println!();
    drop(parent);
    crc_walk_vs_sst_size().await;
}

fn main() {
    start_watchdog(if full() { 2400 } else { 900 });
    runtime().block_on(run());
}
