//! Training: one runner (`runner.rs`) for every method, each method in one file holding its
//! config and its trainer (`sft`, `reward`, `dpo`, `ppo`, `grpo`, `distill`), and what they share:
//! the job file (`spec`), the method interface (`method`), AdamW, schedules and gradient
//! accumulation (`optim`), the losses as their papers state them (`losses`), rule rewards
//! (`rewards`), the memory pre-flight (`preflight`), the job queue (`queue`) and health alerts
//! (`health`).

pub mod distill;
pub mod dpo;
pub mod grpo;
pub mod health;
pub mod losses;
pub mod method;
pub mod optim;
pub mod ppo;
pub mod preflight;
pub mod queue;
pub mod reward;
pub mod rewards;
pub mod runner;
pub mod sft;
pub mod spec;

pub use queue::{JobQueue, QueueEvent, spawn_queue};
pub use runner::{HookFactory, JobHandle, RunOptions, StepHook, spawn};
pub use spec::{JobSpec, Method, TrainSpec};
