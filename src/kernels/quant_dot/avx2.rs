//! AVX2 + FMA integer dot products (x86-64): weights are unpacked to unsigned bytes in
//! registers, multiplied with the 8-bit activations by `vpmaddubsw`, and each 32-value
//! block's integer sum is scaled once in f32. Offsets (Q4_0's −8, minimums, Q6_K's −32)
//! are applied through the activation sums, outside the inner loop.
//!
//! Every function requires AVX2, FMA and F16C (checked by the dispatcher) and `x.len()` blocks
//! of activations for `w`'s weights (checked by the safe wrapper in `mod.rs`).

use std::arch::x86_64::*;

use super::super::dequant::q3_k_scale;
use super::super::q8::Q8Block;
use super::scalar::k_scales_mins;
use super::{ROWS_TILE, TILE};

/// Rows of one group interleaved at load, the unit [`rows_kernel`] reads.
const ROWS: usize = crate::kernels::interleave_rows::ROWS;

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
    /// Whether [`Self::mul_sum`] accumulates in one instruction (VNNI): then formats whose
    /// scales apply in floats take each four-byte group straight into i32 lanes instead
    /// of summing groups in i16 first.
    const FUSED: bool;
    /// `acc` plus [`Self::mul_sum`]`(u, s)`.
    unsafe fn mul_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
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
    const FUSED: bool = false;
    #[inline(always)]
    unsafe fn mul_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(acc, mul_sum_u8_i8(u, s))
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
    const FUSED: bool = true;
    #[inline(always)]
    unsafe fn mul_add(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
}

