//! AVX2 + FMA integer dot products (x86-64): weights are unpacked to unsigned bytes in
//! registers, multiplied with the 8-bit activations by `vpmaddubsw`, and each 32-value
//! block's integer sum is scaled once in f32. Offsets (Q4_0's −8, minimums, Q6_K's −32)
//! are applied through the activation sums, outside the inner loop.
//!
//! Every function requires AVX2, FMA and F16C (checked by the dispatcher) and `x.len()` blocks
//! of activations for `w`'s weights (checked by the safe wrapper in `mod.rs`).

use std::arch::x86_64::*;

use super::super::q8::Q8Block;
use super::scalar::k_scales_mins;
use super::{QUAD_ROWS, QUAD_TILE, TILE};

/// f32 of every f16 bit pattern (256 KiB, built at compile time): a scale is then one
/// load instead of an insert and a conversion on the shuffle port, which the decode loop
/// is short of.
static F16_TO_F32: [f32; 1 << 16] = {
    let mut table = [0f32; 1 << 16];
    let mut h = 0;
    while h < table.len() {
        table[h] = f16_bits_to_f32(h as u16);
        h += 1;
    }
    table
};

/// IEEE half → single, exactly (subnormals normalised, infinities and NaNs kept).
const fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0x1f {
        sign | 0x7f80_0000 | (man << 13)
    } else if exp != 0 {
        sign | ((exp + 127 - 15) << 23) | (man << 13)
    } else if man == 0 {
        sign
    } else {
        // man · 2^-24: shift the leading one up to the implicit bit.
        let (mut e, mut m) = (127 - 15 + 1, man);
        while m & 0x400 == 0 {
            m <<= 1;
            e -= 1;
        }
        sign | (e << 23) | ((m & 0x3ff) << 13)
    };
    f32::from_bits(bits)
}

/// The f16 at byte `i`, as f32.
#[inline(always)]
unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
    F16_TO_F32[u16::from_le_bytes([b[i], b[i + 1]]) as usize]
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// Eight i32 sums of `u[i]·s[i]` over consecutive groups of four bytes.
#[inline(always)]
unsafe fn mul_sum_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// 16 bytes of nibbles → 32 bytes: low nibbles (elements 0..16), then high nibbles.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m))
}

/// Byte `j` becomes 0x10 where bit `j` of `qh` is set (Q5's fifth bit), else 0.
#[inline(always)]
unsafe fn high_bits(qh: u32) -> __m256i {
    let spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), spread);
    // Each byte gets every bit set except its own position: all ones iff that bit was set.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

#[inline(always)]
unsafe fn load_x(x: &Q8Block) -> __m256i {
    _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i)
}

/// How 32 unsigned-by-signed byte products are summed into eight i32 lanes: AVX2's
/// `vpmaddubsw` + `vpmaddwd`, or one VNNI `vpdpbusd`.
pub trait MulSum {
    unsafe fn mul_sum(u: __m256i, s: __m256i) -> __m256i;
    /// `acc` plus the i16 `pairs` multiplied by `scale` and summed pairwise into i32: a
    /// K-quant sub-block's products times its scale, still in integers.
    unsafe fn add_scaled(acc: __m256i, pairs: __m256i, scale: __m256i) -> __m256i;
}

pub struct Avx2;
impl MulSum for Avx2 {
    #[inline(always)]
    unsafe fn mul_sum(u: __m256i, s: __m256i) -> __m256i {
        mul_sum_u8_i8(u, s)
    }
    #[inline(always)]
    unsafe fn add_scaled(acc: __m256i, pairs: __m256i, scale: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, scale))
    }
}

pub struct Vnni;
impl MulSum for Vnni {
    #[inline(always)]
    unsafe fn mul_sum(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }
    #[inline(always)]
    unsafe fn add_scaled(acc: __m256i, pairs: __m256i, scale: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, pairs, scale)
    }
}

/// Bytes ahead of the current weight block that decode asks the cache to fetch: weight
/// rows are short (a few hundred bytes at 576 wide), so the hardware prefetcher keeps
/// restarting; 1.5 KiB ahead measured best here (768: half the gain; 3 KiB: the same).
/// A prefetch past the end of the map is harmless: it never faults. Prefill's tile loops
/// do not prefetch: there each weight block is reused across a block of tokens, and the
/// same prefetch measured 3–7 % slower.
const PREFETCH_AHEAD: usize = 1536;

/// The 32-value block formats share one loop over their [`Block32`] description. Two
/// blocks per iteration with separate accumulators keep the FMA chain from serialising.
#[inline(always)]
unsafe fn block32<M: MulSum, B: Block32>(w: &[u8], x: &[Q8Block]) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut m0, mut m1) = (0f32, 0f32);
    let mut pairs = w.chunks_exact(2 * B::TS);
    let mut xs = x.chunks_exact(2);
    for (b, xb) in (&mut pairs).zip(&mut xs) {
        _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(PREFETCH_AHEAD) as *const i8);
        let (b0, b1) = b.split_at(B::TS);
        let p0 = M::mul_sum(B::unpack(b0), load_x(&xb[0]));
        let p1 = M::mul_sum(B::unpack(b1), load_x(&xb[1]));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b0, 0) * xb[0].d), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b1, 0) * xb[1].d), _mm256_cvtepi32_ps(p1), acc1);
        m0 += B::offset(b0) * xb[0].ds;
        m1 += B::offset(b1) * xb[1].ds;
    }
    if let (Some(xb), b) = (xs.remainder().first(), pairs.remainder()) {
        let p = M::mul_sum(B::unpack(b), load_x(xb));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0) * xb.d), _mm256_cvtepi32_ps(p), acc0);
        m0 += B::offset(b) * xb.ds;
    }
    hsum(_mm256_add_ps(acc0, acc1)) + m0 + m1
}

