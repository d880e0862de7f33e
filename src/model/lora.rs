//! LoRA adapters: low-rank updates `ΔW = (α / r) · B · A` of a model's frozen linear
//! layers, stored as GGUF files in llama.cpp's adapter layout so `llama-cli --lora` and
//! pupil read the same file.
//!
//! Layout: `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha`,
//! `general.architecture` of the base model, and per adapted weight
//! `blk.N.<name>.weight.lora_a` with GGML dims `[n_in, r]` (A, r rows of n_in) and
//! `.lora_b` with dims `[r, n_out]` (B, n_out rows of r), as llama.cpp's
//! `convert_lora_to_gguf.py` writes them.

use std::ops::Range;
use std::path::Path;

use super::config::Recipe;
use super::{Config, ModelError};
use crate::gguf::{GgmlDType, GgufFile, GgufWriter, Value};
use crate::kernels::gemm::{par_gemm, transpose, Mat};
use crate::rng::Rng;

/// A linear layer of a transformer block that an adapter can modify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// llama.cpp's tensor name within a block.
    pub fn tensor(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// The short name used on the command line (`--layers q,k,v`).
    pub fn short(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// Parses `all` or a comma-separated list of short names.
    pub fn parse_list(s: &str) -> Result<Vec<Target>, String> {
        if s == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim) {
            let t = Self::ALL
                .into_iter()
                .find(|t| t.short() == part)
                .ok_or_else(|| format!("unknown layer {part:?} (choose from all, q, k, v, o, gate, up, down)"))?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Whether a model of `recipe` adds a bias to this projection's output.
    pub fn has_bias(self, recipe: &Recipe) -> bool {
        recipe.qkv_bias && matches!(self, Target::Q | Target::K | Target::V)
    }

    /// `(n_out, n_in)` of this weight in a model of `cfg`.
    pub fn shape(self, cfg: &Config) -> (usize, usize) {
        self.shape_of(cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.kv_dim(), cfg.n_ff)
    }

    /// `(n_out, n_in)` of this weight given the residual width `e`, the widths of all
    /// query heads `q` and of all key (or value) heads `kv`, and the MLP width `ff`.
    pub fn shape_of(self, e: usize, q: usize, kv: usize, ff: usize) -> (usize, usize) {
        match self {
            Target::Q => (q, e),
            Target::K | Target::V => (kv, e),
            Target::O => (e, q),
            Target::Gate | Target::Up => (ff, e),
            Target::Down => (e, ff),
        }
    }
}

/// A block tensor that holds several projections' weights one after another, by rows.
/// Each part is still its own [`Target`]: the loader views its rows as a matrix of its
/// own, adapters update it alone, and merging writes it back into its rows.
#[derive(Debug, PartialEq, Eq)]
pub struct Fused {
    /// llama.cpp's tensor name within a block.
    pub tensor: &'static str,
    pub parts: &'static [Target],
}

/// Q, K and V in one `attn_qkv` (Phi-3; llama.cpp accepts it for other families too).
pub const FUSED_QKV: Fused = Fused { tensor: "attn_qkv", parts: &[Target::Q, Target::K, Target::V] };
/// Gate, then up, in one `ffn_up` of twice the MLP width (Phi-3).
pub const FUSED_GATE_UP: Fused = Fused { tensor: "ffn_up", parts: &[Target::Gate, Target::Up] };

impl Fused {
    /// The fused tensor a block tensor called `name` is in a model of `cfg`, if it is one.
    pub fn named(name: &str, cfg: &Config) -> Option<&'static Fused> {
        match name {
            "attn_qkv" => Some(&FUSED_QKV),
            "ffn_up" if cfg.recipe().fused_gate_up => Some(&FUSED_GATE_UP),
            _ => None,
        }
    }

    /// Each part with its first row, in a model of `cfg`.
    pub fn parts(&self, cfg: &Config) -> Vec<(Target, usize)> {
        let mut row = 0;
        self.parts
            .iter()
            .map(|&t| {
                row += t.shape(cfg).0;
                (t, row - t.shape(cfg).0)
            })
            .collect()
    }

    /// Rows of the whole tensor in a model of `cfg`.
    pub fn rows(&self, cfg: &Config) -> usize {
        self.parts.iter().map(|t| t.shape(cfg).0).sum()
    }
}

/// An adapter: low-rank updates of some (layer, target) weights, one rank and alpha for
/// all. Every A (`rank × n_in`, row-major) and B (`n_out × rank`) lives in one flat
/// `values` vector, so inference reads the same storage that training's optimizer and
/// checkpoints step over as one slice.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub rank: usize,
    pub alpha: f32,
    /// Offsets of (A, B) in `values`, by layer and `Target as usize`.
    slots: Vec<[Option<(usize, usize)>; 7]>,
    /// (n_out, n_in) by `Target as usize`.
    shapes: [(usize, usize); 7],
    pub values: Vec<f32>,
}

