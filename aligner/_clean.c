/* Mesial's cleaning kernels for validation (aligner/io.py, aligner/validate.py): merging a binary
 * STL's repeated corners into vertices, telling whether any triangle repeats, the triangles' cross
 * products and the area-weighted vertex normals' sums.
 *
 * Plain C99, no Python headers, in the same library as _meshquery.c; the aligner loads it with
 * ctypes (aligner/_clean.py), which releases the GIL for the length of every call. Each function
 * gives the values of the NumPy code it stands for (common/meshformat.py, aligner/validate.py) bit
 * for bit, or says that the NumPy code must answer (MC_FALLBACK).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MC_OK 0
#define MC_ENOMEM -1
#define MC_FALLBACK 1 /* an input only the NumPy code handles (rare): it answers instead */

/* ------------------------------------------------------------ corners */

/* merge_identical_points' hash of a float32 point: its three words' bits times three odd constants */
static inline uint64_t corner_hash(const uint32_t p[3]) {
    return (uint64_t)p[0] * 0x9E3779B97F4A7C15ull ^ (uint64_t)p[1] * 0xC2B2AE3D27D4EB4Full ^
           (uint64_t)p[2] * 0x165667B19E3779F9ull;
}

static inline uint64_t slot_of(uint64_t high, int bits) { return (high * 0x9E3779B97F4A7C15ull) >> (64 - bits); }

typedef struct {
    uint64_t key;
    int64_t value;
} Pair;

static int pair_order(const void *a, const void *b) {
    uint64_t x = ((const Pair *)a)->key, y = ((const Pair *)b)->key;
    return (x > y) - (x < y);
}

/* Sorts `count` keys below 2**key_bits ascending, `values` along (the keys are distinct: no tie to
 * order). One pass places the pairs in 65536 buckets by the keys' top 16 bits; a bucket, a few pairs
 * when the keys are a hash's, is then sorted by insertion (by qsort from 32 pairs: keys built to
 * share their top bits cost n log n, not n^2). */
static int sort_keys(uint64_t *keys, int64_t *values, int64_t count, int key_bits) {
    int low_bits = key_bits > 16 ? key_bits - 16 : 0;
    Pair *pairs = malloc(sizeof(Pair) * (size_t)(count ? count : 1));
    int64_t *next = calloc(65537, sizeof(int64_t));
    if (!pairs || !next) {
        free(pairs);
        free(next);
        return MC_ENOMEM;
    }
    for (int64_t i = 0; i < count; i++) next[(keys[i] >> low_bits) + 1]++;
    for (int j = 0; j < 65536; j++) next[j + 1] += next[j];
    for (int64_t i = 0; i < count; i++) pairs[next[keys[i] >> low_bits]++] = (Pair){keys[i], values[i]};
    /* next[j] is now the end of bucket j, the start of bucket j + 1 */
    for (int j = 0; j < 65536; j++) {
        int64_t start = j ? next[j - 1] : 0, end = next[j];
        if (end - start > 32) {
            qsort(pairs + start, (size_t)(end - start), sizeof(Pair), pair_order);
            continue;
        }
        for (int64_t i = start + 1; i < end; i++) {
            Pair moving = pairs[i];
            int64_t at = i;
            while (at > start && pairs[at - 1].key > moving.key) {
                pairs[at] = pairs[at - 1];
                at--;
            }
            pairs[at] = moving;
        }
    }
    for (int64_t i = 0; i < count; i++) {
        keys[i] = pairs[i].key;
        values[i] = pairs[i].value;
    }
    free(pairs);
    free(next);
    return MC_OK;
}

/* Merges bit-identical float32 points as common/meshformat.py's merge_identical_points does: the
 * distinct points in the order of their hash's high bits (hash >> shift; that function's shift is the
 * bit length of count - 1, at least 1), and for each point the index of its distinct point. The points are
 * `records` runs of `per_record` (x, y, z) float32 triples, a run every `record_bytes` bytes from
 * `base` (a binary STL's corners: 3 a 50-byte record; contiguous points: 1 a 12-byte record).
 *
 * Writes the distinct points as float64 to `unique` (room for all the points), their count to
 * `*unique_count` and `inverse` (one a point). MC_FALLBACK when two different points share the
 * hash's high bits (merge_identical_points then takes its exact slower path) or too many points for
 * 32-bit groups; MC_ENOMEM. */
