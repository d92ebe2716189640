//! Bad input and bad configuration are typed errors naming the op, never
//! panics through `try_forward` / `try_init`.

use burn::tensor::{Device, Tensor};
use normkit::NormError;
use normkit_burn::functional;
use normkit_burn::*;

use crate::common::*;

#[test]
fn wrong_channel_counts() {
    let device = Device::flex();
    let x = Tensor::<3>::zeros([2, 5, 4], &device);
    let err = BatchNormConfig::new(3)
        .init(&device)
        .try_forward(x.clone())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Channels {
                op: "BatchNorm",
                expected: 3,
                got: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = InstanceNormConfig::new(4)
        .init(&device)
        .try_forward(x.clone())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Channels {
                op: "InstanceNorm",
                ..
            }
        ),
        "{err}"
    );
    let err = GroupNormConfig::new(1, 4)
        .init(&device)
        .try_forward(x.clone())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Channels {
                op: "GroupNorm",
                ..
            }
        ),
        "{err}"
    );
    let err = DytConfig::new(5).init(&device).try_forward(x).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Channels {
                op: "Dyt",
                got: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("[2, 5, 4]"),
        "message names the shape: {err}"
    );
}

#[test]
fn inputs_the_ops_cannot_take() {
    let device = ad();
    let bn = BatchNormConfig::new(3).init(&device);
    let err = bn
        .try_forward(Tensor::<1>::zeros([3], &device))
        .unwrap_err();
    assert!(matches!(err, Error::Norm(NormError::Rank { .. })), "{err}");
    // One value per channel cannot give an unbiased variance.
    let err = bn
        .try_forward(Tensor::<2>::zeros([1, 3], &device))
        .unwrap_err();
    assert!(
        matches!(err, Error::Norm(NormError::TooFewValues { .. })),
        "{err}"
    );
    let inorm = InstanceNormConfig::new(3).init(&device);
    let err = inorm
        .try_forward(Tensor::<3>::zeros([4, 3, 1], &device))
        .unwrap_err();
    assert!(
        matches!(err, Error::Norm(NormError::TooFewValues { .. })),
        "{err}"
    );
    let ln = LayerNormConfig::new(vec![4, 5]).init(&device);
    let err = ln
        .try_forward(Tensor::<3>::zeros([2, 5, 4], &device))
        .unwrap_err();
    assert!(
        matches!(err, Error::Norm(NormError::NormalizedShape { .. })),
        "{err}"
    );
    let err = RmsNormConfig::new(vec![6])
        .init(&device)
        .try_forward(tensor([2, 5], 1, &device));
    assert!(matches!(
        err,
        Err(Error::Norm(NormError::NormalizedShape { .. }))
    ));
    let err = functional::group_norm(
        Tensor::<3>::zeros([2, 6, 3], &device),
        None,
        None,
        &normkit::GroupNormConfig::new(4),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Norm(NormError::Groups {
                num_groups: 4,
                channels: 6,
                ..
            })
        ),
        "{err}"
    );
    let err = functional::weight_norm(
        Tensor::<2>::ones([3, 4], &device),
        Tensor::ones([3], &device),
        Some(2),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Norm(NormError::Dim { dim: 2, .. })),
        "{err}"
    );
    let err = functional::weight_norm(
        Tensor::<2>::ones([3, 4], &device),
        Tensor::ones([4], &device),
        Some(0),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Norm(NormError::Length { name: "g", .. })),
        "{err}"
    );
}

#[test]
fn configurations_out_of_range() {
    let device = Device::flex();
    let err = BatchNormConfig::new(0).try_init(&device).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                name: "num_features",
                ..
            }
        ),
        "{err}"
    );
    let err = BatchNormConfig::new(2)
        .with_eps(-1.0)
        .try_init(&device)
        .unwrap_err();
    assert!(matches!(err, Error::Config { name: "eps", .. }), "{err}");
    let err = InstanceNormConfig::new(2)
        .with_momentum(Some(f64::NAN))
        .try_init(&device)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                name: "momentum",
                ..
            }
        ),
        "{err}"
    );
    let err = GroupNormConfig::new(4, 6).try_init(&device).unwrap_err();
    assert!(
        matches!(err, Error::Norm(NormError::Groups { .. })),
        "{err}"
    );
    let err = LayerNormConfig::new(vec![3, 0])
        .try_init(&device)
        .unwrap_err();
    assert!(matches!(err, Error::Norm(NormError::Empty { .. })), "{err}");
    let err = RmsNormConfig::new(vec![3])
        .with_eps(Some(f64::INFINITY))
        .try_init(&device)
        .unwrap_err();
    assert!(matches!(err, Error::Config { name: "eps", .. }), "{err}");
    let err = DytConfig::new(3)
        .with_alpha_init(f64::NAN)
        .try_init(&device)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                name: "alpha_init",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn composed_route_refuses_the_same_inputs() {
    let device = Device::flex();
    let bn = BatchNormConfig::new(2).init(&device);
    let err = with_route(Route::Composed, || {
        bn.try_forward(Tensor::<2>::zeros([3, 4], &device))
    });
    assert!(matches!(err, Err(Error::Channels { .. })));
}

