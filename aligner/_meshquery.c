/* Mesial's mesh-query kernel: a bounding volume hierarchy over the triangles of one mesh,
 * exact closest points and ray casts, in float64, queries split over POSIX threads.
 *
 * Plain C99 and POSIX threads, no Python headers: the aligner loads it with ctypes
 * (aligner/_meshquery.py), which releases the GIL for the length of every call. setuptools
 * builds it as an extension module only to place it beside the Python code.
 *
 * Every function returns 0 or a negative error code (MQ_E*); nothing here aborts.
 */
#define _DEFAULT_SOURCE /* madvise (with -std=c99) */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MQ_OK 0
#define MQ_ENOMEM -1
#define MQ_EINDEX -2   /* a face refers to a vertex that does not exist */
#define MQ_EFINITE -3  /* a vertex coordinate is NaN or infinite */
#define MQ_ESIZE -4    /* counts out of range */
#define MQ_ETHREAD -5  /* a thread could not be started */

#define LEAF_SIZE 8 /* triangles a leaf at most */
#define BINS 8       /* surface area heuristic: candidate splits a node */
#define MAX_SAH_DEPTH 48
#define TRI 16 /* doubles a triangle: a, b - a, c - a, unit normal, |b - a|^2, (b - a).(c - a), |c - a|^2, flat */

typedef struct {
    float lo[3], hi[3]; /* rounded outwards from the float64 box: 32 bytes a node, two siblings a cache line */
    int32_t start;      /* leaf: first triangle (BVH order); inner: the left child (the right one follows it) */
    int32_t count;      /* triangles of a leaf, 0 for an inner node */
} Node;

typedef struct {
    Node *nodes;
    void *node_block;
    int32_t node_count;
    int32_t depth;
    int64_t triangle_count;
    double *tri;  /* TRI doubles per triangle, in BVH order */
    void *tri_block;
    int64_t *ids; /* the caller's index of each triangle in BVH order */
    int32_t *slot; /* the BVH order's index of each caller's triangle (ids inverted) */
} Mesh;

