//! Drafting candidate answers for pairwise labelling: a model answers each prompt `k` times and
//! the answers go into the labels store's pair queue. It sits above the store (the store knows
//! nothing of models).

use anyhow::{Result, anyhow};
use serde_json::json;

use super::Workspace;

/// Generate `k` responses per record with a model and store them as candidates for pairwise
/// labelling. `on_progress(done, total)` is called after each record; return false to stop.
pub fn draft_candidates(
    ws: &mut Workspace,
    dataset: &str,
    model: &crate::model::LoadedModel,
    model_name: &str,
    k: usize,
    opts: &crate::generate::GenerateOptions,
    limit: Option<usize>,
    on_progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<usize> {
    let (v, table) = ws.load(dataset, None)?;
    let prompt_col = v.roles.prompt.clone().ok_or_else(|| anyhow!("dataset `{dataset}` has no prompt column; map one first"))?;
    let ids = table.ids()?;
    let n = limit.unwrap_or(ids.len()).min(ids.len());
    let mut made = 0;
    for (row, id) in ids.iter().enumerate().take(n) {
        let prompt = ws.source_text(&table, row, &format!("col:{prompt_col}"))?;
        let prompt_ids = model.tokenizer.prompt_ids(&prompt)?;
        let mut texts = Vec::with_capacity(k);
        for j in 0..k {
            let mut o = opts.clone();
            o.seed = opts.seed.wrapping_add((row * k + j) as u64);
            let g = crate::generate::generate(model, &prompt_ids, &o, &mut |_| true)?;
            texts.push(g.text.trim().to_string());
        }
        let params_ = json!({"temperature": opts.temperature, "top_p": opts.top_p, "top_k": opts.top_k, "max_new_tokens": opts.max_new_tokens, "seed": opts.seed});
        ws.add_candidates(dataset, id, model_name, &texts, &params_)?;
        made += texts.len();
        if !on_progress(row + 1, n) {
            break;
        }
    }
    Ok(made)
}
