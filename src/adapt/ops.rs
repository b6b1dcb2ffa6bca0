//! Backward of each forward op, generic over the float type so that the finite-difference tests
//! can run them in f64. Every function *adds* its input gradient into the buffer it is given
//! (residual branches sum), and takes what the forward pass saved.

pub use crate::transformer::lora::Real;

fn c<F: Real>(v: f64) -> F {
    F::from(v).expect("constant fits the float type")
}

/// RMSNorm y = x · r · w with r = 1/sqrt(mean(x²) + eps): dx += r·w·dy − x·r³·mean(w·dy·x).
pub fn rms_norm_backward<F: Real>(x: &[F], w: &[F], eps: F, dy: &[F], dx: &mut [F]) {
    let n = w.len();
    for ((xr, dyr), dxr) in x
        .chunks_exact(n)
        .zip(dy.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        let nf = c::<F>(n as f64);
        let ms = xr.iter().fold(F::zero(), |s, &v| s + v * v) / nf;
        let r = F::one() / (ms + eps).sqrt();
        let dot = (0..n).fold(F::zero(), |s, i| s + w[i] * dyr[i] * xr[i]) / nf;
        let k = r * r * r * dot;
        for i in 0..n {
            dxr[i] += r * w[i] * dyr[i] - xr[i] * k;
        }
    }
}

/// The transpose of the half-split rotation is the rotation by the negative angle.
pub fn rope_backward<F: Real>(dy: &mut [F], cos: &[F], sin: &[F]) {
    let half = dy.len() / 2;
    let (a, b) = dy.split_at_mut(half);
    for i in 0..half {
        let (g1, g2) = (a[i], b[i]);
        a[i] = g1 * cos[i] + g2 * sin[i];
        b[i] = g2 * cos[i] - g1 * sin[i];
    }
}

/// ReLU² GLU m = relu(g)²·u: dg += 2·relu(g)·u·dm, du += relu(g)²·dm.
pub fn relu2_glu_backward<F: Real>(g: &[F], u: &[F], dm: &[F], dg: &mut [F], du: &mut [F]) {
    for i in 0..g.len() {
        let r = g[i].max(F::zero());
        dg[i] += c::<F>(2.0) * r * u[i] * dm[i];
        du[i] += r * r * dm[i];
    }
}

/// SiLU GLU m = g·σ(g)·u: dg += σ(g)·(1 + g·(1 − σ(g)))·u·dm, du += g·σ(g)·dm.
pub fn silu_glu_backward<F: Real>(g: &[F], u: &[F], dm: &[F], dg: &mut [F], du: &mut [F]) {
    for i in 0..g.len() {
        let s = F::one() / (F::one() + (-g[i]).exp());
        dg[i] += s * (F::one() + g[i] * (F::one() - s)) * u[i] * dm[i];
        du[i] += g[i] * s * dm[i];
    }
}

/// Shapes of one attention call: `n` queries at positions `past..past + n`, keys and values for
/// positions `0..past + n` (those before `past` are constants: no gradient flows into them).
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n: usize,
    pub past: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal GQA softmax attention, backward. The probabilities are recomputed from q and k
/// (nothing of size T² is kept between the passes). Gradients of heads sharing a K/V head sum.
/// `dk`/`dv` cover the `n` new positions only.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<F: Real>(
    s: AttnShape,
    q: &[F],
    k: &[F],
    v: &[F],
    d_out: &[F],
    dq: &mut [F],
    dk: &mut [F],
    dv: &mut [F],
) {
    let (d, heads) = (s.head_dim, s.heads);
    let (q_dim, kv_dim) = (heads * d, s.kv_heads * d);
    let group = heads / s.kv_heads;
    let scale = F::one() / c::<F>(d as f64).sqrt();
    let mut p = Vec::new();
    let mut dp = Vec::new();
    for t in 0..s.n {
        let visible = s.past + t + 1;
        for h in 0..heads {
            let kv_off = (h / group) * d;
            let qh = &q[t * q_dim + h * d..][..d];
            let doh = &d_out[t * q_dim + h * d..][..d];
            p.clear();
            p.extend((0..visible).map(|j| {
                let kj = &k[j * kv_dim + kv_off..][..d];
                F::dot(qh, kj) * scale
            }));
            let max = p.iter().fold(F::neg_infinity(), |m, &x| m.max(x));
            let mut sum = F::zero();
            p.iter_mut().for_each(|x| {
                *x = (*x - max).exp();
                sum += *x;
            });
            p.iter_mut().for_each(|x| *x = *x / sum);
            dp.clear();
            dp.extend((0..visible).map(|j| {
                let vj = &v[j * kv_dim + kv_off..][..d];
                F::dot(doh, vj)
            }));
            let pdp = p.iter().zip(&dp).fold(F::zero(), |a, (&x, &y)| a + x * y);
            for j in 0..visible {
                let ds = p[j] * (dp[j] - pdp) * scale;
                let kj = &k[j * kv_dim + kv_off..][..d];
                let dqh = &mut dq[t * q_dim + h * d..][..d];
                for i in 0..d {
                    dqh[i] += ds * kj[i];
                }
                if j >= s.past {
                    let jn = j - s.past;
                    let dkj = &mut dk[jn * kv_dim + kv_off..][..d];
                    for i in 0..d {
                        dkj[i] += ds * qh[i];
                    }
                    let dvj = &mut dv[jn * kv_dim + kv_off..][..d];
                    for i in 0..d {
                        dvj[i] += p[j] * doh[i];
                    }
                }
            }
        }
    }
}

