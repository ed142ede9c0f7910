//! Event files read back with PyPI tensorboard's EventAccumulator (run live).
#![allow(clippy::unwrap_used)]

use crate::common;

use common::python;

use syncdiff_trainer::log::{grid, png, EventWriter};
use tch::{Device, Kind, Tensor};

#[test]
fn tensorboard_reads_our_scalars() {
    let _torch = common::torch();
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    for step in 0..5 {
        w.scalar("train/loss", 1.0 / (step + 1) as f32, step)
            .unwrap();
        w.scalar("train/lr", 1e-4, step).unwrap();
    }
    w.flush().unwrap();
    let script = "import sys\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\nacc = EventAccumulator(sys.argv[1]); acc.Reload()\nfor tag in sorted(acc.Tags()['scalars']):\n    print(tag, ' '.join(f'{e.step}:{e.value:.6g}' for e in acc.Scalars(tag)))\n";
    let o = python()
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("train/loss 0:1 1:0.5 2:0.333333 3:0.25 4:0.2"),
        "{out}"
    );
    assert!(
        out.contains("train/lr 0:0.0001 1:0.0001 2:0.0001 3:0.0001 4:0.0001"),
        "{out}"
    );
}

#[test]
fn tensorboard_reads_our_image_grid_pixel_for_pixel() {
    let _torch = common::torch();
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(3);
    let a = Tensor::rand([3, 3, 6, 5], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let b = Tensor::rand([3, 3, 6, 5], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let g = grid(&[&a, &b]).unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    w.image("val/frames", &png(&g).unwrap(), g.width, g.height, 7)
        .unwrap();
    w.flush().unwrap();
    let script = "import sys, io\nimport numpy as np\nfrom PIL import Image\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\nacc = EventAccumulator(sys.argv[1], size_guidance={'images': 0}); acc.Reload()\ne = acc.Images('val/frames')[0]\nim = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert('RGB'))\nprint(e.step, e.width, e.height, im.shape[1], im.shape[0])\nsys.stdout.write(' '.join(str(int(x)) for x in im.reshape(-1)))\n";
    let o = python()
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let mut lines = out.lines();
    let dims = format!("7 {0} {1} {0} {1}", g.width, g.height);
    assert_eq!(lines.next().unwrap(), dims);
    let pixels: Vec<u8> = lines
        .next()
        .unwrap()
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(pixels, g.data);
}
