//! Reading a data file into a `Table`: CSV/TSV (delimiter and encoding detection: UTF-8 with
//! or without BOM, UTF-16 with BOM, GB18030, Windows-1252), JSON, JSONL and Parquet, and the
//! column → role mapping with guesses from column names. Every error names the file and the
//! line or row; nothing is written anywhere until the whole file has parsed.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::records::Record;
use super::table::{ColumnInfo, ColumnKind, ID_COLUMN, Table};

/// What a column means to training and labelling.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// RL and evaluation data: the reference answer rules and metrics compare against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

pub const ROLE_NAMES: [&str; 10] = ["system", "prompt", "response", "chosen", "rejected", "messages", "label", "score", "id", "reference"];

/// Column names that suggest each role, best first (compared case-insensitively).
fn role_guesses(role: &str) -> &'static [&'static str] {
    match role {
        "system" => &["system", "system_prompt", "system_message"],
        "prompt" => &["prompt", "instruction", "question", "query", "input", "problem"],
        "response" => &["response", "output", "answer", "completion", "reply", "solution"],
        "chosen" => &["chosen", "preferred", "better"],
        "rejected" => &["rejected", "dispreferred", "worse"],
        "messages" => &["messages", "conversations", "conversation", "chat"],
        "label" => &["label", "category", "class", "department", "topic"],
        "score" => &["score", "rating", "reward"],
        "id" => &["id", "uid", "uuid", "record_id"],
        "reference" => &["reference", "ground_truth", "gold", "expected", "target"],
        _ => &[],
    }
}

impl Roles {
    pub fn get(&self, role: &str) -> Option<&String> {
        self.slot(role).and_then(|s| s.as_ref())
    }

    fn slot(&self, role: &str) -> Option<&Option<String>> {
        Some(match role {
            "system" => &self.system,
            "prompt" => &self.prompt,
            "response" => &self.response,
            "chosen" => &self.chosen,
            "rejected" => &self.rejected,
            "messages" => &self.messages,
            "label" => &self.label,
            "score" => &self.score,
            "id" => &self.id,
            "reference" => &self.reference,
            _ => return None,
        })
    }

    fn slot_mut(&mut self, role: &str) -> Option<&mut Option<String>> {
        Some(match role {
            "system" => &mut self.system,
            "prompt" => &mut self.prompt,
            "response" => &mut self.response,
            "chosen" => &mut self.chosen,
            "rejected" => &mut self.rejected,
            "messages" => &mut self.messages,
            "label" => &mut self.label,
            "score" => &mut self.score,
            "id" => &mut self.id,
            "reference" => &mut self.reference,
            _ => return None,
        })
    }

    /// Set one role without checking the column (the caller checks it against the data).
    pub fn set_unchecked(&mut self, role: &str, column: Option<String>) {
        if let Some(slot) = self.slot_mut(role) {
            *slot = column;
        }
    }

    /// Set one role; `column` must be one of `columns`.
    pub fn set(&mut self, role: &str, column: Option<&str>, columns: &[String]) -> Result<()> {
        if let Some(c) = column
            && !columns.iter().any(|x| x == c)
        {
            bail!("role {role}: column `{c}` not found (columns: {})", columns.join(", "));
        }
        let slot = self.slot_mut(role).ok_or_else(|| anyhow!("unknown role `{role}` (roles: {})", ROLE_NAMES.join(", ")))?;
        *slot = column.map(str::to_string);
        Ok(())
    }

    /// Guess every role from the column names (instruction/question → prompt, output/answer → response, …).
    pub fn guess(columns: &[String]) -> Self {
        Roles::default().guess_missing(columns)
    }

    /// Keep the roles set here and guess the others from the column names, never giving one
    /// column two roles. A chat column carries its own turns, so with one and no prompt, no
    /// response is guessed (it would count the turns twice).
    pub fn guess_missing(&self, columns: &[String]) -> Self {
        let mut r = self.clone();
        let mut used: Vec<String> = ROLE_NAMES.iter().filter_map(|role| r.get(role).cloned()).collect();
        for role in ROLE_NAMES {
            if r.get(role).is_some() {
                continue;
            }
            let hit = role_guesses(role).iter().find_map(|g| columns.iter().find(|c| c.eq_ignore_ascii_case(g) && !used.contains(c)));
            if let Some(c) = hit {
                used.push(c.clone());
                *r.slot_mut(role).expect("known role") = Some(c.clone());
            }
        }
        if r.messages.is_some() && self.prompt.is_none() && self.response.is_none() && r.prompt.is_none() {
            r.response = None;
        }
        r
    }

