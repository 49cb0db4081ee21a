//! Evaluation reports: Markdown, and self-contained HTML with inline SVG charts (bars with
//! 95 % intervals per metric and per tag), the A/B ratings, and each model's provenance.

use std::fmt::Write as _;

use super::ratings::Ratings;
use super::score::EvalResult;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn provenance(r: &EvalResult) -> Vec<(String, String)> {
    r.models
        .iter()
        .map(|m| {
            let what = match &m.run {
                Some(run) => format!(
                    "run of `{}` from {} on {} v{} (seed {})",
                    run["method"].as_str().unwrap_or("?"),
                    run["base_model"]["path"].as_str().unwrap_or("?"),
                    run["dataset"]["name"].as_str().or_else(|| run["dataset"]["path"].as_str()).unwrap_or("?"),
                    run["dataset"]["version"].as_u64().map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    run["seed"]
                ),
                None => format!("sha256 {}", m.sha256),
            };
            (m.name.clone(), format!("{} — {what}", m.path.display()))
        })
        .collect()
}

pub fn markdown(r: &EvalResult, ratings: Option<&Ratings>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation: {}\n", r.suite);
    let _ = writeln!(s, "{} items from {} · {} · id `{}`\n", r.items.len(), r.dataset, r.created_at, r.id);
    let _ = writeln!(s, "| model | {} |", r.metrics.join(" | "));
    let _ = writeln!(s, "|---|{}", "---|".repeat(r.metrics.len()));
    for m in &r.summary {
        let cells: Vec<String> = r
            .metrics
            .iter()
            .map(|k| m.metrics.get(k).map_or("-".into(), |x| format!("{:.3} [{:.3}, {:.3}]", x.mean, x.lo, x.hi)))
            .collect();
        let _ = writeln!(s, "| {} | {} |", m.model, cells.join(" | "));
    }
    let _ = writeln!(s, "\nValues are means with 95 % bootstrap intervals (perplexity: lower is better).\n");
    let tags: std::collections::BTreeSet<&String> = r.summary.iter().flat_map(|m| m.by_tag.keys()).collect();
    if !tags.is_empty() {
        let metric = &r.metrics[0];
        let _ = writeln!(s, "## By tag ({metric})\n");
        let _ = writeln!(s, "| tag | {} |", r.summary.iter().map(|m| m.model.as_str()).collect::<Vec<_>>().join(" | "));
        let _ = writeln!(s, "|---|{}", "---|".repeat(r.summary.len()));
        for t in tags {
            let cells: Vec<String> = r
                .summary
                .iter()
                .map(|m| m.by_tag.get(t).and_then(|x| x.get(metric)).map_or("-".into(), |x| format!("{:.3} (n={})", x.mean, x.n)))
                .collect();
            let _ = writeln!(s, "| {t} | {} |", cells.join(" | "));
        }
    }
    if let Some(rt) = ratings.filter(|r| r.battles > 0) {
        let _ = writeln!(s, "\n## Blind A/B ({} verdicts)\n", rt.battles);
        let _ = writeln!(s, "| model | Elo (BT) | 95 % | win rate | 95 % |\n|---|---|---|---|---|");
        for x in &rt.ratings {
            let _ = writeln!(
                s,
                "| {} | {:.0} | [{:.0}, {:.0}] | {:.2} | [{:.2}, {:.2}] |",
                x.model, x.elo, x.lo, x.hi, x.win_rate, x.win_lo, x.win_hi
            );
        }
    }
    let _ = writeln!(s, "\n## Models\n");
    for (n, p) in provenance(r) {
        let _ = writeln!(s, "- **{n}**: {p}");
    }
    s
}