/// [`block32`] for `T` tokens: each weight block is unpacked once. Blocks alternate
/// between two accumulators exactly as in [`block32`], so a token gets bit-identical
/// results whether it is computed alone (decode) or in a tile (prefill).
#[inline(always)]
unsafe fn block32_multi<M: MulSum, B: Block32, const T: usize>(w: &[u8], xs: [&[Q8Block]; T]) -> [f32; T] {
    let mut acc = [[_mm256_setzero_ps(); T]; 2];
    let mut mins = [[0f32; T]; 2];
    for (i, b) in w.chunks_exact(B::TS).enumerate() {
        let q = B::unpack(b);
        let (d, m) = (f16_at(b, 0), B::offset(b));
        let (acc, mins) = (&mut acc[i % 2], &mut mins[i % 2]);
        for t in 0..T {
            let xb = &xs[t][i];
            let p = M::mul_sum(q, load_x(xb));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc[t]);
            mins[t] += m * xb.ds;
        }
    }
    std::array::from_fn(|t| hsum(_mm256_add_ps(acc[0][t], acc[1][t])) + mins[0][t] + mins[1][t])
}

/// [`q8_0_`] for `T` tokens, with the same accumulation order.
#[inline(always)]
unsafe fn q8_0_multi<M: MulSum, const T: usize>(w: &[u8], xs: [&[Q8Block]; T]) -> [f32; T] {
    let mut acc = [[_mm256_setzero_ps(); T]; 2];
    for (i, b) in w.chunks_exact(34).enumerate() {
        let q = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
        let (aq, d) = (_mm256_sign_epi8(q, q), f16_at(b, 0));
        let acc = &mut acc[i % 2];
        for t in 0..T {
            let xb = &xs[t][i];
            let p = M::mul_sum(aq, _mm256_sign_epi8(load_x(xb), q));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(_mm256_add_ps(acc[0][t], acc[1][t])))
}

#[inline(always)]
unsafe fn q8_0_<M: MulSum>(w: &[u8], x: &[Q8Block]) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    #[inline(always)]
    unsafe fn dot<M: MulSum>(b: &[u8], xb: &Q8Block) -> __m256 {
        let q = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
        // |w| · (x with w's sign): the unsigned-by-signed multiply the hardware has.
        _mm256_cvtepi32_ps(M::mul_sum(_mm256_sign_epi8(q, q), _mm256_sign_epi8(load_x(xb), q)))
    }
    let mut pairs = w.chunks_exact(68);
    let mut xs = x.chunks_exact(2);
    for (b, xb) in (&mut pairs).zip(&mut xs) {
        _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(PREFETCH_AHEAD) as *const i8);
        let (b0, b1) = b.split_at(34);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b0, 0) * xb[0].d), dot::<M>(b0, &xb[0]), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b1, 0) * xb[1].d), dot::<M>(b1, &xb[1]), acc1);
    }
    if let (Some(xb), b) = (xs.remainder().first(), pairs.remainder()) {
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b, 0) * xb.d), dot::<M>(b, xb), acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// Half `h` of a Q6_K super-block `b` as four quarters of 32 unsigned six-bit weights:
/// low nibbles of `ql` (quarters 0, 1) or high nibbles (2, 3), with two bits of `qh`
/// above them.
#[inline(always)]
unsafe fn q6_quarters(b: &[u8], h: usize) -> [__m256i; 4] {
    let low = _mm256_set1_epi8(0x0F);
    let ql0 = _mm256_loadu_si256(b.as_ptr().add(64 * h) as *const __m256i);
    let ql1 = _mm256_loadu_si256(b.as_ptr().add(64 * h + 32) as *const __m256i);
    let qh = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * h) as *const __m256i);
    [
        _mm256_or_si256(_mm256_and_si256(ql0, low), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4)),
        _mm256_or_si256(_mm256_and_si256(ql1, low), _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C)), 2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), _mm256_and_si256(qh, _mm256_set1_epi8(0x30))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
            _mm256_srli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8)), 2),
        ),
    ]
}

/// Asks for the next weight bytes of a `ts`-byte super-block, one request per cache line.
#[inline(always)]
unsafe fn prefetch_ahead(b: &[u8], ts: usize) {
    for off in (0..ts).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(PREFETCH_AHEAD + off) as *const i8);
    }
}

