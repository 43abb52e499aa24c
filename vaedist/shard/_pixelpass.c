/* One pass over a decoded RGB image's pixels for both of its hashes' inputs (vaedist/shard/fingerprint.py):
 * over the memory of an image Pillow decoded, or over the rows of a JPEG as libjpeg-turbo emits them.
 *
 *   _pixelpass.hash_and_sample(array_capsule, width, height) -> (exact, box_sums) or None
 *   _pixelpass.use_libjpeg_of(path) -> bool
 *   _pixelpass.decode_jpeg(data, width, height) -> bool
 *   _pixelpass.decode_and_hash_jpeg(data, width, height) -> (exact, box_sums) or None
 *   _pixelpass.xxh3_variants() -> (in memory, rows), e.g. ("avx512", "avx2")
 *   _pixelpass.use_xxh3_for_rows(variant) -> bool
 *   _pixelpass.box_averages([box_sums, ...]) -> bytes
 *   _pixelpass.phash_codes(dct_rows) -> [code, ...]
 *
 * array_capsule: Pillow's own export of the image (`img.im.__arrow_c_array__()`, the Arrow C data interface):
 *   a fixed-size list of 4 bytes per pixel whose one child holds the pixels as RGBX, row by row.
 * exact: the 16-byte xxh3-128 digest of b"RGBA8 <width> <height>\n" and then those bytes, exactly what
 *   `xxhash.xxh3_128` gives for them (format.EXACT_HASH; the fourth byte of a decoder's RGB image is 255).
 * box_sums: 2048 bytes, the 32x32 box sums (uint16, native order, row by row) of the green values at the
 *   128x128 grid points of fingerprint._grid_offsets (column floor((2x+1) * width / 256), same for rows).
 * hash_and_sample -> None: the export is not one block of width x height RGBX pixels (take the numpy path).
 *
 * Why one pass in C: right after a decode, reading the image's 1.2 MB (640x480) again costs more than
 * hashing it. The numpy path reads it twice (xxhash, then numpy's take of ~5,000 cache lines): ~190 us per
 * image against ~90 us here (2-core CPU VM, 2026-12-03; 326 against 221 us when the host's memory was
 * contended). Here each row is hashed and its grid points, if any, summed while it is in the first-level
 * cache. xxh3 is xxHash's own code, dispatched at run time to SSE2/AVX2/AVX-512 like the Python package's
 * (built without it, at the baseline SSE2, it took 2x as long).
 *
 * Why a decode loop of our own (use_libjpeg_of, decode_jpeg, decode_and_hash_jpeg): the sharder decodes a
 * JPEG it stores unchanged only to check it, so it needs no image, only each row for a moment. Pillow's
 * decoder has libjpeg-turbo write each row to a 16-byte-aligned buffer, for which its SIMD colour conversion
 * uses non-temporal stores (movntdq: the row goes to memory, not to the cache), copies the row into the image,
 * and the hashes then read the image back. Here libjpeg-turbo writes a few rows at a time to a buffer that is
 * deliberately not 16-byte aligned, so that it uses ordinary stores, and each row is hashed at once, from
 * the first-level cache. The same library as Pillow's (use_libjpeg_of: the one Pillow's _imaging module is
 * linked to) with the same settings as Pillow's decoder (libjpeg's defaults, output JCS_EXT_RGBX), so the same
 * pixels; fingerprint.py checks that on each process's first image.
 * decode_jpeg -> False, decode_and_hash_jpeg -> None: not decoded here (no libjpeg-turbo found, an error, or
 * any warning, e.g. corrupt or truncated data): the caller decodes with Pillow, whose verdict stands.
 *
 * Which of xxh3's SIMD variants (xxh3_variants; use_xxh3_for_rows is for `python -m vaedist.bench shard`, which
 * sets the two side by side): the best this CPU runs for an image in memory, but at most AVX2 for the rows of
 * a decode. Called every few rows between libjpeg-turbo's AVX2 code, xxh3's AVX-512 loop made the row decode's
 * hashing cost 2.4x as much (+119 against +49 us per 640x480 image), though it hashes an image in memory
 * faster (+55 against +130 us after Pillow's decode; hot, 35 against 38 us); 2-core Xeon VM, 2026-12-04.
 * For the rows, the buffer is also placed so that xxh3's 64-byte stripes fall on cache lines, not across
 * them (+41 against +49 us there): see decode_rows.
 *
 * box_averages and phash_codes: the two numpy steps of a chunk's perceptual hashes that are exact arithmetic
 * (fingerprint._box_averages, fingerprint._phash_stack; SciPy's DCTs between them stay SciPy's, whose rounding
 * is imagehash's). box_averages: each image's 2048 bytes of box sums -> its 32x32 averages as float64 (native
 * order), (sum + 8) >> 4 as Image.reduce rounds. phash_codes: the second DCT's output, (n, 8, 32) float64
 * C-contiguous -> for each image the 64-bit code of its 8x8 lowest frequencies ([:, :, :8]), each bit "above
 * the median" row by row, the first most significant; the median is np.median's, the mean of the two middle
 * values. In the worker's loop the two took ~3 us per image less than numpy's steps (2026-12-04).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#  define HAVE_ROW_DECODER 1
#  include <dlfcn.h>
#  include <setjmp.h>
#  include "jpeglib.h" /* vaedist/shard/_libjpeg: libjpeg-turbo's headers for the 6b ABI (its README.md) */
#endif

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#  include "xxh_x86dispatch.c" /* includes xxhash.h (XXH_INLINE_ALL) and defines the *_dispatch functions */
#  include "xxh_x86dispatch.h" /* XXH3_128bits_update -> XXH3_128bits_update_dispatch */
#  define XXH3_DISPATCHED 1
#else
#  define XXH_INLINE_ALL
#  include "xxhash.h"
#endif

