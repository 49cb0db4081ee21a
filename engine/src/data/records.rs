//! Records from JSONL, JSON, CSV/TSV and Parquet files, as JSON objects, with errors that name
//! the file and the line or row. Column → role mapping for SFT examples.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::text::chat_template::Message;
use crate::train::sft::SftExample;

pub type Record = Map<String, Value>;

/// Read every record of a data file; the format comes from the extension.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    if !path.exists() {
        bail!("{}: dataset not found", path.display());
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => read_jsonl(path),
        "json" => read_json(path),
        "csv" => read_table(path, b','),
        "tsv" => read_table(path, b'\t'),
        "parquet" => read_parquet(path),
        other => bail!("{}: unknown data format `.{other}` (expected .jsonl, .json, .csv, .tsv or .parquet)", path.display()),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
    parse_jsonl(&text, path)
}

/// Records of JSON Lines text; errors name `path` and the line.
pub(crate) fn parse_jsonl(text: &str, path: &Path) -> Result<Vec<Record>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}:{}: invalid JSON at column {}: {e}", path.display(), i + 1, e.column()))?;
        match v {
            Value::Object(o) => out.push(o),
            other => bail!("{}:{}: expected a JSON object, found {}", path.display(), i + 1, kind(&other)),
        }
    }
    Ok(out)
}

fn read_json(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
    parse_json(&text, path)
}

/// Records of a JSON array of objects; errors name `path` and the line.
pub(crate) fn parse_json(text: &str, path: &Path) -> Result<Vec<Record>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let v: Value = serde_json::from_str(text)
        .map_err(|e| anyhow!("{}:{}: invalid JSON at column {}: {e}", path.display(), e.line(), e.column()))?;
    let Value::Array(items) = v else { bail!("{}: expected a JSON array of objects", path.display()) };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(o) => Ok(o),
            other => Err(anyhow!("{}: item {}: expected an object, found {}", path.display(), i, kind(&other))),
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn frame_records(df: &DataFrame, path: &Path) -> Result<Vec<Record>> {
    let mut cols = Vec::new();
    for c in df.columns() {
        let s = c.cast(&DataType::String).map_err(|e| anyhow!("{}: column {:?}: {e}", path.display(), c.name()))?;
        cols.push((c.name().to_string(), s));
    }
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let mut r = Map::new();
        for (name, c) in &cols {
            let v = c.str().map_err(|e| anyhow!("{}: column {name:?}: {e}", path.display()))?.get(i);
            r.insert(name.clone(), v.map(|s| Value::String(s.to_string())).unwrap_or(Value::Null));
        }
        out.push(r);
    }
    Ok(out)
}

fn read_table(path: &Path, sep: u8) -> Result<Vec<Record>> {
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0)) // every column as text
        .map_parse_options(|o| o.with_separator(sep))
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .and_then(|r| r.finish())
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    frame_records(&df, path)
}

fn read_parquet(path: &Path) -> Result<Vec<Record>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let df = ParquetReader::new(f).finish().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    frame_records(&df, path)
}

/// Which columns hold which role for SFT.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftColumns {
    pub prompt: Option<String>,
    pub response: Option<String>,
    pub system: Option<String>,
    /// A column holding a chat as a list of {role, content} (or a JSON string of one).
    pub messages: Option<String>,
    /// Preference data: the better and the worse response.
    pub chosen: Option<String>,
    pub rejected: Option<String>,
    /// RL data: the reference answer rule rewards compare against.
    pub reference: Option<String>,
}

const PROMPT_NAMES: [&str; 5] = ["prompt", "instruction", "question", "query", "input"];
const RESPONSE_NAMES: [&str; 5] = ["response", "completion", "output", "answer", "chosen"];

impl SftColumns {
    /// Fill unset roles from the column names present (instruction/question → prompt, …).
    pub fn guess(&self, columns: &[String]) -> Self {
        let find = |names: &[&str]| names.iter().find(|n| columns.iter().any(|c| c == *n)).map(|s| s.to_string());
        let mut c = self.clone();
        if c.messages.is_none() && c.prompt.is_none() && columns.iter().any(|x| x == "messages" || x == "conversations") {
            c.messages = Some(if columns.iter().any(|x| x == "messages") { "messages" } else { "conversations" }.into());
        }
        if c.messages.is_none() {
            c.prompt = c.prompt.or_else(|| find(&PROMPT_NAMES));
            c.response = c.response.or_else(|| find(&RESPONSE_NAMES));
            c.system = c.system.or_else(|| find(&["system"]));
        }
        c
    }
}

fn text_field(r: &Record, col: &str, row: usize, file: &str) -> Result<String> {
    match r.get(col) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Null) | None => bail!("{file}: row {}: column `{col}` is empty", row + 1),
        Some(other) => bail!("{file}: row {}: column `{col}` holds {}, expected text", row + 1, kind(other)),
    }
}

