//! Writing a dataset version out: JSONL, JSON, Parquet or CSV (from the extension), either
//! as stored (`raw`) or in the shapes other trainers read: TRL's prompt/completion, messages
//! and prompt/chosen/rejected, and DeepSpeed-Chat's `Human:`/`Assistant:` prompt shape.
//! Files are written atomically.

use std::io::{Cursor, Write};
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::import::Roles;
use super::records::Record;
use super::table::{ColumnKind, ID_COLUMN, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Shape {
    /// Every column as stored.
    #[default]
    Raw,
    /// TRL SFT: `messages` when the data is chat-shaped or has a system prompt, else `prompt`/`completion`.
    TrlSft,
    /// TRL preference: `prompt`/`chosen`/`rejected`.
    TrlPreference,
    /// DeepSpeed-Chat: `prompt` as "\n\nHuman: …\n\nAssistant:", and ` response`/` chosen`/` rejected`.
    DsChat,
}

impl std::str::FromStr for Shape {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "raw" => Shape::Raw,
            "trl-sft" | "trl" => Shape::TrlSft,
            "trl-preference" | "trl-pref" => Shape::TrlPreference,
            "ds-chat" | "deepspeed-chat" => Shape::DsChat,
            other => bail!("unknown export shape `{other}` (raw, trl-sft, trl-preference, ds-chat)"),
        })
    }
}

fn cell(t: &Table, row: usize, col: &str) -> Result<Value> {
    t.value(row, col)
}

fn text_of(t: &Table, row: usize, col: &Option<String>, role: &str) -> Result<String> {
    let col = col.as_ref().ok_or_else(|| anyhow!("this shape needs a `{role}` column; map one first"))?;
    match cell(t, row, col)? {
        Value::String(s) => Ok(s),
        Value::Null => Ok(String::new()),
        v => Ok(v.to_string()),
    }
}

/// The records of `table` in `shape`, rows in table order.
pub fn shaped_records(table: &Table, roles: &Roles, shape: Shape) -> Result<Vec<Record>> {
    let mut out = Vec::with_capacity(table.height());
    for row in 0..table.height() {
        let r = match shape {
            Shape::Raw => table.record(row)?,
            Shape::TrlSft => {
                let v = if let Some(m) = &roles.messages {
                    let msgs = match cell(table, row, m)? {
                        Value::String(s) => serde_json::from_str(&s).map_err(|e| anyhow!("row {}: column `{m}`: {e}", row + 1))?,
                        v => v,
                    };
                    json!({ "messages": normalise_messages(msgs) })
                } else if roles.system.is_some() {
                    let mut msgs = Vec::new();
                    let sys = text_of(table, row, &roles.system, "system")?;
                    if !sys.is_empty() {
                        msgs.push(json!({"role": "system", "content": sys}));
                    }
                    msgs.push(json!({"role": "user", "content": text_of(table, row, &roles.prompt, "prompt")?}));
                    msgs.push(json!({"role": "assistant", "content": text_of(table, row, &roles.response, "response")?}));
                    json!({ "messages": msgs })
                } else {
                    json!({
                        "prompt": text_of(table, row, &roles.prompt, "prompt")?,
                        "completion": text_of(table, row, &roles.response, "response")?,
                    })
                };
                v.as_object().cloned().unwrap()
            }
            Shape::TrlPreference => json!({
                "prompt": text_of(table, row, &roles.prompt, "prompt")?,
                "chosen": text_of(table, row, &roles.chosen, "chosen")?,
                "rejected": text_of(table, row, &roles.rejected, "rejected")?,
            })
            .as_object()
            .cloned()
            .unwrap(),
            Shape::DsChat => {
                let mut r = Record::new();
                let p = text_of(table, row, &roles.prompt, "prompt")?;
                r.insert("prompt".into(), Value::String(format!("\n\nHuman: {p}\n\nAssistant:")));
                for (role, col) in [("response", &roles.response), ("chosen", &roles.chosen), ("rejected", &roles.rejected)] {
                    if col.is_some() {
                        r.insert(role.into(), Value::String(format!(" {}", text_of(table, row, col, role)?)));
                    }
                }
                if r.len() == 1 {
                    bail!("ds-chat needs a response, or chosen and rejected columns");
                }
                r
            }
        };
        out.push(r);
    }
    Ok(out)
}

