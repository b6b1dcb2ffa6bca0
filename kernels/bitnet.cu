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
// -inf without math.h (NVRTC has no standard headers).
#define NEG_INF __int_as_float(0xff800000)

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

// ---------------------------------------------------------------------------------------------
// The forward pass (src/cuda/model.rs). Built with FMA contraction off (build.rs, NVRTC options)
// so each multiply and add rounds as the CPU's does; sums run in another order than on the CPU,
// so floats agree to rounding, integer accumulators exactly.

#define WARP 32

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ double block_sum_d(double v) {
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    double total = 0.0;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) total += part[i];
    return total;
}

__device__ float block_max_f(float v) {
    __shared__ float part[32];
    v = warp_max(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    float m = NEG_INF;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) m = fmaxf(m, part[i]);
    return m;
}

__device__ float block_sum_f(float v) {
    __shared__ float part[32];
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.0f;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) s += part[i];
    return s;
}

// RMSNorm of each row (one block per row): the mean square in double, as the CPU computes it.
extern "C" __global__ void rms_norm(const float *__restrict__ x, const float *__restrict__ w,
                                    float eps, float *__restrict__ out, int cols) {
    const float *row = x + (long long)blockIdx.x * cols;
    float *o = out + (long long)blockIdx.x * cols;
    double ss = 0.0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += (double)row[c] * (double)row[c];
    const double ms = block_sum_d(ss) / (double)cols;
    const float inv = 1.0f / sqrtf((float)ms + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = w[c] * (row[c] * inv);
}

// Per-token absmax int8 quantisation into rows of `stride` >= cols, zero-padded (the ternary
// layout pads columns to whole 256-column blocks). Same arithmetic as quantize_rows.
extern "C" __global__ void quantize_padded(const float *__restrict__ x, int cols, i8 *__restrict__ q,
                                           int stride, float *__restrict__ scale) {
    const float *row = x + (long long)blockIdx.x * cols;
    i8 *out = q + (long long)blockIdx.x * stride;
    float m = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(row[c]));
    m = block_max_f(m);
    const float s = __fdiv_rn(127.0f, fmaxf(m, MIN_ABS));
    for (int c = threadIdx.x; c < stride; c += blockDim.x) {
        if (c < cols) {
            float v = fminf(fmaxf(rintf(__fmul_rn(row[c], s)), -128.0f), 127.0f);
            out[c] = (i8)(int)v;
        } else {
            out[c] = 0;
        }
    }
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
}

#define LIN_TOK 4

// BitLinear on the CPU kernels' layout (src/kernels/packed.rs): row r is row_bytes bytes; in each
// 64-byte block b, byte j holds columns 256b + j + {0, 64, 128, 192} at bits 0, 2, 4, 6; padding
// columns hold code 1 (weight 0). One warp per output row, each lane a 16-byte load (16 columns
// of each of the four column groups) per pass, LIN_TOK tokens per warp so a weight load serves
// them all. out[t][r] = acc * (gamma / s[t]), as Linear::forward.
extern "C" __global__ void ternary_linear(const u8 *__restrict__ w, int rows, int row_bytes,
                                          const i8 *__restrict__ q, const float *__restrict__ s,
                                          float gamma, int n_tok, float *__restrict__ out) {
    const int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const int t0 = blockIdx.y * LIN_TOK;
    const int nt = min(LIN_TOK, n_tok - t0);
    const int stride = row_bytes * 4;
    const uint4 *wr = (const uint4 *)(w + (long long)r * row_bytes);
    int acc[LIN_TOK] = {0, 0, 0, 0};
    for (int i = lane; i < row_bytes / 16; i += WARP) {
        const uint4 wb = __ldg(wr + i);
        const int o = i * 16;
        const int base = (o / 64) * 256 + (o % 64);
        const unsigned int words[4] = {wb.x, wb.y, wb.z, wb.w};
#pragma unroll
        for (int k = 0; k < LIN_TOK; k++) {
            if (k < nt) {
                const i8 *qt = q + (long long)(t0 + k) * stride + base;
                int a = acc[k];
#pragma unroll
                for (int g = 0; g < 4; g++) {
                    const int4 x = *(const int4 *)(qt + 64 * g);
                    a = __dp4a(decode4(words[0], 2 * g), x.x, a);
                    a = __dp4a(decode4(words[1], 2 * g), x.y, a);
                    a = __dp4a(decode4(words[2], 2 * g), x.z, a);
                    a = __dp4a(decode4(words[3], 2 * g), x.w, a);
                }
                acc[k] = a;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < LIN_TOK; k++) {
        int a = acc[k];
        for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
        if (lane == 0 && k < nt) {
            const int t = t0 + k;
            out[(long long)t * rows + r] = (float)a * (gamma / s[t]);
        }
    }
}

// Appends n rows of keys or values at row *past of the cache (the position lives on the device
// so that a captured decode step serves every position).
extern "C" __global__ void kv_store(const float *__restrict__ src, float *__restrict__ cache,
                                    const int *__restrict__ past_at, int kv_dim, long long len) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) cache[(long long)(*past_at) * kv_dim + i] = src[i];
}

