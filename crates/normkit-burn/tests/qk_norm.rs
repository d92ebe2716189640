//! The QK-norm layer: fused against the composed route (burn's own tensor
//! operations and autodiff) for every kind and scope, outputs and the
//! gradients of queries, keys and both weights; its record names; Gemma's
//! zero-offset start; refusals.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use normkit_burn::{
    fused_calls, with_route, QkNorm, QkNormConfig, QkNormKind, QkNormParams, QkScope, Route,
};

use crate::common::*;

const Q: [usize; 4] = [2, 3, 4, 8];
const K: [usize; 4] = [2, 3, 2, 8];

/// Random weights (and biases), so the comparison sees them.
fn randomize(p: QkNormParams, seed: u64) -> QkNormParams {
    let n = p.weight.dims()[0];
    let device = ad();
    QkNormParams {
        weight: Param::from_tensor(from_vec(values(n, seed, 0.5, 1.0), [n], &device)),
        bias: p
            .bias
            .map(|_| Param::from_tensor(from_vec(values(n, seed + 1, 0.3, 0.0), [n], &device))),
    }
}

/// `Σ q'·rq + Σ k'·rk` through `layer`, backward: the values of q' and k',
/// then the gradients of q, k and the four parameters (empty where absent).
fn step(layer: &QkNorm, seed: u64) -> Vec<Vec<f64>> {
    let device = ad();
    let q: Tensor<4> = tensor(Q, seed, &device).require_grad();
    let k: Tensor<4> = tensor(K, seed + 1, &device).require_grad();
    let (q2, k2) = layer.try_forward(q.clone(), k.clone()).unwrap();
    let mut out = vec![read(q2.clone()), read(k2.clone())];
    let loss =
        (q2 * tensor(Q, seed + 2, &device)).sum() + (k2 * tensor(K, seed + 3, &device)).sum();
    let grads = loss.backward();
    out.push(read(q.grad(&grads).unwrap()));
    out.push(read(k.grad(&grads).unwrap()));
    for p in [&layer.q_norm, &layer.k_norm] {
        out.push(read(p.weight.val().grad(&grads).unwrap()));
        out.push(match &p.bias {
            Some(b) => read(b.val().grad(&grads).unwrap()),
            None => Vec::new(),
        });
    }
    out
}

#[test]
fn fused_matches_composed_for_every_kind_and_scope() {
    let names = [
        "q'",
        "k'",
        "dq",
        "dk",
        "dq_weight",
        "dq_bias",
        "dk_weight",
        "dk_bias",
    ];
    for kind in [
        QkNormKind::Rms,
        QkNormKind::Layer,
        QkNormKind::UnitOffsetRms,
    ] {
        for scope in [QkScope::Head, QkScope::Projection] {
            let mut layer = QkNormConfig::new(4, 2, 8)
                .with_kind(kind)
                .with_scope(scope)
                .init(&ad());
            layer.q_norm = randomize(layer.q_norm, 11);
            layer.k_norm = randomize(layer.k_norm, 13);
            let before = fused_calls();
            let fused = step(&layer, 5);
            assert!(
                fused_calls().forward >= before.forward + 2,
                "{kind:?} {scope:?}: both norms fused"
            );
            let composed = with_route(Route::Composed, || step(&layer, 5));
            for ((name, a), b) in names.iter().zip(&fused).zip(&composed) {
                assert_eq!(a.is_empty(), b.is_empty(), "{kind:?} {scope:?} {name}");
                let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
                assert_close(
                    &format!("{kind:?} {scope:?} {name}"),
                    a,
                    b,
                    1e-5 * scale,
                    1e-5,
                );
            }
            assert_eq!(fused[5].is_empty(), kind != QkNormKind::Layer);
        }
    }
}

#[test]
fn record_names_and_sizes_are_the_models() {
    let cases = [(QkScope::Head, 8, 8), (QkScope::Projection, 32, 16)];
    for (scope, q_len, k_len) in cases {
        let layer = QkNormConfig::new(4, 2, 8)
            .with_kind(QkNormKind::Layer)
            .with_scope(scope)
            .init(&ad());
        assert_eq!(layer.q_norm.weight.dims(), [q_len]);
        assert_eq!(layer.k_norm.weight.dims(), [k_len]);
        assert_eq!(layer.q_norm.bias.as_ref().map(|b| b.dims()), Some([q_len]));
        // Four parameters: q_norm.{weight, bias}, k_norm.{weight, bias}.
        assert_eq!(layer.num_params(), 2 * (q_len + k_len));
    }
}

#[test]
fn gemmas_offset_starts_at_zero_and_the_norm_at_identity_scale() {
    let gemma = QkNormConfig::new(4, 2, 8)
        .with_kind(QkNormKind::UnitOffsetRms)
        .init(&ad());
    let plain = QkNormConfig::new(4, 2, 8).init(&ad());
    assert!(read(gemma.q_norm.weight.val()).iter().all(|&w| w == 0.0));
    let (q, k) = (tensor(Q, 1, &ad()), tensor(K, 2, &ad()));
    let (a, b) = (gemma.forward(q.clone(), k.clone()), plain.forward(q, k));
    assert_close("q", &read(a.0), &read(b.0), 0.0, 0.0);
    assert_close("k", &read(a.1), &read(b.1), 0.0, 0.0);
}

#[test]
fn bad_configurations_and_inputs_are_errors() {
    assert!(QkNormConfig::new(0, 2, 8).try_init(&ad()).is_err());
    assert!(QkNormConfig::new(4, 2, 0).try_init(&ad()).is_err());
    assert!(QkNormConfig::new(4, 2, 8)
        .with_epsilon(-1.0)
        .try_init(&ad())
        .is_err());
    let layer = QkNormConfig::new(4, 2, 8).init(&ad());
    let short: Tensor<4> = tensor([2, 3, 4, 7], 1, &ad());
    let err = layer
        .try_forward(short, tensor(K, 2, &ad()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("[2, 3, 4, 7]"), "{err}");
    let projection = QkNormConfig::new(4, 2, 8)
        .with_scope(QkScope::Projection)
        .init(&ad());
    // The key norm holds two heads' weight: four key heads are refused.
    assert!(projection
        .try_forward(tensor(Q, 1, &ad()), tensor(Q, 2, &ad()))
        .is_err());
}
