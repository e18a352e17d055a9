"""The study's reported sparsity (Mukherjee et al. 2025, Tables 1 and 6), shown beside ours."""

from __future__ import annotations

# (base, tuned) -> sparsity % at tolerance 1e-5 and 1e-8
STUDY = {
    ("allenai/Llama-3.1-Tulu-3-8B-SFT", "allenai/Llama-3.1-Tulu-3-8B-DPO"): (81.38, 76.04),
    ("allenai/Llama-3.1-Tulu-3-70B-SFT", "allenai/Llama-3.1-Tulu-3-70B-DPO"): (95.24, 87.58),
    ("deepseek-ai/deepseek-math-7b-instruct", "deepseek-ai/deepseek-math-7b-rl"): (68.53, 68.14),
    ("mistralai/Mistral-7B-v0.1", "kaist-ai/mistral-orpo-beta"): (76.94, 73.16),
    ("openbmb/Eurus-7b-sft", "openbmb/Eurus-7b-kto"): (95.98, 71.78),
    ("peiyi9979/mistral-7b-sft", "peiyi9979/math-shepherd-mistral-7b-rl"): (80.77, 52.45),
    ("PRIME-RL/Eurus-2-7B-SFT", "PRIME-RL/Eurus-2-7B-PRIME"): (77.04, 75.26),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "princeton-nlp/Llama-3-Instruct-8B-SimPO"): (76.42, 71.00),
}


def reference_for(base_id: str, tuned_id: str) -> dict | None:
    hit = STUDY.get((base_id, tuned_id))
    if hit is None:
        return None
    return {"sparsity": {"1e-05": hit[0], "1e-08": hit[1]}, "source": "Mukherjee et al. 2025, Table 1"}
