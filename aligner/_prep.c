/* The registration's preprocessing, compiled: voxel thinning (aligner/_features.py voxel_representatives)
 * and, for an arch's canonical frame (aligner/_anatomy.py), its mirror symmetry costs, open border and
 * vertex centroid (pp_mirror_costs, pp_border_edges, pp_row_mean below).
 *
 * It gives what the NumPy code it stands for gives, bit for bit (tests/aligner/test_prep.py):
 *
 * pp_voxel_first: the index of the first point (in input order) of each occupied voxel, increasing.
 *   NumPy computed every point's voxel key as floor((p - min) / voxel) per axis, the flat key
 *   (k0 * d1 + k1) * d2 + k2 (d the largest key per axis plus one, 64-bit integers wrapping), and
 *   the first occurrence of each key with an argsort of them all. Here the same keys (the same
 *   subtraction, division and floor) go once through a hash table in input order: a point whose key
 *   is new is the first of its voxel. The largest key per axis is the key of the largest coordinate
 *   (the subtraction, division and floor are monotonic).
 *
 * Plain C99, no Python headers, in the same library as _meshquery.c (setup.py; loaded with ctypes,
 * which releases the GIL: the two arches' threads both run). Reentrant (no shared state).
 * Return 0 or a negative error code.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define PP_OK 0
#define PP_ENOMEM -1
#define PP_EVALUE -2 /* a coordinate not finite or a key beyond 2^62 */

/* points (n, 3) row-major, n >= 1, voxel > 0. out (n,) receives the indices, *count their number. */
int pp_voxel_first(const double *points, int64_t n, double voxel, int64_t *out, int64_t *count) {
    double low[3], high[3];
    for (int a = 0; a < 3; a++) low[a] = high[a] = points[a];
    for (int64_t i = 0; i < n; i++) {
        for (int a = 0; a < 3; a++) {
            double v = points[3 * i + a];
            if (!isfinite(v)) return PP_EVALUE;
            if (v < low[a]) low[a] = v;
            if (v > high[a]) high[a] = v;
        }
    }
    uint64_t dims[3];
    for (int a = 0; a < 3; a++) {
        double top = floor((high[a] - low[a]) / voxel);
        if (!(top < 4611686018427387904.0)) return PP_EVALUE; /* 2^62: NumPy's int64 cast holds it */
        dims[a] = (uint64_t)(int64_t)top + 1u;
    }
    int bits = 1;
    while (((int64_t)1 << bits) < 2 * n) bits++;
    uint64_t size = (uint64_t)1 << bits, mask = size - 1;
    uint64_t *keys = malloc(size * sizeof *keys);
    unsigned char *used = calloc(size, 1);
    if (!keys || !used) {
        free(keys);
        free(used);
        return PP_ENOMEM;
    }
    int64_t found = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *p = points + 3 * i;
        uint64_t k[3];
        for (int a = 0; a < 3; a++) k[a] = (uint64_t)(int64_t)floor((p[a] - low[a]) / voxel);
        uint64_t key = (k[0] * dims[1] + k[1]) * dims[2] + k[2]; /* NumPy's int64 arithmetic, wrapping */
        uint64_t slot = (key * 0x9E3779B97F4A7C15ull) >> (64 - bits);
        for (;;) {
            if (!used[slot]) {
                used[slot] = 1;
                keys[slot] = key;
                out[found++] = i;
                break;
            }
            if (keys[slot] == key) break;
            slot = (slot + 1) & mask;
        }
    }
    free(keys);
    free(used);
    *count = found;
    return PP_OK;
}

/* pp_key_least: of the points sharing a key (flat (n,), any 64-bit integers), the one of the least
 * offset (n,), the smaller index among equal offsets; their indices, increasing, in out (n,), *count
 * their number. NumPy's lexsort((offset, flat)) took each key's first (lexsort is stable) and sorted
 * them (_features.invariant_representatives); here one pass through a hash table of the keys in input
 * order keeps each key's best so far (a later point only with a strictly smaller offset), then the
 * winners are marked and read out in order. Offsets are finite (no NaN): a comparison decides. */
int pp_key_least(const int64_t *flat, const double *offset, int64_t n, int64_t *out, int64_t *count) {
    int bits = 1;
    while (((int64_t)1 << bits) < 2 * n) bits++;
    uint64_t size = (uint64_t)1 << bits, mask = size - 1;
    uint64_t *keys = malloc(size * sizeof *keys);
    int64_t *best = malloc(size * sizeof *best);
    unsigned char *kept = calloc((size_t)(n > 0 ? n : 1), 1);
    if (!keys || !best || !kept) {
        free(keys);
        free(best);
        free(kept);
        return PP_ENOMEM;
    }
    for (uint64_t j = 0; j < size; j++) best[j] = -1;
    for (int64_t i = 0; i < n; i++) {
        uint64_t key = (uint64_t)flat[i];
        uint64_t slot = (key * 0x9E3779B97F4A7C15ull) >> (64 - bits);
        for (;;) {
            if (best[slot] < 0) {
                keys[slot] = key;
                best[slot] = i;
                break;
            }
            if (keys[slot] == key) {
                if (offset[i] < offset[best[slot]]) best[slot] = i;
                break;
            }
            slot = (slot + 1) & mask;
        }
    }
    for (uint64_t j = 0; j < size; j++)
        if (best[j] >= 0) kept[best[j]] = 1;
    int64_t found = 0;
    for (int64_t i = 0; i < n; i++)
        if (kept[i]) out[found++] = i;
    *count = found;
    free(keys);
    free(best);
    free(kept);
    return PP_OK;
}

