//! The multi-host end-to-end tests, in one test binary: one link instead of one per file
//! (each links the whole node and client stack), and the tests, which mostly wait on
//! timers and networks, run two at a time.

mod common;

mod assignment_demos;
mod deploy_over_ssh;
mod network_faults;
mod offline_outbox;
mod real_nemesis;
mod real_partitions;
