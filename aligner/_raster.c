/* Mesial's orthographic z-buffer: per pixel of a view, the nearest triangle whose projection
 * holds the pixel's centre, what a ray cast along the view direction from that centre hits
 * (mq_cast in _meshquery.c) at a fraction of its cost (each triangle visits the few pixels of
 * its own box instead of each pixel descending a hierarchy).
 *
 * Plain C99, no Python headers, in the same library as _meshquery.c (aligner/_raster.py loads
 * it with ctypes). Returns 0 or a negative error code (the MQ_E* of _meshquery.c).
 */
#include <math.h>
#include <stdint.h>

#define MQ_OK 0
#define MQ_EINDEX -2
#define MQ_EFINITE -3
#define MQ_ESIZE -4

/* `points` (n, 3): the vertices in the view's frame, (x right, y up, depth along the view), mm;
 * `faces` (m, 3). Pixel (row i, column j) of the rows x cols image has its centre at
 * x = left + (j + 0.5) pixel, y = top - (i + 0.5) pixel. For each pixel: the depth of the nearest
 * triangle whose projection holds the centre (inside or on an edge, within 1e-12 in barycentric
 * units, as mq_cast), INFINITY if none; its index in `faces` (-1); the barycentric (u, v) of the
 * centre on it (zeros), the point being a + u (b - a) + v (c - a); its unit normal in the view's
 * frame (zeros). Of two triangles at the same depth, the first in `faces`. A triangle seen edge-on
 * or flat (mq_build's test: no plane, or a Gram determinant that is rounding) covers no pixel. */
int mq_raster(const double *points, int64_t n, const int64_t *faces, int64_t m, double left, double top,
              double pixel, int64_t rows, int64_t cols, double *depth, int64_t *triangle, double *uv,
              double *normal) {
    if (n < 0 || m < 0 || rows < 0 || cols < 0 || (cols > 0 && rows > INT64_MAX / cols)) return MQ_ESIZE;
    if (!(pixel > 0) || !isfinite(pixel) || !isfinite(left) || !isfinite(top)) return MQ_EFINITE;
    for (int64_t i = 0; i < 3 * n; i++)
        if (!isfinite(points[i])) return MQ_EFINITE;
    for (int64_t i = 0; i < 3 * m; i++)
        if (faces[i] < 0 || faces[i] >= n) return MQ_EINDEX;
    int64_t size = rows * cols;
    for (int64_t p = 0; p < size; p++) {
        depth[p] = INFINITY;
        triangle[p] = -1;
        uv[2 * p] = uv[2 * p + 1] = 0.0;
        normal[3 * p] = normal[3 * p + 1] = normal[3 * p + 2] = 0.0;
    }
    const double tol = 1e-12;
    for (int64_t t = 0; t < m; t++) {
        const double *a = points + 3 * faces[3 * t], *b = points + 3 * faces[3 * t + 1],
                     *c = points + 3 * faces[3 * t + 2];
        double e1[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]}, e2[3] = {c[0] - a[0], c[1] - a[1], c[2] - a[2]};
        double nx = e1[1] * e2[2] - e1[2] * e2[1], ny = e1[2] * e2[0] - e1[0] * e2[2], nz = e1[0] * e2[1] - e1[1] * e2[0];
        double norm = sqrt(nx * nx + ny * ny + nz * nz);
        double aa = e1[0] * e1[0] + e1[1] * e1[1] + e1[2] * e1[2], ab = e1[0] * e2[0] + e1[1] * e2[1] + e1[2] * e2[2],
               bb = e2[0] * e2[0] + e2[1] * e2[1] + e2[2] * e2[2];
        if (!(norm > 0) || !(aa * bb - ab * ab > 1e-12 * aa * bb)) continue; /* flat */
        double det = nz;                                                      /* the projection's doubled area */
        if (det == 0) continue;                                               /* edge-on */
        double inv = 1.0 / det;
        double lo_x = fmin(a[0], fmin(b[0], c[0])), hi_x = fmax(a[0], fmax(b[0], c[0]));
        double lo_y = fmin(a[1], fmin(b[1], c[1])), hi_y = fmax(a[1], fmax(b[1], c[1]));
        /* the pixels whose centres lie in the box (widened by 1e-9 pixel for the edges' tolerance,
         * 1e-12 of an edge, and the rounding of the centres) */
        double j0 = ceil((lo_x - left) / pixel - 0.5 - 1e-9), j1 = floor((hi_x - left) / pixel - 0.5 + 1e-9);
        double i0 = ceil((top - hi_y) / pixel - 0.5 - 1e-9), i1 = floor((top - lo_y) / pixel - 0.5 + 1e-9);
        if (j0 > j1 || i0 > i1) continue;
        if (j1 < 0 || i1 < 0 || j0 >= (double)cols || i0 >= (double)rows) continue;
        int64_t jlo = j0 < 0 ? 0 : (int64_t)j0, jhi = j1 >= (double)cols ? cols - 1 : (int64_t)j1;
        int64_t ilo = i0 < 0 ? 0 : (int64_t)i0, ihi = i1 >= (double)rows ? rows - 1 : (int64_t)i1;
        double unit[3] = {nx / norm, ny / norm, nz / norm};
        for (int64_t i = ilo; i <= ihi; i++) {
            double sy = top - ((double)i + 0.5) * pixel - a[1];
            for (int64_t j = jlo; j <= jhi; j++) {
                double sx = left + ((double)j + 0.5) * pixel - a[0];
                double u = (sx * e2[1] - sy * e2[0]) * inv;
                if (u < -tol || u > 1 + tol) continue;
                double v = (e1[0] * sy - e1[1] * sx) * inv;
                if (v < -tol || u + v > 1 + tol) continue;
                double z = a[2] + u * e1[2] + v * e2[2];
                int64_t p = i * cols + j;
                if (!(z < depth[p])) continue;
                depth[p] = z;
                triangle[p] = t;
                uv[2 * p] = u;
                uv[2 * p + 1] = v;
                for (int k = 0; k < 3; k++) normal[3 * p + k] = unit[k];
            }
        }
    }
    return MQ_OK;
}
