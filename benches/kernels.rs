//! Kernel throughput, each SIMD kernel beside the portable one measured in the same run (the
//! ratio is what to read; absolute figures depend on the machine and its load).
//!
//!     cargo bench --bench kernels [-- FILTER]
//!
//! Shapes are those of BitNet b1.58 2B4T: a decode step (one token) through its FFN up and down
//! projections (one matrix, and 30 layers' worth of each shape), the four query heads of one KV
//! head attending over 576 cached positions in f32 and f16, and the output head.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;

use bit_ttt::__internal::kernels::Isa;
use bit_ttt::__internal::kernels::attention;
use bit_ttt::__internal::kernels::dense::DenseView;
use bit_ttt::__internal::kernels::int4::{self, Int4Matrix};
use bit_ttt::__internal::kernels::int8::{self, Int8Matrix};
use bit_ttt::__internal::kernels::packed::{PackedTernary, Packing, QuantizedRows};
use bit_ttt::__internal::kernels::pool::Pool;
use bit_ttt::__internal::storage::DType;

fn noise(n: usize, seed: u64) -> impl Iterator<Item = u64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n).map(move |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    })
}

fn floats(n: usize, seed: u64) -> Vec<f32> {
    noise(n, seed)
        .map(|x| (x % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Each kernel on the 2-bit layout, and the kernels that read base-3 fast on that one too
/// (named `<kernel>_base3`). Throughput in weights, so that the layouts compare.
fn kernels_and_layouts() -> Vec<(Isa, Packing, String)> {
    let mut v = Vec::new();
    for k in Isa::available() {
        v.push((k, Packing::Bits2, k.name().to_string()));
        if k.packing() == Packing::Base3 {
            v.push((k, Packing::Base3, format!("{}_base3", k.name())));
        }
    }
    v
}

fn ternary_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ternary_gemv");
    for (name, rows, cols) in [
        ("ffn_up_6912x2560", 6912, 2560),
        ("ffn_down_2560x6912", 2560, 6912),
    ] {
        let t: Vec<i8> = noise(rows * cols, 1).map(|x| (x % 3) as i8 - 1).collect();
        let hf = bit_ttt::__internal::quant::pack_ternary(&t, rows, cols);
        let x = QuantizedRows::new(Isa::best().kernels(), &floats(cols, 2), 1);
        let mut acc = vec![0i32; rows];
        g.throughput(Throughput::Elements((rows * cols) as u64));
        for (k, packing, id) in kernels_and_layouts() {
            let w = PackedTernary::from_hf_as(&hf, rows, cols, packing);
            g.bench_with_input(BenchmarkId::new(name, id), &k, |b, &k| {
                b.iter(|| k.kernels().ternary_gemm(&w, &x, &mut acc))
            });
        }
    }
}

/// The same product on 133 MB of weights (the 30 FFN up projections of 2B4T stacked): far more
/// than the caches, so this is the decode kernel against memory bandwidth, on one thread and on
/// every core.
fn ternary_decode_from_memory(c: &mut Criterion) {
    let (rows, cols) = (30 * 6912, 2560);
    let t: Vec<i8> = noise(rows * cols, 8).map(|x| (x % 3) as i8 - 1).collect();
    let hf = bit_ttt::__internal::quant::pack_ternary(&t, rows, cols);
    drop(t);
    let x = QuantizedRows::new(Isa::best().kernels(), &floats(cols, 9), 1);
    let mut acc = vec![0i32; rows];
    let mut g = c.benchmark_group("ternary_gemv_133MB");
    g.sample_size(20);
    g.throughput(Throughput::Elements((rows * cols) as u64));
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, all] {
        let pool = Pool::new(threads).expect("thread pool");
        for (k, packing, name) in kernels_and_layouts()
            .into_iter()
            .filter(|(k, ..)| *k != Isa::Portable)
        {
            let w = PackedTernary::from_hf_as(&hf, rows, cols, packing);
            let id = format!("{name}_{threads}t");
            g.bench_with_input(BenchmarkId::from_parameter(id), &k, |b, &k| {
                b.iter(|| pool.install(|| k.kernels().ternary_gemm(&w, &x, &mut acc)))
            });
        }
        if all == 1 {
            break;
        }
    }
}

/// A decode step's FFN as 30 layers of separate matrices (each 4.4 MB in the 2-bit layout, 3.5
/// MB in base-3, as decode streams them between other work), up-shaped (6912 rows × 2560)
/// against down-shaped (2560 × 6912): rows of 640 or 1728 bytes (512 or 1408 in base-3), on one
/// thread and on all, with the best kernel in each layout it reads.
fn ternary_decode_layers(c: &mut Criterion) {
    let mut g = c.benchmark_group("ternary_gemv_30_layers");
    g.sample_size(20);
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let k = Isa::available().pop().expect("a kernel");
    let mut layouts = vec![(Packing::Bits2, k.name().to_string())];
    if k.packing() == Packing::Base3 {
        layouts.push((Packing::Base3, format!("{}_base3", k.name())));
    }
    for ((name, rows, cols), (packing, kname)) in [("up", 6912, 2560), ("down", 2560, 6912)]
        .into_iter()
        .flat_map(|s| layouts.iter().map(move |l| (s, l.clone())))
    {
        let layers: Vec<PackedTernary> = (0..30)
            .map(|l| {
                let t: Vec<i8> = noise(rows * cols, 20 + l)
                    .map(|x| (x % 3) as i8 - 1)
                    .collect();
                let hf = bit_ttt::__internal::quant::pack_ternary(&t, rows, cols);
                PackedTernary::from_hf_as(&hf, rows, cols, packing)
            })
            .collect();
        let x = QuantizedRows::new(Isa::best().kernels(), &floats(cols, 9), 1);
        let mut acc = vec![0i32; rows];
        g.throughput(Throughput::Elements((30 * rows * cols) as u64));
        for threads in [1, all] {
            let pool = Pool::new(threads).expect("thread pool");
            let id = format!("{name}_{kname}_{threads}t");
            g.bench_function(BenchmarkId::from_parameter(id), |b| {
                b.iter(|| {
                    pool.install(|| {
                        for w in &layers {
                            k.kernels().ternary_gemm(w, &x, &mut acc)
                        }
                    })
                })
            });
            if all == 1 {
                break;
            }
        }
    }
}

fn attention_decode(c: &mut Criterion) {
    let (d, n, heads) = (128, 576, 4);
    let q = floats(heads * d, 3);
    let k32 = floats(n * d, 4);
    let v32 = floats(n * d, 5);
    let k16: Vec<f16> = k32.iter().map(|&x| f16::from_f32(x)).collect();
    let v16: Vec<f16> = v32.iter().map(|&x| f16::from_f32(x)).collect();
    let p = vec![1.0 / n as f32; heads * n];
    let mut g = c.benchmark_group("attention_576");
    for k in Isa::available() {
        let mut s = vec![0.0f32; heads * n];
        let mut o = vec![0.0f32; heads * d];
        g.bench_function(BenchmarkId::new("f32", k.name()), |b| {
            b.iter(|| {
                attention::scores(k.kernels(), &q, d, &k32, 0.1, &mut s);
                attention::weighted_sum(k.kernels(), &p, &v32, d, &mut o);
            })
        });
        g.bench_function(BenchmarkId::new("f32_scores", k.name()), |b| {
            b.iter(|| attention::scores(k.kernels(), &q, d, &k32, 0.1, &mut s))
        });
        g.bench_function(BenchmarkId::new("f32_values", k.name()), |b| {
            b.iter(|| attention::weighted_sum(k.kernels(), &p, &v32, d, &mut o))
        });
        g.bench_function(BenchmarkId::new("f16", k.name()), |b| {
            b.iter(|| {
                attention::scores(k.kernels(), &q, d, &k16, 0.1, &mut s);
                attention::weighted_sum(k.kernels(), &p, &v16, d, &mut o);
            })
        });
        g.bench_function(BenchmarkId::new("f16_scores", k.name()), |b| {
            b.iter(|| attention::scores(k.kernels(), &q, d, &k16, 0.1, &mut s))
        });
        g.bench_function(BenchmarkId::new("f16_values", k.name()), |b| {
            b.iter(|| attention::weighted_sum(k.kernels(), &p, &v16, d, &mut o))
        });
    }
}

/// Softmax of one head's 640 scores (libm-free `scalar::exp`, vectorised by each kernel).
fn softmax_640(c: &mut Criterion) {
    let x = floats(640, 12)
        .iter()
        .map(|v| v * 8.0)
        .collect::<Vec<f32>>();
    let mut g = c.benchmark_group("softmax_640");
    for k in Isa::available() {
        g.bench_function(BenchmarkId::from_parameter(k.name()), |b| {
            b.iter(|| {
                let mut y = x.clone();
                attention::softmax(k.kernels(), &mut y);
                y
            })
        });
    }
}

/// A decode step's attention over the whole 2B4T cache at 640 positions in f16 (30 layers × 5 KV
/// heads, 49 MB: more than the last-level cache, as in decode, where the weights stream in between),
/// one thread, the four query heads of each KV head together, as decode visits them.
fn attention_all_layers(c: &mut Criterion) {
    let (d, n, layers, kv_heads, group) = (128, 640, 30, 5, 4);
    let cache: Vec<(Vec<f16>, Vec<f16>)> = (0..layers * kv_heads)
        .map(|i| {
            let kv = |seed| {
                floats(n * d, seed)
                    .iter()
                    .map(|&x| f16::from_f32(x))
                    .collect()
            };
            (kv(10 + 2 * i as u64), kv(11 + 2 * i as u64))
        })
        .collect();
    let q = floats(group * d, 3);
    let mut g = c.benchmark_group("attention_30_layers_640_f16");
    g.sample_size(20);
    g.throughput(Throughput::Bytes((cache.len() * 2 * n * d * 2) as u64));
    for k in Isa::available() {
        let (mut s, mut o) = (vec![0.0f32; group * n], vec![0.0f32; group * d]);
        g.bench_function(BenchmarkId::from_parameter(k.name()), |b| {
            b.iter(|| {
                for (kc, vc) in &cache {
                    attention::scores(k.kernels(), &q, d, kc, 0.1, &mut s);
                    s.chunks_exact_mut(n)
                        .for_each(|r| attention::softmax(k.kernels(), r));
                    attention::weighted_sum(k.kernels(), &s, vc, d, &mut o);
                }
            })
        });
    }
}

/// A slice of the 2B4T output head (16384 of its 128256 rows, so it stays in cache: the kernels'
/// own speed, not the memory's) for one token, in each quantised format.
fn head_decode(c: &mut Criterion) {
    let (rows, cols) = (16384, 2560);
    let bytes: Vec<u8> = floats(rows * cols, 6)
        .iter()
        .flat_map(|v| (v * 0.05).to_le_bytes())
        .collect();
    let view = DenseView {
        dtype: DType::F32,
        data: &bytes,
        rows,
        cols,
    };
    let (m8, m4) = (Int8Matrix::from_dense(view), Int4Matrix::from_dense(view));
    let x = floats(cols, 7);
    let mut out = vec![0.0f32; rows];
    let mut g = c.benchmark_group("head_16384x2560");
    for k in Isa::available() {
        g.throughput(Throughput::Bytes(m8.bytes() as u64));
        g.bench_function(BenchmarkId::new("int8", k.name()), |b| {
            b.iter(|| int8::gemm(k.kernels(), &m8, &x, 1, &mut out))
        });
        g.throughput(Throughput::Bytes(m4.bytes() as u64));
        g.bench_function(BenchmarkId::new("int4", k.name()), |b| {
            b.iter(|| int4::gemm(k.kernels(), &m4, &x, 1, &mut out))
        });
    }
}

criterion_group!(
    benches,
    ternary_decode,
    ternary_decode_from_memory,
    ternary_decode_layers,
    attention_decode,
    softmax_640,
    attention_all_layers,
    head_decode
);
criterion_main!(benches);