/// Equal when they update the same weights by the same values, in whatever order their
/// `values` hold them (a file's tensor order, or the order training chose).
impl PartialEq for Adapter {
    fn eq(&self, other: &Self) -> bool {
        let same_updates =
            || (0..self.slots.len()).all(|l| Target::ALL.iter().all(|&t| self.pair(l, t) == other.pair(l, t)));
        self.rank == other.rank && self.alpha == other.alpha && self.slots.len() == other.slots.len() && same_updates()
    }
}

impl Adapter {
    /// An adapter of `rank` for a model of `cfg` with no weight adapted yet.
    fn empty(cfg: &Config, rank: usize, alpha: f32) -> Self {
        let shapes = Target::ALL.map(|t| t.shape(cfg));
        Self { rank, alpha, slots: vec![[None; 7]; cfg.n_layer], shapes, values: Vec::new() }
    }

    /// Fresh updates of `targets` in every layer, as PEFT initialises them: A uniform in
    /// ±1/√n_in, B zero, so the model starts exactly as the base model.
    pub fn init(cfg: &Config, rank: usize, alpha: f32, targets: &[Target], seed: u64) -> Self {
        let mut adapter = Self::empty(cfg, rank, alpha);
        let mut rng = Rng::new(seed);
        for layer in 0..cfg.n_layer {
            for &t in targets {
                let (n_out, n_in) = adapter.shapes[t as usize];
                let bound = 1.0 / (n_in as f64).sqrt();
                let a: Vec<f32> = (0..rank * n_in).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
                adapter.add(layer, t, &a, &vec![0.0; n_out * rank]);
            }
        }
        adapter
    }

    /// Appends the update (A, B) of `target` in `layer`.
    fn add(&mut self, layer: usize, target: Target, a: &[f32], b: &[f32]) {
        let a0 = self.values.len();
        self.values.extend_from_slice(a);
        self.values.extend_from_slice(b);
        self.slots[layer][target as usize] = Some((a0, a0 + a.len()));
    }

    /// `α / r`, the factor llama.cpp and PEFT apply to `B · A`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Where A and B of `target` in `layer` sit in `values`, if that weight is adapted.
    pub fn ranges(&self, layer: usize, target: Target) -> Option<(Range<usize>, Range<usize>)> {
        let (a0, b0) = self.slots.get(layer)?[target as usize]?;
        let (n_out, n_in) = self.shapes[target as usize];
        Some((a0..a0 + self.rank * n_in, b0..b0 + n_out * self.rank))
    }

    /// (A, B) of `target` in `layer`, if adapted.
    pub fn pair(&self, layer: usize, target: Target) -> Option<(&[f32], &[f32])> {
        let (a, b) = self.ranges(layer, target)?;
        Some((&self.values[a], &self.values[b]))
    }

