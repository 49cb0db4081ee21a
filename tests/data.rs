//! Workspaces, import/export round trips, malformed input, curation, labelling store,
//! agreement statistics, and training from a workspace dataset version.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use whetstone_engine::data::curate::{self, Query, SplitFractions};
use whetstone_engine::data::export::{Shape, export};
use whetstone_engine::data::labels::{cohen_kappa, fleiss_kappa};
use whetstone_engine::data::records::Record;
use whetstone_engine::data::{Roles, Workspace};

fn rec(v: Value) -> Record {
    v.as_object().unwrap().clone()
}

fn write_jsonl(path: &Path, records: &[Record]) {
    let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

/// Listing of every file under `dir` with its size, and the workspace's datasets and versions.
fn snapshot(ws_dir: &Path) -> (Vec<(String, u64)>, Vec<String>) {
    let mut files = Vec::new();
    fn walk(d: &Path, base: &Path, out: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, base, out);
            } else if !p.to_string_lossy().contains("whetstone.db") {
                out.push((p.strip_prefix(base).unwrap().display().to_string(), p.metadata().unwrap().len()));
            }
        }
    }
    walk(ws_dir, ws_dir, &mut files);
    files.sort();
    let ws = Workspace::open(ws_dir).unwrap();
    let versions = ws.datasets().unwrap().iter().map(|v| format!("{}@{}:{}", v.dataset, v.version, v.sha256)).collect();
    (files, versions)
}

// ------------------------------------------------------------------ round trips

fn text_strategy() -> impl Strategy<Value = String> {
    // Non-ASCII, quotes, commas, embedded newlines, tabs, CJK, emoji.
    proptest::string::string_regex("[a-zA-Z0-9 ,;\"'\\n\\t\\r{}é中文字🙂\\\\-]{1,24}").unwrap()
}

fn roundtrip(records: &[Record], ext: &str) -> Vec<Record> {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src.jsonl");
    write_jsonl(&src, records);
    let mut ws = Workspace::create(&tmp.path().join("ws"), "t").unwrap();
    let v = ws.import(&src, Some("a"), &[]).unwrap();
    let (_, t) = ws.load("a", None).unwrap();
    let out = tmp.path().join(format!("out.{ext}"));
    assert_eq!(export(&t, &v.roles, Shape::Raw, None, &out).unwrap(), records.len());
    ws.import(&out, Some("b"), &[]).unwrap();
    let (_, t2) = ws.load("b", None).unwrap();
    t2.records().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn text_records_round_trip_through_every_format(rows in proptest::collection::vec((text_strategy(), text_strategy()), 1..12)) {
        let records: Vec<Record> = rows.iter().map(|(q, a)| rec(json!({"question": q, "answer": a}))).collect();
        for ext in ["jsonl", "json", "csv", "parquet"] {
            let back = roundtrip(&records, ext);
            prop_assert_eq!(&back, &records, "format {}", ext);
        }
    }

    #[test]
    fn typed_and_nested_records_round_trip_through_json_and_parquet(
        rows in proptest::collection::vec((text_strategy(), any::<i32>(), text_strategy(), any::<bool>()), 1..10)
    ) {
        let records: Vec<Record> = rows
            .iter()
            .map(|(t, n, m, b)| rec(json!({
                "prompt": t, "score": n, "flag": b,
                "messages": [{"role": "user", "content": t}, {"role": "assistant", "content": m}],
            })))
            .collect();
        for ext in ["jsonl", "json", "parquet"] {
            let back = roundtrip(&records, ext);
            prop_assert_eq!(&back, &records, "format {}", ext);
        }
    }
}

#[test]
fn csv_with_quotes_and_newlines_imports_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("q.csv");
    std::fs::write(&p, "instruction,output\r\n\"Say \"\"hi\"\", then\nstop\",\"ok, done\"\r\n\"中文\",\"é🙂\"\r\n").unwrap();
    let mut ws = Workspace::create(&tmp.path().join("ws"), "t").unwrap();
    let v = ws.import(&p, None, &[]).unwrap();
    assert_eq!(v.roles.prompt.as_deref(), Some("instruction"));
    assert_eq!(v.roles.response.as_deref(), Some("output"));
    let (_, t) = ws.load("q", None).unwrap();
    assert_eq!(
        t.records().unwrap(),
        vec![
            rec(json!({"instruction": "Say \"hi\", then\nstop", "output": "ok, done"})),
            rec(json!({"instruction": "中文", "output": "é🙂"}))
        ]
    );
}

#[test]
fn encodings_and_delimiters_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ws = Workspace::create(&tmp.path().join("ws"), "t").unwrap();
    let v = ws.import(&fixture("data/gb18030.csv"), None, &[("prompt".into(), "问题".into()), ("response".into(), "回答".into())]).unwrap();
    assert_eq!(v.detail["encoding"], "gb18030");
    let (_, t) = ws.load("gb18030", None).unwrap();
    assert_eq!(t.record(0).unwrap(), rec(json!({"问题": "发烧三天，头痛", "回答": "请尽快就医"})));
    assert_eq!(t.height(), 3);

    let v = ws.import(&fixture("data/bom_semicolon.csv"), None, &[]).unwrap();
    assert_eq!(v.detail["encoding"], "utf-8 (BOM)");
    assert!(v.detail["format"].as_str().unwrap().contains("';'"), "{}", v.detail);
    assert_eq!(v.roles.label.as_deref(), Some("department"));
    let (_, t) = ws.load("bom_semicolon", None).unwrap();
    assert_eq!(t.column_names(), vec!["question", "answer", "department"]);
    assert_eq!(t.record(0).unwrap()["question"], "Fever; stiff neck");
    assert_eq!(t.record(1).unwrap()["answer"], "Rest, fluids");
}

