//! `normkit::op`: every op through the one interface computes what its
//! entry points compute, with the parameters packed in the order its
//! signature lists; the interface's own checks refuse bad packing and
//! running statistics, writing nothing.

use normkit::op::{
    AdaInOp, AdaNormOp, BatchNormOp, BatchRenormOp, DerfOp, DytOp, ElemSlice, ElemSliceMut,
    ErasedOp, GroupNormOp, InstanceNormOp, LayerNormOp, NormOp, OpGrads, RmsNormOp, Running,
    SwitchNormOp, WeightNormOp,
};
use normkit::*;

use crate::common::Rng;

/// Packed parameters of `sig`, random.
fn params(rng: &mut Rng, sig: &op::Signature) -> Vec<f32> {
    rng.uniforms(sig.packed_len(), -1.5, 1.5)
}

/// Runs `op` forward and backward on random data, twice from the same
/// running statistics; returns everything it wrote.
fn through_op<O: NormOp>(
    op: &O,
    shape: &[usize],
    seed: u64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let len: usize = shape.iter().product();
    let x = rng.normals(len, 0.3, 1.7);
    let dy = rng.normals(len, 0.0, 1.0);
    let sig = op.signature(shape).unwrap();
    let p = params(&mut rng, &sig);
    let c = sig.running.channels().unwrap_or(0);
    let (mut mean, mut var) = (rng.normals(c, 0.0, 0.5), rng.uniforms(c, 0.5, 2.0));
    let running = sig.running.channels().map(|_| RunningStats {
        mean: &mut mean,
        var: &mut var,
    });
    let mut y = vec![0.0f32; len];
    let saved = op.forward(&mut y, &x, shape, &p, running).unwrap();
    let (mut dx, mut dp) = (vec![0.0f32; len], vec![0.0f32; p.len()]);
    let grads = OpGrads {
        dx: &mut dx,
        dparams: Some(&mut dp),
    };
    op.backward(grads, &dy, &x, shape, &p, &saved).unwrap();
    mean.extend(var);
    (y, dx, dp, mean)
}

/// The same inputs as [`through_op`], for an entry-point twin.
struct Inputs {
    x: Vec<f32>,
    dy: Vec<f32>,
    p: Vec<f32>,
    mean: Vec<f32>,
    var: Vec<f32>,
}

fn inputs<O: NormOp>(op: &O, shape: &[usize], seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let len: usize = shape.iter().product();
    let x = rng.normals(len, 0.3, 1.7);
    let dy = rng.normals(len, 0.0, 1.0);
    let sig = op.signature(shape).unwrap();
    let p = params(&mut rng, &sig);
    let c = sig.running.channels().unwrap_or(0);
    let (mean, var) = (rng.normals(c, 0.0, 0.5), rng.uniforms(c, 0.5, 2.0));
    Inputs {
        x,
        dy,
        p,
        mean,
        var,
    }
}

