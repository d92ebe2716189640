//! The QK-norm layer against candle-nn's composed norms (its `*_slow` ops,
//! plain tensor arithmetic with autograd): outputs and the gradients of
//! queries, keys and both weights, for each kind and scope; the parameter
//! names; refusals.

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::ops::{layer_norm_slow, rms_norm_slow};
use candle_nn::VarBuilder;
use normkit_candle::{qk_norm, QkNorm, QkNormConfig, QkNormKind, QkScope, StateDict};

use crate::common::*;

const EPS: f64 = 1e-6;

/// Four query heads, two key heads (grouped queries) of 8 values.
const Q: [usize; 4] = [2, 3, 4, 8];
const K: [usize; 4] = [2, 3, 2, 8];

/// The layer with random parameters, and those parameters as `Var`s.
fn build_layer(kind: QkNormKind, scope: QkScope, rng: &mut Rng) -> (QkNorm, Vec<(String, Var)>) {
    let config = QkNormConfig {
        kind,
        scope,
        eps: EPS,
    };
    let (layer, _map, vars) = build(rng, |vb| qk_norm(Q[2], K[2], Q[3], config, vb));
    (layer, vars)
}

/// candle-nn's composed norm of `x` over `scope`, with `weight` (and
/// `bias`) as the layer holds them.
fn composed(
    kind: QkNormKind,
    scope: QkScope,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    // Over the projection, the last two dimensions are one row.
    let rows = match scope {
        QkScope::Head => x.clone(),
        QkScope::Projection => x.flatten_from(2)?,
    };
    let y = match kind {
        QkNormKind::Rms => rms_norm_slow(&rows, weight, EPS as f32)?,
        QkNormKind::UnitOffsetRms => rms_norm_slow(&rows, &(weight + 1.0)?, EPS as f32)?,
        QkNormKind::Layer => layer_norm_slow(&rows, weight, bias.unwrap(), EPS as f32)?,
    };
    y.reshape(dims)
}

#[test]
fn every_kind_and_scope_matches_the_composed_norm_with_its_gradients() {
    let mut rng = Rng::new(31);
    for kind in [
        QkNormKind::Rms,
        QkNormKind::Layer,
        QkNormKind::UnitOffsetRms,
    ] {
        for scope in [QkScope::Head, QkScope::Projection] {
            let what = format!("{kind:?} {scope:?}");
            let (layer, mut vars) = build_layer(kind, scope, &mut rng);
            let (q, k) = (rng.var(&Q), rng.var(&K));
            let (rq, rk) = (rng.tensor(&Q, -1.0, 1.0), rng.tensor(&K, -1.0, 1.0));
            let get = |name: &str| {
                vars.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_tensor().clone())
            };
            let (qw, kw) = (get("q_norm.weight").unwrap(), get("k_norm.weight").unwrap());
            let (qb, kb) = (get("q_norm.bias"), get("k_norm.bias"));
            assert_eq!(qb.is_some(), kind == QkNormKind::Layer, "{what}");

            // Σ q'·rq + Σ k'·rk: one scalar reaching both norms.
            let ours = || -> Result<Tensor> {
                let (q2, k2) = layer.forward(q.as_tensor(), k.as_tensor())?;
                (q2 * &rq)?.sum_all()? + (k2 * &rk)?.sum_all()?
            };
            let theirs = || -> Result<Tensor> {
                let q2 = composed(kind, scope, q.as_tensor(), &qw, qb.as_ref())?;
                let k2 = composed(kind, scope, k.as_tensor(), &kw, kb.as_ref())?;
                (q2 * &rq)?.sum_all()? + (k2 * &rk)?.sum_all()?
            };
            let (q2, k2) = layer.forward(q.as_tensor(), k.as_tensor()).unwrap();
            let q_want = composed(kind, scope, q.as_tensor(), &qw, qb.as_ref()).unwrap();
            let k_want = composed(kind, scope, k.as_tensor(), &kw, kb.as_ref()).unwrap();
            assert_eq!(q2.dims(), &Q);
            assert_close(&format!("{what} q"), &flat(&q2), &flat(&q_want), 1e-5);
            assert_close(&format!("{what} k"), &flat(&k2), &flat(&k_want), 1e-5);

            vars.push(("q".into(), q.clone()));
            vars.push(("k".into(), k.clone()));
            let one = Tensor::new(1f32, &CPU).unwrap();
            let got = autograd(&ours, &one, &vars);
            let want = autograd(&theirs, &one, &vars);
            for (((name, _), g), w) in vars.iter().zip(&got).zip(&want) {
                let (g, w) = (g.as_ref().unwrap(), w.as_ref().unwrap());
                assert_close(&format!("{what} d{name}"), g, w, 1e-4);
            }
        }
    }
}