    /// Every adapted (layer, target) with the ranges of its A and B in `values`.
    pub fn tensors(&self) -> Vec<(usize, Target, Range<usize>, Range<usize>)> {
        let all = (0..self.slots.len()).flat_map(|l| Target::ALL.map(|t| (l, t)));
        all.filter_map(|(l, t)| self.ranges(l, t).map(|(a, b)| (l, t, a, b))).collect()
    }

    /// Writes the adapter as a GGUF LoRA file for a base model of `architecture`, its
    /// tensors as `storage`: F32 (exactly what was trained) or F16 (half the size, as
    /// llama.cpp's `convert_lora_to_gguf.py` writes by default).
    ///
    /// # Panics
    /// For a `storage` other than F32 or F16.
    pub fn to_gguf(&self, architecture: &str, name: &str, storage: GgmlDType) -> GgufWriter {
        assert!(matches!(storage, GgmlDType::F32 | GgmlDType::F16), "adapters are stored as F32 or F16");
        let mut w = GgufWriter::new();
        w.add("general.architecture", Value::String(architecture.into()));
        w.add("general.type", Value::String("adapter".into()));
        w.add("general.name", Value::String(name.into()));
        w.add("adapter.type", Value::String("lora".into()));
        w.add("adapter.lora.alpha", Value::F32(self.alpha));
        for (layer, t, a, b) in self.tensors() {
            let (n_out, n_in) = self.shapes[t as usize];
            let base = format!("blk.{layer}.{}.weight", t.tensor());
            for (part, dims, range) in [("a", [n_in, self.rank], a), ("b", [self.rank, n_out], b)] {
                let bytes = crate::kernels::quantize::quantize(storage, &self.values[range]).expect("F32 or F16");
                w.add_tensor(format!("{base}.lora_{part}"), &dims.map(|d| d as u64), storage, bytes);
            }
        }
        w
    }

    /// Reads a GGUF LoRA adapter and checks it against the base model's `cfg`: its
    /// architecture, every tensor's name and shape, and one rank throughout.
    pub fn load(path: &Path, cfg: &Config) -> Result<Self, ModelError> {
        let file = GgufFile::open(path)?;
        let bad = |what: String| ModelError::BadAdapter { path: path.display().to_string(), what };
        if file.get_str("general.type")? != Some("adapter") || file.get_str("adapter.type")? != Some("lora") {
            return Err(bad("not a LoRA adapter (general.type = adapter, adapter.type = lora expected)".into()));
        }
        let arch = file.require_str("general.architecture")?;
        if arch != cfg.architecture {
            return Err(bad(format!("made for a {arch} model, this model is {}", cfg.architecture)));
        }
        let alpha = file.get_f64("adapter.lora.alpha")?.unwrap_or(0.0) as f32;
        let mut adapter = Self::empty(cfg, 0, alpha);
        let mut rank = None;
        for info in file.tensors() {
            let Some((base, part)) = info.name.rsplit_once(".lora_") else {
                return Err(bad(format!("unexpected tensor {:?}", info.name)));
            };
            if part == "b" {
                continue;
            }
            if part != "a" {
                return Err(bad(format!("unexpected tensor {:?}", info.name)));
            }
            let (layer, target) = parse_base(base, cfg.n_layer).ok_or_else(|| {
                bad(format!("tensor {:?} names no linear layer of this {}-layer model", info.name, cfg.n_layer))
            })?;
            let b_info =
                file.tensor(&format!("{base}.lora_b")).ok_or_else(|| bad(format!("{base}.lora_b is missing")))?;
            let (n_out, n_in) = target.shape(cfg);
            let r = *info.dims.get(1).unwrap_or(&0) as usize;
            if info.dims.len() != 2
                || info.dims[0] != n_in as u64
                || b_info.dims != [r as u64, n_out as u64]
                || r == 0
                || r > n_in.min(n_out)
            {
                return Err(bad(format!(
                    "{base}: lora_a {:?} / lora_b {:?} do not fit a {n_out} × {n_in} weight",
                    info.dims, b_info.dims
                )));
            }
            if *rank.get_or_insert(r) != r {
                return Err(bad(format!("{base} has rank {r}, others {}", rank.unwrap_or(0))));
            }
            let read = |t: &crate::gguf::TensorInfo, n: usize| -> Result<Vec<f32>, ModelError> {
                if !matches!(t.dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                    return Err(bad(format!("{}: type {} (F32, F16 or BF16 expected)", t.name, t.dtype)));
                }
                let mut v = vec![0f32; n];
                crate::kernels::dequantize(t.dtype, file.tensor_bytes(t), &mut v);
                if v.iter().any(|x| !x.is_finite()) {
                    return Err(bad(format!("{} holds NaN or infinity", t.name)));
                }
                Ok(v)
            };
            adapter.add(layer, target, &read(info, r * n_in)?, &read(b_info, n_out * r)?);
        }
        adapter.rank = rank.ok_or_else(|| bad("holds no LoRA tensors".into()))?;
        // llama.cpp treats alpha 0 as "scale 1".
        if alpha == 0.0 {
            adapter.alpha = adapter.rank as f32;
        }
        Ok(adapter)
    }
}

