//! Merging `pupil bench -o jsonl` results from many devices into one report: a markdown
//! table of models × devices (speed, load time, memory, quality) and an SVG chart of
//! tokens/s per model per device.
//!
//! Lines are read leniently (fields added by later versions are ignored, missing ones
//! left blank) but a line that is not a bench result is an error naming it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// One measurement, as `pupil bench` writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultLine {
    pub model: String,
    pub test: String,
    pub threads: u64,
    pub backend: String,
    pub median_ts: f64,
    pub load_ms: Option<f64>,
    pub peak_rss: Option<u64>,
    pub peak_anon: Option<u64>,
    pub bits_per_byte: Option<f64>,
    pub ppl: Option<f64>,
    /// "CPU model (arch, os)".
    pub device: String,
}

/// The result schema this build reads (`pupil bench` writes it as `schema`).
pub const SCHEMA: u64 = 1;

/// Parses one JSON line of `pupil bench -o jsonl`.
pub fn parse_line(line: &str) -> Result<ResultLine, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("schema").and_then(Value::as_u64) {
        Some(SCHEMA) => {}
        Some(other) => return Err(format!("result schema {other} is not supported (this pupil reads {SCHEMA})")),
        None => return Err("no `schema` field: not a `pupil bench -o jsonl` result".into()),
    }
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    let dev = v.get("device").ok_or("no `device`")?;
    let ds = |k: &str| dev.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    Ok(ResultLine {
        model: s("model_type").or_else(|| s("model")).ok_or("no `model`")?,
        test: s("test").ok_or("no `test`")?,
        threads: u("threads").ok_or("no `threads`")?,
        backend: s("backend").unwrap_or_else(|| "CPU".into()),
        median_ts: f("median_ts").or_else(|| f("avg_ts")).ok_or("no `median_ts`")?,
        load_ms: f("load_to_first_token_ms"),
        peak_rss: u("peak_rss_bytes"),
        peak_anon: u("peak_anon_bytes"),
        bits_per_byte: f("bits_per_byte"),
        ppl: f("ppl"),
        // A GPU row is that GPU's result, whatever host drove it.
        device: match s("gpu") {
            Some(gpu) => gpu,
            None => format!("{} ({}, {})", ds("cpu"), ds("arch"), ds("os")),
        },
    })
}

/// The markdown report.
pub fn markdown(results: &[ResultLine]) -> String {
    let devices: Vec<String> = unique(results.iter().map(|r| format!("{} · {} · {}t", r.device, r.backend, r.threads)));
    let key = |r: &ResultLine| format!("{} · {} · {}t", r.device, r.backend, r.threads);
    let mut out = String::from("# pupil results\n\n## Tokens per second (median)\n\n");
    let _ = writeln!(out, "| model | test | {} |", devices.join(" | "));
    let _ = writeln!(out, "| --- | --- |{}", " ---: |".repeat(devices.len()));
    let mut cells: BTreeMap<(String, String), BTreeMap<String, f64>> = BTreeMap::new();
    for r in results {
        cells.entry((r.model.clone(), r.test.clone())).or_default().insert(key(r), r.median_ts);
    }
    for ((model, test), by_device) in &cells {
        let row: Vec<String> =
            devices.iter().map(|d| by_device.get(d).map_or("—".into(), |t| format!("{t:.1}"))).collect();
        let _ = writeln!(out, "| {model} | {test} | {} |", row.join(" | "));
    }
    out += "\n## Load, memory and quality\n\n";
    out += "| model | device | load → first token | peak RSS | peak anonymous | bits/byte | PPL |\n";
    out += "| --- | --- | ---: | ---: | ---: | ---: | ---: |\n";
    let mut seen = BTreeMap::new();
    for r in results {
        seen.entry((r.model.clone(), key(r))).or_insert(r);
    }
    let mib = |b: Option<u64>| b.map_or("—".into(), |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64));
    let num = |v: Option<f64>, unit: &str| v.map_or("—".into(), |v| format!("{v:.4}{unit}"));
    for ((model, device), r) in seen {
        let load = r.load_ms.map_or("—".into(), |v| format!("{v:.0} ms"));
        let _ = writeln!(
            out,
            "| {model} | {device} | {load} | {} | {} | {} | {} |",
            mib(r.peak_rss),
            mib(r.peak_anon),
            num(r.bits_per_byte, ""),
            num(r.ppl, "")
        );
    }
    out
}

