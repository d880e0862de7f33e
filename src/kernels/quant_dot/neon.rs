//! NEON integer dot products (aarch64), for every weight type with an 8-bit-activation
//! kernel, in the three forms x86 has: one row by one token (decode over rows read in
//! place), one row by eight tokens, and eight rows re-laid at load by any number of
//! tokens (the path the runtime takes; see the several-row section below).
//!
//! Weights are unpacked to signed bytes (Q4_0's −8, Q5_0's −16 and Q6_K's −32 applied
//! there; Q4_1/Q5_1/Q4_K/Q5_K keep their unsigned values and add their minimums through
//! the activation sums), multiplied with the 8-bit activations, and each block's integer
//! sum is scaled once in f32. The K-quants read activations with one scale per
//! super-block ([`quantize_row_shared`](crate::kernels::q8::quantize_row_shared)), as on
//! x86: each sub-block's integer sum is multiplied by its scale while still an integer.
//!
//! Two ways to multiply: widening multiplies with pairwise accumulation (every ARMv8
//! core), or `sdot` where the CPU has the dot-product extension (detected at run time).
//! `sdot` is written as inline assembly: its intrinsic is not stable Rust yet.
//!
//! `benches/arm-mca.sh` predicts these kernels' cycles beside llama.cpp's; the choices
//! below cite its figures (cycles per 256 weights).

use std::arch::aarch64::*;

use super::super::q8::Q8Block;
use super::scalar::k_scales_mins;
use super::{ROWS_TILE, TILE};

/// The f16 at byte `i` of `b` as f32, by `fcvt` (base Armv8). The `half` crate checks the
/// CPU's features at run time on every conversion, a call per block in these loops.
#[inline(always)]
unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    let out: f32;
    std::arch::asm!("fcvt {out:s}, {h:h}", out = lateout(vreg) out, h = in(vreg) bits, options(pure, nomem, nostack));
    out
}

/// How 16 signed byte products are summed into four i32 lanes.
pub trait Dot {
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
    /// Four rows' four weights each (row `r`'s in lane `r` of `w`) times the same four
    /// activation bytes (lane `LANE` of `x`): each row's four products added to its lane.
    unsafe fn dot_lane<const LANE: i32>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t;
}

/// Widening multiplies (i8 × i8 → i16) and pairwise adds into i32.
pub struct Widen;
impl Dot for Widen {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let low = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let high = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, low), high)
    }
    #[inline(always)]
    unsafe fn dot_lane<const LANE: i32>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        // The four bytes in every lane; two products per i16 (at most 2 · 128 · 127, no
        // overflow), then each lane's pair of i16 into its i32.
        let xg = vreinterpretq_s8_s32(vdupq_laneq_s32::<LANE>(vreinterpretq_s32_s8(x)));
        let pairs = vpaddq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(xg)), vmull_high_s8(w, xg));
        vpadalq_s16(acc, pairs)
    }
}

/// `sdot` by element: `acc += w · x[lane]` (the lane's four bytes against each row's four).
macro_rules! sdot_lane {
    ($acc:ident, $w:ident, $x:ident, $($lane:literal)|*) => {
        match LANE {
            $($lane => std::arch::asm!(
                concat!("sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[", $lane, "]"),
                acc = inout(vreg) $acc,
                w = in(vreg) $w,
                x = in(vreg) $x,
                options(pure, nomem, nostack)
            ),)*
            _ => unreachable!("a 128-bit register has four 32-bit lanes"),
        }
    };
}

/// `acc` after an accumulating 8-bit instruction (`sdot`, `smmla`) on byte vectors `a` and
/// `b`, as inline assembly: their intrinsics are not stable Rust yet.
macro_rules! accumulate {
    ($instruction:literal, $acc:expr, $a:expr, $b:expr) => {{
        let mut acc: int32x4_t = $acc;
        std::arch::asm!(
            concat!($instruction, " {acc:v}.4s, {a:v}.16b, {b:v}.16b"),
            acc = inout(vreg) acc,
            a = in(vreg) $a,
            b = in(vreg) $b,
            options(pure, nomem, nostack)
        );
        acc
    }};
}

/// The dot-product extension's `sdot`: four products into each i32 lane at once.
pub struct Sdot;
impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        accumulate!("sdot", acc, a, b)
    }
    #[inline(always)]
    unsafe fn dot_lane<const LANE: i32>(mut acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
        sdot_lane!(acc, w, x, 0 | 1 | 2 | 3);
        acc
    }
}

/// 16 bytes of nibbles → (elements 0..16, elements 16..32) as unsigned values.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    let v = vld1q_u8(p);
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// Q5's fifth bits (bit `j` of `qh` for element `j`) as 0x10 bytes over the two halves.
#[inline(always)]
unsafe fn fifth_bits(qh: u32) -> (uint8x16_t, uint8x16_t) {
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let b = qh.to_le_bytes();
    let bits = vld1q_u8(BITS.as_ptr());
    let sixteen = vdupq_n_u8(0x10);
    let lo = vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(b[0]), vdup_n_u8(b[1])), bits), sixteen);
    let hi = vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(b[2]), vdup_n_u8(b[3])), bits), sixteen);
    (lo, hi)
}

/// Unsigned bytes minus `offset`, as signed bytes (values fit: at most 31 − 0).
#[inline(always)]
unsafe fn signed(v: uint8x16_t, offset: u8) -> int8x16_t {
    vreinterpretq_s8_u8(vsubq_u8(v, vdupq_n_u8(offset)))
}

/// The 32-value block formats for `T` tokens: `unpack` gives a block's weights as signed
/// bytes (both halves), `min` the factor of the activation sum (0 for offset formats,
/// whose offset is already in the weights). Each block is unpacked once per call.
#[inline(always)]
unsafe fn block32<D: Dot, const T: usize>(
    w: &[u8],
    xs: [&[Q8Block]; T],
    ts: usize,
    unpack: impl Fn(&[u8]) -> (int8x16_t, int8x16_t),
    min: impl Fn(&[u8]) -> f32,
) -> [f32; T] {
    let mut acc = [vdupq_n_f32(0.0); T];
    let mut mins = [0f32; T];
    for (i, b) in w.chunks_exact(ts).enumerate() {
        let (lo, hi) = unpack(b);
        let (d, m) = (f16_at(b, 0), min(b));
        for t in 0..T {
            let xb = &xs[t][i];
            let s = D::dot(vdupq_n_s32(0), lo, vld1q_s8(xb.qs.as_ptr()));
            let s = D::dot(s, hi, vld1q_s8(xb.qs.as_ptr().add(16)));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), d * xb.d);
            mins[t] += m * xb.ds;
        }
    }
    std::array::from_fn(|t| vaddvq_f32(acc[t]) + mins[t])
}