static inline double dot3(const double *a, const double *b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

static inline void cross3(const double *a, const double *b, double *out) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

/* ------------------------------------------------------------------ build */

typedef struct {
    double lo[3], hi[3];
    int32_t id;   /* the caller's index of the triangle (m < 2**30) */
    int32_t slot; /* its bin in the bins of the node it is in, set when they are filled */
} Ref;

/* The box of some refs and the box of their centres (doubled: lo + hi, as the bins use them). */
typedef struct {
    double lo[3], hi[3], clo[3], chi[3];
} Bounds;

typedef struct {
    Ref *refs;
    Node *nodes;
    int32_t used;
    int32_t depth;
    const double *vertices;
    const int64_t *faces;
    double *tri;
    int64_t *ids;
    struct Bins *bins; /* two a depth up to MAX_SAH_DEPTH: the bins of the children of the node being split */
} Builder;

static float round_down(double x) {
    float f = (float)x;
    return (double)f > x ? nextafterf(f, -INFINITY) : f;
}

static float round_up(double x) {
    float f = (float)x;
    return (double)f < x ? nextafterf(f, INFINITY) : f;
}

static void bounds_empty(Bounds *s) {
    for (int k = 0; k < 3; k++) {
        s->lo[k] = s->clo[k] = INFINITY;
        s->hi[k] = s->chi[k] = -INFINITY;
    }
}

static inline void bounds_add(Bounds *s, const Ref *r) {
#ifdef __SSE2__
    /* two coordinates an instruction: minpd/maxpd give a < b ? a : b and a > b ? a : b, as below */
    __m128d lo01 = _mm_loadu_pd(r->lo), hi01 = _mm_loadu_pd(r->hi);
    __m128d lo2 = _mm_load_sd(r->lo + 2), hi2 = _mm_load_sd(r->hi + 2);
    __m128d c01 = _mm_add_pd(lo01, hi01), c2 = _mm_add_sd(lo2, hi2);
    _mm_storeu_pd(s->lo, _mm_min_pd(lo01, _mm_loadu_pd(s->lo)));
    _mm_storeu_pd(s->hi, _mm_max_pd(hi01, _mm_loadu_pd(s->hi)));
    _mm_storeu_pd(s->clo, _mm_min_pd(c01, _mm_loadu_pd(s->clo)));
    _mm_storeu_pd(s->chi, _mm_max_pd(c01, _mm_loadu_pd(s->chi)));
    _mm_store_sd(s->lo + 2, _mm_min_sd(lo2, _mm_load_sd(s->lo + 2)));
    _mm_store_sd(s->hi + 2, _mm_max_sd(hi2, _mm_load_sd(s->hi + 2)));
    _mm_store_sd(s->clo + 2, _mm_min_sd(c2, _mm_load_sd(s->clo + 2)));
    _mm_store_sd(s->chi + 2, _mm_max_sd(c2, _mm_load_sd(s->chi + 2)));
#else
    for (int k = 0; k < 3; k++) {
        double c = r->lo[k] + r->hi[k]; /* twice the centre */
        s->lo[k] = r->lo[k] < s->lo[k] ? r->lo[k] : s->lo[k]; /* (minsd and maxsd: no branch) */
        s->hi[k] = r->hi[k] > s->hi[k] ? r->hi[k] : s->hi[k];
        s->clo[k] = c < s->clo[k] ? c : s->clo[k];
        s->chi[k] = c > s->chi[k] ? c : s->chi[k];
    }
#endif
}

/* Minima and maxima do not depend on the order they are taken in: the bounds of a union of
 * bins are those of a pass over its refs. */
static void bounds_merge(Bounds *s, const Bounds *o) {
    for (int k = 0; k < 3; k++) {
        s->lo[k] = o->lo[k] < s->lo[k] ? o->lo[k] : s->lo[k];
        s->hi[k] = o->hi[k] > s->hi[k] ? o->hi[k] : s->hi[k];
        s->clo[k] = o->clo[k] < s->clo[k] ? o->clo[k] : s->clo[k];
        s->chi[k] = o->chi[k] > s->chi[k] ? o->chi[k] : s->chi[k];
    }
}

static void bounds_of(const Ref *refs, int64_t count, Bounds *s) {
    bounds_empty(s);
    for (int64_t i = 0; i < count; i++) bounds_add(s, &refs[i]);
}

/* How a node bins its refs for the surface area heuristic: along the longest axis of the centres,
 * BINS equal slots of it; the count and the bounds of each bin. */
typedef struct Bins {
    int active; /* the node is split by the heuristic: these bins are (being) filled */
    int axis;
    double base, scale;
    int64_t n[BINS];
    Bounds bin[BINS];
} Bins;

/* Prepares the empty bins of a node of `count` refs at `depth` within `all`; 0 (inactive) when the node
 * is not split by the heuristic: a leaf, past MAX_SAH_DEPTH (halved: only a pathological mesh, e.g. many
 * long slivers, splits that unevenly; the depth stays below MAX_SAH_DEPTH + log2(m), the recursion and the
 * query stacks small), or every centre in one place (any halving will do). */
static int bins_start(Bins *s, int64_t count, int32_t depth, const Bounds *all) {
    s->active = 0;
    if (count <= LEAF_SIZE || depth >= MAX_SAH_DEPTH) return 0;
    const double *clo = all->clo, *chi = all->chi;
    int axis = 0;
    for (int k = 1; k < 3; k++)
        if (chi[k] - clo[k] > chi[axis] - clo[axis]) axis = k;
    double extent = chi[axis] - clo[axis];
    if (!(extent > 0)) return 0;
    s->axis = axis;
    s->base = clo[axis];
    s->scale = BINS / extent;
    for (int j = 0; j < BINS; j++) {
        s->n[j] = 0;
        bounds_empty(&s->bin[j]);
    }
    s->active = 1;
    return 1;
}

static inline void bins_add(Bins *s, Ref *r) {
    int j = (int)((r->lo[s->axis] + r->hi[s->axis] - s->base) * s->scale);
    j = j >= BINS ? BINS - 1 : (j < 0 ? 0 : j);
    r->slot = j; /* the partition of the node reads it */
    s->n[j]++;
    bounds_add(&s->bin[j], r);
}

/* Splits refs[start, start + count) in two by the binned surface area heuristic, their bins filled;
 * returns the size of the first part, or -1 when no split has a cost (the caller halves). The bounds
 * of the parts come from the bins, and the pass that partitions the refs fills the bins of both parts
 * (`next`, inactive for a part that the heuristic will not split): one pass over the refs a level. */
static int64_t split(Builder *b, int64_t start, int64_t count, const Bins *bins, int32_t depth, Bounds parts[2],
                     Bins next[2]) {
    double left_cost[BINS];
    double alo[3] = {INFINITY, INFINITY, INFINITY}, ahi[3] = {-INFINITY, -INFINITY, -INFINITY};
    int64_t running = 0;
    for (int j = 0; j < BINS - 1; j++) {
        for (int k = 0; k < 3; k++) {
            alo[k] = bins->bin[j].lo[k] < alo[k] ? bins->bin[j].lo[k] : alo[k];
            ahi[k] = bins->bin[j].hi[k] > ahi[k] ? bins->bin[j].hi[k] : ahi[k];
        }
        running += bins->n[j];
        double dx = ahi[0] - alo[0], dy = ahi[1] - alo[1], dz = ahi[2] - alo[2];
        left_cost[j] = running ? (dx * dy + dy * dz + dz * dx) * (double)running : 0.0;
    }
    for (int k = 0; k < 3; k++) {
        alo[k] = INFINITY;
        ahi[k] = -INFINITY;
    }
    running = 0;
    double best_cost = INFINITY;
    int best_bin = -1;
    for (int j = BINS - 1; j > 0; j--) {
        for (int k = 0; k < 3; k++) {
            alo[k] = bins->bin[j].lo[k] < alo[k] ? bins->bin[j].lo[k] : alo[k];
            ahi[k] = bins->bin[j].hi[k] > ahi[k] ? bins->bin[j].hi[k] : ahi[k];
        }
        running += bins->n[j];
        if (running == 0 || running == count) continue;
        double dx = ahi[0] - alo[0], dy = ahi[1] - alo[1], dz = ahi[2] - alo[2];
        double cost = left_cost[j - 1] + (dx * dy + dy * dz + dz * dx) * (double)running;
        if (cost < best_cost) {
            best_cost = cost;
            best_bin = j; /* bins [0, j) go left */
        }
    }
    if (best_bin < 0) return -1;
    int64_t binned = 0; /* refs of the first part: 0 < binned < count (the costs above skip the others) */
    bounds_empty(&parts[0]);
    bounds_empty(&parts[1]);
    for (int j = 0; j < BINS; j++) {
        if (j < best_bin) binned += bins->n[j];
        bounds_merge(&parts[j >= best_bin], &bins->bin[j]);
    }
    Bins *first = &next[0], *second = &next[1];
    bins_start(first, binned, depth + 1, &parts[0]);
    bins_start(second, count - binned, depth + 1, &parts[1]);
    Ref *refs = b->refs;
    int64_t i = start, j = start + count - 1;
    while (i <= j) { /* each ref is looked at once, where it is when it is placed */
        Ref *r = &refs[i];
        if (r->slot < best_bin) { /* its bin: those below best_bin go first */
            if (first->active) bins_add(first, r);
            i++;
        } else {
            if (second->active) bins_add(second, r);
            Ref swap = *r;
            *r = refs[j];
            refs[j] = swap;
            j--;
        }
    }
    int64_t left = i - start;
    if (left != binned) { /* (never: the bins and the partition place a ref alike) */
        next[0].active = next[1].active = 0;
        bounds_of(refs + start, left, &parts[0]);
        bounds_of(refs + start + left, count - left, &parts[1]);
    }
    return left > 0 && left < count ? left : -1;
}

/* The record of the triangle at BVH position i: TRI doubles and the caller's index. */
static inline void write_record(Builder *b, int64_t i) {
    const double *vertices = b->vertices;
    const int64_t *faces = b->faces;
    int64_t t = b->refs[i].id;
    const double *a = vertices + 3 * faces[3 * t], *v1 = vertices + 3 * faces[3 * t + 1],
                 *v2 = vertices + 3 * faces[3 * t + 2];
    double *r = b->tri + TRI * i;
    for (int k = 0; k < 3; k++) {
        r[k] = a[k];
        r[3 + k] = v1[k] - a[k];
        r[6 + k] = v2[k] - a[k];
    }
    cross3(r + 3, r + 6, r + 9);
    double norm = sqrt(dot3(r + 9, r + 9));
    for (int k = 0; k < 3; k++) r[9 + k] = norm > 0 ? r[9 + k] / norm : 0.0;
    r[12] = dot3(r + 3, r + 3);
    r[13] = dot3(r + 3, r + 6);
    r[14] = dot3(r + 6, r + 6);
    double det = r[12] * r[14] - r[13] * r[13];
    r[15] = norm > 0 && det > 1e-12 * r[12] * r[14] ? 0.0 : 1.0; /* flat: no plane to project on */
    b->ids[i] = t;
}

#define AHEAD 64 /* triangles whose rows of faces, then corners, are fetched ahead of their records */

/* The triangles' records in their final (BVH) order. Their corners lie anywhere in the vertex array
 * (an STL's vertices come in the order of a hash): the rows of `faces` are fetched a block of AHEAD
 * triangles before their corners, the corners a block before the records are written, so that the
 * cache misses overlap instead of following one another. */
static void write_records(Builder *b, int64_t m) {
    for (int64_t block = 0; block < m; block += AHEAD) {
        int64_t end = block + AHEAD < m ? block + AHEAD : m;
#if defined(__GNUC__)
        for (int64_t i = end; i < end + AHEAD && i < m; i++) __builtin_prefetch(b->faces + 3 * b->refs[i].id);
        for (int64_t i = block; i < end; i++) {
            const int64_t *f = b->faces + 3 * b->refs[i].id;
            for (int k = 0; k < 3; k++) __builtin_prefetch(b->vertices + 3 * f[k]);
        }
#endif
        for (int64_t i = block; i < end; i++) write_record(b, i);
    }
}

/* The node `index` over refs[start, start + count) of bounds `bounds`; `bins` its filled bins when its
 * parent's pass filled them (else NULL or inactive: binned here when the heuristic splits it). */
static void build_node(Builder *b, int32_t index, int64_t start, int64_t count, int32_t depth, const Bounds *bounds,
                       const Bins *bins) {
    Node *node = &b->nodes[index];
    for (int k = 0; k < 3; k++) {
        node->lo[k] = round_down(bounds->lo[k]);
        node->hi[k] = round_up(bounds->hi[k]);
    }
    if (depth > b->depth) b->depth = depth;
    if (count <= LEAF_SIZE) {
        node->start = (int32_t)start;
        node->count = (int32_t)count;
        return;
    }
    Bins own;
    if (!bins || !bins->active) {
        if (bins_start(&own, count, depth, bounds))
            for (int64_t i = start; i < start + count; i++) bins_add(&own, &b->refs[i]);
        bins = &own;
    }
    Bounds parts[2];
    Bins *next = NULL;
    int64_t left = -1;
    if (bins->active) { /* (depth < MAX_SAH_DEPTH) */
        next = b->bins + 2 * (depth + 1);
        left = split(b, start, count, bins, depth, parts, next);
    }
    if (left < 0) { /* halved */
        left = count / 2;
        next = NULL;
        bounds_of(b->refs + start, left, &parts[0]);
        bounds_of(b->refs + start + left, count - left, &parts[1]);
    }
    int32_t child = b->used;
    b->used += 2;
    node->start = child;
    node->count = 0;
    build_node(b, child, start, left, depth + 1, &parts[0], next ? &next[0] : NULL);
    build_node(b, child + 1, start + left, count - left, depth + 1, &parts[1], next ? &next[1] : NULL);
}

#define HUGE_PAGE ((size_t)2 << 20)

/* 64-byte aligned memory (cache lines); *block is what to free. A block of several MiB is aligned to
 * 2 MiB and offered transparent huge pages (Linux): the 33 MB of triangle records of a 260 000-triangle
 * arch then fault in 2 MiB at a time instead of 4 KiB (page faults were a tenth of the build). */
static void *aligned(size_t bytes, void **block) {
#ifdef MADV_HUGEPAGE
    if (bytes >= 4 * HUGE_PAGE) {
        if (posix_memalign(block, HUGE_PAGE, bytes) != 0) return *block = NULL;
        madvise(*block, bytes, MADV_HUGEPAGE); /* (a request: without, the usual pages) */
        return *block;
    }
#endif
    *block = malloc(bytes + 64);
    if (!*block) return NULL;
    return (void *)(((uintptr_t)*block + 63) & ~(uintptr_t)63);
}

/* Builds the hierarchy of triangles `faces` (m, 3) over `vertices` (n, 3), both C-ordered. */
int mq_build(const double *vertices, int64_t n, const int64_t *faces, int64_t m, void **out) {
    *out = NULL;
    if (n < 0 || m < 1 || m > (int64_t)INT32_MAX / 2) return MQ_ESIZE;
    for (int64_t i = 0; i < 3 * n; i++)
        if (!isfinite(vertices[i])) return MQ_EFINITE;
    for (int64_t i = 0; i < 3 * m; i++)
        if (faces[i] < 0 || faces[i] >= n) return MQ_EINDEX;
    Mesh *mesh = calloc(1, sizeof(Mesh));
    void *node_block = NULL, *tri_block = NULL, *ref_block = NULL;
    Ref *refs = aligned(sizeof(Ref) * (size_t)m, &ref_block);
    int64_t *ids = malloc(sizeof(int64_t) * (size_t)m);
    int32_t *slot = malloc(sizeof(int32_t) * (size_t)m);
    Node *nodes = aligned(sizeof(Node) * (size_t)(2 * m), &node_block);
    double *tri = aligned(sizeof(double) * TRI * (size_t)m, &tri_block);
    struct Bins *bins = malloc(sizeof(struct Bins) * 2 * (MAX_SAH_DEPTH + 1));
    if (!mesh || !refs || !ids || !slot || !nodes || !tri || !bins) {
        free(bins);
        free(mesh);
        free(ref_block);
        free(ids);
        free(slot);
        free(node_block);
        free(tri_block);
        return MQ_ENOMEM;
    }
    Bounds root;
    bounds_empty(&root);
    for (int64_t t = 0; t < m; t++) {
        const double *p[3] = {vertices + 3 * faces[3 * t], vertices + 3 * faces[3 * t + 1],
                              vertices + 3 * faces[3 * t + 2]};
        for (int k = 0; k < 3; k++) { /* fmin and fmax of finite values, without their calls */
            double low = p[1][k] < p[2][k] ? p[1][k] : p[2][k], high = p[1][k] > p[2][k] ? p[1][k] : p[2][k];
            refs[t].lo[k] = p[0][k] < low ? p[0][k] : low;
            refs[t].hi[k] = p[0][k] > high ? p[0][k] : high;
        }
        refs[t].id = (int32_t)t;
        bounds_add(&root, &refs[t]);
    }
    /* the root at index 1 (0 unused), so that every pair of siblings starts at an even index:
     * both in one 64-byte line */
    Builder b = {refs, nodes, 2, 0, vertices, faces, tri, ids, bins};
    build_node(&b, 1, 0, m, 0, &root, NULL);
    write_records(&b, m);
    free(ref_block);
    free(bins);
    mesh->nodes = nodes;
    mesh->node_block = node_block;
    mesh->node_count = b.used - 1;
    mesh->depth = b.depth;
    mesh->triangle_count = m;
    mesh->tri = tri;
    mesh->tri_block = tri_block;
    mesh->ids = ids;
    for (int64_t i = 0; i < m; i++) slot[ids[i]] = (int32_t)i;
    mesh->slot = slot;
    *out = mesh;
    return MQ_OK;
}

void mq_free(void *handle) {
    Mesh *mesh = handle;
    if (!mesh) return;
    free(mesh->node_block);
    free(mesh->tri_block);
    free(mesh->ids);
    free(mesh->slot);
    free(mesh);
}

int64_t mq_node_count(const void *handle) { return ((const Mesh *)handle)->node_count; }

int64_t mq_depth(const void *handle) { return ((const Mesh *)handle)->depth; }

/* ---------------------------------------------------------- triangle maths */

/* Closest point of the segment p0 + s d (s in [0, 1]) to q (relative to p0: w = q - p0): s. */
static inline double segment_parameter(const double *w, const double *d) {
    double dd = dot3(d, d);
    if (!(dd > 0)) return 0.0;
    double s = dot3(w, d) / dd;
    return s < 0 ? 0.0 : (s > 1 ? 1.0 : s);
}

/* A flat triangle (zero area, or a sliver whose Gram determinant is rounding): its three edges. */
static double closest_on_edges(const double *w, const double *e1, const double *e2, double *u_out, double *v_out) {
    double best = INFINITY, r[3], s, d;
    s = segment_parameter(w, e1); /* edge a-b: u = s, v = 0 */
    for (int k = 0; k < 3; k++) r[k] = w[k] - s * e1[k];
    d = dot3(r, r);
    if (d < best) {
        best = d;
        *u_out = s;
        *v_out = 0;
    }
    s = segment_parameter(w, e2); /* edge a-c: u = 0, v = s */
    for (int k = 0; k < 3; k++) r[k] = w[k] - s * e2[k];
    d = dot3(r, r);
    if (d < best) {
        best = d;
        *u_out = 0;
        *v_out = s;
    }
    double wb[3] = {w[0] - e1[0], w[1] - e1[1], w[2] - e1[2]};
    double bc[3] = {e2[0] - e1[0], e2[1] - e1[1], e2[2] - e1[2]};
    s = segment_parameter(wb, bc); /* edge b-c: u = 1 - s, v = s */
    for (int k = 0; k < 3; k++) r[k] = wb[k] - s * bc[k];
    d = dot3(r, r);
    if (d < best) {
        best = d;
        *u_out = 1 - s;
        *v_out = s;
    }
    return best;
}

/* Squared distance from p to the triangle a + u (b - a) + v (c - a) and the (u, v) of its closest
 * point, or INFINITY without (u, v) when its plane is already `bound` or farther.
 *
 * The Voronoi regions of the corners, edges and face (Ericson, Real-Time Collision Detection,
 * 5.1.5): every denominator is a squared edge length or the Gram determinant, positive on a
 * triangle that is not flat; a flat one is its edges. */
static inline double closest_on_triangle(const double *p, const double *t, double bound, double *u_out,
                                         double *v_out) {
    const double *a = t, *e1 = t + 3, *e2 = t + 6, *n = t + 9;
    double w[3] = {p[0] - a[0], p[1] - a[1], p[2] - a[2]};
    double plane = dot3(w, n);
    if (plane * plane >= bound) return INFINITY; /* the plane is a lower bound (n is zero if flat) */
    if (t[15] != 0) return closest_on_edges(w, e1, e2, u_out, v_out);
    double aa = t[12], ab = t[13], bb = t[14];
    double d1 = dot3(e1, w), d2 = dot3(e2, w);
    double u, v;
    double d3 = d1 - aa, d4 = d2 - ab; /* the same products from b */
    double d5 = d1 - ab, d6 = d2 - bb; /* and from c */
    if (d1 <= 0 && d2 <= 0) {
        u = 0, v = 0;
    } else if (d3 >= 0 && d4 <= d3) {
        u = 1, v = 0;
    } else if (d1 * d4 - d3 * d2 <= 0 && d1 >= 0 && d3 <= 0) {
        u = d1 / (d1 - d3), v = 0;
    } else if (d6 >= 0 && d5 <= d6) {
        u = 0, v = 1;
    } else if (d5 * d2 - d1 * d6 <= 0 && d2 >= 0 && d6 <= 0) {
        u = 0, v = d2 / (d2 - d6);
    } else if (d3 * d6 - d5 * d4 <= 0 && d4 - d3 >= 0 && d5 - d6 >= 0) {
        v = (d4 - d3) / ((d4 - d3) + (d5 - d6));
        u = 1 - v;
    } else {
        double vb = d5 * d2 - d1 * d6, vc = d1 * d4 - d3 * d2, va = d3 * d6 - d5 * d4;
        double inv = 1.0 / (va + vb + vc);
        u = vb * inv, v = vc * inv;
        *u_out = u;
        *v_out = v;
        return plane * plane; /* on the face: the distance to the plane */
    }
    double r[3];
    for (int k = 0; k < 3; k++) r[k] = w[k] - u * e1[k] - v * e2[k];
    *u_out = u;
    *v_out = v;
    return dot3(r, r);
}

static inline double box_distance2(const Node *node, const double *p) {
    double d2 = 0;
    for (int k = 0; k < 3; k++) {
        double lo = node->lo[k], hi = node->hi[k];
        double d = p[k] < lo ? lo - p[k] : (p[k] > hi ? p[k] - hi : 0.0);
        d2 += d * d;
    }
    return d2;
}

/* ------------------------------------------------------------- queries */

typedef struct {
    int32_t node;
    double key; /* squared box distance (closest points) or entry parameter (rays) */
} Entry;

/* Both children of an inner node whose key (a distance or a ray's entry) is below best, the
   nearer on top of the stack so that it is searched first. */
static inline void push_children(Entry *stack, int *top, int32_t left, double key_left, double key_right,
                                 double best) {
    int32_t right = left + 1;
    if (key_left <= key_right) {
        if (key_right < best) stack[(*top)++] = (Entry){right, key_right};
        if (key_left < best) stack[(*top)++] = (Entry){left, key_left};
    } else {
        if (key_left < best) stack[(*top)++] = (Entry){left, key_left};
        if (key_right < best) stack[(*top)++] = (Entry){right, key_right};
    }
}

/* The closest point of the mesh to p among the triangles nearer than sqrt(bound2) (INFINITY: all). */
static void closest_one(const Mesh *mesh, Entry *stack, const double *p, double bound2, double *point,
                        int64_t *triangle, double *uv, double *normal, double *distance) {
    double best = bound2, bu = 0, bv = 0;
    int64_t best_index = -1;
    int top = 0;
    stack[top++] = (Entry){1, box_distance2(&mesh->nodes[1], p)};
    while (top) {
        Entry e = stack[--top];
        if (e.key >= best) continue;
        const Node *node = &mesh->nodes[e.node];
        if (node->count) {
            for (int32_t i = node->start; i < node->start + node->count; i++) {
                double u = 0, v = 0, d = closest_on_triangle(p, mesh->tri + TRI * (size_t)i, best, &u, &v);
                if (d < best) {
                    best = d;
                    bu = u;
                    bv = v;
                    best_index = i;
                }
            }
            continue;
        }
        int32_t left = node->start;
        push_children(stack, &top, left, box_distance2(&mesh->nodes[left], p), box_distance2(&mesh->nodes[left + 1], p),
                      best);
    }
    if (best_index < 0) { /* nothing within the bound (or the distances overflow: coordinates near 1e154) */
        point[0] = point[1] = point[2] = NAN;
        *triangle = -1;
        uv[0] = uv[1] = 0.0;
        normal[0] = normal[1] = normal[2] = 0.0;
        *distance = INFINITY;
        return;
    }
    const double *t = mesh->tri + TRI * (size_t)best_index;
    for (int k = 0; k < 3; k++) point[k] = t[k] + bu * t[3 + k] + bv * t[6 + k];
    *triangle = mesh->ids[best_index];
    uv[0] = bu;
    uv[1] = bv;
    for (int k = 0; k < 3; k++) normal[k] = t[9 + k]; /* unit, zeros if flat */
    *distance = sqrt(best);
}

/* Moller-Trumbore in float64; a hit within 1e-12 of an edge (in barycentric units) counts, so a
 * ray through a shared edge or corner hits one of its triangles rather than slipping between.
 * A flat triangle (see closest_on_triangle) is a line: no ray hits it. */
static inline int ray_triangle(const double *o, const double *d, const double *t, double t_max, double *t_hit,
                               double *u_out, double *v_out) {
    const double *a = t, *e1 = t + 3, *e2 = t + 6;
    double pv[3], qv[3], s[3];
    if (t[15] != 0) return 0;
    cross3(d, e2, pv);
    double det = dot3(e1, pv);
    if (det == 0 || !isfinite(det)) return 0;
    double inv = 1.0 / det;
    for (int k = 0; k < 3; k++) s[k] = o[k] - a[k];
    double u = dot3(s, pv) * inv;
    const double tol = 1e-12;
    if (u < -tol || u > 1 + tol) return 0;
    cross3(s, e1, qv);
    double v = dot3(d, qv) * inv;
    if (v < -tol || u + v > 1 + tol) return 0;
    double th = dot3(e2, qv) * inv;
    if (!(th >= 0) || !(th < t_max)) return 0;
    th += 0.0; /* -0 to +0 */
    *t_hit = th;
    *u_out = u;
    *v_out = v;
    return 1;
}

/* Entry parameter of the ray into a node's box, or INFINITY when it misses it before t_max. */
static inline double box_entry(const Node *node, const double *o, const double *inv, double t_max) {
    double t0 = 0.0, t1 = t_max;
    for (int k = 0; k < 3; k++) {
        double a = ((double)node->lo[k] - o[k]) * inv[k], b = ((double)node->hi[k] - o[k]) * inv[k];
        if (a > b) {
            double swap = a;
            a = b;
            b = swap;
        }
        /* NaN (origin on a slab of a zero direction component: 0 * inf) leaves the range as it is */
        if (a > t0) t0 = a;
        if (b < t1) t1 = b;
    }
    return t0 <= t1 ? t0 : INFINITY;
}

static void cast_one(const Mesh *mesh, Entry *stack, const double *o, const double *d, double *t_out,
                     int64_t *triangle, double *uv, double *normal) {
    double inv[3], best = INFINITY, bu = 0, bv = 0;
    int64_t best_index = -1;
    for (int k = 0; k < 3; k++) inv[k] = 1.0 / d[k];
    int top = 0;
    double entry = box_entry(&mesh->nodes[1], o, inv, INFINITY);
    if (entry < INFINITY) stack[top++] = (Entry){1, entry};
    while (top) {
        Entry e = stack[--top];
        if (e.key >= best) continue;
        const Node *node = &mesh->nodes[e.node];
        if (node->count) {
            for (int32_t i = node->start; i < node->start + node->count; i++) {
                double th, u, v;
                if (ray_triangle(o, d, mesh->tri + TRI * (size_t)i, best, &th, &u, &v)) {
                    best = th;
                    bu = u;
                    bv = v;
                    best_index = i;
                }
            }
            continue;
        }
        int32_t left = node->start;
        push_children(stack, &top, left, box_entry(&mesh->nodes[left], o, inv, best),
                      box_entry(&mesh->nodes[left + 1], o, inv, best), best);
    }
    if (best_index < 0) {
        *t_out = INFINITY;
        *triangle = -1;
        uv[0] = uv[1] = 0.0;
        normal[0] = normal[1] = normal[2] = 0.0;
        return;
    }
    *t_out = best;
    *triangle = mesh->ids[best_index];
    uv[0] = bu;
    uv[1] = bv;
    for (int k = 0; k < 3; k++) normal[k] = mesh->tri[TRI * (size_t)best_index + 9 + k];
}

typedef struct {
    const Mesh *mesh;
    const double *a, *b; /* points, or ray origins and directions */
    double *point_or_t, *uv, *normal, *distance;
    int64_t *triangle;
    const int64_t *order; /* the queries in this order (near ones one after another), or NULL */
    int64_t begin, end;
    double bound2; /* closest points: only triangles nearer than its square root */
    const double *bounds; /* closest points: a bound of each point's own (not squared), or NULL */
    const int64_t *hints; /* closest points: a triangle (the caller's index) near each point, -1 none; or NULL */
    int ray;
    int status;
} Job;

static void *run_job(void *arg) {
    Job *job = arg;
    Entry *stack = malloc(sizeof(Entry) * (size_t)(job->mesh->depth + 2));
    if (!stack) {
        job->status = MQ_ENOMEM;
        return NULL;
    }
    for (int64_t k = job->begin; k < job->end; k++) {
        int64_t i = job->order ? job->order[k] : k;
        if (job->ray)
            cast_one(job->mesh, stack, job->a + 3 * i, job->b + 3 * i, job->point_or_t + i, job->triangle + i,
                     job->uv + 2 * i, job->normal + 3 * i);
        else {
            double bound2 = job->bound2;
            if (job->bounds && job->bounds[i] * job->bounds[i] < bound2) bound2 = job->bounds[i] * job->bounds[i];
            if (job->hints && job->hints[i] >= 0) {
                /* the hint's own squared distance and a margin far beyond rounding (relative 1e-9, and
                 * 1e-12 mm² where it is 0: a triangle's plane test, a lower bound, can exceed a tiny
                 * distance by its rounding): the search then looks only where a triangle can be as near,
                 * and finds the same first nearest one */
                double u, v;
                const double *tri = job->mesh->tri + TRI * (size_t)job->mesh->slot[job->hints[i]];
                double d2 = closest_on_triangle(job->a + 3 * i, tri, INFINITY, &u, &v);
                double beyond = d2 * (1.0 + 1e-9) + 1e-12;
                if (beyond < bound2) bound2 = beyond;
            }
            closest_one(job->mesh, stack, job->a + 3 * i, bound2, job->point_or_t + 3 * i, job->triangle + i,
                        job->uv + 2 * i, job->normal + 3 * i, job->distance + i);
        }
    }
    free(stack);
    job->status = MQ_OK;
    return NULL;
}

/* Spreads the low 10 bits of x to every third bit. */
static uint32_t spread3(uint32_t x) {
    x &= 0x3ff;
    x = (x | x << 16) & 0x30000ffU;
    x = (x | x << 8) & 0x300f00fU;
    x = (x | x << 4) & 0x30c30c3U;
    x = (x | x << 2) & 0x9249249U;
    return x;
}

/* The indices of `count` points (count, 3) along a Morton (Z-order) curve of their bounding box
 * (1024 cells an axis),
 * so that queries near each other run one after another and find the nodes and triangles they
 * share still in the cache (random order: 2-4 times slower on a 260 000-triangle mesh). NULL when
 * out of memory (the queries then run in their own order). */
static int64_t *morton_order(const double *p, int64_t count) {
    uint32_t *key = malloc(sizeof(uint32_t) * 2 * (size_t)count);
    int64_t *order = malloc(sizeof(int64_t) * 2 * (size_t)count);
    if (!key || !order) {
        free(key);
        free(order);
        return NULL;
    }
    double lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int64_t i = 0; i < count; i++)
        for (int k = 0; k < 3; k++) {
            double x = p[3 * i + k];
            if (x < lo[k]) lo[k] = x;
            if (x > hi[k]) hi[k] = x;
        }
    double scale[3];
    for (int k = 0; k < 3; k++) scale[k] = hi[k] > lo[k] ? 1023.0 / (hi[k] - lo[k]) : 0.0;
    for (int64_t i = 0; i < count; i++) {
        uint32_t c[3];
        for (int k = 0; k < 3; k++) {
            double x = (p[3 * i + k] - lo[k]) * scale[k];
            c[k] = x >= 0 && x <= 1023.0 ? (uint32_t)x : 0; /* NaN or out of range: a corner */
        }
        key[i] = spread3(c[0]) | spread3(c[1]) << 1 | spread3(c[2]) << 2;
        order[i] = i;
    }
    /* least significant digit radix sort, 15 bits a pass over the 30-bit keys */
    uint32_t *key_in = key, *key_out = key + count;
    int64_t *in = order, *out = order + count;
    size_t *bucket = malloc(sizeof(size_t) * 32768);
    if (!bucket) {
        free(key);
        free(order);
        return NULL;
    }
    for (int shift = 0; shift < 30; shift += 15) {
        memset(bucket, 0, sizeof(size_t) * 32768);
        for (int64_t i = 0; i < count; i++) bucket[(key_in[i] >> shift) & 0x7fff]++;
        size_t sum = 0;
        for (int j = 0; j < 32768; j++) {
            size_t c = bucket[j];
            bucket[j] = sum;
            sum += c;
        }
        for (int64_t i = 0; i < count; i++) {
            size_t at = bucket[(key_in[i] >> shift) & 0x7fff]++;
            key_out[at] = key_in[i];
            out[at] = in[i];
        }
        uint32_t *ks = key_in;
        key_in = key_out;
        key_out = ks;
        int64_t *os = in;
        in = out;
        out = os;
    }
    free(bucket);
    free(key);
    /* two passes: the sorted indices are back in the first half */
    return order;
}

