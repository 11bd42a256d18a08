//! The crash-point test hook: [`crash_point`] exits the process where [`CRASH_POINT_ENV`] says,
//! to prove that a restart resumes instead of duplicating or losing work.

/// Test hook: names the point at which the process exits (`clone-<Step>` once that clone step is
/// reached, `after-checkpoint-create` right after a new checkpoint is written and before its
/// status is; `copy-transferred` once every object of a copy is settled, `copy-recorded` after
/// its commit record and before its manifest, `copy-committed` after the manifest;
/// `reencode-recorded` after a re-encode's first resume point, `reencode-rewritten` once every
/// row is written and flushed, `reencode-verified` after the read-back and before `done.json`,
/// `reencode-committed` after it).
pub const CRASH_POINT_ENV: &str = "SLATEDB_OPERATOR_CRASH_POINT";

/// The exit code of a crash point, so tests tell it from a real failure.
const CRASH_EXIT_CODE: i32 = 86;

/// Exits the process with code 86 when [`CRASH_POINT_ENV`] is `name`; does nothing otherwise.
pub fn crash_point(name: &str) {
    if std::env::var(CRASH_POINT_ENV).ok().as_deref() == Some(name) {
        tracing::warn!(crash_point = name, "crash point reached");
        std::process::exit(CRASH_EXIT_CODE);
    }
}