/// `TILE` consecutive tokens' activation rows, `stride` blocks apart.
#[inline(always)]
fn tile(x: &[Q8Block], stride: usize) -> [&[Q8Block]; TILE] {
    std::array::from_fn(|t| &x[t * stride..(t + 1) * stride])
}

/// Sub-block `j`'s (0..8) 32 weights of a Q4_K / Q5_K super-block as signed bytes (both
/// halves): nibbles of the packed chunk `v` (low for even `j`, high for odd), with Q5_K's
/// fifth bit (bit `j` of each `qh` byte) above them.
#[inline(always)]
unsafe fn k_sub_block<const FIVE_BITS: bool>(
    v: (uint8x16_t, uint8x16_t),
    qh: (uint8x16_t, uint8x16_t),
    j: usize,
) -> (int8x16_t, int8x16_t) {
    let (mut q0, mut q1) = if j.is_multiple_of(2) {
        (vandq_u8(v.0, vdupq_n_u8(0x0F)), vandq_u8(v.1, vdupq_n_u8(0x0F)))
    } else {
        (vshrq_n_u8::<4>(v.0), vshrq_n_u8::<4>(v.1))
    };
    if FIVE_BITS {
        let (bit, sixteen) = (vdupq_n_u8(1 << j), vdupq_n_u8(0x10));
        q0 = vorrq_u8(q0, vandq_u8(vtstq_u8(qh.0, bit), sixteen));
        q1 = vorrq_u8(q1, vandq_u8(vtstq_u8(qh.1, bit), sixteen));
    }
    (vreinterpretq_s8_u8(q0), vreinterpretq_s8_u8(q1))
}

/// Q4_K / Q5_K for `T` tokens over shared-scale activations: each sub-block's byte
/// products are summed, multiplied by its 6-bit scale and added over the super-block in
/// integers (at most 8 · 63 · 32 · 31 · 127 < 2^31), then converted and scaled once; the
/// minimums meet the activation sums in integers too. Each unpacked sub-block serves
/// every token, and a token's sums run in the same order whatever `T` is (same bits).
#[inline(always)]
unsafe fn k_quant_shared<D: Dot, const FIVE_BITS: bool, const T: usize>(w: &[u8], xs: [&[Q8Block]; T]) -> [f32; T] {
    let ts = if FIVE_BITS { 176 } else { 144 };
    let mut acc = [vdupq_n_f32(0.0); T];
    let mut mins = [0f32; T];
    for (i, b) in w.chunks_exact(ts).enumerate() {
        let xb: [&[Q8Block]; T] = std::array::from_fn(|t| &xs[t][8 * i..8 * i + 8]);
        let (scales, min_bytes) = k_scales_mins(b[4..16].try_into().unwrap());
        let qs = b.as_ptr().add(if FIVE_BITS { 48 } else { 16 });
        let qh = if FIVE_BITS {
            (vld1q_u8(b.as_ptr().add(16)), vld1q_u8(b.as_ptr().add(32)))
        } else {
            (vdupq_n_u8(0), vdupq_n_u8(0))
        };
        let mut sumi = [vdupq_n_s32(0); T];
        for c in 0..4 {
            let v = (vld1q_u8(qs.add(32 * c)), vld1q_u8(qs.add(32 * c + 16)));
            for j in [2 * c, 2 * c + 1] {
                let (q0, q1) = k_sub_block::<FIVE_BITS>(v, qh, j);
                let scale = (scales >> (8 * j)) as u8 as i32;
                for t in 0..T {
                    let x = xb[t][j].qs.as_ptr();
                    let s = D::dot(D::dot(vdupq_n_s32(0), q0, vld1q_s8(x)), q1, vld1q_s8(x.add(16)));
                    sumi[t] = vmlaq_n_s32(sumi[t], s, scale);
                }
            }
        }
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        for t in 0..T {
            let min_sum: i32 = (0..8).map(|j| (min_bytes >> (8 * j)) as u8 as i32 * xb[t][j].sum()).sum();
            let xd = xb[t][0].d;
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(sumi[t]), d * xd);
            mins[t] += dmin * xd * min_sum as f32;
        }
    }
    std::array::from_fn(|t| vaddvq_f32(acc[t]) - mins[t])
}

/// The four quarters (sub-blocks `4h..4h + 4`) of half `h` of a Q6_K super-block, bytes
/// `16·part..16·part + 16` of each, as signed weights: four bits of `ql` (low nibbles of
/// its first or second 32 bytes for quarters 0 and 1, high nibbles for 2 and 3) and two
/// of `qh`, minus the stored offset 32 — `sdot` multiplies signed bytes, so the offset
/// leaves the weights here instead of meeting the activation sums later.
#[inline(always)]
unsafe fn q6_quarters(b: &[u8], h: usize, part: usize) -> [int8x16_t; 4] {
    let p = b.as_ptr().add(16 * part);
    let (ql0, ql1, qh) = (vld1q_u8(p.add(64 * h)), vld1q_u8(p.add(64 * h + 32)), vld1q_u8(p.add(128 + 32 * h)));
    let low = vdupq_n_u8(0x0F);
    [
        q6_signed(vandq_u8(ql0, low), vshlq_n_u8::<4>(vandq_u8(qh, vdupq_n_u8(0x03)))),
        q6_signed(vandq_u8(ql1, low), vshlq_n_u8::<2>(vandq_u8(qh, vdupq_n_u8(0x0C)))),
        q6_signed(vshrq_n_u8::<4>(ql0), vandq_u8(qh, vdupq_n_u8(0x30))),
        q6_signed(vshrq_n_u8::<4>(ql1), vshrq_n_u8::<2>(vandq_u8(qh, vdupq_n_u8(0xC0)))),
    ]
}

/// A Q6_K weight from its four low and two high bits, minus the stored offset 32.
#[inline(always)]
unsafe fn q6_signed(low: uint8x16_t, high: uint8x16_t) -> int8x16_t {
    vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, high)), vdupq_n_s8(32))
}