    /// Guess, then apply `role=column` overrides (`role=` clears a role).
    pub fn with_overrides(columns: &[String], overrides: &[(String, String)]) -> Result<Self> {
        let mut r = Self::guess(columns);
        for (role, col) in overrides {
            r.set(role, if col.is_empty() { None } else { Some(col) }, columns)?;
        }
        Ok(r)
    }

    pub fn as_map(&self) -> BTreeMap<String, String> {
        ROLE_NAMES.iter().filter_map(|r| self.get(r).map(|c| (r.to_string(), c.clone()))).collect()
    }
}

/// Parse `role=column` pairs from the command line.
pub fn parse_mappings(items: &[String]) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| {
            let (r, c) = s.split_once('=').ok_or_else(|| anyhow!("--map {s}: expected role=column"))?;
            let r = r.trim();
            if !ROLE_NAMES.contains(&r) {
                bail!("--map {s}: unknown role `{r}` (roles: {})", ROLE_NAMES.join(", "));
            }
            Ok((r.to_string(), c.trim().to_string()))
        })
        .collect()
}

/// A parsed file, ready to become a dataset version.
#[derive(Debug)]
pub struct Parsed {
    pub table: Table,
    pub format: String,
    pub encoding: String,
}

/// Read any supported data file; the format comes from the extension.
pub fn parse_file(path: &Path) -> Result<Parsed> {
    if !path.exists() {
        bail!("{}: file not found", path.display());
    }
    crate::io::refuse_pickle(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "csv" | "tsv" | "txt" => parse_delimited(path, if ext == "tsv" { Some(b'\t') } else { None }),
        "jsonl" | "ndjson" | "json" => {
            let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
            let text = decode_utf8_only(&bytes, path)?;
            let records = if ext == "json" { super::records::parse_json(text, path)? } else { super::records::parse_jsonl(text, path)? };
            if records.is_empty() {
                bail!("{}: no records", path.display());
            }
            Ok(Parsed {
                table: Table::from_records(&records, None).with_context(|| path.display().to_string())?,
                format: ext,
                encoding: "utf-8".into(),
            })
        }
        "parquet" => parse_parquet(path),
        other => bail!("{}: unknown data format `.{other}` (expected .csv, .tsv, .json, .jsonl or .parquet)", path.display()),
    }
}

fn decode_utf8_only<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str> {
    let b = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(b).map_err(|e| {
        let line = b[..e.valid_up_to()].iter().filter(|&&c| c == b'\n').count() + 1;
        anyhow!("{}:{line}: not valid UTF-8 text (JSON must be UTF-8)", path.display())
    })
}

/// Text of a delimited file as UTF-8, and the encoding it was in.
pub fn decode_text(bytes: Vec<u8>, path: &Path) -> Result<(Vec<u8>, &'static str)> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return Ok((rest.to_vec(), "utf-8 (BOM)"));
    }
    for (bom, enc) in [(&b"\xFF\xFE"[..], encoding_rs::UTF_16LE), (&b"\xFE\xFF"[..], encoding_rs::UTF_16BE)] {
        if bytes.starts_with(bom) {
            let (text, _, bad) = enc.decode(&bytes);
            if bad {
                bail!("{}: invalid {} text", path.display(), enc.name());
            }
            return Ok((text.into_owned().into_bytes(), if enc == encoding_rs::UTF_16LE { "utf-16le" } else { "utf-16be" }));
        }
    }
    if std::str::from_utf8(&bytes).is_ok() {
        return Ok((bytes, "utf-8"));
    }
    if let Some(text) = encoding_rs::GB18030.decode_without_bom_handling_and_without_replacement(&bytes) {
        return Ok((text.into_owned().into_bytes(), "gb18030"));
    }
    let (text, _, bad) = encoding_rs::WINDOWS_1252.decode(&bytes);
    if bad {
        bail!("{}: text is neither UTF-8, UTF-16, GB18030 nor Windows-1252", path.display());
    }
    Ok((text.into_owned().into_bytes(), "windows-1252"))
}

