//! An independent float64 reference of every layer's forward pass.
//!
//! Written from the spec (`shared/spec/pytorch-semantics.md` §2, §4, §6, §7, §8) only; it shares
//! no code with normkit (nothing from the crate is imported here). Tensors are plain `Vec<f64>`
//! in logical row-major order with shape `(N, C, *S)`. Statistics use two passes in f64
//! (mean, then Σ(x − μ)²).

/// `(N, C, S)` for a `(N, C, *S)` shape (S = product of the spatial dims, 1 when none).
pub fn ncs(shape: &[usize]) -> (usize, usize, usize) {
    assert!(shape.len() >= 2, "reference: rank >= 2 needed");
    (shape[0], shape[1], shape[2..].iter().product())
}

/// Two-pass mean and sum of squared deviations over an iterator of values.
fn mean_m2(vals: &[f64]) -> (f64, f64) {
    let m = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / m;
    let m2 = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>();
    (mean, m2)
}

/// Batch statistics of one training step of batch norm, per channel.
#[derive(Clone, Debug)]
pub struct BnStats {
    pub mean: Vec<f64>,
    /// `1/sqrt(biased_var + eps)`.
    pub invstd: Vec<f64>,
    /// Biased variance `Σ(x−μ)²/M`.
    pub var: Vec<f64>,
    /// Unbiased variance `Σ(x−μ)²/(M−1)` (NaN for M = 1, spec §2.4).
    pub unbiased_var: Vec<f64>,
}

fn invstd(var: f64, eps: f64) -> f64 {
    // C++ rule (spec §2.4): zero variance and zero eps give invstd 0, not infinity.
    if var == 0.0 && eps == 0.0 {
        0.0
    } else {
        1.0 / (var + eps).sqrt()
    }
}

/// Batch-norm statistics over `N·S` per channel.
pub fn batch_norm_stats(x: &[f64], shape: &[usize], eps: f64) -> BnStats {
    let (n, c, s) = ncs(shape);
    let mut st = BnStats {
        mean: vec![0.0; c],
        invstd: vec![0.0; c],
        var: vec![0.0; c],
        unbiased_var: vec![0.0; c],
    };
    for ch in 0..c {
        let mut vals = Vec::with_capacity(n * s);
        for b in 0..n {
            let base = (b * c + ch) * s;
            vals.extend_from_slice(&x[base..base + s]);
        }
        let m = vals.len() as f64;
        let (mean, m2) = mean_m2(&vals);
        st.mean[ch] = mean;
        st.var[ch] = m2 / m;
        st.unbiased_var[ch] = m2 / (m - 1.0);
        st.invstd[ch] = invstd(m2 / m, eps);
    }
    st
}

/// Applies per-channel `y = (x − mean_c)·invstd_c·γ_c + β_c`.
pub fn apply_per_channel(
    x: &[f64],
    shape: &[usize],
    mean: &[f64],
    inv: &[f64],
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
) -> Vec<f64> {
    let (n, c, s) = ncs(shape);
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            let g = weight.map_or(1.0, |w| w[ch]);
            let be = bias.map_or(0.0, |w| w[ch]);
            let base = (b * c + ch) * s;
            for i in base..base + s {
                y[i] = (x[i] - mean[ch]) * inv[ch] * g + be;
            }
        }
    }
    y
}

/// `F.batch_norm` in training mode: output and batch statistics.
pub fn batch_norm_train(
    x: &[f64],
    shape: &[usize],
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, BnStats) {
    let st = batch_norm_stats(x, shape, eps);
    let y = apply_per_channel(x, shape, &st.mean, &st.invstd, weight, bias);
    (y, st)
}

