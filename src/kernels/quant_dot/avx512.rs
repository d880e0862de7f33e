//! AVX-512 VNNI kernels over four weight rows at once (x86-64): the prefill GEMM
//! micro-kernel. (Decode keeps the one-row kernels, whose single sequential stream the
//! prefetcher follows better; see `matmul`.)
//!
//! A 32-value block is 16 + 16 values. One 512-bit register holds the first 16 unsigned
//! weights of four rows, one row per 128-bit lane, and a second register the last 16; the
//! matching 16 activations are broadcast to all four lanes. Two `vpdpbusd` leave four i32
//! partial sums per row, then one conversion, one multiply by the four rows' scales and
//! one FMA by the token's scale finish the block for all four rows. The AVX2 kernels pay
//! the conversion and both scalings for every (row, token, block); here four rows share
//! them, and share every activation load.
//!
//! The weights stay where the file put them (no repacked copy): four rows `row_bytes`
//! apart are assembled in registers, once per block for a whole tile of tokens.
//!
//! Minimums and offsets (Q4_1's `m`, Q4_0's −8·d, Q8_0's −128·d once its signed weights
//! are shifted to unsigned) multiply the activation block's sum in a second accumulator
//! that holds each row's term in the first of its four lanes.
//!
//! Every kernel requires AVX-512 F/BW/VL/VNNI (checked by the dispatcher in `mod.rs`);
//! the entry points check the slice lengths their pointer arithmetic relies on.

use std::arch::x86_64::*;

use super::super::q8::Q8Block;
use super::scalar::k_scales_mins;
use super::ROWS_TILE;

/// Weight rows per register.
pub const ROWS: usize = 4;

/// Lane `l` takes element `l / 4`: each row's value in all four of its lanes.
#[inline(always)]
unsafe fn spread() -> __m512i {
    _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0)
}

/// Four rows' values, `v[r]` in each lane of row `r`.
#[inline(always)]
unsafe fn per_row(v: __m128) -> __m512 {
    _mm512_permutexvar_ps(spread(), _mm512_castps128_ps512(v))
}

/// Four rows' values in the first lane of each row, zeros elsewhere.
#[inline(always)]
unsafe fn per_row_first_lane(v: __m128) -> __m512 {
    _mm512_maskz_permutexvar_ps(0x1111, spread(), _mm512_castps128_ps512(v))
}

/// The f16 at `p` in each of four rows `stride` bytes apart, as four f32. The halves are
/// gathered in a general register (the integer pipes are idle here) and converted at
/// once: a `vgatherdps` from a table stalled the loop on its latency.
#[inline(always)]
unsafe fn halves4(p: *const u8, stride: usize) -> __m128 {
    let h = |r: usize| u16::from_le_bytes(std::ptr::read_unaligned(p.add(r * stride) as *const [u8; 2])) as u64;
    let packed = h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48;
    _mm_cvtph_ps(_mm_cvtsi64_si128(packed as i64))
}

/// Four 16-byte pieces `stride` bytes apart from `p`, one per 128-bit lane.
#[inline(always)]
unsafe fn load4(p: *const u8, stride: usize) -> __m512i {
    let v = _mm512_castsi128_si512(_mm_loadu_si128(p as *const __m128i));
    let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(p.add(stride) as *const __m128i));
    let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(p.add(2 * stride) as *const __m128i));
    _mm512_inserti32x4::<3>(v, _mm_loadu_si128(p.add(3 * stride) as *const __m128i))
}

/// Low and high nibbles of each byte.
#[inline(always)]
unsafe fn split_nibbles(v: __m512i) -> (__m512i, __m512i) {
    let m = _mm512_set1_epi8(0x0F);
    (_mm512_and_si512(v, m), _mm512_and_si512(_mm512_srli_epi16::<4>(v), m))
}

