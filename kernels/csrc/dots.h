/* Dot products of a few rows against many columns: the inner product of the CPU kernels.
 *
 * A short dot product (~200 channels) as one vector reduction ends in a horizontal sum that costs
 * as much as the products; here the vector lanes run over COLUMNS instead (LANES columns per
 * register) and every lane accumulates its own dot product in channel order. ROWS rows share
 * each column load. GCC/Clang vector types, no intrinsics: it builds for any CPU, in the widest
 * registers -march=native allows. */
#ifndef CLUSTERVIG_DOTS_H
#define CLUSTERVIG_DOTS_H

#include <stdint.h>
#include <string.h>

enum { LANES = 16, ROWS = 4 }; /* ROWS is 4: dot_rows names its accumulators */

/* Pad a count of columns to whole registers. */
static inline int64_t padded_columns(int64_t n) { return (n + LANES - 1) / LANES * LANES; }

/* Transpose rows x (n, c) into columns xt (c, np) with np = padded_columns(n); the padding
 * columns are zero. Blocks of LANES rows: every store is a whole run of LANES floats, and the
 * LANES rows being read stay in the L1 cache. */
static inline void transpose_rows(const float *x, int64_t n, int64_t c, float *xt)
{
    const int64_t np = padded_columns(n);
    for (int64_t i0 = 0; i0 < np; i0 += LANES) {
        const int64_t rows = n - i0 < LANES ? n - i0 : LANES;
        for (int64_t j = 0; j < c; j++) {
            float *t = xt + j * np + i0;
            for (int64_t i = 0; i < rows; i++) t[i] = x[(i0 + i) * c + j];
            for (int64_t i = rows; i < LANES; i++) t[i] = 0.0f;
        }
    }
}

/* transpose_rows for rows scattered in memory: row i is rows[i] (c floats). */
static inline void transpose_row_list(const float *const *rows, int64_t n, int64_t c, float *xt)
{
    const int64_t np = padded_columns(n);
    for (int64_t i0 = 0; i0 < np; i0 += LANES) {
        const int64_t count = n - i0 < LANES ? n - i0 : LANES;
        for (int64_t j = 0; j < c; j++) {
            float *t = xt + j * np + i0;
            for (int64_t i = 0; i < count; i++) t[i] = rows[i0 + i][j];
            for (int64_t i = count; i < LANES; i++) t[i] = 0.0f;
        }
    }
}

/* Squared norms sq (np,) of the columns of xt (c, np). */
static inline void column_square_norms(const float *xt, int64_t c, int64_t np, float *sq)
{
    for (int64_t i = 0; i < np; i++) sq[i] = 0.0f;
    for (int64_t j = 0; j < c; j++) {
        const float *t = xt + j * np;
        for (int64_t i = 0; i < np; i++) sq[i] += t[i] * t[i];
    }
}

/* LANES floats in one vector (the compiler maps it to its widest registers, or to several). */
typedef float lanes_t __attribute__((vector_size(LANES * sizeof(float))));

/* out[r * np + i] = sum_j a[r][j] * xt[j * np + i] for the ROWS rows a[r] (each c channels) and
 * every column i < np (np a multiple of LANES). Four named accumulators, not an array: they stay
 * in registers. */
static inline void dot_rows(const float *const a[ROWS], const float *xt, int64_t c, int64_t np,
                            float *out)
{
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
    for (int64_t i0 = 0; i0 < np; i0 += LANES) {
        lanes_t acc0 = {0}, acc1 = {0}, acc2 = {0}, acc3 = {0};
        for (int64_t j = 0; j < c; j++) {
            lanes_t t;
            memcpy(&t, xt + j * np + i0, sizeof t); /* an unaligned load (no vector is passed
                                                       or returned: that would change the ABI) */
            acc0 += a0[j] * t;
            acc1 += a1[j] * t;
            acc2 += a2[j] * t;
            acc3 += a3[j] * t;
        }
        memcpy(out + i0, &acc0, sizeof acc0);
        memcpy(out + np + i0, &acc1, sizeof acc1);
        memcpy(out + 2 * np + i0, &acc2, sizeof acc2);
        memcpy(out + 3 * np + i0, &acc3, sizeof acc3);
    }
}

#endif