/// `F.batch_norm` in eval mode with running statistics (no special case for zero, §2.5).
pub fn batch_norm_eval(
    x: &[f64],
    shape: &[usize],
    running_mean: &[f64],
    running_var: &[f64],
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> Vec<f64> {
    let inv: Vec<f64> = running_var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    apply_per_channel(x, shape, running_mean, &inv, weight, bias)
}

/// Running-statistic update with factor `f` (§2.4).
pub fn update_running(rm: &mut [f64], rv: &mut [f64], mean: &[f64], unbiased_var: &[f64], f: f64) {
    for i in 0..rm.len() {
        rm[i] = (1.0 - f) * rm[i] + f * mean[i];
        rv[i] = (1.0 - f) * rv[i] + f * unbiased_var[i];
    }
}

/// A BatchNorm module (§2.2) in float64.
#[derive(Clone, Debug)]
pub struct BatchNormRef {
    pub eps: f64,
    pub momentum: Option<f64>,
    pub training: bool,
    /// The attribute `track_running_stats` at call time.
    pub track_running_stats: bool,
    pub weight: Option<Vec<f64>>,
    pub bias: Option<Vec<f64>>,
    pub running_mean: Option<Vec<f64>>,
    pub running_var: Option<Vec<f64>>,
    pub num_batches_tracked: Option<i64>,
}

impl BatchNormRef {
    pub fn new(c: usize, eps: f64, momentum: Option<f64>, affine: bool, track: bool) -> Self {
        BatchNormRef {
            eps,
            momentum,
            training: true,
            track_running_stats: track,
            weight: affine.then(|| vec![1.0; c]),
            bias: affine.then(|| vec![0.0; c]),
            running_mean: track.then(|| vec![0.0; c]),
            running_var: track.then(|| vec![1.0; c]),
            num_batches_tracked: track.then_some(0),
        }
    }

    /// Forward pass; mutates the running statistics like PyTorch (no validation here).
    pub fn forward(&mut self, x: &[f64], shape: &[usize]) -> Vec<f64> {
        let mut f = self.momentum.unwrap_or(0.0);
        if self.training && self.track_running_stats {
            if let Some(nbt) = self.num_batches_tracked.as_mut() {
                *nbt += 1;
                f = match self.momentum {
                    None => 1.0 / *nbt as f64,
                    Some(m) => m,
                };
            }
        }
        let has_buf = self.running_mean.is_some() && self.running_var.is_some();
        let use_batch = self.training || !has_buf;
        let pass_buffers = !self.training || self.track_running_stats;
        let w = self.weight.as_deref();
        let b = self.bias.as_deref();
        if x.is_empty() {
            return Vec::new();
        }
        if use_batch {
            let (y, st) = batch_norm_train(x, shape, w, b, self.eps);
            if pass_buffers {
                if let (Some(rm), Some(rv)) =
                    (self.running_mean.as_mut(), self.running_var.as_mut())
                {
                    update_running(rm, rv, &st.mean, &st.unbiased_var, f);
                }
            }
            y
        } else {
            batch_norm_eval(
                x,
                shape,
                self.running_mean.as_ref().unwrap(),
                self.running_var.as_ref().unwrap(),
                w,
                b,
                self.eps,
            )
        }
    }
}

/// Per-instance statistics of instance norm, indexed `n·C + c`.
#[derive(Clone, Debug)]
pub struct InStats {
    pub mean: Vec<f64>,
    pub invstd: Vec<f64>,
    pub unbiased_var: Vec<f64>,
}

/// `F.instance_norm` with input statistics (§4.3): output and per-instance statistics.
pub fn instance_norm_train(
    x: &[f64],
    shape: &[usize],
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, InStats) {
    let (n, c, s) = ncs(shape);
    let mut st = InStats {
        mean: vec![0.0; n * c],
        invstd: vec![0.0; n * c],
        unbiased_var: vec![0.0; n * c],
    };
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            let i = b * c + ch;
            let base = i * s;
            let (mean, m2) = mean_m2(&x[base..base + s]);
            let inv = invstd(m2 / s as f64, eps);
            st.mean[i] = mean;
            st.invstd[i] = inv;
            st.unbiased_var[i] = m2 / (s as f64 - 1.0);
            let g = weight.map_or(1.0, |w| w[ch]);
            let be = bias.map_or(0.0, |w| w[ch]);
            for k in base..base + s {
                y[k] = (x[k] - mean) * inv * g + be;
            }
        }
    }
    (y, st)
}

/// Instance-norm running update: batch average of the per-instance statistics (§4.3).
pub fn instance_norm_update(rm: &mut [f64], rv: &mut [f64], st: &InStats, n: usize, momentum: f64) {
    let c = rm.len();
    for ch in 0..c {
        let mm: f64 = (0..n).map(|b| st.mean[b * c + ch]).sum::<f64>() / n as f64;
        let vv: f64 = (0..n).map(|b| st.unbiased_var[b * c + ch]).sum::<f64>() / n as f64;
        rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mm;
        rv[ch] = (1.0 - momentum) * rv[ch] + momentum * vv;
    }
}

/// Group norm (§7.3): output, mean and invstd per `(n, g)` (row-major `(N, G)`).
pub fn group_norm(
    x: &[f64],
    shape: &[usize],
    groups: usize,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n, c, s) = ncs(shape);
    let cpg = c / groups;
    let len = cpg * s;
    let mut y = vec![0.0; x.len()];
    let mut means = vec![0.0; n * groups];
    let mut invs = vec![0.0; n * groups];
    for b in 0..n {
        for g in 0..groups {
            let base = (b * c + g * cpg) * s;
            let (mean, m2) = mean_m2(&x[base..base + len]);
            // PyTorch's max(var, 0) keeps a NaN variance NaN (f64::max would turn it into 0).
            let var = m2 / len as f64;
            let var = if var < 0.0 { 0.0 } else { var };
            let inv = 1.0 / (var + eps).sqrt();
            means[b * groups + g] = mean;
            invs[b * groups + g] = inv;
            for k in 0..len {
                let ch = g * cpg + k / s;
                let gm = weight.map_or(1.0, |w| w[ch]);
                let be = bias.map_or(0.0, |w| w[ch]);
                y[base + k] = (x[base + k] - mean) * inv * gm + be;
            }
        }
    }
    (y, means, invs)
}