/// Four rows' Q5 high-bit masks at `p` (32 bits, bit `j` for element `j`), as byte masks
/// over (elements 0..16, elements 16..32) in the lane layout of [`load4`].
#[inline(always)]
unsafe fn fifth_bits4(p: *const u8, stride: usize) -> (u64, u64) {
    let (mut lo, mut hi) = (0u64, 0u64);
    for r in 0..ROWS {
        let h = u32::from_le_bytes(std::ptr::read_unaligned(p.add(r * stride) as *const [u8; 4])) as u64;
        lo |= (h & 0xFFFF) << (16 * r);
        hi |= (h >> 16) << (16 * r);
    }
    (lo, hi)
}

/// The 16 activations of one half of a block in every lane.
#[inline(always)]
unsafe fn x_half(xb: &Q8Block, half: usize) -> __m512i {
    _mm512_broadcast_i32x4(_mm_loadu_si128(xb.qs.as_ptr().add(16 * half) as *const __m128i))
}

/// Σ w·x per row lane group: both halves of a block.
#[inline(always)]
unsafe fn dot_block(lo: __m512i, hi: __m512i, xb: &Q8Block) -> __m512i {
    _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, x_half(xb, 0)), hi, x_half(xb, 1))
}

/// Each row's total: the sum of its four lanes.
#[inline(always)]
unsafe fn row_sums(v: __m512) -> [f32; ROWS] {
    let v = _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
    let v = _mm512_add_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), v);
    [lanes[0], lanes[4], lanes[8], lanes[12]]
}

/// Activation block `i` of token `t` in a tile of `n` tokens interleaved block by block
/// ([`interleave`](super::interleave)).
#[inline(always)]
fn token_block(x: &[Q8Block], n: usize, t: usize, i: usize) -> &Q8Block {
    &x[i * n + t]
}

/// Writes each token's row sums to `out[t·ROWS..]`.
#[inline(always)]
unsafe fn store_sums(acc: &[__m512], out: &mut [f32]) {
    for (t, &a) in acc.iter().enumerate() {
        out[t * ROWS..(t + 1) * ROWS].copy_from_slice(&row_sums(a));
    }
}

/// The 32-value block formats: `unpack(p, row_bytes)` turns four rows' blocks at `p` into
/// (elements 0..16, elements 16..32) as unsigned bytes; `scales(p, row_bytes)` reads the
/// four rows' scales and the values their activation sums are multiplied by, which the
/// constant `OFFSET` then scales once at the end (a minimum: `OFFSET` 1; Q4_0's −8·d: the
/// scale itself, and `OFFSET` −8 — a power of two, so exact).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block32<const OFFSET: i32>(
    (w, row_bytes, x, n, out): Args,
    ts: usize,
    unpack: impl Fn(*const u8, usize) -> (__m512i, __m512i),
    scales: impl Fn(*const u8, usize) -> (__m128, __m128),
) {
    let blocks = row_bytes / ts;
    assert!(row_bytes.is_multiple_of(ts) && w.len() >= ROWS * row_bytes, "quad kernel: weight shape");
    let mut acc = [_mm512_setzero_ps(); ROWS_TILE];
    let mut acc_min = [_mm512_setzero_ps(); ROWS_TILE];
    for i in 0..blocks {
        let p = w.as_ptr().add(i * ts);
        let (lo, hi) = unpack(p, row_bytes);
        let (d4, m4) = scales(p, row_bytes);
        let (d, m) = (per_row(d4), per_row_first_lane(m4));
        for t in 0..n {
            let xb = token_block(x, n, t, i);
            let prod = _mm512_mul_ps(_mm512_cvtepi32_ps(dot_block(lo, hi, xb)), d);
            acc[t] = _mm512_fmadd_ps(prod, _mm512_set1_ps(xb.d), acc[t]);
            acc_min[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(xb.ds), acc_min[t]);
        }
    }
    let offset = _mm512_set1_ps(OFFSET as f32);
    for t in 0..n {
        acc[t] = _mm512_fmadd_ps(acc_min[t], offset, acc[t]);
    }
    store_sums(&acc[..n], out)
}

