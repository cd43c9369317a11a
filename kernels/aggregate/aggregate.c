/* Max over every node's neighbours on the CPU: the compiled twin of
 * kernels.reference.max_aggregate.
 *
 * out[v, c] = max_k x[nbr[v, k], c] (- x[v, c] when relative); argslot[v, c] = the slot k that
 * won. The reference's rules: ties keep the first slot, a NaN beats any number (the first NaN
 * slot wins) so NaN propagates, and indices are clamped into [0, M).
 *
 * Why C: the reference gathers one (M, C) slab per neighbour slot and folds it into a running
 * maximum, K + 1 passes over memory; here each output row is built in the L1 cache from its K
 * neighbour rows in one pass.
 */
#include <stdint.h>

/* Rows [first, last).
 *
 * x:       (M, C) float32, contiguous.
 * nbr:     (M, K) int32 row indices into x (clamped into [0, M)).
 * out:     (M, C) float32 out.
 * argslot: (M, C) uint8 out, or NULL when the winning slots are not wanted. */
void cvig_max_aggregate(const float *restrict x, int64_t M, int64_t C, const int32_t *nbr, int32_t K,
                        int32_t relative, int64_t first, int64_t last, float *restrict out,
                        uint8_t *restrict argslot)
{
    for (int64_t v = first; v < last; v++) {
        const int32_t *list = nbr + v * K;
        float *best = out + v * C;
        uint8_t *slot = argslot ? argslot + v * C : 0;
        for (int32_t k = 0; k < K; k++) {
            const int64_t row = list[k] < 0 ? 0 : (list[k] >= M ? M - 1 : list[k]);
            const float *xr = x + row * C;
            if (k == 0) {
                for (int64_t c = 0; c < C; c++) best[c] = xr[c];
                if (slot)
                    for (int64_t c = 0; c < C; c++) slot[c] = 0;
                continue;
            }
            if (slot) {
                for (int64_t c = 0; c < C; c++) {
                    const float value = xr[c], held = best[c];
                    const int take = value > held || (value != value && held == held);
                    best[c] = take ? value : held;
                    slot[c] = take ? (uint8_t)k : slot[c];
                }
            } else {
                for (int64_t c = 0; c < C; c++) {
                    const float value = xr[c], held = best[c];
                    best[c] = value > held || (value != value && held == held) ? value : held;
                }
            }
        }
        if (relative) {
            const float *xv = x + v * C;
            for (int64_t c = 0; c < C; c++) best[c] -= xv[c];
        }
    }
}
