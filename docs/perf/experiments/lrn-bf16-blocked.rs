//! LocalResponseNorm bf16 without the divider, channel blocks and Newton roots (round 29,
//! docs/perf/cpu.md): a scratch kernel set, not part of normkit's build, kept as the record of
//! what was measured. bf16 storage as u16, the standard case (N x 96 x 55 x 55, size 5,
//! alpha 1e-4, beta 0.75, k 1).
//!
//! * `k0`: today's plane kernel (16 positions, five window planes, `x / (sqrt(d)·sqrt(sqrt(d)))`).
//! * `kb`/`ki`: B output channels per pass sharing their B + 4 planes' squares (same additions
//!   in the same order, so the same sums), exact or Newton power.
//! * `ki` mode 2 (`il*`): all B outputs' Newton roots taken side by side (B·16 lanes at once).
//! * `kr`: a tile of positions rolled over all channels (each square once, five in registers).
//! * Newton: `z = d^(-1/4)` from `0x4f584000 − bits(d)/4` and two third-order steps
//!   `z += z·e·(1/4 + 5e/32)`, `e = 1 − d·z⁴`; `y = x·z³`; chunks with a denominator outside
//!   [1e-18, 1e18] or NaN take a non-inlined per-element path (inlined, LLVM merged the two
//!   branches into one select and paid the divider and the root on every element: the cause of
//!   round 16's 0.45–0.89x).
//!
//! Build and run: `cargo new lrnb && cp lrn-bf16-blocked.rs lrnb/src/main.rs && cd lrnb &&
//! RUSTFLAGS="-C target-feature=+avx512f,+avx512bw,+avx512vl,+avx2,+fma,+f16c" cargo build
//! --release && ./target/release/lrnb N THREADS REPS` (`ONLY=name` one kernel, `MICRO=1` the
//! L1-resident per-element costs).
use std::time::Instant;

#[inline(always)]
fn b2f(h: u16) -> f32 { f32::from_bits((h as u32) << 16) }
#[inline(always)]
fn rounded(v: f32) -> u32 {
    let x = v.to_bits();
    let r = x.wrapping_add(0x7FFF + ((x >> 16) & 1));
    if v.is_nan() { x | 0x0040_0000 } else { r }
}
#[inline(always)]
fn f2b(v: f32) -> u16 { (rounded(v) >> 16) as u16 }

#[derive(Clone, Copy)]
struct Den { scale: f32, k: f32 }

#[inline(always)]
fn div34(v: f32, d: f32) -> f32 { let r = d.sqrt(); v / (r * r.sqrt()) }

/// z = d^-1/4: seed + 2 cubic steps
#[inline(always)]
fn rq(d: f32) -> f32 {
    let mut z = f32::from_bits(0x4f58_4000u32.wrapping_sub(d.to_bits() >> 2));
    for _ in 0..2 {
        let z2 = z * z;
        let z4 = z2 * z2;
        let e = (-d).mul_add(z4, 1.0);
        let c = e.mul_add(5.0 / 32.0, 0.25);
        let q = z * e;
        z = q.mul_add(c, z);
    }
    z
}
#[inline(always)]
fn in_dom(d: f32) -> bool { d >= 1e-18 && d <= 1e18 }
#[inline(always)]
fn mul34(v: f32, d: f32) -> f32 { let z = rq(d); v * (z * z * z) }

const L: usize = 16;

#[inline(never)]
#[cold]
fn slow(xq: &[u16], yq: &mut [u16], d: &[f32]) {
    for j in 0..d.len() { yq[j] = f2b(if in_dom(d[j]) { mul34(b2f(xq[j]), d[j]) } else { div34(b2f(xq[j]), d[j]) }); }
}