/* one of xxh3's streaming updates (XXH3_128bits_update and its SIMD variants share the state and the result) */
typedef XXH_errorcode (*Xxh3Update)(XXH3_state_t *, const void *, size_t);

typedef struct {
    const char *name;
    Xxh3Update update;
    int vector; /* xxhash.h's XXH_VECTOR_TYPE: XXH_featureTest() tells the best this CPU runs */
} Xxh3Variant;

#ifdef XXH3_DISPATCHED /* x86: xxh_x86dispatch.c's variants, each compiled for its own instruction set */
static const Xxh3Variant xxh3_known[] = {
    {"sse2", XXH3_update_sse2, XXH_SSE2},
#  if XXH_DISPATCH_AVX2
    {"avx2", XXH3_update_avx2, XXH_AVX2},
#  endif
#  if XXH_DISPATCH_AVX512
    {"avx512", XXH3_update_avx512, XXH_AVX512},
#  endif
};
static int xxh3_best_vector(void) { return XXH_featureTest(); }
#  define ROWS_AT_MOST_VECTOR XXH_AVX2 /* why: the header comment */
#else /* elsewhere the one variant xxhash.h chose at compile time (e.g. NEON) */
static XXH_errorcode xxh3_compiled(XXH3_state_t *state, const void *input, size_t length) {
    return XXH3_128bits_update(state, input, length);
}
static const Xxh3Variant xxh3_known[] = {{"compiled", xxh3_compiled, 0}};
static int xxh3_best_vector(void) { return 0; }
#  define ROWS_AT_MOST_VECTOR 0
#endif
#define XXH3_KNOWN (sizeof xxh3_known / sizeof xxh3_known[0])

static const Xxh3Variant *memory_xxh3, *rows_xxh3; /* set by the module's init */

static void choose_xxh3(void) {
    int best = xxh3_best_vector();
    for (size_t i = 0; i < XXH3_KNOWN; i++) {
        if (xxh3_known[i].vector > best) break; /* in increasing order */
        memory_xxh3 = &xxh3_known[i];
        if (xxh3_known[i].vector <= ROWS_AT_MOST_VECTOR) rows_xxh3 = &xxh3_known[i];
    }
}

#define GRID 128 /* fingerprint.SAMPLE_GRID */
#define BOX 4    /* fingerprint.BOX */
#define SIDE (GRID / BOX)

/* struct ArrowArray of the Arrow C data interface (a stable ABI) */
struct ArrowArray {
    int64_t length, null_count, offset, n_buffers, n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};

