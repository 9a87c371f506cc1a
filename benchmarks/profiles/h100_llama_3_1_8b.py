"""A profile written by hand: Llama 3.1 8B Instruct on one H100 SXM5 per engine, from
published figures (no H100 here), for `pdserve simulate` at a scale this box cannot hold.

Every number is a published figure or a stated assumption; the arithmetic is below, so a
reader can check it or swap in their own. The linear step model adds compute and memory time
(a roofline takes their maximum), so it errs slow where both are large (decode batches of
~100+ requests). Not checked against a measured H100 run: replace it with `pdserve profile`
on the real machine as soon as there is one.

    python -m pdserve.benchmarks.profiles.h100_llama_3_1_8b   # rewrites the JSON beside it
"""

from __future__ import annotations

import json
from pathlib import Path

from pdserve.simulation.profile_file import (
    GraphOverhead,
    KVCache,
    KVTransfer,
    Profile,
    StepTimes,
)

OUT = Path(__file__).with_name("h100-llama-3.1-8b.json")
MODEL = "meta-llama/Llama-3.1-8B-Instruct"

# -- the model: its published config.json (Hugging Face, meta-llama/Llama-3.1-8B-Instruct) --
HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 128256,
}
#: The engine arguments of `serve_configs/llama8b_h100.yaml` (the profile must match them).
ENGINE_KWARGS = {"dtype": "bfloat16", "max_model_len": 8192, "max_num_batched_tokens": 8192,
                 "max_num_seqs": 256, "block_size": 16, "gpu_memory_utilization": 0.9}

LAYERS, HIDDEN, KV_HEADS, HEAD_DIM = 32, 4096, 8, 4096 // 32
VOCAB, INTERMEDIATE = 128256, 14336
BF16 = 2  # bytes
# Parameters per layer: attention q,o (hidden²) + k,v (hidden × kv heads × head dim) + MLP (3).
LAYER_PARAMS = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * KV_HEADS * HEAD_DIM + 3 * HIDDEN * INTERMEDIATE
BODY_PARAMS = LAYERS * LAYER_PARAMS  # 6.98e9: every token multiplies through these
HEAD_PARAMS = VOCAB * HIDDEN  # 0.53e9: the LM head, once per sampled token
KV_BYTES_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * BF16  # K and V: 131072 B

# -- the hardware: NVIDIA H100 SXM5 80 GB datasheet --
PEAK_BF16_FLOPS = 989e12  # dense BF16 tensor-core peak
HBM_BYTES_PER_S = 3.35e12  # HBM3 bandwidth
HBM_BYTES = 81559 * 2**20  # "80 GB": the total nvidia-smi and torch report, 81559 MiB

# -- assumptions (not published for this engine; stated so they can be replaced) --
GEMM_EFFICIENCY = 0.6  # share of peak the model's GEMMs reach at prefill/decode batch sizes
ATTENTION_FLOPS = 500e12  # FlashAttention-3 reports up to 740 TFLOPS BF16 forward on H100;
#                           causal head-dim-128 attention assumed at 500
HBM_EFFICIENCY = 0.8  # share of HBM bandwidth a decode step's weight and KV reads reach
NON_KV_RESERVE = 4e9  # activations, CUDA graphs and allocator slack beside weights (bytes)
STARTUP_S = 60.0  # weights from local NVMe, torch.compile and CUDA-graph capture (vLLM V1)
NIC_BYTES_PER_S = 400e9 / 8 * 0.8  # one ConnectX-7 NDR 400 Gb/s link per GPU, 80 % of line
NIXL_ALPHA_S = 1e-3  # per pull: request, descriptor exchange, completion notification


def profile() -> Profile:
    flops_per_token = 2 * BODY_PARAMS
    attention_flops_per_pair = 4 * LAYERS * HIDDEN  # QKᵀ and AV, 2 FLOPs per multiply-add
    weight_read_s = (BODY_PARAMS + HEAD_PARAMS) * BF16 / (HBM_BYTES_PER_S * HBM_EFFICIENCY)
    kv_bytes = HBM_BYTES * ENGINE_KWARGS["gpu_memory_utilization"] - (
        (BODY_PARAMS + 2 * HEAD_PARAMS) * BF16 + NON_KV_RESERVE)
    block = ENGINE_KWARGS["block_size"]
    return Profile(
        created="2026-12-05",
        source="written by hand from published figures (benchmarks/profiles/"
               "h100_llama_3_1_8b.py: NVIDIA H100 SXM5 datasheet, the model's config.json, "
               "stated efficiency assumptions); not measured",
        machine={"gpu": "NVIDIA H100 SXM5 80GB (one per engine)", "measured": False},
        model=MODEL,
        engine_kwargs=ENGINE_KWARGS,
        hf_config=HF_CONFIG,
        kv_cache=KVCache(num_blocks=int(kv_bytes // (KV_BYTES_PER_TOKEN * block)),
                         block_size=block, bytes_per_token=KV_BYTES_PER_TOKEN),
        step_times=StepTimes(
            base=weight_read_s,  # every step reads the weights once
            per_prefill_token=flops_per_token / (PEAK_BF16_FLOPS * GEMM_EFFICIENCY),
            per_prefill_pair=attention_flops_per_pair / ATTENTION_FLOPS,
            per_decode=(flops_per_token + 2 * HEAD_PARAMS) / (PEAK_BF16_FLOPS * GEMM_EFFICIENCY),
            per_decode_context=KV_BYTES_PER_TOKEN / (HBM_BYTES_PER_S * HBM_EFFICIENCY),
            per_new_request=0.0,  # not published; vLLM's GPU runner hides it behind the GPU
        ),
        kv_transfer=KVTransfer(
            alpha_s=NIXL_ALPHA_S, bytes_per_s=NIC_BYTES_PER_S,
            source="assumed: NIXL over one ConnectX-7 NDR 400 Gb/s RDMA link per GPU at 80 % "
                   "of line rate, 1 ms per pull (prefill and decode on different nodes; "
                   "NVLink within a node is ~10x faster)"),
        graph_overhead=GraphOverhead(
            per_request_s=0.013,
            per_prompt_token_s=5e-6,
            source="per request: pdserve's graph measured on the 2-core CPU box "
                   "(benchmarks/results/sim-calibration-cpu-v1, 13 ms); per prompt token "
                   "assumed 5 us (tokenization and block hashing on a free host core); a GPU "
                   "host's graph runs on cores the engines do not use (no CPU sharing)"),
        startup_s=STARTUP_S,
    )


def main() -> None:
    OUT.write_text(json.dumps(profile().model_dump(), indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