/// The `sum16` fields of a super-block's eight activation blocks, one i32 lane each (its
/// two half sums as i16 pairs), by one gather: a scalar loop over them compiled to a
/// chain of inserts and blends.
#[inline(always)]
unsafe fn half_sums(xs: &[Q8Block]) -> __m256i {
    assert!(xs.len() >= 8, "half_sums: a super-block has eight blocks");
    let stride = std::mem::size_of::<Q8Block>() as i32;
    let offsets = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(stride));
    let first = xs.as_ptr().cast::<u8>().add(std::mem::offset_of!(Q8Block, sum16));
    _mm256_i32gather_epi32::<1>(first as *const i32, offsets)
}

/// Decode form of Q4_K / Q5_K, for activations with one scale per super-block
/// ([`quantize_row_shared`](crate::kernels::q8::quantize_row_shared)): each sub-block's
/// byte products are multiplied by its 6-bit scale while still integers and summed over
/// the super-block, so one conversion and one FMA finish 256 values (the per-block form
/// converts and scales each sub-block). Minimums meet the activation sums in integers too.
///
/// For `T` tokens (prefill) each unpacked sub-block serves every token; the sums of one
/// token are formed in the same order whatever `T` is, so every `T` gives the same bits.
#[inline(always)]
unsafe fn k_quant_shared<M: MulSum, const FIVE_BITS: bool, const T: usize>(w: &[u8], xs: [&[Q8Block]; T]) -> [f32; T] {
    let ts = if FIVE_BITS { 176 } else { 144 };
    // Products minus minimums, both into one register per token: with a second one,
    // eight tokens' accumulators spilled to the stack (pp512 at 1B: 36.6 → 47 t/s).
    let mut acc = [_mm256_setzero_ps(); T];
    let low = _mm256_set1_epi8(0x0F);
    for (i, b) in w.chunks_exact(ts).enumerate() {
        if T == 1 {
            prefetch_ahead(b, ts);
        }
        let xb: [&[Q8Block]; T] = std::array::from_fn(|t| &xs[t][8 * i..8 * i + 8]);
        let (scales, min_bytes) = k_scales_mins(b[4..16].try_into().unwrap());
        // Word j of both lanes is sub-block j's scale; `vpshufb` broadcasts one per step.
        let scale_words = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
        let qs = if FIVE_BITS { &b[48..176] } else { &b[16..144] };
        let qh =
            if FIVE_BITS { _mm256_loadu_si256(b.as_ptr().add(16) as *const __m256i) } else { _mm256_setzero_si256() };
        let mut sumi = [_mm256_setzero_si256(); T];
        for c in 0..4 {
            let v = _mm256_loadu_si256(qs.as_ptr().add(32 * c) as *const __m256i);
            for (half, q) in
                [_mm256_and_si256(v, low), _mm256_and_si256(_mm256_srli_epi16(v, 4), low)].into_iter().enumerate()
            {
                let j = 2 * c + half;
                let q = if FIVE_BITS {
                    let bit = _mm256_set1_epi8(1 << j);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
                } else {
                    q
                };
                let pick = _mm256_set1_epi16((2 * j as i16) | ((2 * j as i16 + 1) << 8));
                let scale = _mm256_shuffle_epi8(scale_words, pick);
                for t in 0..T {
                    sumi[t] = M::add_scaled(sumi[t], _mm256_maddubs_epi16(q, load_x(&xb[t][j])), scale);
                }
            }
        }
        let m = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(min_bytes as i64));
        let m_pairs = _mm256_or_si256(m, _mm256_slli_epi32(m, 16));
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        for t in 0..T {
            // Σ_j m_j · (sum16[0] + sum16[1]): each gathered word holds a block's two half
            // sums, and `vpmaddwd` with (m_j, m_j) adds them weighted.
            let min_sum = _mm256_madd_epi16(half_sums(xb[t]), m_pairs);
            let xd = xb[t][0].d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * xd), _mm256_cvtepi32_ps(min_sum), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

/// Decode form of Q6_K for activations with one scale per super-block: the per-16 scales
/// already enter in integers (`vpmaddwd`), and now the sums run over the whole super-block
/// before one conversion.
/// For `T` tokens, each token's sums in the same order as alone (same bits).
#[inline(always)]
unsafe fn q6_k_shared_scale<M: MulSum, const T: usize>(w: &[u8], xs: [&[Q8Block]; T]) -> [f32; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    for (i, b) in w.chunks_exact(210).enumerate() {
        if T == 1 {
            prefetch_ahead(b, 210);
        }
        let xb: [&[Q8Block]; T] = std::array::from_fn(|t| &xs[t][8 * i..8 * i + 8]);
        // The 16 scales as words: words 2j and 2j + 1 scale block j's two halves, in the
        // order the gathered half sums come in.
        let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(192) as *const __m128i));
        let mut sumi = [_mm256_setzero_si256(); T];
        for h in 0..2 {
            // Both lanes hold half h's eight scale words; a shuffle then gives quarter k
            // its first-half scale in the low lane and its second-half scale in the high.
            let words = _mm256_broadcastsi128_si256(if h == 0 {
                _mm256_castsi256_si128(scales)
            } else {
                _mm256_extracti128_si256(scales, 1)
            });
            let quarters = q6_quarters(b, h);
            for (k, q) in quarters.into_iter().enumerate() {
                let (first, second) =
                    ((4 * k) as i16 | ((4 * k + 1) as i16) << 8, (4 * k + 2) as i16 | ((4 * k + 3) as i16) << 8);
                let pick = _mm256_set_m128i(_mm_set1_epi16(second), _mm_set1_epi16(first));
                let scale = _mm256_shuffle_epi8(words, pick);
                for t in 0..T {
                    sumi[t] = M::add_scaled(sumi[t], _mm256_maddubs_epi16(q, load_x(&xb[t][4 * h + k])), scale);
                }
            }
        }
        let d = f16_at(b, 208);
        for t in 0..T {
            // Weights are stored plus 32: subtract 32 · Σ scale · x, still in integers
            // (at most 2^28 in magnitude, far from overflowing).
            let offset = _mm256_madd_epi16(half_sums(xb[t]), scales);
            let net = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(offset, 5));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb[t][0].d), _mm256_cvtepi32_ps(net), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

