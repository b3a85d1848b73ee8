"""Run the independent reference (PyPI ``rwkv``, ChatRWKV's inference code) in RNN mode.

Usage: python run_reference.py JOBS.json   (one process per architecture version: the package
reads its switches from the environment at import.) Each job is {"checkpoint": ".pth path",
"tokens": [...], "out": ".npz path"}; the npz holds ``logits`` (T, V) of every step from the
zero state, ``prefill`` (V,), the logits of feeding all tokens at once, and ``state.{i}`` the
final state list in the package's own order and layout.
"""

import json
import os
import sys

jobs = json.load(open(sys.argv[1]))
os.environ["RWKV_CUDA_ON"] = "0"
os.environ["RWKV_V7_ON"] = "1" if jobs["version"] == "v7" else "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rwkv.model import RWKV  # noqa: E402

torch.set_num_threads(1)
for job in jobs["jobs"]:
    path = job["checkpoint"]
    model = RWKV(path[: -len(".pth")] if jobs["version"] == "v7" else path, "cpu fp32", **({} if jobs["version"] == "v7" else {"verbose": False}))
    state, logits = None, []
    for tok in job["tokens"]:
        out, state = model.forward([tok], state)
        state = [s.clone() for s in state]
        logits.append(out.float().numpy().copy())
    prefill, _ = model.forward(list(job["tokens"]), None)
    np.savez(job["out"], logits=np.stack(logits), prefill=prefill.float().numpy(),
             **{f"state.{i}": s.float().numpy() for i, s in enumerate(state)})