/// Layer norm (§6.3) over the trailing `norm_numel` elements of every row: output, mean and
/// invstd per row. Weight and bias are elementwise over the normalised dims.
pub fn layer_norm(
    x: &[f64],
    norm_numel: usize,
    weight: Option<&[f64]>,
    bias: Option<&[f64]>,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = x.len().checked_div(norm_numel).unwrap_or(0);
    let mut y = vec![0.0; x.len()];
    let mut means = vec![0.0; rows];
    let mut invs = vec![0.0; rows];
    for r in 0..rows {
        let base = r * norm_numel;
        let (mean, m2) = mean_m2(&x[base..base + norm_numel]);
        let inv = 1.0 / (m2 / norm_numel as f64 + eps).sqrt();
        means[r] = mean;
        invs[r] = inv;
        for k in 0..norm_numel {
            let gm = weight.map_or(1.0, |w| w[k]);
            let be = bias.map_or(0.0, |w| w[k]);
            y[base + k] = (x[base + k] - mean) * inv * gm + be;
        }
    }
    (y, means, invs)
}

/// Local response norm (§8.3): channel axis is dim 1, window front-heavy for even sizes,
/// divisor always `size`, out-of-range channels count as zero.
pub fn local_response_norm(
    x: &[f64],
    shape: &[usize],
    size: usize,
    alpha: f64,
    beta: f64,
    k: f64,
) -> Vec<f64> {
    let (n, c, s) = ncs(shape);
    let before = size / 2;
    let after = (size - 1) / 2;
    let mut y = vec![0.0; x.len()];
    for b in 0..n {
        for ch in 0..c {
            let lo = ch.saturating_sub(before);
            let hi = (ch + after).min(c - 1);
            for p in 0..s {
                let mut sum = 0.0;
                for j in lo..=hi {
                    let v = x[(b * c + j) * s + p];
                    sum += v * v;
                }
                let denom = (k + alpha / size as f64 * sum).powf(beta);
                let i = (b * c + ch) * s + p;
                y[i] = x[i] / denom;
            }
        }
    }
    y
}

#[cfg(test)]
mod self_tests {
    // The spec's worked examples (these run inside every test binary that includes `common`).
    use super::*;

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn reference_matches_spec_worked_examples() {
        // §2.4
        let x = [1.0, 10.0, 2.0, 20.0, 4.0, 60.0];
        let mut m = BatchNormRef::new(2, 1e-5, Some(0.1), true, true);
        let y = m.forward(&x, &[3, 2]);
        close(
            &y,
            &[
                -1.069041531450298,
                -0.9258200898530504,
                -0.2672603828625746,
                -0.4629100449265252,
                1.3363019143128718,
                1.3887301347795757,
            ],
            1e-12,
        );
        close(
            m.running_mean.as_ref().unwrap(),
            &[0.23333333333333336, 3.0],
            1e-12,
        );
        close(
            m.running_var.as_ref().unwrap(),
            &[1.1333333333333333, 70.9],
            1e-12,
        );
        // §8.3
        let y = local_response_norm(&[1.0, 2.0, 3.0, 4.0], &[1, 4, 1], 2, 1.0, 1.0, 1.0);
        close(
            &y,
            &[
                0.6666666666666666,
                0.5714285714285714,
                0.4,
                0.2962962962962963,
            ],
            1e-12,
        );
        let y = local_response_norm(&[1.0, 2.0, 3.0, 4.0], &[1, 4, 1], 3, 1.0, 1.0, 1.0);
        close(
            &y,
            &[
                0.37499999999999994,
                0.3529411764705882,
                0.28125,
                0.42857142857142855,
            ],
            1e-12,
        );
        // §6.3
        let (y, _, _) = layer_norm(&[1.0, 2.0, 4.0, 8.0], 4, None, None, 1e-5);
        close(
            &y,
            &[
                -1.0257545754961932,
                -0.6527529116793956,
                0.09325041595419938,
                1.5852570712213894,
            ],
            1e-12,
        );
        // §4.4: eps = 0 and a constant plane give 0
        let (y, _) = instance_norm_train(&[1.0; 8], &[1, 2, 4], None, None, 0.0);
        assert!(y.iter().all(|v| *v == 0.0));
    }
}
