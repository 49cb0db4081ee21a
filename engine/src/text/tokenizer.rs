//! Tokenisation through the `tokenizers` crate: from an HF `tokenizer.json`, or built from a GGUF
//! file's `tokenizer.ggml.*` metadata (byte-level BPE with merges).

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::io::gguf::{GgufFile, Value as GValue};
use crate::text::chat_template::ChatTemplate;

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepend `bos_id` when encoding with special tokens (GGUF `add_bos_token`).
    add_bos: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub chat_template: Option<ChatTemplate>,
}

fn special_token(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// The tokenizer of a model: an HF folder or a GGUF file (`runs::tokenizer` also takes a run).
    pub fn load(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return Self::from_gguf(&GgufFile::open(path)?);
        }
        if path.join("tokenizer.json").exists() {
            return Self::from_hf_dir(path);
        }
        bail!("{}: no tokenizer here (expected an HF folder with tokenizer.json or a .gguf file)", path.display())
    }

    /// Load `tokenizer.json`, `tokenizer_config.json` and the chat template from an HF folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() {
            bail!(
                "{}: no tokenizer.json (Whetstone needs the fast-tokenizer file; save it with \
                 `AutoTokenizer.from_pretrained(...).save_pretrained(dir)`)",
                dir.display()
            );
        }
        let inner = tokenizers::Tokenizer::from_file(&tj).map_err(|e| anyhow!("{}: {e}", tj.display()))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc: Value = if tc_path.exists() {
            let text = std::fs::read_to_string(&tc_path).with_context(|| format!("{}: cannot read", tc_path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| anyhow!("{}: invalid JSON at line {}, column {}: {e}", tc_path.display(), e.line(), e.column()))?
        } else {
            json!({})
        };
        let jinja = dir.join("chat_template.jinja");
        let template_src = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja).with_context(|| format!("{}: cannot read", jinja.display()))?)
        } else {
            match tc.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: use "default".
                Some(Value::Array(a)) => a
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or(a.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => None,
            }
        };
        let bos_token = special_token(tc.get("bos_token"));
        let eos_token = special_token(tc.get("eos_token"));
        let pad_token = special_token(tc.get("pad_token"));
        let chat_template = match template_src {
            Some(src) => Some(ChatTemplate::new(&src, bos_token.clone(), eos_token.clone())?),
            None => None,
        };
        Ok(Self { inner, add_bos: false, bos_token, eos_token, pad_token, chat_template })
    }

    /// Build a byte-level BPE tokenizer from GGUF metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let p = g.path.display();
        let model = g.get_str("tokenizer.ggml.model").ok_or_else(|| anyhow!("{p}: no tokenizer.ggml.model"))?;
        if model != "gpt2" {
            bail!(
                "{p}: tokenizer model `{model}` is not supported from GGUF (supported: gpt2 byte-level BPE); \
                 use the model's HF folder with tokenizer.json instead"
            );
        }
        let strs = |key: &str| -> Result<Vec<String>> {
            g.get(key)
                .and_then(GValue::as_array)
                .ok_or_else(|| anyhow!("{p}: metadata `{key}` missing or not an array"))?
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| anyhow!("{p}: `{key}` holds a non-string")))
                .collect()
        };
        let tokens = strs("tokenizer.ggml.tokens")?;
        let merges = strs("tokenizer.ggml.merges")?;
        let types: Vec<u64> = g
            .get("tokenizer.ggml.token_type")
            .and_then(GValue::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let mut vocab = serde_json::Map::new();
        let mut added = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), json!(i));
            // 3 = control, 4 = user-defined: matched whole, never split by BPE.
            let ty = types.get(i).copied().unwrap_or(1);
            if ty == 3 || ty == 4 {
                added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == 3}));
            }
        }
        let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let byte_level =
            |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
        let pre_tokenizer = match pre {
            "default" | "gpt2" | "gpt-2" | "starcoder" | "refact" => byte_level(true),
            "smollm" | "deepseek-coder" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "llama-bpe" | "llama3" | "llama-v3" | "falcon3" => json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false)]}),
            "qwen2" => json!({"type": "Sequence", "pretokenizers": [
                split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
                byte_level(false)]}),
            other => bail!("{p}: pre-tokenizer `{other}` is not supported yet"),
        };
        let tj = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges}
        });
        let inner = tokenizers::Tokenizer::from_bytes(tj.to_string().as_bytes())
            .map_err(|e| anyhow!("{p}: cannot build tokenizer from metadata: {e}"))?;
        let name = |key: &str| g.get_u64(key).and_then(|id| tokens.get(id as usize)).cloned();
        let bos_token = name("tokenizer.ggml.bos_token_id");
        let eos_token = name("tokenizer.ggml.eos_token_id");
        let pad_token = name("tokenizer.ggml.padding_token_id");
        let add_bos = matches!(g.get("tokenizer.ggml.add_bos_token"), Some(GValue::Bool(true)));
        let chat_template = match g.get_str("tokenizer.chat_template") {
            Some(src) => Some(ChatTemplate::new(src, bos_token.clone(), eos_token.clone())?),
            None => None,
        };
        Ok(Self { inner, add_bos, bos_token, eos_token, pad_token, chat_template })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| anyhow!("tokenizer: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens
            && self.add_bos
            && let Some(b) = self.bos_id()
            && ids.first() != Some(&b)
        {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| anyhow!("tokenizer: {e}"))
    }

    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// Token ids of a single user turn ready for the model to answer: the chat template with a
    /// generation prompt when there is one, else the text and a newline.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        match &self.chat_template {
            Some(_) => Ok(self.apply_chat(&[crate::text::chat_template::Message::new("user", prompt)], true)?.1),
            None => self.encode(&format!("{prompt}\n"), true),
        }
    }

    /// Render a chat with the model's template and tokenise it (no extra special tokens, as
    /// transformers' `apply_chat_template(tokenize=True)` does).
    pub fn apply_chat(&self, messages: &[crate::text::chat_template::Message], add_generation_prompt: bool) -> Result<(String, Vec<u32>)> {
        let t = self.chat_template.as_ref().ok_or_else(|| anyhow!("this model has no chat template"))?;
        let text = t.render(messages, add_generation_prompt)?;
        let ids = self.encode(&text, false)?;
        Ok((text, ids))
    }

    /// Write `tokenizer.json`, `tokenizer_config.json` and (if any) `chat_template.jinja` into `dir`.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let mut inner = self.inner.clone();
        if self.add_bos
            && let (Some(b), Some(bid)) = (self.bos_token.clone(), self.bos_id())
        {
            let pp = tokenizers::processors::template::TemplateProcessing::builder()
                .try_single(format!("{b} $A"))
                .map_err(|e| anyhow!("{e}"))?
                .try_pair(format!("{b} $A {b} $B"))
                .map_err(|e| anyhow!("{e}"))?
                .special_tokens(vec![(b.clone(), bid)])
                .build()
                .map_err(|e| anyhow!("{e}"))?;
            inner.with_post_processor(Some(pp));
        }
        let tj = inner.to_string(true).map_err(|e| anyhow!("tokenizer: {e}"))?;
        crate::io::atomic_write(&dir.join("tokenizer.json"), tj.as_bytes())?;
        let mut tc = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": null,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000_000_000_000u64,
        });
        if let Some(t) = &self.chat_template {
            tc.as_object_mut().unwrap().insert("chat_template".into(), json!(t.source()));
        }
        crate::io::atomic_write(&dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc)?.as_bytes())?;
        Ok(())
    }
}
