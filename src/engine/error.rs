//! Engine errors, classified as transient (retry with backoff) or permanent (needs the user).

use std::time::Duration;

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Timeouts, throttling, 5xx, lost compare-and-swap races: retry with backoff.
    Transient,
    /// Bad input, missing data, rejected credentials, corruption: retrying cannot help.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid object-store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unknown object-store option {key:?} for a {scheme} store")]
    UnknownOption { key: String, scheme: &'static str },
    #[error("object-store configuration rejected: {0}")]
    StoreConfig(String),
    #[error("{operation} did not finish within {after:?}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },
    #[error("the object store refused access to {path:?}: {detail}")]
    AccessDenied { path: String, detail: String },
    #[error("object store error during {operation}: {source}")]
    Store {
        operation: &'static str,
        #[source]
        source: object_store::Error,
    },
    #[error("no SlateDB database at {path:?} (no manifest found)")]
    NotADatabase { path: String },
    #[error("the SlateDB database at {path:?} is not initialized (an unfinished clone)")]
    Uninitialized { path: String },
    #[error("no initialized SlateDB database at {path:?} after waiting {waited:?}; last seen: {last_seen}")]
    NotReadyInTime {
        path: String,
        waited: Duration,
        last_seen: String,
    },
    #[error("checkpoint {selector} does not exist in the database at {path:?}")]
    CheckpointMissing { path: String, selector: String },
    #[error(
        "{count} checkpoints named {name:?} exist in the database at {path:?}; adopt one by id"
    )]
    CheckpointAmbiguous {
        path: String,
        name: String,
        count: usize,
    },
    #[error("the clone target {path:?} already holds {holds}; refusing to overwrite it")]
    TargetNotEmpty { path: String, holds: String },
    #[error(
        "the target {path:?} belongs to {owner}; this object will not write to it or delete it. \
         Choose another spec.target.path"
    )]
    TargetOwned { path: String, owner: String },
    #[error("{count} objects remain under {path:?} after deleting it, e.g. {example}")]
    Leftover {
        path: String,
        count: usize,
        example: String,
    },
    #[error(
        "refusing to write the manifest of the database at {path:?}: its manifest {manifest} holds \
         {field} = {detail}, which this build of the operator (SlateDB 0.18) cannot carry over into \
         the manifest it would write; nothing was written. Upgrade the operator to a release whose \
         SlateDB knows this field"
    )]
    ManifestNotPreserved {
        path: String,
        manifest: String,
        field: String,
        detail: String,
    },
    #[error(
        "the database at {path:?} lost data it needs: {missing} is gone; its rows cannot all be \
         read. Restore the object, or delete this clone and make it again"
    )]
    DataMissing { path: String, missing: String },
    #[error("{object} is corrupt: {detail}")]
    Corrupt { object: String, detail: String },
    #[error(
        "the copy target {path:?} was written by something other than a copy ({detail}); a copy \
         never overwrites it. Choose another target, or delete it first"
    )]
    Diverged { path: String, detail: String },
    #[error(
        "the copy target {path:?} already holds a copy of a newer state (manifest {target_manifest}) \
         than the checkpoint being copied (manifest {source_manifest}); copy a newer checkpoint, or \
         to another target"
    )]
    TargetNewer {
        path: String,
        target_manifest: u64,
        source_manifest: u64,
    },
    #[error("the database at {path:?} cannot be copied: {reason}")]
    CopySourceUnsupported { path: String, reason: String },
    #[error("{}", checksum_mismatch(path, objects, *rounds))]
    ChecksumMismatch {
        path: String,
        /// Each object's target path, with what was wrong with it (for a re-encode, which writes
        /// rows rather than objects: what differs between the rows' digests).
        objects: Vec<String>,
        /// Retransmissions of each object before giving up (0 for a re-encode).
        rounds: u32,
    },
    #[error("SlateDB {operation} failed: {source}")]
    SlateDb {
        operation: &'static str,
        #[source]
        source: slatedb::Error,
    },
}

impl EngineError {
    pub fn fault(&self) -> Fault {
        match self {
            EngineError::Timeout { .. } | EngineError::NotReadyInTime { .. } => Fault::Transient,
            EngineError::Store { source, .. } => store_fault(source),
            EngineError::SlateDb { source, .. } => slatedb_fault(source),
            EngineError::InvalidUrl { .. }
            | EngineError::UnknownOption { .. }
            | EngineError::StoreConfig(_)
            | EngineError::AccessDenied { .. }
            | EngineError::NotADatabase { .. }
            | EngineError::Uninitialized { .. }
            | EngineError::CheckpointMissing { .. }
            | EngineError::CheckpointAmbiguous { .. }
            | EngineError::TargetNotEmpty { .. }
            | EngineError::Corrupt { .. }
            | EngineError::ManifestNotPreserved { .. }
            | EngineError::TargetOwned { .. }
            | EngineError::DataMissing { .. }
            | EngineError::Diverged { .. }
            | EngineError::TargetNewer { .. }
            | EngineError::CopySourceUnsupported { .. }
            | EngineError::ChecksumMismatch { .. } => Fault::Permanent,
            EngineError::Leftover { .. } => Fault::Transient,
        }
    }

