/* Nearest sample within a bound: a k-d tree over 3-D points, for the aligner's short ICPs.
 *
 * The same answers as SciPy's cKDTree.query(x, distance_upper_bound=bound) (k = 1, p = 2): the
 * nearest point strictly closer than the bound, its Euclidean distance computed as SciPy computes
 * it (the squared differences summed in axis order, then the square root), infinity and the index
 * n when there is none. Only between points at exactly the same distance may the two choose
 * differently. Plain C99, no Python headers; the aligner loads it with ctypes (aligner/_nearest.py),
 * which releases the GIL for the length of every call. Built into the same library as
 * aligner/_meshquery.c (setup.py).
 *
 * Every function returns 0 or a negative error code; nothing here aborts.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NN_OK 0
#define NN_ENOMEM -1
#define NN_ESIZE -4

/* points per leaf at most: a wider leaf is a shallower tree (fewer hard-to-predict turns per query)
 * and its points lie together in memory; 32 was the fastest of 4 to 32 on the global step's queries */
#define NN_LEAF 32
#if NN_LEAF > 32
#error "leaf_avx2 keeps a bit per point of a leaf in 32 bits"
#endif
/* the search's stack: one far child per level; a median split halves every node, so a tree of at
 * most INT32_MAX / 2 points is less than 31 levels deep */
#define NN_STACK 64
/* queries of a call of at least this many points are answered in the order of a coarse grid's cells
 * (at most ORDER_CELLS a side over the tree's box): neighbouring queries then walk the same part of
 * the tree (about a fifth less time on the global step's queries); the answers do not depend on it */
#define ORDER_FROM 256
#define ORDER_CELLS 16

typedef struct {
    int32_t child[2]; /* left, right children, or -1 for a leaf */
    int32_t start, count; /* a leaf's points (tree order) */
    int32_t axis;
    double split;
} NNode;

typedef struct {
    NNode *nodes;
    int32_t node_count;
    int64_t n;
    double *points; /* in tree order, 3 per point */
    double *axes;   /* the same coordinates axis by axis: n x's, then n y's, then n z's (a leaf's in a row) */
    int64_t *ids;   /* the caller's index of each point in tree order */
    int64_t *where; /* the tree position of each caller's index */
    double low[3], high[3]; /* the points' box */
} NTree;

/* a point while the tree is built: its coordinates and the caller's index, moved as one (the
 * partitions then read memory in order instead of through an index) */
typedef struct {
    double c[3];
    int64_t id;
} Entry;

/* entries[start, start + count) partially sorted so that entries[start + k] holds the k-th smallest
 * coordinate along axis (quickselect, Hoare partition) */
static void select_kth(Entry *entries, int64_t start, int64_t count, int64_t k, int axis) {
    int64_t lo = start, hi = start + count - 1, target = start + k;
    while (lo < hi) {
        double pivot = entries[lo + (hi - lo) / 2].c[axis];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (entries[i].c[axis] < pivot) i++;
            while (entries[j].c[axis] > pivot) j--;
            if (i <= j) {
                Entry swap = entries[i];
                entries[i] = entries[j];
                entries[j] = swap;
                i++;
                j--;
            }
        }
        if (target <= j)
            hi = j;
        else if (target >= i)
            lo = i;
        else
            return;
    }
}

static int32_t build(NTree *t, Entry *entries, int64_t start, int64_t count) {
    int32_t index = t->node_count++;
    NNode *node = &t->nodes[index];
    node->child[0] = node->child[1] = -1;
    node->start = (int32_t)start;
    node->count = (int32_t)count;
    node->axis = 0;
    node->split = 0.0;
    if (count <= NN_LEAF) return index;
    double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int64_t i = start; i < start + count; i++) {
        for (int a = 0; a < 3; a++) {
            double v = entries[i].c[a];
            if (v < lo[a]) lo[a] = v;
            if (v > hi[a]) hi[a] = v;
        }
    }
    int axis = 0;
    for (int a = 1; a < 3; a++)
        if (hi[a] - lo[a] > hi[axis] - lo[axis]) axis = a;
    if (!(hi[axis] > lo[axis])) return index; /* every point the same: one leaf */
    int64_t half = count / 2;
    select_kth(entries, start, count, half, axis);
    node = &t->nodes[index];
    node->axis = axis;
    node->split = entries[start + half].c[axis];
    node->count = 0;
    int32_t left = build(t, entries, start, half);
    int32_t right = build(t, entries, start + half, count - half);
    node = &t->nodes[index];
    node->child[0] = left;
    node->child[1] = right;
    return index;
}