// K0: current kernel
fn k0(x: &[u16], y: &mut [u16], c: usize, s: usize, den: Den) {
    let planes: Vec<&[u16]> = x.chunks(s).collect();
    for (ci, yp) in y.chunks_mut(s).enumerate() {
        let lo = ci.saturating_sub(2);
        let hi = (ci + 2).min(c - 1);
        let w = &planes[lo..=hi];
        let xp = planes[ci];
        let full = s - s % L;
        let mut i = 0;
        while i < full {
            let mut acc = [0f32; L];
            for p in w { let q = &p[i..i + L]; for j in 0..L { let v = b2f(q[j]); acc[j] += v * v; } }
            let (xq, yq) = (&xp[i..i + L], &mut yp[i..i + L]);
            for j in 0..L { yq[j] = f2b(div34(b2f(xq[j]), acc[j] * den.scale + den.k)); }
            i += L;
        }
        for i in full..s {
            let mut a = 0f32;
            for p in w { let v = b2f(p[i]); a += v * v; }
            yp[i] = f2b(div34(b2f(xp[i]), a * den.scale + den.k));
        }
    }
}

/// blocked: B outputs per pass sharing the squares; `NEWTON` picks the power.
#[inline(always)]
fn chunk_block<const B: usize, const NEWTON: bool, const M: usize>(planes: &[&[u16]], yps: &mut [&mut [u16]], c0: usize, c: usize, i: usize, den: Den) {
    // window planes needed: c0-2 ..= c0+B-1+2
    let mut sq = [[0f32; M]; 12];
    let lo = c0.saturating_sub(2);
    let hi = (c0 + B + 1).min(c - 1);
    for (k, p) in planes[lo..=hi].iter().enumerate() {
        let q = &p[i..i + M];
        for j in 0..M { let v = b2f(q[j]); sq[k][j] = v * v; }
    }
    for b in 0..B {
        let ci = c0 + b;
        let wl = ci.saturating_sub(2) - lo;
        let wh = (ci + 2).min(c - 1) - lo;
        let mut acc = sq[wl];
        for k in wl + 1..=wh { for j in 0..M { acc[j] += sq[k][j]; } }
        let xq = &planes[ci][i..i + M];
        let yq = &mut yps[b][i..i + M];
        let d: [f32; M] = std::array::from_fn(|j| acc[j] * den.scale + den.k);
        if NEWTON {
            if d.iter().fold(true, |ok, &d| ok & in_dom(d)) {
                for j in 0..M { yq[j] = f2b(mul34(b2f(xq[j]), d[j])); }
            } else {
                slow(xq, yq, &d);
            }
        } else {
            for j in 0..M { yq[j] = f2b(div34(b2f(xq[j]), d[j])); }
        }
    }
}

/// One output channel by `chunk_block` (edge channels, and the remainder of the blocks).
fn one_channel<const NEWTON: bool, const M: usize>(planes: &[&[u16]], yps: &mut [&mut [u16]], c0: usize, c: usize, s: usize, den: Den) {
    let full = s - s % M;
    let mut i = 0;
    while i < full { chunk_block::<1, NEWTON, M>(planes, yps, c0, c, i, den); i += M; }
    for i in full..s { chunk_block::<1, NEWTON, 1>(planes, yps, c0, c, i, den); }
}

fn kb<const B: usize, const NEWTON: bool, const M: usize>(x: &[u16], y: &mut [u16], c: usize, s: usize, den: Den) {
    let planes: Vec<&[u16]> = x.chunks(s).collect();
    let mut ys: Vec<&mut [u16]> = y.chunks_mut(s).collect();
    let mut c0 = 0;
    while c0 < c {
        if c0 + B <= c {
            let yps = &mut ys[c0..c0 + B];
            let full = s - s % M;
            let mut i = 0;
            while i < full { chunk_block::<B, NEWTON, M>(&planes, yps, c0, c, i, den); i += M; }
            for i in full..s { chunk_block::<B, NEWTON, 1>(&planes, yps, c0, c, i, den); }
            c0 += B;
        } else {
            one_channel::<NEWTON, M>(&planes, &mut ys[c0..c0 + 1], c0, c, s, den);
            c0 += 1;
        }
    }
}