#[test]
fn layer_and_rms_norm_pack_weight_then_bias() {
    let shape = [5, 3, 7];
    let ln = LayerNormOp {
        normalized_shape: vec![3, 7],
        eps: 1e-5,
        weight: true,
        bias: true,
    };
    let sig = ln.signature(&shape).unwrap();
    let names: Vec<_> = sig.params.iter().map(|p| (p.name, p.len)).collect();
    assert_eq!(names, [("weight", 21), ("bias", 21)]);
    assert_eq!(sig.running, Running::None);
    let got = through_op(&ln, &shape, 1);
    let i = inputs(&ln, &shape, 1);
    let (w, b) = i.p.split_at(21);
    let mut y = vec![0.0f32; i.x.len()];
    let stats = layer_norm_forward(&mut y, &i.x, &shape, &[3, 7], Affine::new(w, b), 1e-5).unwrap();
    let (mut dx, mut dw, mut db) = (vec![0.0; i.x.len()], vec![0.0; 21], vec![0.0; 21]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    layer_norm_backward(grads, &i.dy, &i.x, &shape, &[3, 7], Some(w), &stats).unwrap();
    dw.extend(db);
    assert_eq!((got.0, got.1, got.2), (y, dx, dw));

    let rms = RmsNormOp {
        normalized_shape: vec![7],
        eps: 1e-6,
        weight: true,
    };
    let got = through_op(&rms, &shape, 2);
    let i = inputs(&rms, &shape, 2);
    let mut y = vec![0.0f32; i.x.len()];
    let stats = rms_norm_forward(&mut y, &i.x, &shape, &[7], Some(&i.p), 1e-6).unwrap();
    let (mut dx, mut dw) = (vec![0.0; i.x.len()], vec![0.0; 7]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: None,
    };
    rms_norm_backward(grads, &i.dy, &i.x, &shape, &[7], Some(&i.p), &stats).unwrap();
    assert_eq!((got.0, got.1, got.2), (y, dx, dw));
}

#[test]
fn batch_norm_trains_with_and_evaluates_from_the_running_statistics() {
    let shape = [4, 3, 5];
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        let cfg = BatchNormConfig {
            channel_axis: axis,
            ..Default::default()
        };
        for training in [true, false] {
            let op = BatchNormOp {
                cfg,
                training,
                weight: true,
                bias: false,
            };
            let c = if axis == ChannelAxis::First { 3 } else { 5 };
            let sig = op.signature(&shape).unwrap();
            assert_eq!(sig.packed_len(), c);
            let got = through_op(&op, &shape, 3);
            let mut i = inputs(&op, &shape, 3);
            let mut y = vec![0.0f32; i.x.len()];
            let aff = Affine {
                weight: Some(&i.p),
                bias: None,
            };
            let stats = if training {
                let r = RunningStats {
                    mean: &mut i.mean,
                    var: &mut i.var,
                };
                batch_norm_forward_train(&mut y, &i.x, &shape, aff, Some(r), &cfg).unwrap()
            } else {
                batch_norm_forward_eval(&mut y, &i.x, &shape, aff, &i.mean, &i.var, &cfg).unwrap()
            };
            let (mut dx, mut dw) = (vec![0.0; i.x.len()], vec![0.0; c]);
            let grads = Grads {
                dx: &mut dx,
                dweight: Some(&mut dw),
                dbias: None,
            };
            if training {
                batch_norm_backward_train(grads, &i.dy, &i.x, &shape, Some(&i.p), &stats, &cfg)
            } else {
                batch_norm_backward_eval(grads, &i.dy, &i.x, &shape, Some(&i.p), &stats, &cfg)
            }
            .unwrap();
            i.mean.extend(&i.var);
            assert_eq!(got, (y, dx, dw, i.mean), "{axis:?} training={training}");
        }
    }
}

