//! Image grids for TensorBoard: tensors to an RGB grid, encoded as PNG (the `png` crate).

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

/// Encodes `img` as PNG (8-bit RGB).
pub fn png(img: &Rgb) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, img.width, img.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer
        .write_image_data(&img.data)
        .map_err(std::io::Error::other)?;
    writer.finish().map_err(std::io::Error::other)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn png_decodes_to_the_same_pixels() {
        let img = Rgb {
            width: 3,
            height: 2,
            data: (0..18).map(|i| (i * 14) as u8).collect(),
        };
        let bytes = png(&img).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[..info.buffer_size()], &img.data[..]);
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
