#!/usr/bin/env python3
"""Writes a synthetic LLaMA-style checkpoint of a chosen size (random fp16
bytes; standard library only), for measuring the streaming transform's memory
and throughput on large inputs:

    tools/make_synthetic_checkpoint.py OUT_DIR [--hidden 4096] [--layers 3] [--shards 3]
    /usr/bin/time -v build/developer/stip-developer transform --model OUT_DIR ...
"""
import argparse, json, os, struct

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--hidden", type=int, default=4096)
ap.add_argument("--intermediate", type=int, default=11008)
ap.add_argument("--layers", type=int, default=3)
ap.add_argument("--heads", type=int, default=32)
ap.add_argument("--kv-heads", type=int, default=8)
ap.add_argument("--vocab", type=int, default=32000)
ap.add_argument("--shards", type=int, default=3)
a = ap.parse_args()
d, m, hd = a.hidden, a.intermediate, a.hidden // a.heads
tensors = [("model.embed_tokens.weight", [a.vocab, d])]
for l in range(a.layers):
    p = f"model.layers.{l}."
    tensors += [(p + "input_layernorm.weight", [d]),
                (p + "self_attn.q_proj.weight", [a.heads * hd, d]),
                (p + "self_attn.k_proj.weight", [a.kv_heads * hd, d]),
                (p + "self_attn.v_proj.weight", [a.kv_heads * hd, d]),
                (p + "self_attn.o_proj.weight", [d, a.heads * hd]),
                (p + "post_attention_layernorm.weight", [d]),
                (p + "mlp.gate_proj.weight", [m, d]),
                (p + "mlp.up_proj.weight", [m, d]),
                (p + "mlp.down_proj.weight", [d, m])]
tensors += [("model.norm.weight", [d]), ("lm_head.weight", [a.vocab, d])]
os.makedirs(a.out, exist_ok=True)
chunk = os.urandom(1 << 24)
def nbytes(shape):
    n = 2
    for s in shape: n *= s
    return n
weight_map = {}
for s in range(a.shards):
    part = tensors[s::a.shards]
    name = f"model-{s + 1:05d}-of-{a.shards:05d}.safetensors"
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for n, shape in part:
        header[n] = {"dtype": "F16", "shape": shape, "data_offsets": [off, off + nbytes(shape)]}
        off += nbytes(shape)
        weight_map[n] = name
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(a.out, name), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for n, shape in part:
            left = nbytes(shape)
            while left:
                k = min(left, len(chunk))
                f.write(chunk[:k])
                left -= k
json.dump({"metadata": {}, "weight_map": weight_map},
          open(os.path.join(a.out, "model.safetensors.index.json"), "w"))
json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": a.vocab,
           "hidden_size": d, "intermediate_size": m, "num_hidden_layers": a.layers,
           "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
           "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "torch_dtype": "float16"},
          open(os.path.join(a.out, "config.json"), "w"), indent=1)
total = sum(nbytes(s) for _, s in tensors)
largest = max(nbytes(s) for _, s in tensors)
print(f"wrote {a.out}: {len(tensors)} tensors, {total / 2**30:.2f} GiB, largest {largest / 2**20:.0f} MiB")