/* The row pass both sources share: rows in order, each hashed and its grid points summed while it is hot. */
typedef struct {
    XXH3_state_t state; /* declared 64-byte aligned */
    Xxh3Update update;
    Py_ssize_t columns[GRID]; /* byte offset of each grid column's green value within a row */
    uint16_t sums[SIDE * SIDE]; /* at most 16 x 255 */
    Py_ssize_t height;
    size_t row_bytes;
    int grid_row;
    int64_t next_row; /* the image row of grid row `grid_row`: floor((2 * grid_row + 1) * height / 256) */
    size_t header_length; /* bytes hashed before the first row */
} RowPass;

static void rowpass_start(RowPass *pass, Py_ssize_t width, Py_ssize_t height, Xxh3Update update) {
    for (int x = 0; x < GRID; x++)
        pass->columns[x] = (Py_ssize_t)(((2 * (int64_t)x + 1) * width) / (2 * GRID)) * 4 + 1;
    memset(pass->sums, 0, sizeof pass->sums);
    pass->height = height;
    pass->row_bytes = 4 * (size_t)width;
    pass->grid_row = 0;
    pass->next_row = height / (2 * GRID);
    char header[64];
    int header_length = snprintf(header, sizeof header, "RGBA8 %zd %zd\n", width, height);
    pass->header_length = (size_t)header_length;
    pass->update = update;
    XXH3_128bits_reset(&pass->state);
    update(&pass->state, header, (size_t)header_length);
}

/* `count` rows from image row `y` on, `stride` bytes apart: hashed in one call where they are contiguous */
static void rowpass_rows(RowPass *pass, int64_t y, const uint8_t *first, size_t count, size_t stride) {
    if (stride == pass->row_bytes) {
        pass->update(&pass->state, first, count * stride);
    } else {
        for (size_t i = 0; i < count; i++) pass->update(&pass->state, first + i * stride, pass->row_bytes);
    }
    /* the grid rows among them (an image row can be several grid rows: height < 128) */
    while (pass->grid_row < GRID && pass->next_row < y + (int64_t)count) {
        const uint8_t *row = first + (size_t)(pass->next_row - y) * stride;
        uint16_t *box_row = pass->sums + (pass->grid_row / BOX) * SIDE;
        const Py_ssize_t *column = pass->columns;
        for (int box = 0; box < SIDE; box++, column += BOX) /* the box's BOX points, then one add to its sum */
            box_row[box] += (uint16_t)(row[column[0]] + row[column[1]] + row[column[2]] + row[column[3]]);
        pass->grid_row++;
        pass->next_row = ((2 * (int64_t)pass->grid_row + 1) * pass->height) / (2 * GRID);
    }
}

static PyObject *rowpass_result(RowPass *pass) {
    XXH128_canonical_t digest;
    XXH128_canonicalFromHash(&digest, XXH3_128bits_digest(&pass->state)); /* big-endian: xxhash's digest() */
    return Py_BuildValue("(y#y#)", (const char *)digest.digest, (Py_ssize_t)sizeof digest.digest,
                         (const char *)pass->sums, (Py_ssize_t)sizeof pass->sums);
}

static PyObject *hash_and_sample(PyObject *self, PyObject *args) {
    PyObject *capsule;
    Py_ssize_t width, height;
    if (!PyArg_ParseTuple(args, "Onn", &capsule, &width, &height)) return NULL;
    if (width <= 0 || height <= 0) Py_RETURN_NONE;
    struct ArrowArray *array = PyCapsule_GetPointer(capsule, "arrow_array");
    if (array == NULL) return NULL;
    int64_t pixels = (int64_t)width * height;
    if (array->n_children != 1 || array->length != pixels || array->offset != 0) Py_RETURN_NONE;
    const struct ArrowArray *child = array->children[0];
    if (child->n_buffers != 2 || child->offset != 0 || child->length != 4 * pixels || child->buffers[1] == NULL)
        Py_RETURN_NONE;
    const uint8_t *rgbx = child->buffers[1];

    RowPass pass;
    Py_BEGIN_ALLOW_THREADS
    rowpass_start(&pass, width, height, memory_xxh3->update);
    rowpass_rows(&pass, 0, rgbx, (size_t)height, pass.row_bytes);
    Py_END_ALLOW_THREADS
    return rowpass_result(&pass);
}

