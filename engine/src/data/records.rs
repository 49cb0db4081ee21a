//! Records from JSONL, JSON, CSV/TSV and Parquet files, as JSON objects, with errors that name
//! the file and the line or row. Records → training examples through the dataset's `Roles`.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use polars::prelude::*;

use serde_json::{Map, Value};

use super::import::Roles;
use crate::text::chat_template::Message;
use crate::text::sft::SftExample;

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
        let v: Value =
            serde_json::from_str(line).map_err(|e| anyhow!("{}:{}: invalid JSON at column {}: {e}", path.display(), i + 1, e.column()))?;
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
    let v: Value =
        serde_json::from_str(text).map_err(|e| anyhow!("{}:{}: invalid JSON at column {}: {e}", path.display(), e.line(), e.column()))?;
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

/// The roles in force for `records`: those set, the others guessed from the column names.
fn roles_for(records: &[Record], roles: &Roles, file: &str) -> Result<(Roles, Vec<String>)> {
    if records.is_empty() {
        bail!("{file}: no records");
    }
    let names: Vec<String> = records[0].keys().cloned().collect();
    let r = roles.guess_missing(&names);
    for role in super::import::ROLE_NAMES {
        if let Some(col) = roles.get(role)
            && !names.contains(col)
        {
            bail!("{file}: column `{col}` ({role}) not found (columns: {})", names.join(", "));
        }
    }
    Ok((r, names))
}

/// Turn records into SFT examples: a chat column, or prompt + response (a preference dataset's
/// `chosen` stands in for a missing response), with an optional system column.
pub fn sft_examples(records: &[Record], roles: &Roles, file: &Path) -> Result<Vec<SftExample>> {
    let f = file.display().to_string();
    let (c, names) = roles_for(records, roles, &f)?;
    let response = c.response.clone().or(c.chosen.clone());
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if let Some(col) = &c.messages {
                let v = r.get(col).ok_or_else(|| anyhow!("{f}: row {}: column `{col}` is empty", i + 1))?;
                return Ok(SftExample { messages: parse_messages(v, i, col, &f)? });
            }
            let (Some(p), Some(resp)) = (&c.prompt, &response) else {
                bail!(
                    "{f}: no prompt/response columns found (columns: {}); map them with prompt = \"…\", response = \"…\"",
                    names.join(", ")
                );
            };
            let system = c.system.as_ref().map(|s| text_field(r, s, i, &f).unwrap_or_default());
            Ok(SftExample::from_pair(system.as_deref(), &text_field(r, p, i, &f)?, &text_field(r, resp, i, &f)?))
        })
        .collect()
}

fn require_column(col: Option<String>, role: &str, names: &[String], file: &str) -> Result<String> {
    col.ok_or_else(|| anyhow!("{file}: no `{role}` column found (columns: {}); map it with {role} = \"…\"", names.join(", ")))
}

/// (prompt, chosen, rejected) triples for reward-model and DPO training.
pub fn preference_examples(records: &[Record], roles: &Roles, file: &Path) -> Result<Vec<(String, String, String)>> {
    let f = file.display().to_string();
    let (c, names) = roles_for(records, roles, &f)?;
    let p = require_column(c.prompt, "prompt", &names, &f)?;
    let ch = require_column(c.chosen, "chosen", &names, &f)?;
    let r = require_column(c.rejected, "rejected", &names, &f)?;
    records
        .iter()
        .enumerate()
        .map(|(i, rec)| Ok((text_field(rec, &p, i, &f)?, text_field(rec, &ch, i, &f)?, text_field(rec, &r, i, &f)?)))
        .collect()
}

/// (prompt, optional reference answer) pairs for RL (PPO, GRPO): the reference is the
/// `reference` role, else the response.
pub fn prompt_examples(records: &[Record], roles: &Roles, file: &Path) -> Result<Vec<(String, Option<String>)>> {
    let f = file.display().to_string();
    let (c, names) = roles_for(records, roles, &f)?;
    let p = require_column(c.prompt, "prompt", &names, &f)?;
    let reference = c.reference.or(c.response);
    records
        .iter()
        .enumerate()
        .map(|(i, rec)| {
            let r = match &reference {
                Some(col) => Some(text_field(rec, col, i, &f)?),
                None => None,
            };
            Ok((text_field(rec, &p, i, &f)?, r))
        })
        .collect()
}
