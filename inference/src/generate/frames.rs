//! Frames in and out of generation, one at a time: the reference frames in the order the output
//! needs them, the model's square input cut from each (the face crop and its mouth mask, or the
//! whole frame), the generated square put back into the full frame, and where finished frames
//! go (an mp4 encoder, or memory for tests).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use syncdiff_dataprep::face::{feather, mouth_mask, paste_back, CropTransform};
use syncdiff_dataprep::pipeline::{frames_to_tensors, mask_pixels};
use syncdiff_dataprep::video::{AudioSource, FrameReader, FrameWriter};
use tch::{Device, Kind, Tensor};

use super::clip::{check_output, Prepared, FPS};
use super::GenerateError;

/// Where a clip's finished frames go, in order (full-size RGB24).
pub trait FrameSink {
    /// Takes the next frame.
    fn push(&mut self, rgb: &[u8]) -> Result<(), GenerateError>;
}

/// Keeps the frames in memory (tests, benchmarks).
#[derive(Debug, Default)]
pub struct Collect {
    /// Frames, each `width * height * 3` bytes.
    pub frames: Vec<Vec<u8>>,
}

impl FrameSink for Collect {
    fn push(&mut self, rgb: &[u8]) -> Result<(), GenerateError> {
        self.frames.push(rgb.to_vec());
        Ok(())
    }
}

/// Encodes frames into the job's mp4 as they come, with the driving audio's own track. Written
/// under a temporary name and renamed by [`Mp4Sink::finish`]: an interrupted or failed clip
/// never leaves a file that looks finished.
#[derive(Debug)]
pub struct Mp4Sink {
    writer: FrameWriter,
    partial: PathBuf,
    out: PathBuf,
}

impl Mp4Sink {
    /// Starts the encoder for a prepared job.
    pub fn create(p: &Prepared) -> Result<Self, GenerateError> {
        let (target, partial) = check_output(&p.job.out)?;
        let writer = FrameWriter::create(
            &partial,
            p.width,
            p.height,
            FPS,
            Some(AudioSource::File(&p.job.audio)),
        )?;
        Ok(Self {
            writer,
            partial,
            out: target,
        })
    }

    /// Finishes the file and gives it its name.
    pub fn finish(self) -> Result<(), GenerateError> {
        self.writer.finish()?;
        std::fs::rename(&self.partial, &self.out).map_err(|e| GenerateError::Input {
            path: self.out.clone(),
            message: e.to_string(),
        })
    }
}

impl FrameSink for Mp4Sink {
    fn push(&mut self, rgb: &[u8]) -> Result<(), GenerateError> {
        Ok(self.writer.push(rgb)?)
    }
}

/// The reference frames of one clip in ping-pong order, decoded once, front to back. When the
/// audio outlasts the video, each frame is also written to an anonymous scratch file as it is
/// decoded, and the way back reads it from there: memory holds one frame whatever the length.
pub(crate) struct Reference {
    reader: FrameReader,
    spill: Option<File>,
    decoded: usize,
    path: PathBuf,
}

impl Reference {
    /// Starts decoding the clip's reference (at the model's size in whole-frame mode).
    pub(crate) fn open(p: &Prepared) -> Result<Self, GenerateError> {
        let size = p.whole_frame().then_some(p.resolution);
        let reader = FrameReader::open(&p.job.video, p.width, p.height, p.resample(), size)?;
        let spill = if p.frames > p.available {
            Some(tempfile::tempfile().map_err(|e| GenerateError::Input {
                path: std::env::temp_dir(),
                message: format!("cannot create a scratch file for the reference frames: {e}"),
            })?)
        } else {
            None
        };
        Ok(Self {
            reader,
            spill,
            decoded: 0,
            path: p.job.video.clone(),
        })
    }

    /// Bytes of one frame.
    pub(crate) fn frame_len(&self) -> usize {
        self.reader.frame_len()
    }

    /// Reads frame `r` into `buf`: the next frame of the decoder, or one already decoded.
    pub(crate) fn get(&mut self, r: usize, buf: &mut [u8]) -> Result<(), GenerateError> {
        let fail = |path: &PathBuf, message: String| GenerateError::Input {
            path: path.clone(),
            message,
        };
        if r == self.decoded {
            if !self.reader.next_frame(buf)? {
                return Err(fail(
                    &self.path,
                    format!("the video ended at frame {r} on the second reading"),
                ));
            }
            self.decoded += 1;
            if let Some(f) = self.spill.as_mut() {
                f.write_all(buf)
                    .map_err(|e| fail(&self.path, format!("scratch file: {e}")))?;
            }
            return Ok(());
        }
        let len = buf.len() as u64;
        match self.spill.as_mut() {
            Some(f) if r < self.decoded => {
                let end = f.stream_position().ok();
                f.seek(SeekFrom::Start(r as u64 * len))
                    .and_then(|_| f.read_exact(buf))
                    .and_then(|()| match end {
                        Some(e) => f.seek(SeekFrom::Start(e)).map(|_| ()),
                        None => Ok(()),
                    })
                    .map_err(|e| fail(&self.path, format!("scratch file: {e}")))
            }
            _ => Err(fail(
                &self.path,
                format!(
                    "frame {r} requested out of order ({} decoded)",
                    self.decoded
                ),
            )),
        }
    }
}