/// Four rows' 32-byte pieces (`v[r]`) regrouped by eight-byte column: result `g` holds
/// bytes `8g..8g + 8` of each row, row `r` in 64-bit lane `r` (a 4 × 4 transpose of
/// 64-bit elements).
#[inline(always)]
unsafe fn by_column(v: [__m256i; 4]) -> [__m256i; 4] {
    let (a, b) = (_mm256_unpacklo_epi64(v[0], v[1]), _mm256_unpackhi_epi64(v[0], v[1]));
    let (c, d) = (_mm256_unpacklo_epi64(v[2], v[3]), _mm256_unpackhi_epi64(v[2], v[3]));
    [
        _mm256_permute2x128_si256::<0x20>(a, c),
        _mm256_permute2x128_si256::<0x20>(b, d),
        _mm256_permute2x128_si256::<0x31>(a, c),
        _mm256_permute2x128_si256::<0x31>(b, d),
    ]
}

/// A weight format as the four-row prefill kernel ([`rows_kernel`]) sees one chunk of
/// 256 values (a K-quant super-block, or eight 32-value blocks) of four rows: its weights
/// unpacked into 32 column registers (eight values of each row, in value order; see
/// [`by_column`]), and how a sub-block's 16-bit products become the rows' dot products.
trait RowsFormat {
    /// Bytes per chunk; a row's last chunk may be shorter (32-value formats).
    const BYTES: usize;
    /// Values per scaled sub-block: 32, or 16 (Q6_K).
    const SUB: usize;
    /// What the format needs of the four rows' chunk after unpacking.
    type Rows;
    /// Unpacks chunk `b` of each row; a K-quant puts sub-block `j`'s scale of row `r` in
    /// every 16-bit lane of 64-bit lane `r` of `scale[j]`.
    unsafe fn unpack(b: [&[u8]; QUAD_ROWS], weights: &mut [__m256i; 32], scale: &mut [__m256i; 16]) -> Self::Rows;
    /// Folds sub-block `j`'s 16-bit pair sums (row `r`'s in 64-bit lane `r`) into the
    /// token's sums for the chunk: by default scaled in integers into `sumi` (the
    /// K-quants, over activations with one scale per chunk); formats with scales per
    /// block convert and scale into `local`, three independent float chains.
    #[inline(always)]
    unsafe fn sub_block<M: MulSum>(
        _rows: &Self::Rows,
        _j: usize,
        pairs: __m256i,
        scale: __m256i,
        _xb: &[Q8Block],
        sumi: &mut __m256i,
        _local: &mut [__m256; 3],
    ) {
        *sumi = M::add_scaled(*sumi, pairs, scale);
    }
    /// `acc` plus the token's products over the chunk, from its sums (`sumi`: row `r`'s
    /// in lanes `2r` and `2r + 1`; `local`) and its activation blocks `xb`.
    unsafe fn finish(rows: &Self::Rows, sumi: __m256i, local: [__m256; 3], xb: &[Q8Block], acc: __m256) -> __m256;
}

/// A 32-value block format, as [`block32`] and [`rows_kernel`] read it: block bytes, the
/// block's 32 unsigned weights, and its offset or minimum, which multiplies the
/// activation block's sum.
trait Block32 {
    const TS: usize;
    unsafe fn unpack(b: &[u8]) -> __m256i;
    unsafe fn offset(b: &[u8]) -> f32;
}