/// Pick the delimiter whose per-line count is the same, and largest, over the first lines.
pub fn sniff_delimiter(text: &[u8]) -> u8 {
    let mut best = (b',', 0usize);
    for d in [b',', b'\t', b';', b'|'] {
        let counts: Vec<usize> = scan_records(text, d, 20).into_iter().map(|r| r.fields).collect();
        if counts.is_empty() || counts[0] < 2 {
            continue;
        }
        let consistent = counts.iter().all(|&c| c == counts[0]);
        if consistent && counts[0] > best.1 {
            best = (d, counts[0]);
        }
    }
    best.0
}

#[derive(Debug, Clone, Copy)]
struct RecordSpan {
    /// 1-based line where the record starts.
    line: usize,
    fields: usize,
}

/// Quote-aware record scan (RFC 4180): field counts per record, at most `limit` records.
fn scan_records(text: &[u8], delim: u8, limit: usize) -> Vec<RecordSpan> {
    let mut out = Vec::new();
    let mut line = 1usize;
    let mut start_line = 1usize;
    let mut fields = 1usize;
    let mut in_quotes = false;
    let mut at_field_start = true;
    let mut record_has_content = false;
    let mut i = 0;
    while i < text.len() && out.len() < limit {
        let c = text[i];
        if in_quotes {
            if c == b'"' {
                if text.get(i + 1) == Some(&b'"') {
                    i += 1;
                } else {
                    in_quotes = false;
                }
            } else if c == b'\n' {
                line += 1;
            }
        } else if c == b'"' && at_field_start {
            in_quotes = true;
            at_field_start = false;
            record_has_content = true;
        } else if c == delim {
            fields += 1;
            at_field_start = true;
            record_has_content = true;
        } else if c == b'\n' || (c == b'\r' && text.get(i + 1) == Some(&b'\n')) {
            // Records end at LF or CRLF, as polars reads them; a lone CR is field content.
            if c == b'\r' {
                i += 1;
            }
            if record_has_content {
                out.push(RecordSpan { line: start_line, fields });
            }
            line += 1;
            start_line = line;
            fields = 1;
            at_field_start = true;
            record_has_content = false;
        } else {
            at_field_start = false;
            record_has_content = true;
        }
        i += 1;
    }
    if in_quotes {
        // Report an unterminated quote as a record with no field count.
        out.push(RecordSpan { line: start_line, fields: usize::MAX });
    } else if record_has_content && out.len() < limit {
        out.push(RecordSpan { line: start_line, fields });
    }
    out
}

/// Check every record has the header's field count; the error names the line.
fn validate_delimited(text: &[u8], delim: u8, path: &Path) -> Result<()> {
    let recs = scan_records(text, delim, usize::MAX);
    let Some(header) = recs.first() else { bail!("{}: the file is empty", path.display()) };
    if header.fields == usize::MAX {
        bail!("{}:{}: a quoted field is never closed", path.display(), header.line);
    }
    for r in &recs[1..] {
        if r.fields == usize::MAX {
            bail!("{}:{}: a quoted field is never closed", path.display(), r.line);
        }
        if r.fields != header.fields {
            bail!(
                "{}:{}: row has {} fields but the header has {} (delimiter {:?})",
                path.display(),
                r.line,
                r.fields,
                header.fields,
                delim as char
            );
        }
    }
    Ok(())
}

