//! Process-level test support for Raft3D: a harness that runs real `raft3d` processes, used by
//! the tests in `tests/` and by the `loadgen` benchmark binary.

pub mod linearizability;
pub mod netproxy;
pub mod seeded;
pub mod support;
