//! The bounded pool that runs long object work (clones, copies) off the reconcile loop: one job
//! per object uid, at most `concurrency` at once, each ending with an outcome even if it panics,
//! and none left hanging: every store and SlateDB call of the work is bounded, so a job that
//! reports no progress for much longer than that is stopped and reported as a transient failure
//! (the retry resumes from what the store holds). A finished job wakes its object's controller at
//! once, so the object turns Ready when its work ends, not at its next progress requeue.

use crate::controller::Problem;
use crate::engine::{EngineError, Fault};
use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::FutureExt;
use kube::runtime::reflector::ObjectRef;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

/// The progress a kind's work reports, as the pool needs it for its messages.
pub trait WorkProgress: Clone + Send + 'static {
    /// The step named while the work has reported no progress yet.
    const FIRST_STEP: &'static str;
    fn step_name(&self) -> &'static str;
}

/// What one reconcile sees of an object's job.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed<P, R> {
    /// Running (or waiting for a slot), with the progress it last reported.
    Running(Option<P>),
    Finished(Result<R, Problem>),
}

/// Where a job reports its progress.
pub type ProgressSink<P> = Box<dyn Fn(P) + Send + Sync>;

/// Work in flight, keyed by object uid, bounded by a semaphore.
pub struct WorkPool<K: kube::Resource, P, R> {
    /// What the work is, for messages ("clone").
    noun: &'static str,
    /// Reason of a job stopped for making no progress.
    stuck_reason: &'static str,
    slots: Arc<Semaphore>,
    concurrency: usize,
    jobs: Mutex<HashMap<String, Job<P, R>>>,
    /// How long a running job may go without reporting progress.
    stuck_after: Duration,
    /// How long a job runs before its progress is first handed out for its object's status.
    publish_first_after: Duration,
    /// How often it is handed out after that.
    publish_every: Duration,
    /// The controllers to tell when a job finishes, by the namespace they watch (`None`: all).
    listeners: Arc<Mutex<Vec<Listener<K>>>>,
}

type Listener<K> = (Option<String>, UnboundedSender<ObjectRef<K>>);

/// What a job last reported, and when (`None` while it waits for a slot).
struct Reported<P> {
    progress: Option<P>,
    at: Option<Instant>,
    /// When the job got its slot.
    started: Option<Instant>,
    /// When its progress last went to a reconcile for the status.
    published: Option<Instant>,
}