#[test]
fn chat_logs_and_trl_shapes_map_to_roles() {
    let guess = |cols: &[&str]| Roles::guess(&cols.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let r = guess(&["conversations", "id"]);
    assert_eq!((r.messages.as_deref(), r.prompt.as_deref(), r.id.as_deref()), (Some("conversations"), None, Some("id")));
    let r = guess(&["prompt", "completion"]);
    assert_eq!((r.prompt.as_deref(), r.response.as_deref()), (Some("prompt"), Some("completion")));
    let r = guess(&["prompt", "chosen", "rejected"]);
    assert_eq!((r.chosen.as_deref(), r.rejected.as_deref(), r.response.as_deref()), (Some("chosen"), Some("rejected"), None));
    let r = guess(&["Question", "Answer", "rating", "Topic"]);
    assert_eq!(
        (r.prompt.as_deref(), r.response.as_deref(), r.score.as_deref(), r.label.as_deref()),
        (Some("Question"), Some("Answer"), Some("rating"), Some("Topic"))
    );

    // ShareGPT chat log → TRL messages export; the id column becomes the row ids.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("chats.jsonl");
    write_jsonl(
        &p,
        &[
            rec(json!({"id": "c1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]})),
            rec(json!({"id": "c2", "conversations": [{"from": "human", "value": "头痛"}, {"from": "gpt", "value": "多休息"}]})),
        ],
    );
    let mut ws = Workspace::create(&tmp.path().join("ws"), "t").unwrap();
    let v = ws.import(&p, None, &[]).unwrap();
    let (_, t) = ws.load("chats", None).unwrap();
    assert_eq!(t.ids().unwrap(), vec!["c1", "c2"]);
    let out = tmp.path().join("trl.jsonl");
    export(&t, &v.roles, Shape::TrlSft, None, &out).unwrap();
    let first: Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first, json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}));

    // A bad override names the column; a duplicate id names the row.
    let err = ws.import(&p, Some("x"), &[("prompt".into(), "nope".into())]).unwrap_err();
    assert!(format!("{err:#}").contains("column `nope` not found"), "{err:#}");
    let dup = tmp.path().join("dup.csv");
    std::fs::write(&dup, "id,prompt\n1,a\n2,b\n1,c\n").unwrap();
    let err = ws.import(&dup, None, &[]).unwrap_err();
    assert!(format!("{err:#}").contains("row 3: id `1`"), "{err:#}");
}

// ------------------------------------------------------------------ malformed input

#[test]
fn malformed_files_name_the_place_and_leave_the_workspace_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let ws_dir = tmp.path().join("ws");
    let mut ws = Workspace::create(&ws_dir, "t").unwrap();
    ws.import(&fixture("data/bom_semicolon.csv"), Some("good"), &[]).unwrap();
    let before = snapshot(&ws_dir);
    let cases = [
        ("data/ragged.csv", "ragged.csv:3: row has 3 fields but the header has 2"),
        ("data/unterminated.csv", "unterminated.csv:3: a quoted field is never closed"),
        ("data/bad_line3.jsonl", "bad_line3.jsonl:3: invalid JSON"),
        ("data/not_objects.jsonl", "not_objects.jsonl:2: expected a JSON object, found an array"),
        ("data/corrupt.parquet", "corrupt.parquet: not a readable Parquet file"),
    ];
    for (file, want) in cases {
        let err = ws.import(&fixture(file), None, &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(want), "{file}: {msg}");
        assert_eq!(snapshot(&ws_dir), before, "{file} changed the workspace");
    }
    // The CLI reports the same in one line and exits non-zero.
    let o = whetstone(&["data", "import", fixture("data/ragged.csv").to_str().unwrap(), "--workspace", ws_dir.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ragged.csv:3:"), "{}", stderr(&o));
    assert_eq!(snapshot(&ws_dir), before);
    // Pickles are refused.
    let pk = tmp.path().join("data.pt");
    std::fs::write(&pk, b"\x80\x04junk").unwrap();
    assert!(ws.import(&pk, None, &[]).is_err());
}

#[test]
fn older_workspaces_are_migrated_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("old");
    {
        let mut ws = Workspace::create(&dir, "old").unwrap();
        ws.import(&fixture("data/bom_semicolon.csv"), Some("d"), &[]).unwrap();
    }
    // Make it look like a workspace from before labelling existed (schema 1).
    let conn = rusqlite::Connection::open(dir.join("whetstone.db")).unwrap();
    conn.execute_batch("DROP TABLE labels; DROP TABLE journal; DROP TABLE audit; DROP TABLE tags; DROP TABLE candidates; DROP TABLE evals; DROP TABLE votes; PRAGMA user_version = 1;").unwrap();
    drop(conn);
    let mut ws = Workspace::open(&dir).unwrap();
    assert_eq!(ws.schema_version().unwrap(), whetstone_engine::data::workspace::SCHEMA_VERSION);
    assert_eq!(ws.version("d", None).unwrap().rows, 2);
    ws.set_label("d", "1", "ann", "status", Some(&json!("accept"))).unwrap();
}

// ------------------------------------------------------------------ curation

fn workspace_with(records: &[Record], name: &str) -> (tempfile::TempDir, Workspace) {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join(format!("{name}.jsonl"));
    write_jsonl(&p, records);
    let mut ws = Workspace::create(&tmp.path().join("ws"), "t").unwrap();
    ws.import(&p, None, &[]).unwrap();
    (tmp, ws)
}

#[test]
fn search_filters_and_sorts() {
    let records: Vec<Record> = [
        ("Chest pain at rest", "Emergency", "cardio"),
        ("Mild cough", "Routine", "gp"),
        ("chest tightness on stairs", "Urgent", "cardio"),
        ("Rash", "Routine", "derm"),
    ]
    .iter()
    .map(|(q, a, d)| rec(json!({"question": q, "answer": a, "department": d})))
    .collect();
    let (_tmp, mut ws) = workspace_with(&records, "triage");
    let (_, t) = ws.load("triage", None).unwrap();
    let none = Default::default();
    let q = |text: &str, regex: bool| Query { text: Some(text.into()), regex, ..Default::default() };
    assert_eq!(curate::query(&t, &q("chest", false), &none).unwrap(), vec![0, 2]);
    assert_eq!(curate::query(&t, &Query { case_sensitive: true, ..q("chest", false) }, &none).unwrap(), vec![2]);
    assert_eq!(curate::query(&t, &q(r"^(Mild|Rash)", true), &none).unwrap(), vec![1, 3]);
    assert_eq!(curate::query(&t, &Query { column: Some("answer".into()), ..q("routine", false) }, &none).unwrap(), vec![1, 3]);
    assert_eq!(
        curate::query(&t, &Query { equals: vec![("department".into(), "cardio".into())], ..Default::default() }, &none).unwrap(),
        vec![0, 2]
    );
    assert_eq!(
        curate::query(&t, &Query { sort_by: Some("length".into()), column: Some("question".into()), ..Default::default() }, &none).unwrap(),
        vec![3, 1, 0, 2]
    );
    assert!(curate::query(&t, &q("(", true), &none).is_err());
    ws.set_label("triage", "2", "ann", "status", Some(&json!("accept"))).unwrap();
    ws.set_label("triage", "2", "ann", "rating", Some(&json!(5))).unwrap();
    ws.set_label("triage", "4", "ann", "tags", Some(&json!(["skin", "minor"]))).unwrap();
    let labels = ws.label_summaries("triage", None).unwrap();
    assert_eq!(curate::query(&t, &Query { status: Some("accept".into()), ..Default::default() }, &labels).unwrap(), vec![1]);
    assert_eq!(curate::query(&t, &Query { status: Some("unlabelled".into()), ..Default::default() }, &labels).unwrap(), vec![0, 2, 3]);
    assert_eq!(curate::query(&t, &Query { min_rating: Some(4), ..Default::default() }, &labels).unwrap(), vec![1]);
    assert_eq!(curate::query(&t, &Query { tag: Some("skin".into()), ..Default::default() }, &labels).unwrap(), vec![3]);
    assert_eq!(ws.tag_set("triage").unwrap(), vec!["minor", "skin"]);
    // Keeping the matches is a new version.
    let v = ws.keep_rows("triage", &[0, 2], "filter", json!({})).unwrap();
    assert_eq!((v.version, v.rows, v.parent), (2, 2, Some(1)));
}

#[test]
fn duplicates_are_found_exact_and_near_and_dropped_only_on_request() {
    let base = "The patient reports a persistent dry cough for three weeks with mild fever in the evenings and fatigue.";
    let records = vec![
        rec(json!({"prompt": base, "response": "See a GP."})),
        rec(json!({"prompt": "Twisted ankle while running, swelling.", "response": "Rest and ice."})),
        rec(json!({"prompt": format!("  {}  ", base.to_uppercase()), "response": "see a gp."})), // exact after normalising
        rec(json!({"prompt": base.replace("three", "four"), "response": "See a GP."})),          // near
        rec(json!({"prompt": "Sudden severe headache, worst ever.", "response": "Emergency."})),
    ];
    let (_tmp, mut ws) = workspace_with(&records, "dups");
    let (v, t) = ws.load("dups", None).unwrap();
    let groups = curate::find_duplicates(&t, &v.roles, &[], 0.7).unwrap();
    let kinds: Vec<(&str, Vec<usize>)> = groups.iter().map(|g| (g.kind.as_str(), g.rows.clone())).collect();
    assert_eq!(kinds, vec![("exact", vec![0, 2]), ("near", vec![0, 3])], "{groups:?}");
    assert!(groups[1].similarity > 0.7 && groups[1].similarity < 1.0);
    // Listing changes nothing; dropping is a new version without rows 2 and 3.
    assert_eq!(ws.versions("dups").unwrap().len(), 1);
    let nv = ws.drop_rows("dups", &curate::duplicate_rows_to_drop(&groups), "dedupe", json!({})).unwrap();
    assert_eq!(nv.rows, 3);
    assert_eq!(ws.load("dups", None).unwrap().1.ids().unwrap(), vec!["1", "2", "5"]);
    // MinHash estimates track true Jaccard similarity.
    let a = curate::minhash("the quick brown fox jumps over the lazy dog");
    assert_eq!(a, curate::minhash("the quick brown fox jumps over the lazy dog"));
    let b = curate::minhash("completely unrelated sentence about kidneys");
    assert!(a.iter().zip(&b).filter(|(x, y)| x == y).count() < 10);
}

#[test]
fn pii_is_found_highlighted_and_redacted() {
    let text = "Contact Dr. Maria Lopez at maria.lopez@clinic.org or +1 415-555-0132. SSN 123-45-6789, born on 1984-03-12. \
                Card 4111 1111 1111 1111. 患者：王小明，电话13812345678，身份证11010519491231002X。Date 2024-01-15 is fine.";
    let spans = curate::scan_text(text);
    let found: Vec<(String, &str)> = spans.iter().map(|&(s, e, k)| (format!("{k:?}"), &text[s..e])).collect();
    let want = [
        ("Name", "Maria Lopez"),
        ("Email", "maria.lopez@clinic.org"),
        ("Phone", "+1 415-555-0132"),
        ("IdNumber", "123-45-6789"),
        ("DateOfBirth", "1984-03-12"),
        ("Account", "4111 1111 1111 1111"),
        ("Name", "王小明"),
        ("Phone", "13812345678"),
        ("IdNumber", "11010519491231002X"),
    ];
    for (k, s) in want {
        assert!(found.iter().any(|(fk, fs)| fk == k && *fs == s), "missing {k} {s:?} in {found:?}");
    }
    assert!(!found.iter().any(|(_, s)| s.contains("2024-01-15")), "a plain date is not PII: {found:?}");
    // A non-Luhn 16-digit number is not taken for a card.
    assert!(curate::scan_text("order 4111 1111 1111 1112").is_empty());
    let red = curate::redact_text(text, &spans);
    assert!(red.contains("Contact Dr. [NAME] at [EMAIL] or [PHONE]"), "{red}");
    assert!(!red.contains("123-45-6789") && !red.contains("13812345678"));

    let records =
        vec![rec(json!({"prompt": "Email me: a.b@x.com", "response": "ok"})), rec(json!({"prompt": "no pii here", "response": "fine"}))];
    let (_tmp, mut ws) = workspace_with(&records, "p");
    let (_, t) = ws.load("p", None).unwrap();
    let hits = curate::scan_pii(&t, &[]).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].id.as_str(), hits[0].column.as_str(), hits[0].text.as_str()), ("1", "prompt", "a.b@x.com"));
    let (v, _) = ws.redact_pii("p", &[]).unwrap();
    assert_eq!(v.version, 2);
    assert_eq!(ws.load("p", None).unwrap().1.record(0).unwrap()["prompt"], "Email me: [EMAIL]");
    assert_eq!(ws.load("p", Some(1)).unwrap().1.record(0).unwrap()["prompt"], "Email me: a.b@x.com", "version 1 is immutable");
}

