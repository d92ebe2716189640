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