int nn_build(const double *points, int64_t n, void **out) {
    *out = NULL;
    if (n < 1 || n > INT32_MAX / 2) return NN_ESIZE;
    NTree *t = calloc(1, sizeof(NTree));
    Entry *order = malloc((size_t)n * sizeof(Entry));
    if (!t || !order) {
        free(t);
        free(order);
        return NN_ENOMEM;
    }
    /* a median split halves every node: fewer than 2n / NN_LEAF * 2 + 1 nodes */
    int64_t capacity = 4 * (n / NN_LEAF + 1) + 1;
    t->nodes = malloc((size_t)capacity * sizeof(NNode));
    t->points = malloc((size_t)n * 3 * sizeof(double));
    t->ids = malloc((size_t)n * sizeof(int64_t));
    t->where = malloc((size_t)n * sizeof(int64_t));
    t->axes = malloc((size_t)n * 3 * sizeof(double));
    if (!t->nodes || !t->points || !t->ids || !t->where || !t->axes) {
        free(t->nodes);
        free(t->axes);
        free(t->points);
        free(t->ids);
        free(t->where);
        free(t);
        free(order);
        return NN_ENOMEM;
    }
    for (int64_t i = 0; i < n; i++) {
        memcpy(order[i].c, &points[3 * i], 3 * sizeof(double));
        order[i].id = i;
    }
    t->n = n;
    for (int a = 0; a < 3; a++) {
        t->low[a] = INFINITY;
        t->high[a] = -INFINITY;
    }
    for (int64_t i = 0; i < n; i++) {
        for (int a = 0; a < 3; a++) {
            if (points[3 * i + a] < t->low[a]) t->low[a] = points[3 * i + a];
            if (points[3 * i + a] > t->high[a]) t->high[a] = points[3 * i + a];
        }
    }
    build(t, order, 0, n);
    for (int64_t i = 0; i < n; i++) {
        memcpy(&t->points[3 * i], order[i].c, 3 * sizeof(double));
        for (int a = 0; a < 3; a++) t->axes[a * n + i] = order[i].c[a];
        t->ids[i] = order[i].id;
        t->where[order[i].id] = i;
    }
    free(order);
    *out = t;
    return NN_OK;
}

void nn_free(void *handle) {
    NTree *t = handle;
    if (!t) return;
    free(t->nodes);
    free(t->points);
    free(t->axes);
    free(t->ids);
    free(t->where);
    free(t);
}

static inline double squared(const double *x, const double *p) {
    /* as SciPy sums them: in axis order, from 0 */
    double d = x[0] - p[0], s = 0.0;
    s += d * d;
    d = x[1] - p[1];
    s += d * d;
    d = x[2] - p[2];
    s += d * d;
    return s;
}

/* A leaf's points against the best so far (see search): each point strictly within best2 and, at the
 * same distance, of the smaller index than best (-1: none yet) takes them, in the points' order. */
