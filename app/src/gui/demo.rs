//! The demo workspace a newcomer sees on first start: a clinic-triage dataset the project wrote
//! (questions, answers and a department label, in English and Chinese, with a duplicate and
//! some personal data to find), preference pairs, and a tiny Llama model to train in seconds.
//! Everything is inside the binary, so it works offline.

use std::path::Path;

use anyhow::Result;
use whetstone_engine::data::Workspace;

const FILES: &[(&str, &[u8])] = &[
    ("clinic_triage.csv", include_bytes!("../../../assets/demo/clinic_triage.csv")),
    ("clinic_triage_prefs.jsonl", include_bytes!("../../../assets/demo/clinic_triage_prefs.jsonl")),
    ("models/tiny-llama/config.json", include_bytes!("../../../assets/demo/tiny-llama/config.json")),
    ("models/tiny-llama/generation_config.json", include_bytes!("../../../assets/demo/tiny-llama/generation_config.json")),
    ("models/tiny-llama/model.safetensors", include_bytes!("../../../assets/demo/tiny-llama/model.safetensors")),
    ("models/tiny-llama/tokenizer.json", include_bytes!("../../../assets/demo/tiny-llama/tokenizer.json")),
    ("models/tiny-llama/tokenizer_config.json", include_bytes!("../../../assets/demo/tiny-llama/tokenizer_config.json")),
    ("models/tiny-llama/chat_template.jinja", include_bytes!("../../../assets/demo/tiny-llama/chat_template.jinja")),
];

/// The demo model's folder inside a demo workspace.
pub fn demo_model(ws: &Path) -> std::path::PathBuf {
    ws.join("models/tiny-llama")
}

/// Create the demo workspace in `dir`.
pub fn create(dir: &Path) -> Result<Workspace> {
    let mut ws = Workspace::create(dir, "Clinic triage demo")?;
    let src = dir.join("sources");
    for (rel, bytes) in FILES {
        let path = if rel.starts_with("models/") { dir.join(rel) } else { src.join(rel) };
        whetstone_engine::io::atomic_write(&path, bytes)?;
    }
    ws.import(&src.join("clinic_triage.csv"), Some("clinic-triage"), &[])?;
    ws.import(&src.join("clinic_triage_prefs.jsonl"), Some("clinic-triage-pairs"), &[])?;
    ws.config.default_model = Some(demo_model(dir));
    ws.save_config()?;
    Ok(ws)
}
