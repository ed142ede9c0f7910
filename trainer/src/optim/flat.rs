//! The trained parameters as views of a few flat buffers ("buckets"), and their gradients as
//! views of buffers laid out the same way, as DDP's `gradient_as_bucket_view` and the fused
//! optimizers do. The model keeps using its own tensors (only their storage moves); the
//! backward pass accumulates straight into the gradient buffers; and AdamW, EMA, clipping,
//! zeroing and the all-reduce each issue a handful of operations per bucket instead of per
//! tensor (about 700 tensors at the paper size, ~25 MiB buckets).
//!
//! Buckets hold consecutive parameters in name order, at most `bucket_elems` elements each (a
//! larger tensor gets a bucket of its own), so one bucket per tensor is the per-tensor layout.
//! The last gradient buffer has one element more, the stop slot the gradient backends use to
//! agree on preemption; it is not a gradient, and [`Flat::grads`] leaves it out.

use std::ops::Range;

use tch::{Device, Kind, Tensor};

/// Why parameters cannot be laid out flat, or no longer are.
#[derive(Debug, thiserror::Error)]
pub enum FlatError {
    /// Parameters of different dtypes or devices (one buffer holds one dtype on one device).
    #[error(
        "parameter `{name}` is {kind:?} on {device:?}, `{first}` is {first_kind:?} on \
         {first_device:?}: flat buffers hold one dtype on one device"
    )]
    Mixed {
        /// The differing parameter.
        name: String,
        /// Its dtype.
        kind: Kind,
        /// Its device.
        device: Device,
        /// The first parameter.
        first: String,
        /// Its dtype.
        first_kind: Kind,
        /// Its device.
        first_device: Device,
    },
    /// A parameter that does not require a gradient.
    #[error("parameter `{0}` does not require a gradient, so it is not trained")]
    NotTrained(String),
    /// A parameter or gradient was replaced and no longer lies in its buffer.
    #[error(
        "the {what} of `{name}` no longer lies in its flat buffer (replaced by a new tensor): \
         its updates would be lost"
    )]
    Detached {
        /// "data" or "gradient".
        what: &'static str,
        /// The parameter.
        name: String,
    },
}

/// Splits tensors (by element count) into buckets of at most `bucket` elements, in order; a
/// tensor larger than a bucket gets a bucket of its own.
pub fn buckets(numels: &[usize], bucket: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, &n) in numels.iter().enumerate() {
        if size > 0 && size + n > bucket {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += n;
    }
    if start < numels.len() {
        out.push(start..numels.len());
    }
    out
}

/// Elements of float32 in `mb` MiB (at least one).
pub fn bucket_elements(mb: f64) -> usize {
    ((mb * (1u64 << 20) as f64) / 4.0).max(1.0) as usize
}

/// Where one parameter lives: its bucket and its element offset there.
#[derive(Debug, Clone, Copy)]
struct Place {
    bucket: usize,
    offset: i64,
}

/// Parameters and gradients as views of per-bucket flat buffers.
#[derive(Debug)]
pub struct Flat {
    names: Vec<String>,
    /// The model's parameter tensors, in name order (their data are views of `data`).
    params: Vec<Tensor>,
    shapes: Vec<Vec<i64>>,
    places: Vec<Place>,
    groups: Vec<Range<usize>>,
    /// Per bucket, the flat parameters.
    data: Vec<Tensor>,
    /// Per bucket, the flat gradients (the last with the stop slot).
    storage: Vec<Tensor>,
    /// Per bucket, the gradients without the slot.
    grads: Vec<Tensor>,
    /// Per parameter, the addresses its data and gradient must keep.
    addresses: Vec<(usize, usize)>,
}

