/* Partition order of the nodes on the CPU: the compiled twin of kernels.reference.partition.
 *
 * Nodes sorted by (image, cluster), stable inside a cluster: a counting sort per image, two
 * passes over its labels (the reference's sort, scatter and cumulative sum are a dozen ops).
 * Labels outside [0, kappa) are clamped into it, as the reference and the kernel do, so the
 * result is always a permutation.
 */
#include <stdint.h>
#include <string.h>

/* Images [first, last).
 *
 * labels:  (B, N) int32: the cluster of every node.
 * counts:  (kappa,) int64 scratch.
 * perm:    (B*N,) int32 out: image-order row of the node at each partition position.
 * inverse: (B*N,) int32 out: partition position of each image-order row.
 * offsets: (B*kappa + 1,) int32 out: partition b*kappa + k holds positions
 *          [offsets[b*kappa + k], offsets[b*kappa + k + 1]); the last entry, B*N, is written by
 *          the caller.
 * segment: (B*N,) int32 out: partition id of every image-order node. */
void cvig_partition(const int32_t *labels, int64_t N, int32_t kappa, int64_t first, int64_t last,
                    int64_t *counts, int32_t *perm, int32_t *inverse, int32_t *offsets,
                    int32_t *segment)
{
    for (int64_t b = first; b < last; b++) {
        const int32_t *lab = labels + b * N;
        memset(counts, 0, sizeof(int64_t) * (size_t)kappa);
        for (int64_t n = 0; n < N; n++) {
            const int32_t k = lab[n] < 0 ? 0 : (lab[n] >= kappa ? kappa - 1 : lab[n]);
            counts[k]++;
        }
        int64_t start = b * N; /* counts become each cluster's next free position */
        for (int32_t k = 0; k < kappa; k++) {
            offsets[b * kappa + k] = (int32_t)start;
            const int64_t size = counts[k];
            counts[k] = start;
            start += size;
        }
        for (int64_t n = 0; n < N; n++) {
            const int32_t k = lab[n] < 0 ? 0 : (lab[n] >= kappa ? kappa - 1 : lab[n]);
            const int64_t position = counts[k]++;
            perm[position] = (int32_t)(b * N + n);
            inverse[b * N + n] = (int32_t)position;
            segment[b * N + n] = (int32_t)(b * kappa + k);
        }
    }
}
