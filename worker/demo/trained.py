"""A *trained* demo family: a tiny Llama pretrained on addition, then finetuned by SFT and by RL.

Plain torch on the CPU, no network, no downloads, no transformers (its LlamaForCausalLM
loads the output as is: tests/engine/test_trained_demo.py checks equal logits). The same
call writes the same bytes: fixed seeds, explicit generators, and torch held at
`threads` = 1 thread meanwhile (restored after). One thread is deliberate: on matrices
this small, two threads were 8x slower per step on two busy cores, not faster.

Model, LlamaForCausalLM layout and names (`model.embed_tokens.weight`,
`model.layers.N.self_attn.q_proj.weight`, ..., `model.norm.weight`, `lm_head.weight`):
hidden 64, 2 layers, 4 attention heads of 16 with 2 key/value heads (grouped-query),
SwiGLU MLP of 176, RMSNorm (eps 1e-5), rotary embeddings (theta 10000), vocabulary 32
(16 used, padded as real vocabularies are), an *untied* lm_head (tie_word_embeddings
false); 96,576 parameters, initialised as transformers does (normal std 0.02, norms 1).

Task: `<bos> a1 a0 + b1 b0 = c0 c1 c2 <eos>`, two-digit operands, the answer written
least-significant digit first in three digits (reversed answers are what small
transformers learn quickly). Tokens: 0-9 digits, 10 `+`, 11 `-`, 12 `=`, 13 <bos>,
14 <eos>, 15 <pad>, 16-31 unused.

Mixed precision as trainers keep it: AdamW holds an fp32 master copy of every weight;
each step's forward and backward run on the master cast to bf16 (bf16 weights and
activations; RMSNorm statistics, softmax and the loss in fp32), and the fp32 gradient
updates the master. A saved checkpoint is the master cast to bf16 (round to nearest
even); a finetune starts from the saved bf16 base, so its master starts at exactly those
values. Gradient clipping at 1.0 throughout (the Trainer's default).

Phases (seed 20250515; each phase draws from its own generator):
- pretrain -> `trained/base`: addition, a, b uniform in 0..99, next-token loss on the
  whole sequence; AdamW lr 3e-3, betas 0.9/0.95, weight decay 0.1 on matrices; 30 warmup
  steps, cosine to 10 %; 1000 steps of 128 sequences. Greedy accuracy 94 %, but the
  expected reward (probability that sampling gives the right answer) only 0.53: room for RL.
- SFT -> `trained/sft_run/checkpoint-<step>/`, the last also as `trained/sft`: a shifted
  distribution, subtraction a - b with a >= b (the `-` token the base never saw used);
  loss on the answer only (TRL's completion-only loss); AdamW lr 2e-4, betas 0.9/0.999,
  eps 1e-8, no weight decay (transformers' TrainingArguments defaults); 10 warmup steps,
  then linear decay to 0 (the Trainer's default schedule); 200 steps of 64; a checkpoint
  every 25 steps.
- RL -> `trained/rl_run/checkpoint-<step>/`, the last also as `trained/rl`: GRPO-style,
  on-policy, verifiable reward, on addition prompts: 16 prompts per step, 8 completions
  each sampled at temperature 1 from the current bf16 policy; reward 1 iff all four
  generated tokens (three digits, <eos>) are right; advantage = (r - group mean) / (group
  std + 1e-4); loss = -mean over completions and tokens of advantage x log-prob; one
  gradient step per batch (so the PPO ratio is 1 and clipping never binds); no KL term
  (beta = 0, as DAPO and Dr. GRPO). AdamW lr 1e-5, betas 0.9/0.999, eps 1e-8, no weight
  decay; constant after 5 warmup steps; 200 steps; a checkpoint every 25 steps.

Learning rates. Large-model recipes pretrain at ~3e-4 and finetune by SFT at ~1e-5..5e-5
(about pretraining / 15) and by RL at ~1e-7..1e-6 (DeepSeekMath's GRPO: 1e-6; Tulu 3
RLVR: 3e-7; about pretraining / 300). This model pretrains at 3e-3, ten times a large
one, as small models do; the finetuning rates keep the same proportions to it: SFT 2e-4
(/15), RL 1e-5 (/300, the top of the 1e-6..1e-5 range RL recipes use, 20x below SFT).
They were chosen by that rule, not by the sparsity they give. At 3e-6 RL changed about as
much behaviour (expected reward +0.01 in 200 steps) and left more weights bit-identical.

What came out (FULL, measured; `summary.json` and each trainer_state.json log them):
base greedy addition accuracy 94.1 %, expected reward 0.527. SFT: subtraction 8.4 %
(from 0), addition forgotten (0 %). RL: expected reward 0.527 -> 0.540, above the base at
every checkpoint and up at 6 of the 8; greedy accuracy 93.8 %. Sparsity (subnetscope analyze, t = 0 / 1e-5):
base -> sft 2.93 % / 2.93 %; base -> rl 46.59 % / 46.86 %. About 40 CPU seconds.

The fp32 masters are written too (`trained/sft_fp32`, `trained/rl_fp32`: the finals' AdamW
masters; `trained/base_fp32`: the bf16 base in fp32, where both started), so that a pair of
them shows every fp32 update and the bf16 storage counterfactual what bf16 saving erased.

Each `checkpoint-<step>/` holds model.safetensors, config.json and trainer_state.json
(the Trainer's file: global_step, log_history with loss, grad norm, learning rate,
reward, eval accuracies), with no wall-clock fields, so the bytes repeat. `quick=True`
(QUICK) runs the same code and learning rates on a tiny schedule with single-digit
operands, in about 5 CPU seconds, for tests.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from worker.demo.trained_files import round6 as _r
from worker.demo.trained_files import save_checkpoint, trainer_state

DIGITS = 10
PLUS, MINUS, EQ, BOS, EOS, PAD = 10, 11, 12, 13, 14, 15
PROMPT_LEN, ANSWER_LEN = 7, 4  # <bos> a1 a0 op b1 b0 = | c0 c1 c2 <eos>
SEQ_LEN = PROMPT_LEN + ANSWER_LEN
SEED = 20250515


@dataclass(frozen=True)
class TrainedDemoConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 176
    vocab: int = 32
    rope_theta: float = 10000.0
    operand_max: int = 100  # operands a, b in 0..operand_max-1
    seed: int = SEED
    threads: int = 1
    # pretraining (addition)
    pretrain_steps: int = 1000
    pretrain_batch: int = 128
    pretrain_lr: float = 3e-3
    pretrain_warmup: int = 30
    pretrain_weight_decay: float = 0.1
    # SFT (subtraction)
    sft_steps: int = 200
    sft_batch: int = 64
    sft_lr: float = 2e-4
    sft_warmup: int = 10
    sft_save_every: int = 25
    # RL (GRPO-style on addition)
    rl_steps: int = 200
    rl_prompts: int = 16
    rl_group: int = 8
    rl_lr: float = 1e-5
    rl_warmup: int = 5
    rl_save_every: int = 25
    max_grad_norm: float = 1.0
    eval_size: int = 512
    fp32: bool = False  # config.json of the fp32 master copies


FULL = TrainedDemoConfig()
# Same code and learning rates, a tiny schedule on single-digit operands (a base that
# reaches ~20 % expected reward in 150 steps): about 5 CPU seconds, for tests.
QUICK = replace(FULL, operand_max=10, pretrain_steps=150, pretrain_batch=64, sft_steps=12, sft_batch=32,
                sft_save_every=4, rl_steps=16, rl_save_every=4, eval_size=256)

TRAINED_NAMES = ("trained/base", "trained/sft", "trained/rl", "trained/sft_run", "trained/rl_run",
                 "trained/base_fp32", "trained/sft_fp32", "trained/rl_fp32")


# --------------------------------------------------------------------------- model

def hf_config(cfg: TrainedDemoConfig) -> dict:
    """config.json as transformers' LlamaConfig reads it."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "pad_token_id": PAD,
        "head_dim": cfg.hidden // cfg.heads,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden,
        "initializer_range": 0.02,
        "intermediate_size": cfg.intermediate,
        "max_position_embeddings": 32,
        "mlp_bias": False,
        "num_attention_heads": cfg.heads,
        "num_hidden_layers": cfg.layers,
        "num_key_value_heads": cfg.kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_scaling": None,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": False,
        "torch_dtype": "float32" if cfg.fp32 else "bfloat16",
        "use_cache": True,
        "vocab_size": cfg.vocab,
    }


