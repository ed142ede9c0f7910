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
    /// Position of each target in its context (host values: the audio path slices with them).
    pub offsets: Vec<i64>,
    /// Diffusion timesteps (B,) int64.
    pub timesteps: Tensor,
    /// Noise (B, C, h, w) from each sample's own seed.
    pub noise: Tensor,
    /// Each sample's seed (noise and layerdrop decisions derive from it).
    pub seeds: Vec<u64>,
}

fn extend_f32(out: &mut Vec<f32>, v: &[half::f16]) {
    out.extend(v.iter().map(|x| x.to_f32()));
}

impl Batch {
    /// Reads the samples `specs` (NP previous frames, audio contexts of at most `context` frames).
    /// Each field is gathered into one buffer and becomes one tensor.
    pub fn read(
        ds: &Dataset,
        specs: &[SampleSpec],
        previous: u32,
        context: u64,
    ) -> Result<Self, StoreError> {
        let [c, h, w] = ds.manifest().meta.latent_shape.map(|x| x as i64);
        let (b, np, frame) = (
            specs.len() as i64,
            i64::from(previous),
            (c * h * w) as usize,
        );
        let cap = specs.len() * frame;
        let (mut z0, mut masked, mut identity, mut noise) = (
            Vec::with_capacity(cap),
            Vec::with_capacity(cap),
            Vec::with_capacity(cap),
            Vec::with_capacity(cap),
        );
        let mut prev = Vec::with_capacity(cap * previous as usize);
        let (mut mel, mut offsets) = (Vec::with_capacity(specs.len()), Vec::new());
        for s in specs {
            let x = ds.sample(&SampleRequest {
                clip: s.clip,
                t: s.t,
                identity: s.identity,
                previous,
                context_frames: context,
            })?;
            extend_f32(&mut z0, &x.target);
            extend_f32(&mut masked, &x.masked);
            extend_f32(&mut identity, &x.identity);
            for p in &x.previous {
                extend_f32(&mut prev, p);
            }
            mel.push(Tensor::from_slice(&x.mel).view([x.context_len as i64, 104]));
            offsets.push(x.offset as i64);
            noise.extend(gaussian(s.noise_seed, frame));
        }
        let timesteps: Vec<i64> = specs.iter().map(|s| s.timestep as i64).collect();
        let frames = |v: &[f32]| Tensor::from_slice(v).view([b, c, h, w]);
        Ok(Self {
            z0: frames(&z0),
            masked: frames(&masked),
            identity: frames(&identity),
            previous: if prev.is_empty() {
                Tensor::zeros([b, 0, c, h, w], (Kind::Float, Device::Cpu))
            } else {
                Tensor::from_slice(&prev).view([b, np, c, h, w])
            },
            mel,
            offsets,
            timesteps: Tensor::from_slice(&timesteps),
            noise: frames(&noise),
            seeds: specs.iter().map(|s| s.noise_seed).collect(),
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
            offsets: other.offsets.clone(),
            timesteps: self.timesteps.shallow_clone(),
            noise: self.noise.shallow_clone(),
            seeds: self.seeds.clone(),
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
            offsets: self.offsets.clone(),
            timesteps: self.timesteps.to_device(device),
            noise: self.noise.to_device(device),
            seeds: self.seeds.clone(),
        }
    }
}
