//! Image grids for TensorBoard: tensors to an RGB grid, and a small PNG encoder (stored deflate
//! blocks: no compression, which is fine for the few small grids a run logs).

use tch::{Kind, Tensor};

/// An 8-bit RGB image, rows top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

/// Lays out rows of images (each (N, 3, H, W) in [-1, 1], equal N, H, W) as a grid: one row per
/// tensor, one column per image, with a 2-pixel gap.
pub fn grid(rows: &[&Tensor]) -> Option<Rgb> {
    const GAP: i64 = 2;
    let (n, c, h, w) = rows.first()?.size4().ok()?;
    if c != 3 || rows.iter().any(|r| r.size() != [n, c, h, w]) {
        return None;
    }
    let r = rows.len() as i64;
    let (gw, gh) = (n * (w + GAP) - GAP, r * (h + GAP) - GAP);
    let mut data = vec![255u8; (gw * gh * 3) as usize];
    for (ri, row) in rows.iter().enumerate() {
        // (N, H, W, 3) bytes.
        let bytes = ((row.to_device(tch::Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5)
            .clamp(0.0, 255.0)
            .round()
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous();
        let v: Vec<u8> = Vec::try_from(bytes.flatten(0, -1)).ok()?;
        for i in 0..n {
            for y in 0..h {
                let src = (((i * h + y) * w) * 3) as usize;
                let (gx, gy) = (i * (w + GAP), ri as i64 * (h + GAP) + y);
                let dst = ((gy * gw + gx) * 3) as usize;
                data[dst..dst + (w * 3) as usize].copy_from_slice(&v[src..src + (w * 3) as usize]);
            }
        }
    }
    Some(Rgb {
        width: gw as u32,
        height: gh as u32,
        data,
    })
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (n, t) in table.iter_mut().enumerate() {
        let mut c = n as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

fn chunk(kind: &[u8; 4], body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Encodes `img` as PNG (8-bit RGB, no filtering, stored deflate blocks).
pub fn png(img: &Rgb) -> Vec<u8> {
    let row = img.width as usize * 3;
    let mut raw = Vec::with_capacity((row + 1) * img.height as usize);
    for y in 0..img.height as usize {
        raw.push(0); // filter: none
        raw.extend_from_slice(&img.data[y * row..(y + 1) * row]);
    }
    // zlib stream: header, stored blocks of at most 65535 bytes, Adler-32 (big-endian).
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        let len = b.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(b);
    }
    if blocks.is_empty() {
        z.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&img.width.to_be_bytes());
    ihdr.extend_from_slice(&img.height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, no filter, no interlace
    chunk(b"IHDR", &ihdr, &mut out);
    chunk(b"IDAT", &z, &mut out);
    chunk(b"IEND", &[], &mut out);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn grid_places_rows_and_columns() {
        let a = Tensor::full([2, 3, 4, 5], -1.0, (Kind::Float, tch::Device::Cpu));
        let b = Tensor::full([2, 3, 4, 5], 1.0, (Kind::Float, tch::Device::Cpu));
        let g = grid(&[&a, &b]).unwrap();
        assert_eq!((g.width, g.height), (2 * 5 + 2, 2 * 4 + 2));
        let px = |x: u32, y: u32| g.data[((y * g.width + x) * 3) as usize];
        assert_eq!(px(0, 0), 0); // row 0: black
        assert_eq!(px(5, 0), 255); // gap: white
        assert_eq!(px(7, 6), 255); // row 1: white
        assert!(grid(&[&a, &b.narrow(0, 0, 1)]).is_none());
    }
}