impl Flat {
    /// Moves `params` (name, leaf tensor requiring grad) into buckets of at most
    /// `bucket_elems` elements: each parameter's values are copied into its bucket and the
    /// parameter re-pointed there (`set_data`: the same tensor, so the model sees it), and each
    /// gradient made a view of the gradient buffer (existing gradient values are kept).
    pub fn new(mut params: Vec<(String, Tensor)>, bucket_elems: usize) -> Result<Self, FlatError> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((first, t0)) = params.first() {
            for (name, t) in &params {
                if !t.requires_grad() {
                    return Err(FlatError::NotTrained(name.clone()));
                }
                if t.kind() != t0.kind() || t.device() != t0.device() {
                    return Err(FlatError::Mixed {
                        name: name.clone(),
                        kind: t.kind(),
                        device: t.device(),
                        first: first.clone(),
                        first_kind: t0.kind(),
                        first_device: t0.device(),
                    });
                }
            }
        }
        let (kind, device) = params
            .first()
            .map_or((Kind::Float, Device::Cpu), |(_, t)| (t.kind(), t.device()));
        let (names, params): (Vec<String>, Vec<Tensor>) = params.into_iter().unzip();
        let shapes: Vec<Vec<i64>> = params.iter().map(Tensor::size).collect();
        let numels: Vec<usize> = params.iter().map(Tensor::numel).collect();
        let groups = buckets(&numels, bucket_elems);
        let mut places = Vec::with_capacity(params.len());
        let mut sizes = Vec::with_capacity(groups.len());
        for (b, range) in groups.iter().enumerate() {
            let mut offset = 0i64;
            for &n in &numels[range.clone()] {
                places.push(Place { bucket: b, offset });
                offset += n as i64;
            }
            sizes.push(offset);
        }
        let data: Vec<Tensor> = sizes
            .iter()
            .map(|&n| Tensor::empty([n], (kind, device)))
            .collect();
        // The stop slot rides at the end of the last buffer (a buffer of its own without
        // parameters, so the backends always have one).
        let last = sizes.len().saturating_sub(1);
        let mut storage: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(b, &n)| Tensor::zeros([n + i64::from(b == last)], (kind, device)))
            .collect();
        if storage.is_empty() {
            storage.push(Tensor::zeros([1], (kind, device)));
        }
        let grads: Vec<Tensor> = sizes
            .iter()
            .zip(&storage)
            .map(|(&n, s)| s.narrow(0, 0, n))
            .collect();
        let mut flat = Self {
            names,
            params,
            shapes,
            places,
            groups,
            data,
            storage,
            grads,
            addresses: Vec::new(),
        };
        flat.point_params();
        flat.point_grads();
        flat.addresses = flat.current_addresses();
        Ok(flat)
    }

    /// Copies each parameter into its place and re-points it there.
    fn point_params(&self) {
        let views = self.views(&self.data);
        tch::no_grad(|| {
            for (p, (_, v)) in self.params.iter().zip(&views) {
                v.shallow_clone().copy_(p);
                p.shallow_clone().set_data(v);
            }
        });
    }

    /// Gives every parameter a gradient (one zero backward for those without), copies it into
    /// the gradient buffer and re-points it there, so later backward passes accumulate in place.
    fn point_grads(&self) {
        let missing: Vec<Tensor> = self
            .params
            .iter()
            .filter(|p| !p.grad().defined())
            .map(|p| p.sum(Kind::Float))
            .collect();
        if !missing.is_empty() {
            (Tensor::stack(&missing, 0).sum(Kind::Float) * 0.0).backward();
        }
        let views = self.views(&self.grads);
        tch::no_grad(|| {
            for (p, (_, v)) in self.params.iter().zip(&views) {
                let mut g = p.grad();
                v.shallow_clone().copy_(&g);
                g.set_data(v);
            }
        });
    }

    fn current_addresses(&self) -> Vec<(usize, usize)> {
        self.params
            .iter()
            .map(|p| (p.data_ptr() as usize, p.grad().data_ptr() as usize))
            .collect()
    }

    /// Another handle on the same buffers (shallow: nothing is copied).
    pub fn share(&self) -> Self {
        let all = |v: &[Tensor]| v.iter().map(Tensor::shallow_clone).collect();
        Self {
            names: self.names.clone(),
            params: all(&self.params),
            shapes: self.shapes.clone(),
            places: self.places.clone(),
            groups: self.groups.clone(),
            data: all(&self.data),
            storage: all(&self.storage),
            grads: all(&self.grads),
            addresses: self.addresses.clone(),
        }
    }

    /// Parameter names, sorted.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The parameters (the model's tensors), in name order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// Per bucket, the parameters as one flat tensor.
    pub fn buckets(&self) -> &[Tensor] {
        &self.data
    }

    /// Per bucket, the gradients as one flat tensor.
    pub fn grads(&self) -> &[Tensor] {
        &self.grads
    }

    /// The gradient buffers as the backends reduce them: per bucket, contiguous, the last
    /// element of the last one the stop slot (never empty).
    pub fn reduce_buffers(&self) -> &[Tensor] {
        &self.storage
    }

    /// The parameter indices of each bucket.
    pub fn groups(&self) -> &[Range<usize>] {
        &self.groups
    }

    /// Zeroes every gradient: one operation per bucket.
    pub fn zero_grad(&self) {
        tch::no_grad(|| {
            for s in &self.storage {
                let _ = s.shallow_clone().zero_();
            }
        });
    }

    /// New per-bucket buffers (zeros) shaped like the parameter buckets (optimizer state).
    pub fn zeros_like_buckets(&self) -> Vec<Tensor> {
        self.data.iter().map(Tensor::zeros_like).collect()
    }

    /// Per-parameter views (name, tensor of the parameter's shape) of per-bucket `buffers`
    /// laid out like [`buckets`](Self::buckets): how flat state is named in checkpoints.
    pub fn views(&self, buffers: &[Tensor]) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .zip(&self.shapes)
            .zip(&self.places)
            .map(|((name, shape), place)| {
                let n: i64 = shape.iter().product();
                let v = buffers[place.bucket]
                    .narrow(0, place.offset, n)
                    .view(shape.as_slice());
                (name.clone(), v)
            })
            .collect()
    }

    /// Checks that every parameter and gradient still lies in its buffer (a host-side check of
    /// addresses: nothing waits for the device). Something that replaced one (`set_data`, a
    /// gradient set to None) would otherwise be trained on a copy the optimizer never sees.
    pub fn check(&self) -> Result<(), FlatError> {
        for ((p, name), (data, grad)) in self.params.iter().zip(&self.names).zip(&self.addresses) {
            if p.data_ptr() as usize != *data {
                return Err(FlatError::Detached {
                    what: "data",
                    name: name.clone(),
                });
            }
            let g = p.grad();
            if !g.defined() || g.data_ptr() as usize != *grad {
                return Err(FlatError::Detached {
                    what: "gradient",
                    name: name.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn leaf(shape: &[i64], value: f64) -> Tensor {
        Tensor::full(shape, value, (Kind::Float, Device::Cpu)).set_requires_grad(true)
    }

    /// Three parameters, buckets of 10 elements: [a (6), b (2)], [c (12)].
    fn three() -> Flat {
        let params = vec![
            ("c".to_string(), leaf(&[3, 4], 3.0)),
            ("a".to_string(), leaf(&[2, 3], 1.0)),
            ("b".to_string(), leaf(&[2], 2.0)),
        ];
        Flat::new(params, 10).unwrap()
    }

    #[test]
    fn parameters_and_gradients_live_in_the_buckets() {
        let flat = three();
        assert_eq!(flat.names(), ["a", "b", "c"]);
        assert_eq!(flat.groups(), [0..2, 2..3]);
        assert_eq!(flat.buckets()[0].size(), [8]);
        // The values moved with the parameters; the last gradient buffer has the stop slot.
        assert_eq!(
            Vec::<f32>::try_from(&flat.buckets()[0]).unwrap(),
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]
        );
        assert_eq!(flat.reduce_buffers()[1].size(), [13]);
        assert_eq!(flat.grads()[1].size(), [12]);
        // The backward pass writes into the gradient buffers ...
        let loss = flat
            .params()
            .iter()
            .enumerate()
            .map(|(i, p)| p.sum(Kind::Float) * (i + 1) as f64)
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        loss.backward();
        flat.check().unwrap();
        let g0 = Vec::<f32>::try_from(&flat.grads()[0]).unwrap();
        assert_eq!(g0, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0]);
        // ... and an update of a bucket is an update of the parameters.
        tch::no_grad(|| {
            let _ = flat.buckets()[1].shallow_clone().g_add_scalar_(1.0);
        });
        assert_eq!(f64::try_from(flat.params()[2].get(0).get(0)).unwrap(), 4.0);
        flat.zero_grad();
        assert_eq!(
            f64::try_from(flat.params()[2].grad().abs().sum(Kind::Float)).unwrap(),
            0.0
        );
        let views = flat.views(flat.buckets());
        assert_eq!(views[2].0, "c");
        assert_eq!(views[2].1.size(), [3, 4]);
        assert_eq!(
            flat.share().buckets()[1].data_ptr(),
            flat.buckets()[1].data_ptr()
        );
    }

    #[test]
    fn a_replaced_parameter_or_gradient_is_caught() {
        let flat = three();
        flat.params()[1]
            .shallow_clone()
            .set_data(&Tensor::zeros([2], (Kind::Float, Device::Cpu)));
        assert_eq!(
            flat.check().unwrap_err().to_string(),
            "the data of `b` no longer lies in its flat buffer (replaced by a new tensor): its \
             updates would be lost"
        );
        let flat = three();
        flat.params()[2]
            .grad()
            .set_data(&Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)));
        assert!(matches!(
            flat.check(),
            Err(FlatError::Detached {
                what: "gradient",
                ..
            })
        ));
    }

    #[test]
    fn mixed_or_frozen_parameters_are_refused_and_none_still_has_a_stop_slot() {
        let mixed = vec![
            ("a".to_string(), leaf(&[2], 1.0)),
            (
                "b".to_string(),
                Tensor::ones([2], (Kind::Double, Device::Cpu)).set_requires_grad(true),
            ),
        ];
        assert!(matches!(
            Flat::new(mixed, 10),
            Err(FlatError::Mixed { ref name, .. }) if name == "b"
        ));
        let frozen = vec![(
            "w".to_string(),
            Tensor::ones([2], (Kind::Float, Device::Cpu)),
        )];
        assert!(matches!(
            Flat::new(frozen, 10),
            Err(FlatError::NotTrained(_))
        ));
        let none = Flat::new(Vec::new(), 10).unwrap();
        assert!(none.buckets().is_empty());
        assert_eq!(none.reduce_buffers().len(), 1);
        assert_eq!(none.reduce_buffers()[0].size(), [1]);
    }

    #[test]
    fn one_bucket_per_tensor_when_buckets_are_smaller_than_any() {
        assert_eq!(buckets(&[5, 1, 7], 1), [0..1, 1..2, 2..3]);
        assert_eq!(buckets(&[5, 1, 7], 6), [0..2, 2..3]);
        assert_eq!(buckets(&[], 6), Vec::<Range<usize>>::new());
        assert_eq!(bucket_elements(1.0), 262_144);
        assert_eq!(bucket_elements(1e-12), 1);
    }
}