/// Q4_K and Q5_K: sub-block `j` of a 256-value super-block has its own 6-bit scale and
/// minimum and matches activation block `8i + j`.
#[inline(always)]
unsafe fn k_quant<const FIVE_BITS: bool>((w, row_bytes, x, n, out): Args) {
    let ts = if FIVE_BITS { 176 } else { 144 };
    let super_blocks = row_bytes / ts;
    assert!(row_bytes.is_multiple_of(ts) && w.len() >= ROWS * row_bytes, "quad kernel: weight shape");
    // One accumulator per token, minimums included: a second set spilled registers.
    let mut acc = [_mm512_setzero_ps(); ROWS_TILE];
    let sixteen = _mm512_set1_epi8(16);
    // Lane group r of sub-block j's scale vector reads entry 8r + j of the two halves
    // (rows 0–1, rows 2–3) of the per-super-block tables below.
    let table_index = _mm512_set_epi32(24, 24, 24, 24, 16, 16, 16, 16, 8, 8, 8, 8, 0, 0, 0, 0);
    let row_of_entry = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    for i in 0..super_blocks {
        let p = w.as_ptr().add(i * ts);
        // All eight sub-blocks' scales and minimums of the four rows, unpacked once per
        // super-block: entry 8r + j (r of a pair) is d·sc_j or −dmin·m_j of that row.
        let packed: [(u64, u64); ROWS] =
            std::array::from_fn(|r| k_scales_mins(&*(p.add(r * row_bytes + 4) as *const [u8; 12])));
        let (d4, dmin4) = (halves4(p, row_bytes), halves4(p.add(2), row_bytes));
        let table = |a: u64, b: u64, factor: __m128, pair: i32| {
            let f = _mm512_permutexvar_ps(
                _mm512_add_epi32(row_of_entry, _mm512_set1_epi32(2 * pair)),
                _mm512_castps128_ps512(factor),
            );
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_set_epi64x(b as i64, a as i64))), f)
        };
        let neg_dmin4 = _mm_sub_ps(_mm_setzero_ps(), dmin4);
        let scales = (table(packed[0].0, packed[1].0, d4, 0), table(packed[2].0, packed[3].0, d4, 1));
        let mins = (table(packed[0].1, packed[1].1, neg_dmin4, 0), table(packed[2].1, packed[3].1, neg_dmin4, 1));
        let qs = p.add(if FIVE_BITS { 48 } else { 16 });
        // The fifth bits: byte k of the 32-byte field carries bit j for element k of
        // sub-block j.
        let (qh_lo, qh_hi) = if FIVE_BITS {
            (load4(p.add(16), row_bytes), load4(p.add(32), row_bytes))
        } else {
            (_mm512_setzero_si512(), _mm512_setzero_si512())
        };
        for c in 0..4 {
            let (a_lo, a_hi) = split_nibbles(load4(qs.add(32 * c), row_bytes));
            let (b_lo, b_hi) = split_nibbles(load4(qs.add(32 * c + 16), row_bytes));
            for (half, (mut lo, mut hi)) in [(a_lo, b_lo), (a_hi, b_hi)].into_iter().enumerate() {
                let j = 2 * c + half;
                if FIVE_BITS {
                    let bit = _mm512_set1_epi8(1 << j);
                    lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(qh_lo, bit), lo, sixteen);
                    hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(qh_hi, bit), hi, sixteen);
                }
                let index = _mm512_add_epi32(table_index, _mm512_set1_epi32(j as i32));
                let d = _mm512_permutex2var_ps(scales.0, index, scales.1);
                let m = _mm512_maskz_permutex2var_ps(0x1111, mins.0, index, mins.1);
                for (t, acc) in acc[..n].iter_mut().enumerate() {
                    let xb = token_block(x, n, t, 8 * i + j);
                    let prod = _mm512_mul_ps(_mm512_cvtepi32_ps(dot_block(lo, hi, xb)), d);
                    *acc = _mm512_fmadd_ps(prod, _mm512_set1_ps(xb.d), *acc);
                    *acc = _mm512_fmadd_ps(m, _mm512_set1_ps(xb.ds), *acc);
                }
            }
        }
    }
    store_sums(&acc[..n], out)
}