/// interior block: W = B + 4 planes, output b uses squares b..b+5 (window 5)
#[inline(always)]
fn chunk_int<const B: usize, const W: usize, const M: usize, const MODE: u8>(pl: &[&[u16]; W], ys: &mut [&mut [u16]], i: usize, den: Den) {
    let mut sq = [[0f32; M]; W];
    for k in 0..W {
        let q = &pl[k][i..i + M];
        for j in 0..M { let v = b2f(q[j]); sq[k][j] = v * v; }
    }
    for b in 0..B {
        let mut acc = sq[b];
        for k in 1..5 { for j in 0..M { acc[j] += sq[b + k][j]; } }
        let xq = &pl[b + 2][i..i + M];
        let yq = &mut ys[b][i..i + M];
        let d: [f32; M] = std::array::from_fn(|j| acc[j] * den.scale + den.k);
        if MODE == 1 {
            for j in 0..M { yq[j] = f2b(b2f(xq[j]) * d[j]); }
        } else if d.iter().fold(true, |ok, &d| ok & in_dom(d)) {
            for j in 0..M { yq[j] = f2b(mul34(b2f(xq[j]), d[j])); }
        } else {
            slow(xq, yq, &d);
        }
    }
}

/// MODE 0: Newton per output channel; 1: a plain product (the floor); 2: the B channels' roots
/// side by side (`chunk_il`, B·M = BM lanes).
fn ki<const B: usize, const W: usize, const M: usize, const MODE: u8, const BM: usize>(x: &[u16], y: &mut [u16], c: usize, s: usize, den: Den) {
    let planes: Vec<&[u16]> = x.chunks(s).collect();
    let mut ys: Vec<&mut [u16]> = y.chunks_mut(s).collect();
    let mut c0 = 0;
    while c0 < c {
        if c0 >= 2 && c0 + B + 2 <= c {
            let pl: [&[u16]; W] = std::array::from_fn(|k| &planes[c0 - 2 + k][..s]);
            let yps = &mut ys[c0..c0 + B];
            let full = s - s % M;
            let mut i = 0;
            while i < full {
                if MODE == 2 { chunk_il::<B, W, M, BM>(&pl, yps, i, den) } else { chunk_int::<B, W, M, MODE>(&pl, yps, i, den) }
                i += M;
            }
            for i in full..s { chunk_int::<B, W, 1, 0>(&pl, yps, i, den); }
            c0 += B;
        } else {
            one_channel::<true, M>(&planes, &mut ys[c0..c0 + 1], c0, c, s, den);
            c0 += 1;
        }
    }
}


/// rolling over channels for a tile of M positions: squares of 5 planes in registers
#[inline(always)]
fn roll_tile<const M: usize, const NEWTON: bool>(x: &[u16], y: &mut [u16], c: usize, s: usize, i: usize, den: Den) {
    let load_sq = |ch: usize| -> [f32; M] {
        if ch < c {
            let q: &[u16; M] = x[ch * s + i..ch * s + i + M].try_into().unwrap();
            std::array::from_fn(|j| { let v = b2f(q[j]); v * v })
        } else { [0f32; M] }
    };
    let mut w = [[0f32; M]; 5];
    w[2] = load_sq(0);
    w[3] = load_sq(1);
    w[4] = load_sq(2);
    for ch in 0..c {
        let mut acc = w[0];
        for k in 1..5 { for j in 0..M { acc[j] += w[k][j]; } }
        let xq: &[u16; M] = x[ch * s + i..ch * s + i + M].try_into().unwrap();
        let yq: &mut [u16; M] = (&mut y[ch * s + i..ch * s + i + M]).try_into().unwrap();
        let d: [f32; M] = std::array::from_fn(|j| acc[j] * den.scale + den.k);
        if !NEWTON {
            for j in 0..M { yq[j] = f2b(div34(b2f(xq[j]), d[j])); }
        } else if d.iter().fold(true, |ok, &d| ok & in_dom(d)) {
            for j in 0..M { yq[j] = f2b(mul34(b2f(xq[j]), d[j])); }
        } else {
            slow(xq, yq, &d);
        }
        w = [w[1], w[2], w[3], w[4], load_sq(ch + 3)];
    }
}