/// Every other op: through the interface against its entry points, on the
/// packing its signature states.
#[test]
fn every_op_matches_its_entry_points() {
    let shape = [3, 4, 6];
    // GroupNorm.
    let cfg = GroupNormConfig::new(2);
    let op = GroupNormOp {
        cfg,
        weight: true,
        bias: true,
    };
    let got = through_op(&op, &shape, 4);
    let i = inputs(&op, &shape, 4);
    let (w, b) = i.p.split_at(4);
    let mut y = vec![0.0f32; i.x.len()];
    let stats = group_norm_forward(&mut y, &i.x, &shape, Affine::new(w, b), &cfg).unwrap();
    let (mut dx, mut dw, mut db) = (vec![0.0; i.x.len()], vec![0.0; 4], vec![0.0; 4]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    group_norm_backward(grads, &i.dy, &i.x, &shape, Some(w), &stats, &cfg).unwrap();
    dw.extend(db);
    assert_eq!((got.0, got.1, got.2), (y, dx, dw), "group_norm");

    // InstanceNorm, training, updating running statistics.
    let cfg = InstanceNormConfig::default();
    let op = InstanceNormOp {
        cfg,
        training: true,
        weight: false,
        bias: false,
    };
    let got = through_op(&op, &shape, 5);
    let mut i = inputs(&op, &shape, 5);
    let mut y = vec![0.0f32; i.x.len()];
    let r = RunningStats {
        mean: &mut i.mean,
        var: &mut i.var,
    };
    let stats =
        instance_norm_forward_train(&mut y, &i.x, &shape, Affine::NONE, Some(r), &cfg).unwrap();
    let mut dx = vec![0.0; i.x.len()];
    instance_norm_backward_train(Grads::dx(&mut dx), &i.dy, &i.x, &shape, None, &stats, &cfg)
        .unwrap();
    i.mean.extend(&i.var);
    assert_eq!(got, (y, dx, vec![], i.mean), "instance_norm");

    // DyT: alpha first, then weight and bias.
    let op = DytOp {
        channel_axis: ChannelAxis::Last,
        weight: true,
        bias: true,
    };
    let names: Vec<_> = op
        .signature(&shape)
        .unwrap()
        .params
        .iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["alpha", "weight", "bias"]);
    let got = through_op(&op, &shape, 6);
    let i = inputs(&op, &shape, 6);
    let (alpha, (w, b)) = (i.p[0], i.p[1..].split_at(6));
    let mut y = vec![0.0f32; i.x.len()];
    dyt_forward(
        &mut y,
        &i.x,
        &shape,
        alpha,
        Affine::new(w, b),
        ChannelAxis::Last,
    )
    .unwrap();
    let (mut dx, mut dw, mut db) = (vec![0.0; i.x.len()], vec![0.0; 6], vec![0.0; 6]);
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(&mut dw),
        dbias: Some(&mut db),
    };
    let dalpha = dyt_backward(
        grads,
        &i.dy,
        &i.x,
        &shape,
        alpha,
        Some(w),
        ChannelAxis::Last,
    )
    .unwrap();
    let mut dp = vec![dalpha];
    dp.extend(dw);
    dp.extend(db);
    assert_eq!((got.0, got.1, got.2), (y, dx, dp), "dyt");

    // Derf: alpha and shift first, then the bias alone (channels first).
    let op = DerfOp {
        channel_axis: ChannelAxis::First,
        weight: false,
        bias: true,
    };
    let sig = op.signature(&shape).unwrap();
    let names: Vec<_> = sig.params.iter().map(|p| p.name).collect();
    assert_eq!(names, ["alpha", "shift", "bias"]);
    let got = through_op(&op, &shape, 9);
    let i = inputs(&op, &shape, 9);
    let (alpha, shift, b) = (i.p[0], i.p[1], &i.p[2..]);
    let affine = Affine {
        weight: None,
        bias: Some(b),
    };
    let mut y = vec![0.0f32; i.x.len()];
    derf_forward(
        &mut y,
        &i.x,
        &shape,
        alpha,
        shift,
        affine,
        ChannelAxis::First,
    )
    .unwrap();
    let (mut dx, mut db) = (vec![0.0; i.x.len()], vec![0.0; 4]);
    let grads = Grads {
        dx: &mut dx,
        dweight: None,
        dbias: Some(&mut db),
    };
    let d = derf_backward(
        grads,
        &i.dy,
        &i.x,
        &shape,
        alpha,
        shift,
        None,
        ChannelAxis::First,
    )
    .unwrap();
    let mut dp = vec![d.dalpha, d.dshift];
    dp.extend(db);
    assert_eq!((got.0, got.1, got.2), (y, dx, dp), "derf");

    // WeightNorm: the input is v, the parameter g.
    let op = WeightNormOp { dim: Some(0) };
    let got = through_op(&op, &shape, 7);
    let i = inputs(&op, &shape, 7);
    let mut w = vec![0.0f32; i.x.len()];
    let norms = weight_norm_forward(&mut w, &i.x, &shape, &i.p, Some(0)).unwrap();
    let (mut dv, mut dg) = (vec![0.0; i.x.len()], vec![0.0; 3]);
    weight_norm_backward(&mut dv, &mut dg, &i.dy, &i.x, &shape, &i.p, Some(0), &norms).unwrap();
    assert_eq!((got.0, got.1, got.2), (w, dv, dg), "weight_norm");

    // AdaIN: the style is the parameter.
    let cfg = AdaInConfig::default();
    let op = AdaInOp {
        cfg,
        style_shape: vec![3, 4, 9],
    };
    let got = through_op(&op, &shape, 8);
    let i = inputs(&op, &shape, 8);
    let mut y = vec![0.0f32; i.x.len()];
    let stats = adain_forward(&mut y, &i.x, &shape, &i.p, &[3, 4, 9], &cfg).unwrap();
    let (mut dx, mut ds) = (vec![0.0; i.x.len()], vec![0.0; i.p.len()]);
    adain_backward(
        &mut dx,
        Some(&mut ds),
        &i.dy,
        &i.x,
        &shape,
        &i.p,
        &[3, 4, 9],
        &stats,
        &cfg,
    )
    .unwrap();
    assert_eq!((got.0, got.1, got.2), (y, dx, ds), "adain");

    // adaLN: weight, bias, then the per-sample scale and shift.
    let op = AdaNormOp {
        normalized_shape: vec![6],
        eps: 1e-6,
        rms: false,
        weight: true,
        bias: true,
    };
    let sig = op.signature(&shape).unwrap();
    let lens: Vec<_> = sig.params.iter().map(|p| (p.name, p.len)).collect();
    assert_eq!(
        lens,
        [("weight", 6), ("bias", 6), ("scale", 18), ("shift", 18)]
    );
    let got = through_op(&op, &shape, 9);
    let i = inputs(&op, &shape, 9);
    let (w, rest) = i.p.split_at(6);
    let (b, rest) = rest.split_at(6);
    let (scale, shift) = rest.split_at(18);
    let m = Modulation { scale, shift };
    let mut y = vec![0.0f32; i.x.len()];
    let stats =
        ada_layer_norm_forward(&mut y, &i.x, &shape, &[6], Affine::new(w, b), m, 1e-6).unwrap();
    let mut d = [vec![0.0f32; 6], vec![0.0; 6], vec![0.0; 18], vec![0.0; 18]];
    let mut dx = vec![0.0; i.x.len()];
    let [dw, db, dsc, dsh] = &mut d[..] else {
        unreachable!()
    };
    let grads = Grads {
        dx: &mut dx,
        dweight: Some(dw),
        dbias: Some(db),
    };
    let dm = ModulationGrads {
        dscale: Some(dsc),
        dshift: Some(dsh),
    };
    ada_layer_norm_backward(
        grads,
        dm,
        &i.dy,
        &i.x,
        &shape,
        &[6],
        Affine::new(w, b),
        m,
        &stats,
    )
    .unwrap();
    assert_eq!((got.0, got.1, got.2), (y, dx, d.concat()), "ada_layer_norm");

    // SwitchNorm and Batch Renorm train through the interface (checked
    // against their references elsewhere); here: they run, and write
    // every packed gradient.
    let op = SwitchNormOp {
        cfg: SwitchNormConfig::default(),
        training: true,
        weight: true,
        bias: true,
    };
    let (_, _, dp, _) = through_op(&op, &shape, 10);
    assert_eq!(dp.len(), 4 + 4 + 3 + 3);
    assert!(
        dp[8..].iter().any(|&v| v != 0.0),
        "importance gradients written"
    );
    let op = BatchRenormOp {
        cfg: BatchRenormConfig::default(),
        training: true,
        weight: true,
        bias: true,
    };
    assert_eq!(
        op.signature(&shape).unwrap().running,
        Running::Requires { channels: 4 }
    );
    let (_, _, _, running) = through_op(&op, &shape, 11);
    let i = inputs(&op, &shape, 11);
    assert_ne!(running[..4], i.mean[..], "running mean updated");
}

