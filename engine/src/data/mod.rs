//! Data: workspaces (folder + SQLite), dataset versions, import and export, curation,
//! labelling, and mapping columns to training roles.

pub mod curate;
pub mod dataset;
pub mod draft;
pub mod evals;
pub mod export;
pub mod import;
pub mod labels;
pub mod records;
pub mod table;
pub mod workspace;

pub use dataset::{DatasetData, DatasetSpec};
pub use import::Roles;
pub use table::{ColumnInfo, ColumnKind, ID_COLUMN, Table};
pub use workspace::{VersionInfo, Workspace, parse_dataset_ref};
