"""C independent copies of one Llama checkpoint, trained side by side in one set of kernels.

The ground-truth grid fine-tunes the same checkpoint in dozens of cells (ratio x learning rate x
seed). A model of ~10 M parameters on ~10 k tokens a step leaves an H200 waiting on kernel
launches, so one cell at a time wastes most of it. Here every weight carries a leading copy axis
``C``: ``(C, out, in)`` for a linear layer, and one batched matrix product computes all copies at
once. The copies never interact: each copy's loss depends on its own weights and tokens only, so
the gradient of the sum of the copies' losses is, copy by copy, that copy's own gradient.

:class:`StackedLlama` computes what ``transformers.LlamaForCausalLM`` computes (RMSNorm, rotary
positions, causal attention, SwiGLU, untied or tied head, mean next-token loss) for the default
Llama options; ``tests/bench/test_stacked_llama.py`` checks its losses and gradients against the
Hugging Face model, and :class:`StackedAdamW` against ``torch.optim.AdamW``, step by step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import LlamaConfig


def _rope_theta(config: LlamaConfig) -> float:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, Mapping) and "rope_theta" in params:
        if params.get("rope_type", "default") != "default":
            raise ValueError("only the default rotary embedding is implemented")
        return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def check_supported(config: LlamaConfig) -> None:
    """Raise for Llama options this implementation does not compute."""
    problems = []
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("biases")
    if config.num_key_value_heads != config.num_attention_heads:
        problems.append("grouped-query attention")
    if config.hidden_act != "silu":
        problems.append(f"activation {config.hidden_act}")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim * config.num_attention_heads != config.hidden_size:
        problems.append("head_dim x heads != hidden_size")
    if problems:
        raise ValueError(f"StackedLlama does not implement: {', '.join(problems)}")


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StackedLlama:
    """``copies`` Llama models with weights stacked on a leading axis, fp32 master weights.

    Args:
        config: The checkpoint's config (default rotary embedding, no biases, no GQA).
        state: The checkpoint's state dict (Hugging Face names); every copy starts from it.
        copies: C.
        device: Where the weights live.
    """

    def __init__(
        self, config: LlamaConfig, state: Mapping[str, Tensor], copies: int, device: torch.device
    ) -> None:
        check_supported(config)
        self.config = config
        self.copies = copies
        self.tied = bool(config.tie_word_embeddings)
        self.heads = config.num_attention_heads
        self.eps = float(config.rms_norm_eps)
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        for i in range(config.num_hidden_layers):
            p = f"model.layers.{i}."
            names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            names += [p + f"self_attn.{k}_proj.weight" for k in "qkvo"]
            names += [p + f"mlp.{k}_proj.weight" for k in ("gate", "up", "down")]
        if not self.tied:
            names.append("lm_head.weight")
        self.names = names
        self.params: dict[str, Tensor] = {}
        for name in names:
            base = state[name].detach().to(device=device, dtype=torch.float32)
            stacked = base.unsqueeze(0).repeat(copies, *([1] * base.dim())).contiguous()
            self.params[name] = stacked.requires_grad_(True)
        head_dim = config.hidden_size // self.heads
        theta = _rope_theta(config)
        self.inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
        )

    def parameters(self) -> list[Tensor]:
        """The stacked weights, in a fixed order."""
        return [self.params[n] for n in self.names]

    def load(self, copy: int, state: Mapping[str, Tensor]) -> None:
        """Overwrite one copy's weights with ``state`` (Hugging Face names)."""
        with torch.no_grad():
            for name in self.names:
                self.params[name][copy].copy_(state[name].to(self.params[name]))

    def copy_state(self, copy: int) -> dict[str, Tensor]:
        """One copy's weights as a Hugging Face state dict (detached clones)."""
        out = {n: self.params[n][copy].detach().clone() for n in self.names}
        if self.tied:
            out["lm_head.weight"] = out["model.embed_tokens.weight"]
        return out

    def _rms(self, x: Tensor, weight: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight[:, None, :] * h.to(dtype)

    @staticmethod
    def _linear(x: Tensor, weight: Tensor) -> Tensor:
        # (C, N, in) x (C, out, in) -> (C, N, out): one batched product for every copy.
        return torch.bmm(x, weight.transpose(1, 2))

    def losses(self, ids: Tensor) -> Tensor:
        """Mean next-token loss of each copy on its own ``(C, B, T)`` token ids: shape ``(C,)``."""
        copies, rows, length = ids.shape
        if copies != self.copies:
            raise ValueError(f"ids have {copies} copies, the model {self.copies}")
        p = self.params
        hidden = self.config.hidden_size
        vocab = self.config.vocab_size
        heads, head_dim = self.heads, hidden // self.heads
        # Embedding lookup of every copy at once: row c * V + id of the stacked tables.
        offsets = (torch.arange(copies, device=ids.device) * vocab).view(copies, 1, 1)
        table = p["model.embed_tokens.weight"].reshape(copies * vocab, hidden)
        x = F.embedding(ids + offsets, table).view(copies, rows * length, hidden)
        positions = torch.arange(length, device=ids.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)

        def split(t: Tensor) -> Tensor:  # (C, B*T, H) -> (C*B, heads, T, head_dim)
            return (
                t.view(copies, rows, length, heads, head_dim)
                .transpose(2, 3)
                .reshape(copies * rows, heads, length, head_dim)
            )

        for i in range(self.config.num_hidden_layers):
            pre = f"model.layers.{i}."
            h = self._rms(x, p[pre + "input_layernorm.weight"])
            q = split(self._linear(h, p[pre + "self_attn.q_proj.weight"]))
            k = split(self._linear(h, p[pre + "self_attn.k_proj.weight"]))
            v = split(self._linear(h, p[pre + "self_attn.v_proj.weight"]))
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            attn = (
                attn.view(copies, rows, heads, length, head_dim)
                .transpose(2, 3)
                .reshape(copies, rows * length, hidden)
            )
            x = x + self._linear(attn, p[pre + "self_attn.o_proj.weight"])
            h = self._rms(x, p[pre + "post_attention_layernorm.weight"])
            gate = self._linear(h, p[pre + "mlp.gate_proj.weight"])
            up = self._linear(h, p[pre + "mlp.up_proj.weight"])
            x = x + self._linear(F.silu(gate) * up, p[pre + "mlp.down_proj.weight"])
        x = self._rms(x, p["model.norm.weight"])
        head = p["model.embed_tokens.weight"] if self.tied else p["lm_head.weight"]
        logits = self._linear(x, head).float().view(copies * rows, length, vocab)
        targets = ids.reshape(copies * rows, length)[:, 1:]
        per_token = F.cross_entropy(
            logits[:, :-1].reshape(-1, vocab), targets.reshape(-1), reduction="none"
        )
        return per_token.view(copies, rows * (length - 1)).mean(dim=1)

    @torch.no_grad()
    def eval_losses(self, rows: Tensor, *, chunk: int) -> list[float]:
        """Every copy's mean next-token loss on the same ``(R, T)`` rows, in fp32, by chunks."""
        total = torch.zeros(self.copies, dtype=torch.float64, device=rows.device)
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            ids = part.unsqueeze(0).expand(self.copies, *part.shape)
            total += self.losses(ids).double() * len(part)
        return [float(v) for v in total / len(rows)]


class StackedAdamW:
    """AdamW over stacked weights with one learning rate per copy (torch's update, copy-wise).

    The update is ``torch.optim.AdamW``'s: decoupled decay ``p *= 1 - lr wd``, moments
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``, and
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, with ``lr`` broadcast
    along the copy axis. Fresh state: every copy starts at step 0.
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        lrs: Sequence[float],
        *,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float = 0.0,
    ) -> None:
        self.params = list(params)
        copies = self.params[0].shape[0]
        if len(lrs) != copies:
            raise ValueError(f"{len(lrs)} learning rates for {copies} copies")
        self.lr = torch.tensor(list(lrs), dtype=torch.float32, device=self.params[0].device)
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        """Drop every gradient."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW step of every copy."""
        self.t += 1
        b1, b2 = self.betas
        c1 = 1 - b1**self.t
        c2_sqrt = math.sqrt(1 - b2**self.t)
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr = self.lr.view(shape)
            g = p.grad
            if self.weight_decay:
                p.mul_(1 - lr * self.weight_decay)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / c2_sqrt).add_(self.eps)
            p.sub_((lr / c1) * m / denom)


__all__ = ["StackedAdamW", "StackedLlama", "check_supported"]