/// Q6_K for `T` tokens over shared-scale activations: each 16-value half-block's sum
/// times its signed 8-bit scale, added over the super-block in integers (at most
/// 16 · 128 · 16 · 32 · 127 < 2^31), then converted and scaled once. Same bits for every
/// `T`, as [`k_quant_shared`].
#[inline(always)]
unsafe fn q6_k_shared_scale<D: Dot, const T: usize>(w: &[u8], xs: [&[Q8Block]; T]) -> [f32; T] {
    let mut acc = [vdupq_n_f32(0.0); T];
    for (i, b) in w.chunks_exact(210).enumerate() {
        let xb: [&[Q8Block]; T] = std::array::from_fn(|t| &xs[t][8 * i..8 * i + 8]);
        let mut sumi = [vdupq_n_s32(0); T];
        for h in 0..2 {
            for part in 0..2 {
                for (k, q) in q6_quarters(b, h, part).into_iter().enumerate() {
                    let j = 4 * h + k;
                    let scale = b[192 + 2 * j + part] as i8 as i32;
                    for t in 0..T {
                        let s = D::dot(vdupq_n_s32(0), q, vld1q_s8(xb[t][j].qs.as_ptr().add(16 * part)));
                        sumi[t] = vmlaq_n_s32(sumi[t], s, scale);
                    }
                }
            }
        }
        let d = f16_at(b, 208);
        for t in 0..T {
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(sumi[t]), d * xb[t][0].d);
        }
    }
    std::array::from_fn(|t| vaddvq_f32(acc[t]))
}

// Several rows per pass, over rows interleaved at load
// ([`interleave_rows`](crate::kernels::interleave_rows)): each 32-byte run of a column
// holds four bytes of each of eight rows, so a register holds four weights of four rows
// (one row per 32-bit lane) and one four-byte lane of activations serves them all
// (`sdot` by element). A piece's weights stay in sixteen registers while every token
// passes by, and the per-chunk float work is shared by the rows.

/// Rows per call: one interleaved group.
pub const ROWS: usize = crate::kernels::interleave_rows::ROWS;

/// Eight rows' values as two registers: rows 0–3 and rows 4–7.
type Halves<T> = [T; 2];

/// `[f(0), f(1)]`. A macro, not `array::map`: the closure calls `map` makes were left as
/// calls inside the kernels' loops.
macro_rules! halves {
    (|$h:ident| $e:expr) => {
        [
            {
                let $h = 0;
                $e
            },
            {
                let $h = 1;
                $e
            },
        ]
    };
}

/// Block bytes `k..k + 4` of rows `4h..4h + 4` of an interleaved column, a row per lane.
#[inline(always)]
///
/// The caller passes a whole column (`8 · BYTES` bytes) and `k` below `BYTES − 4`: the
/// formats' offsets are constants of their layout, so the load is unchecked (a bounds
/// check per load was a tenth of a K-quant kernel's instructions).
unsafe fn run(b: &[u8], k: usize, h: usize) -> uint8x16_t {
    debug_assert!(8 * k + 16 * h + 16 <= b.len());
    vld1q_u8(b.as_ptr().add(8 * k + 16 * h))
}

/// Four f16 values widened to f32 (`fcvtl`, base Armv8: the intrinsic's f16 vector type
/// is not stable Rust).
#[inline(always)]
unsafe fn widen_f16(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    std::arch::asm!("fcvtl {out:v}.4s, {h:v}.4h", out = lateout(vreg) out, h = in(vreg) h, options(pure, nomem, nostack));
    out
}

/// The eight rows' f16 field at block byte `k` of an interleaved column, as f32.
#[inline(always)]
/// As [`run`], unchecked.
unsafe fn field(b: &[u8], k: usize) -> Halves<float32x4_t> {
    debug_assert!(8 * k + 16 <= b.len());
    let bits = vld1q_u16(b.as_ptr().add(8 * k) as *const u16);
    [widen_f16(vget_low_u16(bits)), widen_f16(vget_high_u16(bits))]
}

/// One token's activation blocks over one chunk, as the interleaved tile holds them:
/// token `t`'s block of piece `p` at `chunk[p · tokens + t]`.
#[derive(Clone, Copy)]
struct TokenBlocks<'a> {
    chunk: &'a [Q8Block],
    t: usize,
    tokens: usize,
}

impl<'a> TokenBlocks<'a> {
    #[inline(always)]
    /// Unchecked: `p` is a piece of the chunk and `t` one of its tokens, whose blocks the
    /// kernel sliced out whole (a check per token and piece was a tenth of a prefill
    /// kernel's instructions).
    unsafe fn at(self, p: usize) -> &'a Q8Block {
        debug_assert!(self.t < self.tokens && p * self.tokens + self.t < self.chunk.len());
        self.chunk.get_unchecked(p * self.tokens + self.t)
    }
}

/// A weight format as [`rows_kernel`] sees it: eight interleaved rows are a run of chunks
/// (one 32-value block or one K-quant super-block of each row), a chunk a run of
/// 32-value pieces that each meet one activation block.
trait RowsFormat {
    /// Bytes per chunk of one row.
    const BYTES: usize;
    /// 32-value pieces per chunk.
    const PIECES: usize;
    /// Consecutive four-byte groups of a piece that share one [`Self::scale`].
    const SCALE_GROUPS: usize = 8;
    /// Whether the format has no integer scales (applied in floats, per block).
    const UNIT_SCALE: bool = false;
    /// Whether a token's two accumulator registers are kept apart (see [`TokenAcc`]).
    const ACC_APART: bool = false;
    /// What the format needs of the rows' chunk besides the weights.
    type Rows;
    unsafe fn rows(b: &[u8]) -> Self::Rows;
    /// Piece `j` of chunk `b` as signed weights: register `2g + h` holds weights
    /// `4g..4g + 4` of the piece for rows `4h..4h + 4`, a row per lane.
    unsafe fn piece(b: &[u8], j: usize) -> [int8x16_t; 16];
    /// The integer factors of piece `j`'s groups 0..4 and 4..8 (the same twice where one
    /// scale covers the piece), a row's per lane; unused where [`Self::UNIT_SCALE`].
    #[inline(always)]
    unsafe fn piece_scales(_rows: &Self::Rows, _j: usize) -> [Halves<int32x4_t>; 2] {
        [[vdupq_n_s32(1); 2]; 2]
    }
    /// `acc` plus one token's products over the chunk, from its integer sums.
    unsafe fn finish<D: Dot>(
        rows: &Self::Rows,
        sumi: Halves<int32x4_t>,
        xb: TokenBlocks,
        acc: Halves<float32x4_t>,
    ) -> Halves<float32x4_t>;
}

/// A 32-value block format of `TS` bytes and `BITS`-bit weights, stored plus `OFFSET`
/// (Q4_0's 8, Q5_0's 16), which the unpacking takes off: signed weights need no offset
/// term. Its header is `d` and, in formats with a minimum, `m`.
struct Blocks<const TS: usize, const BITS: usize, const OFFSET: u8>;