struct Job<P, R> {
    reported: Arc<Mutex<Reported<P>>>,
    outcome: Arc<Mutex<Option<Result<R, Problem>>>>,
    /// Notified once the outcome is in.
    finished: Arc<Notify>,
    handle: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K, P, R> WorkPool<K, P, R>
where
    K: kube::Resource + 'static,
    K::DynamicType: Clone + Send + Sync,
    P: WorkProgress,
    R: Send + 'static,
{
    /// A pool of `concurrency` slots whose jobs are stopped after `stuck_after` without progress
    /// and publish their progress `publish_first_after` after they start, then at most every
    /// `publish_every` (both stretched by the number of jobs per slot); `noun` names the work in messages and `stuck_reason` is the reason of a
    /// stopped job.
    pub fn new(
        noun: &'static str,
        stuck_reason: &'static str,
        concurrency: usize,
        stuck_after: Duration,
        publish_first_after: Duration,
        publish_every: Duration,
    ) -> Self {
        WorkPool {
            noun,
            stuck_reason,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            concurrency: concurrency.max(1),
            jobs: Mutex::default(),
            stuck_after,
            publish_first_after,
            publish_every,
            listeners: Arc::default(),
        }
    }

    /// The objects whose jobs finish from now on, in `namespace` (or all), for their
    /// controller's `reconcile_on`.
    pub fn finished_jobs(&self, namespace: Option<&str>) -> UnboundedReceiver<ObjectRef<K>> {
        let (sender, receiver) = unbounded();
        lock(&self.listeners).push((namespace.map(String::from), sender));
        receiver
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job<P, R>>> {
        lock(&self.jobs)
    }

    /// What the job of `uid` is doing, without blocking on it. A job silent for longer than
    /// `stuck_after` is stopped and reported as a transient failure. Its progress is handed out
    /// `publish_first_after` after it started and then at most once per `publish_every`, both
    /// times the jobs per slot (rounded up), else `Running(None)`: each status write of progress
    /// brings a reconcile of its own, which would publish the next report at once, and most work
    /// is done before the first is due.
    pub fn observe(&self, uid: &str) -> Option<Observed<P, R>> {
        let mut jobs = self.jobs();
        let job = jobs.get(uid)?;
        let finished = lock(&job.outcome).take();
        if let Some(outcome) = finished {
            jobs.remove(uid);
            return Some(Observed::Finished(outcome));
        }
        let (progress, step, silent) = {
            let mut reported = lock(&job.reported);
            let now = Instant::now();
            // More jobs than slots: each publishes less often, so that a burst's progress writes
            // grow with its duration, not with its size.
            let crowding = jobs.len().div_ceil(self.concurrency).max(1) as u32;
            let publish_at = match (reported.published, reported.started) {
                (Some(published), _) => Some(published + self.publish_every * crowding),
                (None, Some(started)) => Some(started + self.publish_first_after * crowding),
                (None, None) => None,
            };
            let due = publish_at.is_some_and(|at| at <= now);
            let progress = reported.progress.clone().filter(|_| due);
            if progress.is_some() {
                reported.published = Some(now);
            }
            let step = reported
                .progress
                .as_ref()
                .map_or(P::FIRST_STEP, P::step_name);
            (progress, step, reported.at.map(|at| at.elapsed()))
        };
        if silent.is_some_and(|silent| silent > self.stuck_after) {
            let noun = self.noun;
            tracing::warn!(noun, step, stuck_after = ?self.stuck_after, "work made no progress; stopping it");
            if let Some(job) = jobs.remove(uid) {
                job.handle.abort();
            }
            return Some(Observed::Finished(Err(Problem {
                fault: Fault::Transient,
                reason: self.stuck_reason.into(),
                message: format!(
                    "{noun} work made no progress for {}s at step {step}; it was stopped and \
                     resumes from what the store holds",
                    self.stuck_after.as_secs()
                ),
            })));
        }
        Some(Observed::Running(progress))
    }

    /// Runs `work` for the object of `uid` once a slot is free; it reports progress to the sink
    /// it is given.
    pub fn spawn<W, F>(&self, uid: &str, object: ObjectRef<K>, work: W)
    where
        W: FnOnce(ProgressSink<P>) -> F + Send + 'static,
        F: Future<Output = Result<R, EngineError>> + Send + 'static,
    {
        let reported = Arc::new(Mutex::new(Reported {
            progress: None,
            at: None,
            started: None,
            published: None,
        }));
        let outcome = Arc::new(Mutex::new(None));
        let finished = Arc::new(Notify::new());
        let finished_sink = finished.clone();
        let slots = self.slots.clone();
        let listeners = self.listeners.clone();
        let noun = self.noun;
        let (reported_sink, outcome_sink) = (reported.clone(), outcome.clone());
        let handle = tokio::spawn(async move {
            let result = match slots.acquire_owned().await {
                Ok(_permit) => {
                    {
                        let mut reported = lock(&reported_sink);
                        let now = Instant::now();
                        reported.at = Some(now);
                        reported.started = Some(now);
                    }
                    let sink: ProgressSink<P> = Box::new(move |p| {
                        let mut reported = lock(&reported_sink);
                        reported.progress = Some(p);
                        reported.at = Some(Instant::now());
                    });
                    // A panic (a bug, ours or a library's) must still end the job with an outcome.
                    match std::panic::AssertUnwindSafe(work(sink))
                        .catch_unwind()
                        .await
                    {
                        Ok(result) => result.map_err(|e| Problem::from(&e)),
                        Err(panic) => Err(Problem {
                            fault: Fault::Permanent,
                            reason: "InternalError".into(),
                            message: format!(
                                "{noun} work panicked: {}; please report this",
                                panic_message(panic.as_ref())
                            ),
                        }),
                    }
                }
                Err(_) => Err(Problem {
                    fault: Fault::Transient,
                    reason: "ShuttingDown".into(),
                    message: format!("the {noun} pool is closed"),
                }),
            };
            *lock(&outcome_sink) = Some(result);
            finished_sink.notify_one();
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
                finished,
                handle,
            },
        );
    }

    /// Whether the job of `uid` has its outcome, waiting for it up to `limit` (the outcome stays for
    /// [`Self::observe`]); `false` when there is no such job.
    pub async fn finished_within(&self, uid: &str, limit: Duration) -> bool {
        let Some((outcome, finished)) = self
            .jobs()
            .get(uid)
            .map(|job| (job.outcome.clone(), job.finished.clone()))
        else {
            return false;
        };
        // An outcome set after this look stores the notification for the wait below.
        if lock(&outcome).is_some() {
            return true;
        }
        tokio::time::timeout(limit, finished.notified())
            .await
            .is_ok()
    }

    /// Stops the job of `uid`, if any; the work must be safe to cancel at any await.
    pub fn cancel(&self, uid: &str) {
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
    use crate::api::DatabaseClone;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone, Debug, PartialEq)]
    struct Step;

    impl WorkProgress for Step {
        const FIRST_STEP: &'static str = "Start";
        fn step_name(&self) -> &'static str {
            "Step"
        }
    }

