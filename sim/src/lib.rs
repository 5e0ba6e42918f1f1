//! Chorus under deterministic simulation.
//!
//! The real node code (gRPC services, runtime, transport, SQLite storage) runs inside madsim,
//! where one seed fixes every scheduling, network and fault decision. A nemesis injects
//! crashes, power losses, partitions, loss and delay; clients record a history of what
//! they did and saw; checkers judge it. The checkers are plain functions over histories
//! and are unit-tested in ordinary builds; everything that runs a cluster needs
//! `--cfg madsim`.

pub mod check;
pub mod disk;
pub mod history;
pub mod observer;
pub mod workload;

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod nemesis;
#[cfg(madsim)]
pub mod scenario;
