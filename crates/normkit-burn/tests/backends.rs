//! Off flex the same layers compose tensor operations: on the ndarray
//! backend (with and without autodiff) they compute what the fused kernels
//! compute on flex, gradients and running statistics included.
#![allow(deprecated)] // burn marks the ndarray backend deprecated

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use normkit_burn::*;

use crate::common::*;

fn param(c: usize, seed: u64, around: f32, device: &Device) -> Option<Param<Tensor<1>>> {
    Some(Param::from_tensor(from_vec(
        values(c, seed, 0.5, around),
        [c],
        device,
    )))
}

/// Output, input gradient and parameter gradients of `sum(layer(x) · r)`.
fn run<const D: usize>(
    device: &Device,
    shape: [usize; D],
    params: impl Fn(&Device) -> Vec<Tensor<1>>,
    layer: impl Fn(Tensor<D>, &[Tensor<1>]) -> Tensor<D>,
) -> Vec<Vec<f64>> {
    let n = shape.iter().product();
    let p = params(device);
    let x = from_vec(values(n, 1, 2.0, 0.5), shape, device).require_grad();
    let y = layer(x.clone(), &p);
    let grads = (y.clone() * from_vec(values(n, 2, 1.0, 0.0), shape, device))
        .sum()
        .backward();
    let mut out = vec![read(y), read(x.grad(&grads).expect("dx"))];
    out.extend(p.iter().map(|t| read(t.grad(&grads).expect("dparam"))));
    out
}

fn same<const D: usize>(
    name: &str,
    shape: [usize; D],
    params: impl Fn(&Device) -> Vec<Tensor<1>>,
    layer: impl Fn(Tensor<D>, &[Tensor<1>]) -> Tensor<D>,
) {
    let ndarray = Device::ndarray().autodiff();
    assert!(!is_flex(&ndarray));
    let flex = run(&ad(), shape, &params, &layer);
    let other = run(&ndarray, shape, &params, &layer);
    for (k, (a, b)) in flex.iter().zip(&other).enumerate() {
        assert_close(&format!("{name} output {k} flex/ndarray"), b, a, 2e-5, 2e-4);
    }
}

#[test]
fn every_layer_matches_across_backends() {
    same(
        "BatchNorm",
        [4, 3, 5],
        |d| {
            vec![
                param(3, 3, 1.0, d).unwrap().val(),
                param(3, 4, 0.0, d).unwrap().val(),
            ]
        },
        |x, p| {
            let mut bn = BatchNormConfig::new(3).init(&x.device());
            bn.weight = Some(Param::from_tensor(p[0].clone()));
            bn.bias = Some(Param::from_tensor(p[1].clone()));
            bn.forward(x)
        },
    );
    same(
        "InstanceNorm",
        [2, 5, 3],
        |_| vec![],
        |x, _| {
            InstanceNormConfig::new(3)
                .with_channel_axis(ChannelAxis::Last)
                .init(&x.device())
                .forward(x)
        },
    );
    same(
        "GroupNorm",
        [2, 4, 6],
        |d| vec![param(4, 5, 1.0, d).unwrap().val()],
        |x, p| {
            let mut gn = GroupNormConfig::new(2, 4)
                .with_affine(false)
                .init(&x.device());
            gn.weight = Some(Param::from_tensor(p[0].clone()));
            gn.forward(x)
        },
    );
    same(
        "LayerNorm",
        [3, 2, 7],
        |d| {
            vec![
                param(14, 6, 1.0, d).unwrap().val(),
                param(14, 7, 0.0, d).unwrap().val(),
            ]
        },
        |x, p| {
            let mut ln = LayerNormConfig::new(vec![2, 7]).init(&x.device());
            ln.weight = Some(Param::from_tensor(p[0].clone()));
            ln.bias = Some(Param::from_tensor(p[1].clone()));
            ln.forward(x)
        },
    );
    same(
        "RmsNorm",
        [5, 8],
        |d| vec![param(8, 8, 1.0, d).unwrap().val()],
        |x, p| {
            let mut rms = RmsNormConfig::new(vec![8]).init(&x.device());
            rms.weight = Some(Param::from_tensor(p[0].clone()));
            rms.forward(x)
        },
    );
    same(
        "Dyt",
        [2, 3, 4, 4],
        |d| {
            vec![
                param(1, 9, 0.8, d).unwrap().val(),
                param(3, 10, 1.0, d).unwrap().val(),
            ]
        },
        |x, p| {
            let mut dyt = DytConfig::new(3)
                .with_channel_axis(ChannelAxis::First)
                .init(&x.device());
            dyt.alpha = Param::from_tensor(p[0].clone());
            dyt.weight = Some(Param::from_tensor(p[1].clone()));
            dyt.forward(x)
        },
    );
    same(
        "WeightNorm",
        [4, 6],
        |d| vec![param(6, 11, 1.0, d).unwrap().val()],
        |v, p| functional::weight_norm(v, p[0].clone(), Some(1)).unwrap(),
    );
}

#[test]
fn running_statistics_match_across_backends() {
    let stats = |device: &Device| {
        let bn = BatchNormConfig::new(2).with_momentum(None).init(device);
        for step in 0..3 {
            bn.forward(from_vec(
                values(24, 20 + step, 1.0, step as f32),
                [4, 2, 3],
                device,
            ));
        }
        (
            read(bn.running_mean.as_ref().unwrap().value_sync()),
            read(bn.running_var.as_ref().unwrap().value_sync()),
        )
    };
    let (m1, v1) = stats(&ad());
    let (m2, v2) = stats(&Device::ndarray().autodiff());
    assert_close("running_mean", &m2, &m1, 1e-6, 1e-6);
    assert_close("running_var", &v2, &v1, 1e-6, 1e-6);
    // Inference on the plain ndarray device.
    let y = read(
        LayerNormConfig::new(vec![4])
            .init(&Device::ndarray())
            .forward(tensor([2, 4], 30, &Device::ndarray())),
    );
    let y_flex = read(
        LayerNormConfig::new(vec![4])
            .init(&Device::flex())
            .forward(tensor([2, 4], 30, &Device::flex())),
    );
    assert_close("plain ndarray", &y, &y_flex, 1e-6, 1e-5);
}
