//! Weight rows re-laid at load, eight at a time, for kernels that multiply eight rows per
//! pass (AVX2: one row per 32-bit lane).
//!
//! Read straight from the file, eight rows' blocks must be regrouped into columns in
//! registers (an 8 × 8 transpose per block), which costs more than decode's single token
//! can repay: one row at a time, Q4_0 decode spent ~27 instructions per block and ran at
//! ~55 % of this machine's memory bandwidth. Interleaved once at load, the same rows load
//! as ready columns, the per-block float work is shared by eight rows, and the rows of a
//! task stream through memory as one run. llama.cpp repacks Q4_0 for its AVX2 path the
//! same way, for the same reason; the cost is a copy of those weights in anonymous memory
//! instead of pages of the map (the map's pages are handed back as each matrix is done).
//!
//! The layout serves the formats whose kernels read it: the 32-value block formats Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q4_K, Q5_K, Q6_K (Q2_K and Q3_K are laid out
//! the same way, their trailing scales as fields, for kernels to come). Per group of eight rows and
//! per block column (the group's blocks `i`, one per row), byte `k` of row `r`'s block
//! moves to `8k + 2r` if it belongs to a two-byte field (a scale or minimum: the leading
//! fields, and the trailing scales of Q2_K, Q3_K and Q6_K) and to `8k + 4r` otherwise (quants, a five-bit
//! block's high-bit word and a K-quant's packed sub-block scales, four bytes at a time):
//! each field of the eight rows lies together, and each 32-byte run holds four bytes of
//! every row — the columns the kernels multiply. A group occupies exactly the bytes its
//! eight rows did.

use std::ops::Range;

use crate::gguf::GgmlDType;
use crate::threads::for_each_mut;

/// Rows interleaved together.
pub const ROWS: usize = 8;

/// Bytes of the largest block the layout serves (Q6_K's).
pub const MAX_BLOCK: usize = 210;

/// Calls `$f::<HEAD, TS, TAIL>($args)` for `$dtype`'s block shape: `TS` bytes, of which
/// the first `HEAD` and the last `TAIL` are two-byte fields. Constants, so the per-block
/// moves unroll: the load re-lays hundreds of megabytes this way. `None` for other
/// formats.
macro_rules! by_shape {
    ($dtype:expr, $f:ident($($args:expr),*)) => {
        match $dtype {
            GgmlDType::Q4_0 => Some($f::<2, 18, 0>($($args),*)),
            GgmlDType::Q4_1 => Some($f::<4, 20, 0>($($args),*)),
            GgmlDType::Q5_0 => Some($f::<2, 22, 0>($($args),*)),
            GgmlDType::Q5_1 => Some($f::<4, 24, 0>($($args),*)),
            GgmlDType::Q8_0 => Some($f::<2, 34, 0>($($args),*)),
            GgmlDType::Q2K => Some($f::<0, 84, 4>($($args),*)),
            GgmlDType::Q3K => Some($f::<0, 110, 2>($($args),*)),
            GgmlDType::Q4K => Some($f::<4, 144, 0>($($args),*)),
            GgmlDType::Q5K => Some($f::<4, 176, 0>($($args),*)),
            GgmlDType::Q6K => Some($f::<0, 210, 2>($($args),*)),
            _ => None,
        }
    };
}

/// `move_field(column offset, block offset, N)` for each `N`-byte field of row `r`'s
/// block: where it goes in the block's interleaved column.
#[inline(always)]
fn for_each_field<const HEAD: usize, const TS: usize, const TAIL: usize>(
    r: usize,
    mut move_field: impl FnMut(usize, usize, usize),
) {
    for f in (0..HEAD).chain(TS - TAIL..TS).step_by(2) {
        move_field(f * ROWS + 2 * r, f, 2);
    }
    for k in (HEAD..TS - TAIL).step_by(4) {
        move_field(k * ROWS + 4 * r, k, 4);
    }
}

/// `from[..len]` into `to[..len]` for the two field lengths, each a fixed-size move rather
/// than a `memcpy` call.
#[inline(always)]
fn copy_field(to: &mut [u8], from: &[u8], len: usize) {
    if len == 2 {
        to[..2].copy_from_slice(&from[..2]);
    } else {
        to[..4].copy_from_slice(&from[..4]);
    }
}