/// Mean cross-entropy of `targets` under logits `h · Hᵀ` for a head `H` `[vocab, hidden]` read
/// one tile of rows at a time (`head_rows(r0, out)` fills `out` with rows `r0..`): the T×vocab
/// matrix never exists. Per token an online softmax keeps the running max, the sum and
/// Σ exp(l − max)·H_v, so every head row is decoded once per call. Returns the summed loss and
/// adds `scale · ∂loss_sum/∂h` into `dh`.
pub fn cross_entropy_tiled<F: Real>(
    h: &[F],
    hidden: usize,
    vocab: usize,
    head_rows: impl Fn(usize, &mut [F]),
    targets: &[u32],
    scale: F,
    dh: &mut [F],
) -> F {
    const TILE: usize = 64;
    let n = targets.len();
    let mut max = vec![F::neg_infinity(); n];
    let mut sum = vec![F::zero(); n];
    let mut acc = vec![F::zero(); n * hidden];
    let mut target_logit = vec![F::zero(); n];
    let mut tile = vec![F::zero(); TILE * hidden];
    let mut logits = [F::zero(); TILE];
    for r0 in (0..vocab).step_by(TILE) {
        let rows = TILE.min(vocab - r0);
        head_rows(r0, &mut tile[..rows * hidden]);
        for t in 0..n {
            let ht = &h[t * hidden..][..hidden];
            let mut tile_max = F::neg_infinity();
            for (r, l) in logits[..rows].iter_mut().enumerate() {
                let row = &tile[r * hidden..][..hidden];
                *l = F::dot(ht, row);
                tile_max = tile_max.max(*l);
                if r0 + r == targets[t] as usize {
                    target_logit[t] = *l;
                }
            }
            let at = &mut acc[t * hidden..][..hidden];
            if tile_max > max[t] {
                let shrink = (max[t] - tile_max).exp();
                sum[t] = sum[t] * shrink;
                at.iter_mut().for_each(|a| *a = *a * shrink);
                max[t] = tile_max;
            }
            for (r, &l) in logits[..rows].iter().enumerate() {
                let e = (l - max[t]).exp();
                sum[t] += e;
                let row = &tile[r * hidden..][..hidden];
                at.iter_mut().zip(row).for_each(|(a, &x)| *a += e * x);
            }
        }
    }
    let mut loss = F::zero();
    let mut target_row = vec![F::zero(); hidden];
    for t in 0..n {
        loss += max[t] + sum[t].ln() - target_logit[t];
        head_rows(targets[t] as usize, &mut target_row);
        let dht = &mut dh[t * hidden..][..hidden];
        for i in 0..hidden {
            dht[i] += scale * (acc[t * hidden + i] / sum[t] - target_row[i]);
        }
    }
    loss
}