/// One low-rank update of `n` rows `x`, the same at inference and in training:
/// `u = scale · x · Aᵀ` (`n × r`, kept for the backward pass) and `y += u · Bᵀ`, with
/// `A` `r × n_in` and `B` `n_out × r`. Runs on the current thread pool.
pub fn lora_forward(a: &[f32], b: &[f32], scale: f32, x: &[f32], n: usize, y: &mut [f32], u: &mut Vec<f32>) {
    let n_in = x.len() / n.max(1);
    let r = a.len() / n_in.max(1);
    let n_out = b.len() / r.max(1);
    assert!(
        n > 0 && x.len() == n * n_in && a.len() == r * n_in && b.len() == n_out * r && y.len() == n * n_out,
        "lora: shapes"
    );
    u.clear();
    u.resize(n * r, 0.0);
    par_gemm(true, n, r, n_in, Mat { data: x, ld: n_in }, Mat { data: a, ld: n_in }, u, r, false);
    u.iter_mut().for_each(|v| *v *= scale);
    par_gemm(true, n, n_out, r, Mat { data: u, ld: r }, Mat { data: b, ld: r }, y, n_out, true);
}

/// Backward of [`lora_forward`] given its `u`: `dx += du · A` with `du = scale · dy · B`,
/// and the adapter's gradients `dA += duᵀ · x`, `dB += dyᵀ · u`.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    (a, b): (&[f32], &[f32]),
    (grad_a, grad_b): (&mut [f32], &mut [f32]),
    scale: f32,
    x: &[f32],
    u: &[f32],
    dy: &[f32],
    n: usize,
    dx: &mut [f32],
) {
    let n_in = x.len() / n.max(1);
    let r = a.len() / n_in.max(1);
    let n_out = b.len() / r.max(1);
    assert!(
        n > 0 && x.len() == n * n_in && u.len() == n * r && dy.len() == n * n_out && dx.len() == x.len(),
        "lora backward: shapes"
    );
    assert!(grad_a.len() == a.len() && grad_b.len() == b.len(), "lora backward: gradient shapes");
    let mut du = vec![0f32; n * r];
    par_gemm(false, n, r, n_out, Mat { data: dy, ld: n_out }, Mat { data: b, ld: r }, &mut du, r, false);
    du.iter_mut().for_each(|v| *v *= scale);
    let mut dyt = vec![0f32; n_out * n];
    transpose(dy, n, n_out, &mut dyt);
    par_gemm(false, n_out, r, n, Mat { data: &dyt, ld: n }, Mat { data: u, ld: r }, grad_b, r, true);
    let mut dut = vec![0f32; r * n];
    transpose(&du, n, r, &mut dut);
    par_gemm(false, r, n_in, n, Mat { data: &dut, ld: n }, Mat { data: x, ld: n_in }, grad_a, n_in, true);
    par_gemm(false, n, n_in, r, Mat { data: &du, ld: r }, Mat { data: a, ld: n_in }, dx, n_in, true);
}

