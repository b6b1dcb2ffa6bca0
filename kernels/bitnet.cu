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


// exp rounded from double: the correctly rounded value in all but vanishingly rare cases, which
// is what the CPU's scalar::exp computes too, so both sides agree bit for bit.
__device__ __forceinline__ float exp_cr(float x) { return (float)exp((double)x); }

// RMSNorm then per-token absmax int8 quantisation of each row (one block per row): what rms_norm
// followed by quantize_padded computes, in one launch and without the normalised row in memory.
// Rows of up to NQ_THREADS * NQ_PER columns are read once into registers (a decode step is
// latency-bound: one pass over memory instead of three); longer rows recompute the normalised
// value w[c] * (x[c] * inv) in each pass, which gives the same bits.
#define NQ_THREADS 1024
#define NQ_PER 8

__device__ __forceinline__ i8 quant1(float h, float s) {
    return (i8)(int)fminf(fmaxf(rintf(__fmul_rn(h, s)), -128.0f), 127.0f);
}

extern "C" __global__ void norm_quant(const float *__restrict__ x, const float *__restrict__ w,
                                      float eps, int cols, i8 *__restrict__ q, int stride,
                                      float *__restrict__ scale) {
    const float *row = x + (long long)blockIdx.x * cols;
    i8 *out = q + (long long)blockIdx.x * stride;
    if (blockDim.x == NQ_THREADS && cols <= NQ_THREADS * NQ_PER) {
        float xv[NQ_PER];
        double ss = 0.0;
#pragma unroll
        for (int k = 0; k < NQ_PER; k++) {
            const int c = threadIdx.x + k * NQ_THREADS;
            xv[k] = c < cols ? row[c] : 0.0f;
            ss += (double)xv[k] * (double)xv[k];
        }
        const double ms = block_sum_d(ss) / (double)cols;
        const float inv = 1.0f / sqrtf((float)ms + eps);
        float m = 0.0f;
#pragma unroll
        for (int k = 0; k < NQ_PER; k++) {
            const int c = threadIdx.x + k * NQ_THREADS;
            if (c < cols) {
                xv[k] = w[c] * (xv[k] * inv);
                m = fmaxf(m, fabsf(xv[k]));
            }
        }
        m = block_max_f(m);
        const float s = __fdiv_rn(127.0f, fmaxf(m, MIN_ABS));
#pragma unroll
        for (int k = 0; k < NQ_PER; k++) {
            const int c = threadIdx.x + k * NQ_THREADS;
            if (c < cols) out[c] = quant1(xv[k], s);
        }
        for (int c = cols + threadIdx.x; c < stride; c += blockDim.x) out[c] = 0;
        if (threadIdx.x == 0) scale[blockIdx.x] = s;
        return;
    }
    double ss = 0.0;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) ss += (double)row[c] * (double)row[c];
    const double ms = block_sum_d(ss) / (double)cols;
    const float inv = 1.0f / sqrtf((float)ms + eps);
    float m = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, fabsf(w[c] * (row[c] * inv)));
    m = block_max_f(m);
    const float s = __fdiv_rn(127.0f, fmaxf(m, MIN_ABS));
    for (int c = threadIdx.x; c < stride; c += blockDim.x) {
        out[c] = c < cols ? quant1(w[c] * (row[c] * inv), s) : (i8)0;
    }
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
}

#define LIN_TOK 4

#define LIN_UNROLL 4