fn parse_delimited(path: &Path, delim: Option<u8>) -> Result<Parsed> {
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let (text, encoding) = decode_text(raw, path)?;
    let delim = delim.unwrap_or_else(|| sniff_delimiter(&text));
    validate_delimited(&text, delim, path)?;
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0)) // every column as text
        .map_parse_options(|o| o.with_separator(delim).with_missing_is_null(false))
        .into_reader_with_file_handle(Cursor::new(text.as_slice()))
        .finish()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if df.height() == 0 {
        bail!("{}: no rows under the header", path.display());
    }
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        if n == ID_COLUMN {
            bail!("{}:1: column name `{ID_COLUMN}` is reserved for row ids; rename that column", path.display());
        }
        if !seen.insert(n) {
            bail!("{}:1: column `{n}` appears twice in the header", path.display());
        }
    }
    let mut df = df;
    let ids: Vec<String> = (1..=df.height()).map(|i| i.to_string()).collect();
    df.insert_column(0, Column::new(ID_COLUMN.into(), ids))?;
    let columns = names.into_iter().map(|name| ColumnInfo { name, kind: ColumnKind::Text }).collect();
    Ok(Parsed {
        table: Table { df, columns },
        format: if delim == b'\t' { "tsv".into() } else { format!("csv (delimiter {:?})", delim as char) },
        encoding: encoding.into(),
    })
}

fn parse_parquet(path: &Path) -> Result<Parsed> {
    let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let df = ParquetReader::new(f).finish().map_err(|e| anyhow!("{}: not a readable Parquet file: {e}", path.display()))?;
    if df.height() == 0 {
        bail!("{}: no records", path.display());
    }
    let mut cols = vec![Column::new(ID_COLUMN.into(), (1..=df.height()).map(|i| i.to_string()).collect::<Vec<_>>())];
    let mut infos = Vec::new();
    for c in df.columns() {
        let name = c.name().to_string();
        if name == ID_COLUMN {
            bail!("{}: column name `{ID_COLUMN}` is reserved for row ids; rename that column", path.display());
        }
        if matches!(c.dtype(), DataType::String) {
            cols.push(c.clone());
            infos.push(ColumnInfo { name, kind: ColumnKind::Text });
            continue;
        }
        // Any other type goes through JSON so numbers, lists and structs come back exactly.
        let mut one = DataFrame::new(df.height(), vec![c.clone()])?;
        let mut buf = Vec::new();
        JsonWriter::new(&mut buf)
            .with_json_format(JsonFormat::JsonLines)
            .finish(&mut one)
            .map_err(|e| anyhow!("{}: column `{name}`: {e}", path.display()))?;
        let mut cells = Vec::with_capacity(df.height());
        for (i, line) in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let mut obj: Record =
                serde_json::from_slice(line).map_err(|e| anyhow!("{}: row {}: column `{name}`: {e}", path.display(), i + 1))?;
            cells.push(match obj.remove(&name) {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.to_string()),
            });
        }
        cols.push(Column::new(name.as_str().into(), cells));
        infos.push(ColumnInfo { name, kind: ColumnKind::Json });
    }
    let height = df.height();
    Ok(Parsed { table: Table { df: DataFrame::new(height, cols)?, columns: infos }, format: "parquet".into(), encoding: "-".into() })
}

/// Use the `id` role's column as row ids: every value present and unique.
pub fn apply_id_column(table: &mut Table, column: &str, path: &Path) -> Result<()> {
    let json = table.kind(column) == Some(ColumnKind::Json);
    let col = table.text(column)?.clone();
    let ids: StringChunked = if json {
        // JSON ids: strings lose their quotes, numbers keep their text.
        col.iter()
            .map(|v| {
                v.map(|v| match serde_json::from_str::<Value>(v) {
                    Ok(Value::String(s)) => s,
                    _ => v.to_string(),
                })
            })
            .collect()
    } else {
        col
    };
    // Fast checks over the whole column; the slow scan only runs to name the offending row.
    let has_empty = ids.null_count() > 0 || ids.iter().any(|v| v.is_some_and(|s| s.trim().is_empty()));
    let unique = ids.n_unique().map_err(|e| anyhow!("{e}"))? == ids.len();
    if has_empty || !unique {
        let mut seen = std::collections::HashSet::new();
        for (i, v) in ids.iter().enumerate() {
            match v {
                Some(v) if !v.trim().is_empty() => {
                    if !seen.insert(v) {
                        bail!("{}: row {}: id `{v}` in column `{column}` is used twice", path.display(), i + 1);
                    }
                }
                _ => bail!("{}: row {}: id column `{column}` is empty", path.display(), i + 1),
            }
        }
    }
    table.df.with_column(ids.with_name(ID_COLUMN.into()).into_column())?;
    Ok(())
}