static void leaf_plain(const NTree *t, const NNode *node, const double *x, double *best2_, int64_t *best_) {
    const double *p = &t->points[3 * (int64_t)node->start];
    const int64_t *id = &t->ids[node->start];
    double best2 = *best2_;
    int64_t best = *best_;
    for (int32_t i = 0; i < node->count; i++, p += 3) {
        double s = squared(x, p);
        if (s <= best2 && (s < best2 || (best >= 0 && id[i] < best))) {
            best2 = s;
            best = id[i];
        }
    }
    *best2_ = best2;
    *best_ = best;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* leaf_plain's answer, four points at a time where the processor has AVX2: each squared distance
 * summed as squared() sums it (no fused multiply-add: the same bits), their least, then of the points
 * at that distance the smallest index. The sequential scan keeps exactly that pair when it is below
 * best2, or equal to it with a smaller index than best (none yet: only strictly below). */
__attribute__((target("avx2"))) static void leaf_avx2(const NTree *t, const NNode *node, const double *x,
                                                      double *best2_, int64_t *best_) {
    const int32_t count = node->count;
    if (count > NN_LEAF) { /* (a leaf of one point repeated) */
        leaf_plain(t, node, x, best2_, best_);
        return;
    }
    const int64_t n = t->n, start = node->start;
    const double *xs = t->axes + start, *ys = t->axes + n + start, *zs = t->axes + 2 * n + start;
    double s[NN_LEAF];
    __m256d x0 = _mm256_set1_pd(x[0]), x1 = _mm256_set1_pd(x[1]), x2 = _mm256_set1_pd(x[2]);
    __m256d low = _mm256_set1_pd(INFINITY);
    int32_t i = 0;
    for (; i + 4 <= count; i += 4) {
        __m256d d0 = _mm256_sub_pd(x0, _mm256_loadu_pd(xs + i));
        __m256d d1 = _mm256_sub_pd(x1, _mm256_loadu_pd(ys + i));
        __m256d d2 = _mm256_sub_pd(x2, _mm256_loadu_pd(zs + i));
        __m256d v = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(d0, d0), _mm256_mul_pd(d1, d1)), _mm256_mul_pd(d2, d2));
        _mm256_storeu_pd(s + i, v);
        low = _mm256_min_pd(low, v);
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, low);
    double least = lanes[0];
    for (int k = 1; k < 4; k++)
        if (lanes[k] < least) least = lanes[k];
    for (; i < count; i++) {
        double d0 = x[0] - xs[i], d1 = x[1] - ys[i], d2 = x[2] - zs[i];
        s[i] = (d0 * d0 + d1 * d1) + d2 * d2;
        if (s[i] < least) least = s[i];
    }
    double best2 = *best2_;
    int64_t best = *best_;
    if (!(least <= best2) || (least == best2 && best < 0)) return;
    /* the points at that distance (usually one): a bit each, four compares at a time */
    uint32_t at = 0;
    __m256d target = _mm256_set1_pd(least);
    for (i = 0; i + 4 <= count; i += 4)
        at |= (uint32_t)_mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd(s + i), target, _CMP_EQ_OQ)) << i;
    for (; i < count; i++) at |= (uint32_t)(s[i] == least) << i;
    const int64_t *id = &t->ids[start];
    int64_t winner = -1;
    for (; at; at &= at - 1) {
        int64_t candidate = id[__builtin_ctz(at)];
        if (winner < 0 || candidate < winner) winner = candidate;
    }
    if (least < best2 || winner < best) {
        *best2_ = least;
        *best_ = winner;
    }
}
#endif

typedef void (*LeafScan)(const NTree *, const NNode *, const double *, double *, int64_t *);

static LeafScan leaf_scan(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return leaf_avx2;
#endif
    return leaf_plain;
}

static LeafScan leaf_chosen = NULL; /* set on first search (every thread finds the same: a benign race) */

/* on != 0: every search scans its leaves as processors without AVX2 do (leaf_plain), so that tests on
 * any processor check that scan's answers too; 0: the scan chosen by this processor again. Not to be
 * called while a query runs. */
void nn_scalar_leaves(int on) { leaf_chosen = on ? leaf_plain : leaf_scan(); }

/* The nearest point to x strictly within best2 (squared) and, between equal distances, of the
 * smallest index below best (best = -1: none yet): best2 and best updated. Depth first, the near child
 * first; a far child waits on a stack with the squared gap to its split plane and is entered only if
 * that gap is still at most best2. Every point of a far child is at least that gap away along the
 * split's axis (computed differences are monotonic in their operands, so in floating point too): the
 * answer is the smallest (distance, index) pair within the bound, whatever the order of the visits. */