/// One [`Block32`] format: its bytes, how block `$b` unpacks, its offset or minimum.
macro_rules! block32_format {
    ($(#[$doc:meta])* $name:ident, $ts:literal, |$b:ident| $unpack:expr, $offset:expr) => {
        $(#[$doc])*
        struct $name;
        impl Block32 for $name {
            const TS: usize = $ts;
            #[inline(always)]
            unsafe fn unpack($b: &[u8]) -> __m256i {
                $unpack
            }
            #[inline(always)]
            unsafe fn offset($b: &[u8]) -> f32 {
                $offset
            }
        }
    };
}

block32_format!(
    /// Q4_0: Σ d(q − 8)x = d·Σqx − 8·d·Σx.
    Q40, 18, |b| nibbles(b.as_ptr().add(2)), -8.0 * f16_at(b, 0)
);
block32_format!(
    /// Q4_1: nibbles plus a minimum.
    Q41, 20, |b| nibbles(b.as_ptr().add(4)), f16_at(b, 2)
);
block32_format!(
    /// Q5_0: five bits, offset −16.
    Q50, 22, |b| q5_unpack(b, 2), -16.0 * f16_at(b, 0)
);
block32_format!(
    /// Q5_1: five bits plus a minimum.
    Q51, 24, |b| q5_unpack(b, 4), f16_at(b, 2)
);

/// Up to eight blocks of a 32-value format, each with its own scales: per block, row
/// `r`'s scale in lanes `2r` and `2r + 1`, its offset in lane `2r` only (the two lanes
/// are added at the end).
struct Blocks<B>(std::marker::PhantomData<B>);

struct BlocksRows {
    d: [__m256; 8],
    offset: [__m256; 8],
}

impl<B: Block32> RowsFormat for Blocks<B> {
    const BYTES: usize = 8 * B::TS;
    const SUB: usize = 32;
    type Rows = BlocksRows;

    #[inline(always)]
    unsafe fn unpack(b: [&[u8]; QUAD_ROWS], weights: &mut [__m256i; 32], _: &mut [__m256i; 16]) -> BlocksRows {
        let mut rows = BlocksRows { d: [_mm256_setzero_ps(); 8], offset: [_mm256_setzero_ps(); 8] };
        for k in 0..b[0].len() / B::TS {
            let blk = per_row(|r| &b[r][k * B::TS..(k + 1) * B::TS]);
            let columns = by_column([B::unpack(blk[0]), B::unpack(blk[1]), B::unpack(blk[2]), B::unpack(blk[3])]);
            weights[4 * k..4 * k + 4].copy_from_slice(&columns);
            rows.d[k] = per_row_pair(per_row(|r| f16_at(blk[r], 0)));
            let offset = per_row(|r| B::offset(blk[r]));
            rows.offset[k] = _mm256_setr_ps(offset[0], 0.0, offset[1], 0.0, offset[2], 0.0, offset[3], 0.0);
        }
        rows
    }

    #[inline(always)]
    unsafe fn sub_block<M: MulSum>(
        rows: &BlocksRows,
        j: usize,
        pairs: __m256i,
        _: __m256i,
        xb: &[Q8Block],
        _: &mut __m256i,
        local: &mut [__m256; 3],
    ) {
        // Blocks alternate between two chains and the offsets take a third, in registers
        // for the chunk (the token's running sum is in memory, indexed by token). One
        // chain through the token's sum measured the same within this VM's noise.
        let sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
        local[j % 2] = _mm256_fmadd_ps(_mm256_mul_ps(rows.d[j], _mm256_set1_ps(xb[j].d)), sum, local[j % 2]);
        local[2] = _mm256_fmadd_ps(rows.offset[j], _mm256_set1_ps(xb[j].ds), local[2]);
    }

    #[inline(always)]
    unsafe fn finish(_: &BlocksRows, _: __m256i, local: [__m256; 3], _: &[Q8Block], acc: __m256) -> __m256 {
        _mm256_add_ps(acc, _mm256_add_ps(_mm256_add_ps(local[0], local[1]), local[2]))
    }
}

/// `f(r)` for each of four rows, spelled out: `array::from_fn` and `map` were left as
/// calls in the prefill loop.
#[inline(always)]
fn per_row<T>(f: impl Fn(usize) -> T) -> [T; QUAD_ROWS] {
    [f(0), f(1), f(2), f(3)]
}

/// 32 bytes at `offset` of each of four rows' super-blocks.
#[inline(always)]
unsafe fn rows_at(b: [&[u8]; QUAD_ROWS], offset: usize) -> [__m256i; QUAD_ROWS] {
    let at = |r: usize| b[r][offset..offset + 32].as_ptr() as *const __m256i;
    [_mm256_loadu_si256(at(0)), _mm256_loadu_si256(at(1)), _mm256_loadu_si256(at(2)), _mm256_loadu_si256(at(3))]
}

/// Byte `j` of each row's 64-bit lane in `row_bytes`, sign-extended into that lane's four
/// 16-bit words (moved to the high byte, then shifted down arithmetically).
#[inline(always)]
unsafe fn spread_byte(row_bytes: __m256i, j: usize) -> __m256i {
    let high = _mm256_setr_epi16(
        0x0080, 0x0080, 0x0080, 0x0080, 0x0880, 0x0880, 0x0880, 0x0880, 0x0080, 0x0080, 0x0080, 0x0080, 0x0880, 0x0880,
        0x0880, 0x0880,
    );
    _mm256_srai_epi16(_mm256_shuffle_epi8(row_bytes, _mm256_add_epi16(high, _mm256_set1_epi16((j as i16) << 8))), 8)
}

/// Four rows' values, row `r`'s in lanes `2r` and `2r + 1`.
#[inline(always)]
unsafe fn per_row_pair(v: [f32; QUAD_ROWS]) -> __m256 {
    _mm256_setr_ps(v[0], v[0], v[1], v[1], v[2], v[2], v[3], v[3])
}

/// Eight words packed in two u64: `f(j)` for j in 0..4, then for 4..8.
#[inline(always)]
fn pack_words(f: impl Fn(usize) -> i16) -> [i64; 2] {
    let mut packed = [0u64; 2];
    for j in 0..8 {
        packed[j / 4] |= (f(j) as u16 as u64) << (16 * (j % 4));
    }
    packed.map(|p| p as i64)
}

struct KQuant<const FIVE_BITS: bool>;

/// Q4_K / Q5_K: per row its scale `d`, its minimums' scale `dmin` (each in both of the
/// row's lanes) and its eight 6-bit minimums as words (sub-blocks 0–3, then 4–7).
struct KQuantRows {
    d: __m256,
    dmin: __m256,
    mins: [__m256i; 2],
}

impl<const FIVE_BITS: bool> RowsFormat for KQuant<FIVE_BITS> {
    const BYTES: usize = if FIVE_BITS { 176 } else { 144 };
    const SUB: usize = 32;
    type Rows = KQuantRows;

    #[inline(always)]
    unsafe fn unpack(b: [&[u8]; QUAD_ROWS], weights: &mut [__m256i; 32], scale: &mut [__m256i; 16]) -> KQuantRows {
        let low = _mm256_set1_epi8(0x0F);
        let sm = per_row(|r| k_scales_mins(b[r][4..16].try_into().unwrap()));
        let row_scales = _mm256_set_epi64x(sm[3].0 as i64, sm[2].0 as i64, sm[1].0 as i64, sm[0].0 as i64);
        for (j, scale) in scale[..8].iter_mut().enumerate() {
            *scale = spread_byte(row_scales, j);
        }
        let min_words = |shift: u32| per_row(|r| (sm[r].1 >> shift) as i32);
        let (lo, hi) = (min_words(0), min_words(32));
        let mins = [
            _mm256_cvtepu8_epi16(_mm_set_epi32(lo[3], lo[2], lo[1], lo[0])),
            _mm256_cvtepu8_epi16(_mm_set_epi32(hi[3], hi[2], hi[1], hi[0])),
        ];
        let (d, dmin) = (per_row(|r| f16_at(b[r], 0)), per_row(|r| f16_at(b[r], 2)));
        let at = |offset: usize| rows_at(b, offset);
        let qh = if FIVE_BITS { by_column(at(16)) } else { [_mm256_setzero_si256(); 4] };
        let qs = if FIVE_BITS { 48 } else { 16 };
        for c in 0..4 {
            for (g, v) in by_column(at(qs + 32 * c)).into_iter().enumerate() {
                for (half, q) in
                    [_mm256_and_si256(v, low), _mm256_and_si256(_mm256_srli_epi16(v, 4), low)].into_iter().enumerate()
                {
                    let j = 2 * c + half;
                    weights[4 * j + g] = if FIVE_BITS {
                        let bit = _mm256_set1_epi8(1 << j);
                        let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh[g], bit), bit);
                        _mm256_or_si256(q, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
                    } else {
                        q
                    };
                }
            }
        }
        KQuantRows { d: per_row_pair(d), dmin: per_row_pair(dmin), mins }
    }

    #[inline(always)]
    unsafe fn finish(rows: &KQuantRows, sumi: __m256i, _: [__m256; 3], xb: &[Q8Block], acc: __m256) -> __m256 {
        // Σ_j m_j · (block j's activation sum): the sums packed in general registers (a
        // gather stalled the loop on its latency).
        let sums = pack_words(|j| xb[j].sum() as i16);
        let min_sum = _mm256_add_epi32(
            _mm256_madd_epi16(rows.mins[0], _mm256_set1_epi64x(sums[0])),
            _mm256_madd_epi16(rows.mins[1], _mm256_set1_epi64x(sums[1])),
        );
        let xd = _mm256_set1_ps(xb[0].d);
        let acc = _mm256_fmadd_ps(_mm256_mul_ps(rows.d, xd), _mm256_cvtepi32_ps(sumi), acc);
        _mm256_fnmadd_ps(_mm256_mul_ps(rows.dmin, xd), _mm256_cvtepi32_ps(min_sum), acc)
    }
}

struct Q6K;

/// Q6_K: per row its scale `d` (in both of the row's lanes) and its sixteen signed
/// scales as words, four per 64-bit lane (`scales[k]`: sub-blocks 4k..4k + 4).
struct Q6KRows {
    d: __m256,
    scales: [__m256i; 4],
}

impl RowsFormat for Q6K {
    const BYTES: usize = 210;
    const SUB: usize = 16;
    type Rows = Q6KRows;

    #[inline(always)]
    unsafe fn unpack(b: [&[u8]; QUAD_ROWS], weights: &mut [__m256i; 32], scale: &mut [__m256i; 16]) -> Q6KRows {
        let bytes = |r: usize, at: usize| i64::from_le_bytes(b[r][at..at + 8].try_into().unwrap());
        for half in 0..2 {
            let row_scales = _mm256_set_epi64x(
                bytes(3, 192 + 8 * half),
                bytes(2, 192 + 8 * half),
                bytes(1, 192 + 8 * half),
                bytes(0, 192 + 8 * half),
            );
            for j in 0..8 {
                scale[8 * half + j] = spread_byte(row_scales, j);
            }
        }
        let word = |r: usize, k: usize| i32::from_le_bytes(b[r][192 + 4 * k..196 + 4 * k].try_into().unwrap());
        let mut scales = [_mm256_setzero_si256(); 4];
        for (k, scales) in scales.iter_mut().enumerate() {
            *scales = _mm256_cvtepi8_epi16(_mm_set_epi32(word(3, k), word(2, k), word(1, k), word(0, k)));
        }
        for h in 0..2 {
            let quarters = [q6_quarters(b[0], h), q6_quarters(b[1], h), q6_quarters(b[2], h), q6_quarters(b[3], h)];
            for k in 0..4 {
                let columns = by_column([quarters[0][k], quarters[1][k], quarters[2][k], quarters[3][k]]);
                weights[16 * h + 4 * k..16 * h + 4 * k + 4].copy_from_slice(&columns);
            }
        }
        Q6KRows { d: per_row_pair(per_row(|r| f16_at(b[r], 208))), scales }
    }

    #[inline(always)]
    unsafe fn finish(rows: &Q6KRows, sumi: __m256i, _: [__m256; 3], xb: &[Q8Block], acc: __m256) -> __m256 {
        // Weights are stored plus 32: subtract 32 · Σ_s scale_s · (half-block s's sum).
        let mut offset = _mm256_setzero_si256();
        for k in 0..2 {
            let sums = pack_words(|s| xb[4 * k + s / 2].sum16[s % 2]);
            offset = _mm256_add_epi32(offset, _mm256_madd_epi16(rows.scales[2 * k], _mm256_set1_epi64x(sums[0])));
            offset = _mm256_add_epi32(offset, _mm256_madd_epi16(rows.scales[2 * k + 1], _mm256_set1_epi64x(sums[1])));
        }
        let net = _mm256_sub_epi32(sumi, _mm256_slli_epi32(offset, 5));
        _mm256_fmadd_ps(_mm256_mul_ps(rows.d, _mm256_set1_ps(xb[0].d)), _mm256_cvtepi32_ps(net), acc)
    }
}

/// Prefill form over four weight rows (`rb` bytes apart): the K-quants over shared-scale
/// activations, the 32-value formats over per-block ones. Each register holds eight
/// weights of each of the four rows, so one broadcast of eight activation bytes serves all
/// four, and a sub-block's products stay in 16-bit lanes until one `vpmaddwd` (per lane
/// at most 8 · 31 · 127 = 31,496 for five-bit weights, 4 · 63 · 127 = 32,004 for Q6_K: no
/// saturation). A K-quant's sub-block scales then apply in that same `vpmaddwd`; the
/// conversion, scalings and minimums or offsets are shared by four rows, where the
/// single-row kernels pay them per row.
///
/// Lanes `2r` and `2r + 1` carry row `r`'s partial sums to the end. The weights are
/// unpacked once per chunk into a stack tile that every token of `T` reads, in the same
/// order whatever `T` is (same bits alone and in a tile).
#[inline(always)]
unsafe fn rows_kernel<M: MulSum, F: RowsFormat, const T: usize>(
    w: &[u8],
    rb: usize,
    x: &[Q8Block],
    stride: usize,
) -> [[f32; QUAD_ROWS]; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    let mut weights = [_mm256_setzero_si256(); 32];
    let mut scale = [_mm256_setzero_si256(); 16];
    let groups_per_sub = F::SUB / 8;
    for i in 0..rb.div_ceil(F::BYTES) {
        let (start, end) = (i * F::BYTES, ((i + 1) * F::BYTES).min(rb));
        let b = per_row(|r| &w[r * rb + start..r * rb + end]);
        let rows = F::unpack(b, &mut weights, &mut scale);
        let subs = (end - start) * (256 / F::SUB) / F::BYTES;
        for (t, acc) in acc.iter_mut().enumerate() {
            let xb = &x[t * stride + 8 * i..t * stride + 8 * i + subs * F::SUB / 32];
            let (mut sumi, mut local) = (_mm256_setzero_si256(), [_mm256_setzero_ps(); 3]);
            for (sub, &scale) in scale[..subs].iter().enumerate() {
                let mut pairs = _mm256_setzero_si256();
                for g in groups_per_sub * sub..groups_per_sub * (sub + 1) {
                    let at = xb[g / 4].qs.as_ptr().add(8 * (g % 4));
                    let xg = _mm256_set1_epi64x(std::ptr::read_unaligned(at as *const i64));
                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(weights[g], xg));
                }
                F::sub_block::<M>(&rows, sub, pairs, scale, xb, &mut sumi, &mut local);
            }
            *acc = F::finish(&rows, sumi, local, xb, *acc);
        }
    }
    let mut out = [[0f32; QUAD_ROWS]; T];
    for (out, a) in out.iter_mut().zip(acc) {
        let mut pairs = [0f32; 8];
        _mm256_storeu_ps(pairs.as_mut_ptr(), _mm256_hadd_ps(a, a));
        *out = [pairs[0], pairs[1], pairs[4], pairs[5]];
    }
    out
}