#[test]
fn splits_are_seeded_and_stratified() {
    let records: Vec<Record> = (0..100)
        .map(|i| rec(json!({"prompt": format!("q{i}"), "response": "a", "label": if i < 80 { "common" } else { "rare" }})))
        .collect();
    let (_tmp, mut ws) = workspace_with(&records, "s");
    let f = SplitFractions { train: 0.8, validation: 0.1, test: 0.1 };
    let v = ws.split("s", f, 7, Some("label")).unwrap();
    assert_eq!(v.detail["counts"], json!({"train": 80, "validation": 10, "test": 10}));
    let (_, t) = ws.load("s", None).unwrap();
    let split = t.text("split").unwrap();
    let label = t.text("label").unwrap();
    let rare_val = (0..100).filter(|&i| label.get(i) == Some("rare") && split.get(i) == Some("validation")).count();
    assert_eq!(rare_val, 2, "stratified: 10 % of the 20 rare rows");
    let a = curate::split_assignments(100, None, f, 7).unwrap();
    assert_eq!(a, curate::split_assignments(100, None, f, 7).unwrap());
    assert_ne!(a, curate::split_assignments(100, None, f, 8).unwrap());
    assert!(curate::split_assignments(10, None, SplitFractions { train: 0.5, validation: 0.1, test: 0.1 }, 0).is_err());
    // Export only the test split.
    let out = _tmp.path().join("test.jsonl");
    assert_eq!(export(&t, &v.roles, Shape::TrlSft, Some("test"), &out).unwrap(), 10);
}

