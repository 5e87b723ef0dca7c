//! Plain-text and Markdown tables, and the settings a report was made with: what the report
//! and the protocol scenarios both print with.

use std::fmt::Write as _;

use serde::Serialize;

/// The settings a report was made with.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub mode: String,
    pub cores: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub runs: usize,
    pub client_threads: usize,
    /// Tokio worker threads, and reactor-pool's worker threads in the echo scenarios.
    pub server_threads: usize,
    pub reactors: usize,
    pub echo_workers: usize,
    /// reactor-pool workers and tokio blocking threads in the blocking workload.
    pub blocking_workers: usize,
    pub thread_stack_kib: usize,
    pub filter: Option<String>,
    /// `--baseline-bench`: the other build of this bench serving the `@base` echo servers.
    pub baseline_bench: Option<String>,
    /// `--baseline-examples`: the other build's examples (`echo_server@base`...).
    pub baseline_examples: Option<String>,
}

pub fn text_table(headers: &[&str], rows: &[Vec<String>], out: &mut String) {
    text_table_with(headers, rows, 2, out);
}

/// [`text_table`] with its first `text_columns` columns left-aligned (2 there).
pub fn text_table_with(
    headers: &[&str],
    rows: &[Vec<String>],
    text_columns: usize,
    out: &mut String,
) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String], out: &mut String| {
        for (i, (cell, &w)) in cells.iter().zip(&widths).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            // Text columns left-aligned, numbers right-aligned.
            if i < text_columns {
                let _ = write!(out, "{sep}{cell:<w$}");
            } else {
                let _ = write!(out, "{sep}{cell:>w$}");
            }
        }
        out.push('\n');
    };
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    line(&header, out);
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for r in rows {
        line(r, out);
    }
}

pub fn markdown_table(headers: &[&str], rows: &[Vec<String>], md: &mut String) {
    markdown_table_with(headers, rows, 2, md);
}

/// [`markdown_table`] with its first `text_columns` columns left-aligned (2 there).
pub fn markdown_table_with(
    headers: &[&str],
    rows: &[Vec<String>],
    text_columns: usize,
    md: &mut String,
) {
    let _ = writeln!(md, "| {} |", headers.join(" | "));
    let align: String = (0..headers.len())
        .map(|i| if i < text_columns { "---|" } else { "---:|" })
        .collect();
    let _ = writeln!(md, "|{align}");
    for r in rows {
        let _ = writeln!(md, "| {} |", r.join(" | "));
    }
}

/// A paired scenario group's stdout part: its table (when it has rows), then `lines`
/// (failures, skips), one each.
pub fn text_section<'a>(
    headers: &[&str],
    rows: &[Vec<String>],
    lines: impl IntoIterator<Item = &'a String>,
) -> String {
    let mut out = String::new();
    if !rows.is_empty() {
        out.push('\n');
        text_table(headers, rows, &mut out);
    }
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// A paired scenario group's report.md section up to its notes: `intro` (a heading and
/// what was measured), then the table and `legend` when it has rows.
pub fn markdown_section(
    intro: &str,
    headers: &[&str],
    rows: &[Vec<String>],
    legend: &str,
    md: &mut String,
) {
    let _ = writeln!(md, "{intro}");
    if !rows.is_empty() {
        markdown_table(headers, rows, md);
        md.push_str(legend);
    }
}