// The dot products of NR weight rows in the CPU kernels' layout (src/kernels/packed.rs: in each
// 64-byte block b, byte j holds columns 256b + j + {0, 64, 128, 192} at bits 0, 2, 4, 6; padding
// columns hold code 1, weight 0) with up to LIN_TOK token rows of q, summed over the warp. Each
// lane takes 16 bytes (16 columns of each of the four column groups) per chunk, so one weight
// load serves every token, and issues the loads of LIN_UNROLL / NR chunks per row before using
// them (a decode step is bound by how many loads are in flight, not by arithmetic).
template <int NR>
__device__ __forceinline__ void rows_dots(const u8 *const *wrows, int row_bytes,
                                          const i8 *__restrict__ q, int t0, int nt, int lane,
                                          int (*acc)[LIN_TOK]) {
    constexpr int U = LIN_UNROLL / NR;
    const int stride = row_bytes * 4, chunks = row_bytes / 16;
    for (int i0 = lane; i0 < chunks; i0 += U * WARP) {
        uint4 wb[NR][U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = i0 + u * WARP;
#pragma unroll
            for (int r = 0; r < NR; r++) {
                if (i < chunks) wb[r][u] = __ldg((const uint4 *)wrows[r] + i);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = i0 + u * WARP;
            if (i >= chunks) break;
            const int o = i * 16;
            const int base = (o / 64) * 256 + (o % 64);
#pragma unroll
            for (int k = 0; k < LIN_TOK; k++) {
                if (k < nt) {
                    const i8 *qt = q + (long long)(t0 + k) * stride + base;
                    int4 x[4];
#pragma unroll
                    for (int g = 0; g < 4; g++) x[g] = __ldg((const int4 *)(qt + 64 * g));
#pragma unroll
                    for (int r = 0; r < NR; r++) {
                        const unsigned int words[4] = {wb[r][u].x, wb[r][u].y, wb[r][u].z, wb[r][u].w};
                        int a = acc[r][k];
#pragma unroll
                        for (int g = 0; g < 4; g++) {
                            a = __dp4a(decode4(words[0], 2 * g), x[g].x, a);
                            a = __dp4a(decode4(words[1], 2 * g), x[g].y, a);
                            a = __dp4a(decode4(words[2], 2 * g), x[g].z, a);
                            a = __dp4a(decode4(words[3], 2 * g), x[g].w, a);
                        }
                        acc[r][k] = a;
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
#pragma unroll
        for (int k = 0; k < LIN_TOK; k++) {
            for (int o = 16; o > 0; o >>= 1) acc[r][k] += __shfl_xor_sync(0xffffffffu, acc[r][k], o);
        }
    }
}

// BitLinear: out[t][r] = acc * (gamma / s[t]), as Linear::forward, or out += that when
// `accumulate` (the residual add, same rounding as a separate add). Up to three matrices that
// read one input (q, k and v) go in one launch: the grid's warps run over rows0 + rows1 + rows2,
// one warp per output row, LIN_TOK tokens per warp (grid.y).
extern "C" __global__ void ternary_linear(const u8 *w0, int rows0, float gamma0, float *out0,
                                          const u8 *w1, int rows1, float gamma1, float *out1,
                                          const u8 *w2, int rows2, float gamma2, float *out2,
                                          int row_bytes, const i8 *__restrict__ q,
                                          const float *__restrict__ s, int n_tok, int accumulate) {
    int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const u8 *w;
    float gamma, *out;
    int rows;
    if (r < rows0) {
        w = w0, gamma = gamma0, out = out0, rows = rows0;
    } else if ((r -= rows0) < rows1) {
        w = w1, gamma = gamma1, out = out1, rows = rows1;
    } else if ((r -= rows1) < rows2) {
        w = w2, gamma = gamma2, out = out2, rows = rows2;
    } else {
        return;  // whole warps: r is the same on every lane
    }
    const int t0 = blockIdx.y * LIN_TOK;
    const int nt = min(LIN_TOK, n_tok - t0);
    int acc[1][LIN_TOK] = {{0, 0, 0, 0}};
    const u8 *rows_w[1] = {w + (long long)r * row_bytes};
    rows_dots<1>(rows_w, row_bytes, q, t0, nt, lane, acc);
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < LIN_TOK; k++) {
            if (k < nt) {
                const int t = t0 + k;
                const float v = (float)acc[0][k] * (gamma / s[t]);
                float *o = out + (long long)t * rows + r;
                *o = accumulate ? *o + v : v;
            }
        }
    }
}

// gate and up projections and the GLU in one launch: m[t][r] = relu(g)^2 * u (BitNet) or
// g / (1 + exp(-g)) * u (LLaMA), with g and u rounded as the separate projections round them.
extern "C" __global__ void gate_up_glu(const u8 *__restrict__ wg, float gamma_g,
                                       const u8 *__restrict__ wu, float gamma_u, int rows,
                                       int row_bytes, const i8 *__restrict__ q,
                                       const float *__restrict__ s, int n_tok, int relu2,
                                       float *__restrict__ m) {
    const int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const int t0 = blockIdx.y * LIN_TOK;
    const int nt = min(LIN_TOK, n_tok - t0);
    int acc[2][LIN_TOK] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    const u8 *rows_w[2] = {wg + (long long)r * row_bytes, wu + (long long)r * row_bytes};
    rows_dots<2>(rows_w, row_bytes, q, t0, nt, lane, acc);
    const int *ag = acc[0], *au = acc[1];
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < LIN_TOK; k++) {
            if (k < nt) {
                const int t = t0 + k;
                const float st = s[t];
                const float g = (float)ag[k] * (gamma_g / st);
                const float u = (float)au[k] * (gamma_u / st);
                float v;
                if (relu2) {
                    const float rl = fmaxf(g, 0.0f);
                    v = rl * rl * u;
                } else {
                    v = g / (1.0f + exp_cr(-g)) * u;
                }
                m[(long long)t * rows + r] = v;
            }
        }
    }
}

// cos and sin of every position's rotary angles: table[p][i] = (cos, sin) of (float)p *
// inv_freq[i], formed in f32 and taken in double, as Rope::cos_sin. Filled once per cache, so
// that a decode step does no trigonometry. Grid: positions.
extern "C" __global__ void rope_table(const float *__restrict__ inv_freq, int half,
                                      float2 *__restrict__ table) {
    const int p = blockIdx.x;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float angle = (float)p * inv_freq[i];
        table[(long long)p * half + i] = make_float2((float)cos((double)angle), (float)sin((double)angle));
    }
}