#[test]
fn signatures_refuse_what_a_training_forward_refuses() {
    // An adapter validates with the signature alone, before dispatching.
    let nan = Momentum::Exponential(f32::NAN);
    let bn = |momentum, training| BatchNormOp {
        cfg: BatchNormConfig {
            momentum,
            ..Default::default()
        },
        training,
        weight: false,
        bias: false,
    };
    let momentum = |r: Result<op::Signature>| {
        matches!(
            r,
            Err(NormError::Param {
                name: "momentum",
                ..
            })
        )
    };
    let too_few = |r: Result<op::Signature>| matches!(r, Err(NormError::TooFewValues { .. }));
    assert!(momentum(bn(nan, true).signature(&[4, 3])));
    assert!(too_few(bn(Momentum::default(), true).signature(&[1, 3])));
    // Evaluation reads the running statistics: one value per channel is fine.
    assert!(bn(nan, false).signature(&[1, 3]).is_ok());
    let inorm = InstanceNormOp {
        cfg: InstanceNormConfig {
            momentum: nan,
            ..Default::default()
        },
        training: true,
        weight: false,
        bias: false,
    };
    assert!(momentum(inorm.signature(&[2, 3, 4])));
    let inorm = InstanceNormOp {
        cfg: InstanceNormConfig::default(),
        ..inorm
    };
    assert!(too_few(inorm.signature(&[2, 3, 1])));
    let sn = SwitchNormOp {
        cfg: SwitchNormConfig {
            momentum: nan,
            ..Default::default()
        },
        training: true,
        weight: false,
        bias: false,
    };
    assert!(momentum(sn.signature(&[4, 3])));
    let sn = SwitchNormOp {
        cfg: SwitchNormConfig::default(),
        ..sn
    };
    assert!(too_few(sn.signature(&[1, 3, 1])));
    let brn = BatchRenormOp {
        cfg: BatchRenormConfig {
            momentum: nan,
            ..Default::default()
        },
        training: true,
        weight: false,
        bias: false,
    };
    assert!(momentum(brn.signature(&[4, 3])));
}

