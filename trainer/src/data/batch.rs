//! Reading a micro-batch of samples from a data set into tensors.

use syncdiff_dataset::shards::{Dataset, SampleRequest, StoreError, MEL_DIM};
use tch::{Device, Kind, Tensor};

use super::SampleSpec;
use syncdiff_runtime::rng::gaussian;

/// A micro-batch on the host (B samples, latents C x h x w). Read for the CPU, the frames are
/// float32; read for a CUDA device ([`Batch::read_for`]), they stay float16 as stored, in
/// pinned memory, and [`Batch::to`] copies them without blocking and widens them there.
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

impl Batch {
    /// Reads the samples `specs` (NP previous frames, audio contexts of at most `context` frames)
    /// for training on the CPU. Each field is gathered into one buffer and becomes one tensor.
    pub fn read(
        ds: &Dataset,
        specs: &[SampleSpec],
        previous: u32,
        context: u64,
    ) -> Result<Self, StoreError> {
        Self::read_for(ds, specs, previous, context, Device::Cpu)
    }

    /// [`read`](Self::read) for training on `device`: for the CPU the frames are widened to
    /// float32 here (on the loader's threads); for a GPU they stay float16 and every field is
    /// put in pinned memory (see [`to`](Self::to)).
    pub fn read_for(
        ds: &Dataset,
        specs: &[SampleSpec],
        previous: u32,
        context: u64,
        device: Device,
    ) -> Result<Self, StoreError> {
        let b = Self::read_stored(ds, specs, previous, context)?;
        Ok(if device.is_cuda() {
            b.map(|t| t.pin_memory(device))
        } else {
            b.map_frames(|t| t.to_kind(Kind::Float))
        })
    }

    /// The samples with the frames in float16 as stored, in ordinary host memory.
    pub fn read_stored(
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
            z0.extend_from_slice(&x.target);
            masked.extend_from_slice(&x.masked);
            identity.extend_from_slice(&x.identity);
            for p in &x.previous {
                prev.extend_from_slice(p);
            }
            mel.push(Tensor::from_slice(&x.mel).view([x.context_len as i64, MEL_DIM as i64]));
            offsets.push(x.offset as i64);
            noise.extend(gaussian(s.noise_seed, frame));
        }
        let timesteps: Vec<i64> = specs.iter().map(|s| s.timestep as i64).collect();
        let latents = |v: &[half::f16], shape: &[i64]| Tensor::from_slice(v).view(shape);
        let shape = [b, c, h, w];
        Ok(Self {
            z0: latents(&z0, &shape),
            masked: latents(&masked, &shape),
            identity: latents(&identity, &shape),
            previous: latents(&prev, &[b, np, c, h, w]),
            mel,
            offsets,
            timesteps: Tensor::from_slice(&timesteps),
            noise: Tensor::from_slice(&noise).view(shape),
            seeds: specs.iter().map(|s| s.noise_seed).collect(),
        })
    }

    /// Every tensor through `f`.
    fn map(self, f: impl Fn(Tensor) -> Tensor) -> Self {
        let b = self.map_frames(&f);
        Self {
            mel: b.mel.into_iter().map(&f).collect(),
            timesteps: f(b.timesteps),
            noise: f(b.noise),
            ..b
        }
    }

    /// The latent frames (target, masked, identity, previous) through `f`.
    fn map_frames(self, f: impl Fn(Tensor) -> Tensor) -> Self {
        Self {
            z0: f(self.z0),
            masked: f(self.masked),
            identity: f(self.identity),
            previous: f(self.previous),
            ..self
        }
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

    /// The batch on `device`, latents as float32. From pinned memory (a batch read for a GPU)
    /// the copies are asynchronous (non-blocking) and float16 is widened on the device; on the
    /// CPU a float32 batch is shared, not copied.
    pub fn to(&self, device: Device) -> Self {
        let move_as = |t: &Tensor, kind: Kind| {
            if t.device() == device && t.kind() == kind {
                t.shallow_clone()
            } else {
                t.to_device_(device, kind, t.is_pinned(device), false)
            }
        };
        let float = |t: &Tensor| move_as(t, Kind::Float);
        Self {
            z0: float(&self.z0),
            masked: float(&self.masked),
            identity: float(&self.identity),
            previous: float(&self.previous),
            mel: self.mel.iter().map(float).collect(),
            offsets: self.offsets.clone(),
            timesteps: move_as(&self.timesteps, Kind::Int64),
            noise: float(&self.noise),
            seeds: self.seeds.clone(),
        }
    }
}
