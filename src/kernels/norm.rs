//! RMS-norm, forward and backward: `y = x / rms(x) · w` over each `w.len()`-wide part of
//! `x` (a token's residual row, or one head of a Q/K projection).

use super::dot::dot;

/// `1 / √(mean(x²) + eps)` of one part.
#[inline]
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt()
}

/// `out = x · rstd · w` per `w.len()`-wide part; with `rstd`, each part's `rstd` is kept
/// there for the backward pass.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], mut rstd: Option<&mut [f32]>) {
    let e = w.len();
    assert!(out.len() == x.len() && x.len().is_multiple_of(e), "rms_norm: shapes");
    for (i, (xr, or)) in x.chunks_exact(e).zip(out.chunks_exact_mut(e)).enumerate() {
        let r = inverse_rms(xr, eps);
        if let Some(rstd) = rstd.as_deref_mut() {
            rstd[i] = r;
        }
        for ((o, &xi), &wi) in or.iter_mut().zip(xr).zip(w) {
            *o = xi * r * wi;
        }
    }
}

/// [`rms_norm`] in place.
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let e = w.len();
    assert!(x.len().is_multiple_of(e), "rms_norm: shapes");
    for xr in x.chunks_exact_mut(e) {
        let r = inverse_rms(xr, eps);
        xr.iter_mut().zip(w).for_each(|(v, &wi)| *v *= r * wi);
    }
}

/// `dx += ∂y/∂x · dy` for `y = x · rstd · w` (`w` frozen), given the forward's `rstd`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32], dx: &mut [f32]) {
    let e = w.len();
    assert!(dy.len() == x.len() && dx.len() == x.len() && rstd.len() * e == x.len(), "rms_norm_backward: shapes");
    for (((xr, dyr), dxr), &r) in x.chunks_exact(e).zip(dy.chunks_exact(e)).zip(dx.chunks_exact_mut(e)).zip(rstd) {
        let gx: f32 = xr.iter().zip(dyr).zip(w).map(|((&xi, &g), &wi)| g * wi * xi).sum();
        let c = r * r * r * gx / e as f32;
        for (((d, &xi), &g), &wi) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
            *d += r * g * wi - c * xi;
        }
    }
}
