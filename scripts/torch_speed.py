"""PyTorch/transformers reference for `cargo xtask bench speed`: the same shapes with random
weights, the same protocol (warm-up over the same lengths, then one timed prefill of a
`--prompt-tokens` text prompt and `--new-tokens` greedy decode steps with transformers' KV
cache). Run it yourself next to the Rust bench on the same machine (it is not part of CI):

    python3 scripts/torch_speed.py --preset 150m --device cpu --threads 2
    python3 scripts/torch_speed.py --preset llava-7b --device cuda --dtype f16
"""

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    # hidden, layers, heads, kv heads, intermediate (as tita-bench's presets)
    "150m": (1024, 8, 16, 4, 2816),
    "llava-7b": (4096, 32, 32, 32, 11008),
}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="150m", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--prompt-tokens", type=int, default=600)
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    h, layers, heads, kv, inter = PRESETS[a.preset]
    config = LlamaConfig(
        vocab_size=32064,
        hidden_size=h,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(a.device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    ids = torch.tensor([[3 + (i * 7919) % (32000 - 3) for i in range(a.prompt_tokens)]], device=a.device)

    def run():
        sync(a.device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        logits, cache = out.logits[:, -1], out.past_key_values
        nxt = logits.argmax(-1, keepdim=True)
        sync(a.device)
        t1 = time.perf_counter()
        for _ in range(a.new_tokens):
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        nxt.item()
        sync(a.device)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    with torch.inference_mode():
        run()  # warm-up
        prefill, decode = run()
    print(
        json.dumps(
            {
                "preset": a.preset,
                "device": a.device,
                "dtype": a.dtype,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "prefill_tokens_per_s": a.prompt_tokens / prefill,
                "decode_tokens_per_s": a.new_tokens / decode,
            }
        )
    )


if __name__ == "__main__":
    main()
