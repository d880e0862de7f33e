// Calls one of ggml's aarch64 dot-product kernels once on 8 weight rows, for the
// instruction trace `benches/arm-mca.sh` feeds to llvm-mca. The data are random bytes:
// the static cost model reads the executed instructions, not the values.
//
//   ggml_harness TYPE COLS TOKENS [i8mm]
//   TYPE: q4_0 q4_1 q5_0 q5_1 q8_0 q4_k q5_k q6_k; `i8mm`: the kernels llama.cpp selects on a
//   CPU with the 8-bit matrix multiply (build the kernels with +i8mm for it).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*vec_dot_fn)(int, float *, size_t, const void *, size_t, const void *, size_t, int);
typedef void (*gemx_fn)(int, float *, size_t, const void *, const void *, int, int);

#define VEC_DOT(name) void ggml_vec_dot_##name(int, float *, size_t, const void *, size_t, const void *, size_t, int);
#define GEMX(name) void ggml_gemv_##name(int, float *, size_t, const void *, const void *, int, int); \
                   void ggml_gemm_##name(int, float *, size_t, const void *, const void *, int, int);
VEC_DOT(q4_1_q8_1) VEC_DOT(q5_0_q8_0) VEC_DOT(q5_1_q8_1)
GEMX(q4_0_4x4_q8_0) GEMX(q8_0_4x4_q8_0) GEMX(q4_K_8x4_q8_K) GEMX(q5_K_8x4_q8_K) GEMX(q6_K_8x4_q8_K)
GEMX(q4_0_4x8_q8_0) GEMX(q8_0_4x8_q8_0) GEMX(q4_K_8x8_q8_K) GEMX(q5_K_8x8_q8_K) GEMX(q6_K_8x8_q8_K)

// `pairs`: whether the kernel has an i8mm form taking two rows and two tokens per call.
static const struct { const char *name; vec_dot_fn f; size_t row_bytes_per_32; int pairs; } VEC_DOTS[] = {
    {"q4_1", ggml_vec_dot_q4_1_q8_1, 20, 1}, {"q5_0", ggml_vec_dot_q5_0_q8_0, 22, 0}, {"q5_1", ggml_vec_dot_q5_1_q8_1, 24, 0},
};
// What llama.cpp's repack selects on a NEON CPU with dotprod (4 × 4 and 8 × 4 byte groups)
// and, with i8mm too, the `smmla` kernels (4 × 8, 8 × 8).
static const struct { const char *name; gemx_fn gemv, gemm, gemv_i8mm, gemm_i8mm; } GEMX[] = {
    {"q4_0", ggml_gemv_q4_0_4x4_q8_0, ggml_gemm_q4_0_4x4_q8_0, ggml_gemv_q4_0_4x8_q8_0, ggml_gemm_q4_0_4x8_q8_0},
    {"q8_0", ggml_gemv_q8_0_4x4_q8_0, ggml_gemm_q8_0_4x4_q8_0, ggml_gemv_q8_0_4x8_q8_0, ggml_gemm_q8_0_4x8_q8_0},
    {"q4_k", ggml_gemv_q4_K_8x4_q8_K, ggml_gemm_q4_K_8x4_q8_K, ggml_gemv_q4_K_8x8_q8_K, ggml_gemm_q4_K_8x8_q8_K},
    {"q5_k", ggml_gemv_q5_K_8x4_q8_K, ggml_gemm_q5_K_8x4_q8_K, ggml_gemv_q5_K_8x8_q8_K, ggml_gemm_q5_K_8x8_q8_K},
    {"q6_k", ggml_gemv_q6_K_8x4_q8_K, ggml_gemm_q6_K_8x4_q8_K, ggml_gemv_q6_K_8x8_q8_K, ggml_gemm_q6_K_8x8_q8_K},
};

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) { fprintf(stderr, "usage: ggml_harness TYPE COLS TOKENS [i8mm]\n"); return 2; }
    const char *type = argv[1];
    int i8mm = argc == 5 && !strcmp(argv[4], "i8mm");
    int cols = atoi(argv[2]), tokens = atoi(argv[3]), rows = 8;
    // Generous buffers: every layout of 8 rows × COLS and TOKENS × COLS fits.
    size_t w_bytes = (size_t)rows * cols * 2, x_bytes = (size_t)tokens * cols * 2 + 4096;
    unsigned char *w = malloc(w_bytes), *x = malloc(x_bytes);
    float *out = calloc((size_t)rows * tokens, sizeof(float));
    srand(1);
    // Small bytes: f16 fields stay finite.
    for (size_t i = 0; i < w_bytes; i++) w[i] = rand() & 0x3f;
    for (size_t i = 0; i < x_bytes; i++) x[i] = rand() & 0x3f;
    for (size_t k = 0; k < sizeof VEC_DOTS / sizeof *VEC_DOTS; k++) {
        if (strcmp(type, VEC_DOTS[k].name)) continue;
        // llama.cpp's mat-mul: one row against one token per call, or where the kernel has an
        // i8mm form (and the tokens are even) two rows against two tokens.
        size_t rb = cols / 32 * VEC_DOTS[k].row_bytes_per_32, xb = cols / 32 * 36;
        if (i8mm && VEC_DOTS[k].pairs && tokens % 2 == 0) {
            float tmp[32];
            for (int t = 0; t < tokens; t += 2)
                for (int r = 0; r < rows; r += 2) VEC_DOTS[k].f(cols, tmp, 16, w + r * rb, rb, x + t * xb, xb, 2);
            return 0;
        }
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < rows; r++) VEC_DOTS[k].f(cols, out + t * rows + r, 0, w + r * rb, 0, x + t * xb, 0, 1);
        return 0;
    }
    for (size_t k = 0; k < sizeof GEMX / sizeof *GEMX; k++) {
        if (strcmp(type, GEMX[k].name)) continue;
        if (tokens == 1) (i8mm ? GEMX[k].gemv_i8mm : GEMX[k].gemv)(cols, out, rows, w, x, 1, rows);
        else (i8mm ? GEMX[k].gemm_i8mm : GEMX[k].gemm)(cols, out, rows, w, x, tokens, rows);
        return 0;
    }
    fprintf(stderr, "ggml_harness: unknown type %s\n", type);
    return 2;
}
