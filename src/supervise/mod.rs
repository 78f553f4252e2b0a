//! Supervision: the units the agent keeps running, the one owner of `waitpid` (the
//! reaper), each unit's recent output, and the agent's logger.
//!
//! This layer knows nothing of what the units do: the agent defines them and owns the
//! [`Supervisor`], which starts, stops and restarts them by name while it runs.

pub mod log;
pub mod output;
pub mod reaper;
mod stamp;
mod supervisor;
mod unit;

pub use reaper::{Reaper, Scope};
pub use supervisor::{SuperviseError, Supervisor};
pub use unit::{Backoff, StopSignal, TaskResult, Unit, UnitError, UnitState};
