// Ternary (W1.58A8) kernels for NVIDIA GPUs. Compiled at build time by build.rs (nvcc, cubins for
// sm_80/86/89/90 plus compute_80 PTX, in one fatbin), or at first use by NVRTC when the build had no
// nvcc. Every kernel must equal the CPU scalar oracle (src/kernels/scalar.rs, src/quant.rs) bit for
// bit on its integer outputs; tests/cuda.rs checks that on a GPU.
//
// Weights stay in the Hugging Face packed layout the checkpoints ship: uint8 [ceil(rows/4), cols],
// bits 2i..2i+1 of packed row p hold output row i*ceil(rows/4)+p as the code (value + 1).

typedef unsigned char u8;
typedef signed char i8;

#define MIN_ABS 1e-5f

// Per-token absmax int8 quantisation: one block per token row. s = 127 / max(|x|), q = round half
// to even (x * s), clamped to [-128, 127]; writes s. IEEE division and a plain multiply, as on
// the CPU (build.rs passes no fast-math flags).
extern "C" __global__ void quantize_rows(const float *__restrict__ x, i8 *__restrict__ q,
                                         float *__restrict__ scale, int cols) {
    const float *row = x + (long long)blockIdx.x * cols;
    i8 *out = q + (long long)blockIdx.x * cols;
    float m = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(row[c]));
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        m = threadIdx.x < (blockDim.x + 31) / 32 ? part[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if (threadIdx.x == 0) part[0] = m;
    }
    __syncthreads();
    const float s = __fdiv_rn(127.0f, fmaxf(part[0], MIN_ABS));
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = __fmul_rn(row[c], s);
        v = fminf(fmaxf(rintf(v), -128.0f), 127.0f);
        out[c] = (i8)(int)v;  // NaN: the CPU's saturating cast gives 0; (int)NaN is 0 here too
    }
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
}

// Four 2-bit codes of one byte's row `shift` → the byte's value for that row, minus one, packed
// with the three neighbouring bytes into an int8x4 for __dp4a.
__device__ __forceinline__ int decode4(unsigned int bytes4, int shift) {
    unsigned int codes = (bytes4 >> shift) & 0x03030303u;
    // code - 1 per byte, without borrows between bytes: (code | 0x80) - 1 then flip back.
    return (int)(((codes | 0x80808080u) - 0x01010101u) ^ 0x80808080u);
}

// acc[t][r] = sum_c T[r][c] * q[t][c]. One warp per packed row p (four output rows), grid.y over
// tokens. Each lane takes 4 consecutive columns per pass and runs one dp4a per output row.
extern "C" __global__ void ternary_gemv(const u8 *__restrict__ packed, int rows, int cols,
                                        const i8 *__restrict__ q, int *__restrict__ acc) {
    const int slab = (rows + 3) / 4;
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= slab) return;
    const int t = blockIdx.y;
    const u8 *w = packed + (long long)warp * cols;
    const i8 *x = q + (long long)t * cols;
    int s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    const int full = cols & ~3;
    for (int c = lane * 4; c < full; c += 128) {
        unsigned int wb = (unsigned int)w[c] | ((unsigned int)w[c + 1] << 8) |
                          ((unsigned int)w[c + 2] << 16) | ((unsigned int)w[c + 3] << 24);
        int xa = (int)(((unsigned int)(u8)x[c]) | ((unsigned int)(u8)x[c + 1] << 8) |
                       ((unsigned int)(u8)x[c + 2] << 16) | ((unsigned int)(u8)x[c + 3] << 24));
        s0 = __dp4a(decode4(wb, 0), xa, s0);
        s1 = __dp4a(decode4(wb, 2), xa, s1);
        s2 = __dp4a(decode4(wb, 4), xa, s2);
        s3 = __dp4a(decode4(wb, 6), xa, s3);
    }
    for (int c = full + lane; c < cols; c += 32) {  // the last cols % 4 columns
        int b = w[c], xv = x[c];
        s0 += ((b & 3) - 1) * xv;
        s1 += (((b >> 2) & 3) - 1) * xv;
        s2 += (((b >> 4) & 3) - 1) * xv;
        s3 += (((b >> 6) & 3) - 1) * xv;
    }
    for (int o = 16; o > 0; o >>= 1) {
        s0 += __shfl_xor_sync(0xffffffffu, s0, o);
        s1 += __shfl_xor_sync(0xffffffffu, s1, o);
        s2 += __shfl_xor_sync(0xffffffffu, s2, o);
        s3 += __shfl_xor_sync(0xffffffffu, s3, o);
    }
    if (lane == 0) {
        int *out = acc + (long long)t * rows;
        const int r = warp;
        out[r] = s0;
        if (r + slab < rows) out[r + slab] = s1;
        if (r + 2 * slab < rows) out[r + 2 * slab] = s2;
        if (r + 3 * slab < rows) out[r + 3 * slab] = s3;
    }
}