/// `TILE` consecutive tokens' activation rows, `stride` blocks apart.
#[inline(always)]
fn tile(x: &[Q8Block], stride: usize) -> [&[Q8Block]; TILE] {
    std::array::from_fn(|t| &x[t * stride..(t + 1) * stride])
}

/// Q5_0 / Q5_1: nibbles after the 4-byte high-bit mask at `qh`.
#[inline(always)]
unsafe fn q5_unpack(b: &[u8], qh: usize) -> __m256i {
    let bits = u32::from_le_bytes([b[qh], b[qh + 1], b[qh + 2], b[qh + 3]]);
    _mm256_or_si256(nibbles(b.as_ptr().add(qh + 4)), high_bits(bits))
}

/// The single-token, `TILE`-token and four-row kernels of one 32-value block format.
macro_rules! block32_kernels {
    ($mulsum:ty, $features:literal, $format:ty, $one:ident, $tile:ident, $rows:ident, $rows_tile:ident) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $one(w: &[u8], x: &[Q8Block]) -> f32 {
            block32::<$mulsum, $format>(w, x)
        }
        #[target_feature(enable = $features)]
        pub unsafe fn $tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
            block32_multi::<$mulsum, $format, TILE>(w, tile(x, stride))
        }
        rows_kernels!($mulsum, $features, $rows, $rows_tile, Blocks<$format>);
    };
}

