//! Issue 6, benchmark 4 (library level, no cluster): checkpoints taken while a writer commits
//! continuously to a SlateDB database on a `file://` store. The same writer runs for a fixed time
//! without checkpoints (the baseline) and with a checkpoint every N ms through the engine's
//! checkpoint API (`Database::obtain_checkpoint`, behind `checkpoint create` and the operator),
//! phases alternated in the same run; reports commits/s, commit latency and checkpoint latency.
//!
//! Two writers, each measured with and without checkpoints: *durable* — `BENCH_WRITERS` (default
//! 32) concurrent tasks, each commit one ~1 KiB `put` awaited until durable
//! (`WriteHandle::await_durable`, so bounded by SlateDB's flush interval); *buffered* — one task
//! putting as fast as SlateDB accepts (`put` returns once the write is in the WAL buffer and the
//! memtable; bounded by CPU and SlateDB's backpressure). Each phase writes a fresh database.
//!
//! Knobs: `BENCH_PHASE_SECS` (default 10, 20 with `BENCH_FULL=1`), `BENCH_REPS` (phases of each
//! kind, default 3), `BENCH_CHECKPOINT_INTERVALS_MS` (default `1000,250`), `BENCH_WRITERS`,
//! `BENCH_DEADLINE_SECS`. Prints markdown on stdout, progress on stderr.

#[path = "common/mod.rs"]
mod common;

use common::*;
use slatedb::config::{PutOptions, Settings, WriteOptions};
use slatedb_operator::engine::Database;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The writer's settings: SlateDB's defaults, with small L0 SSTs so that memtable flushes (and so
/// the writer's own manifest updates, which race the checkpoints' manifest writes) happen within
/// a phase, and 64 MiB of unflushed data at most (default 1 GiB), so that the buffered writer is
/// held to the rate at which SlateDB really flushes instead of filling memory (and then the disk
/// at close).
fn writer_settings() -> Settings {
    Settings {
        l0_sst_size_bytes: 4 * MIB as usize,
        max_unflushed_bytes: 64 * MIB as usize,
        // No compactor runs in this process (SlateDB 0.18 runs it only when asked to): with the
        // default `l0_max_ssts` (8) the writer would stall for good after 8 L0 SSTs.
        compactor_options: None,
        l0_max_ssts: 1_000_000,
        ..Default::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Durable,
    Buffered,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Durable => "durable",
            Mode::Buffered => "buffered",
        }
    }
}

