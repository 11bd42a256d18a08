//! Custom resource types of the `slatedb.io/v1alpha1` API. Types only: no I/O lives here.

mod checkpoint;
mod clone;
mod common;

pub use checkpoint::*;
pub use clone::*;
pub use common::*;

/// The API group of every kind this operator serves.
pub const GROUP: &str = "slatedb.io";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";

#[cfg(test)]
mod tests;
