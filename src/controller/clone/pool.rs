//! The bounded pool that runs clone work off the reconcile loop: one job per object uid, at
//! most `clone_concurrency` at once, each ending with an outcome even if it panics.

use super::decide::Work;
use crate::controller::Problem;
use crate::engine::{initialize_clone, CloneConfig, CloneProgress, CloneReport, Fault};
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Clone work in flight, keyed by object uid, bounded by a semaphore.
pub struct ClonePool {
    slots: Arc<Semaphore>,
    jobs: Mutex<HashMap<String, Job>>,
}

struct Job {
    progress: Arc<Mutex<Option<CloneProgress>>>,
    outcome: Arc<Mutex<Option<Result<CloneReport, Problem>>>>,
    handle: JoinHandle<()>,
}

impl ClonePool {
    pub fn new(concurrency: usize) -> ClonePool {
        ClonePool {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            jobs: Mutex::default(),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What the job of `uid` is doing, without blocking on it.
    pub(super) fn observe(&self, uid: &str) -> Option<Work> {
        let mut jobs = self.jobs();
        let job = jobs.get(uid)?;
        let outcome = job.outcome.lock().unwrap_or_else(|e| e.into_inner()).take();
        match outcome {
            Some(outcome) => {
                jobs.remove(uid);
                Some(Work::Finished(outcome))
            }
            None => Some(Work::Running(
                job.progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            )),
        }
    }

    pub(super) fn spawn(&self, uid: &str, config: CloneConfig) {
        let progress = Arc::new(Mutex::new(None));
        let outcome = Arc::new(Mutex::new(None));
        let slots = self.slots.clone();
        let (progress_sink, outcome_sink) = (progress.clone(), outcome.clone());
        let handle = tokio::spawn(async move {
            let result = match slots.acquire_owned().await {
                Ok(_permit) => {
                    let work = initialize_clone(config, move |p| {
                        *progress_sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
                    });
                    // A panic (a bug, ours or a library's) must still end the job with an outcome.
                    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
                        Ok(result) => result.map_err(|e| Problem::from(&e)),
                        Err(panic) => Err(Problem {
                            fault: Fault::Permanent,
                            reason: "InternalError".into(),
                            message: format!(
                                "clone work panicked: {}; please report this",
                                panic_message(panic.as_ref())
                            ),
                        }),
                    }
                }
                Err(_) => Err(Problem {
                    fault: Fault::Transient,
                    reason: "ShuttingDown".into(),
                    message: "the clone pool is closed".into(),
                }),
            };
            *outcome_sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
        });
        self.jobs().insert(
            uid.to_string(),
            Job {
                progress,
                outcome,
                handle,
            },
        );
    }

    /// Stops the job of `uid`, if any; every clone step is safe to cancel.
    pub(super) fn cancel(&self, uid: &str) {
        if let Some(job) = self.jobs().remove(uid) {
            job.handle.abort();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.jobs().len()
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}
