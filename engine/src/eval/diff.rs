//! Word-level difference between two outputs (longest common subsequence over words), for
//! side-by-side views.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Same,
    /// Only in the first text.
    Removed,
    /// Only in the second text.
    Added,
}

/// Words keep their trailing whitespace, so joining a side's pieces gives its text back.
fn words(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in s.char_indices() {
        // CJK text has no spaces: compare it character by character.
        let cjk = ('\u{3000}'..='\u{9fff}').contains(&c) || ('\u{ff00}'..='\u{ffef}').contains(&c);
        if cjk {
            if i > start {
                out.push(&s[start..i]);
            }
            out.push(&s[i..i + c.len_utf8()]);
            start = i + c.len_utf8();
            in_space = false;
            continue;
        }
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&s[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// The edit script from `a` to `b` as (op, text) pieces in reading order.
pub fn word_diff(a: &str, b: &str) -> Vec<(Op, String)> {
    let (wa, wb) = (words(a), words(b));
    let key = |w: &str| w.trim_end().to_string();
    let (n, m) = (wa.len(), wb.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if key(wa[i]) == key(wb[j]) { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut out: Vec<(Op, String)> = Vec::new();
    let mut push = |op: Op, w: &str| match out.last_mut() {
        Some((o, s)) if *o == op => s.push_str(w),
        _ => out.push((op, w.to_string())),
    };
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if key(wa[i]) == key(wb[j]) {
            push(Op::Same, wb[j]);
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            push(Op::Removed, wa[i]);
            i += 1;
        } else {
            push(Op::Added, wb[j]);
            j += 1;
        }
    }
    for w in &wa[i..] {
        push(Op::Removed, w);
    }
    for w in &wb[j..] {
        push(Op::Added, w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_changed_words() {
        let d = word_diff("Call an ambulance now.", "Call a GP now.");
        assert_eq!(
            d,
            vec![(Op::Same, "Call ".into()), (Op::Removed, "an ambulance ".into()), (Op::Added, "a GP ".into()), (Op::Same, "now.".into())]
        );
        let same = word_diff("多休息", "多喝水");
        assert_eq!(same[0], (Op::Same, "多".into()));
        let rebuilt_b: String = word_diff("x y z", "x q z").iter().filter(|(o, _)| *o != Op::Removed).map(|(_, s)| s.as_str()).collect();
        assert_eq!(rebuilt_b, "x q z");
    }
}