/// `blk.N.<tensor>.weight` → (N, target).
fn parse_base(base: &str, n_layer: usize) -> Option<(usize, Target)> {
    let (layer, name) = block_tensor(base, n_layer)?;
    Some((layer, Target::ALL.into_iter().find(|t| t.tensor() == name)?))
}

/// `blk.N.<name>.weight` of a model of `n_layer` layers → (N, name).
fn block_tensor(tensor: &str, n_layer: usize) -> Option<(usize, &str)> {
    let rest = tensor.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (n, name) = rest.split_once('.')?;
    let layer: usize = n.parse().ok()?;
    (layer < n_layer).then_some((layer, name))
}

/// A standalone GGUF: `file` with every adapted weight replaced by
/// `W + Σ scale · (α/r) · B · A`, stored as `quant` (default: the weight's own type where
/// pupil can write it, else Q8_0). Everything else — metadata, other tensors — is copied
/// unchanged.
pub fn merge(
    file: &GgufFile,
    cfg: &Config,
    adapters: &[(Adapter, f32)],
    quant: Option<GgmlDType>,
) -> Result<GgufWriter, ModelError> {
    use crate::kernels::gemm::gemm_nn;
    use crate::kernels::quantize::quantize;
    let mut w = GgufWriter::new();
    for (key, value) in file.metadata() {
        if key != "general.alignment" {
            w.add(key.clone(), value.clone());
        }
    }
    for info in file.tensors() {
        // The targets this tensor holds, each with its first row (several in a fused one).
        let parts: Vec<(usize, Target, usize)> = block_tensor(&info.name, cfg.n_layer)
            .map(|(layer, name)| match Fused::named(name, cfg) {
                Some(f) => f.parts(cfg).into_iter().map(|(t, row)| (layer, t, row)).collect(),
                None => Target::ALL.into_iter().filter(|t| t.tensor() == name).map(|t| (layer, t, 0)).collect(),
            })
            .unwrap_or_default();
        let updates: Vec<_> = parts
            .iter()
            .flat_map(|&(layer, t, row)| {
                adapters.iter().filter_map(move |(a, s)| a.pair(layer, t).map(|p| (p, a.scale() * s, a.rank, row)))
            })
            .collect();
        if updates.is_empty() {
            w.add_tensor(info.name.clone(), &info.dims, info.dtype, file.tensor_bytes(info).to_vec());
            continue;
        }
        let (n_in, n_out) = (info.dims[0] as usize, info.dims[1] as usize);
        let mut weight = vec![0f32; n_in * n_out];
        crate::kernels::dequantize(info.dtype, file.tensor_bytes(info), &mut weight);
        for ((a, b), scale, r, row) in updates {
            let b: Vec<f32> = b.iter().map(|v| v * scale).collect();
            let rows = b.len() / r;
            let part = &mut weight[row * n_in..(row + rows) * n_in];
            gemm_nn(rows, n_in, r, Mat { data: &b, ld: r }, Mat { data: a, ld: n_in }, part, n_in, true);
        }
        let (dtype, bytes) = match quant {
            Some(q) => (q, quantize(q, &weight)),
            None => match quantize(info.dtype, &weight) {
                Some(b) => (info.dtype, Some(b)),
                None => (GgmlDType::Q8_0, quantize(GgmlDType::Q8_0, &weight)),
            },
        };
        let bytes = bytes.ok_or_else(|| ModelError::UnsupportedDType { tensor: info.name.clone(), dtype })?;
        w.add_tensor(info.name.clone(), &info.dims, dtype, bytes);
    }
    Ok(w)
}