int mc_merge_corners(const unsigned char *base, int64_t records, int64_t per_record, int64_t record_bytes, int shift,
                     double *unique, int64_t *inverse, int64_t *unique_count) {
    *unique_count = 0;
    int64_t count = records * per_record;
    if (count <= 0) return MC_OK;
    if (count >= INT32_MAX || shift < 1 || shift > 63) return MC_FALLBACK;
    int bits = 12; /* a table of at least count / 2 slots (at most a quarter full for an STL), doubled when half full */
    while (((int64_t)1 << bits) < count / 2) bits++;
    int32_t *table = malloc(sizeof(int32_t) << bits);
    uint64_t *group_key = malloc(sizeof(uint64_t) * (size_t)count);
    uint32_t *group_point = malloc(sizeof(uint32_t) * 3 * (size_t)count);
    if (!table || !group_key || !group_point) {
        free(table);
        free(group_key);
        free(group_point);
        return MC_ENOMEM;
    }
    memset(table, 0xff, sizeof(int32_t) << bits);
    int64_t groups = 0, i = 0;
    int status = MC_OK;
    for (int64_t r = 0; r < records && status == MC_OK; r++) {
        const unsigned char *record = base + r * record_bytes;
        for (int64_t c = 0; c < per_record; c++, i++) {
            uint32_t p[3];
            memcpy(p, record + 12 * c, 12);
            uint64_t high = corner_hash(p) >> shift;
            uint64_t mask = ((uint64_t)1 << bits) - 1, slot = slot_of(high, bits);
            for (;;) {
                int32_t g = table[slot];
                if (g < 0) {
                    g = (int32_t)groups++;
                    table[slot] = g;
                    group_key[g] = high;
                    memcpy(group_point + 3 * g, p, 12);
                    inverse[i] = g;
                    break;
                }
                if (group_key[g] == high) {
                    if (memcmp(group_point + 3 * g, p, 12) != 0) status = MC_FALLBACK;
                    inverse[i] = g;
                    break;
                }
                slot = (slot + 1) & mask;
            }
            if (status != MC_OK) break;
            if (2 * groups > ((int64_t)1 << bits)) { /* over half full: twice the slots */
                int32_t *wider = malloc(sizeof(int32_t) << (bits + 1));
                if (!wider) {
                    status = MC_ENOMEM;
                    break;
                }
                bits++;
                memset(wider, 0xff, sizeof(int32_t) << bits);
                uint64_t wide_mask = ((uint64_t)1 << bits) - 1;
                for (int64_t g = 0; g < groups; g++) {
                    uint64_t s = slot_of(group_key[g], bits);
                    while (wider[s] >= 0) s = (s + 1) & wide_mask;
                    wider[s] = (int32_t)g;
                }
                free(table);
                table = wider;
            }
        }
    }
    free(table);
    int64_t *order = status == MC_OK ? malloc(sizeof(int64_t) * (size_t)groups) : NULL;
    if (status == MC_OK && !order) status = MC_ENOMEM;
    if (status == MC_OK) {
        for (int64_t g = 0; g < groups; g++) order[g] = g;
        status = sort_keys(group_key, order, groups, 64 - shift); /* the keys are distinct: no collision */
    }
    if (status == MC_OK) {
        int64_t *rank = (int64_t *)group_key; /* the sorted keys are no longer needed: their room holds each group's rank */
        for (int64_t at = 0; at < groups; at++) {
            int64_t g = order[at];
            for (int k = 0; k < 3; k++) {
                float value;
                memcpy(&value, group_point + 3 * g + k, 4);
                unique[3 * at + k] = (double)value;
            }
            rank[g] = at;
        }
        for (int64_t j = 0; j < count; j++) inverse[j] = rank[inverse[j]];
        *unique_count = groups;
    }
    free(order);
    free(group_key);
    free(group_point);
    return status;
}

/* ------------------------------------------------------------ triangles */

/* Whether every index of `faces` (m, 3) is in [0, n). */
static int indices_in_range(const int64_t *faces, int64_t m, int64_t n) {
    int64_t bad = 0;
    for (int64_t i = 0; i < 3 * m; i++) bad |= faces[i] < 0 || faces[i] >= n;
    return !bad;
}

/* (v1 - v0) x (v2 - v0) of each triangle `faces` (m, 3) over `vertices` (n, 3), both C-ordered, into
 * `cross` (m, 3): the operations of validate.face_cross_products, a coordinate at a time.
 * MC_FALLBACK (nothing written) when an index is outside [0, n). */