    /// A one-word CamelCase reason for Kubernetes conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            EngineError::InvalidUrl { .. } => "InvalidStoreUrl",
            EngineError::UnknownOption { .. } => "UnknownStoreOption",
            EngineError::StoreConfig(_) => "InvalidStoreConfig",
            EngineError::Timeout { .. } => "StoreTimeout",
            EngineError::AccessDenied { .. } => "CredentialsRejected",
            EngineError::Store { source, .. } if is_access_denied(source) => "CredentialsRejected",
            EngineError::Store { .. } => "StoreUnavailable",
            EngineError::NotADatabase { .. } => "NotADatabase",
            EngineError::Uninitialized { .. } => "DatabaseUninitialized",
            EngineError::NotReadyInTime { .. } => "NotReadyInTime",
            EngineError::CheckpointMissing { .. } => "CheckpointMissing",
            EngineError::CheckpointAmbiguous { .. } => "CheckpointAmbiguous",
            EngineError::Corrupt { .. } => "ChecksumMismatch",
            EngineError::ManifestNotPreserved { .. } => "ManifestNotPreserved",
            EngineError::TargetNotEmpty { .. } => "TargetNotEmpty",
            EngineError::TargetOwned { .. } => "TargetOwned",
            EngineError::DataMissing { .. } => "SourceDataMissing",
            EngineError::Leftover { .. } => "CleanupIncomplete",
            EngineError::Diverged { .. } => "Diverged",
            EngineError::TargetNewer { .. } => "TargetHasNewerCopy",
            EngineError::CopySourceUnsupported { .. } => "CopySourceUnsupported",
            EngineError::ChecksumMismatch { .. } => "ChecksumMismatch",
            EngineError::SlateDb { source, .. } => match slatedb_fault(source) {
                Fault::Transient => "StoreUnavailable",
                Fault::Permanent => "SlateDbError",
            },
        }
    }
}

fn checksum_mismatch(path: &str, objects: &[String], rounds: u32) -> String {
    if rounds == 0 {
        format!("{path:?} differs from its source: {}", objects.join(", "))
    } else {
        format!(
            "{} objects copied to {path:?} still differ from the source after {rounds} \
             retransmissions: {}",
            objects.len(),
            objects.join(", ")
        )
    }
}

/// Whether the store rejected the credentials. object_store reports a 403 from some requests (a
/// LIST, for one) only as a generic error with the HTTP status in its text.
pub(crate) fn is_access_denied(error: &object_store::Error) -> bool {
    use object_store::Error as E;
    match error {
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => true,
        E::Generic { .. } => {
            let text = error.to_string();
            [
                "403 Forbidden",
                "401 Unauthorized",
                "SignatureDoesNotMatch",
                "InvalidAccessKeyId",
                "AccessDenied",
            ]
            .iter()
            .any(|marker| text.contains(marker))
        }
        _ => false,
    }
}

fn store_fault(error: &object_store::Error) -> Fault {
    use object_store::Error as E;
    if is_access_denied(error) {
        return Fault::Permanent;
    }
    match error {
        E::NotFound { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => Fault::Permanent,
        _ => Fault::Transient,
    }
}

/// SlateDB's public error has only a coarse kind; the specific cause is in the message (its
/// `SlateDBError` is private), so the permanent `Data` causes are told apart by their text.
fn slatedb_fault(error: &slatedb::Error) -> Fault {
    use slatedb::ErrorKind;
    match error.kind() {
        ErrorKind::Unavailable | ErrorKind::Transaction => Fault::Transient,
        ErrorKind::Data => {
            let message = error.to_string();
            if message.contains("version already exists") {
                Fault::Transient // lost a manifest compare-and-swap race
            } else {
                Fault::Permanent
            }
        }
        _ => Fault::Permanent,
    }
}

/// Maps a SlateDB error to the most specific engine error its message allows.
pub(crate) fn from_slatedb(
    operation: &'static str,
    path: &str,
    error: slatedb::Error,
) -> EngineError {
    let message = error.to_string();
    if message.contains("failed to find latest transactional object") {
        EngineError::NotADatabase {
            path: path.to_string(),
        }
    } else if message.contains("invalid DB state") {
        EngineError::Uninitialized {
            path: path.to_string(),
        }
    } else if message.contains("checksum mismatch") {
        EngineError::Corrupt {
            object: path.to_string(),
            detail: message,
        }
    } else if message.contains("checkpoint missing") {
        EngineError::CheckpointMissing {
            path: path.to_string(),
            selector: message,
        }
    } else {
        EngineError::SlateDb {
            operation,
            source: error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_store_errors_are_classified() {
        let denied = object_store::Error::PermissionDenied {
            path: "p".into(),
            source: "403".into(),
        };
        assert_eq!(store_fault(&denied), Fault::Permanent);
        let generic = object_store::Error::Generic {
            store: "S3",
            source: "503 Slow Down".into(),
        };
        assert_eq!(store_fault(&generic), Fault::Transient);
        let timeout = EngineError::Timeout {
            operation: "list_checkpoints",
            after: Duration::from_secs(1),
        };
        assert_eq!(timeout.fault(), Fault::Transient);
        assert_eq!(timeout.reason(), "StoreTimeout");
        assert_eq!(
            EngineError::NotADatabase { path: "x".into() }.fault(),
            Fault::Permanent
        );
    }
}
