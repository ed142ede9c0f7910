//! Reading a micro-batch of samples from a data set into tensors.

use syncdiff_dataprep::store::{Dataset, SampleRequest, StoreError};
use tch::{Device, Kind, Tensor};

use super::{gaussian, SampleSpec};

/// A micro-batch on the CPU (B samples, latents C x h x w).
#[derive(Debug)]
pub struct Batch {
    /// Clean target latents (B, C, h, w).
    pub z0: Tensor,
    /// Masked target latents (B, C, h, w).
    pub masked: Tensor,
    /// Identity latents (B, C, h, w).
    pub identity: Tensor,
    /// Previous latents, oldest first (B, NP, C, h, w).
    pub previous: Tensor,
    /// Each sample's audio context (T_i, 104): contexts differ in length and are encoded one by
    /// one, so a sample's audio features never depend on the rest of its batch.
    pub mel: Vec<Tensor>,
    /// Position of each target in its context.
    pub offsets: Tensor,
    /// Diffusion timesteps (B,) int64.
    pub timesteps: Tensor,
    /// Noise (B, C, h, w) from each sample's own seed.
    pub noise: Tensor,
}

fn latent(v: &[half::f16], shape: [i64; 3]) -> Tensor {
    let f: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
    Tensor::from_slice(&f).view(shape)
}

impl Batch {
    /// Reads the samples `specs` (NP previous frames, audio contexts of at most `context` frames).
    pub fn read(
        ds: &Dataset,
        specs: &[SampleSpec],
        previous: u32,
        context: u64,
    ) -> Result<Self, StoreError> {
        let [c, h, w] = ds.manifest().meta.latent_shape.map(|x| x as i64);
        let shape = [c, h, w];
        let (mut z0, mut masked, mut identity, mut prev, mut mel, mut offsets, mut noise) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for s in specs {
            let x = ds.sample(&SampleRequest {
                clip: s.clip,
                t: s.t,
                identity: s.identity,
                previous,
                context_frames: context,
            })?;
            z0.push(latent(&x.target, shape));
            masked.push(latent(&x.masked, shape));
            identity.push(latent(&x.identity, shape));
            let p: Vec<Tensor> = x.previous.iter().map(|v| latent(v, shape)).collect();
            prev.push(if p.is_empty() {
                Tensor::zeros([0, c, h, w], (Kind::Float, Device::Cpu))
            } else {
                Tensor::stack(&p, 0)
            });
            mel.push(Tensor::from_slice(&x.mel).view([x.context_len as i64, 104]));
            offsets.push(x.offset as i64);
            noise.push(
                Tensor::from_slice(&gaussian(s.noise_seed, (c * h * w) as usize)).view(shape),
            );
        }
        let timesteps: Vec<i64> = specs.iter().map(|s| s.timestep as i64).collect();
        Ok(Self {
            z0: Tensor::stack(&z0, 0),
            masked: Tensor::stack(&masked, 0),
            identity: Tensor::stack(&identity, 0),
            previous: Tensor::stack(&prev, 0),
            mel,
            offsets: Tensor::from_slice(&offsets),
            timesteps: Tensor::from_slice(&timesteps),
            noise: Tensor::stack(&noise, 0),
        })
    }

    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.mel.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.mel.is_empty()
    }

    /// This batch's frames, timesteps and noise with the audio contexts of `other` (validation
    /// with another clip's audio: only the audio differs between the two losses).
    pub fn with_audio_of(&self, other: &Batch) -> Self {
        Self {
            z0: self.z0.shallow_clone(),
            masked: self.masked.shallow_clone(),
            identity: self.identity.shallow_clone(),
            previous: self.previous.shallow_clone(),
            mel: other.mel.iter().map(Tensor::shallow_clone).collect(),
            offsets: other.offsets.shallow_clone(),
            timesteps: self.timesteps.shallow_clone(),
            noise: self.noise.shallow_clone(),
        }
    }

    /// The batch on `device`.
    pub fn to(&self, device: Device) -> Self {
        Self {
            z0: self.z0.to_device(device),
            masked: self.masked.to_device(device),
            identity: self.identity.to_device(device),
            previous: self.previous.to_device(device),
            mel: self.mel.iter().map(|m| m.to_device(device)).collect(),
            offsets: self.offsets.to_device(device),
            timesteps: self.timesteps.to_device(device),
            noise: self.noise.to_device(device),
        }
    }
}