static void search(const NTree *t, const double *x, double *best2_, int64_t *best_) {
    LeafScan leaf = leaf_chosen;
    if (!leaf) leaf = leaf_chosen = leaf_scan();
    int32_t stack_node[NN_STACK];
    double stack_gap[NN_STACK];
    int top = 0;
    double best2 = *best2_;
    int64_t best = *best_;
    const NNode *nodes = t->nodes;
    int32_t index = 0;
    for (;;) {
        const NNode *node = &nodes[index];
        while (node->child[0] >= 0) {
            double gap = x[node->axis] - node->split;
            int32_t near = node->child[0], far = node->child[1];
            if (gap >= 0.0) {
                near = node->child[1];
                far = node->child[0];
            }
            stack_node[top] = far;
            stack_gap[top] = gap * gap;
            top++;
            node = &nodes[near];
        }
        leaf(t, node, x, &best2, &best);
        do {
            if (top == 0) {
                *best2_ = best2;
                *best_ = best;
                return;
            }
            top--;
        } while (stack_gap[top] > best2);
        index = stack_node[top];
    }
}

/* The order in which to answer count queries x: by cell of a coarse grid over the tree's box (points
 * outside it in the border cells), cell by cell (a counting sort, stable). NULL when out of memory. */
static int64_t *grid_order(const NTree *t, const double *x, int64_t count) {
    int64_t *order = malloc((size_t)count * sizeof(int64_t));
    int32_t *cell = malloc((size_t)count * sizeof(int32_t));
    int64_t *start = calloc(ORDER_CELLS * ORDER_CELLS * ORDER_CELLS + 1, sizeof(int64_t));
    if (!order || !cell || !start) {
        free(order);
        free(cell);
        free(start);
        return NULL;
    }
    double scale[3];
    for (int a = 0; a < 3; a++) {
        double extent = t->high[a] - t->low[a];
        scale[a] = extent > 0.0 ? ORDER_CELLS / extent : 0.0;
    }
    for (int64_t i = 0; i < count; i++) {
        int32_t key = 0;
        for (int a = 0; a < 3; a++) {
            double u = (x[3 * i + a] - t->low[a]) * scale[a];
            int32_t c = u <= 0.0 ? 0 : u >= ORDER_CELLS - 1 ? ORDER_CELLS - 1 : (int32_t)u;
            key = key * ORDER_CELLS + c;
        }
        cell[i] = key;
        start[key + 1]++;
    }
    for (int32_t k = 0; k < ORDER_CELLS * ORDER_CELLS * ORDER_CELLS; k++) start[k + 1] += start[k];
    for (int64_t i = 0; i < count; i++) order[start[cell[i]]++] = i;
    free(cell);
    free(start);
    return order;
}

/* The nearest tree point to x strictly within limit (squared), previous (or -1) bounding it first: its
 * index, -1 when none; *best2 its squared distance. */
static inline int64_t nearest(const NTree *t, const double *x, double limit, int64_t previous, double *best2_) {
    double best2 = limit;
    int64_t best = -1;
    if (previous >= 0) {
        /* consecutive points are usually neighbours: the previous answer bounds this one (the
         * search then only looks closer, and equal distances still go to the smallest index) */
        double s = squared(x, &t->points[3 * t->where[previous]]);
        if (s < limit) {
            best2 = s;
            best = previous;
        }
    }
    search(t, x, &best2, &best);
    *best2_ = best2;
    return best;
}

/* For each of the count points x (3 each): the distance to the nearest tree point strictly closer
 * than bound (infinity when none) and its index (n when none). Between points at the same
 * distance the smallest index wins. */
