//! Curation over a `Table`: search and filter, exact and near-duplicate detection
//! (MinHash + LSH over character shingles), PII scan and redaction, token-length statistics
//! and seeded (optionally stratified) splits. Operations return row indices or new tables;
//! the workspace turns a changed table into a new dataset version.

use std::collections::{HashMap, HashSet};

use anyhow::{Result, anyhow, bail};
use polars::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::import::Roles;
use super::table::{ColumnKind, ID_COLUMN, Table};
use crate::text::tokenizer::Tokenizer;

// ---------------------------------------------------------------- search and filter

/// The labels of one record, as filters see them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelSummary {
    pub status: Option<String>,
    pub rating: Option<u8>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// Text to find (substring, or a regex when `regex`).
    pub text: Option<String>,
    pub regex: bool,
    pub case_sensitive: bool,
    /// Search only this column (default: every column).
    pub column: Option<String>,
    /// Keep rows whose column equals the value (e.g. `split` = `train`).
    pub equals: Vec<(String, String)>,
    /// Length bounds, in characters, over the searched columns.
    pub min_chars: Option<usize>,
    pub max_chars: Option<usize>,
    /// Label filters: status (`accept`, `reject`, `flag`, or `unlabelled`), minimum rating, tag.
    pub status: Option<String>,
    pub min_rating: Option<u8>,
    pub tag: Option<String>,
    /// Sort by a column (or `length`); descending when `descending`.
    pub sort_by: Option<String>,
    pub descending: bool,
}

fn or_masks(a: Option<BooleanChunked>, b: BooleanChunked) -> BooleanChunked {
    match a {
        Some(a) => &a | &b,
        None => b,
    }
}

/// Row indices of `table` matching `q`, in the requested order.
pub fn query(table: &Table, q: &Query, labels: &HashMap<String, LabelSummary>) -> Result<Vec<usize>> {
    let cols: Vec<String> = match &q.column {
        Some(c) => {
            table.text(c)?;
            vec![c.clone()]
        }
        None => table.column_names(),
    };
    let mut mask: Option<BooleanChunked> = None;
    if let Some(t) = q.text.as_deref().filter(|t| !t.is_empty()) {
        let pattern = if q.regex { t.to_string() } else { regex::escape(t) };
        let pattern = if q.case_sensitive { pattern } else { format!("(?i){pattern}") };
        Regex::new(&pattern).map_err(|e| anyhow!("search pattern: {e}"))?;
        let mut m: Option<BooleanChunked> = None;
        for c in &cols {
            let s = table.text(c)?;
            let hit = if q.case_sensitive && !q.regex { s.contains_literal(t)? } else { s.contains(&pattern, true)? };
            m = Some(or_masks(m, hit.fill_null_with_values(false)?));
        }
        mask = m;
    }
    for (c, v) in &q.equals {
        let hit = table.text(c)?.equal(v.as_str()).fill_null_with_values(false)?;
        mask = Some(match mask {
            Some(m) => &m & &hit,
            None => hit,
        });
    }
    let mut rows: Vec<usize> = match &mask {
        Some(m) => m.iter().enumerate().filter(|(_, b)| *b == Some(true)).map(|(i, _)| i).collect(),
        None => (0..table.height()).collect(),
    };
    let lengths = |rows: &[usize]| -> Result<Vec<usize>> {
        let texts: Vec<&StringChunked> = cols.iter().map(|c| table.text(c)).collect::<Result<_>>()?;
        Ok(rows.iter().map(|&r| texts.iter().map(|s| s.get(r).map_or(0, |x| x.chars().count())).sum()).collect())
    };
    if q.min_chars.is_some() || q.max_chars.is_some() {
        let lens = lengths(&rows)?;
        let (lo, hi) = (q.min_chars.unwrap_or(0), q.max_chars.unwrap_or(usize::MAX));
        rows = rows.into_iter().zip(lens).filter(|(_, l)| (lo..=hi).contains(l)).map(|(r, _)| r).collect();
    }
    if q.status.is_some() || q.min_rating.is_some() || q.tag.is_some() {
        let ids = table.text(ID_COLUMN)?;
        rows.retain(|&r| {
            let l = ids.get(r).and_then(|id| labels.get(id));
            let status_ok = match q.status.as_deref() {
                None => true,
                Some("unlabelled") => l.is_none_or(|l| l.status.is_none()),
                Some(s) => l.and_then(|l| l.status.as_deref()) == Some(s),
            };
            let rating_ok = q.min_rating.is_none_or(|m| l.and_then(|l| l.rating).is_some_and(|x| x >= m));
            let tag_ok = q.tag.as_ref().is_none_or(|t| l.is_some_and(|l| l.tags.contains(t)));
            status_ok && rating_ok && tag_ok
        });
    }
    if let Some(by) = &q.sort_by {
        if by == "length" {
            let lens = lengths(&rows)?;
            let mut pairs: Vec<(usize, usize)> = rows.into_iter().zip(lens).collect();
            pairs.sort_by_key(|&(r, l)| (l, r));
            rows = pairs.into_iter().map(|(r, _)| r).collect();
        } else {
            let s = table.text(by)?;
            rows.sort_by(|&a, &b| s.get(a).cmp(&s.get(b)).then(a.cmp(&b)));
        }
        if q.descending {
            rows.reverse();
        }
    }
    Ok(rows)
}

