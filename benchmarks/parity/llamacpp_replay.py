"""Replay the reference /completion requests (../shared/reference/*/llamacpp-greedy-tokenize.json) against a running
llama-server and compare the 48 greedy tokens and the top-5 logprobs (research tool: checks a local llama.cpp build).

    GGML_CPU_TILED_MM=0 $BUILD/bin/llama-server -m MODEL -c 4096 -t 2 --host 127.0.0.1 --port 18471 &
    python3 llamacpp_replay.py 18471 ../../../shared/reference/gemma3-270m/llamacpp-greedy-tokenize.json

Send the prompts in the records' order to a fresh server: the slot cache state depends on the request history."""
import json
import sys
import urllib.request


def main():
    port, ref_path = sys.argv[1], sys.argv[2]
    ref = json.load(open(ref_path))["greedy"]
    same = 0
    for i, rec in enumerate(ref):
        body = {"prompt": rec["prompt"], "temperature": 0, "top_k": 1, "n_predict": 48, "n_probs": 5, "return_tokens": True}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        r = json.load(urllib.request.urlopen(req, timeout=120))
        gap = 0.0
        # completion_probabilities can be shorter than tokens (UTF-8 pieces merged), as in the records
        for s, p in enumerate(r["completion_probabilities"][:len(rec["top_logprobs"])]):
            mine = {q["id"]: q["logprob"] for q in p["top_logprobs"]}
            gap = max([gap] + [abs(mine[t] - lp) for t, lp in rec["top_logprobs"][s] if t in mine])
            if p["id"] != rec["tokens"][s]:
                break
        ok = r["tokens"] == rec["tokens"]
        same += ok
        print(f"prompt {i}: same 48 tokens {ok}, worst top-5 gap {gap:.2e}", flush=True)
    print(f"identical {same}/{len(ref)}")


if __name__ == "__main__":
    main()
