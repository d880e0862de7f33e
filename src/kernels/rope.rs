//! Rotary position embedding: each head's first `n_rot` dimensions are turned in pairs by
//! an angle proportional to the position. Its backward pass is the opposite rotation.

/// How a head's dimensions are paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)` (llama.cpp's "normal" mode: Llama's GGUF converter
    /// permutes the Q/K rows for it).
    Adjacent,
    /// The two halves `(i, i + n_rot/2)` (GPT-NeoX's layout: Gemma, Qwen, Phi).
    NeoX,
}

/// cos and sin of every rotated pair at positions `pos0..pos0 + n`, `n × inv_freq.len()`
/// each (the vectors are overwritten), times `mscale` (Phi-3 128K's attention factor, 1
/// elsewhere: the rotation then also scales, and its inverse in the backward pass scales
/// the same). Angles are computed in f64: `position · freq` reaches 10⁵ radians in long
/// contexts, where f32 keeps three digits.
pub fn rope_tables(inv_freq: &[f64], mscale: f32, pos0: usize, n: usize, cos: &mut Vec<f32>, sin: &mut Vec<f32>) {
    cos.clear();
    sin.clear();
    extend_rope_tables(inv_freq, mscale, pos0, n, cos, sin);
}

/// [`rope_tables`] appended to what `cos`/`sin` hold: a batch of several sequences has
/// one run of positions per sequence.
pub fn extend_rope_tables(
    inv_freq: &[f64],
    mscale: f32,
    pos0: usize,
    n: usize,
    cos: &mut Vec<f32>,
    sin: &mut Vec<f32>,
) {
    for p in pos0..pos0 + n {
        for &f in inv_freq {
            let (s, c) = (p as f64 * f).sin_cos();
            cos.push(c as f32 * mscale);
            sin.push(s as f32 * mscale);
        }
    }
}

/// Rotates pairs of the first `n_rot` dimensions of every head of every row of `x`, in
/// place, row `t` by the angles in row `t` of `cos`/`sin` (`n_rot/2` each); `inverse`
/// turns the other way (the backward pass). `x` is `n × (heads · head_dim)`.
pub fn rope(x: &mut [f32], head_dim: usize, n_rot: usize, cos: &[f32], sin: &[f32], style: RopeStyle, inverse: bool) {
    let half = n_rot / 2;
    assert!(half > 0 && n_rot <= head_dim && sin.len() == cos.len() && cos.len().is_multiple_of(half), "rope: tables");
    let n = cos.len() / half;
    if n == 0 {
        return;
    }
    let row_len = x.len() / n;
    assert!(x.len() == n * row_len && row_len.is_multiple_of(head_dim), "rope: rows are not whole heads");
    let sign = if inverse { -1.0 } else { 1.0 };
    for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
        let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                    RopeStyle::NeoX => (i, i + half),
                };
                let (x0, x1, s) = (head[a], head[b], sign * s[i]);
                head[a] = x0 * c[i] - x1 * s;
                head[b] = x0 * s + x1 * c[i];
            }
        }
    }
}