#[test]
fn parameters_carry_the_models_names_and_sizes() {
    let vb = VarBuilder::zeros(DType::F32, &CPU);
    let cases = [
        (QkNormKind::Rms, QkScope::Head, [8, 8], false),
        (QkNormKind::Rms, QkScope::Projection, [32, 16], false),
        (QkNormKind::Layer, QkScope::Head, [8, 8], true),
        (QkNormKind::UnitOffsetRms, QkScope::Head, [8, 8], false),
    ];
    for (kind, scope, [q_len, k_len], bias) in cases {
        let config = QkNormConfig {
            kind,
            scope,
            eps: EPS,
        };
        let layer = qk_norm(4, 2, 8, config, vb.pp("attn")).unwrap();
        let mut out = HashMap::new();
        layer.state_dict("layers.0.attn", &mut out);
        let len = |key: &str| out.get(key).map(|t: &Tensor| t.dims().to_vec());
        assert_eq!(
            len("layers.0.attn.q_norm.weight"),
            Some(vec![q_len]),
            "{kind:?} {scope:?}"
        );
        assert_eq!(
            len("layers.0.attn.k_norm.weight"),
            Some(vec![k_len]),
            "{kind:?} {scope:?}"
        );
        assert_eq!(len("layers.0.attn.q_norm.bias").is_some(), bias);
        assert_eq!(out.len(), if bias { 4 } else { 2 });
    }
}

#[test]
fn gemmas_weight_starts_at_zero_and_the_norm_at_identity_scale() {
    // Fresh maps: each tensor takes the layer's own initial value.
    let fresh = |kind| {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
        let config = QkNormConfig {
            kind,
            ..QkNormConfig::default()
        };
        let layer = qk_norm(4, 2, 8, config, vb).unwrap();
        (layer, varmap)
    };
    let (gemma, gemma_map) = fresh(QkNormKind::UnitOffsetRms);
    let (plain, _) = fresh(QkNormKind::Rms);
    for (name, var) in gemma_map.data().lock().unwrap().iter() {
        assert!(flat(var.as_tensor()).iter().all(|&w| w == 0.0), "{name}");
    }
    let mut rng = Rng::new(5);
    let (q, k) = (rng.tensor(&Q, -2.0, 2.0), rng.tensor(&K, -2.0, 2.0));
    let (a, b) = (
        gemma.forward(&q, &k).unwrap(),
        plain.forward(&q, &k).unwrap(),
    );
    // A zero offset is a weight of ones: the same kernels, the same bits.
    assert_eq!(flat(&a.0), flat(&b.0));
    assert_eq!(flat(&a.1), flat(&b.1));
}

#[test]
fn wrong_shapes_are_errors_naming_the_op() {
    let vb = VarBuilder::zeros(DType::F32, &CPU);
    let per_head = qk_norm(4, 2, 8, QkNormConfig::default(), vb.clone()).unwrap();
    let (q, k) = (
        Tensor::zeros(&Q, DType::F32, &CPU).unwrap(),
        Tensor::zeros(&K, DType::F32, &CPU).unwrap(),
    );
    let short = Tensor::zeros((2, 3, 4, 7), DType::F32, &CPU).unwrap();
    let err = per_head.forward(&short, &k).unwrap_err().to_string();
    assert!(
        err.contains("rms_norm") && err.contains("[2, 3, 4, 7]"),
        "{err}"
    );
    // Over the projection, the key norm holds 2 heads' weight: 4 key heads
    // are refused.
    let config = QkNormConfig {
        scope: QkScope::Projection,
        ..QkNormConfig::default()
    };
    let projection = qk_norm(4, 2, 8, config, vb).unwrap();
    projection.forward(&q, &k).unwrap();
    let err = projection.forward(&q, &q).unwrap_err().to_string();
    assert!(err.contains("rms_norm"), "{err}");
}
