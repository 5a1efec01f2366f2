//! Results do not depend on the CPU thread count or on the vector width of the kernels: work
//! is split into pieces fixed by the shape, partial sums merge in a fixed order, and the
//! AVX-512 and AVX2 clones perform the same operations in the same order. Each op runs at 1, 2
//! and 3 threads with the widest clones and at 1 and 2 threads with the AVX2 ones
//! (`simd::VectorPolicy`), on shapes large enough to be split, and the outputs must be
//! bit-identical.

// view/view_mut: contiguous or channels-last tensors over a slice
mod sync_common;
use normkit::backend::cpu::simd::{VectorPolicy, set_vector_policy};
use normkit::backend::cpu::threads::install;
use normkit::ops::{
    BatchNormArgs, ForwardStats, Gradients, GroupNormArgs, GroupNormBackwardArgs, LayerNormArgs,
    LayerNormBackwardArgs, LrnArgs, NormBackwardArgs, batch_norm, batch_norm_backward, group_norm,
    group_norm_backward, layer_norm, layer_norm_backward, local_response_norm,
};
use normkit::{Tensor, TensorMut};
use sync_common::{lcg_data, view, view_mut};

fn data(n: usize, seed: u64) -> Vec<f32> {
    lcg_data(n, seed, 100.0)
}

