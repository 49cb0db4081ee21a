//! A workspace is a folder: `whetstone.toml` (name, defaults), `whetstone.db` (SQLite, WAL),
//! `datasets/<name>/v<N>.parquet` (immutable snapshots), `runs/` and `evals/`.
//!
//! Every dataset has versions. An import is version 1; curation and labelling write a new
//! snapshot and a new version row with its content hash. Snapshot files are written to a
//! temp file and renamed before the version row commits, so a version row always points at a
//! complete file, and a failed operation leaves the workspace as it was.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::import::{Roles, apply_id_column, parse_file};
use super::table::{ColumnInfo, Table};

pub const CONFIG_FILE: &str = "whetstone.toml";
pub const DB_FILE: &str = "whetstone.db";

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
/// Never edit a released entry: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: datasets and their versions.
    "CREATE TABLE datasets (
        name TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    );
    CREATE TABLE versions (
        dataset TEXT NOT NULL REFERENCES datasets(name),
        version INTEGER NOT NULL,
        parent INTEGER,
        file TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        rows INTEGER NOT NULL,
        columns TEXT NOT NULL,
        roles TEXT NOT NULL,
        operation TEXT NOT NULL,
        detail TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (dataset, version)
    );",
    // 2: labelling: current labels, the undo journal, the append-only audit trail, tag sets,
    // drafted candidate responses.
    "CREATE TABLE labels (
        dataset TEXT NOT NULL,
        record TEXT NOT NULL,
        annotator TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (dataset, record, annotator, kind)
    );
    CREATE TABLE journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset TEXT NOT NULL,
        record TEXT NOT NULL,
        annotator TEXT NOT NULL,
        kind TEXT NOT NULL,
        old TEXT,
        new TEXT,
        at TEXT NOT NULL,
        undone INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX journal_by_annotator ON journal (dataset, annotator, undone, seq);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        annotator TEXT NOT NULL,
        dataset TEXT NOT NULL,
        record TEXT NOT NULL,
        kind TEXT NOT NULL,
        action TEXT NOT NULL,
        old TEXT,
        new TEXT
    );
    CREATE TABLE tags (
        dataset TEXT NOT NULL,
        tag TEXT NOT NULL,
        PRIMARY KEY (dataset, tag)
    );
    CREATE TABLE candidates (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset TEXT NOT NULL,
        record TEXT NOT NULL,
        model TEXT NOT NULL,
        text TEXT NOT NULL,
        params TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX candidates_by_record ON candidates (dataset, record);",
    // 3: stored evaluation results.
    "CREATE TABLE evals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        suite TEXT NOT NULL,
        model TEXT NOT NULL,
        dataset TEXT NOT NULL,
        version INTEGER NOT NULL,
        summary TEXT NOT NULL,
        file TEXT NOT NULL,
        created_at TEXT NOT NULL
    );",
    // 4: blind A/B verdicts on evaluation outputs.
    "CREATE TABLE votes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        eval_id TEXT NOT NULL,
        item TEXT NOT NULL,
        model_a TEXT NOT NULL,
        model_b TEXT NOT NULL,
        verdict TEXT NOT NULL,
        annotator TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX votes_by_eval ON votes (eval_id);",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    pub name: String,
    #[serde(default)]
    pub created_at: String,
    /// Model used by default for token statistics, drafting and the playground.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<PathBuf>,
    /// Name recorded on labels when none is given.
    #[serde(default = "default_annotator")]
    pub annotator: String,
}

fn default_annotator() -> String {
    "me".into()
}

/// One dataset version: the snapshot file and what produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub dataset: String,
    pub version: u32,
    pub parent: Option<u32>,
    /// Snapshot path relative to the workspace folder.
    pub file: String,
    /// SHA-256 of the snapshot file.
    pub sha256: String,
    pub rows: usize,
    pub columns: Vec<ColumnInfo>,
    pub roles: Roles,
    /// import, split, dedupe, redact, labels, preferences, filter, …
    pub operation: String,
    pub detail: Value,
    pub created_at: String,
}

pub struct Workspace {
    root: PathBuf,
    pub config: WorkspaceConfig,
    pub(super) conn: Connection,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("root", &self.root).field("name", &self.config.name).finish()
    }
}

pub use crate::clock::now_rfc3339;

/// Dataset names become folder names: letters, digits, `-`, `_`, `.`, not starting with `.`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("dataset name `{name}`: use letters, digits, `-`, `_` and `.` (not starting with `.`)");
    }
    Ok(())
}

