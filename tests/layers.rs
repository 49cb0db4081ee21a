//! The engine's layers import only downwards: `clock`, `io`, `device` → `text`, `kernels` →
//! `model`, `generate` → `data` → `runs` → `train` → `eval`. This reads every `crate::` path in
//! `engine/src` and fails on one that names a module of a higher layer (or a sibling module of
//! the same layer, other than itself).

use std::path::{Path, PathBuf};

/// Layer of each top-level engine module, lowest first.
const LAYERS: &[(&str, u32)] = &[
    ("clock", 0),
    ("io", 1),
    ("device", 1),
    ("text", 2),
    ("kernels", 2),
    ("model", 3),
    ("generate", 4),
    ("data", 5),
    ("runs", 6),
    ("train", 7),
    ("eval", 8),
];

fn layer(m: &str) -> Option<u32> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`engine/src/train/dpo.rs` → `train`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Every top-level module named after `crate::` in `text`, with its line, outside comments.
fn crate_refs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_use_block = false;
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(p) = rest.find("crate::") {
            let after = &rest[p + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if name.is_empty() {
                // `use crate::{a, b::c}`: every name at the top of the braces.
                if let Some(inner) = after.strip_prefix('{') {
                    in_use_block = !inner.contains('}');
                    for part in inner.split(',') {
                        let n: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                        if !n.is_empty() {
                            out.push((i + 1, n));
                        }
                    }
                }
            } else {
                out.push((i + 1, name));
            }
            rest = after;
        }
        if in_use_block && !code.contains("crate::") {
            for part in code.split(',') {
                let n: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !n.is_empty() {
                    out.push((i + 1, n));
                }
            }
            if code.contains('}') {
                in_use_block = false;
            }
        }
    }
    out
}

#[test]
fn engine_modules_import_only_lower_layers() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("engine/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut checked = 0;
    let mut bad = Vec::new();
    for f in &files {
        let Some(m) = module_of(&src, f) else { continue };
        if m == "lib" {
            continue;
        }
        let Some(own) = layer(&m) else {
            bad.push(format!("{}: module `{m}` has no layer; add it to LAYERS and to lib.rs's docs", f.display()));
            continue;
        };
        for (line, target) in crate_refs(&std::fs::read_to_string(f).unwrap()) {
            let Some(t) = layer(&target) else { continue }; // crate-root items (e.g. `crate::Device`)
            checked += 1;
            if target != m && t >= own {
                bad.push(format!("{}:{line}: `{m}` (layer {own}) imports `{target}` (layer {t})", f.display()));
            }
        }
    }
    assert!(checked > 100, "only {checked} imports found; is the scan reading the sources?");
    assert!(bad.is_empty(), "imports that go up or sideways:\n{}", bad.join("\n"));
}

#[test]
fn the_scan_sees_imports_in_every_form() {
    let text =
        "use crate::io::HostTensor;\nuse crate::{model::Transformer,\n    train::x};\nlet a = crate::eval::f(); // crate::runs::not_this\n";
    let refs: Vec<String> = crate_refs(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(refs, ["io", "model", "train", "eval"]);
}