impl<const TS: usize, const BITS: usize, const OFFSET: u8> Blocks<TS, BITS, OFFSET> {
    /// Q4_0 (four bits, offset 8) is stored with its nibbles pre-signed
    /// ([`flipped`](crate::kernels::interleave_rows::flipped)): a nibble moved to the
    /// top of its byte is then 16·(q − 8) as a signed byte, one instruction for sixteen
    /// weights, and the sums' conversion to floats takes the 16 back out exactly (`scvtf`
    /// with four fraction bits; decode, cycles per 256 weights: Apple M1 20.2 → 15.5,
    /// Cortex-A76 34.3 → 29.8).
    const PRESIGNED: bool = BITS == 4 && OFFSET == 8;
    const HEADER: usize = TS - 4 * BITS;
    /// Where the quant bytes start: after the header and a five-bit format's `qh` word.
    const QUANTS: usize = if BITS == 5 { Self::HEADER + 4 } else { Self::HEADER };
}

/// Byte `k` of each 32-bit lane of `v` copied into all four bytes of the lane (`tbl`).
#[inline(always)]
unsafe fn lane_byte(v: uint8x16_t, k: usize) -> uint8x16_t {
    const FIRST: [u8; 16] = [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12];
    vqtbl1q_u8(v, vaddq_u8(vld1q_u8(FIRST.as_ptr()), vdupq_n_u8(k as u8)))
}

/// A five-bit block's weights from one run of nibbles (`OFFSET` off): byte `i` of each lane
/// gets bit `4·upper + i` of the lane's byte in `qh_byte` (one [`lane_byte`]) as its 0x10.
/// One `tst` and two more instructions a run (a lane shift, mask and multiply to spread
/// the bits cost three times that on Neoverse N1's model, whose `mul` is half-rate).
#[inline(always)]
unsafe fn with_fifth_bits<const OFFSET: u8>(nibbles: uint8x16_t, qh_byte: uint8x16_t, upper: bool) -> int8x16_t {
    const BIT: [[u8; 16]; 2] = [
        [1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8],
        [16, 32, 64, 128, 16, 32, 64, 128, 16, 32, 64, 128, 16, 32, 64, 128],
    ];
    let set = vtstq_u8(qh_byte, vld1q_u8(BIT[upper as usize].as_ptr()));
    if OFFSET == 16 {
        // q + 16·bit − 16: take 16 off where the bit is clear.
        vreinterpretq_s8_u8(vsubq_u8(nibbles, vbicq_u8(vdupq_n_u8(0x10), set)))
    } else {
        signed(vorrq_u8(nibbles, vandq_u8(set, vdupq_n_u8(0x10))), OFFSET)
    }
}

/// The rows' `d` and, for formats with one, their minimum `m`.
struct BlocksRows {
    d: Halves<float32x4_t>,
    m: Halves<float32x4_t>,
}

impl<const TS: usize, const BITS: usize, const OFFSET: u8> RowsFormat for Blocks<TS, BITS, OFFSET> {
    const BYTES: usize = TS;
    const PIECES: usize = 1;
    const UNIT_SCALE: bool = true;
    const ACC_APART: bool = true;
    type Rows = BlocksRows;

    #[inline(always)]
    unsafe fn rows(b: &[u8]) -> BlocksRows {
        let m = if Self::HEADER == 4 { field(b, 2) } else { [vdupq_n_f32(0.0); 2] };
        BlocksRows { d: field(b, 0), m }
    }

    #[inline(always)]
    unsafe fn piece(b: &[u8], _: usize) -> [int8x16_t; 16] {
        let mut v = [vdupq_n_s8(0); 16];
        for h in 0..2 {
            if BITS == 8 {
                for g in 0..8 {
                    v[2 * g + h] = vreinterpretq_s8_u8(run(b, Self::QUANTS + 4 * g, h));
                }
                continue;
            }
            // Run c holds quant bytes 4c..4c + 4 of each row: weights 4c.. in the low
            // nibbles, 16 + 4c.. in the high ones; their fifth bits are bits 4c.. and
            // 16 + 4c.. of the row's `qh` word.
            let qh = run(b, Self::HEADER, h);
            for c in 0..4 {
                let q = run(b, Self::QUANTS + 4 * c, h);
                if Self::PRESIGNED {
                    v[2 * c + h] = vreinterpretq_s8_u8(vshlq_n_u8::<4>(q));
                    v[2 * (c + 4) + h] = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0xF0)));
                    continue;
                }
                let (lo, hi) = (vandq_u8(q, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(q));
                if BITS == 5 {
                    let upper = c % 2 == 1;
                    v[2 * c + h] = with_fifth_bits::<OFFSET>(lo, lane_byte(qh, c / 2), upper);
                    v[2 * (c + 4) + h] = with_fifth_bits::<OFFSET>(hi, lane_byte(qh, 2 + c / 2), upper);
                } else {
                    v[2 * c + h] = signed(lo, OFFSET);
                    v[2 * (c + 4) + h] = signed(hi, OFFSET);
                }
            }
        }
        v
    }

    #[inline(always)]
    unsafe fn finish<D: Dot>(
        rows: &BlocksRows,
        sumi: Halves<int32x4_t>,
        xb: TokenBlocks,
        acc: Halves<float32x4_t>,
    ) -> Halves<float32x4_t> {
        let xb = xb.at(0);
        let mut out = acc;
        for h in 0..2 {
            // Pre-signed sums are 16 times the true ones: the fixed-point conversion takes
            // the 16 out exactly, as part of the conversion.
            let sum = if Self::PRESIGNED { vcvtq_n_f32_s32::<4>(sumi[h]) } else { vcvtq_f32_s32(sumi[h]) };
            out[h] = vfmaq_f32(out[h], sum, vmulq_n_f32(rows.d[h], xb.d));
            if Self::HEADER == 4 {
                out[h] = vfmaq_n_f32(out[h], rows.m[h], xb.ds);
            }
        }
        out
    }
}

/// Q4_K / Q5_K rows: `d`, `dmin`, and the 6-bit scales and minimums unpacked to bytes:
/// `scales[i][h]` holds sub-blocks `4i..4i + 4` of rows `4h..4h + 4`, a row per 32-bit
/// lane, a sub-block per byte; `mins` likewise, as signed bytes (they are below 64) that
/// `sdot` multiplies by the activations' block sums.
struct KQuantRows {
    d: Halves<float32x4_t>,
    dmin: Halves<float32x4_t>,
    scales: [Halves<uint32x4_t>; 2],
    mins: [Halves<int8x16_t>; 2],
}

