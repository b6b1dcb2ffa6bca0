//! The sampler on a LLaMA-3-sized row of logits (128256), with llama.cpp's default settings
//! (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05), against the previous way of building the
//! candidates (a stable sort of the whole row, then the cut to k), measured in the same run:
//!
//!     cargo bench --bench sampling
use std::hint::black_box;

use bit_ttt::__internal::sampling::{Rng, SamplingParams, sample, sample_candidates};
use criterion::{Criterion, criterion_group, criterion_main};

fn logits() -> Vec<f32> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..128_256)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let row = logits();
    let p = SamplingParams::default();
    let mut g = c.benchmark_group("sample_128k");
    g.bench_function("select_top_k", |b| {
        let mut rng = Rng::new(1);
        b.iter(|| sample(black_box(&mut row.clone()), &p, &[], &mut rng))
    });
    g.bench_function("baseline_full_sort", |b| {
        let mut rng = Rng::new(1);
        b.iter(|| {
            let r = black_box(row.clone()); // as the other side's copy of the row
            let mut cand: Vec<(u32, f32)> =
                r.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            cand.sort_by(|a, b| b.1.total_cmp(&a.1));
            cand.truncate(p.top_k);
            sample_candidates(cand, &p, &mut rng)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
