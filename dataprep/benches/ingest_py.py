"""Python pipeline for dataprep/benches/ingest.rs: the same steps as `syncdiff-dataprep lrs2` with
the debug autoencoder (area downsampling by 4), in two processes on the two cores.

    python ingest_py.py ROOT OUT CLIPS_PER_SHARD RESOLUTION
Per clip: ffmpeg decode (frames scaled with the area filter, audio to 16 kHz mono int16),
python_speech_features logfbank, stacking by 4, per-frame layer norm, alignment; batched encode of
frames and masked frames in torch; per shard: zarr v3 write with the same layout and codecs
(sharded, zstd level 3, one frame per latent subchunk, 64 rows per mel subchunk).
Prints one JSON line: frames and seconds per stage (summed over processes) and the wall time.
"""
import json
import subprocess
import sys
import time
from multiprocessing import Pool

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from python_speech_features import logfbank

ROOT, OUT, PER, RES = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def ffmpeg(args):
    return subprocess.run(["ffmpeg", "-v", "error", "-nostdin", *args], check=True, capture_output=True).stdout


def clip_features(cid):
    path = f"{ROOT}/main/{cid}.mp4"
    rgb = np.frombuffer(ffmpeg(["-i", path, "-map", "0:v:0", "-vf", f"scale={RES}:{RES}:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]), np.uint8)
    frames = rgb.reshape(-1, RES, RES, 3)
    audio = np.frombuffer(ffmpeg(["-i", path, "-map", "0:a:0", "-ac", "1", "-ar", "16000", "-f", "s16le", "-"]), "<i2")
    fb = logfbank(audio, samplerate=16000).astype(np.float32)
    fb = np.concatenate([fb, np.zeros(((-len(fb)) % 4, 26), np.float32)]).reshape(-1, 104)
    fb = F.layer_norm(torch.from_numpy(fb), (104,)).numpy()
    mel = np.zeros((len(frames), 104), np.float32)
    n = min(len(frames), len(fb))
    mel[:n] = fb[:n]
    return frames, mel


def encode(frames):
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    masked = x.clone()
    masked[:, :, RES // 2:, :] = -1.0
    with torch.no_grad():
        lat = torch.cat([F.avg_pool2d(b, 4) for b in x.split(32)])
        mlat = torch.cat([F.avg_pool2d(b, 4) for b in masked.split(32)])
    return lat.half().numpy(), mlat.half().numpy()


def write(path, lat, mlat, mel, offsets):
    g = zarr.open_group(path, mode="w")
    z = zarr.codecs.ZstdCodec(level=3)
    for name, data, sub in [("latents", lat, 1), ("masked_latents", mlat, 1), ("mel", mel, 64)]:
        a = g.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(sub, *data.shape[1:]), shards=(256, *data.shape[1:]), compressors=z)
        a[:] = data
    o = g.create_array("clip_offsets", shape=(len(offsets),), dtype="int64")
    o[:] = np.asarray(offsets)


def shard(job):
    torch.set_num_threads(1)
    i, ids = job
    t = {"decode": 0.0, "encode": 0.0, "write": 0.0, "frames": 0}
    lats, mlats, mels, offsets = [], [], [], [0]
    for cid in ids:
        t0 = time.perf_counter()
        frames, mel = clip_features(cid)
        t1 = time.perf_counter()
        lat, mlat = encode(frames)
        t2 = time.perf_counter()
        t["decode"] += t1 - t0
        t["encode"] += t2 - t1
        lats.append(lat), mlats.append(mlat), mels.append(mel)
        offsets.append(offsets[-1] + len(frames))
        t["frames"] += len(frames)
    t0 = time.perf_counter()
    write(f"{OUT}/shard-{i:05d}.zarr", np.concatenate(lats), np.concatenate(mlats), np.concatenate(mels), offsets)
    t["write"] += time.perf_counter() - t0
    return t


if __name__ == "__main__":
    start = time.perf_counter()
    ids = [l.split()[0] for l in open(f"{ROOT}/train.txt") if l.strip()]
    jobs = [(i, ids[k:k + PER]) for i, k in enumerate(range(0, len(ids), PER))]
    with Pool(2) as pool:
        results = pool.map(shard, jobs)
    total = {k: sum(r[k] for r in results) for k in results[0]}
    total["wall"] = time.perf_counter() - start
    print(json.dumps(total))
