//! `report`: merge bench results from many devices into one markdown report and chart.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::bench::report::{chart, markdown, parse_line, ResultLine};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// `pupil bench -o jsonl` output files, from any number of devices.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Markdown report; the chart goes next to it (same name, `.svg`).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// The test the chart shows.
    #[arg(long, default_value = "tg128")]
    pub chart_test: String,
}

pub fn report(a: ReportArgs) -> anyhow::Result<()> {
    let mut results: Vec<ResultLine> = Vec::new();
    for path in &a.results {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let r = parse_line(line).map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))?;
            results.push(r);
        }
    }
    anyhow::ensure!(!results.is_empty(), "no results in the given files");
    let svg_path = a.output.with_extension("svg");
    let mut md = markdown(&results);
    let svg_name = svg_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    md += &format!("\n![{} tokens/s per model and device]({svg_name})\n", a.chart_test);
    crate::fsutil::write_atomic(&a.output, md.as_bytes())?;
    crate::fsutil::write_atomic(&svg_path, chart(&results, &a.chart_test).as_bytes())?;
    println!("{} ({} results; chart {})", a.output.display(), results.len(), svg_path.display());
    Ok(())
}