def init_weights(cfg: TrainedDemoConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """fp32 weights named as LlamaForCausalLM saves them, initialised as transformers does."""
    hd = cfg.hidden // cfg.heads

    def normal(*shape):
        return torch.randn(*shape, generator=gen) * 0.02

    w = {"model.embed_tokens.weight": normal(cfg.vocab, cfg.hidden)}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = normal(cfg.heads * hd, cfg.hidden)
        w[p + "self_attn.k_proj.weight"] = normal(cfg.kv_heads * hd, cfg.hidden)
        w[p + "self_attn.v_proj.weight"] = normal(cfg.kv_heads * hd, cfg.hidden)
        w[p + "self_attn.o_proj.weight"] = normal(cfg.hidden, cfg.heads * hd)
        w[p + "mlp.gate_proj.weight"] = normal(cfg.intermediate, cfg.hidden)
        w[p + "mlp.up_proj.weight"] = normal(cfg.intermediate, cfg.hidden)
        w[p + "mlp.down_proj.weight"] = normal(cfg.hidden, cfg.intermediate)
        w[p + "input_layernorm.weight"] = torch.ones(cfg.hidden)
        w[p + "post_attention_layernorm.weight"] = torch.ones(cfg.hidden)
    w["model.norm.weight"] = torch.ones(cfg.hidden)
    w["lm_head.weight"] = normal(cfg.vocab, cfg.hidden)
    return w


def _rope(cfg: TrainedDemoConfig, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    hd = cfg.hidden // cfg.heads
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = torch.arange(length).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def forward(cfg: TrainedDemoConfig, w: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Logits (fp32) of LlamaForCausalLM for `tokens` (batch x length), computed in the weights' dtype."""
    dtype = w["lm_head.weight"].dtype
    b, n = tokens.shape
    hd = cfg.hidden // cfg.heads
    rep = cfg.heads // cfg.kv_heads
    cos, sin = _rope(cfg, n, dtype)
    mask = torch.full((n, n), float("-inf")).triu(1)
    x = F.embedding(tokens, w["model.embed_tokens.weight"])
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"])
        q = F.linear(h, w[p + "self_attn.q_proj.weight"]).view(b, n, cfg.heads, hd).transpose(1, 2)
        k = F.linear(h, w[p + "self_attn.k_proj.weight"]).view(b, n, cfg.kv_heads, hd).transpose(1, 2)
        v = F.linear(h, w[p + "self_attn.v_proj.weight"]).view(b, n, cfg.kv_heads, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * hd ** -0.5 + mask.to(dtype)
        attn = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        o = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, cfg.heads * hd)
        x = x + F.linear(o, w[p + "self_attn.o_proj.weight"])
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"])
        mlp = F.silu(F.linear(h, w[p + "mlp.gate_proj.weight"])) * F.linear(h, w[p + "mlp.up_proj.weight"])
        x = x + F.linear(mlp, w[p + "mlp.down_proj.weight"])
    x = _rms_norm(x, w["model.norm.weight"])
    return F.linear(x, w["lm_head.weight"]).float()


# --------------------------------------------------------------------------- task

def _digits(values: torch.Tensor, width: int, reverse: bool) -> torch.Tensor:
    places = [(values // 10 ** k) % 10 for k in range(width)]  # least significant first
    return torch.stack(places if reverse else places[::-1], dim=-1)


def make_problems(op: int, count: int, gen: torch.Generator, operand_max: int = 100) -> torch.Tensor:
    """`count` full sequences of `a op b = answer`, operands below `operand_max` (answer reversed, 3 digits)."""
    a = torch.randint(0, operand_max, (count,), generator=gen)
    b = torch.randint(0, operand_max, (count,), generator=gen)
    if op == MINUS:
        a, b = torch.maximum(a, b), torch.minimum(a, b)
        c = a - b
    else:
        c = a + b
    col = lambda v: torch.full((count, 1), v, dtype=torch.int64)  # noqa: E731
    return torch.cat([col(BOS), _digits(a, 2, False), col(op), _digits(b, 2, False), col(EQ),
                      _digits(c, 3, True), col(EOS)], dim=1)


@torch.no_grad()
def generate(cfg: TrainedDemoConfig, w: dict, prompts: torch.Tensor, gen: torch.Generator | None,
             temperature: float = 1.0) -> torch.Tensor:
    """ANSWER_LEN tokens after each prompt: sampled with `gen`, or greedy when gen is None."""
    seq = prompts
    for _ in range(ANSWER_LEN):
        logits = forward(cfg, w, seq)[:, -1]
        if gen is None:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)[:, 0]
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[:, PROMPT_LEN:]


def accuracy(cfg: TrainedDemoConfig, w: dict, problems: torch.Tensor) -> float:
    """Share of problems answered right by greedy decoding."""
    out = generate(cfg, w, problems[:, :PROMPT_LEN], None)
    return (out == problems[:, PROMPT_LEN:]).all(-1).float().mean().item()


@torch.no_grad()
def expected_reward(cfg: TrainedDemoConfig, w: dict, problems: torch.Tensor) -> float:
    """The RL objective, exactly: mean probability that sampling (temperature 1) gives the right answer."""
    logits = forward(cfg, w, problems[:, :-1])[:, PROMPT_LEN - 1:]
    logp = torch.log_softmax(logits, -1).gather(-1, problems[:, PROMPT_LEN:, None])[..., 0]
    return logp.sum(-1).exp().mean().item()


# --------------------------------------------------------------------------- training

class _MixedPrecision:
    """fp32 master weights in AdamW; forward/backward on their bf16 cast."""

    def __init__(self, start: dict[str, torch.Tensor], lr: float, betas, weight_decay: float):
        self.master = {n: t.detach().float().clone().requires_grad_(True) for n, t in start.items()}
        decay = [t for n, t in self.master.items() if t.dim() >= 2 and weight_decay]
        no_decay = [t for n, t in self.master.items() if not (t.dim() >= 2 and weight_decay)]
        groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        self.opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, foreach=False)

    def bf16(self) -> dict[str, torch.Tensor]:
        """The weights the forward sees (differentiable back to the master)."""
        return {n: t.to(torch.bfloat16) for n, t in self.master.items()}

    def saved(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().to(torch.bfloat16) for n, t in self.master.items()}

    def master_state(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in self.master.items()}

    def step(self, loss: torch.Tensor, lr: float, max_norm: float) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(self.master.values()), max_norm, foreach=False)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        return norm.item()


def _lr(step: int, total: int, peak: float, warmup: int, schedule: str) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    if schedule == "linear":
        return peak * (1 - frac)
    return peak


def _lm_loss(logits: torch.Tensor, tokens: torch.Tensor, answer_only: bool) -> torch.Tensor:
    pred, target = logits[:, :-1], tokens[:, 1:].clone()
    if answer_only:
        target[:, :PROMPT_LEN - 1] = -100
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100)


class _Progress:
    def __init__(self, cfg: TrainedDemoConfig, callback):
        # An RL step (sampling + a step on 128 sequences) costs about as much as 2 pretraining steps.
        self.total = cfg.pretrain_steps + cfg.sft_steps + 2 * cfg.rl_steps
        self.done = 0
        self.callback = callback

    def __call__(self, stage: str, weight: int = 1) -> None:
        self.done += weight
        if self.callback is not None:
            self.callback(min(1.0, self.done / self.total), stage)


def pretrain(cfg: TrainedDemoConfig, progress=None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    trainer = _MixedPrecision(init_weights(cfg, gen), cfg.pretrain_lr, (0.9, 0.95), cfg.pretrain_weight_decay)
    data = torch.Generator().manual_seed(cfg.seed + 1)
    log = []
    for step in range(cfg.pretrain_steps):
        batch = make_problems(PLUS, cfg.pretrain_batch, data, cfg.operand_max)
        loss = _lm_loss(forward(cfg, trainer.bf16(), batch), batch, answer_only=False)
        lr = _lr(step, cfg.pretrain_steps, cfg.pretrain_lr, cfg.pretrain_warmup, "cosine")
        trainer.step(loss, lr, cfg.max_grad_norm)
        if (step + 1) % 50 == 0 or step + 1 == cfg.pretrain_steps:
            log.append({"step": step + 1, "loss": _r(loss.item()), "learning_rate": _r(lr)})
        if progress:
            progress("pretraining")
    return trainer.saved(), log


def finetune_sft(cfg: TrainedDemoConfig, base: dict, out: Path, evals: dict, progress=None) -> dict:
    trainer = _MixedPrecision(base, cfg.sft_lr, (0.9, 0.999), 0.0)
    data = torch.Generator().manual_seed(cfg.seed + 2)
    log: list[dict] = []
    final = None
    for step in range(cfg.sft_steps):
        batch = make_problems(MINUS, cfg.sft_batch, data, cfg.operand_max)
        loss = _lm_loss(forward(cfg, trainer.bf16(), batch), batch, answer_only=True)
        lr = _lr(step, cfg.sft_steps, cfg.sft_lr, cfg.sft_warmup, "linear")
        norm = trainer.step(loss, lr, cfg.max_grad_norm)
        entry = {"step": step + 1, "loss": _r(loss.item()), "grad_norm": _r(norm), "learning_rate": _r(lr)}
        if (step + 1) % cfg.sft_save_every == 0 or step + 1 == cfg.sft_steps:
            saved = trainer.saved()
            entry["eval_sub_accuracy"] = _r(accuracy(cfg, saved, evals["sub"]))
            entry["eval_add_accuracy"] = _r(accuracy(cfg, saved, evals["add"]))
            log.append(entry)
            final = save_checkpoint(out / f"checkpoint-{step + 1}", saved, hf_config(cfg),
                            trainer_state(step + 1, cfg.sft_steps, cfg.sft_save_every, cfg.sft_batch, log))
        else:
            log.append(entry)
        if progress:
            progress("SFT")
    return {"final": final, "log": log, "master": trainer.master_state()}


def finetune_rl(cfg: TrainedDemoConfig, base: dict, out: Path, evals: dict, progress=None) -> dict:
    trainer = _MixedPrecision(base, cfg.rl_lr, (0.9, 0.999), 0.0)
    prompts_gen = torch.Generator().manual_seed(cfg.seed + 3)
    sample_gen = torch.Generator().manual_seed(cfg.seed + 4)
    log: list[dict] = []
    final = None
    for step in range(cfg.rl_steps):
        problems = make_problems(PLUS, cfg.rl_prompts, prompts_gen, cfg.operand_max)
        problems = problems.repeat_interleave(cfg.rl_group, dim=0)  # a group of completions per prompt
        prompts, answers = problems[:, :PROMPT_LEN], problems[:, PROMPT_LEN:]
        with torch.no_grad():
            policy = trainer.saved()  # the bf16 weights the policy runs with
            completions = generate(cfg, policy, prompts, sample_gen)
        reward = (completions == answers).all(-1).float()
        groups = reward.view(cfg.rl_prompts, cfg.rl_group)
        adv = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).reshape(-1)
        seq = torch.cat([prompts, completions], dim=1)
        logits = forward(cfg, trainer.bf16(), seq)[:, PROMPT_LEN - 1:-1]
        logp = torch.log_softmax(logits, -1).gather(-1, completions[..., None])[..., 0]
        loss = -(adv[:, None] * logp).mean()
        lr = _lr(step, cfg.rl_steps, cfg.rl_lr, cfg.rl_warmup, "constant")
        norm = trainer.step(loss, lr, cfg.max_grad_norm)
        entry = {"step": step + 1, "loss": _r(loss.item()), "reward": _r(reward.mean().item()),
                 "grad_norm": _r(norm), "learning_rate": _r(lr)}
        if (step + 1) % cfg.rl_save_every == 0 or step + 1 == cfg.rl_steps:
            saved = trainer.saved()
            entry["eval_add_accuracy"] = _r(accuracy(cfg, saved, evals["add"]))
            entry["eval_add_expected_reward"] = _r(expected_reward(cfg, saved, evals["add"]))
            log.append(entry)
            final = save_checkpoint(out / f"checkpoint-{step + 1}", saved, hf_config(cfg),
                            trainer_state(step + 1, cfg.rl_steps, cfg.rl_save_every,
                                         cfg.rl_prompts * cfg.rl_group, log))
        else:
            log.append(entry)
        if progress:
            progress("RL", 2)
    return {"final": final, "log": log, "master": trainer.master_state()}


def write_trained_demo(directory: Path, *, quick: bool = False, config: TrainedDemoConfig | None = None,
                       progress: Callable[[float, str], None] | None = None) -> dict[str, Path]:
    """Train and write the family under `directory/trained`; return name -> directory.

    Names: trained/base, trained/sft, trained/rl (checkpoints) and trained/sft_run,
    trained/rl_run (folders of checkpoint-<step>/). `progress(fraction, stage)` is called
    after every step. Deterministic: torch runs with `config.threads` threads meanwhile.
    """
    cfg = config or (QUICK if quick else FULL)
    root = Path(directory) / "trained"
    if root.exists():
        shutil.rmtree(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            tick = _Progress(cfg, progress)
            eval_gen = torch.Generator().manual_seed(cfg.seed + 5)
            evals = {"add": make_problems(PLUS, cfg.eval_size, eval_gen, cfg.operand_max),
                     "sub": make_problems(MINUS, cfg.eval_size, eval_gen, cfg.operand_max)}
            base, pre_log = pretrain(cfg, tick)
            base_acc = {"eval_add_accuracy": _r(accuracy(cfg, base, evals["add"])),
                        "eval_add_expected_reward": _r(expected_reward(cfg, base, evals["add"])),
                        "eval_sub_accuracy": _r(accuracy(cfg, base, evals["sub"]))}
            pre_log[-1].update(base_acc)
            save_checkpoint(root / "base", base, hf_config(cfg),
                            trainer_state(cfg.pretrain_steps, cfg.pretrain_steps, cfg.pretrain_steps, cfg.pretrain_batch,
                                          pre_log))
            sft = finetune_sft(cfg, base, root / "sft_run", evals, tick)
            rl = finetune_rl(cfg, base, root / "rl_run", evals, tick)
            shutil.copytree(sft["final"], root / "sft")
            shutil.copytree(rl["final"], root / "rl")
            # The fp32 masters: the finetunes' final ones, and the base's (the saved bf16 base, exactly, where
            # both started), so that (base_fp32, rl_fp32) shows every fp32 update and what bf16 storage erased.
            fp32 = replace(cfg, fp32=True)
            save_checkpoint(root / "base_fp32", {n: t.float() for n, t in base.items()}, hf_config(fp32))
            save_checkpoint(root / "sft_fp32", sft["master"], hf_config(fp32))
            save_checkpoint(root / "rl_fp32", rl["master"], hf_config(fp32))
            summary = {"config": asdict(cfg), "base": base_acc,
                       "sft": {k: v for k, v in sft["log"][-1].items() if k.startswith("eval")},
                       "rl": {k: v for k, v in rl["log"][-1].items() if k.startswith("eval")}}
            (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        torch.set_num_threads(threads)
    if progress:
        progress(1.0, "done")
    return {name: Path(directory) / name for name in TRAINED_NAMES}
