//! Content hashes: of a file, and of a model (a GGUF file, or an HF folder's config and weights).

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// SHA-256 of a file's bytes, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    std::io::copy(&mut f, &mut h).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Hash of a model: the GGUF file, or the folder's `.safetensors` and `.json` files (names and
/// contents, in name order).
pub fn model_hash(path: &Path) -> Result<String> {
    if path.is_file() {
        return sha256_file(path);
    }
    let mut h = Sha256::new();
    let mut names: Vec<_> = std::fs::read_dir(path)
        .with_context(|| format!("{}: cannot list", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors" || e == "json"))
        .collect();
    names.sort();
    for p in names {
        if let Some(n) = p.file_name() {
            h.update(n.to_string_lossy().as_bytes());
        }
        h.update(sha256_file(&p)?.as_bytes());
    }
    Ok(format!("{:x}", h.finalize()))
}