#[test]
fn token_statistics_use_the_models_tokenizer() {
    let records: Vec<Record> = (0..20).map(|i| rec(json!({"question": "word ".repeat(i + 1), "answer": "ok"}))).collect();
    let (_tmp, ws) = workspace_with(&records, "tok");
    let (v, t) = ws.load("tok", None).unwrap();
    let tok = whetstone_engine::text::tokenizer::Tokenizer::load(&fixture("tiny-models/llama")).unwrap();
    let s = curate::token_stats(&t, &v.roles, &tok, 20, 5).unwrap();
    assert_eq!(s.count, 20);
    // Each example is the chat-formatted pair; lengths grow with the question.
    assert!(s.lengths.windows(2).all(|w| w[0] < w[1]), "{:?}", s.lengths);
    assert_eq!(s.over, s.lengths.iter().filter(|&&l| l > 20).count());
    assert_eq!(s.histogram.iter().map(|b| b.2).sum::<usize>(), 20);
    assert_eq!((s.min, s.max), (s.lengths[0], s.lengths[19]));
    let st = curate::length_stats(vec![1, 2, 3, 4, 100], 3, 2);
    assert_eq!((st.p50, st.over, st.share_over, st.min, st.max), (3, 2, 0.4, 1, 100));
}

// ------------------------------------------------------------------ labelling store

