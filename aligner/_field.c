/* Mean distance-field scores of many poses at once: the global step's strip search (aligner/_field.py,
 * DistanceField.mean_score_axes and mean_score).
 *
 * A pose's score is the mean, over its probe points, of a table value gathered at each point's grid
 * cell. NumPy computed it as several passes over (poses x probes) arrays (each axis's cell index, their
 * sum, the gather, the mean); here each pose's probes are looked up and summed at once, with exactly
 * NumPy's arithmetic: a coordinate's cell along an axis is ((c - origin) / voxel) + ((o / voxel) + 0.5)
 * (o the pose's offset along that axis), clipped to [0, limit] and truncated, times the axis' stride;
 * the mean is NumPy's pairwise sum of the values in probe order divided by their count. So the
 * results are NumPy's bit for bit (tests/aligner/test_field.py).
 *
 * Plain C99, no Python headers, in the same library as _meshquery.c (setup.py; loaded with ctypes).
 * Returns 0 or a negative error code.
 */
#include <stdint.h>
#include <stdlib.h>

#define FS_OK 0
#define FS_ENOMEM -1
#define FS_ESIZE -4

/* NumPy's pairwise summation of n values (numpy/_core/src/umath/loops_utils.h.src), from -0.0 */
static double pairwise(const double *v, int64_t n) {
    if (n < 8) {
        double res = -0.0;
        for (int64_t i = 0; i < n; i++) res += v[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; j++) r[j] = v[j];
        int64_t i;
        for (i = 8; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += v[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += v[i];
        return res;
    }
    int64_t half = n / 2;
    half -= half % 8;
    return pairwise(v, half) + pairwise(v + half, n - half);
}

/* what np.mean takes over one row: the sum, started from the reduction's 0.0, over the count */
static double mean(const double *v, int64_t n) { return (0.0 + pairwise(v, n)) / (double)n; }

/* a coordinate already scaled ((c - origin) / voxel) plus a pose's shift (o / voxel + 0.5): its cell
 * along the axis, clipped to the grid, times the stride */
static inline int64_t cell(double scaled, double shift, double limit, int64_t stride) {
    double u = scaled + shift;
    if (u < 0.0) u = 0.0;
    if (u > limit) u = limit;
    return (int64_t)(int32_t)u * stride;
}

typedef struct {
    const double *table; /* a score per grid cell, flat */
    double origin[3], voxel, limit[3];
    int64_t stride[3];
} Field;

static int field(Field *f, const double *table, const double *origin, double voxel, const double *limit,
                 const int64_t *stride) {
    f->table = table;
    f->voxel = voxel;
    for (int a = 0; a < 3; a++) {
        f->origin[a] = origin[a];
        f->limit[a] = limit[a];
        f->stride[a] = stride[a];
    }
    return voxel > 0.0 ? FS_OK : FS_ESIZE;
}

/* Poses in a grid: pose (i, j, k) moves the first `count` of the n points of set i, points[i] (3 each),
 * by (x[i, k], y[i, k], z[i, j]) (k < offsets, j < heights). out[i, j, k]: their mean score. */
int fs_mean_axes(const double *table, const double *origin, double voxel, const double *limit, const int64_t *stride,
                 const double *points, int64_t sets, int64_t n, int64_t count, const double *x, const double *y,
                 const double *z, int64_t heights, int64_t offsets, double *out) {
    Field f;
    if (field(&f, table, origin, voxel, limit, stride) != FS_OK || count < 1 || count > n || sets < 0 ||
        heights < 0 || offsets < 0)
        return FS_ESIZE;
    double *scaled = malloc((size_t)count * 3 * sizeof(double));
    int64_t *flat_xy = malloc((size_t)count * (size_t)offsets * sizeof(int64_t));
    int64_t *flat_z = malloc((size_t)count * (size_t)heights * sizeof(int64_t));
    double *values = malloc((size_t)count * sizeof(double));
    if (!scaled || !flat_xy || !flat_z || !values) {
        free(scaled);
        free(flat_xy);
        free(flat_z);
        free(values);
        return FS_ENOMEM;
    }
    for (int64_t i = 0; i < sets; i++) {
        const double *p = &points[3 * n * i];
        for (int64_t c = 0; c < count; c++)
            for (int a = 0; a < 3; a++) scaled[3 * c + a] = (p[3 * c + a] - f.origin[a]) / f.voxel;
        for (int64_t k = 0; k < offsets; k++) {
            double sx = x[offsets * i + k] / f.voxel + 0.5, sy = y[offsets * i + k] / f.voxel + 0.5;
            for (int64_t c = 0; c < count; c++)
                flat_xy[count * k + c] = cell(scaled[3 * c], sx, f.limit[0], f.stride[0]) +
                                         cell(scaled[3 * c + 1], sy, f.limit[1], f.stride[1]);
        }
        for (int64_t j = 0; j < heights; j++) {
            double sz = z[heights * i + j] / f.voxel + 0.5;
            for (int64_t c = 0; c < count; c++)
                flat_z[count * j + c] = cell(scaled[3 * c + 2], sz, f.limit[2], f.stride[2]);
        }
        for (int64_t j = 0; j < heights; j++) {
            for (int64_t k = 0; k < offsets; k++) {
                const int64_t *xy = &flat_xy[count * k], *zz = &flat_z[count * j];
                for (int64_t c = 0; c < count; c++) values[c] = f.table[xy[c] + zz[c]];
                out[(i * heights + j) * offsets + k] = mean(values, count);
            }
        }
    }
    free(scaled);
    free(flat_xy);
    free(flat_z);
    free(values);
    return FS_OK;
}

/* Poses one by one: pose r moves the n points of set which[r], points[which[r]] (3 each), by
 * offset[r] (3). out[r]: their mean score. */
int fs_mean(const double *table, const double *origin, double voxel, const double *limit, const int64_t *stride,
            const double *points, int64_t n, const int64_t *which, const double *offset, int64_t rows, double *out) {
    Field f;
    if (field(&f, table, origin, voxel, limit, stride) != FS_OK || n < 1 || rows < 0) return FS_ESIZE;
    double *values = malloc((size_t)n * sizeof(double));
    if (!values) return FS_ENOMEM;
    for (int64_t r = 0; r < rows; r++) {
        const double *p = &points[3 * n * which[r]];
        double shift[3];
        for (int a = 0; a < 3; a++) shift[a] = offset[3 * r + a] / f.voxel + 0.5;
        for (int64_t c = 0; c < n; c++) {
            int64_t flat = 0;
            for (int a = 0; a < 3; a++)
                flat += cell((p[3 * c + a] - f.origin[a]) / f.voxel, shift[a], f.limit[a], f.stride[a]);
            values[c] = f.table[flat];
        }
        out[r] = mean(values, n);
    }
    free(values);
    return FS_OK;
}