#define MAX_THREADS 64
#define SORT_FROM 2048 /* fewer queries than this run in their own order */

static int run(Job base, const double *where, int64_t count, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (count < 256 * (int64_t)threads) threads = (int)(count / 256) + 1; /* small batches: not worth a thread */
    if (threads > count) threads = count > 0 ? (int)count : 1;
    int64_t *order = count >= SORT_FROM ? morton_order(where, count) : NULL;
    base.order = order;
    Job jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int j = 0; j < threads; j++) {
        jobs[j] = base;
        jobs[j].begin = count * j / threads;
        jobs[j].end = count * (j + 1) / threads;
        jobs[j].status = MQ_ETHREAD;
    }
    for (int j = 1; j < threads; j++) started[j] = pthread_create(&ids[j], NULL, run_job, &jobs[j]) == 0;
    run_job(&jobs[0]);
    int status = jobs[0].status;
    for (int j = 1; j < threads; j++) {
        if (started[j]) {
            pthread_join(ids[j], NULL);
        } else {
            run_job(&jobs[j]); /* no thread to be had: done here */
        }
        if (jobs[j].status != MQ_OK) status = jobs[j].status;
    }
    free(order);
    return status;
}

/* Closest point on the mesh of each of `count` points (count, 3): the point (count, 3), the
 * caller's triangle index (count,), the barycentric (u, v) of the point on it (count, 2; the
 * point is a + u (b - a) + v (c - a)), the triangle's unit normal (count, 3), the distance (count,).
 * Only triangles nearer than `within` are searched (INFINITY: every one; it prunes the tree for far
 * points), and nearer than a bound of each point's own (`bounds`, count positive distances, or NULL)
 * and than just beyond its hint triangle's distance (`hints`, count triangles, the caller's indices,
 * -1 for none, or NULL): a point with none gets NaN, triangle -1, (0, 0), zeros and INFINITY. A point
 * with a triangle nearer than its bounds gets the same answer as without them (a hint never changes
 * an answer, it only narrows the search). */
