//! The bounded pool that runs clone work off the reconcile loop: one job per object uid, at
//! most `clone_concurrency` at once, each ending with an outcome even if it panics, and none
//! left hanging: every store and SlateDB call of a clone is bounded, so a job that reports no
//! progress for much longer than that is stopped and reported as a transient failure (the retry
//! resumes from what the store holds). A finished job wakes its object's controller at once, so
//! the clone turns Ready when its work ends, not at its next progress requeue.

use super::decide::Work;
use crate::api::DatabaseClone;
use crate::controller::Problem;
use crate::engine::{initialize_clone, CloneConfig, CloneProgress, CloneReport, Fault};
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::FutureExt;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Clone work in flight, keyed by object uid, bounded by a semaphore.
pub struct ClonePool {
    slots: Arc<Semaphore>,
    jobs: Mutex<HashMap<String, Job>>,
    /// How long a running job may go without reporting progress.
    stuck_after: Duration,
    /// The controllers to tell when a job finishes, by the namespace they watch (`None`: all).
    listeners: Arc<Mutex<Vec<Listener>>>,
}

type Listener = (Option<String>, UnboundedSender<ObjectRef<DatabaseClone>>);

/// What a job last reported, and when (`None` while it waits for a slot).
#[derive(Default)]
struct Reported {
    progress: Option<CloneProgress>,
    at: Option<Instant>,
}