// Rotary embedding (HF half-split) of the queries in place and of the keys, which go to the
// key cache at row *pos_at + t with the values beside them. Grid (n, heads + kv_heads): the
// first `heads` blocks of a token rotate its query heads, the others store its KV heads.
extern "C" __global__ void rope_kv(float *q, const float *__restrict__ k,
                                   const float *__restrict__ v, float *__restrict__ kc,
                                   float *__restrict__ vc, const int *__restrict__ pos_at,
                                   int heads, int kv_heads, int d,
                                   const float2 *__restrict__ table) {
    const int t = blockIdx.x, h = blockIdx.y, half = d / 2, pos = *pos_at + t;
    const long long kv_dim = (long long)kv_heads * d;
    const float *src;
    float *dst;
    if (h < heads) {
        dst = q + ((long long)t * heads + h) * d;
        src = dst;
    } else {
        const int hk = h - heads;
        src = k + ((long long)t * kv_heads + hk) * d;
        dst = kc + pos * kv_dim + (long long)hk * d;
        const float *vs = v + ((long long)t * kv_heads + hk) * d;
        float *vd = vc + pos * kv_dim + (long long)hk * d;
        for (int i = threadIdx.x; i < d; i += blockDim.x) vd[i] = vs[i];
        if ((d & 1) && threadIdx.x == 0) dst[d - 1] = src[d - 1];  // no pair to rotate with
    }
    const float2 *cs = table + (long long)pos * half;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const float2 r = cs[i];
        const float x1 = src[i], x2 = src[i + half];
        dst[i] = x1 * r.x - x2 * r.y;
        dst[i + half] = x2 * r.x + x1 * r.y;
    }
}

#define ATT_KEYS 32  // keys per block and pass: 8 warps, 4 keys per warp, 8 lanes per key

// Attention scores of n new queries (positions *past_at + t) against the cache rows they see:
// scratch[t * heads + h][j] = dot(q, k_j) * scale. Grid (n * heads, chunks of keys); each key
// is taken by 8 lanes, lane i summing elements i, i + 8, ... in order, then combined as
// ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) + tail: scalar::dot's order, so every score
// is the CPU's to the bit.
extern "C" __global__ void attn_scores(const float *__restrict__ q, const float *__restrict__ kc,
                                       float *__restrict__ scratch, const int *__restrict__ past_at,
                                       int heads, int kv_heads, int d, int ctx, float scale) {
    const int row = blockIdx.x, t = row / heads, h = row % heads;
    const int visible = *past_at + t + 1;
    const int kv_dim = kv_heads * d, kv_off = (h / (heads / kv_heads)) * d;
    const float *qh = q + (long long)row * d;
    float *sc = scratch + (long long)row * ctx;
    const int sub = threadIdx.x & 7, key = threadIdx.x >> 3, full = d & ~7;
    for (int base = blockIdx.y * ATT_KEYS; base < visible; base += gridDim.y * ATT_KEYS) {
        const int j = base + key;
        const bool live = j < visible;
        float acc = 0.0f, tail = 0.0f;
        if (live) {
            const float *kr = kc + (long long)j * kv_dim + kv_off;
            // Every load of a key of up to 128 elements in flight, then the lane's sum in order.
            float kk[16], qq[16];
#pragma unroll
            for (int u = 0; u < 16; u++) {
                if (u * 8 < full) {
                    kk[u] = kr[u * 8 + sub];
                    qq[u] = qh[u * 8 + sub];
                }
            }
#pragma unroll
            for (int u = 0; u < 16; u++) {
                if (u * 8 < full) acc += qq[u] * kk[u];
            }
            for (int c = 128; c < full; c += 8) acc += qh[c + sub] * kr[c + sub];
            if (sub == 0) {
                for (int c = full; c < d; c++) tail += qh[c] * kr[c];
            }
        }
        float s = acc + __shfl_xor_sync(0xffffffffu, acc, 4);
        s = s + __shfl_xor_sync(0xffffffffu, s, 1);
        s = s + __shfl_xor_sync(0xffffffffu, s, 2);
        if (live && sub == 0) sc[j] = (s + tail) * scale;
    }
}

