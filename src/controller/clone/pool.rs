//! The pool that runs clone work (see [`crate::controller::work_pool`]).

use crate::api::DatabaseClone;
use crate::controller::work_pool::{WorkPool, WorkProgress};
use crate::engine::{CloneProgress, CloneReport};

/// Clone work in flight, keyed by object uid.
pub type ClonePool = WorkPool<DatabaseClone, CloneProgress, CloneReport>;

impl WorkProgress for CloneProgress {
    const FIRST_STEP: &'static str = "ResolveSource";

    fn step_name(&self) -> &'static str {
        self.step.name()
    }
}

/// A pool of `concurrency` clone slots whose jobs are stopped after `stuck_after` without progress.
pub fn clone_pool(concurrency: usize, stuck_after: std::time::Duration) -> ClonePool {
    ClonePool::new(
        "clone",
        "CloneStuck",
        concurrency,
        stuck_after,
        super::decide::FIRST_PROGRESS_AFTER,
        super::PROGRESS_INTERVAL,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_clone_job_names_its_step() {
        use super::*;
        use crate::engine::CloneStep;
        let progress = CloneProgress {
            step: CloneStep::CopyWal,
            objects_done: 0,
            objects_total: 0,
            bytes_done: 0,
            bytes_total: 0,
        };
        assert_eq!(progress.step_name(), "CopyWal");
        assert_eq!(CloneProgress::FIRST_STEP, CloneStep::ResolveSource.name());
    }
}