/* An arch's mirror symmetry costs (aligner/_anatomy.py mirror_costs): for each of k axis directions d_j,
 * the mean over the n sample points s_i of a 2-D distance field at s_i mirrored about the axis,
 * m = (2 * a_ij) * d_j - s_i (a = s @ d^T, computed by the caller: NumPy's matmul), looked up as
 * DistanceField.__call__ does (per axis ((m - origin) / voxel) + 0.5, clipped to [0, limit], truncated,
 * times the stride; the float32 value widened) and summed over the points in their order, as NumPy
 * reduces the first axis of an (n, k) array, over n. Without the (n, k, 2) and (n, k) arrays.
 * sample (n, 2), along (n, k), direction (k, 2), grid the field's flat values; out (k,). */
int pp_mirror_costs(const double *sample, const double *along, const double *direction, int64_t n, int64_t k,
                    const float *grid, const double *origin, double voxel, const double *limit,
                    const int64_t *stride, double *out) {
    double *sums = calloc((size_t)(k > 0 ? k : 1), sizeof *sums);
    if (!sums) return PP_ENOMEM;
    for (int64_t i = 0; i < n; i++) {
        const double *a = along + i * k;
        double sx = sample[2 * i], sy = sample[2 * i + 1];
        for (int64_t j = 0; j < k; j++) {
            double twice = 2.0 * a[j];
            double mx = twice * direction[2 * j] - sx;
            double my = twice * direction[2 * j + 1] - sy;
            double u = (mx - origin[0]) / voxel + 0.5, v = (my - origin[1]) / voxel + 0.5;
            if (u < 0.0) u = 0.0;
            if (u > limit[0]) u = limit[0];
            if (v < 0.0) v = 0.0;
            if (v > limit[1]) v = limit[1];
            int64_t cell = (int64_t)(int32_t)u * stride[0] + (int64_t)(int32_t)v * stride[1];
            double value = (double)grid[cell];
            if (i == 0)
                sums[j] = value;
            else
                sums[j] += value;
        }
    }
    for (int64_t j = 0; j < k; j++) out[j] = sums[j] / (double)n;
    free(sums);
    return PP_OK;
}

/* An arch's open border (aligner/_anatomy.py border_edges): the keys min(a, b) * n + max(a, b) of the edges
 * used by exactly one of the m triangles `faces` (m, 3) (indices into n vertices), increasing, into out
 * (room for 3m), their number in *count. NumPy sorted all 3m keys; here the edges are bucketed by their
 * smaller end (a counting sort), a bucket's larger ends counted in a table over the vertices, and the ones
 * counted once kept in increasing order: the same keys. 32-bit buckets: n and 3m below 2^31 (PP_ESIZE). */
#define PP_EINDEX -3
#define PP_ESIZE -4
int pp_border_edges(const int64_t *faces, int64_t m, int64_t n, int64_t *out, int64_t *count) {
    if (n < 0 || m < 0 || n >= INT32_MAX || m >= INT32_MAX / 3) return PP_ESIZE;
    int32_t *start = calloc((size_t)n + 2, sizeof *start);
    int32_t *other = malloc((size_t)(3 * m + 1) * sizeof *other);
    int32_t *seen = calloc((size_t)n + 1, sizeof *seen);
    if (!start || !other || !seen) {
        free(start);
        free(other);
        free(seen);
        return PP_ENOMEM;
    }
    int status = PP_OK;
    /* bucket sizes at start[v + 2], their starts at start[v + 1], then filled (start[v + 1] its end) */
    for (int64_t f = 0; f < m && status == PP_OK; f++) {
        int64_t a = faces[3 * f], b = faces[3 * f + 1], c = faces[3 * f + 2];
        if (a < 0 || a >= n || b < 0 || b >= n || c < 0 || c >= n) {
            status = PP_EINDEX;
            break;
        }
        start[(a < b ? a : b) + 2]++;
        start[(b < c ? b : c) + 2]++;
        start[(c < a ? c : a) + 2]++;
    }
    int64_t found = 0;
    if (status == PP_OK) {
        for (int64_t v = 0; v < n; v++) start[v + 2] += start[v + 1];
        for (int64_t f = 0; f < m; f++) {
            int32_t a = (int32_t)faces[3 * f], b = (int32_t)faces[3 * f + 1], c = (int32_t)faces[3 * f + 2];
            if (a < b) other[start[a + 1]++] = b; else other[start[b + 1]++] = a;
            if (b < c) other[start[b + 1]++] = c; else other[start[c + 1]++] = b;
            if (c < a) other[start[c + 1]++] = a; else other[start[a + 1]++] = c;
        }
        for (int64_t v = 0; v < n; v++) {
            int32_t begin = start[v], end = start[v + 1];
            for (int32_t i = begin; i < end; i++) seen[other[i]]++;
            int64_t first = found;
            for (int32_t i = begin; i < end; i++) {
                int32_t w = other[i];
                if (seen[w] != 1) continue;
                int64_t key = v * n + w, j = found++; /* kept in order (a bucket holds few) */
                for (; j > first && out[j - 1] > key; j--) out[j] = out[j - 1];
                out[j] = key;
            }
            for (int32_t i = begin; i < end; i++) seen[other[i]] = 0;
        }
    }
    free(start);
    free(other);
    free(seen);
    *count = found;
    return status;
}

/* The mean of the n rows of points (n, 3) as NumPy's mean(axis=0) takes it: each column summed row after
 * row from the first, over n. n >= 1. */
int pp_row_mean(const double *points, int64_t n, double *out) {
    double s[3] = {points[0], points[1], points[2]};
    for (int64_t i = 1; i < n; i++)
        for (int a = 0; a < 3; a++) s[a] += points[3 * i + a];
    for (int a = 0; a < 3; a++) out[a] = s[a] / (double)n;
    return PP_OK;
}