#ifdef HAVE_ROW_DECODER
/* The calls into Pillow's libjpeg-turbo, looked up at run time (use_libjpeg_of): linking against it at build
 * time would need its file name, which each Pillow wheel mangles, and a system libjpeg is another library. */
typedef struct {
    struct jpeg_error_mgr *(*std_error)(struct jpeg_error_mgr *);
    void (*create_decompress)(j_decompress_ptr, int, size_t);
    void (*mem_src)(j_decompress_ptr, const unsigned char *, unsigned long);
    int (*read_header)(j_decompress_ptr, boolean);
    boolean (*start_decompress)(j_decompress_ptr);
    JDIMENSION (*read_scanlines)(j_decompress_ptr, JSAMPARRAY, JDIMENSION);
    boolean (*finish_decompress)(j_decompress_ptr);
    void (*destroy_decompress)(j_decompress_ptr);
} LibjpegCalls;
static LibjpegCalls libjpeg;
static int libjpeg_found = 0;

#define MAX_ROWS 16 /* libjpeg-turbo's rec_outbuf_height is at most 4 (max_v_samp_factor); more is refused */
#define ROWS_BYTES 32768

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
} StopOnProblem;

static void stop_on_error(j_common_ptr cinfo) { longjmp(((StopOnProblem *)cinfo->err)->jump, 1); }

/* A warning (level -1: corrupt data, a premature end, extraneous bytes) stops the decode too: Pillow, which
 * ignores warnings, then decides the verdict as it did before this loop existed. Trace messages (>= 0) are
 * ignored. Nothing is printed. */
static void stop_on_warning(j_common_ptr cinfo, int level) {
    if (level < 0) longjmp(((StopOnProblem *)cinfo->err)->jump, 1);
}

static void print_nothing(j_common_ptr cinfo) { (void)cinfo; }

/* Where, from a cache line's start, the rows from image row `y` on are written: never 16-byte aligned, so that
 * libjpeg-turbo's SIMD colour conversion writes them with ordinary stores, not the non-temporal ones it uses
 * for aligned rows (which would send them to memory, not to the cache, just before they are hashed); and where
 * contiguous rows are hashed, at the offset within a cache line that their first byte has in the hashed
 * stream, so that xxh3's 64-byte stripes, which start every 64 bytes of the stream, are whole cache lines. */
static size_t rows_offset(const RowPass *pass, JDIMENSION y, size_t row_bytes, size_t stride) {
    size_t offset = 4;
    if (pass != NULL && stride == row_bytes) offset = (pass->header_length + (size_t)y * row_bytes) % 64;
    return offset % 16 == 0 ? offset + 4 : offset; /* then some stripes straddle two lines: slower, not wrong */
}

/* Every row of a JPEG decoded to RGBX exactly as Pillow's decoder does it; each row given to `pass` (if not
 * NULL) while it is in the first-level cache. 1: decoded, no warning, `width` x `height` as the header said. */