impl KQuantRows {
    /// From the twelve packed bytes of each row (bytes 0..4, 4..8 and 8..12 as three runs):
    /// sub-block k < 4's scale and minimum are the low six bits of byte k of the first and
    /// second word; sub-block 4 + k's are the low and high nibble of byte k of the third,
    /// with the top two bits of byte k of the first or second word above. Byte-wise, six
    /// instructions a half for all sixteen values (per-sub-block unpacking in 32-bit lanes
    /// was a fifth of a Q4_K decode).
    #[inline(always)]
    unsafe fn unpack(b: &[u8]) -> ([Halves<uint32x4_t>; 2], [Halves<int8x16_t>; 2]) {
        let low6 = vdupq_n_u8(63);
        let mut scales = [[vdupq_n_u32(0); 2]; 2];
        let mut mins = [[vdupq_n_s8(0); 2]; 2];
        for h in 0..2 {
            let (first, second, third) = (run(b, 4, h), run(b, 8, h), run(b, 12, h));
            scales[0][h] = vreinterpretq_u32_u8(vandq_u8(first, low6));
            scales[1][h] = vreinterpretq_u32_u8(vsliq_n_u8::<4>(third, vshrq_n_u8::<6>(first)));
            mins[0][h] = vreinterpretq_s8_u8(vandq_u8(second, low6));
            mins[1][h] = vreinterpretq_s8_u8(vsriq_n_u8::<4>(vshrq_n_u8::<2>(second), third));
        }
        (scales, mins)
    }

    /// Sub-block `j`'s scale of each row, a row per lane.
    #[inline(always)]
    unsafe fn scale(&self, j: usize) -> Halves<int32x4_t> {
        let (bytes, k) = (self.scales[j / 4], j % 4);
        // Byte k of each lane into the lane's low byte, zeros above (indices past 15 read 0).
        const PICK: [u8; 16] = [0, 128, 128, 128, 4, 128, 128, 128, 8, 128, 128, 128, 12, 128, 128, 128];
        let pick = vaddq_u8(vld1q_u8(PICK.as_ptr()), vdupq_n_u8(k as u8));
        halves!(|h| vreinterpretq_s32_u8(vqtbl1q_u8(vreinterpretq_u8_u32(bytes[h]), pick)))
    }

    /// Σ_j m_j · (token's block j sum) of each row, in integers, by `sdot`: the eight block
    /// sums (below 4096 in magnitude) split as 128 · high + low with both parts bytes.
    #[inline(always)]
    unsafe fn min_sums<D: Dot>(&self, xb: TokenBlocks) -> Halves<int32x4_t> {
        let sums = block_sums(xb);
        let parts = vuzp1q_s8(
            vreinterpretq_s8_s16(vandq_s16(sums, vdupq_n_s16(127))),
            vreinterpretq_s8_s16(vshrq_n_s16::<7>(sums)),
        );
        let (low, high) = (self.mins[0], self.mins[1]);
        halves!(|h| {
            let above = D::dot_lane::<3>(D::dot_lane::<2>(vdupq_n_s32(0), low[h], parts), high[h], parts);
            D::dot_lane::<1>(D::dot_lane::<0>(vshlq_n_s32::<7>(above), low[h], parts), high[h], parts)
        })
    }
}

/// A token's eight block sums over a super-block, as 16-bit lanes.
#[inline(always)]
unsafe fn block_sums(xb: TokenBlocks) -> int16x8_t {
    // Each block's two 16-bit half sums as one 32-bit lane, then added pairwise.
    macro_rules! halves_of {
        ($($j:literal => $lane:literal),*) => {{
            let mut v = vdupq_n_u32(0);
            $(v = vld1q_lane_u32::<$lane>(xb.at($j).sum16.as_ptr() as *const u32, v);)*
            vreinterpretq_s16_u32(v)
        }};
    }
    let first = halves_of!(0 => 0, 1 => 1, 2 => 2, 3 => 3);
    let second = halves_of!(4 => 0, 5 => 1, 6 => 2, 7 => 3);
    vpaddq_s16(first, second)
}

/// Q4_K / Q5_K interleaved at load: per super-block column the rows' `d`, `dmin`, three
/// runs of packed scales and minimums, (Q5_K) eight runs of fifth bits, then the nibbles.
struct KQuant<const FIVE_BITS: bool>;

impl<const FIVE_BITS: bool> RowsFormat for KQuant<FIVE_BITS> {
    const BYTES: usize = if FIVE_BITS { 176 } else { 144 };
    const PIECES: usize = 8;
    type Rows = KQuantRows;

    #[inline(always)]
    unsafe fn rows(b: &[u8]) -> KQuantRows {
        let (scales, mins) = KQuantRows::unpack(b);
        KQuantRows { d: field(b, 0), dmin: field(b, 2), scales, mins }
    }

    #[inline(always)]
    unsafe fn piece(b: &[u8], j: usize) -> [int8x16_t; 16] {
        // Sub-block j's 32 quant bytes are the runs from `qs`; the fifth bits of the
        // weights in run `qs + 4g` are bit j of run `16 + 4g`.
        let qs = if FIVE_BITS { 48 } else { 16 } + 32 * (j / 2);
        let mut v = [vdupq_n_s8(0); 16];
        for g in 0..8 {
            for h in 0..2 {
                let q = run(b, qs + 4 * g, h);
                let mut w = if j.is_multiple_of(2) { vandq_u8(q, vdupq_n_u8(0x0F)) } else { vshrq_n_u8::<4>(q) };
                if FIVE_BITS {
                    let set = vtstq_u8(run(b, 16 + 4 * g, h), vdupq_n_u8(1 << j));
                    w = vorrq_u8(w, vandq_u8(set, vdupq_n_u8(0x10)));
                }
                v[2 * g + h] = vreinterpretq_s8_u8(w);
            }
        }
        v
    }

    #[inline(always)]
    unsafe fn piece_scales(rows: &KQuantRows, j: usize) -> [Halves<int32x4_t>; 2] {
        let s = rows.scale(j);
        [s, s]
    }

    #[inline(always)]
    unsafe fn finish<D: Dot>(
        rows: &KQuantRows,
        sumi: Halves<int32x4_t>,
        xb: TokenBlocks,
        acc: Halves<float32x4_t>,
    ) -> Halves<float32x4_t> {
        let xd = xb.at(0).d;
        let min_sums = rows.min_sums::<D>(xb);
        halves!(|h| {
            let out = vfmaq_f32(acc[h], vcvtq_f32_s32(sumi[h]), vmulq_n_f32(rows.d[h], xd));
            vfmsq_f32(out, vcvtq_f32_s32(min_sums[h]), vmulq_n_f32(rows.dmin[h], xd))
        })
    }
}

/// Q6_K rows: `d` and the sixteen signed scales as four runs (scales 4q..4q + 4 of each
/// row, a lane each), unpacked per piece.
struct Q6KRows {
    d: Halves<float32x4_t>,
    scales: [Halves<int32x4_t>; 4],
}

/// Q6_K interleaved at load: runs of `ql`, `qh` and the signed scales, then the rows' `d`.
struct Q6K;