int nn_query(const void *handle, const double *x, int64_t count, double bound, double *distance, int64_t *index) {
    const NTree *t = handle;
    double limit = bound * bound;
    int64_t *order = count >= ORDER_FROM ? grid_order(t, x, count) : NULL; /* NULL: as given */
    int64_t previous = -1;
    for (int64_t k = 0; k < count; k++) {
        int64_t i = order ? order[k] : k;
        double best2;
        int64_t best = nearest(t, &x[3 * i], limit, previous, &best2);
        if (best < 0) {
            distance[i] = INFINITY;
            index[i] = t->n;
        } else {
            distance[i] = sqrt(best2);
            index[i] = best;
        }
        previous = best;
    }
    free(order);
    return NN_OK;
}

/* (x - p) . n with the products summed as NumPy's einsum sums three ((first + third) + second): the
 * tangent-plane residual of x at the sample p of unit normal n, bit for bit NumPy's. */
static inline double plane_residual(const double *x, const double *p, const double *n) {
    double d0 = x[0] - p[0], d1 = x[1] - p[1], d2 = x[2] - p[2];
    return (d0 * n[0] + d2 * n[2]) + d1 * n[1];
}

/* One iteration's point-to-plane terms of the global step's short ICP (aligner/_coarse.py, icp_many),
 * with NumPy's arithmetic: each of the count points x is matched to its nearest tree point strictly
 * within gate (use 1; else 0 and the tree's point 0, with zero weight), whose position and unit normal
 * are points[i] and normals[i] (the caller's order). Per point: the residual r (plane_residual), the
 * weight w = (max(0, 1 - (r / gate)²))² (0 unmatched), rows (x × n, n) (6), weighted the rows times w,
 * and wr = w r. */
int nn_plane_rows(const void *handle, const double *x, int64_t count, double gate, const double *points,
                  const double *normals, uint8_t *use, double *rows, double *weighted, double *wr) {
    const NTree *t = handle;
    double limit = gate * gate;
    int64_t *order = count >= ORDER_FROM ? grid_order(t, x, count) : NULL; /* NULL: as given */
    int64_t previous = -1;
    for (int64_t k = 0; k < count; k++) {
        int64_t i = order ? order[k] : k;
        const double *q = &x[3 * i];
        double best2;
        int64_t best = nearest(t, q, limit, previous, &best2);
        previous = best;
        int64_t at = best < 0 ? 0 : best;
        const double *p = &points[3 * at], *n = &normals[3 * at];
        double r = plane_residual(q, p, n);
        double u = r / gate;
        double v = 1.0 - u * u;
        if (!(v > 0.0)) v = 0.0;
        double w = best < 0 ? 0.0 : v * v;
        double *row = &rows[6 * i], *weighted_row = &weighted[6 * i];
        row[0] = q[1] * n[2] - q[2] * n[1];
        row[1] = q[2] * n[0] - q[0] * n[2];
        row[2] = q[0] * n[1] - q[1] * n[0];
        row[3] = n[0];
        row[4] = n[1];
        row[5] = n[2];
        for (int c = 0; c < 6; c++) weighted_row[c] = row[c] * w;
        use[i] = best >= 0;
        wr[i] = w * r;
    }
    free(order);
    return NN_OK;
}

/* For each of the count points x: its nearest tree point strictly within bound, dropped when its
 * distance is beyond row_bound[i / row] (row_bound NULL: none dropped) and looked for only strictly
 * within the squared distance within[i] (within NULL: no such limit); closest and normal (3 each) that
 * point's position and unit normal, samples[j] and normals[j] (the caller's order), zeros when none;
 * distance as nn_query gives it, infinity when none or dropped, and squared (unless NULL) its square as
 * summed (infinity there). A row's bound also narrows the search (just beyond it, by a relative 1e-12,
 * far more than the rounding of a square root: every match within it is still found, and one beyond it
 * was dropped anyway), so the answers are those of a search within bound then filtered. */