/// Side of the mask's erosion and of its blur, in crop pixels: the generated mouth fades into
/// the original face over a few pixels instead of ending at a hard edge.
pub(crate) fn feather_px(size: u32) -> (usize, usize) {
    ((size as usize / 32).max(1), (size as usize / 20).max(1))
}

/// One reference frame made into the model's input.
pub(crate) struct Framed {
    /// The full frame (kept to paste the generated face into).
    pub frame: Vec<u8>,
    /// The crop and its mask (face mode); `None`: the frame is the model's input itself.
    pub crop: Option<(CropTransform, Vec<bool>)>,
    /// The model's input (3, S, S) in [-1, 1].
    pub x: Tensor,
    /// The masked input.
    pub masked: Tensor,
}

impl Prepared {
    /// Where reference frame `r`'s face is cut from and which of the crop's pixels are masked
    /// (`crop_size^2`, row-major): `None` in whole-frame mode or when the frame has no face.
    pub fn face_crop(&self, r: usize) -> Option<(CropTransform, Vec<bool>)> {
        let face = self.faces.as_ref()?.get(r)?.as_ref()?;
        let crop = CropTransform::new(
            &self.face,
            &face.rect,
            self.width,
            self.height,
            self.resolution,
        );
        let mask = mouth_mask(
            &self.face,
            self.mask_fraction,
            &crop,
            &face.rect,
            face.landmarks.as_ref(),
        );
        Some((crop, mask))
    }
}

/// Frame `r` of `p` (already read into `frame`) as model input; `Err(frame)`: no face in it.
pub(crate) fn frame_input(p: &Prepared, r: usize, frame: Vec<u8>) -> Result<Framed, Vec<u8>> {
    let tensors = |rgb: &[u8]| {
        let (x, masked) = frames_to_tensors(rgb, 1, p.resolution, p.mask_fraction, Device::Cpu);
        (x.get(0), masked.get(0))
    };
    if p.whole_frame() {
        // As ingest masks whole frames: the lower `mask_fraction` rows.
        let (x, masked) = tensors(&frame);
        return Ok(Framed {
            frame,
            crop: None,
            x,
            masked,
        });
    }
    let Some((crop, mask)) = p.face_crop(r) else {
        return Err(frame);
    };
    let (x, _) = tensors(&crop.warp(&frame, p.width, p.height));
    let masked = mask_pixels(&x.unsqueeze(0), &mask).get(0);
    Ok(Framed {
        frame,
        crop: Some((crop, mask)),
        x,
        masked,
    })
}

/// The output frame: the generated image (3, S, S) in [-1, 1] put back into the reference frame
/// through the feathered mask (face mode; pixels outside the mask stay the input's exactly), or
/// resized to the reference's size (whole-frame mode).
pub(crate) fn output_frame(
    p: &Prepared,
    framed: Framed,
    image: &Tensor,
) -> Result<Vec<u8>, GenerateError> {
    let bytes = |t: Tensor| {
        Vec::<u8>::try_from(t.flatten(0, -1)).map_err(|e| GenerateError::Model(e.to_string()))
    };
    let to_u8 = |x: Tensor| {
        ((x.clamp(-1.0, 1.0) + 1.0) * 127.5)
            .round()
            .to_kind(Kind::Uint8)
            .permute([1, 2, 0])
            .contiguous()
    };
    let image = image.to_kind(Kind::Float);
    match framed.crop {
        None => {
            let (w, h) = (i64::from(p.width), i64::from(p.height));
            let x = if image.size()[1..] == [h, w] {
                image
            } else {
                image
                    .unsqueeze(0)
                    .upsample_bilinear2d([h, w], false, None, None)
                    .squeeze_dim(0)
            };
            bytes(tch::no_grad(|| to_u8(x)))
        }
        Some((crop, mask)) => {
            let generated = bytes(tch::no_grad(|| to_u8(image)))?;
            let (erode, blur) = feather_px(crop.size);
            let alpha = feather(&mask, crop.size as usize, erode, blur);
            let mut frame = framed.frame;
            paste_back(&mut frame, p.width, p.height, &crop, &generated, &alpha);
            Ok(frame)
        }
    }
}