    type Pool = WorkPool<DatabaseClone, Step, ()>;

    /// A pool of clone jobs: `slots` at once, stuck after `stuck_after`, publishing progress
    /// `first` after the start and then every `every`.
    fn clone_pool(slots: usize, stuck_after: Duration, first: Duration, every: Duration) -> Pool {
        Pool::new("clone", "CloneStuck", slots, stuck_after, first, every)
    }

    /// Sets its flag when dropped, as an aborted task drops its future.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn job(silent_for: Option<Duration>, dropped: &Arc<AtomicBool>) -> Job<Step, ()> {
        let guard = Dropped(dropped.clone());
        Job {
            reported: Arc::new(Mutex::new(Reported {
                progress: None,
                at: silent_for.map(|d| Instant::now() - d),
                started: None,
                published: None,
            })),
            outcome: Arc::new(Mutex::new(None)),
            finished: Arc::default(),
            handle: tokio::spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            }),
        }
    }

    #[tokio::test]
    async fn a_silent_job_is_stopped_and_reported_while_waiting_or_talking_ones_are_not() {
        let pool = clone_pool(2, Duration::from_secs(1), Duration::ZERO, Duration::ZERO);
        let flags: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
        pool.jobs()
            .insert("stuck".into(), job(Some(Duration::from_secs(5)), &flags[0]));
        pool.jobs()
            .insert("busy".into(), job(Some(Duration::ZERO), &flags[1]));
        pool.jobs().insert("queued".into(), job(None, &flags[2]));

        match pool.observe("stuck") {
            Some(Observed::Finished(Err(problem))) => {
                assert_eq!(problem.reason, "CloneStuck");
                assert_eq!(problem.fault, Fault::Transient);
                assert!(problem.message.contains("at step Start"), "{problem:?}");
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
        assert_eq!(pool.observe("busy"), Some(Observed::Running(None)));
        assert_eq!(
            pool.observe("queued"),
            Some(Observed::Running(None)),
            "waiting for a slot is not stuck"
        );
        assert!(!flags[1].load(Ordering::SeqCst) && !flags[2].load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_stuck_job_names_the_step_it_reported_even_when_none_was_published() {
        let pool = clone_pool(
            1,
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        let dropped = Arc::default();
        let stuck = job(Some(Duration::from_secs(5)), &dropped);
        lock(&stuck.reported).progress = Some(Step);
        pool.jobs().insert("stuck".into(), stuck);
        match pool.observe("stuck") {
            Some(Observed::Finished(Err(problem))) => {
                assert!(problem.message.contains("at step Step"), "{problem:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// When, from now, `observe` handed out the progress of `uid`'s job, looking every 10 ms for
    /// `window`.
    async fn handed_out_within(pool: &Pool, uid: &str, window: Duration) -> Vec<Duration> {
        let started = Instant::now();
        let mut handed_out = Vec::new();
        while started.elapsed() < window {
            if let Some(Observed::Running(Some(Step))) = pool.observe(uid) {
                handed_out.push(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handed_out
    }

    #[tokio::test]
    async fn progress_is_handed_out_a_while_after_the_start_and_then_once_per_interval() {
        let every = Duration::from_millis(300);
        let pool = clone_pool(1, Duration::from_secs(60), every * 2, every);
        let (go_on, wait) = tokio::sync::oneshot::channel::<()>();
        pool.spawn(
            "uid-1",
            ObjectRef::new("c1").within("ns"),
            |report| async move {
                report(Step);
                let _ = wait.await;
                Ok(())
            },
        );
        let handed_out = handed_out_within(&pool, "uid-1", every * 4 + every / 2).await;
        let _ = go_on.send(());
        assert_eq!(handed_out.len(), 3, "{handed_out:?}");
        assert!(
            handed_out[0] >= every,
            "not before one interval: {handed_out:?}"
        );
        for pair in handed_out.windows(2) {
            assert!(pair[1] - pair[0] >= every, "{handed_out:?}");
        }
    }

    #[tokio::test]
    async fn with_more_jobs_than_slots_progress_is_handed_out_less_often() {
        let every = Duration::from_millis(100);
        let pool = clone_pool(1, Duration::from_secs(60), every, every);
        let mut waits = Vec::new();
        for uid in ["running", "queued-1", "queued-2"] {
            let (go_on, wait) = tokio::sync::oneshot::channel::<()>();
            waits.push(go_on);
            pool.spawn(uid, ObjectRef::new(uid).within("ns"), |report| async move {
                report(Step);
                let _ = wait.await;
                Ok(())
            });
        }
        let handed_out = handed_out_within(&pool, "running", every * 7 + every / 2).await;
        drop(waits);
        // Three jobs on one slot: every interval is three.
        assert_eq!(handed_out.len(), 2, "{handed_out:?}");
        assert!(handed_out[0] >= every * 3, "{handed_out:?}");
        assert!(handed_out[1] - handed_out[0] >= every * 3, "{handed_out:?}");
    }

    #[tokio::test]
    async fn a_wait_for_the_outcome_ends_when_it_comes_or_at_its_limit_and_leaves_it() {
        let pool = clone_pool(1, Duration::from_secs(60), Duration::ZERO, Duration::ZERO);
        let (go_on, wait) = tokio::sync::oneshot::channel::<()>();
        pool.spawn("uid-1", ObjectRef::new("c1").within("ns"), |_| async move {
            let _ = wait.await;
            Ok(())
        });
        assert!(
            !pool
                .finished_within("uid-1", Duration::from_millis(50))
                .await
        );
        assert!(!pool.finished_within("no-such-job", Duration::ZERO).await);
        let waiting = pool.finished_within("uid-1", Duration::from_secs(30));
        let _ = go_on.send(());
        assert!(waiting.await);
        // Already in: no wait at all.
        assert!(pool.finished_within("uid-1", Duration::ZERO).await);
        assert_eq!(pool.observe("uid-1"), Some(Observed::Finished(Ok(()))));
    }

    #[tokio::test]
    async fn a_finished_job_wakes_the_controller_of_its_namespace_only() {
        use futures::StreamExt;
        let pool = clone_pool(1, Duration::from_secs(60), Duration::ZERO, Duration::ZERO);
        let mut ours = pool.finished_jobs(Some("team-a"));
        let mut everyone = pool.finished_jobs(None);
        let mut others = pool.finished_jobs(Some("team-b"));
        let object = ObjectRef::<DatabaseClone>::new("c1").within("team-a");
        pool.spawn("uid-1", object.clone(), |report| async move {
            report(Step);
            Err(EngineError::StoreConfig("no such source".into()))
        });
        let woken = tokio::time::timeout(Duration::from_secs(10), ours.next()).await;
        assert_eq!(woken.ok().flatten(), Some(object.clone()));
        assert_eq!(everyone.next().await, Some(object));
        assert!(matches!(
            pool.observe("uid-1"),
            Some(Observed::Finished(Err(_)))
        ));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), others.next())
                .await
                .is_err(),
            "another namespace's controller was woken"
        );
    }

    #[tokio::test]
    async fn a_panicking_job_ends_with_an_internal_error() {
        let pool = Pool::new(
            "copy",
            "CopyStuck",
            1,
            Duration::from_secs(60),
            Duration::ZERO,
            Duration::ZERO,
        );
        let mut finished = pool.finished_jobs(None);
        pool.spawn("uid-1", ObjectRef::new("c1").within("ns"), |_| async move {
            if "a bug".len() == 5 {
                panic!("a bug");
            }
            Ok(())
        });
        futures::StreamExt::next(&mut finished).await;
        match pool.observe("uid-1") {
            Some(Observed::Finished(Err(problem))) => {
                assert_eq!(problem.reason, "InternalError");
                assert!(problem.message.contains("copy work panicked: a bug"));
            }
            other => panic!("{other:?}"),
        }
    }
}