int nn_planes(const void *handle, const double *x, int64_t count, double bound, int64_t row, const double *row_bound,
              const double *within, const double *samples, const double *normals, double *closest, double *normal,
              double *distance, double *squared_out) {
    const NTree *t = handle;
    if (row_bound && row < 1) return NN_ESIZE;
    double limit = bound * bound;
    int64_t *order = count >= ORDER_FROM ? grid_order(t, x, count) : NULL; /* NULL: as given */
    int64_t previous = -1;
    for (int64_t k = 0; k < count; k++) {
        int64_t i = order ? order[k] : k;
        double own = limit;
        if (row_bound && row_bound[i / row] > 0.0) {
            double near = row_bound[i / row] * (1.0 + 1e-12);
            if (near * near < own) own = near * near;
        }
        if (within && within[i] < own) own = within[i];
        double best2;
        int64_t best = nearest(t, &x[3 * i], own, previous, &best2);
        if (best >= 0) previous = best;
        double d = best < 0 ? INFINITY : sqrt(best2);
        if (best >= 0 && row_bound && d > row_bound[i / row]) best = -1;
        if (best < 0) {
            distance[i] = INFINITY;
            if (squared_out) squared_out[i] = INFINITY;
            memset(&closest[3 * i], 0, 3 * sizeof(double));
            memset(&normal[3 * i], 0, 3 * sizeof(double));
        } else {
            distance[i] = d;
            if (squared_out) squared_out[i] = best2;
            memcpy(&closest[3 * i], &samples[3 * best], 3 * sizeof(double));
            memcpy(&normal[3 * i], &normals[3 * best], 3 * sizeof(double));
        }
    }
    free(order);
    return NN_OK;
}

/* For each of the count points x: 1 when its nearest tree point strictly within bound exists and x is
 * within tau of that point's tangent plane (|plane_residual| < tau), else 0. p and n: samples[j] and
 * normals[j] (the caller's order). */
int nn_on_plane(const void *handle, const double *x, int64_t count, double bound, double tau, const double *samples,
                const double *normals, uint8_t *hit) {
    const NTree *t = handle;
    double limit = bound * bound;
    int64_t *order = count >= ORDER_FROM ? grid_order(t, x, count) : NULL; /* NULL: as given */
    int64_t previous = -1;
    for (int64_t k = 0; k < count; k++) {
        int64_t i = order ? order[k] : k;
        const double *q = &x[3 * i];
        double best2;
        int64_t best = nearest(t, q, limit, previous, &best2);
        previous = best;
        hit[i] = 0;
        if (best >= 0) {
            hit[i] = fabs(plane_residual(q, &samples[3 * best], &normals[3 * best])) < tau;
        }
    }
    free(order);
    return NN_OK;
}

/* Farthest-point sampling (aligner/_features.py, spread_points) with NumPy's arithmetic: each point's
 * distance to centre, then count times the first point of the largest distance is chosen and every
 * distance lowered to the point's distance to it. A distance is the square root of the squared
 * differences summed in axis order (as np.linalg.norm over the last axis of (n, 3) sums them). */
int nn_spread(const double *points, int64_t n, const double *centre, int64_t count, int64_t *chosen) {
    if (n < 1 || count < 0 || count > n) return NN_ESIZE;
    double *distance = malloc((size_t)n * sizeof(double));
    if (!distance) return NN_ENOMEM;
    for (int64_t i = 0; i < n; i++) {
        const double *p = &points[3 * i];
        double d0 = p[0] - centre[0], d1 = p[1] - centre[1], d2 = p[2] - centre[2];
        distance[i] = sqrt((d0 * d0 + d1 * d1) + d2 * d2);
    }
    for (int64_t k = 0; k < count; k++) {
        int64_t far = 0;
        for (int64_t i = 1; i < n; i++)
            if (distance[i] > distance[far]) far = i;
        chosen[k] = far;
        const double *q = &points[3 * far];
        double x = q[0], y = q[1], z = q[2];
        for (int64_t i = 0; i < n; i++) {
            const double *p = &points[3 * i];
            double d0 = p[0] - x, d1 = p[1] - y, d2 = p[2] - z;
            double d = sqrt((d0 * d0 + d1 * d1) + d2 * d2);
            if (d < distance[i]) distance[i] = d;
        }
    }
    free(distance);
    return NN_OK;
}