struct Job {
    reported: Arc<Mutex<Reported>>,
    outcome: Arc<Mutex<Option<Result<CloneReport, Problem>>>>,
    handle: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClonePool {
    /// A pool of `concurrency` slots whose jobs are stopped after `stuck_after` without progress.
    pub fn new(concurrency: usize, stuck_after: Duration) -> ClonePool {
        ClonePool {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            jobs: Mutex::default(),
            stuck_after,
            listeners: Arc::default(),
        }
    }

    /// The objects whose jobs finish from now on, in `namespace` (or all), for their
    /// controller's `reconcile_on`.
    pub fn finished_jobs(
        &self,
        namespace: Option<&str>,
    ) -> UnboundedReceiver<ObjectRef<DatabaseClone>> {
        let (sender, receiver) = unbounded();
        lock(&self.listeners).push((namespace.map(String::from), sender));
        receiver
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        lock(&self.jobs)
    }

    /// What the job of `uid` is doing, without blocking on it. A job silent for longer than
    /// `stuck_after` is stopped and reported as a transient failure.
    pub(super) fn observe(&self, uid: &str) -> Option<Work> {
        let mut jobs = self.jobs();
        let job = jobs.get(uid)?;
        let finished = lock(&job.outcome).take();
        if let Some(outcome) = finished {
            jobs.remove(uid);
            return Some(Work::Finished(outcome));
        }
        let (progress, silent) = {
            let reported = lock(&job.reported);
            (
                reported.progress.clone(),
                reported.at.map(|at| at.elapsed()),
            )
        };
        if silent.is_some_and(|silent| silent > self.stuck_after) {
            let step = progress.as_ref().map_or("ResolveSource", |p| p.step.name());
            tracing::warn!(step, stuck_after = ?self.stuck_after, "clone work made no progress; stopping it");
            if let Some(job) = jobs.remove(uid) {
                job.handle.abort();
            }
            return Some(Work::Finished(Err(Problem {
                fault: Fault::Transient,
                reason: "CloneStuck".into(),
                message: format!(
                    "clone work made no progress for {}s at step {step}; it was stopped and \
                     resumes from what the store holds",
                    self.stuck_after.as_secs()
                ),
            })));
        }
        Some(Work::Running(progress))
    }

    pub(super) fn spawn(&self, uid: &str, object: ObjectRef<DatabaseClone>, config: CloneConfig) {
        let reported = Arc::new(Mutex::new(Reported::default()));
        let outcome = Arc::new(Mutex::new(None));
        let slots = self.slots.clone();
        let listeners = self.listeners.clone();
        let (reported_sink, outcome_sink) = (reported.clone(), outcome.clone());
        let handle = tokio::spawn(async move {
            let result = match slots.acquire_owned().await {
                Ok(_permit) => {
                    lock(&reported_sink).at = Some(Instant::now());
                    let work = initialize_clone(config, move |p| {
                        let mut reported = lock(&reported_sink);
                        reported.progress = Some(p);
                        reported.at = Some(Instant::now());
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
            *lock(&outcome_sink) = Some(result);
            let mut listeners = lock(&listeners);
            listeners.retain(|(_, sender)| !sender.is_closed());
            for (scope, sender) in listeners.iter() {
                if scope.is_none() || scope.as_deref() == object.namespace.as_deref() {
                    let _ = sender.unbounded_send(object.clone());
                }
            }
        });
        self.jobs().insert(
            uid.to_string(),
            Job {
                reported,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Sets its flag when dropped, as an aborted task drops its future.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn job(silent_for: Option<Duration>, dropped: &Arc<AtomicBool>) -> Job {
        let guard = Dropped(dropped.clone());
        Job {
            reported: Arc::new(Mutex::new(Reported {
                progress: None,
                at: silent_for.map(|d| Instant::now() - d),
            })),
            outcome: Arc::new(Mutex::new(None)),
            handle: tokio::spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            }),
        }
    }

    #[tokio::test]
    async fn a_silent_job_is_stopped_and_reported_while_waiting_or_talking_ones_are_not() {
        let pool = ClonePool::new(2, Duration::from_secs(1));
        let flags: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
        pool.jobs()
            .insert("stuck".into(), job(Some(Duration::from_secs(5)), &flags[0]));
        pool.jobs()
            .insert("busy".into(), job(Some(Duration::ZERO), &flags[1]));
        pool.jobs().insert("queued".into(), job(None, &flags[2]));

        match pool.observe("stuck") {
            Some(Work::Finished(Err(problem))) => {
                assert_eq!(problem.reason, "CloneStuck");
                assert_eq!(problem.fault, Fault::Transient);
            }
            other => panic!("{other:?}"),
        }
        assert!(pool.observe("stuck").is_none(), "the stuck job is gone");
        for _ in 0..100 {
            if flags[0].load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(flags[0].load(Ordering::SeqCst), "its task was aborted");
        assert_eq!(pool.observe("busy"), Some(Work::Running(None)));
        assert_eq!(
            pool.observe("queued"),
            Some(Work::Running(None)),
            "waiting for a slot is not stuck"
        );
        assert!(!flags[1].load(Ordering::SeqCst) && !flags[2].load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_finished_job_wakes_the_controller_of_its_namespace_only() {
        use futures::StreamExt;
        let pool = ClonePool::new(1, Duration::from_secs(60));
        let mut ours = pool.finished_jobs(Some("team-a"));
        let mut everyone = pool.finished_jobs(None);
        let mut others = pool.finished_jobs(Some("team-b"));
        let store = crate::engine::Store::open(&crate::engine::StoreConfig::with_options(
            "memory:///",
            &[],
        ))
        .unwrap();
        // A source that does not exist: the job ends at once, with a failure.
        let config = CloneConfig {
            store,
            source_path: "missing".into(),
            source_checkpoint: crate::engine::CloneSourceCheckpoint::Latest { name: "n".into() },
            key_range: None,
            target_path: "target".into(),
            verify: crate::engine::Verification::None,
            admin_timeout: Duration::from_secs(5),
            retry: crate::engine::RetryPolicy::default(),
            owner: None,
        };
        let object = ObjectRef::<DatabaseClone>::new("c1").within("team-a");
        pool.spawn("uid-1", object.clone(), config);
        let woken = tokio::time::timeout(Duration::from_secs(10), ours.next()).await;
        assert_eq!(woken.ok().flatten(), Some(object.clone()));
        assert_eq!(everyone.next().await, Some(object));
        assert!(matches!(
            pool.observe("uid-1"),
            Some(Work::Finished(Err(_)))
        ));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), others.next())
                .await
                .is_err(),
            "another namespace's controller was woken"
        );
    }
}
