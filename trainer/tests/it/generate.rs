//! `syncdiff generate` end to end on a tiny trained checkpoint: a playable mp4 with the driving
//! audio and its duration, the identity kept in the first frame, `--list` batched and split over
//! `mpirun` ranks with the same result as one clip at a time, and clear errors for bad inputs.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use syncdiff_dataprep::video;

pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Trains the debug configuration for `steps` steps on one process and exports a bundle.
pub(crate) fn bundle(dir: &Path, steps: u32) -> PathBuf {
    bundle_with(dir, steps, &[])
}

/// [`bundle`] with extra `--set` overrides.
pub(crate) fn bundle_with(dir: &Path, steps: u32, sets: &[&str]) -> PathBuf {
    let ds = common::dataset();
    let ck = dir.join("ck");
    let o = Command::new(env!("CARGO_BIN_EXE_syncdiff-train"))
        .current_dir(common::repo())
        .args(["--config", "configs/debug.yaml"])
        .args(["--set", &format!("data.dataset={}", s(ds))])
        .args(["--set", &format!("checkpoint.url={}", s(&ck))])
        .args(["--set", &format!("log.dir={}", s(&dir.join("runs")))])
        .args(["--set", &format!("train.steps={steps}")])
        .args(["--set", &format!("checkpoint.interval={steps}")])
        .args(sets.iter().flat_map(|x| ["--set", x]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::text(&o).1);
    let out = dir.join("bundle");
    let o = syncdiff(&[
        "ckpt",
        "export",
        &format!("{}/step-{steps:09}", s(&ck)),
        "--out",
        &s(&out),
    ]);
    assert!(o.status.success(), "{}", common::text(&o).1);
    out
}

pub(crate) fn syncdiff(args: &[&str]) -> std::process::Output {
    Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
        .args(args)
        .output()
        .unwrap()
}

fn clip(root: &Path, id: &str) -> PathBuf {
    root.join("main").join(format!("{id}.mp4"))
}

/// Mean absolute difference of two RGB24 frames.
pub(crate) fn mad(a: &[u8], b: &[u8]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64
}

#[test]
fn generates_a_playable_lip_synced_mp4_that_keeps_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let model = bundle(dir.path(), 300);
    let root = common::synthetic();
    let (reference, drive) = (clip(root, "spk00/00001"), clip(root, "spk01/00002"));
    let out = dir.path().join("out/a.mp4");
    let o = syncdiff(&[
        "generate",
        "--checkpoint",
        &s(&model),
        "--video",
        &s(&reference),
        "--audio",
        &s(&drive),
        "--out",
        &s(&out),
    ]);
    let (stdout, stderr) = common::text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("1 clip(s), 25 frames"), "{stdout}");
    // ffprobe accepts it: H.264 video at the reference's size, AAC audio as long as the drive.
    let info = video::probe(&out).unwrap();
    let src = video::probe(&reference).unwrap();
    let drv = video::probe(&drive).unwrap();
    assert_eq!((info.width, info.height), (src.width, src.height));
    assert!((info.fps - 25.0).abs() < 1e-6);
    assert!(info.has_audio);
    assert!(
        (info.audio_seconds - drv.audio_seconds).abs() <= 0.05,
        "audio {} s vs driving {} s",
        info.audio_seconds,
        drv.audio_seconds
    );
    let frames = video::decode_frames(&out, info.width, info.height).unwrap();
    let size = (info.width * info.height * 3) as usize;
    assert_eq!(frames.len() / size, 25, "1 s of audio at 25 fps");
    // The first frame keeps the identity: it is far closer to the reference's first frame than
    // to the first frame of the speaker whose audio drives it.
    let ref0 = &video::decode_frames(&reference, src.width, src.height).unwrap()[..size];
    let other0 = &video::decode_frames(&drive, src.width, src.height).unwrap()[..size];
    let (own, other) = (mad(&frames[..size], ref0), mad(&frames[..size], other0));
    println!(
        "first frame: mean abs diff {own:.2} to the reference, {other:.2} to the other speaker"
    );
    assert!(own < 0.5 * other, "{own} vs {other}");
}

