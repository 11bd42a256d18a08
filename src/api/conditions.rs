//! Condition types and the reasons every kind shares; kind-specific reasons live with their
//! controller.

/// Summary: a SlateDB application can open and read the data now.
pub const READY: &str = "Ready";
/// Transient: work in progress or retrying; present only while true.
pub const RECONCILING: &str = "Reconciling";
/// Permanent: needs the user; present only while true.
pub const STALLED: &str = "Stalled";
pub const INITIALIZED: &str = "Initialized";
pub const VERIFIED: &str = "Verified";
pub const EXPIRED: &str = "Expired";
pub const IN_USE: &str = "InUse";

/// Reasons several kinds use.
pub mod reason {
    pub const SUCCEEDED: &str = "Succeeded";
    pub const EXPIRED: &str = "Expired";
    pub const NOT_EXPIRED: &str = "NotExpired";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const INVALID_SECRET: &str = "InvalidSecret";
}