/// Whether a `rows`-row matrix of `dtype` can be interleaved.
pub fn applies(dtype: GgmlDType, rows: usize) -> bool {
    super::quant_dot::has_kernel(dtype) && rows.is_multiple_of(ROWS)
}

/// The bytes of each `dtype` block stored XORed in this layout, and the XOR, so the NEON
/// kernels unpack weights already signed (llama.cpp's ARM repack stores Q4_0 the same
/// way); [`row`] undoes it. On aarch64 only:
/// - Q4_0's quants XOR 0x88: each nibble reads as a signed four-bit value (q − 8), one
///   shift or mask for sixteen weights instead of a mask and a subtraction;
/// - Q6_K's `qh` XOR 0xAA: each weight's two high bits with the upper one flipped, so its
///   six bits at the top of a byte read as 4·(q − 32), again without a subtraction.
pub fn flipped(dtype: GgmlDType) -> Option<(Range<usize>, u8)> {
    match dtype {
        _ if !cfg!(target_arch = "aarch64") => None,
        GgmlDType::Q4_0 => Some((2..18, 0x88)),
        GgmlDType::Q6K => Some((128..192, 0xAA)),
        _ => None,
    }
}

/// `bytes` (rows of `row_bytes`, row-major as in the file) in the interleaved layout;
/// groups are spread over the current thread pool. The caller has checked [`applies`].
pub fn interleave(dtype: GgmlDType, bytes: &[u8], row_bytes: usize) -> Vec<u8> {
    assert!(bytes.len().is_multiple_of(ROWS * row_bytes), "interleave: not whole groups of rows");
    by_shape!(dtype, interleave_shaped(bytes, row_bytes, flipped(dtype)))
        .expect("interleave: a format the layout serves")
}

fn interleave_shaped<const HEAD: usize, const TS: usize, const TAIL: usize>(
    bytes: &[u8],
    row_bytes: usize,
    flip: Option<(Range<usize>, u8)>,
) -> Vec<u8> {
    if let Some((flipped, _)) = &flip {
        // The XOR below maps block bytes a..b to column bytes 8a..8b: true of the four-byte
        // fields only.
        let whole_runs = |i: usize| i >= HEAD && i <= TS - TAIL && (i - HEAD).is_multiple_of(4);
        assert!(
            whole_runs(flipped.start) && whole_runs(flipped.end),
            "interleave: flipped bytes {flipped:?} are not whole four-byte fields"
        );
    }
    let mut out = vec![0u8; bytes.len()];
    let mut groups: Vec<(&[u8], &mut [u8])> =
        bytes.chunks_exact(ROWS * row_bytes).zip(out.chunks_exact_mut(ROWS * row_bytes)).collect();
    for_each_mut(&mut groups, |(from, to)| {
        for (r, row) in from.chunks_exact(row_bytes).enumerate() {
            for (block, column) in row.chunks_exact(TS).zip(to.chunks_exact_mut(ROWS * TS)) {
                for_each_field::<HEAD, TS, TAIL>(r, |to, from, len| copy_field(&mut column[to..], &block[from..], len));
            }
        }
        if let Some((bytes, xor)) = &flip {
            // Four-byte fields: block bytes a..b are column bytes 8a..8b.
            for column in to.chunks_exact_mut(ROWS * TS) {
                column[ROWS * bytes.start..ROWS * bytes.end].iter_mut().for_each(|b| *b ^= xor);
            }
        }
    });
    out
}

/// Row `r` of the interleaved `group` (eight rows of `out.len()` bytes, or any whole
/// number of their block columns), back in the file's layout, into `out`.
pub fn row(dtype: GgmlDType, group: &[u8], r: usize, out: &mut [u8]) {
    assert!(r < ROWS && group.len() == ROWS * out.len(), "interleave_rows::row: shape");
    by_shape!(dtype, row_shaped(group, r, out)).expect("interleave_rows::row: a format the layout serves");
    if let Some((bytes, xor)) = flipped(dtype) {
        for block in out.chunks_exact_mut(dtype.type_size()) {
            block[bytes.clone()].iter_mut().for_each(|b| *b ^= xor);
        }
    }
}