fn kr<const M: usize, const NEWTON: bool>(x: &[u16], y: &mut [u16], c: usize, s: usize, den: Den) {
    let full = s - s % M;
    let mut i = 0;
    while i < full { roll_tile::<M, NEWTON>(x, y, c, s, i, den); i += M; }
    for i in full..s { roll_tile::<1, NEWTON>(x, y, c, s, i, den); }
}


/// interior block, all B outputs' roots interleaved (B*M lanes at once)
#[inline(always)]
fn chunk_il<const B: usize, const W: usize, const M: usize, const BM: usize>(pl: &[&[u16]; W], ys: &mut [&mut [u16]], i: usize, den: Den) {
    let mut sq = [[0f32; M]; W];
    for k in 0..W {
        let q: &[u16; M] = pl[k][i..i + M].try_into().unwrap();
        for j in 0..M { let v = b2f(q[j]); sq[k][j] = v * v; }
    }
    let mut d = [0f32; BM];
    let mut xv = [0f32; BM];
    for b in 0..B {
        let xq: &[u16; M] = pl[b + 2][i..i + M].try_into().unwrap();
        for j in 0..M {
            let a = sq[b][j] + sq[b + 1][j] + sq[b + 2][j] + sq[b + 3][j] + sq[b + 4][j];
            d[b * M + j] = a * den.scale + den.k;
            xv[b * M + j] = b2f(xq[j]);
        }
    }
    let mut o = [0u16; BM];
    if d.iter().fold(true, |ok, &d| ok & in_dom(d)) {
        for j in 0..BM { o[j] = f2b(mul34(xv[j], d[j])); }
    } else {
        slow_f(&xv, &mut o, &d);
    }
    for b in 0..B {
        let yq: &mut [u16; M] = (&mut ys[b][i..i + M]).try_into().unwrap();
        yq.copy_from_slice(&o[b * M..b * M + M]);
    }
}

#[inline(never)]
#[cold]
fn slow_f(xq: &[f32], yq: &mut [u16], d: &[f32]) {
    for j in 0..d.len() { yq[j] = f2b(if in_dom(d[j]) { mul34(xq[j], d[j]) } else { div34(xq[j], d[j]) }); }
}

type K = fn(&[u16], &mut [u16], usize, usize, Den);

fn run(name: &str, f: K, x: &[u16], y: &mut [u16], n: usize, c: usize, s: usize, den: Den, threads: usize, reps: usize) -> f64 {
    let sample = c * s;
    let mut ts = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        if threads == 1 {
            for (xs, ys) in x.chunks(sample).zip(y.chunks_mut(sample)) { f(xs, ys, c, s, den); }
        } else {
            let half = (n / 2) * sample;
            let (x0, x1) = x.split_at(half);
            let (y0, y1) = y.split_at_mut(half);
            std::thread::scope(|sc| {
                sc.spawn(|| for (xs, ys) in x0.chunks(sample).zip(y0.chunks_mut(sample)) { f(xs, ys, c, s, den); });
                for (xs, ys) in x1.chunks(sample).zip(y1.chunks_mut(sample)) { f(xs, ys, c, s, den); }
            });
        }
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = ts[reps / 2];
    let bytes = (x.len() * 4) as f64;
    println!("{name:>12} {threads}t: {:.3} ms  {:.2} GB/s", med * 1e3, bytes / med / 1e9);
    med
}