int mq_closest(const void *handle, const double *points, int64_t count, int threads, double within,
               const double *bounds, const int64_t *hints, double *closest, int64_t *triangle, double *uv,
               double *normal, double *distance) {
    const Mesh *mesh = handle;
    if (!(within > 0)) return MQ_ESIZE; /* NaN or not positive */
    for (int64_t i = 0; bounds && i < count; i++)
        if (!(bounds[i] > 0)) return MQ_ESIZE;
    for (int64_t i = 0; hints && i < count; i++)
        if (hints[i] >= mesh->triangle_count) return MQ_EINDEX;
    Job job = {.mesh = handle, .a = points, .point_or_t = closest, .uv = uv, .normal = normal, .distance = distance,
               .triangle = triangle, .bound2 = within * within, .bounds = bounds, .hints = hints, .status = MQ_OK};
    return run(job, points, count, threads);
}

/* First hit of each of `count` rays origin + t direction, t >= 0 (in units of the direction's
 * length): t (INFINITY on a miss), the caller's triangle index (-1), (u, v), unit normal (zeros). */
int mq_cast(const void *handle, const double *origins, const double *directions, int64_t count, int threads,
            double *t_hit, int64_t *triangle, double *uv, double *normal) {
    Job job = {.mesh = handle, .a = origins, .b = directions, .point_or_t = t_hit, .uv = uv, .normal = normal,
               .triangle = triangle, .ray = 1, .status = MQ_OK};
    return run(job, origins, count, threads);
}