/// Q6_K: 256 values in 16 groups of 16, each with its own signed 8-bit scale; weights are
/// `q − 32` with `q` six bits (four in `ql`, two in `qh`). Quarter `k` of half `h` is
/// activation block `8i + 4h + k`; its two 16-value halves have scales
/// `sc[8h + 2k]` and `sc[8h + 2k + 1]`, so their products stay apart until scaled. The −32
/// rides in the integer sums: each row's four lanes start from −8 · Σx of the half.
#[inline(always)]
unsafe fn q6_k_quad((w, row_bytes, x, n, out): Args) {
    let super_blocks = row_bytes / 210;
    assert!(row_bytes.is_multiple_of(210) && w.len() >= ROWS * row_bytes, "quad kernel: weight shape");
    let mut acc = [_mm512_setzero_ps(); ROWS_TILE];
    for i in 0..super_blocks {
        let p = w.as_ptr().add(i * 210);
        let d4 = halves4(p.add(208), row_bytes);
        for h in 0..2 {
            let (ql, qh) = (p.add(64 * h), p.add(128 + 32 * h));
            let a = (load4(ql, row_bytes), load4(ql.add(16), row_bytes));
            let b = (load4(ql.add(32), row_bytes), load4(ql.add(48), row_bytes));
            let hb = (load4(qh, row_bytes), load4(qh.add(16), row_bytes));
            let quarters =
                [q6_quarter::<0>(a, hb), q6_quarter::<1>(b, hb), q6_quarter::<2>(a, hb), q6_quarter::<3>(b, hb)];
            for (k, (lo, hi)) in quarters.into_iter().enumerate() {
                let sc = p.add(192 + 8 * h + 2 * k);
                let s0 = per_row(_mm_mul_ps(d4, bytes4(sc, row_bytes)));
                let s1 = per_row(_mm_mul_ps(d4, bytes4(sc.add(1), row_bytes)));
                for (t, acc) in acc[..n].iter_mut().enumerate() {
                    let xb = token_block(x, n, t, 8 * i + 4 * h + k);
                    let p_lo = _mm512_dpbusd_epi32(_mm512_set1_epi32(-8 * xb.sum16[0] as i32), lo, x_half(xb, 0));
                    let p_hi = _mm512_dpbusd_epi32(_mm512_set1_epi32(-8 * xb.sum16[1] as i32), hi, x_half(xb, 1));
                    let prod =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(p_hi), s1, _mm512_mul_ps(_mm512_cvtepi32_ps(p_lo), s0));
                    *acc = _mm512_fmadd_ps(prod, _mm512_set1_ps(xb.d), *acc);
                }
            }
        }
    }
    store_sums(&acc[..n], out)
}

/// Quarter `K` of a Q6_K half: the low nibbles of `ql` (quarters 0, 1) or its high
/// nibbles (2, 3), with bits `2K..2K+2` of `qh` on top. Pairs are (elements 0..16,
/// elements 16..32), as [`load4`] lays them out.
#[inline(always)]
unsafe fn q6_quarter<const K: usize>(ql: (__m512i, __m512i), qh: (__m512i, __m512i)) -> (__m512i, __m512i) {
    let low = _mm512_set1_epi8(0x0F);
    let top_bits = _mm512_set1_epi8(0x30);
    let six = |l: __m512i, h: __m512i| {
        let nibble = if K < 2 { _mm512_and_si512(l, low) } else { _mm512_and_si512(_mm512_srli_epi16::<4>(l), low) };
        // Bits 2K..2K+2 of each qh byte moved to bits 4..6 (16-bit shifts: what crosses
        // a byte boundary lands outside the mask).
        let top = match K {
            0 => _mm512_slli_epi16::<4>(h),
            1 => _mm512_slli_epi16::<2>(h),
            2 => h,
            _ => _mm512_srli_epi16::<2>(h),
        };
        _mm512_or_si512(nibble, _mm512_and_si512(top, top_bits))
    };
    (six(ql.0, qh.0), six(ql.1, qh.1))
}