// Rotary embedding in place (HF half-split) on rows of n_heads heads, positions start + t, with
// start read from device memory. The
// angle is formed in f32 and its cos/sin taken in double, as Rope::cos_sin.
extern "C" __global__ void rope(float *__restrict__ x, int n_heads, int head_dim,
                                const int *__restrict__ start_at, const float *__restrict__ inv_freq) {
    const int t = blockIdx.x, h = blockIdx.y, half = head_dim / 2, start = *start_at;
    float *v = x + ((long long)t * n_heads + h) * head_dim;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float angle = (float)(start + t) * inv_freq[i];
        const float c = (float)cos((double)angle), sn = (float)sin((double)angle);
        const float x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * sn;
        v[i + half] = x2 * c + x1 * sn;
    }
}

// scalar::dot's order: eight lane accumulators, combined pairwise, plus the tail.
__device__ float dot8(const float *a, const float *b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int full = n & ~7;
    for (int c = 0; c < full; c += 8) {
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] += a[c + i] * b[c + i];
    }
    float tail = 0.0f;
    for (int c = full; c < n; c++) tail += a[c] * b[c];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// exp rounded from double: the correctly rounded value in all but vanishingly rare cases, which
// is what the CPU's scalar::exp computes too, so both sides agree bit for bit.
__device__ __forceinline__ float exp_cr(float x) { return (float)exp((double)x); }

// Causal GQA attention for n new queries at positions past..past+n-1 (past read from device
// memory) over the cache rows 0..past+n-1. One block per (token, head); scores in `scratch` [n * heads, ctx]. The softmax
// and the weighted sum run in the CPU's order (Transformer::attention), so the result is the
// CPU's to the bit.
extern "C" __global__ void attention(const float *__restrict__ q, const float *__restrict__ kc,
                                     const float *__restrict__ vc, float *__restrict__ out,
                                     float *__restrict__ scratch, const int *__restrict__ past_at,
                                     int heads, int kv_heads, int d, int ctx, float scale) {
    const int t = blockIdx.x / heads, h = blockIdx.x % heads, past = *past_at;
    const int visible = past + t + 1, kv_dim = kv_heads * d, kv_off = (h / (heads / kv_heads)) * d;
    const float *qh = q + (long long)blockIdx.x * d;
    float *sc = scratch + (long long)blockIdx.x * ctx;
    float m = NEG_INF;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) {
        const float dot = dot8(qh, kc + (long long)j * kv_dim + kv_off, d) * scale;
        sc[j] = dot;
        m = fmaxf(m, dot);
    }
    m = block_max_f(m);
    for (int j = threadIdx.x; j < visible; j += blockDim.x) sc[j] = exp_cr(sc[j] - m);
    __syncthreads();
    __shared__ float inv_sum;
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int j = 0; j < visible; j++) sum += sc[j];
        inv_sum = 1.0f / sum;
    }
    __syncthreads();
    const float inv = inv_sum;
    for (int j = threadIdx.x; j < visible; j += blockDim.x) sc[j] = sc[j] * inv;
    __syncthreads();
    float *oh = out + (long long)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < visible; j++) acc += sc[j] * vc[(long long)j * kv_dim + kv_off + i];
        oh[i] = acc;
    }
}

// GLU: relu2 (BitNet) m = relu(g)^2 * u, else SiLU (LLaMA) m = g / (1 + exp(-g)) * u.
extern "C" __global__ void glu(const float *__restrict__ g, const float *__restrict__ u,
                               float *__restrict__ m, long long n, int relu2) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gv = g[i];
    if (relu2) {
        const float r = fmaxf(gv, 0.0f);
        m[i] = r * r * u[i];
    } else {
        m[i] = gv / (1.0f + exp_cr(-gv)) * u[i];
    }
}

extern "C" __global__ void add_inplace(float *__restrict__ x, const float *__restrict__ y, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// Output head: logits[t][v] = sum_c W[v][c] * h[t][c], W bf16 (bf16 != 0) or f32. One warp per
// vocabulary row, grid.y over tokens.
extern "C" __global__ void dense_head(const void *__restrict__ wv, int bf16, int vocab, int cols,
                                      const float *__restrict__ hs, float *__restrict__ logits) {
    const int v = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (v >= vocab) return;
    const int t = blockIdx.y;
    const float *h = hs + (long long)t * cols;
    float acc = 0.0f;
    if (bf16) {
        const unsigned short *w = (const unsigned short *)wv + (long long)v * cols;
        for (int c = lane; c < cols; c += WARP) acc += __uint_as_float((unsigned int)w[c] << 16) * h[c];
    } else {
        const float *w = (const float *)wv + (long long)v * cols;
        for (int c = lane; c < cols; c += WARP) acc += w[c] * h[c];
    }
    acc = warp_sum(acc);
    if (lane == 0) logits[(long long)t * vocab + v] = acc;
}
