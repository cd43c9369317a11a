/* K nearest nodes inside every partition on the CPU: the compiled twin of
 * kernels.reference.partition_knn.
 *
 * The contract is the reference's: squared Euclidean distances |x_i|^2 + |x_j|^2 - 2 x_i.x_j,
 * ordered by (distance, index); a NaN distance ranks as +inf and one below zero (rounding) as 0;
 * a node whose partition has s < K members gets them in distance order repeated cyclically
 * (slot t holds the member of rank t % s). Every index is a member of the node's own partition
 * for any input.
 *
 * Why C: partitions are a few dozen nodes, so the distance block of one is a few hundred thousand
 * multiply-adds: as PyTorch ops the padding, the selection's int64 keys and the dispatch of each
 * op cost more than the arithmetic. Here each row keeps its K best in a sorted list.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "dots.h"

/* The k nearest (distance, index) pairs of one row, sorted, from the s dots d (s,) of the row
 * with its partition (overwritten with the distances): first every distance at once (a vector
 * loop), then one pass over them. Members arrive in index order, so one enters only if strictly
 * nearer than the last kept one and goes after every kept member at the same distance. sq_i
 * and sq (s,) are the squared norms the distance uses; the dots are scaled by scale_i *
 * scale[j] (ones unless normalising). Writes the kept = min(k, s) member indices to arg. */
static void nearest(float sq_i, float scale_i, const float *sq, const float *scale, float *d,
                    int64_t s, int32_t kept, float *best, int32_t *arg)
{
    for (int64_t j = 0; j < s; j++) {
        const float value = (sq_i + sq[j]) - 2.0f * (d[j] * scale_i * scale[j]);
        /* NaN ranks as +inf, below zero (rounding) as 0 */
        d[j] = value >= 0.0f ? value : (value != value ? INFINITY : 0.0f);
    }
    int32_t count = 0;
    for (int64_t j = 0; j < s; j++) {
        const float value = d[j];
        if (count == kept && !(value < best[kept - 1])) continue;
        int32_t slot = count < kept ? count++ : kept - 1;
        while (slot > 0 && value < best[slot - 1]) {
            best[slot] = best[slot - 1];
            arg[slot] = arg[slot - 1];
            slot--;
        }
        best[slot] = value;
        arg[slot] = (int32_t)j;
    }
}

/* The x row of partition position p: perm[p] clamped into [0, M) when gathering. */
static inline int64_t row_of(const int32_t *perm, int64_t M, int64_t p)
{
    if (!perm) return p;
    const int64_t row = perm[p];
    return row < 0 ? 0 : (row >= M ? M - 1 : row);
}

/* Partitions [first, last).
 *
 * x:         (M, C) float32, contiguous: the node features, in partition order, or in any order
 *            with perm.
 * offsets:   (P + 1,) int32: partition q holds positions [offsets[q], offsets[q + 1]), rising
 *            from 0 to M (checked by the caller).
 * perm:      (M,) int32, the x row at every position (each partition's rows increasing), or
 *            NULL: position = row. With perm, output rows and neighbour ids are x rows.
 * normalize: rank the rows scaled to unit length (divided by max(|x|, 1e-12)).
 * out:       (M, K) int32 out: neighbours, nearest first.
 * Returns 0, or -1 if scratch memory could not be allocated (outputs then incomplete). */
int cvig_partition_knn(const float *x, int64_t M, int64_t C, const int32_t *offsets,
                       const int32_t *perm, int32_t normalize, int64_t first, int64_t last,
                       int32_t K, int32_t *out)
{
    int64_t largest = 1;
    for (int64_t q = first; q < last; q++) {
        const int64_t s = (int64_t)offsets[q + 1] - offsets[q];
        if (s > largest) largest = s;
    }
    const int64_t widest = padded_columns(largest);
    float *xt = malloc(sizeof(float) * (size_t)(C * widest));     /* (C, sp) */
    float *dist = malloc(sizeof(float) * (size_t)(ROWS * widest)); /* (ROWS, sp) */
    float *sq = malloc(sizeof(float) * (size_t)widest);
    float *scale = malloc(sizeof(float) * (size_t)widest);
    const float **rows_of = malloc(sizeof(float *) * (size_t)widest);
    float *best = malloc(sizeof(float) * (size_t)K);
    int32_t *arg = malloc(sizeof(int32_t) * (size_t)K);
    int status = (xt && dist && sq && scale && rows_of && best && arg) ? 0 : -1;
    for (int64_t q = first; q < last && status == 0; q++) {
        const int64_t start = offsets[q], s = (int64_t)offsets[q + 1] - start;
        if (s <= 0) continue;
        const int64_t sp = padded_columns(s);
        const int32_t kept = s < K ? (int32_t)s : K;
        for (int64_t i = 0; i < s; i++) rows_of[i] = x + row_of(perm, M, start + i) * C;
        transpose_row_list(rows_of, s, C, xt);
        column_square_norms(xt, C, sp, sq);
        for (int64_t i = 0; i < sp; i++) {
            if (normalize) {
                const float norm = sqrtf(sq[i]);
                scale[i] = 1.0f / (norm > 1e-12f ? norm : 1e-12f);
                sq[i] = sq[i] * scale[i] * scale[i];
            } else {
                scale[i] = 1.0f;
            }
        }
        for (int64_t i0 = 0; i0 < s; i0 += ROWS) {
            const float *rows[ROWS]; /* past the partition: row i0 again, its result unused */
            for (int r = 0; r < ROWS; r++) rows[r] = rows_of[i0 + r < s ? i0 + r : i0];
            dot_rows(rows, xt, C, sp, dist);
            for (int r = 0; r < ROWS && i0 + r < s; r++) {
                const int64_t i = i0 + r;
                nearest(sq[i], scale[i], sq, scale, dist + r * sp, s, kept, best, arg);
                int32_t *row = out + row_of(perm, M, start + i) * K;
                for (int32_t t = 0, rank = 0; t < K; t++, rank = rank + 1 == kept ? 0 : rank + 1)
                    row[t] = (int32_t)row_of(perm, M, start + arg[rank]); /* rank = t % kept */
            }
        }
    }
    free(xt);
    free(dist);
    free(sq);
    free(scale);
    free(rows_of);
    free(best);
    free(arg);
    return status;
}