/// A grouped bar chart: for `test`, tokens/s per model (groups) per device (bars).
pub fn chart(results: &[ResultLine], test: &str) -> String {
    let rows: Vec<&ResultLine> = results.iter().filter(|r| r.test == test).collect();
    let models = unique(rows.iter().map(|r| r.model.clone()));
    let label = |r: &ResultLine| format!("{} · {} · {}t", r.device, r.backend, r.threads);
    let devices = unique(rows.iter().map(|r| label(r)));
    let groups: Vec<(String, Vec<f64>)> = models
        .iter()
        .map(|m| {
            let vals = devices
                .iter()
                .map(|d| rows.iter().find(|r| &r.model == m && &label(r) == d).map_or(0.0, |r| r.median_ts))
                .collect();
            (m.clone(), vals)
        })
        .collect();
    crate::svg::bar_chart(&format!("{test}: tokens per second"), &devices, &groups)
}

fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(model: &str, test: &str, cpu: &str, ts: f64) -> String {
        serde_json::json!({
            "schema": 1, "model": "m.gguf", "model_type": model, "test": test, "threads": 2, "backend": "CPU",
            "median_ts": ts, "avg_ts": ts, "load_to_first_token_ms": 50.0, "peak_rss_bytes": 100u64 << 20,
            "peak_anon_bytes": 10u64 << 20, "bits_per_byte": 0.9, "ppl": 18.4,
            "device": { "cpu": cpu, "arch": "x86_64", "os": "linux" },
        })
        .to_string()
    }

    #[test]
    fn merges_devices_into_one_table_and_chart() {
        let rs: Vec<ResultLine> = [
            line("llama 135M Q4_1", "tg128", "EPYC", 190.0),
            line("llama 135M Q4_1", "tg128", "Apple M2", 250.0),
            line("gemma3 268M Q8_0", "tg128", "EPYC", 120.0),
            line("llama 135M Q4_1", "pp512", "EPYC", 430.0),
        ]
        .iter()
        .map(|l| parse_line(l).unwrap())
        .collect();
        let md = markdown(&rs);
        assert!(md.contains("| llama 135M Q4_1 | tg128 | 190.0 | 250.0 |"), "{md}");
        assert!(md.contains("| gemma3 268M Q8_0 | tg128 | 120.0 | — |"), "{md}");
        assert!(md.contains("| 50 ms | 100 MiB | 10 MiB | 0.9000 | 18.4000 |"), "{md}");
        let svg = chart(&rs, "tg128");
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 4, "2 models × 2 devices");
        assert!(parse_line("{\"schema\": 1, \"test\": \"tg128\"}").is_err());
        assert!(parse_line(&line("m", "tg128", "x", 1.0).replace("\"schema\":1", "\"schema\":7"))
            .unwrap_err()
            .contains("schema 7"));
        assert!(parse_line("{\"test\": \"tg128\"}").unwrap_err().contains("no `schema`"));
        assert!(parse_line("garbage").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn a_gpu_row_is_labelled_by_its_gpu_and_backend() {
        let gpu = line("llama 135M Q4_1", "tg128", "Xeon", 300.0)
            .replace("\"backend\":\"CPU\"", "\"backend\":\"CUDA\",\"gpu\":\"NVIDIA H200\"");
        let rs: Vec<ResultLine> =
            [gpu, line("llama 135M Q4_1", "tg128", "Xeon", 190.0)].iter().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(rs[0].device, "NVIDIA H200");
        assert_eq!(rs[0].backend, "CUDA");
        let svg = chart(&rs, "tg128");
        assert!(svg.contains("NVIDIA H200 · CUDA · 2t") && svg.contains("Xeon (x86_64, linux) · CPU · 2t"), "{svg}");
    }
}
