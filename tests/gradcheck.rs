//! Every op's backward pass against central finite differences of its forward pass, in
//! f64 sums over a random weighting of the output (loss = Σ g ⊙ y, so the upstream
//! gradient is g). Tolerance: 2 % of the larger magnitude plus 2e-3, the f32 forward's
//! rounding under a step of 1e-2.

use pupil::kernels::attention::{causal_backward, causal_keeping_weights, Heads};
use pupil::kernels::dot::{gated, gated_backward, Gate};
use pupil::kernels::norm::{rms_norm, rms_norm_backward};
use pupil::kernels::rope::{rope, rope_tables, RopeStyle};
use pupil::model::lora::{lora_backward, lora_forward};
use pupil::rng::Rng;

/// Central finite difference of `f` at `x[i]`.
fn fd(x: &mut [f32], i: usize, f: &mut impl FnMut(&[f32]) -> f64) -> f64 {
    let h = 1e-2;
    let old = x[i];
    x[i] = old + h;
    let up = f(x);
    x[i] = old - h;
    let down = f(x);
    x[i] = old;
    (up - down) / (2.0 * h as f64)
}

fn random(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 2e-2 * (a.abs().max(b.abs())) + 2e-3, "{what}: analytic {a}, numeric {b}");
}

fn weighted(out: &[f32], g: &[f32]) -> f64 {
    out.iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// Checks `analytic` (the gradient at `x`) against finite differences of `f` at every
/// `step`-th element.
fn check(name: &str, x: &mut [f32], analytic: &[f32], step: usize, mut f: impl FnMut(&[f32]) -> f64) {
    for i in (0..x.len()).step_by(step) {
        close(analytic[i] as f64, fd(x, i, &mut f), &format!("{name}[{i}]"));
    }
}

#[test]
fn rms_norm_backward_matches_finite_differences() {
    let mut rng = Rng::new(1);
    // Whole rows, and per-head parts of a row (Q/K norms).
    for (rows, e, part) in [(3, 8, 8), (2, 12, 4)] {
        let mut x = random(rows * e, &mut rng);
        let w: Vec<f32> = random(part, &mut rng).iter().map(|v| v + 1.0).collect();
        let g = random(rows * e, &mut rng);
        let (mut out, mut rstd) = (vec![0f32; x.len()], vec![0f32; x.len() / part]);
        rms_norm(&x, &w, 1e-5, &mut out, Some(&mut rstd));
        let mut dx = vec![0f32; x.len()];
        rms_norm_backward(&x, &w, &rstd, &g, &mut dx);
        check("dx", &mut x, &dx, 1, |x| {
            let mut o = vec![0f32; x.len()];
            rms_norm(x, &w, 1e-5, &mut o, None);
            weighted(&o, &g)
        });
    }
}

#[test]
fn rope_backward_is_the_inverse_rotation() {
    let mut rng = Rng::new(2);
    let (t_len, d) = (5, 8);
    let inv_freq: Vec<f64> = (0..d / 4).map(|i| 10000f64.powf(-4.0 * i as f64 / d as f64)).collect();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    rope_tables(&inv_freq, 1.0, 0, t_len, &mut cos, &mut sin);
    // Partial rotation (n_rot = d/2), both pairings.
    for style in [RopeStyle::Adjacent, RopeStyle::NeoX] {
        let mut x = random(t_len * 2 * d, &mut rng);
        let g = random(x.len(), &mut rng);
        let mut dx = g.clone();
        rope(&mut dx, d, d / 2, &cos, &sin, style, true);
        check(&format!("{style:?} dx"), &mut x, &dx, 1, |x| {
            let mut y = x.to_vec();
            rope(&mut y, d, d / 2, &cos, &sin, style, false);
            weighted(&y, &g)
        });
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    let mut rng = Rng::new(3);
    let t_len = 5;
    let heads = Heads { n_head: 4, n_head_kv: 2, head_dim: 4 };
    let (qd, kvd) = (heads.n_head * heads.head_dim, heads.n_head_kv * heads.head_dim);
    for window in [None, Some(2)] {
        let mut q = random(t_len * qd, &mut rng);
        let mut k = random(t_len * kvd, &mut rng);
        let mut v = random(t_len * kvd, &mut rng);
        let g = random(t_len * qd, &mut rng);
        let run = |q: &[f32], k: &[f32], v: &[f32]| {
            let mut probs = vec![0f32; heads.n_head * t_len * t_len];
            let mut out = vec![0f32; q.len()];
            causal_keeping_weights(q, k, v, heads, window, &mut out, &mut probs);
            (probs, out)
        };
        let (probs, _) = run(&q, &k, &v);
        let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
        causal_backward(&q, &k, &v, &probs, &g, heads, window, &mut dq, &mut dk, &mut dv);
        let (k0, v0, q0) = (k.clone(), v.clone(), q.clone());
        check(&format!("{window:?} dq"), &mut q, &dq, 1, |q| weighted(&run(q, &k0, &v0).1, &g));
        check(&format!("{window:?} dk"), &mut k, &dk, 1, |k| weighted(&run(&q0, k, &v0).1, &g));
        check(&format!("{window:?} dv"), &mut v, &dv, 1, |v| weighted(&run(&q0, &k0, v).1, &g));
        if window.is_some() {
            // A key outside every query's window after it gets no gradient from them.
            let (probs, _) = run(&q0, &k0, &v0);
            assert_eq!(probs[(t_len - 1) * t_len], 0.0, "the window hides position 0 from the last query");
        }
    }
}

#[test]
fn gate_backward_matches_finite_differences() {
    let mut rng = Rng::new(5);
    for act in [Gate::Silu, Gate::GeluTanh] {
        let n = 37;
        let mut gate: Vec<f32> = random(n, &mut rng).iter().map(|v| v * 6.0).collect();
        let mut up = random(n, &mut rng);
        let g = random(n, &mut rng);
        let (mut dgate, mut dup) = (vec![0f32; n], vec![0f32; n]);
        gated_backward(act, &gate, &up, &g, &mut dgate, &mut dup);
        let forward = |gate: &[f32], up: &[f32]| {
            let mut y = gate.to_vec();
            gated(act, &mut y, up);
            weighted(&y, &g)
        };
        let (gate0, up0) = (gate.clone(), up.clone());
        check(&format!("{act:?} dgate"), &mut gate, &dgate, 1, |x| forward(x, &up0));
        check(&format!("{act:?} dup"), &mut up, &dup, 1, |x| forward(&gate0, x));
    }
}

#[test]
fn frozen_quantized_linear_with_lora_matches_finite_differences() {
    use pupil::kernels::matmul::{matmul_f32, matmul_f32_backward};
    let mut rng = Rng::new(4);
    let (n, n_in, n_out, r) = (3, 64, 40, 4);
    let w = pupil::synth::quantized_matrix(n_out, n_in, 9);
    let mut x = random(n * n_in, &mut rng);
    let mut a = random(r * n_in, &mut rng);
    let mut b = random(n_out * r, &mut rng);
    let g = random(n * n_out, &mut rng);
    let s = 2.0;
    let f = |x: &[f32], a: &[f32], b: &[f32]| {
        let mut y = vec![0f32; n * n_out];
        matmul_f32(&w, x, n, &mut y);
        lora_forward(a, b, s, x, n, &mut y, &mut Vec::new());
        weighted(&y, &g)
    };
    let mut u = Vec::new();
    let mut y = vec![0f32; n * n_out];
    lora_forward(&a, &b, s, &x, n, &mut y, &mut u);
    let mut dx = vec![0f32; x.len()];
    matmul_f32_backward(&w, &g, n, &mut dx);
    let (mut da, mut db) = (vec![0f32; a.len()], vec![0f32; b.len()]);
    lora_backward((&a, &b), (&mut da, &mut db), s, &x, &u, &g, n, &mut dx);
    let (x0, a0, b0) = (x.clone(), a.clone(), b.clone());
    check("dx", &mut x, &dx, 7, |x| f(x, &a0, &b0));
    check("dA", &mut a, &da, 5, |a| f(&x0, a, &b0));
    check("dB", &mut b, &db, 1, |b| f(&x0, &a0, b));
}