// ---------------------------------------------------------------- duplicates

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DupGroup {
    /// `exact` (same text after normalising case and spaces) or `near` (MinHash estimate).
    pub kind: String,
    /// Rows in table order; the first is the one a drop keeps.
    pub rows: Vec<usize>,
    pub ids: Vec<String>,
    /// Lowest estimated Jaccard similarity between linked rows (1.0 for exact).
    pub similarity: f64,
}

const MINHASH_PERMS: usize = 128;
const LSH_BANDS: usize = 32;
const SHINGLE: usize = 5;

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

fn mix64(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// MinHash signature of the character 5-shingles of `text` (already normalised).
pub fn minhash(text: &str) -> Vec<u64> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut shingles = HashSet::new();
    if chars.len() <= SHINGLE {
        shingles.insert(fnv1a(text.as_bytes()));
    } else {
        for w in 0..=chars.len() - SHINGLE {
            let start = chars[w].0;
            let end = chars.get(w + SHINGLE).map_or(text.len(), |c| c.0);
            shingles.insert(fnv1a(&text.as_bytes()[start..end]));
        }
    }
    (0..MINHASH_PERMS)
        .map(|i| {
            let seed = mix64(i as u64 + 1);
            shingles.iter().map(|&s| mix64(s ^ seed)).min().unwrap_or(u64::MAX)
        })
        .collect()
}