#[test]
fn labels_journal_undo_redo_and_audit() {
    let records: Vec<Record> = (0..3).map(|i| rec(json!({"prompt": format!("q{i}"), "response": format!("a{i}")}))).collect();
    let (_tmp, mut ws) = workspace_with(&records, "l");
    let get = |ws: &Workspace, r: &str| ws.record_labels("l", r, Some("ann")).unwrap();
    ws.set_label("l", "1", "ann", "status", Some(&json!("accept"))).unwrap();
    ws.set_label("l", "1", "ann", "rating", Some(&json!(3))).unwrap();
    ws.set_label("l", "1", "ann", "rating", Some(&json!("5"))).unwrap();
    ws.set_label("l", "2", "ann", "edit", Some(&json!("a better answer"))).unwrap();
    ws.set_label("l", "2", "bob", "status", Some(&json!("reject"))).unwrap();
    assert_eq!(get(&ws, "1"), BTreeMap::from([("rating".into(), json!(5)), ("status".into(), json!("accept"))]));
    // Undo walks back this annotator's own changes only.
    ws.undo("l", "ann").unwrap().unwrap(); // edit on 2
    ws.undo("l", "ann").unwrap().unwrap(); // rating 3 → 5
    assert_eq!(get(&ws, "1")["rating"], json!(3));
    assert!(get(&ws, "2").is_empty());
    assert_eq!(ws.record_labels("l", "2", Some("bob")).unwrap()["status"], json!("reject"));
    ws.redo("l", "ann").unwrap().unwrap();
    assert_eq!(get(&ws, "1")["rating"], json!(5));
    // A new change clears the redo stack.
    ws.set_label("l", "3", "ann", "note", Some(&json!("check dosage"))).unwrap();
    assert!(ws.redo("l", "ann").unwrap().is_none());
    for _ in 0..4 {
        ws.undo("l", "ann").unwrap().unwrap();
    }
    assert!(ws.undo("l", "ann").unwrap().is_none());
    assert!(ws.labels("l", Some("ann")).unwrap().is_empty());
    // The audit trail keeps everything, newest first.
    let audit = ws.audit(Some("l"), None, Some("ann"), 100).unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["undo", "undo", "undo", "undo", "set", "redo", "undo", "undo", "set", "set", "set", "set"]);
    assert_eq!(audit.last().unwrap().new, Some(json!("accept")));
    // Bad values are refused with the rule.
    for (kind, v, want) in [
        ("status", json!("maybe"), "accept, reject or flag"),
        ("rating", json!(6), "1 to 5"),
        ("pair", json!({"a": "col:x", "b": "col:x", "verdict": "a"}), "two different sources"),
        ("pair", json!({"a": "col:x", "b": "cand:1", "verdict": "c"}), "verdict must be"),
        ("colour", json!("red"), "unknown label kind"),
    ] {
        let e = ws.set_label("l", "1", "ann", kind, Some(&v)).unwrap_err();
        assert!(format!("{e:#}").contains(want), "{kind}: {e:#}");
    }
    assert!(ws.set_label("nope", "1", "ann", "status", Some(&json!("accept"))).is_err());
}

#[test]
fn labels_become_versions_and_pairs_become_a_preference_dataset() {
    let records: Vec<Record> = (1..=3)
        .map(|i| rec(json!({"prompt": format!("question {i}"), "response": format!("answer {i}"), "alt": format!("other {i}")})))
        .collect();
    let (_tmp, mut ws) = workspace_with(&records, "p");
    ws.set_label("p", "1", "ann", "status", Some(&json!("accept"))).unwrap();
    ws.set_label("p", "2", "ann", "edit", Some(&json!("edited 2"))).unwrap();
    ws.set_label("p", "3", "ann", "tags", Some(&json!("urgent, cardio"))).unwrap();
    let v = ws.commit_labels("p", None).unwrap();
    let (_, t) = ws.load("p", Some(v.version)).unwrap();
    assert_eq!(t.record(0).unwrap()["label_status"], "accept");
    assert_eq!(t.record(1).unwrap()["response"], "edited 2");
    assert_eq!(t.record(1).unwrap()["response_original"], "answer 2");
    assert_eq!(t.record(2).unwrap()["label_tags"], json!(["cardio", "urgent"]));

    // Candidates drafted for record 1 and 2; verdicts become chosen/rejected rows.
    let c = ws.add_candidates("p", "1", "m", &["cand A".into(), "cand B".into()], &json!({})).unwrap();
    ws.add_candidates("p", "2", "m", &["x".into(), "y".into()], &json!({})).unwrap();
    let queue = ws.pair_queue("p", "ann").unwrap();
    assert_eq!(queue.len(), 2);
    assert_eq!(queue[0], ("1".to_string(), format!("cand:{}", c[0]), format!("cand:{}", c[1])));
    ws.set_label("p", "1", "ann", "pair", Some(&json!({"a": queue[0].1, "b": queue[0].2, "verdict": "b"}))).unwrap();
    ws.set_label("p", "2", "ann", "pair", Some(&json!({"a": queue[1].1, "b": queue[1].2, "verdict": "tie"}))).unwrap();
    ws.set_label("p", "3", "ann", "rank", Some(&json!({"order": ["col:alt", "col:response"]}))).unwrap();
    assert!(ws.pair_queue("p", "ann").unwrap().is_empty());
    let pv = ws.commit_preferences("p", None).unwrap();
    assert_eq!((pv.dataset.as_str(), pv.version, pv.rows), ("p-preferences", 1, 2));
    let (_, pt) = ws.load("p-preferences", None).unwrap();
    assert_eq!(pt.record(0).unwrap()["chosen"], "cand B");
    assert_eq!(pt.record(0).unwrap()["rejected"], "cand A");
    assert_eq!(pt.record(1).unwrap()["prompt"], "question 3");
    assert_eq!(pt.record(1).unwrap()["chosen"], "other 3");
    assert_eq!(pv.roles.chosen.as_deref(), Some("chosen"));
}