impl RowsFormat for Q6K {
    const BYTES: usize = 210;
    const PIECES: usize = 8;
    const SCALE_GROUPS: usize = 4;
    type Rows = Q6KRows;

    #[inline(always)]
    unsafe fn rows(b: &[u8]) -> Q6KRows {
        let scales = [
            halves!(|h| vreinterpretq_s32_u8(run(b, 192, h))),
            halves!(|h| vreinterpretq_s32_u8(run(b, 196, h))),
            halves!(|h| vreinterpretq_s32_u8(run(b, 200, h))),
            halves!(|h| vreinterpretq_s32_u8(run(b, 204, h))),
        ];
        Q6KRows { d: field(b, 208), scales }
    }

    /// Piece j is quarter k of half `half`: the low (k < 2) or high nibbles of 32 `ql`
    /// bytes, bits 2k..2k + 2 of the half's `qh` bytes on top. The layout stores `qh` with
    /// each pair's upper bit flipped ([`flipped`](crate::kernels::interleave_rows::flipped)),
    /// so the six bits placed at the top of a byte are 4·(q − 32) as a signed byte: three
    /// instructions a register instead of five or six with the subtraction (decode, cycles
    /// per 256 weights: Neoverse N1 64.9 → 61.0, Apple M1 35.5 → 32.3).
    #[inline(always)]
    unsafe fn piece(b: &[u8], j: usize) -> [int8x16_t; 16] {
        let (half, k) = (j / 4, j % 4);
        let mut v = [vdupq_n_s8(0); 16];
        for g in 0..8 {
            for h in 0..2 {
                let ql = run(b, 64 * half + 32 * (k % 2) + 4 * g, h);
                let qh = run(b, 128 + 32 * half + 4 * g, h);
                let nibble = if k < 2 { vshlq_n_u8::<2>(ql) } else { vshrq_n_u8::<2>(ql) };
                let low = vandq_u8(nibble, vdupq_n_u8(0x3C));
                let top = match k {
                    0 => qh,
                    1 => vshrq_n_u8::<2>(qh),
                    2 => vshrq_n_u8::<4>(qh),
                    _ => vshrq_n_u8::<6>(qh),
                };
                v[2 * g + h] = vreinterpretq_s8_u8(vsliq_n_u8::<6>(low, top));
            }
        }
        v
    }

    #[inline(always)]
    unsafe fn piece_scales(rows: &Q6KRows, j: usize) -> [Halves<int32x4_t>; 2] {
        // Scales 2j (groups 0..4) and 2j + 1: bytes of run j / 2, sign-extended.
        let run = rows.scales[j / 2];
        halves!(|i| {
            let up = vdupq_n_s32(24 - 8 * ((2 * j + i) % 4) as i32);
            halves!(|h| vshrq_n_s32::<24>(vshlq_s32(run[h], up)))
        })
    }

    #[inline(always)]
    unsafe fn finish<D: Dot>(
        rows: &Q6KRows,
        sumi: Halves<int32x4_t>,
        xb: TokenBlocks,
        acc: Halves<float32x4_t>,
    ) -> Halves<float32x4_t> {
        // The sums are four times the true ones (see `piece`): the conversion takes the 4
        // out exactly.
        let xd = xb.at(0).d;
        halves!(|h| vfmaq_f32(acc[h], vcvtq_n_f32_s32::<2>(sumi[h]), vmulq_n_f32(rows.d[h], xd)))
    }
}

/// One token's integer sums over one piece: row `r`'s in lane `r % 4` of half `r / 4`.
#[inline(always)]
unsafe fn piece_sums<D: Dot, F: RowsFormat>(
    w: &[int8x16_t; 16],
    xb: &Q8Block,
    scales: &[Halves<int32x4_t>; 2],
) -> Halves<int32x4_t> {
    let x = [vld1q_s8(xb.qs.as_ptr()), vld1q_s8(xb.qs.as_ptr().add(16))];
    let mut sums = [vdupq_n_s32(0); 2];
    for g0 in (0..8).step_by(F::SCALE_GROUPS) {
        for h in 0..2 {
            // One chain per half: the caller's two tokens per step give an in-order core
            // independent work (llvm-mca, Cortex-A55, Q4_0 prefill: two chains per half
            // and one token per step 52.6 cycles per 256 weights, this 41.0).
            let mut s = vdupq_n_s32(0);
            for g in g0..g0 + F::SCALE_GROUPS {
                let (wg, xg) = (w[2 * g + h], x[g / 4]);
                s = match g % 4 {
                    0 => D::dot_lane::<0>(s, wg, xg),
                    1 => D::dot_lane::<1>(s, wg, xg),
                    2 => D::dot_lane::<2>(s, wg, xg),
                    _ => D::dot_lane::<3>(s, wg, xg),
                };
            }
            sums[h] = if F::UNIT_SCALE { s } else { vmlaq_s32(sums[h], s, scales[g0 / 4][h]) };
        }
    }
    sums
}

/// A piece's weights as `smmla` takes them: register `4k + p` holds bytes `8k..8k + 8` of
/// rows `2p` and `2p + 1` (one 2 × 8 matrix), from the `sdot` layout's four-byte groups
/// `2k` and `2k + 1` zipped lane by lane. Once per piece; every token pair reuses it.
#[inline(always)]
unsafe fn mmla_weights(w: &[int8x16_t; 16]) -> [int8x16_t; 16] {
    let mut m = [vdupq_n_s8(0); 16];
    for k in 0..4 {
        for h in 0..2 {
            let (a, b) = (vreinterpretq_s32_s8(w[4 * k + h]), vreinterpretq_s32_s8(w[4 * k + 2 + h]));
            m[4 * k + 2 * h] = vreinterpretq_s8_s32(vzip1q_s32(a, b));
            m[4 * k + 2 * h + 1] = vreinterpretq_s8_s32(vzip2q_s32(a, b));
        }
    }
    m
}

/// `smmla`: `acc` (a 2 × 2 i32 matrix) plus the products of `a`'s two rows of eight bytes
/// with `b`'s — four dot products of eight, twice `sdot`'s work per instruction.
#[inline(always)]
unsafe fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    accumulate!("smmla", acc, a, b)
}