struct Phase {
    mode: Mode,
    /// Checkpoint interval; `None` for the baseline.
    interval: Option<Duration>,
    commits: u64,
    secs: f64,
    /// Commit latencies in seconds, sorted.
    latencies: Vec<f64>,
    /// Checkpoint latencies in seconds, sorted.
    checkpoints: Vec<f64>,
    checkpoint_errors: u64,
    cpu_secs: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run_phase(
    store: &slatedb_operator::engine::Store,
    path: &str,
    interval: Option<Duration>,
    secs: f64,
    mode: Mode,
    writers: usize,
) -> Phase {
    let writers = match mode {
        Mode::Durable => writers,
        Mode::Buffered => 1,
    };
    let db = Arc::new(
        slatedb::Db::builder(path, store.main.clone())
            .with_settings(writer_settings())
            .build()
            .await
            .expect("open the writer's database"),
    );
    // Warm-up: one durable commit, so the first manifest and WAL exist before the clock starts.
    db.put(b"warm-up", b"1")
        .await
        .expect("put")
        .await_durable()
        .await
        .expect("durable");

    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = self_cpu();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (db, stop) = (db.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift::new(0x51ed_2701 ^ ((w as u64 + 1) * 0x9e37_79b9));
            let mut value = vec![0u8; VALUE_BYTES];
            let mut latencies = Vec::with_capacity(4096);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rng.fill(&mut value);
                let key = format!("w{w:02}-{i:010}");
                let t = Instant::now();
                let handle = db
                    .put_with_options(
                        key.as_bytes(),
                        &value,
                        &PutOptions::default(),
                        &WriteOptions::default(),
                    )
                    .await
                    .expect("put");
                if mode == Mode::Durable {
                    handle.await_durable().await.expect("await durable");
                }
                // (end, latency) relative to the phase start: only commits that end within the
                // phase count, so a put held by backpressure past the end is not stretched in.
                latencies.push((
                    t.duration_since(started).as_secs_f64() + t.elapsed().as_secs_f64(),
                    t.elapsed().as_secs_f64(),
                ));
                i += 1;
            }
            latencies
        }));
    }

    let checkpointer = interval.map(|every| {
        let database = Database::new(store.clone(), path, ADMIN_TIMEOUT);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate: start one interval in
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut k = 0u64;
            loop {
                ticker.tick().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                // A new name each time, so every call creates (the operator's names are unique
                // per DatabaseCheckpoint object).
                match database
                    .obtain_checkpoint(&format!("bench-{k}"), Some(Duration::from_secs(3600)))
                    .await
                {
                    Ok(_) => latencies.push(t.elapsed().as_secs_f64()),
                    Err(e) => {
                        errors += 1;
                        eprintln!("checkpoint_under_load: checkpoint failed: {e}");
                    }
                }
                k += 1;
            }
            (latencies, errors)
        })
    });

    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let cpu_secs = self_cpu() - cpu0;
    let mut ended = Vec::new();
    for task in tasks {
        ended.extend(task.await.expect("writer task"));
    }
    let tail_secs = started.elapsed().as_secs_f64() - secs;
    let mut latencies: Vec<f64> = ended
        .iter()
        .filter(|(end, _)| *end <= secs)
        .map(|(_, latency)| *latency)
        .collect();
    // A commit still blocked at the end counts with the latency it had reached by then.
    let blocked = ended.iter().filter(|(end, _)| *end > secs).count();
    latencies.extend(std::iter::repeat_n(tail_secs.max(0.0), blocked));
    let commits = (latencies.len() - blocked) as u64;
    let elapsed = secs;
    let (mut checkpoints, checkpoint_errors) = match checkpointer {
        Some(task) => task.await.expect("checkpoint task"),
        None => (Vec::new(), 0),
    };
    db.close().await.expect("close");
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    checkpoints.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Phase {
        mode,
        interval,
        commits,
        secs: elapsed,
        latencies,
        checkpoints,
        checkpoint_errors,
        cpu_secs,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    start_watchdog(3600);
    let secs = env_usize("BENCH_PHASE_SECS", if full() { 20 } else { 10 }) as f64;
    let reps = env_usize("BENCH_REPS", 3).max(1);
    let writers = env_usize("BENCH_WRITERS", 32).max(1);
    let intervals: Vec<Duration> = std::env::var("BENCH_CHECKPOINT_INTERVALS_MS")
        .unwrap_or_else(|_| "1000,250".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .map(Duration::from_millis)
        .collect();
    let rt = runtime();
    let dir = tempfile::Builder::new()
        .prefix("slatedb-bench-ckpt-")
        .tempdir()
        .expect("tempdir");
    let store = file_store(dir.path());
    let modes = [Mode::Durable, Mode::Buffered];

    // Rotate the order every repetition: baseline, each interval, …
    let kinds: Vec<Option<Duration>> = std::iter::once(None)
        .chain(intervals.iter().copied().map(Some))
        .collect();
    let mut phases: Vec<Phase> = Vec::new();
    rt.block_on(async {
        let mut k = 0;
        for rep in 0..reps {
            for mode in modes {
                for j in 0..kinds.len() {
                    let interval = kinds[(j + rep) % kinds.len()];
                    let path = format!("db-{k}");
                    k += 1;
                    eprintln!(
                        "checkpoint_under_load: rep {rep}: {} writer, {} for {secs} s",
                        mode.label(),
                        match interval {
                            None => "no checkpoints".to_string(),
                            Some(d) => format!("a checkpoint every {} ms", d.as_millis()),
                        }
                    );
                    let phase = run_phase(&store, &path, interval, secs, mode, writers).await;
                    eprintln!(
                        "checkpoint_under_load:   {} commits ({:.0}/s), {} checkpoints",
                        phase.commits,
                        phase.commits as f64 / phase.secs,
                        phase.checkpoints.len()
                    );
                    phases.push(phase);
                    // Bounds the disk used: the buffered writer writes hundreds of MiB a phase.
                    let _ = std::fs::remove_dir_all(dir.path().join(&path));
                    sync();
                }
            }
        }
    });

    let settings = writer_settings();
    println!("### Checkpoint under write load (library, `file://` store)\n");
    println!(
        "Two writers commit ~{VALUE_BYTES}-byte values for {secs:.0} s per phase: **durable** — {writers} tasks, a commit = `put` + \
         `await_durable` (bounded by SlateDB's flush interval, {:?}); **buffered** — one task, a commit = `put` \
         returning once the write is in SlateDB's WAL buffer and memtable (bounded by CPU and SlateDB's backpressure). \
         SlateDB defaults except `l0_sst_size_bytes` = {} so that the writer flushes L0 SSTs, and so updates its \
         manifest, during a phase, and `max_unflushed_bytes` = {} so that the buffered writer is held to the rate \
         SlateDB flushes at (no compactor, `l0_max_ssts` {}: nothing runs compaction here, and with the default 8 the writer stalls for good). With checkpoints, one task calls `Database::obtain_checkpoint` (probe + \
         list + `create_detached_checkpoint` + list, the call behind `slatedb-operator checkpoint create` and the \
         operator) with a new name every interval, one at a time, while the writer runs. {reps} phases of each kind per \
         writer, order rotated, a fresh database per phase; commits/s is the median over phases (min–max), latencies \
         are pooled over phases. Ratios are against the no-checkpoint phases of the same writer in the same run. \
         CPU = this process (writer, checkpoints and SlateDB's background tasks).\n",
        settings.flush_interval,
        human_bytes(settings.l0_sst_size_bytes as u64),
        human_bytes(settings.max_unflushed_bytes as u64),
        settings.l0_max_ssts,
    );
    println!("| writer | checkpoints | phases | commits/s | vs baseline | commit p50 ms | commit p99 ms | p99 vs baseline | CPU ms per 1 000 commits | checkpoints taken | checkpoint p50 ms | checkpoint p99 ms | checkpoint max ms | failed |");
    println!("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut verdicts = Vec::new();
    for mode in modes {
        let mut base_rate = f64::NAN;
        let mut base_p99 = f64::NAN;
        for kind in &kinds {
            let group: Vec<&Phase> = phases
                .iter()
                .filter(|p| p.interval == *kind && p.mode == mode)
                .collect();
            let mut rates: Vec<f64> = group.iter().map(|p| p.commits as f64 / p.secs).collect();
            let rate = median(&mut rates);
            let (min, max) = (rates[0], rates[rates.len() - 1]);
            let mut lat: Vec<f64> = group.iter().flat_map(|p| p.latencies.clone()).collect();
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let mut cps: Vec<f64> = group.iter().flat_map(|p| p.checkpoints.clone()).collect();
            cps.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let errors: u64 = group.iter().map(|p| p.checkpoint_errors).sum();
            let commits: u64 = group.iter().map(|p| p.commits).sum();
            let cpu: f64 = group.iter().map(|p| p.cpu_secs).sum();
            let p99 = percentile(&lat, 0.99);
            if kind.is_none() {
                base_rate = rate;
                base_p99 = p99;
            }
            let label = match kind {
                None => "none (baseline)".to_string(),
                Some(d) => format!("every {} ms", d.as_millis()),
            };
            let (cp50, cp99, cpmax) = if cps.is_empty() {
                ("–".to_string(), "–".to_string(), "–".to_string())
            } else {
                (
                    format!("{:.1}", percentile(&cps, 0.5) * 1e3),
                    format!("{:.1}", percentile(&cps, 0.99) * 1e3),
                    format!("{:.1}", cps[cps.len() - 1] * 1e3),
                )
            };
            println!(
                "| {} | {label} | {} | {:.0} ({:.0}–{:.0}) | {:.3} | {:.3} | {:.3} | {:.2} | {:.1} | {} | {cp50} | {cp99} | {cpmax} | {errors} |",
                mode.label(),
                group.len(),
                rate,
                min,
                max,
                rate / base_rate,
                percentile(&lat, 0.5) * 1e3,
                p99 * 1e3,
                p99 / base_p99,
                cpu / commits as f64 * 1e6,
                cps.len(),
            );
            if let Some(d) = kind {
                verdicts.push(format!(
                    "- {} writer, a checkpoint every {} ms: throughput {:.3}× the baseline ({rate:.0} vs {base_rate:.0} commits/s), commit p99 {:.2}×; checkpoint latency p50 {cp50} ms, p99 {cp99} ms ({} taken, {errors} failed).",
                    mode.label(),
                    d.as_millis(),
                    rate / base_rate,
                    p99 / base_p99,
                    cps.len()
                ));
            }
        }
    }
    println!();
    for v in verdicts {
        println!("{v}");
    }
    println!();
}
