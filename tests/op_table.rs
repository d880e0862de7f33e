//! The op table (ggml's `test-backend-ops`, in spirit): every op the layer graph is made
//! of, on every backend this build and machine can run — the portable CPU kernels, the
//! SIMD ones this CPU has, and candle's (the GPU pass's ops on the host with a GPU feature;
//! on a GPU when `PUPIL_DEVICE` names one) — each against an f64 reference, printed as one
//! table (`cargo test --release --test op_table -- --nocapture`).
//!
//! The error of a result is normalized: `‖got − ref‖₂ / ‖ref‖₂`. Each op states its bound:
//! quantized products 1e-2 (activations are rounded to 8 bits, about 0.4 % each, as
//! llama.cpp does; a wrong kernel is off by tens of percent), F16 weights 2e-3 (candle
//! multiplies them in f16), everything in f32 1e-5.

use pupil::gguf::GgmlDType;
use pupil::kernels::dequantize;
use pupil::kernels::features::{self, Features};
use pupil::rng::Rng;
use pupil::synth::{random_blocks, weight_from};

/// Where an op runs.
#[derive(Debug, Clone)]
enum Backend {
    /// pupil's kernels limited to the portable forms.
    Scalar,
    /// pupil's kernels with every extension this CPU has.
    Simd,
    /// The GPU pass's candle ops on this device.
    #[cfg(feature = "gpu")]
    Candle(pupil::model::Device),
}

impl Backend {
    fn name(&self) -> String {
        match self {
            Backend::Scalar => "scalar".into(),
            Backend::Simd => format!("simd ({})", Features::detected().kernel_name()),
            #[cfg(feature = "gpu")]
            Backend::Candle(d) => format!("candle ({d})"),
        }
    }

    fn all() -> Vec<Backend> {
        #[allow(unused_mut)]
        let mut all = vec![Backend::Scalar, Backend::Simd];
        #[cfg(feature = "gpu")]
        {
            use pupil::model::{Device, DeviceRequest};
            let device = match std::env::var("PUPIL_DEVICE") {
                Ok(s) => s.parse::<DeviceRequest>().and_then(DeviceRequest::resolve).unwrap_or(Device::CandleCpu),
                Err(_) => Device::CandleCpu,
            };
            all.push(Backend::Candle(if device.is_cpu() { Device::CandleCpu } else { device }));
        }
        all
    }

    /// Runs `cpu` under this backend's CPU features (no thread pool: every item on this
    /// thread, so the limit applies throughout).
    fn on_cpu(&self, cpu: impl FnOnce() -> Vec<f32>) -> Option<Vec<f32>> {
        match self {
            Backend::Scalar => Some(features::limited_to(Features::PORTABLE, cpu)),
            Backend::Simd => Some(cpu()),
            #[cfg(feature = "gpu")]
            Backend::Candle(_) => None,
        }
    }
}

/// One row of the table: an op on given inputs, its f64 reference and its bound.
struct Case {
    op: String,
    reference: Vec<f64>,
    bound: f64,
    cpu: Box<dyn Fn() -> Vec<f32>>,
    #[cfg(feature = "gpu")]
    candle: CandleOp,
}

/// The same op through the GPU pass's candle functions.
#[cfg(feature = "gpu")]
type CandleOp = Box<dyn Fn(&candle_core::Device) -> candle_core::Result<Vec<f32>>>;

fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
}

