"""python_speech_features reference for dataprep/tests/audio.rs.

    python logfbank_ref.py RAW_S16LE OUT.safetensors LENGTH [LENGTH ...]
For each LENGTH, logfbank of the first LENGTH samples (int16 values, unscaled) as `fbank_<LENGTH>`,
AV-HuBERT's stacking (by 4) + per-frame layer norm as `stacked_<LENGTH>`, and `mfcc` with its
defaults (SyncNet's audio features) as `mfcc_<LENGTH>`.
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F
from python_speech_features import logfbank, mfcc
from safetensors.numpy import save_file

raw, out, *lengths = sys.argv[1:]
samples = np.frombuffer(open(raw, "rb").read(), dtype="<i2")
result = {}
for n in map(int, lengths):
    fb = logfbank(samples[:n], samplerate=16000).astype(np.float32)
    result[f"fbank_{n}"] = fb
    result[f"mfcc_{n}"] = mfcc(samples[:n], 16000).astype(np.float32)
    pad = (-len(fb)) % 4
    st = np.concatenate([fb, np.zeros((pad, fb.shape[1]), np.float32)]).reshape(-1, 4 * fb.shape[1])
    result[f"stacked_{n}"] = F.layer_norm(torch.from_numpy(st), st.shape[1:]).numpy()
save_file(result, out)