/// Two tokens' integer sums over one piece by `smmla` (weights from [`mmla_weights`]): each
/// instruction gives two rows × both tokens, eight bytes deep; the products are then
/// unzipped into each token's rows-per-lane halves and scaled as [`piece_sums`] does. The
/// integers are the same, so each token's result is the same bits as alone.
#[inline(always)]
unsafe fn pair_sums<F: RowsFormat>(
    w: &[int8x16_t; 16],
    x0: &Q8Block,
    x1: &Q8Block,
    scales: &[Halves<int32x4_t>; 2],
) -> [Halves<int32x4_t>; 2] {
    // Bytes 8k..8k + 8 of both tokens (token 0 low, token 1 high).
    let xs = |x: &Q8Block, i: usize| vreinterpretq_s64_s8(vld1q_s8(x.qs.as_ptr().add(16 * i)));
    let both = |i: usize| {
        let (a, b) = (xs(x0, i), xs(x1, i));
        [vreinterpretq_s8_s64(vzip1q_s64(a, b)), vreinterpretq_s8_s64(vzip2q_s64(a, b))]
    };
    let [first, second] = [both(0), both(1)];
    let x = [first[0], first[1], second[0], second[1]];
    let mut sums = [[vdupq_n_s32(0); 2]; 2];
    let depth = F::SCALE_GROUPS / 2;
    for k0 in (0..4).step_by(depth) {
        let mut m = [vdupq_n_s32(0); 4];
        for k in k0..k0 + depth {
            for (p, m) in m.iter_mut().enumerate() {
                *m = smmla(*m, w[4 * k + p], x[k]);
            }
        }
        // Lanes of m[p]: (row 2p, token 0), (2p, 1), (2p + 1, 0), (2p + 1, 1).
        for h in 0..2 {
            let (a, b) = (m[2 * h], m[2 * h + 1]);
            let per_token = [vuzp1q_s32(a, b), vuzp2q_s32(a, b)];
            for (t, s) in per_token.into_iter().enumerate() {
                sums[t][h] = if F::UNIT_SCALE { s } else { vmlaq_s32(sums[t][h], s, scales[k0 / 2][h]) };
            }
        }
    }
    sums
}

/// Piece `J` of a chunk against every token (`sumi.len()` of them, whose blocks of the
/// chunk are `chunk`): the piece is unpacked once and stays in registers.
#[inline(always)]
unsafe fn piece_pass<D: Dot, F: RowsFormat, const J: usize, const MMLA: bool>(
    b: &[u8],
    rows: &F::Rows,
    chunk: &[Q8Block],
    sumi: &mut [Halves<int32x4_t>],
    acc: &mut [TokenAcc],
) {
    let tokens = sumi.len();
    debug_assert!(acc.len() == tokens && chunk.len() == F::PIECES * tokens);
    let weights = F::piece(b, J);
    let scales = F::piece_scales(rows, J);
    let at = |t| TokenBlocks { chunk, t, tokens };
    // Two tokens per step: their sums and float steps are independent, which an in-order
    // core (Cortex-A55) needs to fill the latencies of one token's chain.
    let (sumi_pairs, sumi_last) = sumi.as_chunks_mut::<2>();
    let (acc_pairs, acc_last) = acc.as_chunks_mut::<2>();
    // With `smmla`, the pairs read the piece re-laid for it (a compile-time choice).
    let pair_weights = if MMLA { mmla_weights(&weights) } else { weights };
    for (i, ([sumi0, sumi1], [acc0, acc1])) in sumi_pairs.iter_mut().zip(acc_pairs).enumerate() {
        let (x0, x1) = (at(2 * i), at(2 * i + 1));
        let [s0, s1] = if MMLA {
            pair_sums::<F>(&pair_weights, x0.at(J), x1.at(J), &scales)
        } else {
            [piece_sums::<D, F>(&pair_weights, x0.at(J), &scales), piece_sums::<D, F>(&pair_weights, x1.at(J), &scales)]
        };
        token_step::<D, F>(rows, J, s0, x0, sumi0, acc0);
        token_step::<D, F>(rows, J, s1, x1, sumi1, acc1);
    }
    if let ([sumi0], [acc0]) = (sumi_last, acc_last) {
        let x0 = at(tokens - 1);
        let s0 = piece_sums::<D, F>(&weights, x0.at(J), &scales);
        token_step::<D, F>(rows, J, s0, x0, sumi0, acc0);
    }
}

/// One token's float accumulators for the eight rows: rows 0–3 in register 0, rows 4–7
/// in register 1 or, where `F::ACC_APART`, register 2. Apart, the halves are loaded and
/// stored as single registers, each store as soon as its own half is done; side by side
/// the compiler pairs them into one `ldp`/`stp` (prefill, cycles per 256 weights, Q4_0 /
/// Q8_0, paired → apart: "A76" (A57 model) 16.4 / 16.4 → 15.4 / 15.4, Apple M1 8.4 / 8.3
/// → 8.2 / 8.1, A55 37.1 / 37.2 → 33.1 / 33.2, Neoverse N1 unchanged; but Q4_K, whose
/// accumulators are touched once a chunk of eight pieces, 18.1 → 19.5 and M1 9.4 → 10.4).
/// The halves in two arrays instead let it pair two tokens' halves (N1 13.3 → 13.8).
#[derive(Clone, Copy)]
struct TokenAcc([float32x4_t; 4]);

impl TokenAcc {
    #[inline(always)]
    fn halves<F: RowsFormat>(self) -> Halves<float32x4_t> {
        [self.0[0], self.0[if F::ACC_APART { 2 } else { 1 }]]
    }

    #[inline(always)]
    fn set<F: RowsFormat>(&mut self, [low, high]: Halves<float32x4_t>) {
        self.0[0] = low;
        self.0[if F::ACC_APART { 2 } else { 1 }] = high;
    }
}

/// One token's piece `j` sums into its running integer sums, or on a chunk's last piece
/// through the format's float step into its accumulators.
#[inline(always)]
unsafe fn token_step<D: Dot, F: RowsFormat>(
    rows: &F::Rows,
    j: usize,
    sums: Halves<int32x4_t>,
    xb: TokenBlocks,
    sumi: &mut Halves<int32x4_t>,
    acc: &mut TokenAcc,
) {
    let total = if j == 0 { sums } else { [vaddq_s32(sumi[0], sums[0]), vaddq_s32(sumi[1], sums[1])] };
    if j + 1 == F::PIECES {
        acc.set::<F>(F::finish::<D>(rows, total, xb, acc.halves::<F>()));
    } else {
        *sumi = total;
    }
}

