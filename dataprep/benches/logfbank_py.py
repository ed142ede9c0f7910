"""python_speech_features side of dataprep/benches/logfbank.rs.

    python logfbank_py.py RAW_S16LE
Loads the audio, prints "ready", then for every line "step" on stdin computes logfbank of the whole
signal and prints the seconds it took.
"""
import sys
import time

import numpy as np
from python_speech_features import logfbank

samples = np.frombuffer(open(sys.argv[1], "rb").read(), dtype="<i2")
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    start = time.perf_counter()
    logfbank(samples, samplerate=16000)
    print(time.perf_counter() - start, flush=True)