#[test]
fn try_init_refuses_what_no_forward_could_take() {
    let device = Device::flex();
    for err in [
        LayerNormConfig::new(vec![]).try_init(&device).err(),
        RmsNormConfig::new(vec![]).try_init(&device).err(),
    ] {
        assert!(
            matches!(err, Some(Error::Norm(NormError::NormalizedShape { .. }))),
            "{err:?}"
        );
    }
    // Finite in f64, infinite as the f32 the kernels take.
    let err = LayerNormConfig::new(vec![4])
        .with_eps(1e39)
        .try_init(&device)
        .unwrap_err();
    assert!(matches!(err, Error::Config { name: "eps", .. }), "{err}");
    // A running average weighs a batch within [0, 1].
    let momentum_errors = [
        BatchNormConfig::new(3)
            .with_momentum(Some(5.0))
            .try_init(&device)
            .err(),
        InstanceNormConfig::new(3)
            .with_momentum(Some(-0.5))
            .try_init(&device)
            .err(),
        SwitchNormConfig::new(3)
            .with_momentum(5.0)
            .try_init(&device)
            .err(),
        BatchRenormConfig::new(3)
            .with_momentum(Some(5.0))
            .try_init(&device)
            .err(),
        nn::BatchNormConfig::new(3)
            .with_momentum(5.0)
            .try_init(&device)
            .err(),
    ];
    for err in momentum_errors {
        assert!(
            matches!(
                err,
                Some(Error::Config {
                    name: "momentum",
                    ..
                })
            ),
            "{err:?}"
        );
    }
}

/// Calls every layer's `try_forward` on `x` and, where it accepts, runs
/// the backward: whatever the shape, an error or a result, never a panic.
fn never_panics<const D: usize>(shape: [usize; D], route: Route) {
    let device = ad();
    let call = |what: &str, f: &dyn Fn(Tensor<D>) -> Result<Tensor<D>>| {
        let x = Tensor::<D>::ones(shape, &device).require_grad();
        let run = std::panic::AssertUnwindSafe(|| {
            with_route(route, || {
                if let Ok(y) = f(x.clone()) {
                    let _ = y.sum().backward();
                }
            })
        });
        assert!(
            std::panic::catch_unwind(run).is_ok(),
            "{what} {shape:?} ({route:?}) panicked"
        );
    };
    let c = |axis: ChannelAxis| match (D, axis) {
        (0 | 1, _) => 1,
        (_, ChannelAxis::First) => shape[1],
        (_, ChannelAxis::Last) => shape[D - 1],
    };
    for axis in [ChannelAxis::First, ChannelAxis::Last] {
        let n = c(axis).max(1);
        let bn = BatchNormConfig::new(n)
            .with_channel_axis(axis)
            .init(&device);
        call("BatchNorm", &|x| bn.try_forward(x));
        let inorm = InstanceNormConfig::new(n)
            .with_affine(true)
            .with_track_running_stats(true)
            .with_channel_axis(axis)
            .init(&device);
        call("InstanceNorm", &|x| inorm.try_forward(x));
        let gn = GroupNormConfig::new(1, n)
            .with_channel_axis(axis)
            .init(&device);
        call("GroupNorm", &|x| gn.try_forward(x));
        let dyt = DytConfig::new(n).with_channel_axis(axis).init(&device);
        call("Dyt", &|x| dyt.try_forward(x));
        let sn = SwitchNormConfig::new(n)
            .with_channel_axis(axis)
            .init(&device);
        call("SwitchNorm", &|x| sn.try_forward(x));
        let brn = BatchRenormConfig::new(n)
            .with_channel_axis(axis)
            .init(&device);
        call("BatchRenorm", &|x| brn.try_forward(x));
        let adain = AdaInConfig::new().with_channel_axis(axis).init(&device);
        call("AdaIn", &|x| adain.try_forward(x.clone(), x));
    }
    let last = if D == 0 { 1 } else { shape[D - 1].max(1) };
    let ln = LayerNormConfig::new(vec![last]).init(&device);
    call("LayerNorm", &|x| ln.try_forward(x));
    let rms = RmsNormConfig::new(vec![last]).init(&device);
    call("RmsNorm", &|x| rms.try_forward(x));
    let ada = AdaLayerNormConfig::new(last, 2)
        .with_gate(true)
        .init(&device);
    let cond = Tensor::<2>::ones([shape.first().copied().unwrap_or(1), 2], &device);
    call("AdaLayerNorm", &|x| {
        Ok(ada.try_forward(x, cond.clone())?.output)
    });
    call("weight_norm", &|x| {
        functional::weight_norm(
            x,
            Tensor::ones([shape.first().copied().unwrap_or(1)], &device),
            Some(0),
        )
    });
}

#[test]
fn try_forward_never_panics() {
    let extents = [0, 1, 2, 3];
    for route in [Route::Auto, Route::Composed] {
        for a in extents {
            never_panics([a], route);
            for b in extents {
                never_panics([a, b], route);
                for c in extents {
                    never_panics([a, b, c], route);
                    for d in [0, 1, 3] {
                        never_panics([a, b, c, d], route);
                    }
                }
            }
        }
    }
}