#define ATT_TILE 16
#define ATT_STAGES 5
#define ATT_MAX_D 128

// Asynchronous copies global -> shared (sm_80+): many loads in flight without registers.
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem) {
    const unsigned int s = (unsigned int)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
// 16 bytes, both addresses 16-byte aligned; bypasses L1.
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    const unsigned int s = (unsigned int)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// All but the newest ATT_STAGES - 1 groups complete.
__device__ __forceinline__ void cp_async_wait_stages() { asm volatile("cp.async.wait_group 4;\n" ::); }

// Starts copying value rows j0.. (up to ATT_TILE of those < visible) and their weights; d and
// kv_dim multiples of 4, so that rows go in 16-byte pieces.
__device__ __forceinline__ void att_issue_tile(float (*vt)[ATT_MAX_D], float *pt,
                                               const float *vbase, const float *p, int j0,
                                               int visible, int d, int kv_dim) {
    const int rows = min(ATT_TILE, visible - j0), quads = d / 4;
    for (int idx = threadIdx.x; idx < rows * quads; idx += blockDim.x) {
        const int u = idx / quads, c = (idx - u * quads) * 4;
        cp_async16(&vt[u][c], vbase + (long long)(j0 + u) * kv_dim + c);
    }
    for (int u = threadIdx.x; u < rows; u += blockDim.x) cp_async4(&pt[u], p + j0 + u);
    cp_async_commit();
}

// Softmax of each score row and the weighted sum of the values, in the CPU's order
// (Transformer::attention): the max, exp, a serial sum, weights e * (1 / sum), then for each
// output element a serial sum over positions. One block per (token, head). The serial sums
// are unrolled so that their latency is the adds' alone.
extern "C" __global__ void attn_softmax_v(float *__restrict__ scratch, const float *__restrict__ vc,
                                          float *__restrict__ out, const int *__restrict__ past_at,
                                          int heads, int kv_heads, int d, int ctx, int tiled) {
    const int row = blockIdx.x, t = row / heads, h = row % heads;
    const int visible = *past_at + t + 1;
    const int kv_dim = kv_heads * d, kv_off = (h / (heads / kv_heads)) * d;
    float *sc = scratch + (long long)row * ctx;
    float m = NEG_INF;
#pragma unroll 4
    for (int j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, sc[j]);
    m = block_max_f(m);
#pragma unroll 4
    for (int j = threadIdx.x; j < visible; j += blockDim.x) sc[j] = exp_cr(sc[j] - m);
    __syncthreads();
    __shared__ float inv_sum;
    if (threadIdx.x < WARP) {
        // The serial sum, 32 exponentials per coalesced load (the next one in flight): every
        // lane adds them in order, so every lane holds the CPU's sum.
        const int lane = threadIdx.x;
        float sum = 0.0f;
        for (int base = 0; base < visible; base += WARP * WARP) {
            // 1024 exponentials in registers (all loads in flight), then added in order.
            float ev[WARP];
#pragma unroll
            for (int k = 0; k < WARP; k++) {
                const int j = base + k * WARP + lane;
                ev[k] = j < visible ? sc[j] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < WARP; k++) {
                const int jb = base + k * WARP;
                if (jb + WARP <= visible) {
#pragma unroll
                    for (int i = 0; i < WARP; i++) sum += __shfl_sync(0xffffffffu, ev[k], i);
                } else if (jb < visible) {
                    for (int i = 0; i < visible - jb; i++) sum += __shfl_sync(0xffffffffu, ev[k], i);
                }
            }
        }
        if (lane == 0) inv_sum = 1.0f / sum;
    }
    __syncthreads();
    // Weights p_j = e_j * inv, rounded as the CPU rounds them before the weighted sum.
    const float inv = inv_sum;
    float *oh = out + (long long)row * d;
    if (tiled && d <= ATT_MAX_D && (d & 3) == 0 && (int)blockDim.x >= d) {
        // Tiles of ATT_TILE value rows and their weights copied to shared memory
        // asynchronously, ATT_STAGES - 1 tiles in flight while one is summed.
        __shared__ __align__(16) float vt[ATT_STAGES][ATT_TILE][ATT_MAX_D];
        __shared__ float pt[ATT_STAGES][ATT_TILE];
        const int tiles = (visible + ATT_TILE - 1) / ATT_TILE;
        const float *vbase = vc + kv_off;
        for (int t = 0; t < ATT_STAGES - 1; t++) {
            if (t < tiles) {
                att_issue_tile(vt[t], pt[t], vbase, sc, t * ATT_TILE, visible, d, kv_dim);
            } else {
                cp_async_commit();  // empty groups keep the count of groups per tile
            }
        }
        float acc = 0.0f;
        for (int t = 0; t < tiles; t++) {
            const int ahead = t + ATT_STAGES - 1;
            if (ahead < tiles) {
                att_issue_tile(vt[ahead % ATT_STAGES], pt[ahead % ATT_STAGES], vbase, sc,
                               ahead * ATT_TILE, visible, d, kv_dim);
            } else {
                cp_async_commit();
            }
            cp_async_wait_stages();  // tile t has landed
            __syncthreads();
            const int b = t % ATT_STAGES, rows = min(ATT_TILE, visible - t * ATT_TILE);
            if ((int)threadIdx.x < d) {
                if (rows == ATT_TILE) {
#pragma unroll
                    for (int u = 0; u < ATT_TILE; u++)
                        acc += (pt[b][u] * inv) * vt[b][u][threadIdx.x];
                } else {
                    for (int u = 0; u < rows; u++) acc += (pt[b][u] * inv) * vt[b][u][threadIdx.x];
                }
            }
            __syncthreads();  // the buffer is refilled next iteration
        }
        if ((int)threadIdx.x < d) oh[threadIdx.x] = acc;
        return;
    }
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float *vcol = vc + kv_off + i;
        float acc = 0.0f;
#pragma unroll 8
        for (int j = 0; j < visible; j++) acc += (sc[j] * inv) * vcol[(long long)j * kv_dim];
        oh[i] = acc;
    }
}

