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

#define NN_LEAF 8

typedef struct {
    int32_t left, right; /* children, or -1 for a leaf */
    int32_t start, count; /* a leaf's points (tree order) */
    int32_t axis;
    double split;
} NNode;

typedef struct {
    NNode *nodes;
    int32_t node_count;
    int64_t n;
    double *points; /* in tree order, 3 per point */
    int64_t *ids;   /* the caller's index of each point in tree order */
    int64_t *where; /* the tree position of each caller's index */
} NTree;

static double coordinate(const double *points, const int64_t *order, int64_t i, int axis) {
    return points[3 * order[i] + axis];
}

/* order[start, start + count) partially sorted so that order[start + k] holds the k-th smallest
 * coordinate along axis (quickselect, Hoare partition) */
static void select_kth(const double *points, int64_t *order, int64_t start, int64_t count, int64_t k, int axis) {
    int64_t lo = start, hi = start + count - 1, target = start + k;
    while (lo < hi) {
        double pivot = coordinate(points, order, lo + (hi - lo) / 2, axis);
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (coordinate(points, order, i, axis) < pivot) i++;
            while (coordinate(points, order, j, axis) > pivot) j--;
            if (i <= j) {
                int64_t swap = order[i];
                order[i] = order[j];
                order[j] = swap;
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

static int32_t build(NTree *t, const double *points, int64_t *order, int64_t start, int64_t count) {
    int32_t index = t->node_count++;
    NNode *node = &t->nodes[index];
    node->left = node->right = -1;
    node->start = (int32_t)start;
    node->count = (int32_t)count;
    node->axis = 0;
    node->split = 0.0;
    if (count <= NN_LEAF) return index;
    double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int64_t i = start; i < start + count; i++) {
        for (int a = 0; a < 3; a++) {
            double v = coordinate(points, order, i, a);
            if (v < lo[a]) lo[a] = v;
            if (v > hi[a]) hi[a] = v;
        }
    }
    int axis = 0;
    for (int a = 1; a < 3; a++)
        if (hi[a] - lo[a] > hi[axis] - lo[axis]) axis = a;
    if (!(hi[axis] > lo[axis])) return index; /* every point the same: one leaf */
    int64_t half = count / 2;
    select_kth(points, order, start, count, half, axis);
    node = &t->nodes[index];
    node->axis = axis;
    node->split = coordinate(points, order, start + half, axis);
    node->count = 0;
    int32_t left = build(t, points, order, start, half);
    int32_t right = build(t, points, order, start + half, count - half);
    node = &t->nodes[index];
    node->left = left;
    node->right = right;
    return index;
}

int nn_build(const double *points, int64_t n, void **out) {
    *out = NULL;
    if (n < 1 || n > INT32_MAX / 2) return NN_ESIZE;
    NTree *t = calloc(1, sizeof(NTree));
    int64_t *order = malloc((size_t)n * sizeof(int64_t));
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
    if (!t->nodes || !t->points || !t->ids || !t->where) {
        free(t->nodes);
        free(t->points);
        free(t->ids);
        free(t->where);
        free(t);
        free(order);
        return NN_ENOMEM;
    }
    for (int64_t i = 0; i < n; i++) order[i] = i;
    t->n = n;
    build(t, points, order, 0, n);
    for (int64_t i = 0; i < n; i++) {
        memcpy(&t->points[3 * i], &points[3 * order[i]], 3 * sizeof(double));
        t->ids[i] = order[i];
        t->where[order[i]] = i;
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

static void search(const NTree *t, int32_t index, const double *x, double *best2, int64_t *best) {
    const NNode *node = &t->nodes[index];
    if (node->left < 0) {
        const double *p = &t->points[3 * (int64_t)node->start];
        for (int32_t i = 0; i < node->count; i++, p += 3) {
            double s = squared(x, p);
            if (s < *best2 || (s == *best2 && *best >= 0 && t->ids[node->start + i] < *best)) {
                *best2 = s;
                *best = t->ids[node->start + i];
            }
        }
        return;
    }
    double gap = x[node->axis] - node->split;
    int32_t near = gap < 0.0 ? node->left : node->right;
    int32_t far = gap < 0.0 ? node->right : node->left;
    search(t, near, x, best2, best);
    if (gap * gap <= *best2) search(t, far, x, best2, best);
}

/* For each of the count points x (3 each): the distance to the nearest tree point strictly closer
 * than bound (infinity when none) and its index (n when none). Between points at the same
 * distance the smallest index wins. */
int nn_query(const void *handle, const double *x, int64_t count, double bound, double *distance, int64_t *index) {
    const NTree *t = handle;
    double limit = bound * bound;
    int64_t previous = -1;
    for (int64_t i = 0; i < count; i++) {
        double best2 = limit;
        int64_t best = -1;
        if (previous >= 0) {
            /* consecutive points are usually neighbours: the previous answer bounds this one (the
             * search then only looks closer, and equal distances still go to the smallest index) */
            double s = squared(&x[3 * i], &t->points[3 * t->where[previous]]);
            if (s < limit) {
                best2 = s;
                best = previous;
            }
        }
        search(t, 0, &x[3 * i], &best2, &best);
        if (best < 0) {
            distance[i] = INFINITY;
            index[i] = t->n;
        } else {
            distance[i] = sqrt(best2);
            index[i] = best;
        }
        previous = best;
    }
    return NN_OK;
}
