"""The tinygpt model written in PyTorch: the benchmark's step-time comparison, and the
independent oracle that bench/make_torch_oracle.py writes into tests/fixtures/.

Same architecture, shapes and parameter count as ``tinygpt.TinyGPT``: learned token and position
embeddings, pre-LayerNorm blocks (fused q/k/v projection, causal attention through
``F.scaled_dot_product_attention``, output projection, a 4x tanh-GELU MLP), a final LayerNorm and
an untied head without bias. ``load_tinygpt_weights`` copies a TinyGPT's parameters in, so both
models compute the same loss on the same batch.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """x += proj(attn(ln1(x))); x += fc2(gelu(fc(ln2(x))))."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        B, T, C = x.shape
        H = self.n_heads
        q, k, v = self.attn(self.ln1(x)).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(B, T, C))
        return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    """GPT-2-style character model; ``forward(idx, targets)`` returns the mean cross-entropy."""

    def __init__(self, vocab_size, d_model, n_heads, n_layers, max_seq_len):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(max_seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self._init_weights(n_layers)

    def _init_weights(self, n_layers):
        """GPT-2 init, as tinygpt does it: N(0, 0.02), residual projections scaled down."""
        for name, param in self.named_parameters():
            if param.ndim == 1:
                continue  # LayerNorm and biases keep PyTorch's ones/zeros
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("proj.weight", "fc2.weight")) \
                else 0.02
            nn.init.normal_(param, 0.0, std)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def logits(self, idx):
        """Token ids (B, T) -> logits (B, T, vocab)."""
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def forward(self, idx, targets):
        logits = self.logits(idx)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-1)


def tinygpt_parameters(torch_model):
    """[(tinygpt name, torch parameter, transposed)]: where each of a TinyGPT's parameters sits
    in ``torch_model``; transposed where tinygpt keeps the matrix as (in, out)."""
    pairs = [("wte", torch_model.wte.weight, False), ("wpe", torch_model.wpe.weight, False),
             ("lnf_w", torch_model.ln_f.weight, False), ("lnf_b", torch_model.ln_f.bias, False),
             ("head_w", torch_model.head.weight, True)]
    for i, block in enumerate(torch_model.blocks):
        h = f"h{i}."
        for layer, name in ((block.ln1, "ln1"), (block.ln2, "ln2")):
            pairs += [(h + name + "_w", layer.weight, False), (h + name + "_b", layer.bias, False)]
        for layer, name in ((block.attn, "attn"), (block.proj, "proj"), (block.fc, "fc"),
                            (block.fc2, "fc2")):
            pairs += [(h + name + "_w", layer.weight, True), (h + name + "_b", layer.bias, False)]
    return pairs


def load_tinygpt_weights(torch_model, tiny_model):
    """Copy a TinyGPT's parameters into ``torch_model`` (linear weights are transposed)."""
    p = tiny_model.p
    with torch.no_grad():
        for name, dst, transposed in tinygpt_parameters(torch_model):
            src = p[name].T if transposed else p[name]
            dst.copy_(torch.from_numpy(src.copy()))


def make_optimizer(model, lr=1e-3, weight_decay=0.01):
    """AdamW with tinygpt's settings: decay on matrices and embeddings, not biases or LayerNorm."""
    decay = [p for p in model.parameters() if p.ndim == 2]
    no_decay = [p for p in model.parameters() if p.ndim != 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-8)


def train_step(model, optimizer, x, y, max_grad_norm=1.0):
    """Forward, backward, gradient clipping and one AdamW update; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()