fn estimate(a: &[u64], b: &[u64]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

fn find(parent: &mut [usize], x: usize) -> usize {
    let mut r = x;
    while parent[r] != r {
        r = parent[r];
    }
    let mut x = x;
    while parent[x] != r {
        let n = parent[x];
        parent[x] = r;
        x = n;
    }
    r
}

/// The text of a row over `columns` (default: prompt and response roles, else every column).
fn row_texts(table: &Table, roles: &Roles, columns: &[String]) -> Result<Vec<String>> {
    let cols: Vec<String> = if !columns.is_empty() {
        columns.to_vec()
    } else {
        let r: Vec<String> = [&roles.prompt, &roles.response, &roles.messages, &roles.chosen].into_iter().flatten().cloned().collect();
        if r.is_empty() { table.column_names() } else { r }
    };
    let texts: Vec<&StringChunked> = cols.iter().map(|c| table.text(c)).collect::<Result<_>>()?;
    Ok((0..table.height()).map(|i| texts.iter().map(|s| normalise(s.get(i).unwrap_or(""))).collect::<Vec<_>>().join("\u{1f}")).collect())
}

/// Exact and near-duplicate groups over `columns`; near means estimated Jaccard ≥ `threshold`.
pub fn find_duplicates(table: &Table, roles: &Roles, columns: &[String], threshold: f64) -> Result<Vec<DupGroup>> {
    if !(0.0..=1.0).contains(&threshold) {
        bail!("threshold must be between 0 and 1");
    }
    let texts: Vec<String> = row_texts(table, roles, columns)?;
    let ids = table.ids()?;
    let mut groups = Vec::new();
    // Exact duplicates.
    let mut by_text: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, t) in texts.iter().enumerate() {
        by_text.entry(t.as_str()).or_default().push(i);
    }
    let mut representative = vec![true; texts.len()];
    for rows in by_text.values().filter(|r| r.len() > 1) {
        for &r in &rows[1..] {
            representative[r] = false;
        }
        groups.push(DupGroup {
            kind: "exact".into(),
            rows: rows.clone(),
            ids: rows.iter().map(|&r| ids[r].clone()).collect(),
            similarity: 1.0,
        });
    }
    // Near duplicates among the distinct texts.
    let reps: Vec<usize> = (0..texts.len()).filter(|&i| representative[i]).collect();
    let sigs: Vec<Vec<u64>> = reps.par_iter().map(|&i| minhash(&texts[i])).collect();
    let rows_per_band = MINHASH_PERMS / LSH_BANDS;
    let mut parent: Vec<usize> = (0..reps.len()).collect();
    let mut min_sim = vec![1.0f64; reps.len()];
    let mut checked = HashSet::new();
    for band in 0..LSH_BANDS {
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
        for (k, sig) in sigs.iter().enumerate() {
            let key = sig[band * rows_per_band..(band + 1) * rows_per_band].iter().fold(band as u64, |h, &x| mix64(h ^ x));
            buckets.entry(key).or_default().push(k);
        }
        for members in buckets.values().filter(|m| m.len() > 1) {
            for a in 0..members.len() {
                for b in a + 1..members.len() {
                    let (x, y) = (members[a], members[b]);
                    if !checked.insert((x, y)) {
                        continue;
                    }
                    let s = estimate(&sigs[x], &sigs[y]);
                    if s >= threshold {
                        let (rx, ry) = (find(&mut parent, x), find(&mut parent, y));
                        let m = min_sim[rx].min(min_sim[ry]).min(s);
                        if rx != ry {
                            parent[ry] = rx;
                        }
                        min_sim[rx] = m;
                    }
                }
            }
        }
    }
    let mut near: HashMap<usize, Vec<usize>> = HashMap::new();
    for k in 0..reps.len() {
        let r = find(&mut parent, k);
        near.entry(r).or_default().push(reps[k]);
    }
    for (root, mut rows) in near.into_iter().filter(|(_, r)| r.len() > 1) {
        rows.sort_unstable();
        groups.push(DupGroup { kind: "near".into(), ids: rows.iter().map(|&r| ids[r].clone()).collect(), rows, similarity: min_sim[root] });
    }
    groups.sort_by_key(|g| g.rows[0]);
    Ok(groups)
}