/// ShareGPT `{from, value}` turns become OpenAI `{role, content}`.
fn normalise_messages(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|m| {
                    let role = m.get("role").or_else(|| m.get("from")).and_then(Value::as_str).unwrap_or("user");
                    let role = match role {
                        "human" => "user",
                        "gpt" | "model" => "assistant",
                        r => r,
                    };
                    let content = m.get("content").or_else(|| m.get("value")).cloned().unwrap_or(Value::Null);
                    json!({"role": role, "content": content})
                })
                .collect(),
        ),
        other => other,
    }
}

/// A frame of the records: text columns stay text, other values get polars' inferred types.
pub fn records_to_frame(records: &[Record]) -> Result<DataFrame> {
    let all_text = records.iter().all(|r| r.values().all(|v| v.is_string() || v.is_null()));
    if all_text {
        let t = Table::from_records(records, None)?;
        return Ok(t.df.drop(ID_COLUMN)?);
    }
    let mut buf = Vec::new();
    for r in records {
        serde_json::to_writer(&mut buf, r)?;
        buf.push(b'\n');
    }
    JsonReader::new(Cursor::new(buf))
        .with_json_format(JsonFormat::JsonLines)
        .infer_schema_len(None)
        .finish()
        .map_err(|e| anyhow!("building a typed frame: {e}"))
}

/// Write `table` (optionally only rows whose `split` column equals `split`) to `out`.
pub fn export(table: &Table, roles: &Roles, shape: Shape, split: Option<&str>, out: &Path) -> Result<usize> {
    let table = match split {
        Some(s) => {
            let col = table.text("split").map_err(|_| anyhow!("this dataset version has no `split` column; run a split first"))?;
            let rows: Vec<usize> = col.iter().enumerate().filter(|(_, v)| *v == Some(s)).map(|(i, _)| i).collect();
            table.take(&rows)?
        }
        None => table.clone(),
    };
    let ext = out.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let n = table.height();
    // Fast path: raw text-only data goes straight from the frame.
    let raw_text = shape == Shape::Raw && table.columns.iter().all(|c| c.kind == ColumnKind::Text);
    match ext.as_str() {
        "jsonl" | "json" => {
            let records = shaped_records(&table, roles, shape)?;
            crate::io::atomic_write_with(out, |f| {
                let mut w = std::io::BufWriter::new(f);
                if ext == "json" {
                    serde_json::to_writer_pretty(&mut w, &records)?;
                    w.write_all(b"\n")?;
                } else {
                    for r in &records {
                        serde_json::to_writer(&mut w, r)?;
                        w.write_all(b"\n")?;
                    }
                }
                w.flush()?;
                Ok(())
            })?;
        }
        "parquet" | "csv" | "tsv" => {
            let mut df = if raw_text {
                table.df.drop(ID_COLUMN)?
            } else if shape == Shape::Raw && ext != "parquet" {
                // CSV holds text: JSON values stay JSON text.
                table.df.drop(ID_COLUMN)?
            } else {
                records_to_frame(&shaped_records(&table, roles, shape)?)?
            };
            if ext != "parquet" {
                for name in df.get_column_names_owned() {
                    let c = df.column(&name)?;
                    if !matches!(c.dtype(), DataType::String) {
                        bail!("column `{name}` holds nested values ({}); export as .jsonl or .parquet instead", c.dtype());
                    }
                }
            }
            crate::io::atomic_write_with(out, |f| {
                if ext == "parquet" {
                    ParquetWriter::new(f).finish(&mut df).map(|_| ()).map_err(|e| anyhow!("{e}"))
                } else {
                    CsvWriter::new(f)
                        .include_header(true)
                        .with_separator(if ext == "tsv" { b'\t' } else { b',' })
                        .finish(&mut df)
                        .map_err(|e| anyhow!("{e}"))
                }
            })?;
        }
        other => bail!("{}: unknown export format `.{other}` (jsonl, json, parquet, csv, tsv)", out.display()),
    }
    Ok(n)
}