#[test]
fn the_interface_refuses_bad_packing_and_running_statistics() {
    let shape = [2, 3];
    let ln = LayerNormOp {
        normalized_shape: vec![3],
        eps: 1e-5,
        weight: true,
        bias: true,
    };
    let x = [1.0f32, 2.0, 4.0, -1.0, 0.0, 1.0];
    let mut y = [9.0f32; 6];
    let err = ln.forward(&mut y, &x, &shape, &[1.0; 5], None).unwrap_err();
    assert!(
        matches!(
            err,
            NormError::Length {
                op: "layer_norm",
                name: "params",
                expected: 6,
                got: 5,
                ..
            }
        ),
        "{err}"
    );
    let (mut mean, mut var) = ([0.0f32; 3], [1.0f32; 3]);
    let r = RunningStats {
        mean: &mut mean,
        var: &mut var,
    };
    let err = ln
        .forward(&mut y, &x, &shape, &[1.0; 6], Some(r))
        .unwrap_err();
    assert!(
        matches!(
            err,
            NormError::NoSuchParameter {
                op: "layer_norm",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(y, [9.0; 6], "nothing written");

    let bn = BatchNormOp {
        cfg: BatchNormConfig::default(),
        training: false,
        weight: false,
        bias: false,
    };
    let err = bn.forward(&mut y, &x, &shape, &[], None).unwrap_err();
    assert!(
        matches!(
            err,
            NormError::Missing {
                op: "batch_norm",
                name: "running_mean"
            }
        ),
        "{err}"
    );
    let (mut mean, mut var) = ([0.0f32; 2], [1.0f32; 2]);
    let r = RunningStats {
        mean: &mut mean,
        var: &mut var,
    };
    let err = bn.forward(&mut y, &x, &shape, &[], Some(r)).unwrap_err();
    assert!(
        matches!(
            err,
            NormError::Length {
                name: "running_mean",
                expected: 3,
                got: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(y, [9.0; 6], "nothing written");

    // The backward checks the packed gradient too.
    let stats = ln.forward(&mut y, &x, &shape, &[1.0; 6], None).unwrap();
    let mut dx = [5.0f32; 6];
    let mut dp = [5.0f32; 4];
    let grads = OpGrads {
        dx: &mut dx,
        dparams: Some(&mut dp),
    };
    let err = ln
        .backward(grads, &x, &x, &shape, &[1.0; 6], &stats)
        .unwrap_err();
    assert!(
        matches!(
            err,
            NormError::Length {
                name: "dparams",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!((dx, dp), ([5.0; 6], [5.0; 4]), "nothing written");
}

#[test]
fn erased_ops_dispatch_on_the_element_type_and_check_what_was_saved() {
    let shape = [4, 8];
    let ops: Vec<Box<dyn ErasedOp>> = vec![
        Box::new(RmsNormOp {
            normalized_shape: vec![8],
            eps: 1e-6,
            weight: true,
        }),
        Box::new(LayerNormOp {
            normalized_shape: vec![8],
            eps: 1e-5,
            weight: true,
            bias: true,
        }),
    ];
    let mut rng = Rng::new(12);
    let x: Vec<f32> = rng.normals(32, 0.0, 1.0);
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    for op in &ops {
        let p = vec![1.25f32; op.signature_erased(&shape).unwrap().packed_len()];
        let mut y = vec![bf16::ZERO; 32];
        let saved = op
            .forward_erased(
                ElemSliceMut::Bf16(&mut y),
                ElemSlice::Bf16(&xb),
                &shape,
                &p,
                None,
            )
            .unwrap();
        // The bf16 path is the generic kernel's bf16 instance.
        let mut want = vec![bf16::ZERO; 32];
        match op.name_erased() {
            "rms_norm" => {
                rms_norm_forward(&mut want, &xb, &shape, &[8], Some(&p), 1e-6).unwrap();
            }
            _ => {
                let (w, b) = p.split_at(8);
                layer_norm_forward(&mut want, &xb, &shape, &[8], Affine::new(w, b), 1e-5).unwrap();
            }
        }
        assert_eq!(y, want, "{}", op.name_erased());
        // Mixed element types are refused, naming the op.
        let mut y32 = vec![0.0f32; 32];
        let err = op
            .forward_erased(
                ElemSliceMut::F32(&mut y32),
                ElemSlice::Bf16(&xb),
                &shape,
                &p,
                None,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                NormError::DType {
                    expected: "bf16",
                    got: "f32",
                    ..
                }
            ),
            "{err}"
        );
        // State saved by another op is refused.
        let foreign: op::ErasedSaved = std::sync::Arc::new(vec![0.0f32; 4]);
        let mut dx = vec![bf16::ZERO; 32];
        let err = op
            .backward_erased(
                ElemSliceMut::Bf16(&mut dx),
                None,
                ElemSlice::Bf16(&xb),
                ElemSlice::Bf16(&xb),
                &shape,
                &p,
                &foreign,
            )
            .unwrap_err();
        assert!(matches!(err, NormError::Saved { .. }), "{err}");
        // The right state works, without parameter gradients.
        op.backward_erased(
            ElemSliceMut::Bf16(&mut dx),
            None,
            ElemSlice::Bf16(&xb),
            ElemSlice::Bf16(&xb),
            &shape,
            &p,
            &saved,
        )
        .unwrap();
        assert!(dx.iter().any(|v| v.to_f32() != 0.0));
    }
}
