"""Reads a shard store with zarr-python (dataprep/tests/store.rs): is our store standard Zarr v3?

    python zarr_read.py SHARD.zarr OUT.safetensors FRAME
Writes latents[FRAME], masked_latents[FRAME], mel[:], clip_offsets[:] and prints the clip ids.
"""
import sys

import numpy as np
import zarr
from safetensors.numpy import save_file

path, out, frame = sys.argv[1], sys.argv[2], int(sys.argv[3])
g = zarr.open_group(path, mode="r")
assert g.metadata.zarr_format == 3
save_file(
    {
        "latent": np.asarray(g["latents"][frame]).astype(np.float32),
        "masked": np.asarray(g["masked_latents"][frame]).astype(np.float32),
        "mel": np.asarray(g["mel"][:]),
        "clip_offsets": np.asarray(g["clip_offsets"][:]),
    },
    out,
)
print(",".join(g.attrs["clip_ids"]))