/// Eight interleaved weight rows of `rb` bytes and `n ≤ MAX` tokens whose activations are
/// interleaved ([`interleave`](super::interleave)): `out[t·8 + r]`. A piece's weights are
/// unpacked once and stay in registers while every token passes by, reading that piece's
/// blocks as one sequential run. Each token's sums are formed in the same order whatever
/// `n` is (same bits alone and in a tile).
#[inline(always)]
unsafe fn rows_kernel<D: Dot, F: RowsFormat, const MAX: usize, const MMLA: bool>(
    w: &[u8],
    rb: usize,
    x: &[Q8Block],
    n: usize,
    out: &mut [f32],
) {
    let mut acc = [TokenAcc([vdupq_n_f32(0.0); 4]); MAX];
    let mut sumi = [[vdupq_n_s32(0); 2]; MAX];
    debug_assert_eq!(w.len(), ROWS * rb);
    for (b, chunk) in w.chunks_exact(ROWS * F::BYTES).zip(x.chunks_exact(F::PIECES * n)) {
        let rows = F::rows(b);
        let (sumi, acc) = (&mut sumi[..n], &mut acc[..n]);
        // Each piece with its index a constant: a K-quant's nibble half, scale bytes and
        // shifts are then chosen at compile time instead of by branches in the loop.
        piece_pass::<D, F, 0, MMLA>(b, &rows, chunk, sumi, acc);
        if F::PIECES > 1 {
            piece_pass::<D, F, 1, MMLA>(b, &rows, chunk, sumi, acc);
            piece_pass::<D, F, 2, MMLA>(b, &rows, chunk, sumi, acc);
            piece_pass::<D, F, 3, MMLA>(b, &rows, chunk, sumi, acc);
            piece_pass::<D, F, 4, MMLA>(b, &rows, chunk, sumi, acc);
            piece_pass::<D, F, 5, MMLA>(b, &rows, chunk, sumi, acc);
            piece_pass::<D, F, 6, MMLA>(b, &rows, chunk, sumi, acc);
            piece_pass::<D, F, 7, MMLA>(b, &rows, chunk, sumi, acc);
        }
    }
    for (t, acc) in acc[..n].iter().enumerate() {
        let [low, high] = acc.halves::<F>();
        vst1q_f32(out[t * ROWS..].as_mut_ptr(), low);
        vst1q_f32(out[t * ROWS + 4..].as_mut_ptr(), high);
    }
}

/// Tokens of the several-row kernels' middle instance: a batched decode step's
/// sequences.
const FEW: usize = 8;

/// The several-row kernel of one format, for any number of tokens.
macro_rules! rows_kernel {
    ($dot:ty, $features:literal, $mmla:literal, $name:ident, $format:ty) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $name(w: &[u8], rb: usize, x: &[Q8Block], n: usize, out: &mut [f32]) {
            // One token (decode) and a few (the server's batched decode) on instances of
            // their own: the 64-token one zeroes 6 KiB of accumulators per call.
            match n {
                1 => rows_kernel::<$dot, $format, 1, false>(w, rb, x, n, out),
                2..=FEW => rows_kernel::<$dot, $format, FEW, $mmla>(w, rb, x, n, out),
                _ => rows_kernel::<$dot, $format, ROWS_TILE, $mmla>(w, rb, x, n, out),
            }
        }
    };
}

/// Single-token and `TILE`-token kernels of one format.
macro_rules! block32_kernels {
    ($dot:ty, $features:literal, $one:ident, $tile:ident, $ts:literal, $unpack:expr, $min:expr) => {
        #[target_feature(enable = $features)]
        pub unsafe fn $one(w: &[u8], x: &[Q8Block]) -> f32 {
            block32::<$dot, 1>(w, [x], $ts, $unpack, $min)[0]
        }
        #[target_feature(enable = $features)]
        pub unsafe fn $tile(w: &[u8], x: &[Q8Block], stride: usize) -> [f32; TILE] {
            block32::<$dot, TILE>(w, tile(x, stride), $ts, $unpack, $min)
        }
    };
}

/// Every format's kernels for one [`Dot`] under the target features it needs.
macro_rules! kernels {
    ($module:ident, $dot:ty, $features:literal, $mmla:literal) => {
        pub mod $module {
            use super::*;
            block32_kernels!(
                $dot,
                $features,
                q4_0,
                q4_0_tile,
                18,
                |b| {
                    let (lo, hi) = nibbles(b.as_ptr().add(2));
                    (signed(lo, 8), signed(hi, 8))
                },
                |_| 0.0
            );
            block32_kernels!(
                $dot,
                $features,
                q4_1,
                q4_1_tile,
                20,
                |b| {
                    let (lo, hi) = nibbles(b.as_ptr().add(4));
                    (signed(lo, 0), signed(hi, 0))
                },
                |b| f16_at(b, 2)
            );
            block32_kernels!(
                $dot,
                $features,
                q5_0,
                q5_0_tile,
                22,
                |b| {
                    let (lo, hi) = nibbles(b.as_ptr().add(6));
                    let (h_lo, h_hi) = fifth_bits(u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
                    (signed(vorrq_u8(lo, h_lo), 16), signed(vorrq_u8(hi, h_hi), 16))
                },
                |_| 0.0
            );
            block32_kernels!(
                $dot,
                $features,
                q5_1,
                q5_1_tile,
                24,
                |b| {
                    let (lo, hi) = nibbles(b.as_ptr().add(8));
                    let (h_lo, h_hi) = fifth_bits(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
                    (signed(vorrq_u8(lo, h_lo), 0), signed(vorrq_u8(hi, h_hi), 0))
                },
                |b| f16_at(b, 2)
            );
            block32_kernels!(
                $dot,
                $features,
                q8_0,
                q8_0_tile,
                34,
                |b| { (vld1q_s8(b.as_ptr().add(2) as *const i8), vld1q_s8(b.as_ptr().add(18) as *const i8)) },
                |_| 0.0
            );

            pub use super::ROWS;
            rows_kernel!($dot, $features, $mmla, q4_0_interleaved, Blocks<18, 4, 8>);
            rows_kernel!($dot, $features, $mmla, q4_1_interleaved, Blocks<20, 4, 0>);
            rows_kernel!($dot, $features, $mmla, q5_0_interleaved, Blocks<22, 5, 16>);
            rows_kernel!($dot, $features, $mmla, q5_1_interleaved, Blocks<24, 5, 0>);
            rows_kernel!($dot, $features, $mmla, q8_0_interleaved, Blocks<34, 8, 0>);
            rows_kernel!($dot, $features, $mmla, q4_k_interleaved, KQuant<false>);
            rows_kernel!($dot, $features, $mmla, q5_k_interleaved, KQuant<true>);
            rows_kernel!($dot, $features, $mmla, q6_k_interleaved, Q6K);

            // The K-quants, over shared-scale activations.
            shared_scale_kernels!($dot, $features);
        }
    };
}

kernels!(widen, Widen, "neon", false);
kernels!(sdot, Sdot, "neon,dotprod", false);
// Token pairs by `smmla` in the several-row kernels; everything else as `sdot`.
kernels!(mmla, Sdot, "neon,dotprod,i8mm", true);