fn main() {
    if std::env::var("MICRO").is_ok() { micro(); return; }
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let n = *args.first().unwrap_or(&32);
    let threads = *args.get(1).unwrap_or(&1);
    let reps = *args.get(2).unwrap_or(&15);
    let (c, s) = (96usize, 55 * 55);
    let den = Den { scale: 1e-4 / 5.0, k: 1.0 };
    let mut st = 12345u64;
    let x: Vec<u16> = (0..n * c * s).map(|_| { st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); f2b(((st >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 8.0) }).collect();
    let mut y0 = vec![0u16; x.len()];
    let mut y1 = vec![0u16; x.len()];
    let ks: Vec<(&str, K)> = vec![
        ("k0", k0),
        ("b4exact", kb::<4, false, 16>),
        ("b4newt16", kb::<4, true, 16>),
        ("b4newt32", kb::<4, true, 32>),
        ("b8newt16", kb::<8, true, 16>),
        ("b8newt32", kb::<8, true, 32>),
        ("i4n16", ki::<4, 8, 16, 0, 0>),
        ("i8n16", ki::<8, 12, 16, 0, 0>),
        ("i8mul", ki::<8, 12, 16, 1, 0>),
        ("il4x16", ki::<4, 8, 16, 2, 64>),
        ("il2x32", ki::<2, 6, 32, 2, 64>),
        ("il4x32", ki::<4, 8, 32, 2, 128>),
        ("il8x16", ki::<8, 12, 16, 2, 128>),
        ("r16ex", kr::<16, false>),
        ("r16n", kr::<16, true>),
        ("r32n", kr::<32, true>),
        ("r64n", kr::<64, true>),
    ];
    for (xs, ys) in x.chunks(c * s).zip(y0.chunks_mut(c * s)) { k0(xs, ys, c, s, den); }
    for (name, f) in &ks {
        for (xs, ys) in x.chunks(c * s).zip(y1.chunks_mut(c * s)) { f(xs, ys, c, s, den); }
        let diff = y0.iter().zip(&y1).filter(|(a, b)| a != b).count();
        let maxd = y0.iter().zip(&y1).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
        println!("{name}: {diff} of {} differ, max {maxd} ulp", x.len());
    }
    let only = std::env::var("ONLY").ok();
    for _round in 0..2 {
        for (name, f) in &ks {
            if only.as_deref().is_some_and(|o| o != *name) { continue; } run(name, *f, &x, &mut y1, n, c, s, den, threads, reps); }
    }
}

#[inline(never)]
pub fn micro_newton(x: &[f32], d: &[f32], y: &mut [f32]) {
    for ((o, &v), &d) in y.iter_mut().zip(x).zip(d) { *o = mul34(v, d); }
}
#[inline(never)]
pub fn micro_div(x: &[f32], d: &[f32], y: &mut [f32]) {
    for ((o, &v), &d) in y.iter_mut().zip(x).zip(d) { *o = div34(v, d); }
}
#[inline(never)]
pub fn micro_newton_b(x: &[f32], d: &[f32], y: &mut [u16]) {
    for ((o, &v), &d) in y.iter_mut().zip(x).zip(d) { *o = f2b(mul34(v, d)); }
}
#[inline(never)]
pub fn micro_mul_b(x: &[f32], d: &[f32], y: &mut [u16]) {
    for ((o, &v), &d) in y.iter_mut().zip(x).zip(d) { *o = f2b(v * d); }
}
pub fn micro() {
    let n = 4096;
    let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.01 - 3.0).collect();
    let d: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.001).collect();
    let mut y = vec![0f32; n];
    let mut yb = vec![0u16; n];
    for (name, k) in [("newton f32", 0), ("div f32", 1), ("newton bf16", 2), ("mul bf16", 3)] {
        let reps = 20000;
        let t = Instant::now();
        for _ in 0..reps {
            match k { 0 => micro_newton(&x, &d, &mut y), 1 => micro_div(&x, &d, &mut y), 2 => micro_newton_b(&x, &d, &mut yb), _ => micro_mul_b(&x, &d, &mut yb) }
            std::hint::black_box(&mut y); std::hint::black_box(&mut yb);
        }
        let ns = t.elapsed().as_secs_f64() * 1e9 / (reps * n) as f64;
        println!("{name}: {ns:.3} ns/el = {:.1} cycles/16 @2.9GHz", ns * 2.9 * 16.0);
    }
}
