"""A dump's logits (llamacpp_dump.py) through llama-server's logprob computation (server_logprobs.cpp), against the
top-5 logprobs of a greedy reference record.
usage: python3 server_logprobs.py DUMP.npz REF.json INDEX [FIRST_BATCH]
(FIRST_BATCH: the dump batch that ends the prompt; 1 for a Gemma prompt dumped as (n-4) + 4 rows, else 0)"""
import json
import os
import subprocess
import sys

import numpy as np

EXE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server_logprobs")


def main():
    d = np.load(sys.argv[1])
    rec = json.load(open(sys.argv[2], encoding="utf-8"))["greedy"][int(sys.argv[3])]
    first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    n_batches = len({k.split("/")[0] for k in d.keys()})
    for b in range(first, n_batches):
        logits = d[f"b{b}/result_output"].astype(np.float32).tobytes()
        out = subprocess.run([EXE, "5"], input=logits, capture_output=True, check=True).stdout.decode().split()
        ours = [(int(out[i]), float(out[i + 1])) for i in range(0, len(out), 2)]
        theirs = [(int(t), float(lp)) for t, lp in rec["top_logprobs"][b - first]]
        same = [o[0] for o in ours] == [t[0] for t in theirs]
        diff = max(abs(o[1] - t[1]) for o, t in zip(ours, theirs))
        print(f"step {b - first}: top-5 ids {'equal' if same else 'DIFFER'}, max logprob difference {diff:.1e}")


if __name__ == "__main__":
    main()
