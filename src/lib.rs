//! slatedb-operator: declarative copy-on-write checkpoints and clones of SlateDB databases.

pub mod api;
pub mod controller;
pub mod copy_command;
pub mod crds;
pub mod engine;
pub mod offline_commands;
pub mod plugin;