#define HEAD_TOK 4

__device__ __forceinline__ float bf16_lo(unsigned int w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(unsigned int w) { return __uint_as_float(w & 0xffff0000u); }

// Output head: logits[t][v] = sum_c W[v][c] * h[t][c], W bf16 (bf16 != 0) or f32. One warp per
// vocabulary row and HEAD_TOK tokens (grid.y), 16-byte weight loads when rows allow them.
extern "C" __global__ void dense_head(const void *__restrict__ wv, int bf16, int vocab, int cols,
                                      const float *__restrict__ hs, int n_tok,
                                      float *__restrict__ logits) {
    const int v = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (v >= vocab) return;
    const int t0 = blockIdx.y * HEAD_TOK;
    const int nt = min(HEAD_TOK, n_tok - t0);
    float acc[HEAD_TOK] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (bf16 && (cols & 7) == 0) {
        const uint4 *w4 = (const uint4 *)((const unsigned short *)wv + (long long)v * cols);
        const int chunks = cols / 8;
        for (int i0 = lane; i0 < chunks; i0 += 4 * WARP) {
          uint4 bs[4];
#pragma unroll
          for (int u = 0; u < 4; u++) {
            if (i0 + u * WARP < chunks) bs[u] = __ldg(w4 + i0 + u * WARP);
          }
#pragma unroll
          for (int u = 0; u < 4; u++) {
            const int i = i0 + u * WARP;
            if (i >= chunks) break;
            const uint4 b = bs[u];
            const float wf[8] = {bf16_lo(b.x), bf16_hi(b.x), bf16_lo(b.y), bf16_hi(b.y),
                                 bf16_lo(b.z), bf16_hi(b.z), bf16_lo(b.w), bf16_hi(b.w)};
#pragma unroll
            for (int k = 0; k < HEAD_TOK; k++) {
                if (k < nt) {
                    const float4 *h4 = (const float4 *)(hs + (long long)(t0 + k) * cols) + 2 * i;
                    const float4 a = h4[0], c = h4[1];
                    acc[k] += ((wf[0] * a.x + wf[1] * a.y) + (wf[2] * a.z + wf[3] * a.w)) +
                              ((wf[4] * c.x + wf[5] * c.y) + (wf[6] * c.z + wf[7] * c.w));
                }
            }
          }
        }
    } else if (!bf16 && (cols & 3) == 0) {
        const float4 *w4 = (const float4 *)((const float *)wv + (long long)v * cols);
        for (int i = lane; i < cols / 4; i += WARP) {
            const float4 b = __ldg(w4 + i);
#pragma unroll
            for (int k = 0; k < HEAD_TOK; k++) {
                if (k < nt) {
                    const float4 a = ((const float4 *)(hs + (long long)(t0 + k) * cols))[i];
                    acc[k] += (b.x * a.x + b.y * a.y) + (b.z * a.z + b.w * a.w);
                }
            }
        }
    } else {
        for (int c = lane; c < cols; c += WARP) {
            const float w = bf16 ? __uint_as_float(
                                       (unsigned int)((const unsigned short *)wv)[(long long)v * cols + c] << 16)
                                 : ((const float *)wv)[(long long)v * cols + c];
#pragma unroll
            for (int k = 0; k < HEAD_TOK; k++) {
                if (k < nt) acc[k] += w * hs[(long long)(t0 + k) * cols + c];
            }
        }
    }
#pragma unroll
    for (int k = 0; k < HEAD_TOK; k++) {
        const float a = warp_sum(acc[k]);
        if (lane == 0 && k < nt) logits[(long long)(t0 + k) * vocab + v] = a;
    }
}

// ---------------------------------------------------------------------------------------------
// Candidates for sampling, on the device: the k best logits of a row, best first, lower id first
// on ties (the CPU sampler's order), so a decode step downloads k pairs instead of the row.
// A key orders (logit, -id) as one unsigned integer: the float's bits made monotone (the order
// of f32::total_cmp) above the complemented id.

#define TOPK_CHUNK 4096

__device__ __forceinline__ unsigned long long topk_key(float v, unsigned int id) {
    unsigned int b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((unsigned long long)b << 32) | (0xffffffffu - id);
}

// Sorts TOPK_CHUNK keys in shared memory, largest first.
__device__ void bitonic_desc(unsigned long long *s) {
    for (int size = 2; size <= TOPK_CHUNK; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            __syncthreads();
            for (int i = threadIdx.x; i < TOPK_CHUNK / 2; i += blockDim.x) {
                const int a = 2 * i - (i & (stride - 1)), b = a + stride;
                const bool desc = (a & size) == 0;
                const unsigned long long x = s[a], y = s[b];
                if ((x < y) == desc) {
                    s[a] = y;
                    s[b] = x;
                }
            }
        }
    }
    __syncthreads();
}

// Stage 1: block b sorts logits [b * TOPK_CHUNK, ...) of `row` and writes its k best keys.
extern "C" __global__ void topk_chunks(const float *__restrict__ logits, int vocab, int k,
                                       unsigned long long *__restrict__ out) {
    __shared__ unsigned long long s[TOPK_CHUNK];
    const int first = blockIdx.x * TOPK_CHUNK;
    for (int i = threadIdx.x; i < TOPK_CHUNK; i += blockDim.x) {
        const int id = first + i;
        s[i] = id < vocab ? topk_key(logits[id], (unsigned int)id) : 0ull;
    }
    bitonic_desc(s);
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[(long long)blockIdx.x * k + i] = s[i];
}

// Stage 2 (one block): the k best of n <= TOPK_CHUNK keys.
extern "C" __global__ void topk_merge(const unsigned long long *__restrict__ keys, int n, int k,
                                      unsigned long long *__restrict__ out) {
    __shared__ unsigned long long s[TOPK_CHUNK];
    for (int i = threadIdx.x; i < TOPK_CHUNK; i += blockDim.x) s[i] = i < n ? keys[i] : 0ull;
    bitonic_desc(s);
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[i] = s[i];
}
