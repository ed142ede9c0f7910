"""zarr-python side of dataprep/benches/reader.rs: the same training samples read with zarr.

    python reader_py.py DATASET REQUESTS.json
For every line "step" on stdin, reads all requested samples (target, masked, identity, previous
latents and the mel context) and prints the seconds it took.
"""
import json
import sys
import time

import zarr

zarr.config.set({"threading.max_workers": 1})
root, reqs = sys.argv[1], json.load(open(sys.argv[2]))
manifest = json.load(open(f"{root}/manifest.json"))
clips = []  # (group, first frame in shard)
groups = []
for shard in manifest["shards"]:
    g = zarr.open_group(f"{root}/{shard['name']}", mode="r")
    arrays = (g["latents"], g["masked_latents"], g["mel"])
    groups.append(arrays)
    start = 0
    for frames in shard["frames"]:
        clips.append((arrays, start))
        start += frames
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    t0 = time.perf_counter()
    for r in reqs:
        (lat, masked, mel), base = clips[r["clip"]]
        t = base + r["t"]
        lat[t]
        masked[t]
        lat[base + r["identity"]]
        for p in range(r["t"] - r["previous"], r["t"]):
            lat[base + p]
        mel[base + r["ctx_start"]: base + r["ctx_start"] + r["ctx_len"]]
    print(time.perf_counter() - t0, flush=True)