#[test]
fn a_list_is_batched_and_split_over_ranks_like_single_clips() {
    let dir = tempfile::tempdir().unwrap();
    let model = bundle(dir.path(), 20);
    let root = common::synthetic();
    let out = dir.path().join("out");
    let jobs = [
        ("spk00/00001", "spk01/00001", "x.mp4"),
        ("spk01/00001", "spk00/00002", "y.mp4"),
        ("spk00/00003", "spk00/00003", "z.mp4"),
    ];
    let list: String = jobs
        .iter()
        .map(|(v, a, o)| {
            format!(
                "{} {} {}\n",
                s(&clip(root, v)),
                s(&clip(root, a)),
                s(&out.join(o))
            )
        })
        .collect();
    let list_path = dir.path().join("pairs.txt");
    std::fs::write(&list_path, format!("# video audio out\n\n{list}")).unwrap();
    let o = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-n", "2"])
        .arg(syncdiff_devkit::workspace_bin("syncdiff"))
        .args([
            "generate",
            "--checkpoint",
            &s(&model),
            "--list",
            &s(&list_path),
        ])
        .args(["--batch", "2"])
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&o);
    assert!(o.status.success(), "{stderr}");
    // Rank 0 took lines 1 and 3 (one batch of 2), rank 1 line 2.
    assert!(stdout.contains("rank 0/2: 2 clip(s)"), "{stdout}");
    assert!(stdout.contains("rank 1/2: 1 clip(s)"), "{stdout}");
    // Each rank computed on its share of the node's cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = format!(" {} libtorch thread(s))", (cores / 2).max(1));
    assert_eq!(stdout.matches(&share).count(), 2, "{share}: {stdout}");
    // Each equals the clip generated alone (noise is keyed by the output name).
    for (v, a, name) in jobs {
        let single = dir.path().join("single").join(name);
        let o = syncdiff(&[
            "generate",
            "--checkpoint",
            &s(&model),
            "--video",
            &s(&clip(root, v)),
            "--audio",
            &s(&clip(root, a)),
            "--out",
            &s(&single),
            "--threads",
            "2",
        ]);
        let (so, se) = common::text(&o);
        assert!(o.status.success(), "{se}");
        assert!(so.contains(" 2 libtorch thread(s))"), "{so}");
        let a = video::decode_frames(&out.join(name), 160, 160).unwrap();
        let b = video::decode_frames(&single, 160, 160).unwrap();
        assert_eq!(a.len(), b.len());
        let size = 160 * 160 * 3;
        let per: Vec<String> = a
            .chunks(size)
            .zip(b.chunks(size))
            .map(|(x, y)| format!("{:.2}", mad(x, y)))
            .collect();
        println!("{name}: batched vs single, mean abs diff per frame {per:?}");
        // Same clip, same noise: only H.264 re-encoding of float results that differ in the
        // last bits (another batch, another thread count) separates them (a mixed-up clip or
        // audio would differ by tens of levels).
        let d = mad(&a, &b);
        assert!(
            d < 2.0,
            "{name}: batched vs single mean abs diff {d}: {per:?}"
        );
    }
    // --skip-existing does nothing the second time.
    let o = syncdiff(&[
        "generate",
        "--checkpoint",
        &s(&model),
        "--list",
        &s(&list_path),
        "--skip-existing",
    ]);
    let (stdout, stderr) = common::text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stdout.contains("0 clip(s), 0 frames") && stdout.contains("3 existing skipped"),
        "{stdout}"
    );
}

