//! A dataset snapshot in memory: a polars frame whose columns are all text, plus the row id
//! column `_id` and, per column, whether its text is plain text or a JSON value (numbers,
//! lists, chats). Keeping every column as text makes snapshots uniform and fast to scan;
//! the kind makes the round trip back to JSON exact.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::records::Record;

/// The row-id column every snapshot carries. Labels point at rows by this id.
pub const ID_COLUMN: &str = "_id";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// Plain text.
    Text,
    /// JSON text of a non-string value (number, bool, list, object).
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    pub kind: ColumnKind,
}

#[derive(Debug, Clone)]
pub struct Table {
    /// `_id` first, then the user's columns in `columns` order, all of dtype String.
    pub df: DataFrame,
    pub columns: Vec<ColumnInfo>,
}

impl Table {
    pub fn height(&self) -> usize {
        self.df.height()
    }

    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.clone()).collect()
    }

    pub fn kind(&self, name: &str) -> Option<ColumnKind> {
        self.columns.iter().find(|c| c.name == name).map(|c| c.kind)
    }

    /// The text cells of one column.
    pub fn text(&self, name: &str) -> Result<&StringChunked> {
        let c = self.df.column(name).map_err(|_| anyhow!("column `{name}` not found (columns: {})", self.column_names().join(", ")))?;
        c.str().map_err(|e| anyhow!("column `{name}`: {e}"))
    }

    pub fn ids(&self) -> Result<Vec<String>> {
        Ok(self.text(ID_COLUMN)?.iter().map(|s| s.unwrap_or_default().to_string()).collect())
    }

    /// One cell as a JSON value (text columns give strings, JSON columns their value).
    pub fn value(&self, row: usize, name: &str) -> Result<Value> {
        let kind = self.kind(name).ok_or_else(|| anyhow!("column `{name}` not found"))?;
        Ok(match self.text(name)?.get(row) {
            None => Value::Null,
            Some(s) => match kind {
                ColumnKind::Text => Value::String(s.to_string()),
                ColumnKind::Json => {
                    serde_json::from_str(s).map_err(|e| anyhow!("row {}: column `{name}`: stored JSON is invalid: {e}", row + 1))?
                }
            },
        })
    }

    /// One row as a record of the user's columns (without `_id`).
    pub fn record(&self, row: usize) -> Result<Record> {
        let mut r = Record::new();
        for c in &self.columns {
            r.insert(c.name.clone(), self.value(row, &c.name)?);
        }
        Ok(r)
    }

    pub fn records(&self) -> Result<Vec<Record>> {
        (0..self.height()).map(|i| self.record(i)).collect()
    }

    /// Build a table from JSON records; `ids` gives each row's id (default 1, 2, 3, …).
    pub fn from_records(records: &[Record], ids: Option<Vec<String>>) -> Result<Self> {
        let mut names: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in records {
            for k in r.keys() {
                if seen.insert(k.clone()) {
                    names.push(k.clone());
                }
            }
        }
        let mut cols = Vec::with_capacity(names.len() + 1);
        let ids = ids.unwrap_or_else(|| (1..=records.len()).map(|i| i.to_string()).collect());
        if ids.len() != records.len() {
            bail!("{} ids for {} records", ids.len(), records.len());
        }
        cols.push(Column::new(ID_COLUMN.into(), ids));
        let mut infos = Vec::with_capacity(names.len());
        for name in &names {
            if name == ID_COLUMN {
                bail!("column name `{ID_COLUMN}` is reserved for row ids; rename that column");
            }
            let json = records.iter().any(|r| matches!(r.get(name), Some(v) if !v.is_string() && !v.is_null()));
            let cells: Vec<Option<String>> = records
                .iter()
                .map(|r| match r.get(name) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) if !json => Some(s.clone()),
                    Some(v) => Some(v.to_string()),
                })
                .collect();
            cols.push(Column::new(name.as_str().into(), cells));
            infos.push(ColumnInfo { name: name.clone(), kind: if json { ColumnKind::Json } else { ColumnKind::Text } });
        }
        let df = DataFrame::new(records.len(), cols)?;
        Ok(Self { df, columns: infos })
    }

    /// Rows in the given order (indices into this table).
    pub fn take(&self, rows: &[usize]) -> Result<Self> {
        let idx = IdxCa::from_vec("idx".into(), rows.iter().map(|&r| r as IdxSize).collect());
        Ok(Self { df: self.df.take(&idx)?, columns: self.columns.clone() })
    }

    /// Replace (or add, as text) a column.
    pub fn set_text_column(&mut self, name: &str, cells: Vec<Option<String>>, kind: ColumnKind) -> Result<()> {
        if name == ID_COLUMN {
            bail!("`{ID_COLUMN}` cannot be overwritten");
        }
        if cells.len() != self.height() {
            bail!("column `{name}`: {} cells for {} rows", cells.len(), self.height());
        }
        let col = Column::new(name.into(), cells);
        self.df.with_column(col)?;
        match self.columns.iter_mut().find(|c| c.name == name) {
            Some(c) => c.kind = kind,
            None => self.columns.push(ColumnInfo { name: name.to_string(), kind }),
        }
        Ok(())
    }

    /// Write as Parquet, atomically (temp file in the same folder, fsync, rename).
    pub fn write_parquet(&self, path: &Path) -> Result<()> {
        let mut df = self.df.clone();
        crate::io::atomic_write_with(path, |f| {
            ParquetWriter::new(f).with_compression(ParquetCompression::Lz4Raw).finish(&mut df).map(|_| ()).map_err(|e| anyhow!("{e}"))
        })
        .with_context(|| format!("writing {}", path.display()))
    }

    /// Read a snapshot written by `write_parquet`; `columns` comes from the workspace database.
    pub fn read_parquet(path: &Path, columns: Vec<ColumnInfo>) -> Result<Self> {
        let f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let df = ParquetReader::new(f).finish().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let t = Self { df, columns };
        t.text(ID_COLUMN).with_context(|| format!("{}: not a Whetstone snapshot", path.display()))?;
        for c in &t.columns {
            t.text(&c.name).with_context(|| format!("{}", path.display()))?;
        }
        Ok(t)
    }
}