fn parse_messages(v: &Value, row: usize, col: &str, file: &str) -> Result<Vec<Message>> {
    let v = match v {
        Value::String(s) => serde_json::from_str(s).map_err(|e| anyhow!("{file}: row {}: column `{col}`: {e}", row + 1))?,
        other => other.clone(),
    };
    let Value::Array(items) = v else { bail!("{file}: row {}: column `{col}` is not a list of messages", row + 1) };
    items
        .iter()
        .map(|m| {
            // OpenAI {role, content} or ShareGPT {from, value}
            let role = m.get("role").or_else(|| m.get("from")).and_then(Value::as_str);
            let content = m.get("content").or_else(|| m.get("value")).and_then(Value::as_str);
            match (role, content) {
                (Some(r), Some(c)) => {
                    let role = match r {
                        "human" | "user" => "user",
                        "gpt" | "assistant" | "model" => "assistant",
                        "system" => "system",
                        other => other,
                    };
                    Ok(Message::new(role, c))
                }
                _ => Err(anyhow!("{file}: row {}: column `{col}`: a message needs role and content", row + 1)),
            }
        })
        .collect()
}

/// Turn records into SFT examples with the given (or guessed) column mapping.
pub fn sft_examples(records: &[Record], columns: &SftColumns, file: &Path) -> Result<Vec<SftExample>> {
    let f = file.display().to_string();
    let names: Vec<String> = records.first().map(|r| r.keys().cloned().collect()).unwrap_or_default();
    let c = columns.guess(&names);
    let check = |col: &Option<String>| -> Result<()> {
        if let Some(col) = col {
            if !names.contains(col) {
                bail!("{f}: column `{col}` not found (columns: {})", names.join(", "));
            }
        }
        Ok(())
    };
    check(&c.prompt)?;
    check(&c.response)?;
    check(&c.system)?;
    check(&c.messages)?;
    if records.is_empty() {
        bail!("{f}: no records");
    }
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if let Some(col) = &c.messages {
                let v = r.get(col).ok_or_else(|| anyhow!("{f}: row {}: column `{col}` is empty", i + 1))?;
                return Ok(SftExample { messages: parse_messages(v, i, col, &f)? });
            }
            let (Some(p), Some(resp)) = (&c.prompt, &c.response) else {
                bail!("{f}: no prompt/response columns found (columns: {}); map them with prompt = \"…\", response = \"…\"", names.join(", "));
            };
            let system = match &c.system {
                Some(s) => Some(text_field(r, s, i, &f).unwrap_or_default()),
                None => None,
            };
            Ok(SftExample::from_pair(system.as_deref(), &text_field(r, p, i, &f)?, &text_field(r, resp, i, &f)?))
        })
        .collect()
}

fn column<'a>(explicit: &'a Option<String>, names: &[String], guesses: &[&str]) -> Option<String> {
    explicit.clone().or_else(|| guesses.iter().find(|g| names.iter().any(|n| n == *g)).map(|s| s.to_string()))
}

fn require_column(col: Option<String>, role: &str, names: &[String], file: &str) -> Result<String> {
    let col = col.ok_or_else(|| anyhow!("{file}: no `{role}` column found (columns: {}); map it with {role} = \"…\"", names.join(", ")))?;
    if !names.contains(&col) {
        bail!("{file}: column `{col}` not found (columns: {})", names.join(", "));
    }
    Ok(col)
}

/// (prompt, chosen, rejected) triples for reward-model and DPO training.
pub fn preference_examples(records: &[Record], columns: &SftColumns, file: &Path) -> Result<Vec<(String, String, String)>> {
    let f = file.display().to_string();
    let names: Vec<String> = records.first().map(|r| r.keys().cloned().collect()).unwrap_or_default();
    if records.is_empty() {
        bail!("{f}: no records");
    }
    let p = require_column(column(&columns.prompt, &names, &PROMPT_NAMES), "prompt", &names, &f)?;
    let c = require_column(column(&columns.chosen, &names, &["chosen"]), "chosen", &names, &f)?;
    let r = require_column(column(&columns.rejected, &names, &["rejected"]), "rejected", &names, &f)?;
    records
        .iter()
        .enumerate()
        .map(|(i, rec)| Ok((text_field(rec, &p, i, &f)?, text_field(rec, &c, i, &f)?, text_field(rec, &r, i, &f)?)))
        .collect()
}

/// (prompt, optional reference answer) pairs for RL (PPO, GRPO).
pub fn prompt_examples(records: &[Record], columns: &SftColumns, file: &Path) -> Result<Vec<(String, Option<String>)>> {
    let f = file.display().to_string();
    let names: Vec<String> = records.first().map(|r| r.keys().cloned().collect()).unwrap_or_default();
    if records.is_empty() {
        bail!("{f}: no records");
    }
    let p = require_column(column(&columns.prompt, &names, &PROMPT_NAMES), "prompt", &names, &f)?;
    let reference = match column(&columns.reference, &names, &["reference", "answer", "solution", "response"]) {
        Some(c) => Some(require_column(Some(c), "reference", &names, &f)?),
        None => None,
    };
    records
        .iter()
        .enumerate()
        .map(|(i, rec)| {
            let r = match &reference {
                Some(c) => Some(text_field(rec, c, i, &f)?),
                None => None,
            };
            Ok((text_field(rec, &p, i, &f)?, r))
        })
        .collect()
}