fn row_shaped<const HEAD: usize, const TS: usize, const TAIL: usize>(group: &[u8], r: usize, out: &mut [u8]) {
    for (block, column) in out.chunks_exact_mut(TS).zip(group.chunks_exact(ROWS * TS)) {
        for_each_field::<HEAD, TS, TAIL>(r, |from, to, len| copy_field(&mut block[to..], &column[from..], len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn rows_come_back_from_the_interleaved_layout() {
        let mut rng = Rng::new(5);
        for dtype in crate::kernels::quant_dot::TYPES {
            let row_bytes = 3 * dtype.type_size();
            let bytes: Vec<u8> = (0..2 * ROWS * row_bytes).map(|_| rng.next_u64() as u8).collect();
            let packed = interleave(dtype, &bytes, row_bytes);
            assert_ne!(packed, bytes, "{dtype}: the layout must differ from the file's");
            for (g, group) in packed.chunks_exact(ROWS * row_bytes).enumerate() {
                for r in 0..ROWS {
                    let mut back = vec![0u8; row_bytes];
                    row(dtype, group, r, &mut back);
                    let at = (g * ROWS + r) * row_bytes;
                    assert_eq!(back, bytes[at..at + row_bytes], "{dtype}: row {}", g * ROWS + r);
                }
            }
        }
    }

    #[test]
    fn q4_0_columns_sit_where_the_kernels_load_them() {
        // Row r's block 1: scale bytes at 2r, quant bytes 4c..4c + 4 at 16 + 32c + 4r
        // (XOR 0x88 where the layout stores them pre-signed).
        let flip = flipped(GgmlDType::Q4_0).map_or(0, |(_, xor)| xor);
        let (ts, row_bytes) = (18, 36);
        let bytes: Vec<u8> = (0..ROWS * row_bytes).map(|i| i as u8).collect();
        let packed = interleave(GgmlDType::Q4_0, &bytes, row_bytes);
        let column = &packed[ROWS * ts..2 * ROWS * ts];
        for r in 0..ROWS {
            let block = &bytes[r * row_bytes + ts..r * row_bytes + 2 * ts];
            assert_eq!(column[2 * r..2 * r + 2], block[..2]);
            for c in 0..4 {
                let stored: Vec<u8> = column[16 + 32 * c + 4 * r..][..4].iter().map(|b| b ^ flip).collect();
                assert_eq!(stored, block[2 + 4 * c..6 + 4 * c]);
            }
        }
    }

    #[test]
    fn q6_k_keeps_its_trailing_scale_as_a_field() {
        // Row r: ql/qh/scale bytes 4c..4c + 4 at 32c + 4r (qh XORed where the layout flips
        // it), the f16 scale (bytes 208..210) at 8·208 + 2r.
        let ts = 210;
        let bytes: Vec<u8> = (0..ROWS * ts).map(|i| (i * 7) as u8).collect();
        let packed = interleave(GgmlDType::Q6K, &bytes, ts);
        for r in 0..ROWS {
            let block = &bytes[r * ts..(r + 1) * ts];
            assert_eq!(packed[8 * 208 + 2 * r..][..2], block[208..]);
            let (qh, xor) = flipped(GgmlDType::Q6K).unwrap_or((0..0, 0));
            for c in 0..52 {
                let xor = if qh.contains(&(4 * c)) { xor } else { 0 };
                let stored: Vec<u8> = packed[32 * c + 4 * r..][..4].iter().map(|b| b ^ xor).collect();
                assert_eq!(stored, block[4 * c..4 * c + 4]);
            }
        }
    }

    #[test]
    fn only_quantized_formats_with_whole_groups_apply() {
        assert!(applies(GgmlDType::Q4_0, 16));
        assert!(!applies(GgmlDType::Q4_0, 12));
        assert!(applies(GgmlDType::Q8_0, 16));
        assert!(applies(GgmlDType::Q5_0, 16));
        assert!(applies(GgmlDType::Q6K, 16));
        assert!(!applies(GgmlDType::Q6K, 4));
        assert!(!applies(GgmlDType::F16, 16));
    }
}