#[test]
fn kappa_matches_hand_computed_values() {
    // Cohen: 50 items, raters agree yes/yes 20, no/no 15, disagree 10 + 5.
    // p_o = 0.7, p_yes = 0.6·0.5, p_no = 0.4·0.5 → p_e = 0.5, κ = 0.4.
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (x, y, n) in [("yes", "yes", 20), ("no", "no", 15), ("yes", "no", 10), ("no", "yes", 5)] {
        for _ in 0..n {
            a.push(x);
            b.push(y);
        }
    }
    assert!((cohen_kappa(&a, &b) - 0.4).abs() < 1e-12);
    assert_eq!(cohen_kappa(&["x", "x"], &["x", "x"]), 1.0);
    // Fleiss: the worked example from Fleiss (1971) as given on Wikipedia: κ ≈ 0.210.
    let table: Vec<Vec<usize>> = vec![
        vec![0, 0, 0, 0, 14],
        vec![0, 2, 6, 4, 2],
        vec![0, 0, 3, 5, 6],
        vec![0, 3, 9, 2, 0],
        vec![2, 2, 8, 1, 1],
        vec![7, 7, 0, 0, 0],
        vec![3, 2, 6, 3, 0],
        vec![2, 5, 3, 2, 2],
        vec![6, 5, 2, 1, 0],
        vec![0, 2, 2, 3, 7],
    ];
    assert!((fleiss_kappa(&table) - 0.20993).abs() < 1e-4, "{}", fleiss_kappa(&table));

    // Through the store: two annotators, four items.
    let records: Vec<Record> = (0..4).map(|i| rec(json!({"prompt": format!("q{i}"), "response": "a"}))).collect();
    let (_tmp, mut ws) = workspace_with(&records, "k");
    for (r, x, y) in [("1", "accept", "accept"), ("2", "reject", "reject"), ("3", "accept", "reject"), ("4", "accept", "accept")] {
        ws.set_label("k", r, "ann", "status", Some(&json!(x))).unwrap();
        ws.set_label("k", r, "bob", "status", Some(&json!(y))).unwrap();
    }
    let ag = ws.agreement("k", "status").unwrap();
    // p_o = 3/4; p_e = (3/4·2/4) + (1/4·2/4) = 1/2; κ = 0.5.
    assert_eq!(ag.pairwise.len(), 1);
    assert!((ag.pairwise[0].3 - 0.5).abs() < 1e-12, "{ag:?}");
    assert_eq!(ag.items_all_annotators, 4);
    assert!(ag.fleiss.is_some());
}

// ------------------------------------------------------------------ durability