#[test]
fn a_clip_generated_in_a_batch_equals_the_clip_generated_alone() {
    let _torch = common::torch();
    use syncdiff_inference::generate::{
        self, Collect, FrameSink, GenerateOptions, Generator, Job, WeightChoice,
    };
    let dir = tempfile::tempdir().unwrap();
    // Trained with audio dropout, so that guidance can run too.
    let model = bundle_with(dir.path(), 20, &["train.audio_dropout=0.2"]);
    let root = common::synthetic();
    let g = Generator::load(&s(&model), WeightChoice::Ema, None, tch::Device::Cpu).unwrap();
    let job = |v: &str, a: &str, o: &str| Job {
        video: clip(root, v),
        audio: clip(root, a),
        out: dir.path().join(o),
    };
    let face = g.config.data.face.clone();
    let a = generate::prepare(&g, &job("spk00/00001", "spk01/00001", "a.mp4"), &face).unwrap();
    let b = generate::prepare(&g, &job("spk01/00002", "spk00/00003", "b.mp4"), &face).unwrap();
    // Frames kept in memory, as they are pushed before encoding.
    let run = |clips: &[&generate::Prepared],
               opts: &GenerateOptions,
               workers: Option<&mut [Generator]>| {
        let mut sinks: Vec<Collect> = clips.iter().map(|_| Collect::default()).collect();
        let mut s: Vec<&mut dyn FrameSink> =
            sinks.iter_mut().map(|c| c as &mut dyn FrameSink).collect();
        let mut times = generate::Timings::default();
        let parts = workers.as_ref().map_or(1, |w| w.len().min(clips.len()));
        let reports = match workers {
            None => generate::generate_batch(&g, clips, &mut s, opts, |_| {}, &mut times),
            Some(w) => {
                generate::generate_batch_parallel(w, clips, &mut s, opts, |_| {}, &mut times)
            }
        }
        .unwrap();
        for r in reports {
            assert_eq!(r.unwrap().passed_through, 0);
        }
        // One frame step per frame of the longest clip, one model call per worker each; every
        // phase ran, and the named phases of one model fit in the wall time.
        let longest = clips.iter().map(|p| p.frames).max().unwrap();
        assert_eq!(
            (times.steps, times.calls),
            (longest, longest * parts),
            "{times}"
        );
        for (name, d) in times.phases() {
            assert!(d > std::time::Duration::ZERO, "{name}: {times}");
        }
        if parts == 1 {
            let named: std::time::Duration = times.phases().iter().map(|(_, d)| *d).sum();
            assert!(named <= times.total, "{times}");
        }
        sinks
            .into_iter()
            .map(|c| c.frames.concat())
            .collect::<Vec<Vec<u8>>>()
    };
    let max_diff = |x: &[u8], y: &[u8]| {
        assert_eq!(x.len(), y.len());
        x.iter()
            .zip(y)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap_or(0)
    };
    use syncdiff_model::config::SamplerKind;
    for (sampler, eta, guidance) in [
        (SamplerKind::Ddim, 0.0, 1.0),
        (SamplerKind::Ddim, 0.5, 1.0),
        (SamplerKind::DpmPp2m, 0.0, 1.0),
        (SamplerKind::DpmPp2mKarras, 0.0, 1.0),
        (SamplerKind::Ddim, 0.0, 2.0),
    ] {
        let opts = GenerateOptions {
            sampler,
            steps: 5,
            eta,
            inpaint: eta > 0.0,
            guidance,
            final_x0: guidance > 1.0,
            seed: 7,
            precision: Default::default(),
        };
        let both = run(&[&a, &b], &opts, None);
        let alone = run(&[&b], &opts, None);
        // 25 frames at the reference's 160x160.
        assert_eq!(alone[0].len(), 25 * 160 * 160 * 3);
        // Float results within ~1e-5 of each other: at most one level after rounding.
        let diff = max_diff(&both[1], &alone[0]);
        println!(
            "{sampler:?} eta {eta} guidance {guidance}: max abs difference {diff} levels (of 255)"
        );
        assert!(diff <= 1, "{sampler:?} eta {eta}: {diff}");
        // Split over two worker models (`--workers 2`): the same result.
        let mut workers: Vec<Generator> = (0..2)
            .map(|_| {
                Generator::load(&s(&model), WeightChoice::Ema, None, tch::Device::Cpu).unwrap()
            })
            .collect();
        let split = run(&[&a, &b], &opts, Some(&mut workers));
        let diff = max_diff(&split[1], &alone[0]);
        println!("{sampler:?} eta {eta}: 2 workers, max abs difference {diff} levels");
        assert!(diff <= 1, "eta {eta}, 2 workers: {diff}");
        // Another seed gives another sample.
        let other = GenerateOptions { seed: 8, ..opts };
        let reseeded = run(&[&b], &other, None);
        assert!(mad(&reseeded[0], &alone[0]) > 0.5);
    }
    // sample.precision: bf16 autocast in the autoencoder and the denoiser moves the frames a
    // little (bf16 keeps 8 bits of mantissa); on worker threads too (autocast is thread local,
    // so each worker opens its own region: without it the split run would equal fp32's).
    let fp32 = GenerateOptions {
        sampler: SamplerKind::Ddim,
        steps: 5,
        eta: 0.0,
        inpaint: false,
        guidance: 1.0,
        final_x0: false,
        seed: 7,
        precision: syncdiff_model::config::Precision::Fp32,
    };
    let bf16 = GenerateOptions {
        precision: syncdiff_model::config::Precision::Bf16,
        ..fp32
    };
    let (x32, x16) = (run(&[&b], &fp32, None), run(&[&b], &bf16, None));
    let d = mad(&x16[0], &x32[0]);
    let mut workers: Vec<Generator> = (0..2)
        .map(|_| Generator::load(&s(&model), WeightChoice::Ema, None, tch::Device::Cpu).unwrap())
        .collect();
    let split = run(&[&a, &b], &bf16, Some(&mut workers));
    let (to16, to32) = (mad(&split[1], &x16[0]), mad(&split[1], &x32[0]));
    println!(
        "bf16 vs fp32 generation: mean abs difference {d:.3} levels; 2 workers bf16: {to16:.3} \
         from bf16, {to32:.3} from fp32"
    );
    assert!(d > 0.0 && d < 4.0, "{d}");
    assert!(to16 < 0.1 * d, "{to16} vs {d}");
}