static int decode_rows(const uint8_t *data, size_t size, Py_ssize_t width, Py_ssize_t height, RowPass *pass) {
    struct jpeg_decompress_struct cinfo;
    StopOnProblem problem;
    uint8_t *volatile buffer = NULL; /* volatile: read after a longjmp */
    volatile int decoded = 0;
    memset(&cinfo, 0, sizeof cinfo); /* so that destroy_decompress is safe whatever create_decompress did */
    cinfo.err = libjpeg.std_error(&problem.pub);
    problem.pub.error_exit = stop_on_error;
    problem.pub.emit_message = stop_on_warning;
    problem.pub.output_message = print_nothing;
    if (setjmp(problem.jump) == 0) {
        /* checks the library's ABI against these headers (version 62, the struct's size): a mismatch is an error */
        libjpeg.create_decompress(&cinfo, JPEG_LIB_VERSION, sizeof cinfo);
        libjpeg.mem_src(&cinfo, data, (unsigned long)size);
        if (libjpeg.read_header(&cinfo, TRUE) == JPEG_HEADER_OK) {
            cinfo.out_color_space = JCS_EXT_RGBX; /* what Pillow asks a libjpeg-turbo for an RGB image (X = 255);
                                                     a grey JPEG gives R = G = B = Y, as Pillow's RGB copy of it */
            libjpeg.start_decompress(&cinfo);
            const size_t row_bytes = 4 * (size_t)width;
            /* rows asked for per call: up to ~32 KB of them, so that they stay in the first-level cache */
            int rows = (int)(ROWS_BYTES / row_bytes);
            rows = rows > MAX_ROWS ? MAX_ROWS : rows < cinfo.rec_outbuf_height ? cinfo.rec_outbuf_height : rows;
            if ((Py_ssize_t)cinfo.output_width == width && (Py_ssize_t)cinfo.output_height == height
                && cinfo.output_components == 4 && rows >= 1 && rows <= MAX_ROWS) {
                /* contiguous where every row then starts off a 16-byte boundary (row_bytes a multiple of 16: a
                 * width that is a multiple of 4), else each row padded to the next multiple of 16 */
                const size_t stride = (row_bytes + 15) / 16 * 16;
                buffer = malloc((size_t)rows * stride + 64 + 64);
                if (buffer != NULL) {
                    uint8_t *line = (uint8_t *)(((uintptr_t)buffer + 63) / 64 * 64); /* a cache line's start */
                    JSAMPROW pointers[MAX_ROWS];
                    while (cinfo.output_scanline < cinfo.output_height) {
                        JDIMENSION y = cinfo.output_scanline;
                        const uint8_t *first = line + rows_offset(pass, y, row_bytes, stride);
                        for (int i = 0; i < rows; i++) pointers[i] = (JSAMPROW)first + (size_t)i * stride;
                        JDIMENSION emitted = libjpeg.read_scanlines(&cinfo, pointers, (JDIMENSION)rows);
                        if (emitted == 0) break; /* suspension: cannot happen with all the data in memory */
                        if (pass != NULL) rowpass_rows(pass, (int64_t)y, first, emitted, stride);
                    }
                    decoded = cinfo.output_scanline == cinfo.output_height && libjpeg.finish_decompress(&cinfo);
                }
            }
        }
    }
    libjpeg.destroy_decompress(&cinfo);
    free(buffer);
    return decoded;
}

static PyObject *use_libjpeg_of(PyObject *self, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) return NULL;
    /* the module Pillow has already loaded; dlsym on its handle searches it, then the libraries it is linked to */
    void *handle = dlopen(path, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == NULL) Py_RETURN_FALSE;
    LibjpegCalls found;
    found.std_error = (struct jpeg_error_mgr * (*)(struct jpeg_error_mgr *)) dlsym(handle, "jpeg_std_error");
    found.create_decompress = (void (*)(j_decompress_ptr, int, size_t))dlsym(handle, "jpeg_CreateDecompress");
    found.mem_src = (void (*)(j_decompress_ptr, const unsigned char *, unsigned long))dlsym(handle, "jpeg_mem_src");
    found.read_header = (int (*)(j_decompress_ptr, boolean))dlsym(handle, "jpeg_read_header");
    found.start_decompress = (boolean(*)(j_decompress_ptr))dlsym(handle, "jpeg_start_decompress");
    found.read_scanlines =
        (JDIMENSION(*)(j_decompress_ptr, JSAMPARRAY, JDIMENSION))dlsym(handle, "jpeg_read_scanlines");
    found.finish_decompress = (boolean(*)(j_decompress_ptr))dlsym(handle, "jpeg_finish_decompress");
    found.destroy_decompress = (void (*)(j_decompress_ptr))dlsym(handle, "jpeg_destroy_decompress");
    if (!(found.std_error && found.create_decompress && found.mem_src && found.read_header && found.start_decompress
          && found.read_scanlines && found.finish_decompress && found.destroy_decompress)) {
        dlclose(handle);
        Py_RETURN_FALSE; /* a module without libjpeg: whatever was found before stays in use */
    }
    libjpeg = found; /* the handle stays open: the library must outlive every decode */
    libjpeg_found = 1;
    Py_RETURN_TRUE;
}