/// One horizontal-bar chart: a bar per (label, mean) with its interval.
fn svg_bars(title: &str, rows: &[(String, f64, f64, f64)]) -> String {
    // The axis spans zero and every value, so negative scores (e.g. rewards) draw too.
    let max = rows.iter().map(|r| r.3.max(r.1)).fold(0.0f64, f64::max);
    let min = rows.iter().map(|r| r.2.min(r.1)).fold(0.0f64, f64::min);
    let span = (max - min).max(1e-9);
    let scale = |v: f64| 160.0 + 360.0 * ((v - min) / span).clamp(0.0, 1.0);
    let h = 30 + rows.len() * 26;
    let mut s =
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"600\" height=\"{h}\" role=\"img\" aria-label=\"{}\">", esc(title));
    let _ = write!(s, "<text x=\"0\" y=\"16\" font-weight=\"bold\">{}</text>", esc(title));
    for (i, (label, mean, lo, hi)) in rows.iter().enumerate() {
        let y = 26 + i * 26;
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"{:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"18\" fill=\"#4c78a8\"/>\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#222\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{:.3}</text>",
            y + 14,
            esc(label),
            scale(0.0).min(scale(*mean)),
            (scale(*mean) - scale(0.0)).abs(),
            scale(*lo),
            scale(*hi),
            y + 9,
            y + 9,
            scale(*hi) + 6.0,
            y + 14,
            mean
        );
    }
    s.push_str("</svg>");
    s
}

pub fn html(r: &EvalResult, ratings: Option<&Ratings>) -> String {
    let mut s = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>");
    let _ = write!(
        s,
        "Evaluation: {}</title><style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style></head><body>",
        esc(&r.suite)
    );
    let _ = write!(
        s,
        "<h1>Evaluation: {}</h1><p>{} items · {} · <code>{}</code></p>",
        esc(&r.suite),
        r.items.len(),
        esc(&r.created_at),
        esc(&r.id)
    );
    for metric in &r.metrics {
        let rows: Vec<(String, f64, f64, f64)> =
            r.summary.iter().filter_map(|m| m.metrics.get(metric).map(|x| (m.model.clone(), x.mean, x.lo, x.hi))).collect();
        s.push_str(&svg_bars(metric, &rows));
        let tags: std::collections::BTreeSet<&String> = r.summary.iter().flat_map(|m| m.by_tag.keys()).collect();
        if !tags.is_empty() {
            let rows: Vec<(String, f64, f64, f64)> = tags
                .iter()
                .flat_map(|t| {
                    r.summary.iter().filter_map(move |m| {
                        m.by_tag.get(*t).and_then(|x| x.get(metric)).map(|x| (format!("{t} · {}", m.model), x.mean, x.lo, x.hi))
                    })
                })
                .collect();
            s.push_str(&svg_bars(&format!("{metric} by tag"), &rows));
        }
    }
    if let Some(rt) = ratings.filter(|r| r.battles > 0) {
        let _ = write!(
            s,
            "<h2>Blind A/B ({} verdicts)</h2><table><tr><th>model</th><th>Elo</th><th>95 %</th><th>win rate</th></tr>",
            rt.battles
        );
        for x in &rt.ratings {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{:.0}</td><td>{:.0}–{:.0}</td><td>{:.2}</td></tr>",
                esc(&x.model),
                x.elo,
                x.lo,
                x.hi,
                x.win_rate
            );
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Models</h2><ul>");
    for (n, p) in provenance(r) {
        let _ = write!(s, "<li><b>{}</b>: {}</li>", esc(&n), esc(&p));
    }
    s.push_str("</ul></body></html>\n");
    s
}

/// Write a report; the format follows the extension (.html or .md).
pub fn write(r: &EvalResult, ratings: Option<&Ratings>, out: &std::path::Path) -> anyhow::Result<()> {
    let text = match out.extension().and_then(|e| e.to_str()) {
        Some("html") | Some("htm") => html(r, ratings),
        Some("md") | Some("markdown") => markdown(r, ratings),
        _ => anyhow::bail!("{}: a report is .html or .md", out.display()),
    };
    crate::io::atomic_write(out, text.as_bytes())
}