/// A dataset name derived from a file name.
pub fn name_from_path(path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("dataset");
    let n: String = stem.chars().map(|c| if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    let n = n.trim_start_matches('.').to_string();
    if n.is_empty() { "dataset".into() } else { n }
}

fn open_db(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("{}: cannot open the workspace database", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        bail!("{}: cannot switch the database to WAL mode (got {mode})", path.display());
    }
    // FULL: a commit is on disk before the call that made it returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Apply migrations `user_version+1 ..= upto` in one transaction.
pub(crate) fn migrate(conn: &mut Connection, upto: i64) -> Result<i64> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        bail!("this workspace was written by a newer Whetstone (schema {current}, this build knows {SCHEMA_VERSION})");
    }
    if current >= upto {
        return Ok(current);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().take(upto as usize).skip(current as usize) {
        tx.execute_batch(sql).with_context(|| format!("workspace migration {}", i + 1))?;
    }
    tx.pragma_update(None, "user_version", upto)?;
    tx.commit()?;
    Ok(upto)
}

impl Workspace {
    /// Make a new workspace in `dir` (created if missing; it must not already hold one).
    pub fn create(dir: &Path, name: &str) -> Result<Self> {
        if dir.join(CONFIG_FILE).exists() {
            bail!("{}: a workspace already exists here", dir.display());
        }
        for sub in ["datasets", "runs", "evals"] {
            std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("{}: cannot create folder", dir.join(sub).display()))?;
        }
        let config =
            WorkspaceConfig { name: name.to_string(), created_at: now_rfc3339(), default_model: None, annotator: default_annotator() };
        let mut conn = open_db(&dir.join(DB_FILE))?;
        migrate(&mut conn, SCHEMA_VERSION)?;
        // The config file is written last: its presence marks a complete workspace.
        crate::io::atomic_write(&dir.join(CONFIG_FILE), toml::to_string_pretty(&config)?.as_bytes())?;
        Ok(Self { root: dir.to_path_buf(), config, conn })
    }

    /// Open a workspace, migrating its database to this build's schema.
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(CONFIG_FILE);
        if !cfg_path.exists() {
            bail!("{}: not a Whetstone workspace (no {CONFIG_FILE}); create one with `whetstone data init`", dir.display());
        }
        let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("{}: cannot read", cfg_path.display()))?;
        let config: WorkspaceConfig = toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", cfg_path.display()))?;
        let mut conn = open_db(&dir.join(DB_FILE))?;
        migrate(&mut conn, SCHEMA_VERSION)?;
        for sub in ["datasets", "runs", "evals"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(Self { root: dir.to_path_buf(), config, conn })
    }

    pub fn open_or_create(dir: &Path) -> Result<Self> {
        if dir.join(CONFIG_FILE).exists() {
            Self::open(dir)
        } else {
            let name = dir.file_name().and_then(|s| s.to_str()).unwrap_or("workspace").to_string();
            Self::create(dir, &name)
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn save_config(&self) -> Result<()> {
        crate::io::atomic_write(&self.root.join(CONFIG_FILE), toml::to_string_pretty(&self.config)?.as_bytes())
    }

    /// Every dataset with its latest version.
    pub fn datasets(&self) -> Result<Vec<VersionInfo>> {
        let names: Vec<String> = {
            let mut st = self.conn.prepare("SELECT name FROM datasets ORDER BY name")?;
            st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?
        };
        names.iter().map(|n| self.version(n, None)).collect()
    }

    pub fn versions(&self, dataset: &str) -> Result<Vec<VersionInfo>> {
        let mut st = self.conn.prepare(&format!("SELECT {VERSION_COLS} FROM versions WHERE dataset = ?1 ORDER BY version"))?;
        let rows = st.query_map([dataset], row_to_version)?.collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter().collect()
    }

    /// One version (the latest when `version` is None).
    pub fn version(&self, dataset: &str, version: Option<u32>) -> Result<VersionInfo> {
        let found = match version {
            Some(v) => self
                .conn
                .query_row(
                    &format!("SELECT {VERSION_COLS} FROM versions WHERE dataset = ?1 AND version = ?2"),
                    params![dataset, v],
                    row_to_version,
                )
                .optional()?,
            None => self
                .conn
                .query_row(
                    &format!("SELECT {VERSION_COLS} FROM versions WHERE dataset = ?1 ORDER BY version DESC LIMIT 1"),
                    [dataset],
                    row_to_version,
                )
                .optional()?,
        };
        match found {
            Some(v) => v,
            None => {
                let known = self.dataset_names()?;
                match version {
                    Some(v) if known.iter().any(|n| n == dataset) => bail!("dataset `{dataset}` has no version {v}"),
                    _ => bail!(
                        "no dataset `{dataset}` in workspace {} (datasets: {})",
                        self.root.display(),
                        if known.is_empty() { "none yet".to_string() } else { known.join(", ") }
                    ),
                }
            }
        }
    }

    pub fn dataset_names(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare("SELECT name FROM datasets ORDER BY name")?;
        Ok(st.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?)
    }

    pub fn snapshot_path(&self, v: &VersionInfo) -> PathBuf {
        self.root.join(&v.file)
    }

    /// Load a version's rows.
    pub fn load(&self, dataset: &str, version: Option<u32>) -> Result<(VersionInfo, Table)> {
        let v = self.version(dataset, version)?;
        let t = Table::read_parquet(&self.snapshot_path(&v), v.columns.clone())?;
        Ok((v, t))
    }

    /// Import a file as version 1 of a new dataset (named after the file unless `name` is given).
    /// Roles are guessed from column names, then `overrides` (role, column) apply.
    pub fn import(&mut self, path: &Path, name: Option<&str>, overrides: &[(String, String)]) -> Result<VersionInfo> {
        let name = name.map(str::to_string).unwrap_or_else(|| name_from_path(path));
        check_name(&name)?;
        if self.dataset_names()?.contains(&name) {
            bail!("dataset `{name}` already exists in this workspace; choose another --name");
        }
        let parsed = parse_file(path)?;
        let mut table = parsed.table;
        let roles = Roles::with_overrides(&table.column_names(), overrides).with_context(|| path.display().to_string())?;
        if let Some(idc) = roles.id.clone() {
            apply_id_column(&mut table, &idc, path)?;
        }
        let detail = serde_json::json!({
            "source": path.display().to_string(),
            "source_sha256": crate::io::hash::sha256_file(path)?,
            "format": parsed.format,
            "encoding": parsed.encoding,
        });
        self.commit_version(&name, None, &table, roles, "import", detail)
    }

    /// Write `table` as the next version of `dataset` (creating the dataset at version 1).
    pub fn commit_version(
        &mut self,
        dataset: &str,
        parent: Option<u32>,
        table: &Table,
        roles: Roles,
        operation: &str,
        detail: Value,
    ) -> Result<VersionInfo> {
        check_name(dataset)?;
        let dir = self.root.join("datasets").join(dataset);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let latest: Option<u32> = tx.query_row("SELECT MAX(version) FROM versions WHERE dataset = ?1", [dataset], |r| r.get(0))?;
        let version = latest.map_or(1, |v| v + 1);
        let rel = format!("datasets/{dataset}/v{version}.parquet");
        let path = self.root.join(&rel);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        table.write_parquet(&path)?;
        let result = (|| -> Result<VersionInfo> {
            let info = VersionInfo {
                dataset: dataset.to_string(),
                version,
                parent,
                file: rel.clone(),
                sha256: crate::io::hash::sha256_file(&path)?,
                rows: table.height(),
                columns: table.columns.clone(),
                roles,
                operation: operation.to_string(),
                detail,
                created_at: now_rfc3339(),
            };
            if latest.is_none() {
                tx.execute("INSERT INTO datasets (name, created_at) VALUES (?1, ?2)", params![dataset, info.created_at])?;
            }
            tx.execute(
                "INSERT INTO versions (dataset, version, parent, file, sha256, rows, columns, roles, operation, detail, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    info.dataset,
                    info.version,
                    info.parent,
                    info.file,
                    info.sha256,
                    info.rows as i64,
                    serde_json::to_string(&info.columns)?,
                    serde_json::to_string(&info.roles)?,
                    info.operation,
                    info.detail.to_string(),
                    info.created_at
                ],
            )?;
            tx.commit()?;
            Ok(info)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
            if latest.is_none() {
                let _ = std::fs::remove_dir(&dir);
            }
        }
        result
    }

    /// Change the role mapping of a dataset: a new version with the same rows.
    pub fn remap(&mut self, dataset: &str, overrides: &[(String, String)]) -> Result<VersionInfo> {
        let (v, t) = self.load(dataset, None)?;
        let mut roles = v.roles.clone();
        for (role, col) in overrides {
            roles.set(role, if col.is_empty() { None } else { Some(col) }, &t.column_names())?;
        }
        self.commit_version(dataset, Some(v.version), &t, roles, "remap", serde_json::json!({ "map": overrides }))
    }
}

impl Workspace {
    /// A new version with a `split` column (train / validation / test), seeded and optionally
    /// stratified by a column.
    pub fn split(&mut self, dataset: &str, f: super::curate::SplitFractions, seed: u64, stratify: Option<&str>) -> Result<VersionInfo> {
        let (v, mut t) = self.load(dataset, None)?;
        let strata: Option<Vec<String>> = match stratify {
            Some(c) => Some(t.text(c)?.iter().map(|s| s.unwrap_or("").to_string()).collect()),
            None => None,
        };
        let assign = super::curate::split_assignments(t.height(), strata.as_deref(), f, seed)?;
        let counts = ["train", "validation", "test"].map(|s| assign.iter().filter(|a| **a == s).count());
        t.set_text_column("split", assign.into_iter().map(|s| Some(s.to_string())).collect(), super::table::ColumnKind::Text)?;
        let detail = serde_json::json!({"fractions": f, "seed": seed, "stratify": stratify,
            "counts": {"train": counts[0], "validation": counts[1], "test": counts[2]}});
        self.commit_version(dataset, Some(v.version), &t, v.roles.clone(), "split", detail)
    }

    /// A new version without the given rows (indices into the latest version).
    pub fn drop_rows(&mut self, dataset: &str, rows: &[usize], operation: &str, detail: Value) -> Result<VersionInfo> {
        let (v, t) = self.load(dataset, None)?;
        let drop: std::collections::HashSet<usize> = rows.iter().copied().collect();
        if let Some(&r) = rows.iter().find(|&&r| r >= t.height()) {
            bail!("row {r} is out of range ({} rows)", t.height());
        }
        let keep: Vec<usize> = (0..t.height()).filter(|r| !drop.contains(r)).collect();
        let out = t.take(&keep)?;
        let mut detail = detail;
        detail["removed"] = serde_json::json!(drop.len());
        self.commit_version(dataset, Some(v.version), &out, v.roles.clone(), operation, detail)
    }

    /// A new version keeping only the given rows, in the given order.
    pub fn keep_rows(&mut self, dataset: &str, rows: &[usize], operation: &str, detail: Value) -> Result<VersionInfo> {
        let (v, t) = self.load(dataset, None)?;
        let out = t.take(rows)?;
        self.commit_version(dataset, Some(v.version), &out, v.roles.clone(), operation, detail)
    }

    /// A new version with PII replaced by placeholders; returns it and the hits replaced.
    pub fn redact_pii(&mut self, dataset: &str, columns: &[String]) -> Result<(VersionInfo, Vec<super::curate::PiiHit>)> {
        let (v, t) = self.load(dataset, None)?;
        let hits = super::curate::scan_pii(&t, columns)?;
        if hits.is_empty() {
            bail!("no PII found in `{dataset}`; nothing to redact");
        }
        let out = super::curate::redact(&t, &hits)?;
        let mut by_kind = std::collections::BTreeMap::new();
        for h in &hits {
            *by_kind.entry(h.kind.placeholder()).or_insert(0usize) += 1;
        }
        let info =
            self.commit_version(dataset, Some(v.version), &out, v.roles.clone(), "redact", serde_json::json!({"replaced": by_kind}))?;
        Ok((info, hits))
    }
}

const VERSION_COLS: &str = "dataset, version, parent, file, sha256, rows, columns, roles, operation, detail, created_at";

fn row_to_version(r: &rusqlite::Row) -> rusqlite::Result<Result<VersionInfo>> {
    let columns: String = r.get(6)?;
    let roles: String = r.get(7)?;
    let detail: String = r.get(9)?;
    let rows: i64 = r.get(5)?;
    let base = (r.get::<_, String>(0)?, r.get::<_, u32>(1)?, r.get::<_, Option<u32>>(2)?, r.get::<_, String>(3)?, r.get::<_, String>(4)?);
    let operation: String = r.get(8)?;
    let created_at: String = r.get(10)?;
    Ok((|| {
        Ok(VersionInfo {
            dataset: base.0,
            version: base.1,
            parent: base.2,
            file: base.3,
            sha256: base.4,
            rows: rows as usize,
            columns: serde_json::from_str(&columns).context("versions.columns")?,
            roles: serde_json::from_str(&roles).context("versions.roles")?,
            operation,
            detail: serde_json::from_str(&detail).context("versions.detail")?,
            created_at,
        })
    })())
}

/// `path/to/workspace/DATASET[@VERSION]` → (workspace folder, dataset, version).
pub fn parse_dataset_ref(s: &str) -> Result<(PathBuf, String, Option<u32>)> {
    let (ws, rest) = match s.rfind('/') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (".", s),
    };
    let (name, version) = match rest.split_once('@') {
        Some((n, v)) => (n, Some(v.trim_start_matches('v').parse::<u32>().map_err(|_| anyhow!("{s}: version `{v}` is not a number"))?)),
        None => (rest, None),
    };
    if name.is_empty() {
        bail!("{s}: expected WORKSPACE/DATASET[@VERSION]");
    }
    Ok((PathBuf::from(if ws.is_empty() { "/" } else { ws }), name.to_string(), version))
}
