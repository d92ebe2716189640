//! Fused against composed over many small shapes, including one row, one
//! element per row, a single group and odd sizes, both channel axes.

use burn::tensor::Tensor;
use normkit_burn::*;

use crate::common::*;

/// Output and input gradient of `sum(f(x) · r)` on the autodiff flex device.
fn both<const D: usize>(
    shape: [usize; D],
    seed: u64,
    f: impl Fn(Tensor<D>) -> Tensor<D>,
) -> [Vec<f64>; 2] {
    let device = ad();
    let n = shape.iter().product();
    let x = from_vec(values(n, seed, 3.0, 1.0), shape, &device).require_grad();
    let y = f(x.clone());
    let grads = (y.clone() * from_vec(values(n, seed + 1, 1.0, 0.0), shape, &device))
        .sum()
        .backward();
    [read(y), read(x.grad(&grads).unwrap())]
}

fn agree<const D: usize>(what: &str, shape: [usize; D], f: impl Fn(Tensor<D>) -> Tensor<D>) {
    let fused = both(shape, 7, &f);
    let composed = with_route(Route::Composed, || both(shape, 7, &f));
    assert_close(
        &format!("{what} {shape:?} y"),
        &fused[0],
        &composed[0],
        3e-5,
        3e-4,
    );
    assert_close(
        &format!("{what} {shape:?} dx"),
        &fused[1],
        &composed[1],
        3e-5,
        3e-4,
    );
}

#[test]
fn channel_layers_over_shapes() {
    let shapes3: [[usize; 3]; 5] = [[1, 3, 2], [2, 3, 1], [5, 1, 7], [3, 6, 9], [1, 4, 33]];
    let d = ad();
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        for shape in shapes3 {
            let c = if axis == ChannelAxis::First {
                shape[1]
            } else {
                shape[2]
            };
            let bn = BatchNormConfig::new(c).with_channel_axis(axis).init(&d);
            agree(&format!("bn {axis:?}"), shape, |x| bn.forward(x));
            let s = if axis == ChannelAxis::First {
                shape[2]
            } else {
                shape[1]
            };
            if s > 1 {
                let inorm = InstanceNormConfig::new(c)
                    .with_affine(true)
                    .with_channel_axis(axis)
                    .init(&d);
                agree(&format!("in {axis:?}"), shape, |x| inorm.forward(x));
            }
            for g in [1, c] {
                let gn = GroupNormConfig::new(g, c).with_channel_axis(axis).init(&d);
                agree(&format!("gn{g} {axis:?}"), shape, |x| gn.forward(x));
            }
            let dyt = DytConfig::new(c).with_channel_axis(axis).init(&d);
            agree(&format!("dyt {axis:?}"), shape, |x| dyt.forward(x));
        }
        // Rank 2: no spatial axes.
        let bn = BatchNormConfig::new(5).with_channel_axis(axis).init(&d);
        agree(&format!("bn {axis:?}"), [3, 5], |x| bn.forward(x));
        // Rank 5.
        let gn = GroupNormConfig::new(2, 4).with_channel_axis(axis).init(&d);
        let shape = if axis == ChannelAxis::First {
            [2, 4, 2, 3, 2]
        } else {
            [2, 2, 3, 2, 4]
        };
        agree(&format!("gn rank 5 {axis:?}"), shape, |x| gn.forward(x));
    }
}

#[test]
fn row_layers_over_shapes() {
    let d = ad();
    for (shape, ns) in [
        ([1, 1, 1], vec![1]),
        ([1, 1, 7], vec![7]),
        ([4, 3, 1], vec![3, 1]),
        ([2, 5, 17], vec![5, 17]),
        ([3, 2, 64], vec![2, 64]),
    ] {
        let ln = LayerNormConfig::new(ns.clone()).init(&d);
        agree("ln", shape, |x| ln.forward(x));
        let rms = RmsNormConfig::new(ns.clone()).with_eps(Some(1e-6)).init(&d);
        agree("rms", shape, |x| rms.forward(x));
    }
    // DyT on a rank-1 input: one row of channels.
    let dyt = DytConfig::new(9).init(&d);
    agree("dyt rank 1", [9], |x| dyt.forward(x));
}

#[test]
fn weight_norm_over_shapes() {
    let d = ad();
    for (shape, dim) in [
        ([1usize, 1, 1], Some(0isize)),
        ([3, 1, 5], Some(1)),
        ([2, 3, 4], Some(-1)),
        ([5, 2, 3], None),
    ] {
        let k = dim.map_or(1, |k| {
            shape[if k < 0 { (k + 3) as usize } else { k as usize }]
        });
        let g = from_vec(values(k, 3, 0.5, 1.0), [k], &d);
        agree(&format!("wn {dim:?}"), shape, |v| {
            functional::weight_norm(v, g.clone(), dim).unwrap()
        });
    }
}