#[test]
fn bad_inputs_give_one_clear_error_each_and_the_other_clips_still_finish() {
    let dir = tempfile::tempdir().unwrap();
    let model = bundle(dir.path(), 2);
    let root = common::synthetic();
    let good = clip(root, "spk00/00001");
    let d = dir.path();
    // A grayscale and a 10-bit video, 20 ms of audio, garbage bytes.
    let run = |args: &[&str]| {
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-y"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::text(&o).1);
    };
    let lossless = |name: &str, pix_fmt: &str| {
        let path = d.join(name);
        run(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=25:duration=1",
            "-c:v",
            "ffv1",
            "-pix_fmt",
            pix_fmt,
            &s(&path),
        ]);
        path
    };
    let small = lossless("grey.mkv", "gray");
    let deep = lossless("deep.mkv", "yuv420p10le");
    let blip = d.join("blip.wav");
    run(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=300:sample_rate=16000:duration=0.02",
        &s(&blip),
    ]);
    let garbage = d.join("garbage.mp4");
    std::fs::write(&garbage, b"this is not a video").unwrap();
    let cases: [(&Path, &Path, &str); 5] = [
        (
            &small,
            &good,
            "grey.mkv: grayscale video (pixel format gray)",
        ),
        (
            &deep,
            &good,
            "deep.mkv: 10-bit video (pixel format yuv420p10le); convert it to 8 bits",
        ),
        (&good, &blip, "shorter than one video frame"),
        (
            &garbage,
            &good,
            "garbage.mp4: not a readable video file (ffprobe: ",
        ),
        (&good, &d.join("missing.wav"), "missing.wav: no such file"),
    ];
    for (v, a, expected) in cases {
        let o = syncdiff(&[
            "generate",
            "--checkpoint",
            &s(&model),
            "--video",
            &s(v),
            "--audio",
            &s(a),
            "--out",
            &s(&d.join("bad.mp4")),
        ]);
        let (_, stderr) = common::text(&o);
        assert!(!o.status.success(), "{expected}: succeeded");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!d.join("bad.mp4").exists());
    // A missing checkpoint.
    let o = syncdiff(&[
        "generate",
        "--checkpoint",
        &s(&d.join("nope")),
        "--video",
        &s(&good),
        "--audio",
        &s(&good),
        "--out",
        &s(&d.join("x.mp4")),
    ]);
    let (_, stderr) = common::text(&o);
    assert!(
        !o.status.success() && stderr.contains("nope: no such bundle directory"),
        "{stderr}"
    );
    // Guidance with a model trained without audio dropout.
    let o = syncdiff(&[
        "generate",
        "--checkpoint",
        &s(&model),
        "--video",
        &s(&good),
        "--audio",
        &s(&good),
        "--out",
        &s(&d.join("x.mp4")),
        "--guidance",
        "2",
    ]);
    let (_, stderr) = common::text(&o);
    assert!(
        !o.status.success()
            && stderr.contains("--guidance 2: this model was trained without audio dropout"),
        "{stderr}"
    );
    assert!(!d.join("x.mp4").exists());
    // In a list, a bad line is reported, the good one is written, and the exit status fails.
    let list = d.join("list.txt");
    std::fs::write(
        &list,
        format!(
            "{} {} {}\n{} {} {}\n",
            s(&small),
            s(&good),
            s(&d.join("o1.mp4")),
            s(&good),
            s(&good),
            s(&d.join("o2.mp4"))
        ),
    )
    .unwrap();
    let o = syncdiff(&["generate", "--checkpoint", &s(&model), "--list", &s(&list)]);
    let (_, stderr) = common::text(&o);
    assert!(!o.status.success());
    assert!(
        stderr.contains("1 clip(s) failed (first:") && stderr.contains("grey.mkv"),
        "{stderr}"
    );
    assert!(d.join("o2.mp4").is_file() && !d.join("o1.mp4").exists());
}