/* decode_jpeg and decode_and_hash_jpeg: (data, width, height), the size from the header Pillow read */
static int decode_arguments(PyObject *args, Py_buffer *data, Py_ssize_t *width, Py_ssize_t *height) {
    if (!PyArg_ParseTuple(args, "y*nn", data, width, height)) return -1;
    if (libjpeg_found && *width > 0 && *height > 0) return 1;
    PyBuffer_Release(data);
    return 0;
}

static PyObject *decode_jpeg(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t width, height;
    int usable = decode_arguments(args, &data, &width, &height);
    if (usable < 0) return NULL;
    if (usable == 0) Py_RETURN_FALSE;
    int decoded;
    Py_BEGIN_ALLOW_THREADS
    decoded = decode_rows(data.buf, (size_t)data.len, width, height, NULL);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyBool_FromLong(decoded);
}

static PyObject *decode_and_hash_jpeg(PyObject *self, PyObject *args) {
    Py_buffer data;
    Py_ssize_t width, height;
    int usable = decode_arguments(args, &data, &width, &height);
    if (usable < 0) return NULL;
    if (usable == 0) Py_RETURN_NONE;
    RowPass pass;
    int decoded;
    Py_BEGIN_ALLOW_THREADS
    rowpass_start(&pass, width, height, rows_xxh3->update);
    decoded = decode_rows(data.buf, (size_t)data.len, width, height, &pass);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (!decoded) Py_RETURN_NONE;
    return rowpass_result(&pass);
}

#else /* no dlopen (Windows): Pillow decodes every JPEG */
static PyObject *use_libjpeg_of(PyObject *self, PyObject *args) { Py_RETURN_FALSE; }
static PyObject *decode_jpeg(PyObject *self, PyObject *args) { Py_RETURN_FALSE; }
static PyObject *decode_and_hash_jpeg(PyObject *self, PyObject *args) { Py_RETURN_NONE; }
#endif

static PyObject *xxh3_variants(PyObject *self, PyObject *args) {
    return Py_BuildValue("(ss)", memory_xxh3->name, rows_xxh3->name);
}