/// Normalized error of `got` against `reference`.
fn error(got: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(got.len(), reference.len(), "result length");
    let diff: f64 = got.iter().zip(reference).map(|(&g, &r)| (g as f64 - r).powi(2)).sum();
    let norm: f64 = reference.iter().map(|r| r * r).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// The product of `n` random rows with a random weight of `dtype`; `relaid`: with the
/// weight re-laid for the CPU's eight-row kernels where the backend has them, as a model
/// loads it (the scalar and candle backends read the file's layout either way).
fn matmul_case(dtype: GgmlDType, n: usize, relaid: bool, rng: &mut Rng) -> Case {
    let (rows, cols) = (48, 512);
    let w = weight_from(dtype, rows, cols, &random_blocks(dtype, rows * cols, rng));
    let x = random(n * cols, rng);
    let mut dense = vec![0f32; rows * cols];
    dequantize(dtype, w.bytes(), &mut dense);
    let reference = (0..n)
        .flat_map(|t| {
            let (x, dense) = (&x, &dense);
            (0..rows).map(move |r| (0..cols).map(|k| dense[r * cols + k] as f64 * x[t * cols + k] as f64).sum())
        })
        .collect();
    let bound = if dtype == GgmlDType::F16 { 2e-3 } else { 1e-2 };
    #[cfg(feature = "gpu")]
    let (w2, x2) = (w.clone(), x.clone());
    Case {
        op: format!("mat-mul {dtype} × {n} rows{}", if relaid { " (re-laid)" } else { "" }),
        reference,
        bound,
        cpu: Box::new(move || {
            let mut out = vec![0f32; n * rows];
            let w = if relaid { w.interleaved_for_cpu().unwrap_or_else(|| w.clone()) } else { w.clone() };
            pupil::kernels::matmul(&w, &x, n, &mut out);
            out
        }),
        #[cfg(feature = "gpu")]
        candle: Box::new(move |dev| {
            use pupil::model::gpu::{product, upload_matrix};
            let q = upload_matrix(&w2, dev)?.expect("candle has kernels for every type here");
            let x = candle_core::Tensor::from_slice(&x2, (n, cols), dev)?;
            product(&candle_core::quantized::QMatMul::from_arc(q)?, &x)?.flatten_all()?.to_vec1()
        }),
    }
}

#[test]
fn every_op_on_every_backend_matches_the_f64_reference() {
    let mut rng = Rng::new(2024);
    let mut cases = Vec::new();
    for dtype in pupil::kernels::quant_dot::TYPES.into_iter().chain([GgmlDType::F16]) {
        for (n, relaid) in [1, 7, 64].into_iter().flat_map(|n| [(n, false), (n, true)]) {
            cases.push(matmul_case(dtype, n, relaid, &mut rng));
        }
    }
    cases.extend(f32_cases(&mut rng));

    let backends = Backend::all();
    let mut table =
        format!("| op | {} | bound |\n|---|", backends.iter().map(Backend::name).collect::<Vec<_>>().join(" | "));
    table += &"---|".repeat(backends.len() + 1);
    let mut failures = Vec::new();
    for case in &cases {
        table += &format!("\n| {} |", case.op);
        for backend in &backends {
            let got = match backend {
                #[cfg(feature = "gpu")]
                Backend::Candle(d) => {
                    let dev = pupil::model::gpu::open(*d).expect("open the candle device");
                    (case.candle)(&dev).unwrap_or_else(|e| panic!("{} on {}: {e}", case.op, backend.name()))
                }
                _ => backend.on_cpu(&case.cpu).expect("a CPU backend"),
            };
            let e = error(&got, &case.reference);
            table += &format!(" {e:.1e} |");
            if e.is_nan() || e > case.bound {
                failures.push(format!("{} on {}: error {e:.2e} > {:.0e}", case.op, backend.name(), case.bound));
            }
        }
        table += &format!(" {:.0e} |", case.bound);
    }
    eprintln!("normalized error ‖got − ref‖ / ‖ref‖ against f64:\n{table}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The ops computed in f32: norms, RoPE, attention, gates, softmax, the LoRA update.
fn f32_cases(rng: &mut Rng) -> Vec<Case> {
    use pupil::kernels::attention::{causal, Cached, Heads};
    use pupil::kernels::dot::{gated, softmax, Gate};
    use pupil::kernels::norm::rms_norm;
    use pupil::kernels::rope::{rope, rope_tables, RopeStyle};
    use pupil::kernels::Batching;

    let mut cases = Vec::new();
    let eps = 1e-5f32;
    let bound = 1e-5;

    // RMS-norm over whole rows, and per head (Q/K norms).
    for (rows, width, part) in [(7, 64, 64), (7, 64, 16)] {
        let x = random(rows * width, rng);
        let w: Vec<f32> = random(part, rng).iter().map(|v| 1.0 + 0.5 * v).collect();
        let reference = x
            .chunks(part)
            .flat_map(|xp| {
                let ms: f64 = xp.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / part as f64;
                let r = 1.0 / (ms + eps as f64).sqrt();
                xp.iter().zip(&w).map(move |(&v, &wi)| v as f64 * r * wi as f64).collect::<Vec<_>>()
            })
            .collect();
        #[cfg(feature = "gpu")]
        let (x2, w2) = (x.clone(), w.clone());
        cases.push(Case {
            op: format!("rms-norm {rows} × {width} by {part}"),
            reference,
            bound,
            cpu: Box::new(move || {
                let mut out = vec![0f32; x.len()];
                rms_norm(&x, &w, eps, &mut out, None);
                out
            }),
            #[cfg(feature = "gpu")]
            candle: Box::new(move |dev| {
                let x = candle_core::Tensor::from_slice(&x2, (rows, width), dev)?;
                let w = candle_core::Tensor::from_slice(&w2, part, dev)?;
                pupil::model::gpu::rms_norm(&x, &w, eps)?.flatten_all()?.to_vec1()
            }),
        });
    }

    // RoPE, both pairings, at positions 3..10; NeoX also turning half of each head only.
    let (n, heads, d, pos0) = (7, 4, 16, 3);
    for (style, n_rot) in [(RopeStyle::Adjacent, 16), (RopeStyle::NeoX, 16), (RopeStyle::NeoX, 8)] {
        let x = random(n * heads * d, rng);
        let inv_freq: Vec<f64> = (0..n_rot / 2).map(|i| 10000f64.powf(-2.0 * i as f64 / n_rot as f64)).collect();
        let mut reference: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for (t, row) in reference.chunks_mut(heads * d).enumerate() {
            for head in row.chunks_mut(d) {
                for (i, f) in inv_freq.iter().enumerate() {
                    let (s, c) = (((pos0 + t) as f64) * f).sin_cos();
                    let (a, b) = match style {
                        RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                        RopeStyle::NeoX => (i, i + n_rot / 2),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c - x1 * s;
                    head[b] = x0 * s + x1 * c;
                }
            }
        }
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        rope_tables(&inv_freq, 1.0, pos0, n, &mut cos, &mut sin);
        #[cfg(feature = "gpu")]
        let (x2, cos2, sin2) = (x.clone(), cos.clone(), sin.clone());
        cases.push(Case {
            op: format!("rope {style:?} {n_rot}/{d} dims"),
            reference,
            bound,
            cpu: Box::new(move || {
                let mut out = x.clone();
                rope(&mut out, d, n_rot, &cos, &sin, style, false);
                out
            }),
            #[cfg(feature = "gpu")]
            candle: Box::new(move |dev| {
                let x = candle_core::Tensor::from_slice(&x2, (n, heads * d), dev)?;
                let cos = candle_core::Tensor::from_slice(&cos2, (n, n_rot / 2), dev)?;
                let sin = candle_core::Tensor::from_slice(&sin2, (n, n_rot / 2), dev)?;
                let turned = pupil::model::gpu::rope(&x, &cos, &sin, style, d, n_rot)?;
                turned.squeeze(0)?.transpose(0, 1)?.flatten_all()?.to_vec1()
            }),
        });
    }

    // Attention: 5 new queries after 6 cached positions, grouped (4 query heads on 2 KV
    // heads), with and without a window; one query (decode); heads of 64 over more than a
    // block of cached positions (the SIMD tiles); each over an f32 and an f16 cache (whose
    // reference is the definition on the f16-rounded keys and values).
    let shapes =
        [(16, 5, 6, None), (16, 5, 6, Some(4)), (16, 1, 10, None), (64, 40, 150, None), (64, 1, 200, Some(100))];
    for ((d, n, pos0, window), f16_cache) in shapes.into_iter().flat_map(|s| [(s, false), (s, true)]) {
        let h = Heads { n_head: 4, n_head_kv: 2, head_dim: d };
        let context = pos0 + n;
        let (qd, kvd) = (h.n_head * h.head_dim, h.n_head_kv * h.head_dim);
        let q = random(n * qd, rng);
        let rounded = |x: Vec<f32>| {
            if f16_cache {
                x.into_iter().map(|v| half::f16::from_f32(v).to_f32()).collect()
            } else {
                x
            }
        };
        let k = rounded(random(context * kvd, rng));
        let v = rounded(random(context * kvd, rng));
        let reference = attention_reference(&q, &k, &v, pos0, h, window);
        #[cfg(feature = "gpu")]
        let (q2, k2, v2) = (q.clone(), k.clone(), v.clone());
        cases.push(Case {
            op: format!(
                "attention d={d} {n} after {pos0}, window {window:?}, {} cache",
                if f16_cache { "f16" } else { "f32" }
            ),
            reference,
            bound,
            cpu: Box::new(move || {
                let mut out = vec![0f32; q.len()];
                let half = |x: &[f32]| x.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<_>>();
                let (k16, v16) = (half(&k), half(&v));
                let (kc, vc) =
                    if f16_cache { (Cached::F16(&k16), Cached::F16(&v16)) } else { (Cached::F32(&k), Cached::F32(&v)) };
                causal(&q, kc, vc, pos0, h, window, &mut out, Batching::Tiled);
                out
            }),
            #[cfg(feature = "gpu")]
            candle: Box::new(move |dev| {
                use candle_core::Tensor;
                let d = h.head_dim;
                let q = Tensor::from_slice(&q2, (n, h.n_head, d), dev)?.transpose(0, 1)?.contiguous()?.unsqueeze(0)?;
                let kv =
                    |x: &[f32]| Tensor::from_slice(x, (context, h.n_head_kv, d), dev)?.transpose(0, 1)?.contiguous();
                let (mask, start) = pupil::model::gpu::attention_mask(pos0, n, window, dev)?;
                let len = context - start;
                let (keys, values) = (kv(&k2)?.narrow(1, start, len)?.contiguous()?, kv(&v2)?.narrow(1, start, len)?);
                pupil::model::gpu::attend(&q, &keys, &values.contiguous()?, &mask)?.flatten_all()?.to_vec1()
            }),
        });
    }

    // Gates.
    for act in [Gate::Silu, Gate::GeluTanh] {
        let g: Vec<f32> = random(7 * 64, rng).iter().map(|v| v * 5.0).collect();
        let u = random(g.len(), rng);
        let reference = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| {
                let g = g as f64;
                let a = match act {
                    Gate::Silu => g / (1.0 + (-g).exp()),
                    Gate::GeluTanh => {
                        0.5 * g * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g.powi(3))).tanh())
                    }
                };
                a * u as f64
            })
            .collect();
        #[cfg(feature = "gpu")]
        let (g2, u2) = (g.clone(), u.clone());
        cases.push(Case {
            op: format!("gate {act:?}"),
            reference,
            bound,
            cpu: Box::new(move || {
                let mut out = g.clone();
                gated(act, &mut out, &u);
                out
            }),
            #[cfg(feature = "gpu")]
            candle: Box::new(move |dev| {
                let g = candle_core::Tensor::from_slice(&g2, g2.len(), dev)?;
                let u = candle_core::Tensor::from_slice(&u2, u2.len(), dev)?;
                pupil::model::gpu::gated(act, &g, &u)?.to_vec1()
            }),
        });
    }

    // Softmax of a spread of scores.
    let x: Vec<f32> = random(131, rng).iter().map(|v| v * 20.0).collect();
    let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    let reference = x.iter().map(|&v| (v as f64 - max).exp() / sum).collect();
    #[cfg(feature = "gpu")]
    let x2 = x.clone();
    cases.push(Case {
        op: "softmax 131".into(),
        reference,
        bound,
        cpu: Box::new(move || {
            let mut out = x.clone();
            softmax(&mut out);
            out
        }),
        #[cfg(feature = "gpu")]
        candle: Box::new(move |dev| {
            let x = candle_core::Tensor::from_slice(&x2, (1, x2.len()), dev)?;
            candle_nn::ops::softmax_last_dim(&x)?.flatten_all()?.to_vec1()
        }),
    });

    // The LoRA update of 7 rows: rank 4 on a 48 × 64 weight, scale 2.
    let (n, n_in, n_out, r, scale) = (7, 64, 48, 4, 2.0f32);
    let (x, a, b) = (random(n * n_in, rng), random(r * n_in, rng), random(n_out * r, rng));
    let reference = (0..n)
        .flat_map(|t| {
            let u: Vec<f64> = (0..r)
                .map(|j| (0..n_in).map(|i| a[j * n_in + i] as f64 * x[t * n_in + i] as f64).sum::<f64>() * scale as f64)
                .collect();
            let b = &b;
            (0..n_out).map(move |o| (0..r).map(|j| b[o * r + j] as f64 * u[j]).sum::<f64>())
        })
        .collect();
    #[cfg(feature = "gpu")]
    let (x2, a2, b2) = (x.clone(), a.clone(), b.clone());
    cases.push(Case {
        op: format!("LoRA update r{r} {n} rows"),
        reference,
        bound,
        cpu: Box::new(move || {
            let mut y = vec![0f32; n * n_out];
            pupil::model::lora::lora_forward(&a, &b, scale, &x, n, &mut y, &mut Vec::new());
            y
        }),
        #[cfg(feature = "gpu")]
        candle: Box::new(move |dev| {
            use candle_core::Tensor;
            let (x, a, b) = (
                Tensor::from_slice(&x2, (n, n_in), dev)?,
                Tensor::from_slice(&a2, (r, n_in), dev)?,
                Tensor::from_slice(&b2, (n_out, r), dev)?,
            );
            pupil::model::gpu::lora_update(&x, &a, &b, scale as f64)?.flatten_all()?.to_vec1()
        }),
    });
    cases
}

/// Causal grouped-query attention in f64, as the module doc of `kernels::attention` says.
fn attention_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    h: pupil::kernels::attention::Heads,
    window: Option<usize>,
) -> Vec<f64> {
    let (d, qd, kvd) = (h.head_dim, h.n_head * h.head_dim, h.n_head_kv * h.head_dim);
    let n = q.len() / qd;
    let mut out = vec![0f64; q.len()];
    for t in 0..n {
        let end = pos0 + t + 1;
        let start = window.map_or(0, |w| end.saturating_sub(w));
        for head in 0..h.n_head {
            let g = head / (h.n_head / h.n_head_kv);
            let qh = &q[t * qd + head * d..][..d];
            let scores: Vec<f64> = (start..end)
                .map(|j| {
                    let kj = &k[j * kvd + g * d..][..d];
                    qh.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for (j, s) in (start..end).zip(&scores) {
                let p = (s - max).exp() / sum;
                for (o, &vv) in out[t * qd + head * d..][..d].iter_mut().zip(&v[j * kvd + g * d..][..d]) {
                    *o += p * vv as f64;
                }
            }
        }
    }
    out
}
