/* Batched Lloyd k-means on the CPU: the compiled twin of kernels.reference.kmeans.
 *
 * The contract is the reference's (see its docstring): per image, labels = assign(z0); then while
 * the labels changed and fewer than max_iters updates ran: z = mean(labels), labels = assign(z);
 * an image that hits the cap gets one more mean. assign() takes the first nearest centroid by
 * |z|^2 - 2 x.z, a NaN distance never wins (so a node without a finite distance gets cluster 0);
 * an empty cluster keeps its previous centroid. Each image runs on its own, so it stops as soon
 * as it has converged and a batch gives every image what it gets alone.
 *
 * Why C: an image is ~200 nodes x ~200 channels x a few clusters, so one iteration is a few
 * hundred thousand multiply-adds: as PyTorch ops it is a dozen calls whose dispatch costs more
 * than the arithmetic. Here it is two passes over the image's nodes, with the sums of the mean
 * update gathered per cluster instead of through a one-hot product (kappa times fewer adds).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dots.h"

/* Scratch of one image's loop. */
struct scratch {
    float *xt;      /* (C, Np) the image's nodes as columns (dots.h) */
    float *dist;    /* (ROWS, Np) */
    float *best;    /* (N,) nearest distance so far */
    int32_t *arg;   /* (N,) its cluster */
    float *zz;      /* (kappa,) squared centroid norms */
    float *sums;    /* (kappa, C) */
    int64_t *counts; /* (kappa,) */
};

/* Squared norms of the centroids z (kappa, c) into s->zz. */
static void square_norms(const float *z, int64_t c, int32_t kappa, struct scratch *s)
{
    for (int32_t k = 0; k < kappa; k++) {
        const float *zk = z + k * c;
        float sum = 0.0f;
        for (int64_t j = 0; j < c; j++) sum += zk[j] * zk[j];
        s->zz[k] = sum;
    }
}

/* Nearest centroid among z (kappa, c) of each of the n nodes in s->xt; written to labels (n,).
 * Returns whether any label changed. */
static int assign(int64_t n, int64_t c, const float *z, int32_t kappa, struct scratch *s,
                  int32_t *labels)
{
    const int64_t np = padded_columns(n);
    for (int64_t i = 0; i < n; i++) {
        s->best[i] = INFINITY;
        s->arg[i] = 0;
    }
    for (int32_t k0 = 0; k0 < kappa; k0 += ROWS) {
        const float *rows[ROWS];  /* past kappa: centroid k0 again, its result unused */
        for (int r = 0; r < ROWS; r++) rows[r] = z + (k0 + r < kappa ? k0 + r : k0) * c;
        dot_rows(rows, s->xt, c, np, s->dist);
        for (int r = 0; r < ROWS && k0 + r < kappa; r++) {
            const float *d = s->dist + r * np;
            for (int64_t i = 0; i < n; i++) {
                const float value = s->zz[k0 + r] - 2.0f * d[i];
                if (value < s->best[i]) { /* strict: ties go to the lower cluster; NaN never wins */
                    s->best[i] = value;
                    s->arg[i] = k0 + r;
                }
            }
        }
    }
    int changed = 0;
    for (int64_t i = 0; i < n; i++) {
        changed |= labels[i] != s->arg[i];
        labels[i] = s->arg[i];
    }
    return changed;
}

/* z (kappa, c) <- the mean of the nodes x (n, c) of every cluster; an empty cluster keeps its
 * centroid. */
static void update_means(const float *x, int64_t n, int64_t c, const int32_t *labels,
                         int32_t kappa, float *z, struct scratch *s)
{
    memset(s->sums, 0, sizeof(float) * (size_t)(kappa * c));
    memset(s->counts, 0, sizeof(int64_t) * (size_t)kappa);
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * c;
        float *sum = s->sums + (int64_t)labels[i] * c;
        s->counts[labels[i]]++;
        for (int64_t j = 0; j < c; j++) sum[j] += xi[j];
    }
    for (int32_t k = 0; k < kappa; k++) {
        if (s->counts[k] == 0) continue;
        const float count = (float)s->counts[k];
        float *zk = z + k * c;
        const float *sk = s->sums + k * c;
        for (int64_t j = 0; j < c; j++) zk[j] = sk[j] / count;
    }
}

/* Images [first, last) of the batch.
 *
 * x:          (B, N, C) float32, contiguous: the node features.
 * init:       (kappa,) int64 in [0, N): the node each centroid starts at.
 * labels:     (B, N) int32 out: the cluster of every node, in [0, kappa).
 * centroids:  (B, kappa, C) float32 out: the means of the returned partition.
 * iterations: (B,) int32 out: the centroid updates each image ran.
 * Returns 0, or -1 if scratch memory could not be allocated (outputs then incomplete). */
int cvig_kmeans(const float *x, int64_t N, int64_t C, int32_t kappa, int32_t max_iters,
                const int64_t *init, int64_t first, int64_t last, int32_t *labels,
                float *centroids, int32_t *iterations)
{
    const int64_t np = padded_columns(N);
    struct scratch s = {
        .xt = malloc(sizeof(float) * (size_t)(C * np)),
        .dist = malloc(sizeof(float) * (size_t)(ROWS * np)),
        .best = malloc(sizeof(float) * (size_t)N),
        .arg = malloc(sizeof(int32_t) * (size_t)N),
        .zz = malloc(sizeof(float) * (size_t)kappa),
        .sums = malloc(sizeof(float) * (size_t)(kappa * C)),
        .counts = malloc(sizeof(int64_t) * (size_t)kappa),
    };
    int status = (s.xt && s.dist && s.best && s.arg && s.zz && s.sums && s.counts) ? 0 : -1;
    for (int64_t b = first; b < last && status == 0; b++) {
        const float *xb = x + b * N * C;
        float *z = centroids + b * kappa * C;
        int32_t *lab = labels + b * N;
        for (int32_t k = 0; k < kappa; k++) memcpy(z + k * C, xb + init[k] * C, sizeof(float) * C);
        memset(lab, 0, sizeof(int32_t) * (size_t)N);
        transpose_rows(xb, N, C, s.xt);
        square_norms(z, C, kappa, &s);
        assign(N, C, z, kappa, &s, lab);
        int32_t done = 0, converged = 0;
        while (done < max_iters) {
            update_means(xb, N, C, lab, kappa, z, &s);
            square_norms(z, C, kappa, &s);
            done++;
            if (!assign(N, C, z, kappa, &s, lab)) {
                converged = 1;
                break;
            }
        }
        if (!converged) update_means(xb, N, C, lab, kappa, z, &s); /* hit the cap */
        iterations[b] = done;
    }
    free(s.xt);
    free(s.dist);
    free(s.best);
    free(s.arg);
    free(s.zz);
    free(s.sums);
    free(s.counts);
    return status;
}