static PyObject *use_xxh3_for_rows(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (size_t i = 0; i < XXH3_KNOWN; i++) { /* memory_xxh3: the best this CPU runs (choose_xxh3) */
        if (strcmp(xxh3_known[i].name, name) == 0 && xxh3_known[i].vector <= memory_xxh3->vector) {
            rows_xxh3 = &xxh3_known[i];
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE; /* not compiled in, or not run by this CPU: the variant in use stays */
}

#define SIDE_VALUES (SIDE * SIDE)  /* fingerprint.PHASH_INPUT_SIDE ** 2 */
#define LOW 8                      /* fingerprint.PHASH_HASH_SIDE */

static PyObject *box_averages(PyObject *self, PyObject *sums_list) {
    PyObject *sums = PySequence_Fast(sums_list, "box_averages: a sequence of bytes");
    if (sums == NULL) return NULL;
    Py_ssize_t images = PySequence_Fast_GET_SIZE(sums);
    PyObject *averages = PyBytes_FromStringAndSize(NULL, images * SIDE_VALUES * (Py_ssize_t)sizeof(double));
    if (averages == NULL) {
        Py_DECREF(sums);
        return NULL;
    }
    double *out = (double *)PyBytes_AS_STRING(averages);
    for (Py_ssize_t i = 0; i < images; i++) {
        PyObject *one = PySequence_Fast_GET_ITEM(sums, i);
        if (!PyBytes_Check(one) || PyBytes_GET_SIZE(one) != SIDE_VALUES * (Py_ssize_t)sizeof(uint16_t)) {
            PyErr_Format(PyExc_ValueError, "box_averages: item %zd is not %d bytes of box sums", i,
                         SIDE_VALUES * (int)sizeof(uint16_t));
            Py_DECREF(sums);
            Py_DECREF(averages);
            return NULL;
        }
        uint16_t box[SIDE_VALUES];
        memcpy(box, PyBytes_AS_STRING(one), sizeof box); /* bytes objects need not be 2-byte aligned */
        for (int k = 0; k < SIDE_VALUES; k++) out[i * SIDE_VALUES + k] = (double)((box[k] + BOX * BOX / 2) >> 4);
    }
    Py_DECREF(sums);
    return averages;
}

/* the k-th smallest of a[0..n) (Wirth's selection), leaving a[0..k) <= a[k] <= a[k+1..n) */
static double select_kth(double *a, int n, int k) {
    int left = 0, right = n - 1;
    while (left < right) {
        double pivot = a[k];
        int i = left, j = right;
        do {
            while (a[i] < pivot) i++;
            while (pivot < a[j]) j--;
            if (i <= j) {
                double swap = a[i];
                a[i] = a[j];
                a[j] = swap;
                i++;
                j--;
            }
        } while (i <= j);
        if (j < k) left = i;
        if (k < i) right = j;
    }
    return a[k];
}

static PyObject *phash_codes(PyObject *self, PyObject *args) {
    Py_buffer rows;
    if (!PyArg_ParseTuple(args, "y*", &rows)) return NULL; /* y*: C-contiguous */
    const Py_ssize_t per_image = LOW * SIDE * (Py_ssize_t)sizeof(double);
    if (rows.len % per_image != 0) {
        PyBuffer_Release(&rows);
        return PyErr_Format(PyExc_ValueError, "phash_codes: %zd bytes is not (n, %d, %d) float64", rows.len, LOW, SIDE);
    }
    Py_ssize_t images = rows.len / per_image;
    PyObject *codes = PyList_New(images);
    if (codes == NULL) {
        PyBuffer_Release(&rows);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < images; i++) {
        const char *image = (const char *)rows.buf + i * per_image;
        double low[LOW * LOW], order[LOW * LOW];
        for (int r = 0; r < LOW; r++) /* [:, :, :8]: the row's first 8 values */
            memcpy(low + LOW * r, image + r * SIDE * sizeof(double), LOW * sizeof(double));
        memcpy(order, low, sizeof low);
        const int half = LOW * LOW / 2;
        double upper = select_kth(order, LOW * LOW, half), lower = order[0];
        for (int k = 1; k < half; k++) lower = order[k] > lower ? order[k] : lower; /* the largest below */
        double median = (lower + upper) / 2; /* np.median: the mean of the two, their sum halved */
        unsigned long long code = 0;
        for (int k = 0; k < LOW * LOW; k++) code = (code << 1) | (low[k] > median);
        PyObject *number = PyLong_FromUnsignedLongLong(code);
        if (number == NULL) {
            Py_DECREF(codes);
            PyBuffer_Release(&rows);
            return NULL;
        }
        PyList_SET_ITEM(codes, i, number);
    }
    PyBuffer_Release(&rows);
    return codes;
}

static PyMethodDef methods[] = {
    {"hash_and_sample", hash_and_sample, METH_VARARGS,
     "hash_and_sample(array_capsule, width, height) -> (exact digest, 32x32 uint16 box sums) or None"},
    {"use_libjpeg_of", use_libjpeg_of, METH_VARARGS,
     "use_libjpeg_of(path of a loaded module linked to libjpeg-turbo) -> whether its jpeg_* calls were found"},
    {"decode_jpeg", decode_jpeg, METH_VARARGS,
     "decode_jpeg(data, width, height) -> whether every row decoded without a warning"},
    {"decode_and_hash_jpeg", decode_and_hash_jpeg, METH_VARARGS,
     "decode_and_hash_jpeg(data, width, height) -> (exact digest, 32x32 uint16 box sums), or None where not decoded"},
    {"xxh3_variants", xxh3_variants, METH_NOARGS,
     "xxh3_variants() -> (xxh3's SIMD variant for an image in memory, the one for a decode's rows)"},
    {"use_xxh3_for_rows", use_xxh3_for_rows, METH_VARARGS,
     "use_xxh3_for_rows(name) -> whether the rows are hashed by that variant from now on (for benchmarks)"},
    {"box_averages", box_averages, METH_O,
     "box_averages([2048 bytes of box sums, ...]) -> the 32x32 averages of each, float64 bytes"},
    {"phash_codes", phash_codes, METH_VARARGS,
     "phash_codes((n, 8, 32) float64 DCT rows) -> each image's 64-bit pHash code"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_pixelpass", NULL, -1, methods};

PyMODINIT_FUNC PyInit__pixelpass(void) {
    choose_xxh3();
    return PyModule_Create(&module);
}