/// The single-token and [`QUAD_TILE`]-token four-row kernels of one format.
macro_rules! rows_kernels {
    ($mulsum:ty, $features:literal, $one:ident, $tile:ident, $format:ty) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $one(w: &[u8], rb: usize, x: &[Q8Block]) -> [f32; QUAD_ROWS] {
            rows_kernel::<$mulsum, $format, 1>(w, rb, x, 0)[0]
        }
        #[target_feature(enable = $features)]
        pub unsafe fn $tile(w: &[u8], rb: usize, x: &[Q8Block], stride: usize) -> [[f32; QUAD_ROWS]; QUAD_TILE] {
            rows_kernel::<$mulsum, $format, QUAD_TILE>(w, rb, x, stride)
        }
    };
}

/// Instantiates every kernel for one [`MulSum`] under the target features it needs:
/// single-token (`q4_0`, …) and `TILE`-token (`q4_0_tile`, …) forms.
macro_rules! kernels {
    ($module:ident, $mulsum:ty, $features:literal) => {
        pub mod $module {
            use super::*;
            block32_kernels!($mulsum, $features, Q40, q4_0, q4_0_tile, q4_0_rows, q4_0_rows_tile);
            block32_kernels!($mulsum, $features, Q41, q4_1, q4_1_tile, q4_1_rows, q4_1_rows_tile);
            block32_kernels!($mulsum, $features, Q50, q5_0, q5_0_tile, q5_0_rows, q5_0_rows_tile);
            block32_kernels!($mulsum, $features, Q51, q5_1, q5_1_tile, q5_1_rows, q5_1_rows_tile);
            #[target_feature(enable = $features)]
            pub unsafe fn q8_0(w: &[u8], x: &[Q8Block]) -> f32 {
                q8_0_::<$mulsum>(w, x)
            }

            #[target_feature(enable = $features)]
            pub unsafe fn q4_k_shared(w: &[u8], x: &[Q8Block]) -> f32 {
                k_quant_shared::<$mulsum, false, 1>(w, [x])[0]
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q5_k_shared(w: &[u8], x: &[Q8Block]) -> f32 {
                k_quant_shared::<$mulsum, true, 1>(w, [x])[0]
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q6_k_shared(w: &[u8], x: &[Q8Block]) -> f32 {
                q6_k_shared_scale::<$mulsum, 1>(w, [x])[0]
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q4_k_shared_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
                k_quant_shared::<$mulsum, false, TILE>(w, tile(x, stride))
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q5_k_shared_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
                k_quant_shared::<$mulsum, true, TILE>(w, tile(x, stride))
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q6_k_shared_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
                q6_k_shared_scale::<$mulsum, TILE>(w, tile(x, stride))
            }

            rows_kernels!($mulsum, $features, q4_k_shared_rows, q4_k_shared_rows_tile, KQuant<false>);
            rows_kernels!($mulsum, $features, q5_k_shared_rows, q5_k_shared_rows_tile, KQuant<true>);
            rows_kernels!($mulsum, $features, q6_k_shared_rows, q6_k_shared_rows_tile, Q6K);

            #[target_feature(enable = $features)]
            pub unsafe fn q8_0_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
                q8_0_multi::<$mulsum, TILE>(w, tile(x, stride))
            }
        }
    };
}

kernels!(plain, Avx2, "avx2,fma,f16c");
kernels!(vnni, Vnni, "avx2,fma,f16c,avx512vnni,avx512vl");

#[cfg(test)]
mod tests {
    #[test]
    fn the_scale_table_converts_every_half_exactly() {
        for h in 0..=u16::MAX {
            let (got, want) = (super::F16_TO_F32[h as usize], half::f16::from_bits(h).to_f32());
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#06x}: {got} vs {want}");
        }
    }
}
