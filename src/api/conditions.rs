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
/// Whether a checkpoint holds every write its database had made durable when it was taken.
pub const INCLUDES_DURABLE_WRITES: &str = "IncludesDurableWrites";
/// The object is being deleted, but others depend on its data, which stays until they go;
/// present only while true.
pub const DELETION_BLOCKED: &str = "DeletionBlocked";
/// The object has expired, but others depend on its data, which stays until they go; present
/// only while true.
pub const EXPIRY_BLOCKED: &str = "ExpiryBlocked";

/// Reasons several kinds use.
pub mod reason {
    pub const SUCCEEDED: &str = "Succeeded";
    pub const EXPIRED: &str = "Expired";
    pub const NOT_EXPIRED: &str = "NotExpired";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const INVALID_SECRET: &str = "InvalidSecret";
    /// Others hold checkpoints of the object's data (see `DeletionBlocked`, `ExpiryBlocked`).
    pub const DEPENDENTS_EXIST: &str = "DependentsExist";
    /// The DatabaseStore an object names does not exist.
    pub const STORE_NOT_FOUND: &str = "StoreNotFound";
    /// The store does not allow this use: not this namespace or path, or an inline store the
    /// operator's policy refuses.
    pub const STORE_NOT_ALLOWED: &str = "StoreNotAllowed";
    /// A DatabaseStore's configuration cannot be used as it is.
    pub const INVALID_STORE: &str = "InvalidStore";
    /// An object the data needs is gone from the store.
    pub const SOURCE_DATA_MISSING: &str = "SourceDataMissing";
}