#[test]
fn sigkill_during_labelling_never_loses_an_acknowledged_label() {
    use rand::{Rng, SeedableRng};
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    let tmp = tempfile::tempdir().unwrap();
    let records: Vec<Record> = (0..4000).map(|i| rec(json!({"prompt": format!("q{i}"), "response": "a"}))).collect();
    let src = tmp.path().join("big.jsonl");
    write_jsonl(&src, &records);
    let ws_dir = tmp.path().join("ws");
    Workspace::create(&ws_dir, "k").unwrap().import(&src, None, &[]).unwrap();
    let target = format!("{}/big", ws_dir.display());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut next = 0usize;
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut killed_mid_stream = 0;
    for _round in 0..100 {
        let mut child = Command::new(whetstone_bin())
            .args(["data", "label", &target, "--annotator", "ann", "stream"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let batch: Vec<(String, String)> = (0..60)
            .map(|_| {
                next += 1;
                ((next % 4000 + 1).to_string(), format!("v{next}"))
            })
            .collect();
        let cmds: String =
            batch.iter().map(|(r, v)| json!({"op": "set", "record": r, "kind": "note", "value": v}).to_string() + "\n").collect();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(cmds.as_bytes());
            let _ = stdin.flush();
            stdin // keep the pipe open until the kill
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        // Kill at a random point: after a random number of acknowledgements (0 = during start-up),
        // plus a random extra delay of up to 2 ms while later commands are mid-commit.
        let kill_after = rng.random_range(0..batch.len());
        let mut lines = Vec::new();
        while lines.len() < kill_after {
            match rx.recv_timeout(std::time::Duration::from_secs(20)) {
                Ok(l) => lines.push(l),
                Err(_) => break,
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(rng.random_range(0..2000)));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        drop(writer.join().unwrap());
        let oks = lines.iter().filter(|l| l.starts_with("ok ")).count();
        assert!(lines.iter().all(|l| l.starts_with("ok ")), "{lines:?}");
        if oks < batch.len() {
            killed_mid_stream += 1;
        }
        acked.extend(batch.into_iter().take(oks));
    }
    eprintln!("{killed_mid_stream} of 100 kills landed mid-stream, {} labels acknowledged", acked.len());
    assert!(killed_mid_stream >= 50, "only {killed_mid_stream} of 100 kills landed mid-stream; the test is not testing");
    let ws = Workspace::open(&ws_dir).unwrap();
    let labels: BTreeMap<String, Value> = ws.labels("big", Some("ann")).unwrap().into_iter().map(|l| (l.record, l.value)).collect();
    // Later commands overwrite earlier ones on the same record; the newest acknowledged one must be there
    // (or a newer one that committed just before the kill).
    let mut newest: BTreeMap<String, usize> = BTreeMap::new();
    for (r, v) in &acked {
        newest.insert(r.clone(), v[1..].parse().unwrap());
    }
    for (r, n) in &newest {
        let got = labels.get(r).unwrap_or_else(|| panic!("acknowledged label on record {r} lost"));
        let got_n: usize = got.as_str().unwrap()[1..].parse().unwrap();
        assert!(got_n >= *n, "record {r}: acknowledged v{n}, found {got}");
    }
    let conn = rusqlite::Connection::open(ws_dir.join("whetstone.db")).unwrap();
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    assert!(acked.len() > 100, "{} labels acknowledged", acked.len());
}

// ------------------------------------------------------------------ CLI and training

#[test]
fn cli_data_commands_work_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let w = ws.to_str().unwrap();
    let o = whetstone(&["data", "init", w, "--name", "clinic"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = whetstone(&[
        "data",
        "import",
        fixture("data/bom_semicolon.csv").to_str().unwrap(),
        "--workspace",
        w,
        "--name",
        "tri",
        "--map",
        "label=department",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("imported 2 rows"), "{}", stdout(&o));
    let d = format!("{w}/tri");
    let o = whetstone(&["data", "label", &d, "--annotator", "ann", "set", "1", "rating", "4"]);
    assert_eq!(stdout(&o).trim(), "ok 1", "{}", stderr(&o));
    let o = whetstone(&["data", "label", &d, "--annotator", "ann", "set", "99", "rating", "4"]);
    assert!(!o.status.success() && stderr(&o).contains("record `99` not found"), "{}", stderr(&o));
    let o = whetstone(&["data", "search", &d, "fever", "--json"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["matches"], 1);
    let o = whetstone(&["data", "stats", &d, "--tokenizer", fixture("tiny-models/qwen2").to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["tokens"]["count"], 2);
    let out = tmp.path().join("pref.parquet");
    let o = whetstone(&["data", "export", &format!("{d}@1"), "--out", out.to_str().unwrap(), "--shape", "trl-sft"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = whetstone(&["data", "versions", &d]);
    assert!(stdout(&o).contains("import"));
}

#[test]
fn a_training_job_names_a_workspace_dataset_version() {
    use whetstone_engine::runs::JobEvent;
    use whetstone_engine::train::{JobSpec, RunOptions, spawn};
    let tmp = tempfile::tempdir().unwrap();
    let records: Vec<Record> =
        (0..8).map(|i| rec(json!({"question": format!("Symptom {i}?"), "answer": format!("Advice {i}.")}))).collect();
    let src = tmp.path().join("tri.jsonl");
    write_jsonl(&src, &records);
    let ws_dir = tmp.path().join("ws");
    let mut ws = Workspace::create(&ws_dir, "t").unwrap();
    ws.import(&src, None, &[]).unwrap();
    ws.split("tri", SplitFractions { train: 0.75, validation: 0.25, test: 0.0 }, 1, None).unwrap();
    let job = format!(
        "method = \"sft\"\nmodel = {:?}\nseed = 1\noutput = {:?}\n[train]\nmax_steps = 2\nbatch_size = 2\nlr = 1e-3\n[dataset]\npath = {:?}\nname = \"tri\"\nversion = 2\nsplit = \"train\"\n",
        fixture("tiny-models/llama").display().to_string(),
        tmp.path().join("runs").display().to_string(),
        ws_dir.display().to_string()
    );
    let p = tmp.path().join("job.toml");
    std::fs::write(&p, job).unwrap();
    let spec = JobSpec::from_file(&p).unwrap();
    let h = spawn(spec, RunOptions::default());
    let evs: Vec<JobEvent> = h.events.iter().collect();
    h.join();
    let run_dir = evs
        .iter()
        .find_map(|e| if let JobEvent::Started { run_dir, .. } = e { Some(run_dir.clone()) } else { None })
        .unwrap_or_else(|| panic!("{evs:?}"));
    assert!(matches!(evs.last(), Some(JobEvent::Finished { .. })), "{:?}", evs.last());
    let card: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(card["dataset"]["name"], "tri");
    assert_eq!(card["dataset"]["version"], 2);
    assert_eq!(card["dataset"]["split"], "train");
    assert_eq!(card["dataset"]["examples"], 6);
    assert_eq!(card["dataset"]["sha256"], json!(ws.version("tri", Some(2)).unwrap().sha256));
    // Without a name the job is refused with a clear message.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, std::fs::read_to_string(&p).unwrap().replace("name = \"tri\"\n", "")).unwrap();
    let e = JobSpec::from_file(&bad).unwrap().validate().unwrap_err();
    assert!(format!("{e:#}").contains("is a workspace: name the dataset"), "{e:#}");
}

#[test]
fn drafted_answers_fill_the_pair_queue_and_become_preferences() {
    let records: Vec<Record> = (0..3).map(|i| rec(json!({"prompt": format!("Symptom {i}: what now?"), "response": "See a GP."}))).collect();
    let (tmp, mut ws) = workspace_with(&records, "d");
    let m = whetstone_engine::model::LoadedModel::load(&fixture("tiny-models/llama"), &whetstone_engine::Device::flex()).unwrap();
    let opts = whetstone_engine::generate::GenerateOptions { max_new_tokens: 6, temperature: 1.0, seed: 5, ..Default::default() };
    let mut progress = Vec::new();
    let n = whetstone_engine::data::draft::draft_candidates(&mut ws, "d", &m, "tiny", 2, &opts, Some(2), &mut |done, total| {
        progress.push((done, total));
        true
    })
    .unwrap();
    assert_eq!(n, 4);
    assert_eq!(progress, vec![(1, 2), (2, 2)]);
    let c = ws.candidates("d", Some("1")).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].model, "tiny");
    assert_eq!(c[0].params["temperature"], 1.0);
    // Each candidate is what the model generates for the chat-formatted prompt with that seed.
    let ids = m.tokenizer.prompt_ids("Symptom 0: what now?").unwrap();
    let g = whetstone_engine::generate::generate(&m, &ids, &opts, &mut |_| true).unwrap();
    assert_eq!(c[0].text, g.text.trim());
    let queue = ws.pair_queue("d", "ann").unwrap();
    assert_eq!(queue.iter().map(|q| q.0.as_str()).collect::<Vec<_>>(), vec!["1", "2"]);
    for (r, a, b) in &queue {
        ws.set_label("d", r, "ann", "pair", Some(&json!({"a": a, "b": b, "verdict": "a"}))).unwrap();
    }
    let v = ws.commit_preferences("d", Some("ann")).unwrap();
    assert_eq!(v.rows, 2);
    // The CLI drafts too, with a progress bar, and labels the queue.
    let d = format!("{}/d", tmp.path().join("ws").display());
    let o = whetstone(&[
        "data",
        "draft",
        &d,
        "--model",
        fixture("tiny-models/llama").to_str().unwrap(),
        "-k",
        "2",
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = whetstone(&["data", "label", &d, "--annotator", "bob", "pair", "3", "both_bad"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn review_fixes_hold() {
    // Many small strata still split 80/10/10 overall (rounding carried across strata).
    let labels: Vec<String> = (0..100).map(|i| format!("class{}", i / 5)).collect();
    let a = curate::split_assignments(100, Some(&labels), SplitFractions { train: 0.8, validation: 0.1, test: 0.1 }, 3).unwrap();
    let count = |s: &str| a.iter().filter(|x| **x == s).count();
    assert_eq!((count("train"), count("validation"), count("test")), (80, 10, 10));
    // Ordinary numbers are not phone numbers.
    for t in ["dose 12.500 mg", "In 2023 1500 people", "order 4111 1111 1111 1112"] {
        assert!(curate::scan_text(t).is_empty(), "{t}: {:?}", curate::scan_text(t));
    }
    assert_eq!(curate::scan_text("call (415) 555-0132").len(), 1);
    // A lone CR is field content; a file with CR-only line ends has no rows and is refused.
    let tmp = tempfile::tempdir().unwrap();
    let mut ws = Workspace::create(&tmp.path().join("ws"), "t").unwrap();
    let p = tmp.path().join("cr.csv");
    std::fs::write(&p, "a,b\nfoo\rbar,baz\n").unwrap();
    ws.import(&p, None, &[]).unwrap();
    assert_eq!(ws.load("cr", None).unwrap().1.record(0).unwrap()["a"], "foo\rbar");
    let mac = tmp.path().join("mac.csv");
    std::fs::write(&mac, "a,b\rc,d\r").unwrap();
    assert!(format!("{:#}", ws.import(&mac, None, &[]).unwrap_err()).contains("no rows"));
    // Removing an edit and committing again brings the original answer back.
    let src = tmp.path().join("e.jsonl");
    write_jsonl(&src, &[rec(json!({"prompt": "q", "response": "original"}))]);
    ws.import(&src, Some("e"), &[]).unwrap();
    ws.set_label("e", "1", "ann", "edit", Some(&json!("edited"))).unwrap();
    ws.commit_labels("e", None).unwrap();
    assert_eq!(ws.load("e", None).unwrap().1.record(0).unwrap()["response"], "edited");
    ws.set_label("e", "1", "ann", "edit", None).unwrap();
    ws.set_label("e", "1", "ann", "status", Some(&json!("accept"))).unwrap();
    ws.commit_labels("e", None).unwrap();
    assert_eq!(ws.load("e", None).unwrap().1.record(0).unwrap()["response"], "original");
    // Clearing a label that is not there changes nothing and keeps the redo stack.
    assert_eq!(ws.set_label("e", "1", "ann", "note", None).unwrap(), 0);
}
