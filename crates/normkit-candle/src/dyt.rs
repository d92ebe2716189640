//! Dynamic Tanh as a candle layer.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use normkit::{ChannelAxis, Elem};

use crate::error::{self, LayerError};
use crate::fused::{self, Kernel, Slots};
use crate::state::{insert, StateDict};

/// Settings of a [`Dyt`] layer; the defaults are the paper's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DytConfig {
    /// Initial value of `alpha`. The paper: `0.5`.
    pub alpha_init: f64,
    /// Learnable per-channel `weight` and `bias`. The paper: `true`.
    pub elementwise_affine: bool,
    /// The paper: channels last (`[*, C]`), replacing LayerNorm.
    pub channel_axis: ChannelAxis,
}

impl Default for DytConfig {
    fn default() -> Self {
        DytConfig {
            alpha_init: 0.5,
            elementwise_affine: true,
            channel_axis: ChannelAxis::Last,
        }
    }
}

/// Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, 2025, "Transformers without
/// Normalization"), an elementwise stand-in for LayerNorm:
///
/// ```text
/// y = weight · tanh(alpha · x) + bias
/// ```
///
/// where `alpha` is one learnable scalar and `weight`, `bias` are per
/// channel. Parameter names follow the paper's code: `alpha`, `weight`,
/// `bias`.
///
/// # Shapes
/// - `x`, `y`: `[*, C]` (channels last, rank ≥ 1) or `[N, C, *]` (channels
///   first, rank ≥ 2);
/// - `alpha`: `[1]`; `weight`, `bias`: `[C]`.
#[derive(Debug, Clone)]
pub struct Dyt {
    num_features: usize,
    alpha: Tensor,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    channel_axis: ChannelAxis,
}

/// Creates a [`Dyt`] over `num_features` channels, loading or initializing
/// (alpha `alpha_init`, weight 1, bias 0) its tensors through `vb`.
pub fn dyt(num_features: usize, config: DytConfig, vb: VarBuilder) -> Result<Dyt> {
    let alpha = vb.get_with_hints(1, "alpha", Init::Const(config.alpha_init))?;
    let (weight, bias) = if config.elementwise_affine {
        (
            Some(vb.get_with_hints(num_features, "weight", Init::Const(1.0))?),
            Some(vb.get_with_hints(num_features, "bias", Init::Const(0.0))?),
        )
    } else {
        (None, None)
    };
    Ok(Dyt {
        num_features,
        alpha,
        weight,
        bias,
        channel_axis: config.channel_axis,
    })
}

impl Dyt {
    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn alpha(&self) -> &Tensor {
        &self.alpha
    }

    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn channel_axis(&self) -> ChannelAxis {
        self.channel_axis
    }
}

impl Module for Dyt {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::check_channels("dyt", x, self.channel_axis, self.num_features)?;
        dyt_op(
            x,
            &self.alpha,
            self.weight.as_ref(),
            self.bias.as_ref(),
            self.channel_axis,
        )
    }
}

impl StateDict for Dyt {
    fn state_dict(&self, prefix: &str, out: &mut HashMap<String, Tensor>) {
        insert(out, prefix, "alpha", &self.alpha);
        if let Some(w) = &self.weight {
            insert(out, prefix, "weight", w);
        }
        if let Some(b) = &self.bias {
            insert(out, prefix, "bias", b);
        }
    }
}

/// Functional Dynamic Tanh; `alpha` holds one value.
pub fn dyt_op(
    x: &Tensor,
    alpha: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    channel_axis: ChannelAxis,
) -> Result<Tensor> {
    if alpha.elem_count() != 1 {
        return Err(error::layer(LayerError::ParamShape {
            op: "dyt",
            name: "alpha",
            expected: vec![1],
            got: alpha.dims().to_vec(),
        }));
    }
    let kernel = DytKernel {
        slots: Slots::of(weight, bias),
        channel_axis,
    };
    let params: Vec<&Tensor> = std::iter::once(alpha).chain(weight).chain(bias).collect();
    fused::apply(Arc::new(kernel), x, &params)
}

/// Parameters packed as `[alpha, weight…, bias…]`.
struct DytKernel {
    slots: Slots,
    channel_axis: ChannelAxis,
}

impl DytKernel {
    fn split<'a>(&self, shape: &[usize], params: &'a [f32]) -> normkit::Result<(f32, &'a [f32])> {
        match params.split_first() {
            Some((&alpha, rest)) => {
                self.slots.check(Self::NAME, rest, shape)?;
                Ok((alpha, rest))
            }
            None => Err(normkit::NormError::Length {
                op: Self::NAME,
                name: "alpha",
                expected: 1,
                got: 0,
                shape: shape.to_vec(),
            }),
        }
    }
}

impl Kernel for DytKernel {
    type Saved = ();
    const NAME: &'static str = "dyt";
    const BACKWARD_NAME: &'static str = "dyt_backward";

    fn forward<T: Elem>(
        &self,
        y: &mut [T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
    ) -> normkit::Result<()> {
        let (alpha, rest) = self.split(shape, params)?;
        normkit::dyt_forward(
            y,
            x,
            shape,
            alpha,
            self.slots.affine(rest),
            self.channel_axis,
        )
    }

    fn backward<T: Elem>(
        &self,
        dx: &mut [T],
        dparams: &mut [f32],
        dy: &[T],
        x: &[T],
        shape: &[usize],
        params: &[f32],
        _saved: &(),
    ) -> normkit::Result<()> {
        let (alpha, rest) = self.split(shape, params)?;
        let Some((dalpha, drest)) = dparams.split_first_mut() else {
            return self.split(shape, &[]).map(|_| ());
        };
        let weight = self.slots.affine(rest).weight;
        *dalpha = normkit::dyt_backward(
            self.slots.grads(dx, drest),
            dy,
            x,
            shape,
            alpha,
            weight,
            self.channel_axis,
        )?;
        Ok(())
    }
}
