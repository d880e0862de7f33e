//! Merging `pupil bench -o jsonl` results from many devices into one report: a markdown
//! table of models × devices (speed, load time, memory, quality) and an SVG chart of
//! tokens/s per model per device. llama.cpp's `llama-bench -o jsonl` lines are read too, as
//! columns of their own beside pupil's on the same device (with the ratio), so one sitting's
//! alternating runs of both make one head-to-head table. Repeated runs of a cell (rounds)
//! report their median.
//!
//! Lines are read leniently (fields added by later versions are ignored, missing ones
//! left blank) but a line that is not a bench result is an error naming it.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

/// One measurement, as `pupil bench` (or `llama-bench`) writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultLine {
    /// "pupil", or "llama.cpp <commit>".
    pub runtime: String,
    pub model: String,
    /// The model file's name, which matches llama-bench's rows to pupil's.
    pub file: Option<String>,
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
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    let file = |k: &str| s(k).map(|p| p.rsplit(['/', '\\']).next().unwrap_or(&p).to_string());
    match v.get("schema").and_then(Value::as_u64) {
        Some(SCHEMA) => {}
        Some(other) => return Err(format!("result schema {other} is not supported (this pupil reads {SCHEMA})")),
        None if v.get("build_commit").is_some() => return parse_llama_bench(&v),
        None => return Err("no `schema` field: neither a `pupil bench` nor a `llama-bench` -o jsonl result".into()),
    }
    let dev = v.get("device").ok_or("no `device`")?;
    let ds = |k: &str| dev.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    Ok(ResultLine {
        runtime: "pupil".into(),
        model: s("model_type").or_else(|| s("model")).ok_or("no `model`")?,
        file: file("model"),
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

/// One `llama-bench -o jsonl` line.
fn parse_llama_bench(v: &Value) -> Result<ResultLine, String> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    let (n_prompt, n_gen) = (u("n_prompt").ok_or("no `n_prompt`")?, u("n_gen").ok_or("no `n_gen`")?);
    let test = match (n_prompt, n_gen) {
        (p, 0) => format!("pp{p}"),
        (0, g) => format!("tg{g}"),
        (p, g) => format!("pp{p}+tg{g}"),
    };
    let test = match u("n_depth") {
        Some(d) if d > 0 => format!("{test} @ d{d}"),
        _ => test,
    };
    Ok(ResultLine {
        runtime: format!("llama.cpp {}", s("build_commit").unwrap_or_default()),
        model: s("model_type").ok_or("no `model_type`")?,
        file: s("model_filename").map(|p| p.rsplit(['/', '\\']).next().unwrap_or(&p).to_string()),
        test,
        threads: u("n_threads").ok_or("no `n_threads`")?,
        backend: s("backends").unwrap_or_else(|| "CPU".into()),
        median_ts: v.get("avg_ts").and_then(Value::as_f64).ok_or("no `avg_ts`")?,
        load_ms: None,
        peak_rss: None,
        peak_anon: None,
        bits_per_byte: None,
        ppl: None,
        device: match s("gpu_info").filter(|g| !g.is_empty()) {
            Some(gpu) => gpu,
            None => s("cpu_info").unwrap_or_else(|| "?".into()),
        },
    })
}

/// A results column: pupil's are named by device, backend and threads; another runtime's
/// get its name in front.
fn column(r: &ResultLine) -> String {
    let base = format!("{} · {} · {}t", r.device, r.backend, r.threads);
    if r.runtime == "pupil" {
        base
    } else {
        format!("{} · {base}", r.runtime)
    }
}

/// The row a result belongs in: another runtime's run of a file pupil also ran joins
/// pupil's row for it (the runtimes name model types differently).
fn row_names(results: &[ResultLine]) -> Vec<String> {
    let pupil_name: BTreeMap<&str, &str> = results
        .iter()
        .filter(|r| r.runtime == "pupil")
        .filter_map(|r| Some((r.file.as_deref()?, r.model.as_str())))
        .collect();
    results
        .iter()
        .map(|r| match r.file.as_deref().and_then(|f| pupil_name.get(f)) {
            Some(name) if r.runtime != "pupil" => name.to_string(),
            _ => r.model.clone(),
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The markdown report.
pub fn markdown(results: &[ResultLine]) -> String {
    let devices: Vec<String> = unique(results.iter().map(column));
    // pupil / other runtime, for each other runtime's column whose backend and threads one
    // pupil column shares.
    let ratios: Vec<(String, usize, usize)> = devices
        .iter()
        .enumerate()
        .filter_map(|(i, d)| {
            let other = results.iter().find(|r| &column(r) == d && r.runtime != "pupil")?;
            let mut mine = devices.iter().enumerate().filter(|(_, p)| {
                results.iter().any(|r| {
                    &&column(r) == p && r.runtime == "pupil" && r.backend == other.backend && r.threads == other.threads
                })
            });
            let (j, _) = mine.next()?;
            mine.next().is_none().then(|| (format!("pupil / {} · {}t", other.runtime, other.threads), j, i))
        })
        .collect();
    let mut out = String::from("# pupil results\n\n## Tokens per second (median)\n\n");
    let headers: Vec<&str> = devices.iter().map(String::as_str).chain(ratios.iter().map(|r| r.0.as_str())).collect();
    let _ = writeln!(out, "| model | test | {} |", headers.join(" | "));
    let _ = writeln!(out, "| --- | --- |{}", " ---: |".repeat(headers.len()));
    let names = row_names(results);
    let mut cells: BTreeMap<(String, String), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for (r, name) in results.iter().zip(&names) {
        cells.entry((name.clone(), r.test.clone())).or_default().entry(column(r)).or_default().push(r.median_ts);
    }
    for ((model, test), by_device) in &cells {
        let medians: Vec<Option<f64>> = devices.iter().map(|d| by_device.get(d).cloned().map(median)).collect();
        let row: Vec<String> = medians
            .iter()
            .map(|m| m.map_or("—".into(), |t| format!("{t:.1}")))
            .chain(ratios.iter().map(|&(_, mine, other)| match (medians[mine], medians[other]) {
                (Some(a), Some(b)) => format!("{:.2}x", a / b),
                _ => "—".into(),
            }))
            .collect();
        let _ = writeln!(out, "| {model} | {test} | {} |", row.join(" | "));
    }
    out += "\n## Load, memory and quality\n\n";
    out += "| model | device | load → first token | peak RSS | peak anonymous | bits/byte | PPL |\n";
    out += "| --- | --- | ---: | ---: | ---: | ---: | ---: |\n";
    // Over a cell's rounds: the median load time, the largest memory, the quality figures
    // of whichever round measured them. llama-bench reports none of these.
    let mut runs: BTreeMap<(String, String), Vec<&ResultLine>> = BTreeMap::new();
    for (r, name) in results.iter().zip(&names) {
        if r.runtime == "pupil" {
            runs.entry((name.clone(), column(r))).or_default().push(r);
        }
    }
    let mib = |b: Option<u64>| b.map_or("—".into(), |b| format!("{:.0} MiB", b as f64 / (1 << 20) as f64));
    let num = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.4}"));
    for ((model, device), rs) in runs {
        let loads: Vec<f64> = rs.iter().filter_map(|r| r.load_ms).collect();
        let load = if loads.is_empty() { "—".into() } else { format!("{:.0} ms", median(loads)) };
        let _ = writeln!(
            out,
            "| {model} | {device} | {load} | {} | {} | {} | {} |",
            mib(rs.iter().filter_map(|r| r.peak_rss).max()),
            mib(rs.iter().filter_map(|r| r.peak_anon).max()),
            num(rs.iter().find_map(|r| r.bits_per_byte)),
            num(rs.iter().find_map(|r| r.ppl))
        );
    }
    out
}

/// A grouped bar chart: for `test`, tokens/s per model (groups) per device (bars).
pub fn chart(results: &[ResultLine], test: &str) -> String {
    let names = row_names(results);
    let rows: Vec<(&ResultLine, &String)> = results.iter().zip(&names).filter(|(r, _)| r.test == test).collect();
    let models = unique(rows.iter().map(|(_, m)| m.to_string()));
    let devices = unique(rows.iter().map(|(r, _)| column(r)));
    let groups: Vec<(String, Vec<f64>)> = models
        .iter()
        .map(|m| {
            let vals = devices
                .iter()
                .map(|d| {
                    let runs: Vec<f64> =
                        rows.iter().filter(|(r, n)| *n == m && &column(r) == d).map(|(r, _)| r.median_ts).collect();
                    if runs.is_empty() {
                        0.0
                    } else {
                        median(runs)
                    }
                })
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

    fn llama_bench_line(n_prompt: u64, n_gen: u64, ts: f64) -> String {
        serde_json::json!({
            "build_commit": "0c1e570", "cpu_info": "Xeon", "gpu_info": "", "backends": "CPU",
            "model_filename": "/models/m.gguf", "model_type": "llama 256M Q4_1", "n_threads": 2,
            "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": 0, "avg_ts": ts,
        })
        .to_string()
    }

    #[test]
    fn llama_bench_runs_join_pupils_rows_with_ratios_of_round_medians() {
        let lines = [
            llama_bench_line(512, 0, 400.0),
            line("llama 135M Q4_1", "pp512", "Xeon", 500.0).replace("\"ppl\":18.4", "\"ppl\":null"),
            llama_bench_line(512, 0, 410.0),
            line("llama 135M Q4_1", "pp512", "Xeon", 530.0).replace("\"ppl\":18.4", "\"ppl\":null"),
            llama_bench_line(512, 0, 380.0),
            line("llama 135M Q4_1", "pp512", "Xeon", 540.0),
            llama_bench_line(0, 128, 100.0),
        ];
        let rs: Vec<ResultLine> = lines.iter().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!((rs[0].test.as_str(), rs[6].test.as_str()), ("pp512", "tg128"));
        let md = markdown(&rs);
        assert!(
            md.contains("| model | test | llama.cpp 0c1e570 · Xeon · CPU · 2t | Xeon (x86_64, linux) · CPU · 2t | pupil / llama.cpp 0c1e570 · 2t |"),
            "{md}"
        );
        // Medians of three rounds: 400 and 530.
        assert!(md.contains("| llama 135M Q4_1 | pp512 | 400.0 | 530.0 | 1.32x |"), "{md}");
        assert!(md.contains("| llama 135M Q4_1 | tg128 | 100.0 | — | — |"), "{md}");
        // llama-bench measures no memory or quality: only pupil's row there, with the
        // perplexity of the one round that measured it.
        assert_eq!(md.matches("| llama 135M Q4_1 | ").count(), 3, "{md}");
        assert!(md.contains("| 50 ms | 100 MiB | 10 MiB | 0.9000 | 18.4000 |"), "{md}");
        assert!(parse_line("{\"build_commit\": \"x\"}").unwrap_err().contains("n_prompt"));
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