fn copy_bundle(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to.to_path_buf()
}

/// `ffprobe`'s sample rate and channel count of the first audio stream.
pub(crate) fn audio_format(path: &Path) -> (u32, u32) {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .args(["stream=sample_rate,channels", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let v: Vec<u32> = text.trim().split(',').map(|x| x.parse().unwrap()).collect();
    (v[0], v[1])
}

#[test]
fn damaged_bundles_non_finite_outputs_and_unwritable_outputs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = bundle(d, 2);
    let root = common::synthetic();
    let good = clip(root, "spk00/00001");
    let gen = |bundle: &Path, audio: &Path, out: &Path| {
        let o = syncdiff(&[
            "generate",
            "--checkpoint",
            &s(bundle),
            "--video",
            &s(&good),
            "--audio",
            &s(audio),
            "--out",
            &s(out),
            "--steps",
            "2",
        ]);
        let (_, err) = common::text(&o);
        assert!(!err.contains("panicked"), "{err}");
        (o.status.success(), err)
    };

    // Four bytes changed in the weights (before: an all-black video, exit 0), or one in the
    // header (before: "missing tensor audio.proj1.bias"): named as damaged.
    let weights_len = std::fs::metadata(model.join("weights.safetensors"))
        .unwrap()
        .len() as usize;
    for (name, range) in [("f", weights_len / 2..weights_len / 2 + 4), ("h", 20..21)] {
        let damaged = copy_bundle(&model, &d.join(name));
        let w = damaged.join("weights.safetensors");
        let mut bytes = std::fs::read(&w).unwrap();
        for b in &mut bytes[range] {
            *b ^= 0x81;
        }
        std::fs::write(&w, &bytes).unwrap();
        let (ok, err) = gen(&damaged, &good, &d.join(format!("{name}.mp4")));
        assert!(
            !ok && err.contains("weights.safetensors is damaged"),
            "{err}"
        );
    }
    // A directory without the bundle's hashes is not loaded unverified.
    let bare = copy_bundle(&model, &d.join("bare"));
    std::fs::remove_file(bare.join("bundle.json")).unwrap();
    let (ok, err) = gen(&bare, &good, &d.join("b.mp4"));
    assert!(!ok && err.contains("bundle.json"), "{err}");
    for f in ["f.mp4", "h.mp4", "b.mp4"] {
        assert!(!d.join(f).exists(), "{f}");
    }

    // Weights that make NaN (hashes consistent, so only the output can tell): the clip stops
    // with an error naming it, and no video is written.
    let nan = copy_bundle(&model, &d.join("nan"));
    let w = nan.join("weights.safetensors");
    let mut named = tch::Tensor::read_safetensors(&w).unwrap();
    let (_, t) = named
        .iter_mut()
        .find(|(k, _)| k == "unet.conv_in.weight")
        .unwrap();
    let _ = t.fill_(f64::NAN);
    tch::Tensor::write_safetensors(&named, &w).unwrap();
    let info = syncdiff_checkpoint::BundleInfo::verify(&model).unwrap();
    let names: Vec<String> = info.files.iter().map(|f| f.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    info.write(&nan, &names).unwrap();
    let (ok, err) = gen(&nan, &good, &d.join("n.mp4"));
    assert!(!ok, "{err}");
    assert!(
        err.contains("n.mp4: the model's output is not finite (NaN or Inf) at frame 0"),
        "{err}"
    );
    assert!(!d.join("n.mp4").exists());

    // Outputs are checked before any work: a directory as --out (before: `.partial.gen: Unable
    // to find a suitable output format` after every frame), a place that cannot be created.
    // The model is not even loaded first: with a missing checkpoint the output is named.
    let out_dir = d.join("outdir");
    std::fs::create_dir(&out_dir).unwrap();
    let (ok, err) = gen(&d.join("no-such-bundle"), &good, &out_dir);
    assert!(!ok && err.contains("outdir: is a directory"), "{err}");
    std::fs::write(d.join("afile"), b"x").unwrap();
    let (ok, err) = gen(&model, &good, &d.join("afile/x.mp4"));
    assert!(!ok && err.contains("afile: cannot create"), "{err}");

    // A missing directory is created; any file name works (an mp4 is written); the output keeps
    // the drive's own sound (44.1 kHz stereo here), not the model's 16 kHz mono copy.
    let drive = d.join("drive.wav");
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .args([
            "sine=frequency=300:sample_rate=44100:duration=1",
            "-ac",
            "2",
        ])
        .arg(&drive)
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = d.join("new/sub/gen");
    let (ok, err) = gen(&model, &drive, &out);
    assert!(ok, "{err}");
    assert_eq!(audio_format(&out), (44100, 2));
    let info = video::probe(&out).unwrap();
    assert_eq!((info.width, info.height, info.fps), (160, 160, 25.0));

    // Outputs never clobber what they do not own (before: a device node as --out was replaced
    // by a regular file, exit 0; a symbolic link was replaced instead of written through). A
    // character device with /dev/full's numbers and a FIFO are refused before any work and
    // stay what they were; a link keeps pointing at the video it names.
    use std::os::unix::fs::FileTypeExt;
    let (dev, fifo) = common::special_files(&d.join("full"), &d.join("pipe.mp4"));
    for (p, kind) in [(&dev, "a character device"), (&fifo, "a FIFO")] {
        let (ok, err) = gen(&model, &good, p);
        assert!(!ok, "{err}");
        assert!(
            err.contains(&format!("{}: is {kind}", p.display())),
            "{err}"
        );
        let ft = std::fs::symlink_metadata(p).unwrap().file_type();
        assert!(
            ft.is_char_device() || ft.is_fifo(),
            "{} was replaced",
            p.display()
        );
    }
    std::fs::remove_file(&dev).unwrap();
    let link = d.join("latest.mp4");
    std::os::unix::fs::symlink("new/sub/gen", &link).unwrap();
    std::fs::write(&out, b"old").unwrap();
    let (ok, err) = gen(&model, &good, &link);
    assert!(ok, "{err}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(video::probe(&out).unwrap().width, 160);
}