/// One value per weight row in each 32-bit lane: the register the several-row kernel
/// ([`rows_kernel`]) works in. [`Y8`] holds one group of eight interleaved rows in a
/// 256-bit register; [`Z16`] two groups side by side in a 512-bit one, so each
/// instruction serves sixteen rows (at 1B width the eight-row loop was bound by how fast
/// instructions issue, far below the multipliers' rate). A row's lane computes the same
/// operations in the same order in either, so both give the same bits.
trait Lanes {
    type I: Copy;
    type F: Copy;
    /// Rows per register.
    const ROWS: usize;
    /// The register of group `lo`'s lanes, then (for [`Z16`]) group `hi`'s.
    unsafe fn join_i(lo: __m256i, hi: __m256i) -> Self::I;
    unsafe fn join_f(lo: __m256, hi: __m256) -> Self::F;
    unsafe fn zero_i() -> Self::I;
    unsafe fn zero_f() -> Self::F;
    /// The unaligned i32 at `p` in every lane.
    unsafe fn splat_i32(p: *const i32) -> Self::I;
    unsafe fn splat_i16(v: i16) -> Self::I;
    unsafe fn splat_f32(v: f32) -> Self::F;
    unsafe fn add_i32(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn sub_i32(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn mullo_i32(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn shl<const N: u32>(a: Self::I) -> Self::I;
    /// Each lane's high word, sign-extended.
    unsafe fn high_word(a: Self::I) -> Self::I;
    unsafe fn add_i16(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn madd_i16(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn maddubs(u: Self::I, s: Self::I) -> Self::I;
    /// `a` with the sign of `s` per byte (0 where `s` is 0), as `vpsignb`.
    unsafe fn sign_i8(a: Self::I, s: Self::I) -> Self::I;
    unsafe fn xor(a: Self::I, b: Self::I) -> Self::I;
    /// [`MulSum::mul_add`] at this width.
    unsafe fn mul_add<M: MulSum>(acc: Self::I, u: Self::I, s: Self::I) -> Self::I;
    /// [`MulSum::add_scaled`] at this width.
    unsafe fn add_scaled<M: MulSum>(acc: Self::I, pairs: Self::I, scale: Self::I) -> Self::I;
    unsafe fn to_f32(a: Self::I) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a · b + c`.
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// `c − a · b`.
    unsafe fn fnmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn store(p: *mut f32, v: Self::F);
}

/// Eight rows in a 256-bit register (AVX2).
struct Y8;
impl Lanes for Y8 {
    type I = __m256i;
    type F = __m256;
    const ROWS: usize = 8;
    #[inline(always)]
    unsafe fn join_i(lo: __m256i, _: __m256i) -> __m256i {
        lo
    }
    #[inline(always)]
    unsafe fn join_f(lo: __m256, _: __m256) -> __m256 {
        lo
    }
    #[inline(always)]
    unsafe fn zero_i() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat_i32(p: *const i32) -> __m256i {
        _mm256_set1_epi32(std::ptr::read_unaligned(p))
    }
    #[inline(always)]
    unsafe fn splat_i16(v: i16) -> __m256i {
        _mm256_set1_epi16(v)
    }
    #[inline(always)]
    unsafe fn splat_f32(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add_i32(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn sub_i32(a: __m256i, b: __m256i) -> __m256i {
        _mm256_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn mullo_i32(a: __m256i, b: __m256i) -> __m256i {
        _mm256_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn shl<const N: u32>(a: __m256i) -> __m256i {
        _mm256_sll_epi32(a, _mm_cvtsi32_si128(N as i32))
    }
    #[inline(always)]
    unsafe fn high_word(a: __m256i) -> __m256i {
        _mm256_srai_epi32(a, 16)
    }
    #[inline(always)]
    unsafe fn add_i16(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn madd_i16(a: __m256i, b: __m256i) -> __m256i {
        _mm256_madd_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn maddubs(u: __m256i, s: __m256i) -> __m256i {
        _mm256_maddubs_epi16(u, s)
    }
    #[inline(always)]
    unsafe fn sign_i8(a: __m256i, s: __m256i) -> __m256i {
        _mm256_sign_epi8(a, s)
    }
    #[inline(always)]
    unsafe fn xor(a: __m256i, b: __m256i) -> __m256i {
        _mm256_xor_si256(a, b)
    }
    #[inline(always)]
    unsafe fn mul_add<M: MulSum>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        M::mul_add(acc, u, s)
    }
    #[inline(always)]
    unsafe fn add_scaled<M: MulSum>(acc: __m256i, pairs: __m256i, scale: __m256i) -> __m256i {
        M::add_scaled(acc, pairs, scale)
    }
    #[inline(always)]
    unsafe fn to_f32(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fnmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
}

/// Sixteen rows (two interleaved groups of eight) in a 512-bit register (AVX-512 F + BW).
struct Z16;
const _: () = assert!(<Z16 as Lanes>::ROWS <= super::MOST_ROWS, "callers' buffers hold MOST_ROWS rows");
impl Lanes for Z16 {
    type I = __m512i;
    type F = __m512;
    const ROWS: usize = 2 * ROWS;
    #[inline(always)]
    unsafe fn join_i(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
    }
    #[inline(always)]
    unsafe fn join_f(lo: __m256, hi: __m256) -> __m512 {
        _mm512_castsi512_ps(Self::join_i(_mm256_castps_si256(lo), _mm256_castps_si256(hi)))
    }
    #[inline(always)]
    unsafe fn zero_i() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn zero_f() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn splat_i32(p: *const i32) -> __m512i {
        _mm512_set1_epi32(std::ptr::read_unaligned(p))
    }
    #[inline(always)]
    unsafe fn splat_i16(v: i16) -> __m512i {
        _mm512_set1_epi16(v)
    }
    #[inline(always)]
    unsafe fn splat_f32(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn add_i32(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn sub_i32(a: __m512i, b: __m512i) -> __m512i {
        _mm512_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn mullo_i32(a: __m512i, b: __m512i) -> __m512i {
        _mm512_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn shl<const N: u32>(a: __m512i) -> __m512i {
        _mm512_slli_epi32::<N>(a)
    }
    #[inline(always)]
    unsafe fn high_word(a: __m512i) -> __m512i {
        _mm512_srai_epi32(a, 16)
    }
    #[inline(always)]
    unsafe fn add_i16(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn madd_i16(a: __m512i, b: __m512i) -> __m512i {
        _mm512_madd_epi16(a, b)
    }
    #[inline(always)]
    unsafe fn maddubs(u: __m512i, s: __m512i) -> __m512i {
        _mm512_maddubs_epi16(u, s)
    }
    #[inline(always)]
    unsafe fn sign_i8(a: __m512i, s: __m512i) -> __m512i {
        // AVX-512 has no `vpsignb`: keep `a` where `s` is non-zero, negate it where negative.
        let kept = _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(s, s), a);
        _mm512_mask_sub_epi8(kept, _mm512_movepi8_mask(s), _mm512_setzero_si512(), a)
    }
    #[inline(always)]
    unsafe fn xor(a: __m512i, b: __m512i) -> __m512i {
        _mm512_xor_si512(a, b)
    }
    #[inline(always)]
    unsafe fn mul_add<M: MulSum>(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
        if M::FUSED {
            _mm512_dpbusd_epi32(acc, u, s)
        } else {
            _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)))
        }
    }
    #[inline(always)]
    unsafe fn add_scaled<M: MulSum>(acc: __m512i, pairs: __m512i, scale: __m512i) -> __m512i {
        if M::FUSED {
            _mm512_dpwssd_epi32(acc, pairs, scale)
        } else {
            _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, scale))
        }
    }
    #[inline(always)]
    unsafe fn to_f32(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn fnmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fnmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
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
/// two half sums as i16 pairs), by eight scalar loads.
#[inline(always)]
unsafe fn half_sums(xs: &[Q8Block]) -> __m256i {
    let pair = |j: usize| std::ptr::read_unaligned(xs[j].sum16.as_ptr() as *const i32);
    _mm256_setr_epi32(pair(0), pair(1), pair(2), pair(3), pair(4), pair(5), pair(6), pair(7))
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

/// The sixteen per-16 scales of a Q2_K / Q3_K / Q6_K super-block as words, in the order the
/// gathered half sums come in (words `2j`, `2j + 1` for activation block `j`), and one
/// half's eight of them in both lanes.
#[inline(always)]
unsafe fn half_scales(scales: __m256i, h: usize) -> __m256i {
    _mm256_broadcastsi128_si256(if h == 0 {
        _mm256_castsi256_si128(scales)
    } else {
        _mm256_extracti128_si256(scales, 1)
    })
}

/// The shuffle that gives quarter `k` of a half its first sixteen weights' scale word in
/// the low lane and its last sixteen's in the high lane.
#[inline(always)]
unsafe fn quarter_pick(k: usize) -> __m256i {
    let (first, second) = ((4 * k) as i16 | ((4 * k + 1) as i16) << 8, (4 * k + 2) as i16 | ((4 * k + 3) as i16) << 8);
    _mm256_set_m128i(_mm_set1_epi16(second), _mm_set1_epi16(first))
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
            let words = half_scales(scales, h);
            let quarters = q6_quarters(b, h);
            for (k, q) in quarters.into_iter().enumerate() {
                let scale = _mm256_shuffle_epi8(words, quarter_pick(k));
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

/// 16-bit lanes shifted right by `n` (a loop's count; the immediate form needs a constant).
#[inline(always)]
unsafe fn shift_right(v: __m256i, n: usize) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32))
}

/// Decode form of Q3_K for shared-scale activations, Q6_K's scheme with three-bit
/// weights: each weight unpacked as `q + 4` (0..7: two bits of `qs` and the `hmask` bit),
/// its signed 6-bit scale applied in integers, the offset (4 · Σ scale · x) taken from the
/// activations' half sums. For `T` tokens, each token's sums in the same order as alone.
#[inline(always)]
unsafe fn q3_k_shared_scale<M: MulSum, const T: usize>(w: &[u8], xs: [&[Q8Block]; T]) -> [f32; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    let (two, bit) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
    for (i, b) in w.chunks_exact(110).enumerate() {
        if T == 1 {
            prefetch_ahead(b, 110);
        }
        let xb: [&[Q8Block]; T] = std::array::from_fn(|t| &xs[t][8 * i..8 * i + 8]);
        let packed: [i8; 16] = std::array::from_fn(|j| q3_k_scale(j, &b[96..108]) as i8);
        let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(packed.as_ptr() as *const __m128i));
        let hmask = _mm256_loadu_si256(b.as_ptr() as *const __m256i);
        let mut sumi = [_mm256_setzero_si256(); T];
        for h in 0..2 {
            let words = half_scales(scales, h);
            let qs = _mm256_loadu_si256(b.as_ptr().add(32 + 32 * h) as *const __m256i);
            for k in 0..4 {
                let j = 4 * h + k;
                let low = _mm256_and_si256(shift_right(qs, 2 * k), two);
                // hmask bit j moved to bit 2.
                let high = _mm256_and_si256(
                    if j < 2 {
                        _mm256_sll_epi16(hmask, _mm_cvtsi32_si128(2 - j as i32))
                    } else {
                        shift_right(hmask, j - 2)
                    },
                    bit,
                );
                let q = _mm256_or_si256(low, high);
                let scale = _mm256_shuffle_epi8(words, quarter_pick(k));
                for t in 0..T {
                    sumi[t] = M::add_scaled(sumi[t], _mm256_maddubs_epi16(q, load_x(&xb[t][j])), scale);
                }
            }
        }
        let d = f16_at(b, 108);
        for t in 0..T {
            let offset = _mm256_madd_epi16(half_sums(xb[t]), scales);
            let net = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(offset, 2));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb[t][0].d), _mm256_cvtepi32_ps(net), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

/// Decode form of Q2_K for shared-scale activations: two-bit weights times their 4-bit
/// scales in integers over the super-block, the 4-bit minimums times the activations'
/// half sums likewise; one conversion each. Same bits for every `T`.
#[inline(always)]
unsafe fn q2_k_shared_scale<M: MulSum, const T: usize>(w: &[u8], xs: [&[Q8Block]; T]) -> [f32; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    let two = _mm256_set1_epi8(3);
    for (i, b) in w.chunks_exact(84).enumerate() {
        if T == 1 {
            prefetch_ahead(b, 84);
        }
        let xb: [&[Q8Block]; T] = std::array::from_fn(|t| &xs[t][8 * i..8 * i + 8]);
        let bytes = _mm_loadu_si128(b.as_ptr() as *const __m128i);
        let scales = _mm256_cvtepu8_epi16(_mm_and_si128(bytes, _mm_set1_epi8(0x0F)));
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F)));
        let mut sumi = [_mm256_setzero_si256(); T];
        for h in 0..2 {
            let words = half_scales(scales, h);
            let qs = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * h) as *const __m256i);
            for k in 0..4 {
                let q = _mm256_and_si256(shift_right(qs, 2 * k), two);
                let scale = _mm256_shuffle_epi8(words, quarter_pick(k));
                for t in 0..T {
                    sumi[t] = M::add_scaled(sumi[t], _mm256_maddubs_epi16(q, load_x(&xb[t][4 * h + k])), scale);
                }
            }
        }
        let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
        for t in 0..T {
            let min_sum = _mm256_madd_epi16(half_sums(xb[t]), mins);
            let xd = xb[t][0].d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * xd), _mm256_cvtepi32_ps(min_sum), acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

/// A 32-value block format, as [`block32`] and [`rows_kernel`] read it: block bytes, the
/// width of its weights, the block's 32 weights (unsigned, or for 8-bit weights signed)
/// and its offset or minimum, which multiplies the activation block's sum.
trait Block32 {
    const TS: usize;
    const BITS: u32;
    unsafe fn unpack(b: &[u8]) -> __m256i;
    unsafe fn offset(b: &[u8]) -> f32;
}

/// One [`Block32`] format: its bytes, its width, how a block unpacks, its offset or
/// minimum.
macro_rules! block32_format {
    ($(#[$doc:meta])* $name:ident, $ts:literal, $bits:literal, |$b:ident| $unpack:expr, |$o:pat_param| $offset:expr) => {
        $(#[$doc])*
        struct $name;
        impl Block32 for $name {
            const TS: usize = $ts;
            const BITS: u32 = $bits;
            #[inline(always)]
            unsafe fn unpack($b: &[u8]) -> __m256i {
                $unpack
            }
            #[inline(always)]
            unsafe fn offset($o: &[u8]) -> f32 {
                $offset
            }
        }
    };
}

block32_format!(
    /// Q4_0: Σ d(q − 8)x = d·Σqx − 8·d·Σx.
    Q40, 18, 4, |b| nibbles(b.as_ptr().add(2)), |b| -8.0 * f16_at(b, 0)
);
block32_format!(
    /// Q4_1: nibbles plus a minimum.
    Q41, 20, 4, |b| nibbles(b.as_ptr().add(4)), |b| f16_at(b, 2)
);
block32_format!(
    /// Q5_0: five bits, offset −16.
    Q50, 22, 5, |b| q5_unpack(b, 2), |b| -16.0 * f16_at(b, 0)
);
block32_format!(
    /// Q5_1: five bits plus a minimum.
    Q51, 24, 5, |b| q5_unpack(b, 4), |b| f16_at(b, 2)
);
block32_format!(
    /// Q8_0: signed bytes, no offset (the prefill kernel's view; decode has [`q8_0_`]).
    Q80, 34, 8, |b| _mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i), |_| 0.0
);

/// One token's activation blocks over one chunk, as the interleaved tile holds them:
/// block `p` at `x[p · step]`.
#[derive(Clone, Copy)]
struct TokenBlocks<'a> {
    x: &'a [Q8Block],
    step: usize,
}

impl<'a> TokenBlocks<'a> {
    #[inline(always)]
    fn at(self, p: usize) -> &'a Q8Block {
        &self.x[p * self.step]
    }
}

/// `Σ_p` (activation block `p`'s two half sums) · (the two words of `factors[p]`), per
/// lane: minimums or offsets meeting the activation sums in integers.
#[inline(always)]
unsafe fn weighted_half_sums<L: Lanes>(factors: &[L::I; 8], xb: TokenBlocks) -> L::I {
    let mut sum = L::zero_i();
    for (p, &f) in factors.iter().enumerate() {
        let pair = L::splat_i32(xb.at(p).sum16.as_ptr() as *const i32);
        sum = L::add_i32(sum, L::madd_i16(f, pair));
    }
    sum
}

/// A weight format as the several-row kernel ([`rows_kernel`]) sees it: eight rows
/// interleaved at load ([`interleave_rows`](crate::kernels::interleave_rows)) are a run
/// of chunks (one K-quant super-block or one 32-value block of each row), a chunk a run
/// of 32-value pieces that each meet one activation block. The kernel reads one group of
/// eight rows or two side by side ([`Lanes`]).
trait RowsFormat {
    /// Bytes per chunk of one row.
    const BYTES: usize;
    /// 32-value pieces per chunk.
    const PIECES: usize;
    /// Four-byte groups whose 16-bit products `vpmaddubsw` may add up before they are
    /// widened: each 16-bit lane gains two products per group, at most
    /// `2 · max|w| · 127`, and the lane must stay below 2^15.
    const SUMMED: usize;
    /// Consecutive four-byte groups of a piece that share one [`Self::scale`].
    const SCALE_GROUPS: usize = 8;
    /// Signed weights (Q8_0): multiplied as |w| by x with w's sign.
    const SIGNED: bool = false;
    /// Whether [`Self::scale`] is all ones (scales applied in floats, per block).
    const UNIT_SCALE: bool = false;
    /// How far ahead decode prefetches in the group's one stream, a piece's share of a
    /// chunk's lines per piece. Measured at 1B width, 2 threads: Q4_0 one row at a time
    /// 14–19 GB/s, interleaved with 1.5 KiB ahead 21–27; for the K-quants' larger chunks
    /// 3 KiB ran decode 6–10 % faster than 1.5 KiB, for Q4_0 and Q8_0 3–10 % slower.
    const DECODE_PREFETCH: usize;
    /// What the format needs of the rows' chunk besides the weights.
    type Rows<L: Lanes>;
    /// The chunk's [`Self::Rows`] from group `lo`'s chunk and (for [`Z16`]) group `hi`'s.
    unsafe fn rows<L: Lanes>(lo: &[u8], hi: &[u8]) -> Self::Rows<L>;
    /// Piece `j` of the chunk `b` as eight registers, register `g` holding weights
    /// `4g..4g + 4` of the piece for every row, row `r` in lane `r`: unsigned weights, or
    /// signed ones where [`Self::SIGNED`].
    unsafe fn piece(b: &[u8], j: usize) -> [__m256i; 8];
    /// The integer factor of group `g` of piece `j` (and of the groups after it that
    /// share it): row `r`'s in both words of lane `r`; by default ones, for formats whose
    /// scales are applied in floats.
    #[inline(always)]
    unsafe fn scale<L: Lanes>(_rows: &Self::Rows<L>, _j: usize, _g: usize) -> L::I {
        L::splat_i16(1)
    }
    /// `acc` plus one token's products over the chunk, from its integer sums (row `r`'s in
    /// lane `r`) and its activation blocks of the chunk.
    unsafe fn finish<L: Lanes>(rows: &Self::Rows<L>, sumi: L::I, xb: TokenBlocks, acc: L::F) -> L::F;
}

/// A 32-value block format's scales `d` and offsets or minimums, a row's in its lane.
struct BlocksRows<L: Lanes> {
    d: L::F,
    offset: L::F,
}

impl<L: Lanes> BlocksRows<L> {
    /// `acc` plus one token's products over a block: `d·d_x·Σqx`, and where the format has
    /// one, the offset or minimum times the activation block's scaled sum.
    #[inline(always)]
    unsafe fn finish(&self, sumi: L::I, xb: TokenBlocks, acc: L::F, offset: bool) -> L::F {
        let xb = xb.at(0);
        let acc = L::fmadd(L::mul(self.d, L::splat_f32(xb.d)), L::to_f32(sumi), acc);
        if offset {
            L::fmadd(self.offset, L::splat_f32(xb.ds), acc)
        } else {
            acc
        }
    }
}

/// The 32-byte run of an interleaved column that holds block bytes `k..k + 4` of every
/// row ([`interleave_rows`](crate::kernels::interleave_rows)).
#[inline(always)]
unsafe fn run(b: &[u8], k: usize) -> __m256i {
    _mm256_loadu_si256(b[8 * k..8 * k + 32].as_ptr() as *const __m256i)
}

/// The eight rows' f16 field at block byte `k` of an interleaved column, as f32.
#[inline(always)]
unsafe fn field(b: &[u8], k: usize) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(b[8 * k..8 * k + 16].as_ptr() as *const __m128i))
}

/// Bytes `low` and `high` (0..4) of each 32-bit lane of `v`, each in the high byte of one
/// of the lane's two words (an arithmetic shift by 8 then sign-extends them, a logical one
/// zero-extends them).
#[inline(always)]
unsafe fn lane_bytes_high(v: __m256i, low: usize, high: usize) -> __m256i {
    let (l, h) = (low as i8, high as i8);
    let z = -128i8; // 0x80: a zero byte
    let pick = _mm_setr_epi8(z, l, z, h, z, 4 + l, z, 4 + h, z, 8 + l, z, 8 + h, z, 12 + l, z, 12 + h);
    _mm256_shuffle_epi8(v, _mm256_broadcastsi128_si256(pick))
}

/// A 32-value block format interleaved at load
/// ([`interleave_rows`](crate::kernels::interleave_rows)): per block column the eight
/// rows' header fields, for five-bit formats their fifth-bit words, then 32-byte runs that
/// each hold four quant bytes of every row, ready to multiply.
struct Blocks<B>(std::marker::PhantomData<B>);

impl<B: Block32> Blocks<B> {
    /// Bytes of a block's two-byte header fields (scale, minimum).
    const HEADER: usize = B::TS - 4 * B::BITS as usize;
    /// Where the quant bytes start: after the header and a five-bit format's `qh` word.
    const QUANTS: usize = if B::BITS == 5 { Self::HEADER + 4 } else { Self::HEADER };
}

/// Bit 4 of each byte of a lane: bits `4·half + b` (b = 0..4, byte b of the lane) of byte
/// `byte` of the lane's 32-bit word in `qh` — a five-bit block's high bits for the four
/// weights one interleaved quant byte run holds per row.
#[inline(always)]
unsafe fn fifth_bits(qh: __m256i, byte: i8, half: u32) -> __m256i {
    let pick = _mm_setr_epi8(
        byte,
        byte,
        byte,
        byte,
        4 + byte,
        4 + byte,
        4 + byte,
        4 + byte,
        8 + byte,
        8 + byte,
        8 + byte,
        8 + byte,
        12 + byte,
        12 + byte,
        12 + byte,
        12 + byte,
    );
    let bits = _mm256_set1_epi32((0x0804_0201u32 << (4 * half)) as i32);
    let set =
        _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(qh, _mm256_broadcastsi128_si256(pick)), bits), bits);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

impl<B: Block32> RowsFormat for Blocks<B> {
    const BYTES: usize = B::TS;
    const UNIT_SCALE: bool = true;
    const PIECES: usize = 1;
    const SUMMED: usize = match B::BITS {
        4 => 8,
        5 => 4,
        _ => 1,
    };
    const SIGNED: bool = B::BITS == 8;
    const DECODE_PREFETCH: usize = PREFETCH_AHEAD;
    type Rows<L: Lanes> = BlocksRows<L>;

    #[inline(always)]
    unsafe fn rows<L: Lanes>(lo: &[u8], hi: &[u8]) -> BlocksRows<L> {
        let d = L::join_f(field(lo, 0), field(hi, 0));
        // Q4_1's and Q5_1's minimum is their second field; Q4_0's offset is −8·d and
        // Q5_0's −16·d (Q8_0 has none).
        let offset = if Self::HEADER == 4 {
            L::join_f(field(lo, 2), field(hi, 2))
        } else {
            L::mul(d, L::splat_f32(-((1u32 << (B::BITS - 1)) as f32)))
        };
        BlocksRows { d, offset }
    }

    #[inline(always)]
    unsafe fn piece(b: &[u8], _: usize) -> [__m256i; 8] {
        let mut v = [_mm256_setzero_si256(); 8];
        if B::BITS == 8 {
            for (c, v) in v.iter_mut().enumerate() {
                *v = run(b, Self::QUANTS + 4 * c);
            }
            return v;
        }
        // Run c holds quant bytes 4c..4c + 4 of each row: weights 4c.. in the low
        // nibbles, 16 + 4c.. in the high ones; their fifth bits are bits 4c.. and
        // 16 + 4c.. of the row's `qh` word.
        let low = _mm256_set1_epi8(0x0F);
        let qh = if B::BITS == 5 { run(b, Self::HEADER) } else { _mm256_setzero_si256() };
        for c in 0..4 {
            let q = run(b, Self::QUANTS + 4 * c);
            v[c] = _mm256_and_si256(q, low);
            v[c + 4] = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            if B::BITS == 5 {
                let (byte, half) = ((c / 2) as i8, (c % 2) as u32);
                v[c] = _mm256_or_si256(v[c], fifth_bits(qh, byte, half));
                v[c + 4] = _mm256_or_si256(v[c + 4], fifth_bits(qh, 2 + byte, half));
            }
        }
        v
    }

    #[inline(always)]
    unsafe fn finish<L: Lanes>(rows: &BlocksRows<L>, sumi: L::I, xb: TokenBlocks, acc: L::F) -> L::F {
        rows.finish(sumi, xb, acc, B::BITS != 8)
    }
}

/// Sub-block `j`'s weights of a Q4_K / Q5_K super-block from 32 quant bytes `q`: the low
/// (even `j`) or high nibbles, and for Q5_K bit `j` of the matching fifth-bit bytes `qh`
/// as bit 4 (16-bit shifts: each byte's own bit lands in its bit 0).
#[inline(always)]
unsafe fn k_quant_weights<const FIVE_BITS: bool>(q: __m256i, qh: __m256i, j: usize) -> __m256i {
    let nibbles =
        _mm256_and_si256(if j.is_multiple_of(2) { q } else { _mm256_srli_epi16(q, 4) }, _mm256_set1_epi8(0x0F));
    if !FIVE_BITS {
        return nibbles;
    }
    let bit = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32)), _mm256_set1_epi8(1));
    _mm256_or_si256(nibbles, _mm256_slli_epi16(bit, 4))
}

/// Quarter `k` of a Q6_K half's six-bit weights from 32 `ql` and 32 `qh` bytes: the low
/// (`k < 2`) or high nibbles of `ql`, with bits `2k..2k + 2` of `qh` on top.
#[inline(always)]
unsafe fn q6_k_weights(ql: __m256i, qh: __m256i, k: usize) -> __m256i {
    let nibble = _mm256_and_si256(if k < 2 { ql } else { _mm256_srli_epi16(ql, 4) }, _mm256_set1_epi8(0x0F));
    let top = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)), _mm256_set1_epi8(3));
    _mm256_or_si256(nibble, _mm256_slli_epi16(top, 4))
}

/// `N` registers of eight rows' lanes from group `lo` and group `hi`, joined lane-wise.
/// (A loop, not `array::from_fn`: a closure does not inherit the caller's target
/// features, and its intrinsics were left as calls.)
#[inline(always)]
unsafe fn join_all<L: Lanes, const N: usize>(lo: &[__m256i; N], hi: &[__m256i; N]) -> [L::I; N] {
    let mut out = [L::zero_i(); N];
    for k in 0..N {
        out[k] = L::join_i(lo[k], hi[k]);
    }
    out
}

/// Q4_K / Q5_K: the rows' scales `d` and `dmin`, and per sub-block `j` their 6-bit scales
/// and minimums, each in both words of its row's lane.
struct KQuantRows<L: Lanes> {
    d: L::F,
    dmin: L::F,
    scales: [L::I; 8],
    mins: [L::I; 8],
}

impl<L: Lanes> KQuantRows<L> {
    /// `acc` plus one token's products over a super-block, from its scaled integer sums.
    #[inline(always)]
    unsafe fn finish(&self, sumi: L::I, xb: TokenBlocks, acc: L::F) -> L::F {
        // Σ_j m_j · (block j's sum): (m_j, m_j) times its two half sums.
        let min_sum = weighted_half_sums::<L>(&self.mins, xb);
        let xd = L::splat_f32(xb.at(0).d);
        let acc = L::fmadd(L::mul(self.d, xd), L::to_f32(sumi), acc);
        L::fnmadd(L::mul(self.dmin, xd), L::to_f32(min_sum), acc)
    }
}

/// Q6_K: the rows' scale `d` and their sixteen signed scales, each in both words of its
/// row's lane.
struct Q6KRows<L: Lanes> {
    d: L::F,
    scales: [L::I; 16],
    /// Scales `2p` and `2p + 1` of each row as the two words of its lane: what block
    /// `p`'s half sums are multiplied by.
    scale_pairs: [L::I; 8],
}

impl<L: Lanes> Q6KRows<L> {
    /// `acc` plus one token's products over a super-block, from its scaled integer sums.
    #[inline(always)]
    unsafe fn finish(&self, sumi: L::I, xb: TokenBlocks, acc: L::F) -> L::F {
        // Weights are stored plus 32: subtract 32 · Σ_s scale_s · (half-block s's sum).
        let offset = weighted_half_sums::<L>(&self.scale_pairs, xb);
        let net = L::sub_i32(sumi, L::shl::<5>(offset));
        L::fmadd(L::mul(self.d, L::splat_f32(xb.at(0).d)), L::to_f32(net), acc)
    }
}

/// Q4_K / Q5_K interleaved at load ([`interleave_rows`](crate::kernels::interleave_rows)):
/// per super-block column the eight rows' `d`, then their `dmin`, then three runs that
/// hold each row's twelve packed 6-bit scales and minimums four bytes a lane, then (Q5_K)
/// eight runs of fifth bits and thirty-two runs of nibbles, four bytes of every row each.
/// The scales unpack in vectors, eight rows at once.
struct KQuant<const FIVE_BITS: bool>;

impl<const FIVE_BITS: bool> RowsFormat for KQuant<FIVE_BITS> {
    const BYTES: usize = if FIVE_BITS { 176 } else { 144 };
    const PIECES: usize = 8;
    const SUMMED: usize = if FIVE_BITS { 4 } else { 8 };
    const DECODE_PREFETCH: usize = 2 * PREFETCH_AHEAD;
    type Rows<L: Lanes> = KQuantRows<L>;

    #[inline(always)]
    unsafe fn rows<L: Lanes>(lo: &[u8], hi: &[u8]) -> KQuantRows<L> {
        let (scales, mins) = Self::scales_and_mins(lo);
        let (scales_hi, mins_hi) = Self::scales_and_mins(hi);
        KQuantRows {
            d: L::join_f(field(lo, 0), field(hi, 0)),
            dmin: L::join_f(field(lo, 2), field(hi, 2)),
            scales: join_all::<L, 8>(&scales, &scales_hi),
            mins: join_all::<L, 8>(&mins, &mins_hi),
        }
    }

    #[inline(always)]
    unsafe fn piece(b: &[u8], j: usize) -> [__m256i; 8] {
        // Sub-block j's 32 quant bytes are the runs from `qs`; the fifth bits of the
        // weights in run `qs + 4g` are the run `16 + 4g`'s.
        let qs = if FIVE_BITS { 48 } else { 16 } + 32 * (j / 2);
        let mut v = [_mm256_setzero_si256(); 8];
        for (g, v) in v.iter_mut().enumerate() {
            let q = run(b, qs + 4 * g);
            *v = k_quant_weights::<FIVE_BITS>(q, if FIVE_BITS { run(b, 16 + 4 * g) } else { q }, j);
        }
        v
    }

    #[inline(always)]
    unsafe fn scale<L: Lanes>(rows: &KQuantRows<L>, j: usize, _: usize) -> L::I {
        rows.scales[j]
    }

    #[inline(always)]
    unsafe fn finish<L: Lanes>(rows: &KQuantRows<L>, sumi: L::I, xb: TokenBlocks, acc: L::F) -> L::F {
        rows.finish(sumi, xb, acc)
    }
}

impl<const FIVE_BITS: bool> KQuant<FIVE_BITS> {
    /// One group's eight 6-bit scales and minimums per row, each in both words of the
    /// row's lane, unpacked in vectors.
    #[inline(always)]
    unsafe fn scales_and_mins(b: &[u8]) -> ([__m256i; 8], [__m256i; 8]) {
        // Packed bytes 0..4 (a), 4..8 (b) and 8..12 (c) of each row, a lane each. Sub-block
        // j < 4: scale a_j & 63, minimum b_j & 63; j = 4 + k: scale (c_k & 15) with
        // a_k's top two bits above, minimum (c_k >> 4) with b_k's top two bits above.
        let (a, bb, c) = (run(b, 4), run(b, 8), run(b, 12));
        let (mut scales, mut mins) = ([_mm256_setzero_si256(); 8], [_mm256_setzero_si256(); 8]);
        // (A function, not a closure: a closure does not inherit the caller's target
        // features, and its intrinsics were left as calls.)
        #[inline(always)]
        unsafe fn word(v: __m256i, mask: i16) -> __m256i {
            _mm256_and_si256(v, _mm256_set1_epi16(mask))
        }
        for k in 0..4 {
            let (ak, bk, ck) = (
                _mm256_srli_epi16(lane_bytes_high(a, k, k), 8),
                _mm256_srli_epi16(lane_bytes_high(bb, k, k), 8),
                _mm256_srli_epi16(lane_bytes_high(c, k, k), 8),
            );
            scales[k] = word(ak, 63);
            mins[k] = word(bk, 63);
            scales[4 + k] = _mm256_or_si256(word(ck, 15), word(_mm256_srli_epi16(ak, 2), 0x30));
            mins[4 + k] = _mm256_or_si256(_mm256_srli_epi16(ck, 4), word(_mm256_srli_epi16(bk, 2), 0x30));
        }
        (scales, mins)
    }
}

/// Q6_K interleaved at load: per super-block column, runs of `ql`, `qh` and the signed
/// scales, four bytes of every row each, then the eight rows' `d`.
struct Q6K;

impl RowsFormat for Q6K {
    const BYTES: usize = 210;
    const PIECES: usize = 8;
    const SUMMED: usize = 2;
    const SCALE_GROUPS: usize = 4;
    const DECODE_PREFETCH: usize = 2 * PREFETCH_AHEAD;
    type Rows<L: Lanes> = Q6KRows<L>;

    #[inline(always)]
    unsafe fn rows<L: Lanes>(lo: &[u8], hi: &[u8]) -> Q6KRows<L> {
        let (scales, scale_pairs) = Self::scales(lo);
        let (scales_hi, scale_pairs_hi) = Self::scales(hi);
        Q6KRows {
            d: L::join_f(field(lo, 208), field(hi, 208)),
            scales: join_all::<L, 16>(&scales, &scales_hi),
            scale_pairs: join_all::<L, 8>(&scale_pairs, &scale_pairs_hi),
        }
    }

    #[inline(always)]
    unsafe fn piece(b: &[u8], j: usize) -> [__m256i; 8] {
        // Piece j is quarter k of half h: the low (k < 2) or high nibbles of 32 `ql`
        // bytes, with bits 2k..2k + 2 of the half's `qh` bytes on top.
        let (h, k) = (j / 4, j % 4);
        let mut v = [_mm256_setzero_si256(); 8];
        for (g, v) in v.iter_mut().enumerate() {
            *v = q6_k_weights(run(b, 64 * h + 32 * (k % 2) + 4 * g), run(b, 128 + 32 * h + 4 * g), k);
        }
        v
    }

    #[inline(always)]
    unsafe fn scale<L: Lanes>(rows: &Q6KRows<L>, j: usize, g: usize) -> L::I {
        rows.scales[2 * j + g / 4]
    }

    #[inline(always)]
    unsafe fn finish<L: Lanes>(rows: &Q6KRows<L>, sumi: L::I, xb: TokenBlocks, acc: L::F) -> L::F {
        rows.finish(sumi, xb, acc)
    }
}

impl Q6K {
    /// One group's sixteen signed scales per row, each in both words of the row's lane,
    /// and scales `2p`, `2p + 1` as the lane's two words.
    #[inline(always)]
    unsafe fn scales(b: &[u8]) -> ([__m256i; 16], [__m256i; 8]) {
        let (mut scales, mut scale_pairs) = ([_mm256_setzero_si256(); 16], [_mm256_setzero_si256(); 8]);
        for q in 0..4 {
            // Scales 4q..4q + 4 of each row, a lane each; `vpshufb` then `vpsraw` gives
            // any two of them sign-extended as the lane's two words.
            let s = run(b, 192 + 4 * q);
            for i in 0..4 {
                scales[4 * q + i] = _mm256_srai_epi16(lane_bytes_high(s, i, i), 8);
            }
            for i in 0..2 {
                scale_pairs[2 * q + i] = _mm256_srai_epi16(lane_bytes_high(s, 2 * i, 2 * i + 1), 8);
            }
        }
        (scales, scale_pairs)
    }
}

/// Accumulators a fused piece sum splits its eight groups over.
const FUSED_CHAINS: usize = 4;

/// Whether piece weights reach [`piece_sums`] offset by 128 (signed formats on fused
/// multiply-adds): `vpdpbusd` takes unsigned weights and widens to i32 at once, so
/// `Σ (w + 128)·x − 128·Σx` is exact, where the sign trick of the i16 path would cost
/// two sign operations a group (AVX-512 has no `vpsignb` at all).
const fn biased<M: MulSum, F: RowsFormat>() -> bool {
    M::FUSED && F::SIGNED
}

/// One token's integer sums over one piece: row `r`'s in lane `r`.
#[inline(always)]
unsafe fn piece_sums<M: MulSum, F: RowsFormat, L: Lanes>(
    weights: &[L::I; 8],
    xb: &Q8Block,
    rows: &F::Rows<L>,
    j: usize,
) -> L::I {
    let x = xb.qs.as_ptr() as *const i32;
    let mut sums = L::zero_i();
    if M::FUSED {
        // Each run of groups that shares one scale in independent chains: one
        // accumulator through all eight groups is eight multiply-add latencies per token.
        // The sums are integers, so neither their order nor scaling a run's i32 sum
        // (rather than its i16 pair sums) changes any bits.
        for g0 in (0..8).step_by(F::SCALE_GROUPS) {
            let mut chains = [L::zero_i(); FUSED_CHAINS];
            for (g, &w) in weights.iter().enumerate().skip(g0).take(F::SCALE_GROUPS) {
                let chain = &mut chains[g % FUSED_CHAINS];
                *chain = L::mul_add::<M>(*chain, w, L::splat_i32(x.add(g)));
            }
            let mut run = chains[0];
            for &chain in &chains[1..F::SCALE_GROUPS.min(FUSED_CHAINS)] {
                run = L::add_i32(run, chain);
            }
            if !F::UNIT_SCALE {
                // The scale sits in both words of its lane; the high one, sign-extended.
                run = L::mullo_i32(run, L::high_word(F::scale(rows, j, g0)));
            }
            sums = L::add_i32(sums, run);
        }
        if biased::<M, F>() {
            // 128 · (the block's two half sums).
            let halves = L::splat_i32(xb.sum16.as_ptr() as *const i32);
            sums = L::sub_i32(sums, L::madd_i16(halves, L::splat_i16(128)));
        }
        return sums;
    }
    for g0 in (0..8).step_by(F::SUMMED) {
        let mut pairs = L::zero_i();
        for (g, &w) in weights.iter().enumerate().skip(g0).take(F::SUMMED) {
            let xg = L::splat_i32(x.add(g));
            let product = if F::SIGNED {
                // |w| · (x with w's sign): the unsigned-by-signed multiply the hardware has.
                L::maddubs(L::sign_i8(w, w), L::sign_i8(xg, w))
            } else {
                L::maddubs(w, xg)
            };
            pairs = L::add_i16(pairs, product);
        }
        sums = L::add_scaled::<M>(sums, pairs, F::scale(rows, j, g0));
    }
    sums
}

/// `L::ROWS` weight rows of `rb` bytes (one or two groups of eight interleaved at load)
/// and `n ≤ MAX` tokens whose activations are interleaved
/// ([`interleave`](super::interleave)): `out[t·L::ROWS + r]`. Each register holds four
/// weights of each row, so one broadcast of four activation bytes serves every row, and
/// a piece's products end as one i32 per row with no horizontal sums. A piece's weights
/// are unpacked into registers once and stay there while every token passes by, reading
/// that piece's blocks in one sequential run; the per-chunk work (scales, conversions,
/// minimums or offsets) is shared by the rows.
///
/// Each token's sums are formed in the same order whatever `n` is (same bits alone and
/// in a tile), and a row's lane the same whatever `L` is.
#[inline(always)]
unsafe fn rows_kernel<M: MulSum, F: RowsFormat, L: Lanes, const MAX: usize>(
    w: &[u8],
    rb: usize,
    x: &[Q8Block],
    n: usize,
    out: &mut [f32],
) {
    let mut acc = [L::zero_f(); MAX];
    let mut sumi = [L::zero_i(); MAX];
    // The second group of eight rows, for sixteen-row lanes.
    let hi_group = if L::ROWS == 2 * ROWS { ROWS * rb } else { 0 };
    let chunk_bytes = ROWS * F::BYTES;
    for i in 0..rb / F::BYTES {
        let lo = &w[i * chunk_bytes..(i + 1) * chunk_bytes];
        let hi = &w[hi_group + i * chunk_bytes..hi_group + (i + 1) * chunk_bytes];
        let rows = F::rows::<L>(lo, hi);
        let chunk = &x[i * F::PIECES * n..(i + 1) * F::PIECES * n];
        for j in 0..F::PIECES {
            if F::DECODE_PREFETCH > 0 && n == 1 {
                // Decode: one token cannot hide the memory latency.
                let span = chunk_bytes / F::PIECES;
                let ahead = w.as_ptr().wrapping_add(i * chunk_bytes + j * span + F::DECODE_PREFETCH);
                for line in (0..span).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
                    if hi_group > 0 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(hi_group + line) as *const i8);
                    }
                }
            }
            let mut weights = join_all::<L, 8>(&F::piece(lo, j), &F::piece(hi, j));
            if biased::<M, F>() {
                for w in &mut weights {
                    *w = L::xor(*w, L::splat_i32(&(0x8080_8080u32 as i32)));
                }
            }
            let last = j + 1 == F::PIECES;
            for (t, xb) in chunk[j * n..(j + 1) * n].iter().enumerate() {
                let sums = piece_sums::<M, F, L>(&weights, xb, &rows, j);
                let total = if j == 0 { sums } else { L::add_i32(sumi[t], sums) };
                if last {
                    acc[t] = F::finish::<L>(&rows, total, TokenBlocks { x: &chunk[t..], step: n }, acc[t]);
                } else {
                    sumi[t] = total;
                }
            }
        }
    }
    for (t, acc) in acc[..n].iter().enumerate() {
        L::store(out[t * L::ROWS..(t + 1) * L::ROWS].as_mut_ptr(), *acc);
    }
}

/// Tokens of the several-row kernels' middle instance: a batched decode step's
/// sequences.
const FEW: usize = 8;

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

/// The single-token, `TILE`-token and eight-row (interleaved) kernels of one 32-value
/// block format.
macro_rules! block32_kernels {
    ($mulsum:ty, $features:literal, $lanes:ty, $format:ty, $one:ident, $tile:ident, $rows:ident) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $one(w: &[u8], x: &[Q8Block]) -> f32 {
            block32::<$mulsum, $format>(w, x)
        }
        #[target_feature(enable = $features)]
        pub unsafe fn $tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
            block32_multi::<$mulsum, $format, TILE>(w, tile(x, stride))
        }
        rows_kernel!($mulsum, $features, $lanes, $rows, Blocks<$format>);
    };
}

/// The several-row kernel of one format, for any number of tokens.
macro_rules! rows_kernel {
    ($mulsum:ty, $features:literal, $lanes:ty, $name:ident, $format:ty) => {
        /// `w.len() / rb` rows: the module's [`ROWS`](self::ROWS) or one group of eight.
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: &[u8], rb: usize, x: &[Q8Block], n: usize, out: &mut [f32]) {
            // One token (decode) and a few (the server's batched decode) on instances of
            // their own: the 64-token one zeroes 8 KiB of accumulators per call, more than
            // sixteen 576-wide rows of weights.
            match (w.len() / rb == <$lanes>::ROWS, n) {
                (true, 1) => rows_kernel::<$mulsum, $format, $lanes, 1>(w, rb, x, n, out),
                (true, 2..=FEW) => rows_kernel::<$mulsum, $format, $lanes, FEW>(w, rb, x, n, out),
                (true, _) => rows_kernel::<$mulsum, $format, $lanes, ROWS_TILE>(w, rb, x, n, out),
                (false, 1) => rows_kernel::<$mulsum, $format, Y8, 1>(w, rb, x, n, out),
                (false, 2..=FEW) => rows_kernel::<$mulsum, $format, Y8, FEW>(w, rb, x, n, out),
                (false, _) => rows_kernel::<$mulsum, $format, Y8, ROWS_TILE>(w, rb, x, n, out),
            }
        }
    };
}

/// Instantiates every kernel for one [`MulSum`] under the target features it needs:
/// single-token (`q4_0`, …), `TILE`-token (`q4_0_tile`, …) and several-row forms over
/// rows interleaved at load (`q4_0_interleaved`, …) in registers of [`Lanes`] `$lanes`.
macro_rules! kernels {
    ($module:ident, $mulsum:ty, $lanes:ty, $features:literal) => {
        pub mod $module {
            use super::*;
            /// Rows per call of the several-row kernels (`q4_0_interleaved`, …) at most.
            pub const ROWS: usize = <$lanes>::ROWS;
            block32_kernels!($mulsum, $features, $lanes, Q40, q4_0, q4_0_tile, q4_0_interleaved);
            block32_kernels!($mulsum, $features, $lanes, Q41, q4_1, q4_1_tile, q4_1_interleaved);
            block32_kernels!($mulsum, $features, $lanes, Q50, q5_0, q5_0_tile, q5_0_interleaved);
            block32_kernels!($mulsum, $features, $lanes, Q51, q5_1, q5_1_tile, q5_1_interleaved);
            #[target_feature(enable = $features)]
            pub unsafe fn q8_0(w: &[u8], x: &[Q8Block]) -> f32 {
                q8_0_::<$mulsum>(w, x)
            }

            shared_scale_kernels!($mulsum, $features);

            #[target_feature(enable = $features)]
            pub unsafe fn q2_k_shared(w: &[u8], x: &[Q8Block]) -> f32 {
                q2_k_shared_scale::<$mulsum, 1>(w, [x])[0]
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q2_k_shared_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
                q2_k_shared_scale::<$mulsum, TILE>(w, tile(x, stride))
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q3_k_shared(w: &[u8], x: &[Q8Block]) -> f32 {
                q3_k_shared_scale::<$mulsum, 1>(w, [x])[0]
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q3_k_shared_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
                q3_k_shared_scale::<$mulsum, TILE>(w, tile(x, stride))
            }

            rows_kernel!($mulsum, $features, $lanes, q8_0_interleaved, Blocks<Q80>);
            rows_kernel!($mulsum, $features, $lanes, q4_k_interleaved, KQuant<false>);
            rows_kernel!($mulsum, $features, $lanes, q5_k_interleaved, KQuant<true>);
            rows_kernel!($mulsum, $features, $lanes, q6_k_interleaved, Q6K);

            #[target_feature(enable = $features)]
            pub unsafe fn q8_0_tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
                q8_0_multi::<$mulsum, TILE>(w, tile(x, stride))
            }
        }
    };
}

kernels!(plain, Avx2, Y8, "avx2,fma,f16c");
kernels!(vnni, Vnni, Z16, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");

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