/// Rows to remove so each group keeps only its first row.
pub fn duplicate_rows_to_drop(groups: &[DupGroup]) -> Vec<usize> {
    let mut v: Vec<usize> = groups.iter().flat_map(|g| g.rows[1..].iter().copied()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

// ---------------------------------------------------------------- PII

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiKind {
    Email,
    Phone,
    IdNumber,
    Account,
    DateOfBirth,
    Name,
}

impl PiiKind {
    pub fn placeholder(self) -> &'static str {
        match self {
            PiiKind::Email => "[EMAIL]",
            PiiKind::Phone => "[PHONE]",
            PiiKind::IdNumber => "[ID]",
            PiiKind::Account => "[ACCOUNT]",
            PiiKind::DateOfBirth => "[DOB]",
            PiiKind::Name => "[NAME]",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PiiHit {
    pub row: usize,
    pub id: String,
    pub column: String,
    /// Byte range in the cell.
    pub start: usize,
    pub end: usize,
    pub kind: PiiKind,
    pub text: String,
}

struct PiiRule {
    kind: PiiKind,
    re: Regex,
    /// Reject matches glued to other digits (no look-around in `regex`).
    digit_bounded: bool,
    check: Option<fn(&str) -> bool>,
}

fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() < 13 {
        return false;
    }
    let sum: u32 =
        digits.iter().rev().enumerate().map(|(i, &d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }).sum();
    sum.is_multiple_of(10)
}

/// A phone number has 7–15 digits and either an international `+`, an area code in
/// parentheses, or three digit groups ("2023 1500" and "12.500" are not phones).
fn phone_like(s: &str) -> bool {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    let groups = s.split(|c: char| !c.is_ascii_digit()).filter(|g| !g.is_empty()).count();
    (7..=15).contains(&digits) && (s.starts_with('+') || s.contains('(') || groups >= 3)
}

fn pii_rules() -> &'static [PiiRule] {
    static RULES: std::sync::OnceLock<Vec<PiiRule>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let r = |kind, pat: &str, digit_bounded, check| PiiRule { kind, re: Regex::new(pat).unwrap(), digit_bounded, check };
        let date = r"(?:\d{4}[-/.年]\d{1,2}[-/.月]\d{1,2}日?|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}|(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.? \d{1,2},? \d{4}|\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.? \d{4})";
        vec![
            r(PiiKind::Email, r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", false, None),
            // Dates of birth: a date after a birth keyword.
            r(
                PiiKind::DateOfBirth,
                &format!(r"(?i:date of birth|born on|born|birth ?date|birthday|d\.?o\.?b\.?|出生日期|出生于|生日)\W{{0,3}}(?P<x>{date})"),
                false,
                None,
            ),
            // US SSN, Chinese resident ID.
            r(PiiKind::IdNumber, r"\d{3}-\d{2}-\d{4}", true, None),
            r(PiiKind::IdNumber, r"\d{17}[\dXx]", true, None),
            // Medical record / passport / ID numbers after a keyword.
            r(PiiKind::IdNumber, r"(?i:mrn|medical record(?: number| no\.?)?|passport(?: number| no\.?)?|patient id|身份证号?|病历号)\W{0,3}(?P<x>[A-Z0-9][A-Z0-9-]{4,})", false, None),
            // Card numbers (Luhn-valid), IBANs, account numbers after a keyword.
            r(PiiKind::Account, r"\d(?:[ -]?\d){12,18}", true, Some(luhn)),
            r(PiiKind::Account, r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b", false, None),
            r(PiiKind::Account, r"(?i:account|acct|a/c|账号|卡号)(?i: number| no\.?| #)?\W{0,3}(?P<x>\d[\d-]{5,})", false, None),
            // Phone numbers: Chinese mobiles, then international/US/European shapes.
            r(PiiKind::Phone, r"1[3-9]\d{9}", true, None),
            r(PiiKind::Phone, r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}[\s.-]\d{3,4}(?:[\s.-]\d{2,4})?", true, Some(phone_like)),
            // Names: after an honorific or a name field.
            r(PiiKind::Name, r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+(?P<x>[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)", false, None),
            r(PiiKind::Name, r"(?:(?i:my name is|patient name|name)\s*[:：]?\s*)(?P<x>[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)", false, None),
            r(PiiKind::Name, r"(?:姓名|患者|病人)[:：]?\s*(?P<x>\p{Han}{2,3})", false, None),
        ]
    })
}

/// PII in one text: non-overlapping spans, earliest first (earlier rules win overlaps).
pub fn scan_text(text: &str) -> Vec<(usize, usize, PiiKind)> {
    let mut spans: Vec<(usize, usize, PiiKind)> = Vec::new();
    let bytes = text.as_bytes();
    for rule in pii_rules() {
        for caps in rule.re.captures_iter(text) {
            let m = caps.name("x").unwrap_or_else(|| caps.get(0).unwrap());
            let (s, e) = (m.start(), m.end());
            if rule.digit_bounded {
                // Not part of a longer run of digit groups ("4111 1111 1111 1112" is not a phone).
                let sep = |b: u8| matches!(b, b' ' | b'-' | b'.');
                let before = s > 0 && (bytes[s - 1].is_ascii_digit() || (s > 1 && sep(bytes[s - 1]) && bytes[s - 2].is_ascii_digit()));
                let after = e < bytes.len()
                    && (bytes[e].is_ascii_digit() || (e + 1 < bytes.len() && sep(bytes[e]) && bytes[e + 1].is_ascii_digit()));
                if before || after {
                    continue;
                }
            }
            if let Some(check) = rule.check
                && !check(m.as_str())
            {
                continue;
            }
            if spans.iter().any(|&(a, b, _)| s < b && a < e) {
                continue;
            }
            spans.push((s, e, rule.kind));
        }
    }
    spans.sort();
    spans
}

/// Replace each span with its kind's placeholder.
pub fn redact_text(text: &str, spans: &[(usize, usize, PiiKind)]) -> String {
    let mut spans = spans.to_vec();
    spans.sort();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e, k) in spans {
        if s < at {
            continue;
        }
        out.push_str(&text[at..s]);
        out.push_str(k.placeholder());
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

/// Scan the text columns (default: all) for PII.
pub fn scan_pii(table: &Table, columns: &[String]) -> Result<Vec<PiiHit>> {
    let cols: Vec<String> = if columns.is_empty() {
        table
            .columns
            .iter()
            .filter(|c| c.kind == ColumnKind::Text || c.name.contains("message") || c.name.contains("conversation"))
            .map(|c| c.name.clone())
            .collect()
    } else {
        columns.to_vec()
    };
    let ids = table.ids()?;
    let mut hits = Vec::new();
    for c in &cols {
        let s = table.text(c)?;
        let cells: Vec<Option<&str>> = s.iter().collect();
        let found: Vec<(usize, Vec<(usize, usize, PiiKind)>)> =
            cells.par_iter().enumerate().filter_map(|(i, v)| v.map(|t| (i, scan_text(t)))).filter(|(_, v)| !v.is_empty()).collect();
        for (row, spans) in found {
            let cell = cells[row].unwrap();
            for (start, end, kind) in spans {
                hits.push(PiiHit { row, id: ids[row].clone(), column: c.clone(), start, end, kind, text: cell[start..end].to_string() });
            }
        }
    }
    hits.sort_by(|a, b| (a.row, &a.column, a.start).cmp(&(b.row, &b.column, b.start)));
    Ok(hits)
}

/// A copy of `table` with the given hits replaced by placeholders.
pub fn redact(table: &Table, hits: &[PiiHit]) -> Result<Table> {
    let mut by_cell: HashMap<(String, usize), Vec<(usize, usize, PiiKind)>> = HashMap::new();
    for h in hits {
        by_cell.entry((h.column.clone(), h.row)).or_default().push((h.start, h.end, h.kind));
    }
    let mut out = table.clone();
    let cols: HashSet<String> = hits.iter().map(|h| h.column.clone()).collect();
    for c in cols {
        let kind = table.kind(&c).ok_or_else(|| anyhow!("column `{c}` not found"))?;
        let s = table.text(&c)?;
        let cells: Vec<Option<String>> = s
            .iter()
            .enumerate()
            .map(|(i, v)| v.map(|t| by_cell.get(&(c.clone(), i)).map_or_else(|| t.to_string(), |sp| redact_text(t, sp))))
            .collect();
        out.set_text_column(&c, cells, kind)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------- token statistics

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenStats {
    pub count: usize,
    pub min: usize,
    pub max: usize,
    pub mean: f64,
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max_seq_len: usize,
    /// Examples longer than `max_seq_len` (they would be truncated).
    pub over: usize,
    pub share_over: f64,
    /// (lower bound, upper bound exclusive, count), equal-width bins.
    pub histogram: Vec<(usize, usize, usize)>,
    pub lengths: Vec<usize>,
}

/// Token length of every example as training would format it (chat template when the
/// tokenizer has one), with a histogram and the share over `max_seq_len`.
pub fn token_stats(table: &Table, roles: &Roles, tok: &Tokenizer, max_seq_len: usize, bins: usize) -> Result<TokenStats> {
    let records = table.records()?;
    let examples = super::records::sft_examples(&records, roles, std::path::Path::new("dataset"))?;
    let lengths: Vec<usize> = examples
        .par_iter()
        .map(|ex| crate::text::sft::encode(tok, ex, usize::MAX, true, tok.eos_id()).map(|e| e.ids.len()))
        .collect::<Result<_>>()?;
    Ok(length_stats(lengths, max_seq_len, bins))
}

pub fn length_stats(lengths: Vec<usize>, max_seq_len: usize, bins: usize) -> TokenStats {
    let mut sorted = lengths.clone();
    sorted.sort_unstable();
    let n = sorted.len();
    let pct = |p: f64| if n == 0 { 0 } else { sorted[((p * (n - 1) as f64).round() as usize).min(n - 1)] };
    let (min, max) = (sorted.first().copied().unwrap_or(0), sorted.last().copied().unwrap_or(0));
    let bins = bins.max(1);
    let width = ((max + 1).saturating_sub(min)).div_ceil(bins).max(1);
    let mut histogram: Vec<(usize, usize, usize)> = (0..bins).map(|b| (min + b * width, min + (b + 1) * width, 0)).collect();
    for &l in &sorted {
        let b = ((l - min) / width).min(bins - 1);
        histogram[b].2 += 1;
    }
    let over = sorted.iter().filter(|&&l| l > max_seq_len).count();
    TokenStats {
        count: n,
        min,
        max,
        mean: if n == 0 { 0.0 } else { sorted.iter().sum::<usize>() as f64 / n as f64 },
        p50: pct(0.5),
        p90: pct(0.9),
        p99: pct(0.99),
        max_seq_len,
        over,
        share_over: if n == 0 { 0.0 } else { over as f64 / n as f64 },
        histogram,
        lengths,
    }
}

// ---------------------------------------------------------------- splits

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitFractions {
    pub train: f64,
    pub validation: f64,
    pub test: f64,
}

/// `train`/`validation`/`test` per row: seeded shuffle, then each stratum (rows sharing a
/// `strata` value, or all rows) is cut by the fractions, so every split keeps the label mix.
pub fn split_assignments(n: usize, strata: Option<&[String]>, f: SplitFractions, seed: u64) -> Result<Vec<&'static str>> {
    let total = f.train + f.validation + f.test;
    if f.train < 0.0 || f.validation < 0.0 || f.test < 0.0 || (total - 1.0).abs() > 1e-6 {
        bail!("split fractions must be non-negative and add up to 1 (got {} + {} + {})", f.train, f.validation, f.test);
    }
    let mut groups: Vec<Vec<usize>> = match strata {
        None => vec![(0..n).collect()],
        Some(s) => {
            let mut m: std::collections::BTreeMap<&str, Vec<usize>> = std::collections::BTreeMap::new();
            for (i, v) in s.iter().enumerate() {
                m.entry(v.as_str()).or_default().push(i);
            }
            m.into_values().collect()
        }
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec!["train"; n];
    // Cut each stratum at cumulative boundaries, carrying the rounding from one stratum to the
    // next, so small strata do not each round validation and test up (halves go to train).
    let round_half_down = |x: f64| (x - 0.5).ceil().max(0.0) as usize;
    let (mut seen, mut given_val, mut given_vt) = (0usize, 0usize, 0usize);
    for g in &mut groups {
        g.shuffle(&mut rng);
        seen += g.len();
        let want_val = round_half_down(seen as f64 * f.validation);
        let want_vt = round_half_down(seen as f64 * (f.validation + f.test)).max(want_val);
        let n_val = want_val.saturating_sub(given_val).min(g.len());
        let n_test = want_vt.saturating_sub(given_vt).saturating_sub(n_val).min(g.len() - n_val);
        given_val += n_val;
        given_vt += n_val + n_test;
        for (j, &row) in g.iter().enumerate() {
            out[row] = if j < n_val {
                "validation"
            } else if j < n_val + n_test {
                "test"
            } else {
                "train"
            };
        }
    }
    Ok(out)
}
