//! Streaming safetensors encoding for checkpoints: the header is built from the tensors' shapes,
//! the data is borrowed from the (contiguous, host) tensors themselves and handed to the upload
//! chunk by chunk, so a save makes no serialised copy and no staging file. Non-finite floats are
//! found in the same pass that exposes the bytes: such weights are never saved.

use tch::{Kind, Tensor};

/// Named tensors laid out as one safetensors file.
#[derive(Debug)]
pub struct Encoded {
    header: Vec<u8>,
    /// Contiguous CPU tensors in data order, with their byte lengths.
    parts: Vec<(Tensor, usize)>,
}

fn dtype(kind: Kind) -> Option<(&'static str, usize)> {
    Some(match kind {
        Kind::Float => ("F32", 4),
        Kind::Double => ("F64", 8),
        Kind::Half => ("F16", 2),
        Kind::BFloat16 => ("BF16", 2),
        Kind::Int64 => ("I64", 8),
        Kind::Int => ("I32", 4),
        Kind::Int16 => ("I16", 2),
        Kind::Int8 => ("I8", 1),
        Kind::Uint8 => ("U8", 1),
        Kind::Bool => ("BOOL", 1),
        _ => return None,
    })
}

/// The bytes of a contiguous CPU tensor.
fn bytes(t: &Tensor, len: usize) -> &[u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: `t` is a contiguous CPU tensor (made so in `encode`) of exactly `len` bytes,
    // owned by the `Encoded` that outlives the returned borrow, and nothing writes to it.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) }
}

/// No NaN or Inf: the exponent bits are not all ones. Branch-free folds, so the scans vectorise
/// (several GB/s; a save hashes every byte anyway).
fn all_finite(t: &Tensor, len: usize) -> bool {
    let b = bytes(t, len);
    match t.kind() {
        Kind::Float => b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .fold(true, |ok, x| ok & (x & 0x7f80_0000 != 0x7f80_0000)),
        Kind::Double => b
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .fold(true, |ok, x| {
                ok & (x & 0x7ff0_0000_0000_0000 != 0x7ff0_0000_0000_0000)
            }),
        Kind::Half => b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .fold(true, |ok, x| ok & (x & 0x7c00 != 0x7c00)),
        Kind::BFloat16 => b
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .fold(true, |ok, x| ok & (x & 0x7f80 != 0x7f80)),
        _ => true,
    }
}

/// Lays out `tensors` (in the given order); fails naming the first tensor with a NaN or Inf, or
/// with a dtype safetensors cannot hold.
pub fn encode(tensors: &[(String, Tensor)]) -> Result<Encoded, String> {
    let mut header = serde_json::Map::new();
    let mut parts = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for (name, t) in tensors {
        let (code, size) =
            dtype(t.kind()).ok_or_else(|| format!("{name}: dtype {:?}", t.kind()))?;
        let c = t.to_device(tch::Device::Cpu).contiguous();
        let len = c.numel() * size;
        if !all_finite(&c, len) {
            return Err(format!("{name} holds NaN or Inf"));
        }
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": code,
                "shape": c.size(),
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
        parts.push((c, len));
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // The data starts 8-byte aligned: pad the header with spaces.
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut head = (json.len() as u64).to_le_bytes().to_vec();
    head.extend_from_slice(&json);
    Ok(Encoded {
        header: head,
        parts,
    })
}

impl Encoded {
    /// The file as consecutive byte slices (header, then each tensor's data).
    pub fn chunks(&self) -> Vec<&[u8]> {
        std::iter::once(self.header.as_slice())
            .chain(self.parts.iter().map(|(t, n)| bytes(t, *n)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tch_reads_what_we_write_and_nan_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3]);
        let b = Tensor::from_slice(&[7i64, -1]);
        let c = Tensor::ones([3], (Kind::Half, tch::Device::Cpu)).transpose(0, 0);
        let e = encode(&[
            ("a".into(), a.t_copy()),
            ("b".into(), b.shallow_clone()),
            ("c".into(), c),
        ])
        .unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, e.chunks().concat()).unwrap();
        let total: usize = e.chunks().iter().map(|c| c.len()).sum();
        assert_eq!(total as u64, std::fs::metadata(&path).unwrap().len());
        let back: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
            .unwrap()
            .into_iter()
            .collect();
        assert!(back["a"].equal(&a.t_copy()));
        assert!(back["b"].equal(&b));
        assert_eq!(back["c"].kind(), Kind::Half);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let t = Tensor::from_slice(&[1.0f32, bad, f32::MAX, -0.0]);
            assert_eq!(
                encode(&[("w".into(), t.shallow_clone())]).unwrap_err(),
                "w holds NaN or Inf"
            );
            let h = t.to_kind(Kind::Half);
            assert!(encode(&[("h".into(), h)]).is_err());
            let d = t.to_kind(Kind::Double);
            assert!(encode(&[("d".into(), d)]).is_err());
            let bf = t.to_kind(Kind::BFloat16);
            assert!(encode(&[("b".into(), bf)]).is_err());
        }
        let fine = Tensor::from_slice(&[1.0f32, f32::MAX, f32::MIN_POSITIVE, -0.0, 1e-45]);
        assert!(encode(&[("w".into(), fine)]).is_ok());
    }
}
