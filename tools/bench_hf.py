# The peer baseline for stip-bench: Hugging Face transformers on a GPU machine
# (copied from the project's shared GPU scripts, shared/gpu/bench_hf.py; run by
# deploy/build-gpu.sh next to stip-bench).
# Peer baseline: Hugging Face transformers (eager PyTorch, sdpa attention) on
# the GPU, random-init weights of the shapes that the STIP paper reports on.
import json, sys, time, traceback
import torch
import transformers as T

OUT, BUDGET = sys.argv[1], float(sys.argv[2])
t_start = time.time()
res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "transformers": T.__version__}

def sync_time(f, reps=3):
    f(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.time(); f(); torch.cuda.synchronize(); ts.append(time.time() - t)
    return min(ts)

def bench(name, model, vocab):
    model = model.to("cuda", torch.float16).eval()
    r = {}
    with torch.no_grad():
        x = torch.randint(0, vocab, (100, 100), device="cuda")
        t = sync_time(lambda: model(input_ids=x))
        r["forward_b100_t100_tok_per_s"] = round(100 * 100 / t, 1)
        for bs in (1, 64):
            p = torch.randint(0, vocab, (bs, 128), device="cuda")
            gen = lambda: model.generate(p, max_new_tokens=128, min_new_tokens=128, do_sample=False,
                                         pad_token_id=0, eos_token_id=None, use_cache=True)
            t = sync_time(gen, reps=2)
            tp = sync_time(lambda: model(input_ids=p), reps=2)
            r[f"decode_b{bs}_ms_per_step"] = round((t - tp) / 128 * 1000, 3)
            r[f"decode_b{bs}_tok_per_s"] = round(bs * 128 / (t - tp), 1)
    res[name] = r
    print(name, r, flush=True)

try:
    bench("gpt2-124m", T.GPT2LMHeadModel(T.GPT2Config()), 50257)
except Exception:
    res["gpt2-124m"] = traceback.format_exc()[-600:]
torch.cuda.empty_cache()
if time.time() - t_start < BUDGET:
    try:
        cfg = T.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)
        with torch.device("cuda"):
            torch.set_default_dtype(torch.float16)
            m = T.LlamaForCausalLM(cfg)
            torch.set_default_dtype(torch.float32)
        m.eval()
        r = {}
        with torch.no_grad():
            p = torch.randint(0, 32000, (1, 128), device="cuda")
            gen = lambda: m.generate(p, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                                     pad_token_id=0, eos_token_id=None, use_cache=True)
            t = sync_time(gen, reps=1)
            tp = sync_time(lambda: m(input_ids=p), reps=1)
            r["decode_b1_ms_per_step"] = round((t - tp) / 64 * 1000, 3)
            r["weights_gb"] = round(sum(q.numel() for q in m.parameters()) * 2 / 1e9, 2)
        res["llama2-7b-shape"] = r
        print("llama2-7b-shape", r, flush=True)
    except Exception:
        res["llama2-7b-shape"] = traceback.format_exc()[-600:]
json.dump(res, open(OUT + "/bench_hf.json", "w"), indent=1)
print("bench total", round(time.time() - t_start, 1))
