//! Examples as token ids: each conversation formatted with the model's chat template (or as
//! plain prompt + response + EOS when it has none), the response tokens marked as targets
//! (configurable), truncated to `max_seq_len`. Every method that trains on text encodes it
//! here, and so does the reward model's input, wherever it is scored.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::text::chat_template::Message;
use crate::text::tokenizer::Tokenizer;

/// One training example: a conversation whose assistant turns are the targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub messages: Vec<Message>,
}

impl SftExample {
    pub fn from_pair(system: Option<&str>, prompt: &str, response: &str) -> Self {
        let mut messages = Vec::new();
        if let Some(s) = system.filter(|s| !s.is_empty()) {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", prompt));
        messages.push(Message::new("assistant", response));
        Self { messages }
    }
}

/// Token ids and the per-token loss mask (true = this token is a training target).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub target: Vec<bool>,
}

/// Encode an example. With a chat template, every assistant message's tokens (including the
/// template's end-of-turn marker) are targets; without one, the example is
/// `prompt + response + eos` with the response and EOS as targets. `train_on_prompt` makes every
/// token a target.
pub fn encode(tok: &Tokenizer, ex: &SftExample, max_seq_len: usize, train_on_prompt: bool, eos: Option<u32>) -> Result<Encoded> {
    if ex.messages.is_empty() {
        bail!("example has no messages");
    }
    if !ex.messages.iter().any(|m| m.role == "assistant") {
        bail!("example has no assistant message to learn from");
    }
    let mut ids = Vec::new();
    let mut target = Vec::new();
    match &tok.chat_template {
        Some(t) => {
            // Render growing prefixes: the text an assistant turn adds is its target span.
            let mut prev_text = String::new();
            for (i, m) in ex.messages.iter().enumerate() {
                let is_asst = m.role == "assistant";
                if is_asst {
                    // The generation prompt ("<|im_start|>assistant\n") is context, not target.
                    let with_prompt = t.render(&ex.messages[..i], true)?;
                    push_text(tok, &mut ids, &mut target, &prev_text, &with_prompt, train_on_prompt)?;
                    prev_text = with_prompt;
                }
                let upto = t.render(&ex.messages[..=i], false)?;
                push_text(tok, &mut ids, &mut target, &prev_text, &upto, is_asst || train_on_prompt)?;
                prev_text = upto;
            }
        }
        None => {
            let mut prompt = String::new();
            for m in &ex.messages[..ex.messages.len() - 1] {
                prompt.push_str(&m.content);
                prompt.push('\n');
            }
            let last = ex.messages.last().unwrap();
            let p = tok.encode(&prompt, true)?;
            target.extend(std::iter::repeat_n(train_on_prompt, p.len()));
            ids.extend(p);
            let r = tok.encode(&last.content, false)?;
            target.extend(std::iter::repeat_n(true, r.len()));
            ids.extend(r);
            if let Some(e) = eos {
                ids.push(e);
                target.push(true);
            }
        }
    }
    ids.truncate(max_seq_len);
    target.truncate(max_seq_len);
    Ok(Encoded { ids, target })
}

/// Append the tokens of `full[prev.len()..]`. Tokenising the increment on its own matches
/// tokenising the whole text when templates put special tokens at the joins (as chat
/// templates do).
fn push_text(tok: &Tokenizer, ids: &mut Vec<u32>, target: &mut Vec<bool>, prev: &str, full: &str, is_target: bool) -> Result<()> {
    let Some(new) = full.strip_prefix(prev) else {
        bail!("the chat template does not render conversations incrementally; cannot locate assistant turns");
    };
    if new.is_empty() {
        return Ok(());
    }
    let t = tok.encode(new, false)?;
    target.extend(std::iter::repeat_n(is_target, t.len()));
    ids.extend(t);
    Ok(())
}

/// A reward model's input for `prompt` and `response`: the whole conversation as the chat
/// template renders it (user turn, assistant turn, end-of-turn marker), or `prompt\nresponse
/// EOS` without a template. Training, PPO, GRPO and evaluation all score this same text.
pub fn reward_input(tok: &Tokenizer, prompt: &str, response: &str, max_seq_len: usize) -> Result<Vec<u32>> {
    let eos = tok.eos_id();
    Ok(encode(tok, &SftExample::from_pair(None, prompt, response), max_seq_len, false, eos)?.ids)
}