int mc_cross_products(const double *vertices, int64_t n, const int64_t *faces, int64_t m, double *cross) {
    if (!indices_in_range(faces, m, n)) return MC_FALLBACK;
    for (int64_t t = 0; t < m; t++) {
        const double *p = vertices + 3 * faces[3 * t], *q = vertices + 3 * faces[3 * t + 1],
                     *r = vertices + 3 * faces[3 * t + 2];
        double a0 = q[0] - p[0], a1 = q[1] - p[1], a2 = q[2] - p[2];
        double b0 = r[0] - p[0], b1 = r[1] - p[1], b2 = r[2] - p[2];
        double *out = cross + 3 * t;
        out[0] = a1 * b2 - a2 * b1;
        out[1] = a2 * b0 - a0 * b2;
        out[2] = a0 * b1 - a1 * b0;
    }
    return MC_OK;
}

/* The sum at each vertex of the `weights` (m, 3) of the triangles `faces` (m, 3) around it, into `sums`
 * (n, 3): validate.vertex_normals' sum over the three corners of NumPy's bincounts, the same additions
 * in the same order (each corner's column in triangle order from 0.0, then 0 + first + second + third).
 * MC_FALLBACK (nothing written) when an index is outside [0, n); MC_ENOMEM. */
int mc_corner_sums(const int64_t *faces, int64_t m, const double *weights, int64_t n, double *sums) {
    if (!indices_in_range(faces, m, n)) return MC_FALLBACK;
    double *column = malloc(sizeof(double) * 3 * (size_t)(n ? n : 1));
    if (!column) return MC_ENOMEM;
    for (int corner = 0; corner < 3; corner++) {
        /* the first corner's column is the sum itself: 0 + a column is the column (from 0.0, additions
         * never give -0.0) */
        double *into = corner ? column : sums;
        memset(into, 0, sizeof(double) * 3 * (size_t)n);
        for (int64_t t = 0; t < m; t++) {
            double *at = into + 3 * faces[3 * t + corner];
            const double *w = weights + 3 * t;
            at[0] += w[0];
            at[1] += w[1];
            at[2] += w[2];
        }
        if (corner)
            for (int64_t i = 0; i < 3 * n; i++) sums[i] = sums[i] + column[i];
    }
    free(column);
    return MC_OK;
}

/* Validation's census of the triangles `faces` (m, 3) over n vertices (n < 2 000 000, every index in
 * [0, n)) with cross products `cross` (m, 3): `degenerate` (m,) 1 where two corners are one vertex or
 * the length of the cross product (twice the area, sqrt((x x + y y) + z z) as NumPy sums it) is below
 * `min_double_area`; `key` the key of each other triangle in order (its sorted vertices (low, middle,
 * high) as (low n + middle) n + high: the same whatever the order or winding); counts[0] the
 * degenerate triangles, counts[1] 1 when every vertex is a corner of a triangle that is not.
 * MC_FALLBACK (NumPy's code answers) when n or an index is out of range; MC_ENOMEM. */
int mc_face_census(const int64_t *faces, int64_t m, int64_t n, const double *cross, double min_double_area,
                   unsigned char *degenerate, int64_t *key, int64_t *counts) {
    if (n >= 2000000 || !indices_in_range(faces, m, n)) return MC_FALLBACK;
    unsigned char *used = calloc((size_t)(n ? n : 1), 1);
    if (!used) return MC_ENOMEM;
    int64_t kept = 0;
    for (int64_t t = 0; t < m; t++) {
        int64_t a = faces[3 * t], b = faces[3 * t + 1], c = faces[3 * t + 2];
        const double *x = cross + 3 * t;
        int flat = a == b || b == c || a == c || sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]) < min_double_area;
        degenerate[t] = (unsigned char)flat;
        if (flat) continue;
        int64_t low = a < b ? a : b, high = a > b ? a : b;
        low = c < low ? c : low;
        high = c > high ? c : high;
        key[kept++] = (low * n + (a + b + c - low - high)) * n + high;
        used[a] = used[b] = used[c] = 1;
    }
    int64_t every = 1;
    for (int64_t v = 0; v < n; v++) every &= used[v];
    counts[0] = m - kept;
    counts[1] = every;
    free(used);
    return MC_OK;
}