/// The signed byte at `p` in each of four rows `stride` bytes apart, as four f32.
#[inline(always)]
unsafe fn bytes4(p: *const u8, stride: usize) -> __m128 {
    let b = |r: usize| *p.add(r * stride) as u32;
    let packed = b(0) | b(1) << 8 | b(2) << 16 | b(3) << 24;
    _mm_cvtepi32_ps(_mm_cvtepi8_epi32(_mm_cvtsi32_si128(packed as i32)))
}

/// Q5_0 / Q5_1: four bytes of fifth bits at `qh`, nibbles after them.
#[inline(always)]
unsafe fn q5_unpack(p: *const u8, stride: usize, qh: usize) -> (__m512i, __m512i) {
    let (lo, hi) = split_nibbles(load4(p.add(qh + 4), stride));
    let (k_lo, k_hi) = fifth_bits4(p.add(qh), stride);
    let sixteen = _mm512_set1_epi8(16);
    (_mm512_mask_add_epi8(lo, k_lo, lo, sixteen), _mm512_mask_add_epi8(hi, k_hi, hi, sixteen))
}

/// Q8_0's signed weights plus 128: unsigned, as `vpdpbusd` wants them.
#[inline(always)]
unsafe fn q8_unpack(p: *const u8, stride: usize) -> (__m512i, __m512i) {
    let flip = _mm512_set1_epi8(-128);
    (_mm512_xor_si512(load4(p.add(2), stride), flip), _mm512_xor_si512(load4(p.add(18), stride), flip))
}

/// The arguments of every entry point: weights, bytes per row, activations, tokens,
/// output.
type Args<'a> = (&'a [u8], usize, &'a [Q8Block], usize, &'a mut [f32]);

/// One format's entry point over `n ≤ ROWS_TILE` tokens.
macro_rules! rows_kernel {
    ($name:ident, $body:expr) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        pub unsafe fn $name(w: &[u8], row_bytes: usize, x: &[Q8Block], n: usize, out: &mut [f32]) {
            $body((w, row_bytes, x, n, out))
        }
    };
}

// Each format's body is a plain `#[inline(always)]` function (or closure) so that it
// inlines into the `#[target_feature]` entry points above.
// Σ d(q − o)x = d·Σqx − o·d·Σx: offsets ride on the activation sums.
rows_kernel!(q4_0, |a| block32::<-8>(a, 18, |p, st| split_nibbles(load4(p.add(2), st)), |p, st| same_scale(p, st)));
rows_kernel!(q4_1, |a| block32::<1>(a, 20, |p, st| split_nibbles(load4(p.add(4), st)), |p, st| scale_and_min(p, st)));
rows_kernel!(q5_0, |a| block32::<-16>(a, 22, |p, st| q5_unpack(p, st, 2), |p, st| same_scale(p, st)));
rows_kernel!(q5_1, |a| block32::<1>(a, 24, |p, st| q5_unpack(p, st, 4), |p, st| scale_and_min(p, st)));
rows_kernel!(q8_0, |a| block32::<-128>(a, 34, |p, st| q8_unpack(p, st), |p, st| same_scale(p, st)));
rows_kernel!(q4_k, k_quant::<false>);
rows_kernel!(q5_k, k_quant::<true>);
rows_kernel!(q6_k, q6_k_quad);

/// The four rows' scales, once as scales and once as what their offsets multiply.
#[inline(always)]
unsafe fn same_scale(p: *const u8, stride: usize) -> (__m128, __m128) {
    let d = halves4(p, stride);
    (d, d)
}

/// The four rows' scales and minimums.
#[inline(always)]
unsafe fn scale_and_min(p: *const u8, stride: usize) -> (__m128, __m128) {
    (halves4(p, stride), halves4(p.add(2), stride))
}
