//! Custom resource types of the `slatedb.io/v1alpha1` API. Types only: no I/O lives here.

mod checkpoint;
mod clone;
mod common;
pub mod conditions;
mod copy;
mod schedule;
pub mod store;

pub use checkpoint::*;
pub use clone::*;
pub use common::*;
pub use copy::*;
pub use schedule::*;
pub use store::{DatabaseStore, DatabaseStoreSpec, DatabaseStoreStatus};

#[cfg(test)]
mod tests;
