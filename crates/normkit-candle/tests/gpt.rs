//! A small GPT written for candle-nn (`examples/gpt_block/model.rs`, in the
//! shape of candle-transformers' GPT models) compiled three times, each with
//! one `use` line choosing its LayerNorm: candle-nn's, normkit-candle's, and
//! one composed from candle's differentiable tensor ops (the gradients'
//! yardstick). The normkit build loads the candle-nn build's safetensors,
//! gives the same logits, and its gradients reach every parameter, the
//! embeddings included, with the composed build's values.

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::common::*;

#[allow(dead_code)]
mod with_candle_nn {
    use candle_nn::{layer_norm, LayerNorm};
    include!("../examples/gpt_block/model.rs");
}

#[allow(dead_code)]
mod with_normkit {
    use normkit_candle::{layer_norm, LayerNorm};
    include!("../examples/gpt_block/model.rs");
}

#[allow(dead_code)]
mod with_composed {
    use super::composed::{layer_norm, LayerNorm};
    include!("../examples/gpt_block/model.rs");
}

/// candle-nn's LayerNorm computed by `candle_nn::ops::layer_norm_slow`,
/// whose tensor ops all have gradients.
mod composed {
    use candle_core::{Module, Result, Tensor};
    use candle_nn::VarBuilder;

    pub struct LayerNorm(candle_nn::LayerNorm);

    pub fn layer_norm<C: Into<candle_nn::LayerNormConfig>>(
        size: usize,
        config: C,
        vb: VarBuilder,
    ) -> Result<LayerNorm> {
        Ok(LayerNorm(candle_nn::layer_norm(size, config, vb)?))
    }

    impl Module for LayerNorm {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            let ln = &self.0;
            let bias = ln.bias().expect("GPT's LayerNorms have a bias");
            candle_nn::ops::layer_norm_slow(x, ln.weight(), bias, ln.eps() as f32)
        }
    }
}

/// A `VarMap` whose every variable holds random values (LayerNorm weights
/// around 1), as a trained model's would.
fn randomize(map: &VarMap, rng: &mut Rng) {
    let mut vars: Vec<_> = map.data().lock().unwrap().clone().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in vars {
        let (lo, hi) = if name.ends_with("ln_1.weight")
            || name.ends_with("ln_2.weight")
            || name.ends_with("ln_f.weight")
        {
            (0.5, 1.5)
        } else {
            (-0.2, 0.2)
        };
        var.set(&rng.tensor(var.dims(), lo, hi)).unwrap();
    }
}

/// The gradient of every variable of `map` for `loss`, by name.
fn grads_by_name(map: &VarMap, loss: &Tensor) -> HashMap<String, Option<Vec<f64>>> {
    let grads = loss.backward().unwrap();
    map.data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, var)| (name.clone(), grads.get(var.as_tensor()).map(flat)))
        .collect()
}

#[test]
fn one_use_line_switches_a_gpt_to_normkit() {
    let text: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let ids = with_normkit::byte_batch(&text, 2, 16, 0).unwrap();
    let mut rng = Rng::new(21);

    // candle-nn's build, saved as safetensors.
    let map_nn = VarMap::new();
    let vb = VarBuilder::from_varmap(&map_nn, DType::F32, &CPU);
    let nn = with_candle_nn::Gpt::new(&with_candle_nn::Config::small(), vb).unwrap();
    randomize(&map_nn, &mut rng);
    let tensors: HashMap<String, Tensor> = map_nn
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let file = TempFile::safetensors("gpt", &tensors);
    let want = flat(&nn.forward(&ids).unwrap());

    // normkit's build loads the same file, by the same names.
    let vb = VarBuilder::from_buffered_safetensors(file.bytes(), DType::F32, &CPU).unwrap();
    let loaded = with_normkit::Gpt::new(&with_normkit::Config::small(), vb).unwrap();
    assert_close(
        "logits from the file",
        &flat(&loaded.forward(&ids).unwrap()),
        &want,
        1e-5,
    );

    // Trainable builds of normkit and of the composed LayerNorm.
    let mut map_nk = VarMap::new();
    let vb = VarBuilder::from_varmap(&map_nk, DType::F32, &CPU);
    let nk = with_normkit::Gpt::new(&with_normkit::Config::small(), vb).unwrap();
    map_nk.load(&file.0).unwrap();
    let mut map_ref = VarMap::new();
    let vb = VarBuilder::from_varmap(&map_ref, DType::F32, &CPU);
    let reference = with_composed::Gpt::new(&with_composed::Config::small(), vb).unwrap();
    map_ref.load(&file.0).unwrap();
    assert_close("logits", &flat(&nk.forward(&ids).unwrap()), &want, 1e-5);

    let got = grads_by_name(&map_nk, &nk.loss(&ids).unwrap());
    let expected = grads_by_name(&map_ref, &reference.loss(&ids).unwrap());
    assert_eq!(got.len(), tensors.len());
    for name in ["wte.weight", "wpe.weight", "h.0.ln_1.weight", "ln_f.bias"] {
        assert!(got.contains_key(name), "no parameter {name}");
    }
    for (name, g) in &got {
        let g = g
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no gradient reached it"));
        let want = expected[name].as_ref().expect("the composed build");
        assert!(max_abs(g) > 0.0, "{name}: zero gradient");
        assert_close(&format!("d{name}"), g, want, 1e-4);
    }
}
