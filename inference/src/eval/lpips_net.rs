//! LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018, the `lpips` package's
//! `LPIPS(net="alex")`), run natively from the two files users have:
//!
//! - the package's linear-layer weights, `lpips/weights/v0.1/alex.pth` (shipped in its wheel):
//!   `lin{0..4}.model.1.weight`, (1, C, 1, 1) for C = 64, 192, 384, 256, 256;
//! - torchvision's AlexNet state dict (`alexnet-owt-7be5be79.pth`, which torchvision downloads;
//!   it cannot ship here): `features.{0,3,6,8,10}.{weight,bias}`; `classifier.*` is not read.
//!
//! Both are read by the safe pickle reader (nothing in them is executed). For images x, y in
//! [-1, 1]: scale ((v - shift) / scale per channel), the outputs of AlexNet's five ReLUs,
//! each unit-normalised over channels (`normalize_tensor`, eps 1e-10), squared difference, the
//! 1x1 linear layer, mean over space, summed over the five layers: (N, 1, 1, 1).

use std::collections::HashMap;
use std::path::Path;

use tch::{Device, Tensor};

use super::script::ScriptError;
use super::state_dict::{self, Shape};

/// AlexNet's convolutions: index in `features`, weight shape, stride, padding. Each is followed
/// by a ReLU (one LPIPS feature); max pooling (3, stride 2) comes before convolutions 3 and 6.
#[rustfmt::skip]
const CONVS: [(usize, [i64; 4], i64, i64); 5] = [
    (0, [64, 3, 11, 11], 4, 2),
    (3, [192, 64, 5, 5], 1, 2),
    (6, [384, 192, 3, 3], 1, 1),
    (8, [256, 384, 3, 3], 1, 1),
    (10, [256, 256, 3, 3], 1, 1),
];

/// LPIPS' ScalingLayer constants.
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];

/// LPIPS (AlexNet, v0.1) with its weights on a device.
#[derive(Debug)]
pub struct NativeLpips {
    weights: HashMap<String, Tensor>,
    shift: Tensor,
    scale: Tensor,
    device: Device,
}

impl NativeLpips {
    /// Loads the linear layers (`lin`: the lpips package's `weights/v0.1/alex.pth`) and the
    /// AlexNet trunk (`alexnet`: torchvision's state dict) onto `device`.
    pub fn load(lin: &Path, alexnet: &Path, device: Device) -> Result<Self, ScriptError> {
        let lin_shapes: Vec<Shape> = CONVS
            .iter()
            .enumerate()
            .map(|(i, (_, shape, ..))| (format!("lin{i}.model.1.weight"), vec![1, shape[0], 1, 1]))
            .collect();
        let what = "the lpips package's linear layers (lpips/weights/v0.1/alex.pth)";
        let file = state_dict::read(lin, what, |_| false)?;
        let mut weights = state_dict::take(file, &lin_shapes, lin, "LPIPS (alex)", device)?;
        let trunk_shapes: Vec<Shape> = CONVS
            .iter()
            .flat_map(|(at, shape, ..)| {
                [
                    (format!("features.{at}.weight"), shape.to_vec()),
                    (format!("features.{at}.bias"), vec![shape[0]]),
                ]
            })
            .collect();
        let what = "torchvision's AlexNet state dict (alexnet-owt-7be5be79.pth)";
        let file = state_dict::read(alexnet, what, |k| k.starts_with("classifier."))?;
        weights.extend(state_dict::take(
            file,
            &trunk_shapes,
            alexnet,
            "AlexNet",
            device,
        )?);
        let channel = |v: &[f32; 3]| Tensor::from_slice(v).view([1, 3, 1, 1]).to_device(device);
        Ok(Self {
            weights,
            shift: channel(&SHIFT),
            scale: channel(&SCALE),
            device,
        })
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The five unit-normalised ReLU outputs of AlexNet for images in [-1, 1].
    fn features(&self, x: &Tensor) -> Vec<Tensor> {
        let mut h = (x - &self.shift) / &self.scale;
        let mut out = Vec::with_capacity(CONVS.len());
        for (at, _, stride, padding) in CONVS {
            if at == 3 || at == 6 {
                h = h.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
            }
            let (w, b) = (
                &self.weights[&format!("features.{at}.weight")],
                &self.weights[&format!("features.{at}.bias")],
            );
            h = h
                .conv2d(w, Some(b), [stride, stride], [padding, padding], [1, 1], 1)
                .relu();
            let norm = h.square().sum_dim_intlist(1, true, None).sqrt() + 1e-10;
            out.push(&h / norm);
        }
        out
    }

    /// LPIPS of two (N, 3, H, W) batches in [-1, 1]: (N, 1, 1, 1).
    pub fn forward(&self, x: &Tensor, y: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let (fx, fy) = (self.features(x), self.features(y));
            let mut total = Tensor::zeros([x.size()[0], 1, 1, 1], (x.kind(), x.device()));
            for (i, (a, b)) in fx.iter().zip(&fy).enumerate() {
                let lin = &self.weights[&format!("lin{i}.model.1.weight")];
                let d = (a - b)
                    .square()
                    .conv2d(lin, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
                    .mean_dim(&[2i64, 3][..], true, None);
                total += d;
            }
            total
        })
    }
}