/// LoRA backward: dB += scale·dy·uᵀ, du = scale·Bᵀ·dy, dA += du·xᵀ, and (when asked) dx += Aᵀ·du.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward<F: Real>(
    a: &[F],
    b: &[F],
    rank: usize,
    scale: F,
    x: &[F],
    u: &[F],
    dy: &[F],
    da: &mut [F],
    db: &mut [F],
    dx: Option<&mut [F]>,
) {
    let cols = a.len() / rank;
    let rows = b.len() / rank;
    let n = x.len() / cols;
    let mut du = vec![F::zero(); n * rank];
    for t in 0..n {
        let dyt = &dy[t * rows..][..rows];
        let ut = &u[t * rank..][..rank];
        let dut = &mut du[t * rank..][..rank];
        for r in 0..rows {
            let g = scale * dyt[r];
            let br = &b[r * rank..][..rank];
            let dbr = &mut db[r * rank..][..rank];
            for j in 0..rank {
                dbr[j] += g * ut[j];
                dut[j] += g * br[j];
            }
        }
        let xt = &x[t * cols..][..cols];
        for j in 0..rank {
            let daj = &mut da[j * cols..][..cols];
            for i in 0..cols {
                daj[i] += dut[j] * xt[i];
            }
        }
    }
    if let Some(dx) = dx {
        for t in 0..n {
            let dxt = &mut dx[t * cols..][..cols];
            for j in 0..rank {
                let g = du[t * rank + j];
                let aj = &a[j * cols..][..cols];
                for i in 0..cols {
                    dxt[i] += g * aj[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each backward against central finite differences of its forward, all in f64.
    use super::*;
    use crate::transformer::lora::lora_forward;

    fn rand_vec(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// ∂f/∂x by central differences.
    fn numeric(f: impl Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
        let h = 1e-6;
        (0..x.len())
            .map(|i| {
                let mut p = x.to_vec();
                p[i] += h;
                let up = f(&p);
                p[i] -= 2.0 * h;
                (up - f(&p)) / (2.0 * h)
            })
            .collect()
    }

    fn assert_close(what: &str, got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let tol = 1e-6 * (1.0 + w.abs());
            assert!(
                (g - w).abs() <= tol,
                "{what}[{i}]: analytic {g}, numeric {w}"
            );
        }
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
        x.chunks(w.len())
            .flat_map(|r| {
                let inv = 1.0 / (dot(r, r) / w.len() as f64 + eps).sqrt();
                r.iter().zip(w).map(move |(x, w)| x * inv * w)
            })
            .collect()
    }

    #[test]
    fn rms_norm_gradient() {
        let (x, w, dy) = (rand_vec(1, 3 * 7), rand_vec(2, 7), rand_vec(3, 3 * 7));
        let mut dx = vec![0.0; x.len()];
        rms_norm_backward(&x, &w, 1e-5, &dy, &mut dx);
        assert_close(
            "dx",
            &dx,
            &numeric(|x| dot(&rms_norm(x, &w, 1e-5), &dy), &x),
        );
    }

    fn rope(x: &[f64], cos: &[f64], sin: &[f64]) -> Vec<f64> {
        let h = x.len() / 2;
        let mut y = x.to_vec();
        for i in 0..h {
            y[i] = x[i] * cos[i] - x[i + h] * sin[i];
            y[i + h] = x[i + h] * cos[i] + x[i] * sin[i];
        }
        y
    }

    #[test]
    fn rope_gradient() {
        let angles = rand_vec(4, 5);
        let cos: Vec<f64> = angles.iter().map(|a| (a * 3.0).cos()).collect();
        let sin: Vec<f64> = angles.iter().map(|a| (a * 3.0).sin()).collect();
        let (x, dy) = (rand_vec(5, 10), rand_vec(6, 10));
        let mut dx = dy.clone();
        rope_backward(&mut dx, &cos, &sin);
        assert_close("dx", &dx, &numeric(|x| dot(&rope(x, &cos, &sin), &dy), &x));
    }

    #[test]
    fn glu_gradients() {
        let (g, u, dm) = (rand_vec(7, 9), rand_vec(8, 9), rand_vec(9, 9));
        type Act = fn(f64) -> f64;
        let relu2: Act = |g| g.max(0.0) * g.max(0.0);
        let silu: Act = |g| g / (1.0 + (-g).exp());
        for (name, act, back) in [
            (
                "relu2",
                relu2,
                relu2_glu_backward::<f64> as fn(&[f64], &[f64], &[f64], &mut [f64], &mut [f64]),
            ),
            ("silu", silu, silu_glu_backward::<f64>),
        ] {
            let (mut dg, mut du) = (vec![0.0; 9], vec![0.0; 9]);
            back(&g, &u, &dm, &mut dg, &mut du);
            let f =
                |g: &[f64], u: &[f64]| -> f64 { (0..9).map(|i| act(g[i]) * u[i] * dm[i]).sum() };
            assert_close(&format!("{name} dg"), &dg, &numeric(|g| f(g, &u), &g));
            assert_close(&format!("{name} du"), &du, &numeric(|u| f(&g, u), &u));
        }
    }

    fn attention(s: AttnShape, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
        let (d, kv_dim, q_dim) = (s.head_dim, s.kv_heads * s.head_dim, s.heads * s.head_dim);
        let group = s.heads / s.kv_heads;
        let mut out = vec![0.0; s.n * q_dim];
        for t in 0..s.n {
            for h in 0..s.heads {
                let off = (h / group) * d;
                let qh = &q[t * q_dim + h * d..][..d];
                let scores: Vec<f64> = (0..s.past + t + 1)
                    .map(|j| dot(qh, &k[j * kv_dim + off..][..d]) / (d as f64).sqrt())
                    .collect();
                let m = scores.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                for (j, sc) in scores.iter().enumerate() {
                    let p = (sc - m).exp() / z;
                    for i in 0..d {
                        out[t * q_dim + h * d + i] += p * v[j * kv_dim + off + i];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_gradient_with_gqa_and_constant_past() {
        let s = AttnShape {
            n: 4,
            past: 3,
            heads: 4,
            kv_heads: 2,
            head_dim: 3,
        };
        let total = s.past + s.n;
        let (q, k, v) = (
            rand_vec(10, s.n * 12),
            rand_vec(11, total * 6),
            rand_vec(12, total * 6),
        );
        let dout = rand_vec(13, s.n * 12);
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; s.n * 6], vec![0.0; s.n * 6]);
        attention_backward(s, &q, &k, &v, &dout, &mut dq, &mut dk, &mut dv);
        let past = s.past * 6;
        assert_close(
            "dq",
            &dq,
            &numeric(|q| dot(&attention(s, q, &k, &v), &dout), &q),
        );
        let with = |base: &[f64], new: &[f64]| [&base[..past], new].concat();
        assert_close(
            "dk",
            &dk,
            &numeric(
                |kn| dot(&attention(s, &q, &with(&k, kn), &v), &dout),
                &k[past..],
            ),
        );
        assert_close(
            "dv",
            &dv,
            &numeric(
                |vn| dot(&attention(s, &q, &k, &with(&v, vn)), &dout),
                &v[past..],
            ),
        );
    }

    #[test]
    fn cross_entropy_gradient_across_tiles() {
        // 150 rows: two whole tiles and a partial one.
        let (hidden, vocab) = (5, 150);
        let head = rand_vec(14, vocab * hidden)
            .iter()
            .map(|x| x * 4.0)
            .collect::<Vec<_>>();
        let h = rand_vec(15, 3 * hidden);
        let targets = [0u32, 149, 77];
        let rows =
            |r0: usize, out: &mut [f64]| out.copy_from_slice(&head[r0 * hidden..][..out.len()]);
        let loss = |h: &[f64]| -> f64 {
            (0..3)
                .map(|t| {
                    let l: Vec<f64> = (0..vocab)
                        .map(|v| dot(&h[t * hidden..][..hidden], &head[v * hidden..][..hidden]))
                        .collect();
                    let m = l.iter().cloned().fold(f64::MIN, f64::max);
                    m + l.iter().map(|x| (x - m).exp()).sum::<f64>().ln() - l[targets[t] as usize]
                })
                .sum()
        };
        let mut dh = vec![0.0; h.len()];
        let got = cross_entropy_tiled(&h, hidden, vocab, rows, &targets, 1.0, &mut dh);
        assert!((got - loss(&h)).abs() < 1e-10, "loss {got} vs {}", loss(&h));
        assert_close("dh", &dh, &numeric(loss, &h));
    }

    #[test]
    fn lora_gradients() {
        let (rank, rows, cols, n) = (3, 5, 7, 4);
        let (a, b, x, dy) = (
            rand_vec(16, rank * cols),
            rand_vec(17, rows * rank),
            rand_vec(18, n * cols),
            rand_vec(19, n * rows),
        );
        let f = |a: &[f64], b: &[f64], x: &[f64]| {
            let mut out = vec![0.0; n * rows];
            lora_forward(a, b, rank, 0.5, x, &mut out);
            dot(&out, &dy)
        };
        let mut out = vec![0.0; n * rows];
        let u = lora_forward(&a, &b, rank, 0.5, &x, &mut out);
        let (mut da, mut db, mut dx) = (vec![0.0; a.len()], vec![0.0; b.len()], vec![0.0; x.len()]);
        lora_backward(
            &a,
            &b,
            rank,
            0.5,
            &x,
            &u,
            &dy,
            &mut da,
            &mut db,
            Some(&mut dx),
        );
        assert_close("dA", &da, &numeric(|a| f(a, &b, &x), &a));
        assert_close("dB", &db, &numeric(|b| f(&a, b, &x), &b));
        assert_close("dx", &dx, &numeric(|x| f(&a, &b, x), &x));
    }
}