/// Runs `f` at 1, 2 and 3 threads with the widest clones and at 1 and 2 threads with the AVX2
/// clones, and checks every result is bit-identical to the first. (The policy is process-wide:
/// the other test of this file may run under either, which by this file's claim changes
/// nothing.)
fn same_for_all_thread_counts(what: &str, f: &(dyn Fn() -> Vec<u32> + Sync)) {
    use VectorPolicy::{Narrow, Wide};
    let mut first = None;
    for (policy, t) in [(Wide, 1), (Wide, 2), (Wide, 3), (Narrow, 1), (Narrow, 2)] {
        set_vector_policy(policy);
        let r = install(Some(t), f);
        match &first {
            None => first = Some(r),
            Some(first) => assert!(
                *first == r,
                "{what}: the {policy:?} clones at {t} threads differ from Wide at 1 thread"
            ),
        }
    }
    set_vector_policy(VectorPolicy::Auto);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn forward_ops_are_bit_identical_across_thread_counts() {
    for (shape, cl) in [
        ([8usize, 16, 33, 35], false),
        ([8, 16, 33, 35], true),
        ([4, 64, 9, 11], true),
        ([2048, 64, 1, 1], false),
    ] {
        let n: usize = shape.iter().product();
        let x = data(n, 7);
        let run = |op: &dyn Fn(&Tensor, &mut TensorMut)| -> Vec<u32> {
            let mut y = vec![0.0f32; n];
            {
                let mut yt = view_mut(&mut y, &shape, cl);
                let xt = view(&x, &shape, cl);
                op(&xt, &mut yt);
            }
            bits(&y)
        };
        let ctx = format!("{shape:?} channels_last={cl}");
        same_for_all_thread_counts(&format!("batch_norm {ctx}"), &|| {
            run(&|x, y| {
                let (mut rm, mut rv) = (vec![0.0f32; shape[1]], vec![1.0f32; shape[1]]);
                let args = BatchNormArgs {
                    training: true,
                    running_mean: Some(TensorMut::new(&mut rm, &[shape[1]]).unwrap()),
                    running_var: Some(TensorMut::new(&mut rv, &[shape[1]]).unwrap()),
                    ..Default::default()
                };
                batch_norm(x, y, args).unwrap();
            })
        });
        same_for_all_thread_counts(&format!("group_norm {ctx}"), &|| {
            run(&|x, y| {
                group_norm(x, y, GroupNormArgs::new(4)).unwrap();
            })
        });
        same_for_all_thread_counts(&format!("layer_norm {ctx}"), &|| {
            run(&|x, y| {
                layer_norm(x, y, LayerNormArgs::new(&shape[1..])).unwrap();
            })
        });
        same_for_all_thread_counts(&format!("local_response_norm {ctx}"), &|| {
            run(&|x, y| local_response_norm(x, y, LrnArgs::new(5)).unwrap())
        });
    }
}

#[test]
fn backward_ops_are_bit_identical_across_thread_counts() {
    let shape = [16usize, 8, 40, 41];
    // channels last too: its column reductions and apply are separate kernels; planes of 99
    // elements take the two passes in tasks of whole samples (`channel_grad_short`); rows of
    // 1030 channels take column blocks, 600 of them the 16 pieces of partial sums
    let cases = [
        (shape, false),
        (shape, true),
        ([64, 8, 9, 11], false),
        ([600, 1030, 1, 1], true),
        // 256 channels: the column sums in 32-column tiles
        ([48, 256, 3, 3], true),
    ];
    for (shape, cl) in cases {
        let (n, c) = (shape.iter().product(), shape[1]);
        let (x, g) = (data(n, 3), data(n, 11));
        let what = format!("batch_norm_backward {shape:?} channels_last={cl}");
        same_for_all_thread_counts(&what, &|| {
            let mut y = vec![0.0f32; n];
            let (x, g) = (&x[..], &g[..]);
            let s = batch_norm(
                &view(x, &shape, cl),
                &mut view_mut(&mut y, &shape, cl),
                BatchNormArgs {
                    training: true,
                    ..Default::default()
                },
            )
            .unwrap();
            let (mut dx, mut dw, mut db) = (vec![0.0f32; n], vec![0.0f32; c], vec![0.0f32; c]);
            batch_norm_backward(
                &view(g, &shape, cl),
                &view(x, &shape, cl),
                NormBackwardArgs {
                    weight: None,
                    stats: ForwardStats::Saved {
                        mean: s.mean.view(),
                        invstd: s.invstd.view(),
                    },
                    grads: Gradients {
                        grad_input: Some(view_mut(&mut dx, &shape, cl)),
                        grad_weight: Some(TensorMut::new(&mut dw, &[c]).unwrap()),
                        grad_bias: Some(TensorMut::new(&mut db, &[c]).unwrap()),
                        accumulate: false,
                    },
                },
            )
            .unwrap();
            [bits(&dx), bits(&dw), bits(&db)].concat()
        });
    }
    let rows = [2048usize, 96];
    let m: usize = rows.iter().product();
    let (x, g) = (data(m, 3), data(m, 11));
    same_for_all_thread_counts("layer_norm_backward", &|| {
        let mut y = vec![0.0f32; m];
        let s = layer_norm(
            &Tensor::new(&x[..m], &rows).unwrap(),
            &mut TensorMut::new(&mut y, &rows).unwrap(),
            LayerNormArgs::new(&rows[1..]),
        )
        .unwrap();
        let (mut dx, mut dw, mut db) = (vec![0.0f32; m], vec![0.0f32; 96], vec![0.0f32; 96]);
        layer_norm_backward(
            &Tensor::new(&g[..m], &rows).unwrap(),
            &Tensor::new(&x[..m], &rows).unwrap(),
            LayerNormBackwardArgs {
                normalized_shape: vec![96],
                weight: None,
                mean: s.mean.view(),
                invstd: s.invstd.view(),
                grads: Gradients {
                    grad_input: Some(TensorMut::new(&mut dx, &rows).unwrap()),
                    grad_weight: Some(TensorMut::new(&mut dw, &[96]).unwrap()),
                    grad_bias: Some(TensorMut::new(&mut db, &[96]).unwrap()),
                    accumulate: false,
                },
            },
        )
        .unwrap();
        [bits(&dx), bits(&dw), bits(&db)].concat()
    });
}

/// GroupNorm's backward on short planes (`(N, C)` and `(N, C, L)` input, and channels-last
/// samples of a few rows: statistics per (sample, group) in tasks of whole groups or samples,
/// the parameter gradients summed per task and then over the tasks in order): the same bits
/// at every thread count, and the same parameter gradients without `grad_input` as with it.
#[test]
fn short_plane_group_norm_backward_is_bit_identical_across_thread_counts() {
    let cases = [
        (vec![4096usize, 64], false),
        (vec![512, 32, 5], false),
        (vec![300, 12, 13], false),
        (vec![256, 32, 3, 5], true),
        (vec![64, 16, 7, 9], true),
        (vec![64, 256, 2, 2], true),
    ];
    for (shape, cl) in cases {
        let (n, c) = (shape.iter().product::<usize>(), shape[1]);
        let (x, g) = (data(n, 5), data(n, 7));
        let w: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 / c as f32).collect();
        let run = |with_dx: bool| {
            let mut y = vec![0.0f32; n];
            let mut args = GroupNormArgs::new(4);
            args.weight = Some(Tensor::new(&w, &[c]).unwrap());
            let xt = view(&x, &shape, cl);
            let s = group_norm(&xt, &mut view_mut(&mut y, &shape, cl), args).unwrap();
            let (mut dx, mut dw, mut db) = (vec![0.0f32; n], vec![0.0f32; c], vec![0.0f32; c]);
            group_norm_backward(
                &view(&g, &shape, cl),
                &xt,
                GroupNormBackwardArgs {
                    num_groups: 4,
                    weight: Some(Tensor::new(&w, &[c]).unwrap()),
                    mean: s.mean.view(),
                    invstd: s.invstd.view(),
                    grads: Gradients {
                        grad_input: with_dx.then(|| view_mut(&mut dx, &shape, cl)),
                        grad_weight: Some(TensorMut::new(&mut dw, &[c]).unwrap()),
                        grad_bias: Some(TensorMut::new(&mut db, &[c]).unwrap()),
                        accumulate: false,
                    },
                },
            )
            .unwrap();
            (bits(&dx), [bits(&dw), bits(&db)].concat())
        };
        same_for_all_thread_counts(&format!("group_norm_backward {shape:?} cl {cl}"), &|| {
            let (dx, params) = run(true);
            assert!(dx.iter().any(|&b| b != 0), "{shape:?}: dx was not written");
            [dx, params].concat()
        });
        let with = install(Some(2), || run(true).1);
        let without = install(Some(2), || run(false).1);
        assert!(
            with == without,
            "{shape:?}: dγ, dβ differ without grad_input"
        );
    }
}
