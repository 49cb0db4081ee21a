//! Suites scored while a model trains: the `[eval_suite]` of a job, as a `train::StepHook`, so
//! the suite's accuracy curve appears next to the loss. Start jobs through [`spawn`] or
//! [`options`] (the CLI and the workbench do) so jobs that name a suite get their hook.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;

use super::score::quick_scores;
use super::spec::{Item, SuiteSpec, load_items};
use crate::model::LoadedModel;
use crate::train::{HookFactory, JobHandle, JobSpec, RunOptions, StepHook};

/// An evaluation suite scored every `every` steps and at the end.
pub struct SuiteHook {
    every: usize,
    suite: SuiteSpec,
    items: Vec<Item>,
}

impl StepHook for SuiteHook {
    fn due(&self, step: usize, last: bool) -> bool {
        last || step.is_multiple_of(self.every)
    }

    fn run(&mut self, model: &LoadedModel) -> Result<BTreeMap<String, f64>> {
        quick_scores(&self.suite, &self.items, model)
    }
}

/// The hooks `spec` asks for.
pub fn hooks_for(spec: &JobSpec) -> Result<Vec<Box<dyn StepHook>>> {
    let Some(h) = &spec.eval_suite else { return Ok(Vec::new()) };
    let suite = SuiteSpec::from_file(&h.suite)?;
    let (items, _) = load_items(&suite)?;
    Ok(vec![Box::new(SuiteHook { every: h.every.max(1), suite, items })])
}

/// The hook factory for `RunOptions::hooks`.
pub fn hook_factory() -> HookFactory {
    Arc::new(hooks_for)
}

/// `opts` with the evaluation hooks attached.
pub fn options(mut opts: RunOptions) -> RunOptions {
    opts.hooks = Some(hook_factory());
    opts
}

/// Start a job with its evaluation hooks.
pub fn spawn(spec: JobSpec, opts: RunOptions) -> JobHandle {
    crate::train::spawn(spec, options(opts))
}
