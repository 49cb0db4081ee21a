//! Reading and writing model files: HF folders (safetensors) and GGUF.

pub mod gguf;
pub mod hash;
pub mod quant;
pub mod safetensors;

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// A tensor on the host: row-major f32 values and a PyTorch-order shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
}

/// Write `bytes` to `path` atomically: a temp file in the same folder, fsync, then rename.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// Write a file atomically through a writer callback: temp file in the same folder, fsync,
/// rename. On any error the destination is untouched and the temp file is removed.
pub fn atomic_write_with(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    // A temp file is private (0600) by default; the file it becomes is an ordinary one (0666 less
    // the umask), so an exported model or adapter is readable as any other file the user writes.
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).with_context(|| format!("{}: cannot create a temp file", dir.display()))?;
    write(tmp.as_file_mut()).with_context(|| format!("{}: write failed", path.display()))?;
    tmp.as_file().sync_all().with_context(|| format!("{}: fsync failed", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("{}: rename failed", path.display()))?;
    Ok(())
}

/// Resolve a path written in a file: `~` is the home folder, and a relative path is taken
/// relative to `base` (the folder of the file that names it). The result is absolute (a `base`
/// that is itself relative, such as the empty parent of `job.toml`, is taken from the current
/// folder), so a path copied into a run card still names the same file when read from elsewhere.
pub fn resolve_path(base: &Path, p: &Path) -> std::path::PathBuf {
    let p = match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    };
    let p = if p.is_relative() { base.join(p) } else { p };
    std::path::absolute(&p).unwrap_or(p)
}

/// Seconds since the Unix epoch.
pub fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Pickle-based checkpoints can execute code when loaded; Whetstone never opens them.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let is_pickle = [".bin", ".pt", ".pth", ".ckpt", ".pkl"].iter().any(|e| name.ends_with(e));
    if is_pickle {
        anyhow::bail!(
            "{}: pickle checkpoints can run arbitrary code when loaded, so Whetstone refuses them. \
             Convert it to safetensors first, e.g. in Python: \
             `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// An atomically written file gets the permissions of a file written the ordinary way (not
    /// the temp file's private 0600), and a relative job path comes back absolute.
    #[test]
    fn atomic_writes_are_ordinary_files_and_paths_resolve_absolute() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("plain"), b"x").unwrap();
        super::atomic_write(&d.path().join("atomic"), b"x").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |n: &str| std::fs::metadata(d.path().join(n)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode("atomic"), mode("plain"));
        }
        let p = super::resolve_path(std::path::Path::new(""), std::path::Path::new("model.gguf"));
        assert!(p.is_absolute() && p.ends_with("model.gguf"), "{}", p.display());
    }
}
